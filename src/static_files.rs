//! The `static` route target: files from a folder, the way nginx serves a monolith's assets.
//!
//! `Content-Type` by extension, `ETag` and `Last-Modified` with 304s, single `Range` requests,
//! `HEAD`, precompressed `.br`/`.gz` siblings when the client accepts them, a directory's index
//! file (no listings), and a fallback for misses (404, another route: nginx's
//! `try_files $uri $uri/ @app`, or a file: an SPA's `try_files $uri $uri/ /index.html`). Files
//! are streamed, never read whole.
//!
//! The file path is `root` + the request path, or `root` + the path after the prefix when the
//! route has `strip_prefix = true` (nginx's `alias`). A path can never leave the root: dot
//! segments are resolved before routing, encoded slashes, backslashes and NUL are refused, dotfiles
//! (other than `.well-known`) are not served, and a symlink whose target is outside the root is
//! refused unless `allow_symlinks = true`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use futures_util::TryStreamExt as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::body::{Body, BoxError, ReqBody};
use crate::config::StaticFallback;
use crate::error::ProxyError;
use crate::proxy::Ctx;
use crate::state::{Route, StaticTarget};

/// A byte range to serve, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// What a `Range` header asks of a file of `len` bytes (RFC 9110 §14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable Range: send the whole file (also for multi-range requests, which we may ignore).
    Full,
    Partial(ByteRange),
    Unsatisfiable,
}

pub fn parse_range(value: &str, len: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // Suffix: the last `b` bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeAnswer::Full;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        ByteRange {
            start: len.saturating_sub(n),
            end: len - 1,
        }
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return RangeAnswer::Full;
        };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(len.saturating_sub(1)),
                _ => return RangeAnswer::Full,
            }
        };
        if start >= len {
            return RangeAnswer::Unsatisfiable;
        }
        ByteRange { start, end }
    };
    RangeAnswer::Partial(range)
}

/// Decodes every percent-escape of a normalized path for the file system. `None` for anything
/// that could change the path's meaning on disk (NUL, an encoded `/` or `\`) or is not UTF-8.
pub fn fs_relative(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if matches!(v, 0 | b'/' | b'\\') {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            if matches!(bytes[i], 0 | b'\\') {
                return None;
            }
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    for seg in s.split('/') {
        if seg == ".."
            || (seg.starts_with('.') && seg != ".well-known" && !seg.is_empty() && seg != ".")
        {
            return None;
        }
    }
    Some(s)
}

/// nginx's ETag: hex mtime and hex length.
pub fn etag(mtime: u64, len: u64, encoding: Option<&str>) -> String {
    match encoding {
        Some(e) => format!("\"{mtime:x}-{len:x}-{e}\""),
        None => format!("\"{mtime:x}-{len:x}\""),
    }
}

/// True when `If-None-Match` lists `tag` (weak comparison, RFC 9110 §13.1.2) or is `*`.
pub fn none_match(header: &str, tag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == tag)
}

fn accepts(h: &HeaderMap, coding: &str) -> bool {
    h.get_all(header::ACCEPT_ENCODING).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case(coding) && !q_zero
        })
    })
}

struct Found {
    path: PathBuf,
    meta: std::fs::Metadata,
    /// The file whose extension gives the Content-Type (the uncompressed one).
    type_path: PathBuf,
}

enum Lookup {
    File(Box<Found>),
    /// A directory requested without its trailing slash.
    AddSlash,
    Missing,
    Forbidden,
}

async fn lookup(cfg: &crate::config::StaticConfig, rel: &str, ends_with_slash: bool) -> Lookup {
    let root = &cfg.root;
    let candidate = root.join(rel.trim_start_matches('/'));
    let meta = match tokio::fs::metadata(&candidate).await {
        Ok(m) => m,
        Err(_) => return Lookup::Missing,
    };
    let file = if meta.is_dir() {
        if !ends_with_slash && !rel.is_empty() && rel != "/" {
            return Lookup::AddSlash;
        }
        let mut found = None;
        for index in &cfg.index {
            let p = candidate.join(index);
            if let Ok(m) = tokio::fs::metadata(&p).await {
                if m.is_file() {
                    found = Some((p, m));
                    break;
                }
            }
        }
        match found {
            Some(f) => f,
            None => return Lookup::Missing,
        }
    } else if meta.is_file() {
        (candidate, meta)
    } else {
        return Lookup::Missing;
    };
    if !cfg.allow_symlinks && !inside_root(root, &file.0).await {
        return Lookup::Forbidden;
    }
    Lookup::File(Box::new(Found {
        type_path: file.0.clone(),
        path: file.0,
        meta: file.1,
    }))
}

/// True when `path`, with every symlink resolved, is still under `root` (also resolved).
async fn inside_root(root: &Path, path: &Path) -> bool {
    match (
        tokio::fs::canonicalize(root).await,
        tokio::fs::canonicalize(path).await,
    ) {
        (Ok(r), Ok(p)) => p.starts_with(r),
        _ => false,
    }
}

/// Serves a request of a static route.
pub(crate) async fn handle(
    req: Request<ReqBody>,
    cx: &Ctx<'_>,
    route: &Route,
    target: &Arc<StaticTarget>,
    prefix: &str,
    stripped: Option<&str>,
    ambiguous: bool,
) -> Result<Response<Body>, ProxyError> {
    let cfg = &target.config;
    if ambiguous {
        return Err(ProxyError::AmbiguousPath);
    }
    let normalized = crate::path::normalize(req.uri().path())?.path.into_owned();
    let rel_source = if route.options.strip_prefix && prefix != "/" {
        stripped.unwrap_or_default().to_owned()
    } else {
        normalized.clone()
    };
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD);
    let found = match fs_relative(&rel_source) {
        Some(rel) if is_read => lookup(cfg, &rel, rel_source.ends_with('/')).await,
        Some(_) => Lookup::Missing,
        None => Lookup::Forbidden,
    };
    // A fallback file stands in for a miss (never for a forbidden path).
    let found = match (found, &cfg.fallback) {
        (Lookup::Missing, StaticFallback::File(file)) if is_read => {
            match lookup(cfg, file, false).await {
                Lookup::File(f) => Lookup::File(f),
                _ => Lookup::Missing,
            }
        }
        (found, _) => found,
    };
    match found {
        Lookup::File(f) => serve_file(&req, cfg, *f).await,
        Lookup::AddSlash => {
            let mut loc = req.uri().path().to_owned();
            loc.push('/');
            if let Some(q) = req.uri().query() {
                loc.push('?');
                loc.push_str(q);
            }
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Ok(r)
        }
        Lookup::Forbidden if target.fallback.is_none() => {
            Ok(plain(StatusCode::NOT_FOUND, "404 Not Found\n"))
        }
        Lookup::Missing | Lookup::Forbidden => match &target.fallback {
            Some(fb) => {
                Box::pin(crate::proxy::dispatch(
                    req, cx, fb, prefix, stripped, ambiguous,
                ))
                .await
            }
            None if !is_read => Ok(plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed\n",
            )),
            None => Ok(plain(StatusCode::NOT_FOUND, "404 Not Found\n")),
        },
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn serve_file(
    req: &Request<ReqBody>,
    cfg: &crate::config::StaticConfig,
    mut f: Found,
) -> Result<Response<Body>, ProxyError> {
    let h = req.headers();
    // Precompressed siblings, best first.
    let mut encoding = None;
    if cfg.precompressed {
        for (coding, ext) in [("br", "br"), ("gzip", "gz")] {
            if accepts(h, coding) {
                let mut p = f.path.clone().into_os_string();
                p.push(".");
                p.push(ext);
                let p = PathBuf::from(p);
                if let Ok(m) = tokio::fs::metadata(&p).await {
                    if m.is_file() && (cfg.allow_symlinks || inside_root(&cfg.root, &p).await) {
                        f.path = p;
                        f.meta = m;
                        encoding = Some(coding);
                        break;
                    }
                }
            }
        }
    }
    let len = f.meta.len();
    let mtime = f.meta.modified().unwrap_or(UNIX_EPOCH);
    let mtime_secs = mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let tag = etag(mtime_secs, len, encoding);
    let last_modified = httpdate::fmt_http_date(mtime);

    let mut resp = Response::new(Body::empty());
    let rh = resp.headers_mut();
    let ctype = mime_guess::from_path(&f.type_path).first_or_octet_stream();
    let ctype = match ctype.type_() {
        mime_guess::mime::TEXT => format!("{ctype}; charset=utf-8"),
        _ if ctype.subtype() == "javascript" || ctype.subtype() == "json" => {
            format!("{ctype}; charset=utf-8")
        }
        _ => ctype.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&ctype) {
        rh.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&tag) {
        rh.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        rh.insert(header::LAST_MODIFIED, v);
    }
    rh.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if cfg.precompressed {
        rh.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if let Some(e) = encoding {
        rh.insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    if let Some(cc) = &cfg.cache_control {
        rh.insert(header::CACHE_CONTROL, cc.clone());
    }

    // Conditional requests (RFC 9110 §13.2.2): If-None-Match wins over If-Modified-Since.
    let not_modified = match h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        Some(inm) => none_match(inm, &tag),
        None => h
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .is_some_and(|since| {
                mtime_secs
                    <= since
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
            }),
    };
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(resp);
    }

    let range_ok = match h.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(ir) if ir.starts_with('"') => ir == tag,
        Some(ir) => httpdate::parse_http_date(ir)
            .ok()
            .is_some_and(|d| d >= UNIX_EPOCH + std::time::Duration::from_secs(mtime_secs)),
    };
    let answer = match h.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if range_ok => parse_range(r, len),
        _ => RangeAnswer::Full,
    };
    let (start, count) = match answer {
        RangeAnswer::Full => (0, len),
        RangeAnswer::Partial(r) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{len}", r.start, r.end)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            (r.start, r.end - r.start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if req.method() == Method::HEAD || count == 0 {
        return Ok(resp);
    }
    let mut file = tokio::fs::File::open(&f.path)
        .await
        .map_err(|e| ProxyError::Internal(format!("{}: {e}", f.path.display())))?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ProxyError::Internal(format!("{}: {e}", f.path.display())))?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 64 * 1024)
        .map_ok(Frame::data)
        .map_err(|e| -> BoxError { Box::new(e) });
    *resp.body_mut() = Body::stream(StreamBody::new(stream));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simple_range_rfc9110_14_1_2() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            RangeAnswer::Partial(ByteRange { start: 0, end: 9 })
        );
    }

    #[test]
    fn an_open_ended_range_runs_to_the_end() {
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeAnswer::Partial(ByteRange { start: 90, end: 99 })
        );
    }

    #[test]
    fn a_suffix_range_is_the_last_bytes() {
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeAnswer::Partial(ByteRange { start: 90, end: 99 })
        );
        assert_eq!(
            parse_range("bytes=-500", 100),
            RangeAnswer::Partial(ByteRange { start: 0, end: 99 })
        );
    }

    #[test]
    fn an_end_past_the_file_is_clamped() {
        assert_eq!(
            parse_range("bytes=50-500", 100),
            RangeAnswer::Partial(ByteRange { start: 50, end: 99 })
        );
    }

    #[test]
    fn a_start_past_the_file_is_unsatisfiable() {
        assert_eq!(parse_range("bytes=100-", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn malformed_and_multi_ranges_get_the_full_file() {
        for r in [
            "bytes=a-b",
            "items=0-1",
            "bytes=5-1",
            "bytes=0-1,5-6",
            "bytes",
        ] {
            assert_eq!(parse_range(r, 100), RangeAnswer::Full, "{r}");
        }
    }

    #[test]
    fn fs_paths_decode_escapes() {
        assert_eq!(
            fs_relative("/a%20b/caf%C3%A9.css").as_deref(),
            Some("/a b/café.css")
        );
    }

    #[test]
    fn fs_paths_refuse_separators_nul_and_dotfiles() {
        for p in [
            "/a%2Fb",
            "/a%5Cb",
            "/a%00",
            "/.git/config",
            "/.env",
            "/a/..",
            "/a\\b",
        ] {
            assert_eq!(fs_relative(p), None, "{p}");
        }
    }

    #[test]
    fn well_known_is_served() {
        assert!(fs_relative("/.well-known/acme-challenge/x").is_some());
    }

    #[test]
    fn etags_look_like_nginx_and_differ_per_encoding() {
        assert_eq!(etag(0x5f5e100, 0x10, None), "\"5f5e100-10\"");
        assert_ne!(etag(1, 2, Some("br")), etag(1, 2, None));
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_star() {
        assert!(none_match("W/\"1-2\", \"3-4\"", "\"1-2\""));
        assert!(none_match("*", "\"1-2\""));
        assert!(!none_match("\"9-9\"", "\"1-2\""));
    }

    #[test]
    fn accept_encoding_honours_q_zero() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, br"),
        );
        assert!(accepts(&h, "br"));
        assert!(!accepts(&h, "gzip"));
    }
}

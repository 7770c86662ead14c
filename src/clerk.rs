//! The Clerk Frontend API (FAPI) proxy target: what `/__clerk` does.
//!
//! Behaviour follows Clerk's own proxy (`clerkFrontendApiProxy` in `@clerk/backend`), as specified
//! in `clerk-fapi-proxy.md` (section numbers below refer to it), with the Gatehouse decisions of
//! the Clerk issue: forwarded headers are believed only from trusted proxies, the client IP falls
//! back to the socket peer, configuration problems are load errors instead of 500s, and an
//! upstream response timeout applies.
//!
//! This module owns the pure rules (publishable-key decoding, FAPI URL validation, the upstream
//! URL, `Clerk-Proxy-Url`, client IP choice, `Location` rewriting, the error body); the request
//! plumbing it shares with app routes lives in `proxy`.

use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, HeaderMap};
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::body::{Body, ReqBody};
use crate::error::ProxyError;
use crate::headers;
use crate::proxy::{Ctx, HostChoice, Outgoing, check_content_length, forward};
use crate::state::{ClerkTarget, Route};

/// The default shared FAPI host (§1.1).
pub const DEFAULT_FAPI: &str = "https://frontend-api.clerk.dev";

/// A validated FAPI base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FapiUrl {
    pub https: bool,
    pub authority: Authority,
    /// `Host` sent upstream: hostname plus a non-default port (§1.2).
    pub host_header: HeaderValue,
    /// Hostname plus a non-default port, lowercased: compared with `Location` hosts (§4.4).
    pub host: String,
    /// A base path carried by a custom URL, without a trailing slash (§2.4).
    pub base_path: String,
}

impl FapiUrl {
    /// Validates a FAPI URL as Clerk does (§1.2): absolute, http or https, no credentials, no
    /// query, no fragment; trailing slashes stripped.
    pub fn parse(text: &str) -> Result<FapiUrl, String> {
        let t = text.trim();
        let (scheme, rest) = t
            .split_once("://")
            .ok_or_else(|| format!("Invalid URL: `{t}`"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err("FAPI URL must use http or https".into()),
        };
        if rest.contains(['?', '#']) {
            return Err("FAPI URL must not include credentials, a query string, or a hash".into());
        }
        let (auth, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if auth.contains('@') {
            return Err("FAPI URL must not include credentials, a query string, or a hash".into());
        }
        let authority: Authority = auth.parse().map_err(|_| format!("Invalid URL: `{t}`"))?;
        if authority.host().is_empty() {
            return Err(format!("Invalid URL: `{t}`"));
        }
        let default_port = if https { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => format!("{}:{p}", authority.host()),
            _ => authority.host().to_owned(),
        }
        .to_ascii_lowercase();
        let host_header =
            HeaderValue::from_str(&host).map_err(|_| format!("Invalid URL: `{t}`"))?;
        Ok(FapiUrl {
            https,
            authority,
            host_header,
            host,
            base_path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// `https://frontend-api.clerk.dev` (scheme, host, base path; no trailing slash).
    pub fn origin(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.host,
            self.base_path
        )
    }
}

/// The FAPI hostname inside a publishable key (§1.3), or `None` when the key does not decode.
pub fn decode_publishable_key(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.trim().split('_').collect();
    if parts.len() != 3 || parts[0] != "pk" || !matches!(parts[1], "test" | "live") {
        return None;
    }
    let b64 = parts[2].trim_end_matches('=');
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let host = text.strip_suffix('$')?;
    if host.contains('$') || !host.contains('.') {
        return None;
    }
    Some(host.to_owned())
}

/// True for `pk_live_` keys (production instances).
pub fn is_live_key(key: &str) -> bool {
    key.trim().starts_with("pk_live_")
}

/// The shared FAPI base chosen from a publishable key (§1.1). Invalid keys get the default.
pub fn fapi_url_from_publishable_key(key: &str) -> &'static str {
    let Some(h) = decode_publishable_key(key) else {
        return DEFAULT_FAPI;
    };
    const LEGACY_DEV: [&str; 3] = [".lcl.dev", ".lclstage.dev", ".lclclerk.com"];
    const LOCAL: [&str; 4] = [
        ".lcl.dev",
        "lclstage.dev",
        ".lclclerk.com",
        ".accounts.lclclerk.com",
    ];
    if h.starts_with("clerk.") && LEGACY_DEV.iter().any(|s| h.ends_with(s)) {
        DEFAULT_FAPI
    } else if LOCAL.iter().any(|s| h.ends_with(s)) {
        "https://frontend-api.lclclerk.com"
    } else if h.ends_with(".accountsstage.dev") {
        "https://frontend-api.clerkstage.dev"
    } else {
        DEFAULT_FAPI
    }
}

// === Request handling ===

/// An error in Clerk's shape: `{"errors":[{"code","message"}]}`, JSON, never cached (§5.4).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = format!(
        "{{\"errors\":[{{\"code\":{},\"message\":{}}}]}}",
        json_string(code),
        json_string(message)
    );
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The upstream path: everything after the prefix in the *raw* path, by string concatenation
/// (§2.3, §2.4), so `/__clerk//evil.com/x` stays `//evil.com/x` on the FAPI host. When the raw
/// path does not start with the prefix (it matched only after normalization), the normalized
/// remainder is used. An empty remainder is `/`; an empty query (`?`) is dropped (§2.5).
pub fn upstream_path(
    raw_path: &str,
    normalized_rest: &str,
    prefix: &str,
    query: Option<&str>,
) -> String {
    let rest = raw_path
        .strip_prefix(prefix)
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .unwrap_or(normalized_rest);
    let mut out = String::with_capacity(rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    out.push_str(if rest.is_empty() { "/" } else { rest });
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn first_value<'a>(h: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(',').next())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// `Clerk-Proxy-Url` (§3.2): the route's `public_url` if set; else the forwarded origin when a
/// trusted proxy sent both `X-Forwarded-Proto` and `X-Forwarded-Host`; else the listener's scheme
/// and the request's Host. Always followed by the prefix, never a trailing slash.
pub fn proxy_url(
    public_url: Option<&str>,
    peer_trusted: bool,
    h: &HeaderMap,
    scheme: &str,
    host: &str,
    prefix: &str,
) -> String {
    if let Some(p) = public_url {
        return p.trim_end_matches('/').to_owned();
    }
    let forwarded = if peer_trusted {
        first_value(h, &headers::X_FORWARDED_PROTO).zip(first_value(h, &headers::X_FORWARDED_HOST))
    } else {
        None
    };
    let (scheme, host) = forwarded.unwrap_or((scheme, host));
    format!("{scheme}://{host}{}", prefix.trim_end_matches('/'))
}

/// The one end-user IP sent as `X-Forwarded-For` (§3.4, requirements 20-21): from a trusted
/// proxy, `CF-Connecting-IP`, then `X-Real-IP`, then the first `X-Forwarded-For` entry; otherwise
/// (and as the last fallback) the socket peer.
pub fn client_ip_for_fapi(peer_trusted: bool, h: &HeaderMap, peer: std::net::IpAddr) -> String {
    if peer_trusted {
        for name in [
            &headers::CF_CONNECTING_IP,
            &headers::X_REAL_IP,
            &headers::X_FORWARDED_FOR,
        ] {
            if let Some(v) = first_value(h, name) {
                return v.to_owned();
            }
        }
    }
    peer.to_canonical().to_string()
}

/// Rewrites a `Location` that points at the FAPI host to the proxy URL (§4.4); anything else,
/// including values that do not parse, is returned unchanged (`None`).
pub fn rewrite_location(location: &str, fapi: &FapiUrl, proxy_url: &str) -> Option<String> {
    let loc = location.trim();
    // Resolve against the FAPI base: absolute, scheme-relative, absolute-path, or relative.
    let (host, rest): (String, &str) = if let Some((scheme, after)) = split_scheme(loc) {
        let (auth, rest) = split_authority(after);
        (
            authority_host(auth, scheme.eq_ignore_ascii_case("https"))?,
            rest,
        )
    } else if let Some(after) = loc.strip_prefix("//") {
        let (auth, rest) = split_authority(after);
        (authority_host(auth, fapi.https)?, rest)
    } else {
        (fapi.host.clone(), loc)
    };
    if host != fapi.host {
        return None;
    }
    let mut out = proxy_url.trim_end_matches('/').to_owned();
    if !rest.starts_with('/') {
        // A relative reference resolves against the FAPI root (§4.4).
        out.push('/');
    }
    out.push_str(rest);
    Some(out)
}

fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    ok.then_some((scheme, rest))
}

fn split_authority(s: &str) -> (&str, &str) {
    match s.find(['/', '?', '#']) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    }
}

/// Host plus non-default port, lowercased, of an authority (userinfo dropped).
fn authority_host(auth: &str, https: bool) -> Option<String> {
    let auth = auth.rsplit('@').next()?;
    let a: http::uri::Authority = auth.parse().ok()?;
    let default = if https { 443 } else { 80 };
    Some(
        match a.port_u16() {
            Some(p) if p != default => format!("{}:{p}", a.host()),
            _ => a.host().to_owned(),
        }
        .to_ascii_lowercase(),
    )
}

/// Serves one request of a Clerk route.
pub(crate) async fn handle(
    req: Request<ReqBody>,
    cx: &Ctx<'_>,
    route: &Route,
    target: &Arc<ClerkTarget>,
    prefix: &str,
    normalized_rest: &str,
) -> Response<Body> {
    let cfg = &target.config;
    // Methods the Fetch API cannot represent are refused before contacting FAPI (requirement 39).
    if matches!(*req.method(), Method::TRACE | Method::CONNECT) {
        crate::metrics::clerk_error(&route.id, "method_not_supported");
        return error_response(
            StatusCode::BAD_REQUEST,
            "proxy_request_failed",
            "Method not supported by the Clerk Frontend API proxy",
        );
    }
    let raw_path = req.uri().path();
    let pq = upstream_path(raw_path, normalized_rest, prefix, req.uri().query());
    let opts = &route.options;
    if let Err(e) = check_content_length(req.headers(), opts.limits.max_body) {
        return error_response(e.status(), "proxy_request_failed", e.public_message());
    }

    let (parts, body) = req.into_parts();
    let mut h = parts.headers;
    let url = proxy_url(
        cfg.public_url.as_deref(),
        cx.peer_trusted,
        &h,
        cx.conn.scheme(),
        cx.host_str(),
        prefix,
    );
    let xff = client_ip_for_fapi(cx.peer_trusted, &h, cx.conn.peer.ip());
    headers::strip_hop_by_hop(&mut h);
    if !cx.peer_trusted {
        // An untrusted client does not get to choose what FAPI believes about the request.
        for name in headers::UNTRUSTED_FORWARDING.iter().chain([
            &headers::X_FORWARDED_HOST,
            &headers::X_FORWARDED_PROTO,
            &headers::X_REAL_IP,
        ]) {
            h.remove(name);
        }
    }
    if !h.contains_key(&headers::X_FORWARDED_HOST) {
        if let Ok(v) = HeaderValue::from_str(cx.host_str()) {
            h.insert(&headers::X_FORWARDED_HOST, v);
        }
    }
    if !h.contains_key(&headers::X_FORWARDED_PROTO) {
        h.insert(
            &headers::X_FORWARDED_PROTO,
            HeaderValue::from_static(cx.conn.scheme()),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(&headers::X_FORWARDED_FOR, v);
    }
    opts.request_headers.apply(&mut h);
    // Set last, so no header operation can override them.
    match HeaderValue::from_str(&url) {
        Ok(v) => {
            h.insert(&headers::CLERK_PROXY_URL, v);
        }
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "proxy_request_failed",
                "The request's Host cannot form a proxy URL",
            );
        }
    }
    match HeaderValue::from_str(cfg.secret_key.expose()) {
        Ok(mut v) => {
            v.set_sensitive(true);
            h.insert(&headers::CLERK_SECRET_KEY, v);
        }
        Err(_) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "proxy_configuration_error",
                "The secret key is not a valid header value",
            );
        }
    }
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );

    tracing::debug!(route = %route.id, method = %parts.method, proxy_url = %url, client_ip = %xff, "proxying to Clerk's Frontend API");
    tracing::trace!(headers = ?h, "request headers toward Clerk (the secret shows as Sensitive)");
    let out = Outgoing {
        upgrade: false,
        method: parts.method,
        path_and_query: pq.into(),
        target_checked: false,
        headers: h,
        appended: None,
        host: HostChoice::Fixed(cfg.fapi.host_header.clone()),
        http2: false,
    };
    match forward(
        &target.upstream,
        out,
        body,
        opts.timeouts.response,
        opts.timeouts.body,
        opts.limits.max_body,
    )
    .await
    {
        Ok(crate::proxy::Forwarded { mut resp, used, .. }) => {
            crate::metrics::clerk_request(&route.id, resp.status());
            headers::strip_hop_by_hop(resp.headers_mut());
            if let Some(loc) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
            {
                if let Some(new) = rewrite_location(loc, &cfg.fapi, &url) {
                    if let Ok(v) = HeaderValue::from_str(&new) {
                        resp.headers_mut().insert(header::LOCATION, v);
                    }
                }
            }
            resp.map(|b| Body::upstream(b, used, opts.timeouts.body))
        }
        Err(e) => {
            tracing::warn!(peer = %cx.conn.peer, route = %route.id, error = %e, "Clerk FAPI request failed");
            let code = match e {
                ProxyError::BodyTooLarge(_) => "request_body_too_large",
                _ => "proxy_request_failed",
            };
            crate::metrics::clerk_error(&route.id, code);
            match e {
                ProxyError::BodyTooLarge(_) => error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_body_too_large",
                    e.public_message(),
                ),
                other => error_response(
                    StatusCode::BAD_GATEWAY,
                    "proxy_request_failed",
                    &format!(
                        "Failed to proxy request to Clerk FAPI: {}",
                        public_failure(&other)
                    ),
                ),
            }
        }
    }
}

/// The failure as the client may see it: the kind, never addresses or internals.
fn public_failure(e: &ProxyError) -> &'static str {
    match e {
        ProxyError::UpstreamTimeout { .. } => "the Frontend API did not answer in time",
        ProxyError::Upstream { kind, .. } => match kind {
            crate::upstream::FailureKind::Refused => "connection refused",
            crate::upstream::FailureKind::ConnectTimeout => "connect timeout",
            crate::upstream::FailureKind::Dns => "DNS lookup failed",
            crate::upstream::FailureKind::Tls => "TLS handshake failed",
            crate::upstream::FailureKind::Reset => "connection reset",
            crate::upstream::FailureKind::Other => "upstream error",
        },
        _ => "upstream error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(prefix: &str, host: &str) -> String {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{host}$"));
        format!("{prefix}{enc}")
    }

    #[test]
    fn req09_live_key_for_a_production_host_targets_the_default_fapi() {
        assert_eq!(
            fapi_url_from_publishable_key(&pk("pk_live_", "clerk.example.com")),
            DEFAULT_FAPI
        );
    }

    #[test]
    fn req09_dev_instance_key_targets_the_default_fapi() {
        assert_eq!(
            fapi_url_from_publishable_key(&pk("pk_test_", "happy-cat-1.clerk.accounts.dev")),
            DEFAULT_FAPI
        );
    }

    #[test]
    fn req09_an_invalid_key_targets_the_default_fapi() {
        for key in [
            "",
            "pk_live_",
            "pk_live_!!!",
            "sk_live_abc",
            "pk_live_Y2xlcmsuZXhhbXBsZS5jb20",
            "pk_x_Y2xlcmsuZXhhbXBsZS5jb20k",
        ] {
            assert_eq!(fapi_url_from_publishable_key(key), DEFAULT_FAPI, "{key}");
        }
    }

    #[test]
    fn req10_staging_key_targets_clerkstage() {
        assert_eq!(
            fapi_url_from_publishable_key(&pk("pk_test_", "clerk.accountsstage.dev")),
            "https://frontend-api.clerkstage.dev"
        );
    }

    #[test]
    fn req10_local_key_targets_lclclerk() {
        assert_eq!(
            fapi_url_from_publishable_key(&pk("pk_test_", "myapp.lclclerk.com")),
            "https://frontend-api.lclclerk.com"
        );
    }

    #[test]
    fn req10_legacy_clerk_prefixed_dev_key_targets_the_default_fapi() {
        assert_eq!(
            fapi_url_from_publishable_key(&pk("pk_test_", "clerk.example.lclclerk.com")),
            DEFAULT_FAPI
        );
    }

    #[test]
    fn keys_decode_with_or_without_padding() {
        assert_eq!(
            decode_publishable_key("pk_test_bXlhcHAubGNsY2xlcmsuY29tJA=="),
            Some("myapp.lclclerk.com".into())
        );
        assert_eq!(
            decode_publishable_key("pk_test_bXlhcHAubGNsY2xlcmsuY29tJA"),
            Some("myapp.lclclerk.com".into())
        );
        assert_eq!(
            decode_publishable_key("pk_live_Y2xlcmsuZXhhbXBsZS5jb20k"),
            Some("clerk.example.com".into())
        );
    }

    #[test]
    fn a_decoded_key_needs_exactly_one_trailing_dollar_and_a_dot() {
        let enc = |s: &str| {
            format!(
                "pk_live_{}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(decode_publishable_key(&enc("clerk.example.com")), None);
        assert_eq!(decode_publishable_key(&enc("clerk$example.com$")), None);
        assert_eq!(decode_publishable_key(&enc("localhost$")), None);
    }

    #[test]
    fn req13_fapi_url_trailing_slash_stripped_and_port_in_host() {
        let f = FapiUrl::parse("http://localhost:8001/").unwrap();
        assert_eq!(f.host, "localhost:8001");
        assert_eq!(f.host_header, "localhost:8001");
        assert_eq!(f.base_path, "");
        assert_eq!(f.origin(), "http://localhost:8001");
    }

    #[test]
    fn default_ports_are_left_out_of_the_host() {
        assert_eq!(
            FapiUrl::parse("https://frontend-api.clerk.dev:443")
                .unwrap()
                .host,
            "frontend-api.clerk.dev"
        );
    }

    #[test]
    fn req12_fapi_url_rejects_other_schemes() {
        assert_eq!(
            FapiUrl::parse("ftp://x.example").unwrap_err(),
            "FAPI URL must use http or https"
        );
    }

    #[test]
    fn req12_fapi_url_rejects_credentials_query_and_fragment() {
        for url in [
            "https://u:p@x.example",
            "https://x.example/?a=1",
            "https://x.example/#frag",
        ] {
            assert_eq!(
                FapiUrl::parse(url).unwrap_err(),
                "FAPI URL must not include credentials, a query string, or a hash",
                "{url}"
            );
        }
    }

    #[test]
    fn req12_fapi_url_rejects_garbage() {
        assert!(
            FapiUrl::parse("not-a-url")
                .unwrap_err()
                .starts_with("Invalid URL")
        );
    }

    #[test]
    fn a_base_path_is_kept() {
        let f = FapiUrl::parse("https://proxy.example/clerk//").unwrap();
        assert_eq!(f.base_path, "/clerk");
    }

    fn fapi() -> FapiUrl {
        FapiUrl::parse(DEFAULT_FAPI).unwrap()
    }

    #[test]
    fn req06_double_slash_after_prefix_stays_a_path() {
        assert_eq!(
            upstream_path(
                "/__clerk//evil.com/steal",
                "/evil.com/steal",
                "/__clerk",
                None
            ),
            "//evil.com/steal"
        );
    }

    #[test]
    fn req02_bare_prefix_forwards_root() {
        assert_eq!(upstream_path("/__clerk", "", "/__clerk", None), "/");
        assert_eq!(upstream_path("/__clerk/", "/", "/__clerk", None), "/");
    }

    #[test]
    fn req07_query_is_kept_byte_for_byte() {
        assert_eq!(
            upstream_path(
                "/__clerk/v1/client",
                "/v1/client",
                "/__clerk",
                Some("_clerk_js_version=5.0.0&_method=PATCH&x=%2F")
            ),
            "/v1/client?_clerk_js_version=5.0.0&_method=PATCH&x=%2F"
        );
    }

    #[test]
    fn an_empty_query_is_dropped() {
        assert_eq!(
            upstream_path("/__clerk/v1", "/v1", "/__clerk", Some("")),
            "/v1"
        );
    }

    #[test]
    fn req08_trailing_slash_and_escapes_are_unchanged() {
        assert_eq!(
            upstream_path("/__clerk/v1/client/", "/v1/client/", "/__clerk", None),
            "/v1/client/"
        );
        assert_eq!(
            upstream_path("/__clerk/a%2Fb", "/a%2Fb", "/__clerk", None),
            "/a%2Fb"
        );
    }

    #[test]
    fn a_path_matched_only_after_normalization_uses_the_normalized_rest() {
        assert_eq!(
            upstream_path("/x/../__clerk/v1", "/v1", "/__clerk", None),
            "/v1"
        );
    }

    #[test]
    fn req16_proxy_url_is_origin_plus_prefix() {
        let h = HeaderMap::new();
        assert_eq!(
            proxy_url(None, false, &h, "https", "example.com", "/__clerk"),
            "https://example.com/__clerk"
        );
    }

    #[test]
    fn req17_trusted_forwarded_origin_is_used() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("myapp.example.com, internal"),
        );
        assert_eq!(
            proxy_url(None, true, &h, "http", "localhost:3000", "/__clerk"),
            "https://myapp.example.com/__clerk"
        );
    }

    #[test]
    fn untrusted_forwarded_origin_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.com"));
        assert_eq!(
            proxy_url(None, false, &h, "http", "app.example.com", "/__clerk"),
            "http://app.example.com/__clerk"
        );
    }

    #[test]
    fn one_forwarded_header_alone_is_not_enough() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("myapp.example.com"),
        );
        assert_eq!(
            proxy_url(None, true, &h, "http", "a.test", "/__clerk"),
            "http://a.test/__clerk"
        );
    }

    #[test]
    fn public_url_wins() {
        let h = HeaderMap::new();
        assert_eq!(
            proxy_url(
                Some("https://cdn.example.com/__clerk/"),
                true,
                &h,
                "http",
                "a",
                "/__clerk"
            ),
            "https://cdn.example.com/__clerk"
        );
    }

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn req20_cf_connecting_ip_then_real_ip_then_first_xff() {
        let peer = "127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip_for_fapi(
                true,
                &hm(&[
                    ("cf-connecting-ip", "10.0.0.1"),
                    ("x-forwarded-for", "192.168.1.1")
                ]),
                peer
            ),
            "10.0.0.1"
        );
        assert_eq!(
            client_ip_for_fapi(
                true,
                &hm(&[
                    ("x-real-ip", "10.0.0.2"),
                    ("x-forwarded-for", "192.168.1.1")
                ]),
                peer
            ),
            "10.0.0.2"
        );
        assert_eq!(
            client_ip_for_fapi(
                true,
                &hm(&[("x-forwarded-for", "192.168.1.1, 10.9.9.9")]),
                peer
            ),
            "192.168.1.1"
        );
    }

    #[test]
    fn req21_socket_peer_when_nothing_else_or_untrusted() {
        let peer = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_ip_for_fapi(true, &HeaderMap::new(), peer),
            "203.0.113.9"
        );
        assert_eq!(
            client_ip_for_fapi(false, &hm(&[("cf-connecting-ip", "10.0.0.1")]), peer),
            "203.0.113.9"
        );
    }

    #[test]
    fn req26_absolute_fapi_location_is_rewritten() {
        assert_eq!(
            rewrite_location(
                "https://frontend-api.clerk.dev/v1/oauth/callback?code=123",
                &fapi(),
                "https://example.com/__clerk"
            )
            .as_deref(),
            Some("https://example.com/__clerk/v1/oauth/callback?code=123")
        );
    }

    #[test]
    fn req26_relative_location_is_rewritten() {
        assert_eq!(
            rewrite_location("/v1/client", &fapi(), "https://example.com/__clerk").as_deref(),
            Some("https://example.com/__clerk/v1/client")
        );
    }

    #[test]
    fn req26_scheme_is_ignored_and_fragment_kept() {
        assert_eq!(
            rewrite_location(
                "http://frontend-api.clerk.dev/v1/x#frag",
                &fapi(),
                "https://example.com/__clerk"
            )
            .as_deref(),
            Some("https://example.com/__clerk/v1/x#frag")
        );
        assert_eq!(
            rewrite_location(
                "//frontend-api.clerk.dev/v1/x",
                &fapi(),
                "https://e.com/__clerk"
            )
            .as_deref(),
            Some("https://e.com/__clerk/v1/x")
        );
    }

    #[test]
    fn req26_custom_fapi_with_port_is_rewritten() {
        let f = FapiUrl::parse("http://localhost:8001").unwrap();
        assert_eq!(
            rewrite_location(
                "http://localhost:8001/v1/x",
                &f,
                "https://example.com/__clerk"
            )
            .as_deref(),
            Some("https://example.com/__clerk/v1/x")
        );
        assert_eq!(
            rewrite_location(
                "http://localhost:8002/v1/x",
                &f,
                "https://example.com/__clerk"
            ),
            None
        );
    }

    #[test]
    fn req27_other_hosts_and_garbage_are_untouched() {
        for loc in [
            "https://accounts.google.com/oauth/authorize",
            "//evil.com/x",
            "https://example.com/app",
            "http://[bad/",
        ] {
            assert_eq!(
                rewrite_location(loc, &fapi(), "https://example.com/__clerk"),
                None,
                "{loc}"
            );
        }
    }

    #[test]
    fn error_bodies_are_json_escaped() {
        assert_eq!(json_string("a \"b\"\n\\"), "\"a \\\"b\\\"\\n\\\\\"");
    }
}

//! Raw config → typed [`Config`]: parse every value, check every rule, collect every problem.
//!
//! Each `Builder` method handles one part of the file and records diagnostics instead of
//! returning early, so one run reports all mistakes. File reads (certificates, secret files) happen
//! here, at load, and never per request.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;
use toml::Spanned;

use super::diag::Collector;
use super::raw::*;
use super::units::{parse_duration, parse_size};
use super::*;
use crate::clerk::{self, FapiUrl};
use crate::headers::{HeaderOps, TrustedProxies};
use crate::router::{HostPattern, PathMatch};
use crate::template::Template;

type Span = Range<usize>;

pub(super) fn build(path: &Path, text: &str, env: &EnvLookup) -> Result<Config, ConfigError> {
    let mut c = Collector::new(path, text);
    if text.trim().is_empty() {
        c.error(
            None,
            "",
            "the file is empty",
            Some("a config needs at least one [[site]] with a [[site.route]]; see config/gatehouse.toml for a commented example".into()),
        );
        return Err(ConfigError::Invalid(c.items));
    }
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let message = e.message().trim().to_owned();
            let help = toml_help(&message);
            c.error(e.span(), "", message, help);
            return Err(ConfigError::Invalid(c.items));
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut b = Builder {
        c,
        base,
        env: env.clone(),
        files: vec![path.to_path_buf()],
    };
    let server = b.server(&raw.server);
    let log = b.log(&raw.log);
    let sites = b.sites(&raw, &server);
    b.cross_checks(&raw, &server, &sites);

    if b.c.has_errors() {
        return Err(ConfigError::Invalid(b.c.items));
    }
    let mut files = b.files;
    files.sort();
    files.dedup();
    // The config file's own entry hashes the exact bytes just parsed; the other files are
    // re-read here, a moment after they were loaded.
    let mut fingerprint = Fingerprint::of(&files);
    for (p, h) in &mut fingerprint.0 {
        if p == path {
            *h = Some(sha256(text.as_bytes()));
        }
    }
    Ok(Config {
        fingerprint,
        path: path.to_path_buf(),
        hash: sha256_hex(text.as_bytes()),
        server,
        log,
        sites,
        warnings: b.c.items,
        files,
    })
}

/// A hint for the most common TOML mistakes.
fn toml_help(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some("check the spelling; the README's configuration reference lists every key".into())
    } else if message.contains("duplicate key") {
        Some("each key may appear once per table; for several routes use several [[site.route]] tables".into())
    } else if message.contains("invalid type") {
        Some("check the value's type against the README's configuration reference".into())
    } else {
        Some("fix the TOML syntax at this position (strings need double quotes, tables need [brackets])".into())
    }
}

struct Builder<'a> {
    c: Collector<'a>,
    base: PathBuf,
    env: EnvLookup,
    files: Vec<PathBuf>,
}

impl Builder<'_> {
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, key: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.c.error(
                    Some(v.span()),
                    key,
                    e,
                    Some("write durations like \"250ms\", \"30s\" or \"5m\"".into()),
                );
                default
            }
        }
    }

    /// A timeout of zero is refused where it was written.
    fn nonzero(&mut self, d: Duration, v: &Option<Spanned<String>>, key: &str) {
        if d.is_zero() {
            self.c.error(
                v.as_ref().map(|v| v.span()),
                key,
                "must be greater than zero",
                Some(
                    "a timeout of 0 would fail every request; use a duration such as \"30s\""
                        .into(),
                ),
            );
        }
    }

    fn size(&mut self, v: &Option<Spanned<RawSize>>, key: &str, default: u64) -> u64 {
        let Some(v) = v else { return default };
        let parsed = match v.get_ref() {
            RawSize::Text(t) => parse_size(t),
            RawSize::Bytes(n) if *n >= 0 => Ok(*n as u64),
            RawSize::Bytes(n) => Err(format!("{n} is negative")),
        };
        match parsed {
            Ok(n) => n,
            Err(e) => {
                self.c.error(
                    Some(v.span()),
                    key,
                    e,
                    Some("write sizes like \"32KiB\" or \"100MiB\"".into()),
                );
                default
            }
        }
    }

    fn listen(&mut self, v: &Option<Spanned<OneOrMany>>, key: &str) -> Vec<SocketAddr> {
        let Some(v) = v else { return Vec::new() };
        let mut out = Vec::new();
        for (text, span) in v.get_ref().items(v.span()) {
            match parse_listen(&text) {
                Ok(a) => out.push(a),
                Err(e) => self.c.error(
                    Some(span),
                    key,
                    e,
                    Some("write an address and port such as \"127.0.0.1:8080\", \"0.0.0.0:80\" or \"[::]:443\"".into()),
                ),
            }
        }
        out
    }

    fn server(&mut self, s: &RawServer) -> ServerConfig {
        let http = self.listen(&s.http, "server.http");
        let https = self.listen(&s.https, "server.https");
        let admin = s.admin.as_ref().and_then(|a| match parse_listen(a.get_ref()) {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    self.c.warn(
                        Some(a.span()),
                        "server.admin",
                        format!("the admin listener {addr} is not on loopback: anyone who can reach it can read /config and /metrics and trigger reloads"),
                        Some("bind it to 127.0.0.1 unless a firewall protects it".into()),
                    );
                }
                Some(addr)
            }
            Err(e) => {
                self.c.error(Some(a.span()), "server.admin", e, Some("write an address such as \"127.0.0.1:9901\", or remove the key to disable the admin listener".into()));
                None
            }
        });
        let mut nets = Vec::new();
        if let Some(tp) = &s.trusted_proxies {
            for (text, span) in tp.get_ref().items(tp.span()) {
                match parse_net(&text) {
                    Ok(n) => nets.push(n),
                    Err(e) => self.c.error(
                        Some(span),
                        "server.trusted_proxies",
                        e,
                        Some(
                            "write an address or a CIDR range such as \"10.0.0.0/8\" or \"::1\""
                                .into(),
                        ),
                    ),
                }
            }
        }
        let timeouts = Timeouts {
            connect: self.duration(
                &s.connect_timeout,
                "server.connect_timeout",
                defaults::CONNECT_TIMEOUT,
            ),
            response: self.duration(
                &s.response_timeout,
                "server.response_timeout",
                defaults::RESPONSE_TIMEOUT,
            ),
            body: self.duration(
                &s.body_timeout,
                "server.body_timeout",
                defaults::BODY_TIMEOUT,
            ),
            idle: self.duration(
                &s.idle_timeout,
                "server.idle_timeout",
                defaults::IDLE_TIMEOUT,
            ),
        };
        let limits = Limits {
            max_request_header_bytes: self.size(
                &s.max_request_header_bytes,
                "server.max_request_header_bytes",
                defaults::MAX_REQUEST_HEADER_BYTES,
            ),
            max_body: self.size(&s.max_body, "server.max_body", defaults::MAX_BODY),
        };
        if let Some(v) = &s.max_request_header_bytes {
            if limits.max_request_header_bytes < 8192 {
                self.c.error(
                    Some(v.span()),
                    "server.max_request_header_bytes",
                    "must be at least 8KiB",
                    Some("auth cookies alone often exceed 4KiB; 32KiB is the default".into()),
                );
            }
        }
        let header_read_timeout = self.duration(
            &s.header_read_timeout,
            "server.header_read_timeout",
            defaults::HEADER_READ_TIMEOUT,
        );
        let tls_handshake_timeout = self.duration(
            &s.tls_handshake_timeout,
            "server.tls_handshake_timeout",
            defaults::TLS_HANDSHAKE_TIMEOUT,
        );
        let shutdown_grace = self.duration(
            &s.shutdown_grace,
            "server.shutdown_grace",
            defaults::SHUTDOWN_GRACE,
        );
        for (d, v, key) in [
            (
                timeouts.connect,
                &s.connect_timeout,
                "server.connect_timeout",
            ),
            (
                timeouts.response,
                &s.response_timeout,
                "server.response_timeout",
            ),
            (timeouts.body, &s.body_timeout, "server.body_timeout"),
            (timeouts.idle, &s.idle_timeout, "server.idle_timeout"),
            (
                header_read_timeout,
                &s.header_read_timeout,
                "server.header_read_timeout",
            ),
            (
                tls_handshake_timeout,
                &s.tls_handshake_timeout,
                "server.tls_handshake_timeout",
            ),
        ] {
            self.nonzero(d, v, key);
        }
        let max_connections = match &s.max_connections {
            Some(v) if *v.get_ref() < 1 => {
                self.c.error(
                    Some(v.span()),
                    "server.max_connections",
                    "must be at least 1",
                    None,
                );
                defaults::MAX_CONNECTIONS
            }
            Some(v) => *v.get_ref() as usize,
            None => defaults::MAX_CONNECTIONS,
        };
        let workers = match &s.workers {
            Some(v) if *v.get_ref() < 0 || *v.get_ref() > 1024 => {
                self.c.error(
                    Some(v.span()),
                    "server.workers",
                    "must be between 0 (one per core) and 1024",
                    None,
                );
                None
            }
            Some(v) if *v.get_ref() == 0 => None,
            Some(v) => Some(*v.get_ref() as usize),
            None => None,
        };
        ServerConfig {
            http,
            https,
            admin,
            trusted_proxies: TrustedProxies::new(nets),
            timeouts,
            limits,
            header_read_timeout,
            tls_handshake_timeout,
            shutdown_grace,
            max_connections,
            workers,
        }
    }

    fn log(&mut self, l: &RawLog) -> LogConfig {
        let format = match l.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, span)) => {
                self.c.error(
                    Some(span),
                    "log.format",
                    format!("unknown log format `{other}`"),
                    Some("use \"text\" or \"json\"".into()),
                );
                LogFormat::Text
            }
        };
        let access_log = match l
            .access_log
            .as_ref()
            .map(|f| (f.get_ref().as_str(), f.span()))
        {
            None | Some(("off", _)) => AccessLogTarget::Off,
            Some(("stderr", _)) => AccessLogTarget::Stderr,
            Some(("", span)) => {
                self.c.error(
                    Some(span),
                    "log.access_log",
                    "is empty",
                    Some("use \"off\", \"stderr\" or a file path".into()),
                );
                AccessLogTarget::Off
            }
            Some((path, _)) => AccessLogTarget::File(self.resolve(path)),
        };
        let access_log_format = match l
            .access_log_format
            .as_ref()
            .map(|f| (f.get_ref().as_str(), f.span()))
        {
            None | Some(("combined", _)) => AccessLogFormat::Combined,
            Some(("json", _)) => AccessLogFormat::Json,
            Some((other, span)) => {
                self.c.error(
                    Some(span),
                    "log.access_log_format",
                    format!("unknown access log format `{other}`"),
                    Some("use \"combined\" (nginx's) or \"json\"".into()),
                );
                AccessLogFormat::Combined
            }
        };
        let level = l.level.as_ref().map(|v| {
            if tracing_subscriber::EnvFilter::try_new(v.get_ref()).is_err() {
                self.c.error(
                    Some(v.span()),
                    "log.level",
                    format!("`{}` is not a log level", v.get_ref()),
                    Some(
                        "use error, warn, info, debug or trace (or a RUST_LOG-style filter)".into(),
                    ),
                );
            }
            v.get_ref().clone()
        });
        LogConfig {
            level,
            format,
            access_log,
            access_log_format,
            access_log_query: l.access_log_query.unwrap_or(false),
        }
    }

    fn sites(&mut self, raw: &RawConfig, server: &ServerConfig) -> Vec<SiteConfig> {
        let mut sites = Vec::new();
        let mut seen_hosts: HashMap<HostPattern, usize> = HashMap::new();
        let mut route_ids: HashMap<String, Span> = HashMap::new();
        let mut default_seen: Option<usize> = None;
        for (i, s) in raw.sites.iter().enumerate() {
            let span = s.span();
            let s = s.get_ref();
            let key = format!("site[{i}]");
            let mut hosts = Vec::new();
            match &s.hosts {
                None if s.default == Some(true) => {}
                None => self.c.error(Some(span.clone()), format!("{key}.hosts"), "is missing", Some("list the domains this site serves: hosts = [\"app.example.com\"], or mark it default = true".into())),
                Some(h) => {
                    let items = h.get_ref().items(h.span());
                    if items.is_empty() {
                        self.c.error(Some(h.span()), format!("{key}.hosts"), "is empty", Some("list at least one domain, e.g. hosts = [\"app.example.com\"]".into()));
                    }
                    for (text, hspan) in items {
                        match parse_host_pattern(&text) {
                            Ok(p) => {
                                if let Some(&other) = seen_hosts.get(&p) {
                                    self.c.error(Some(hspan), format!("{key}.hosts"), format!("`{p}` is already served by site[{other}]"), Some("a host may belong to one site only; merge the two sites' routes or remove one".into()));
                                } else {
                                    seen_hosts.insert(p.clone(), i);
                                    hosts.push(p);
                                }
                            }
                            Err(e) => self.c.error(Some(hspan), format!("{key}.hosts"), e.0, Some(e.1)),
                        }
                    }
                }
            }
            let default = s.default.unwrap_or(false);
            if default {
                if let Some(other) = default_seen {
                    self.c.error(
                        Some(span.clone()),
                        format!("{key}.default"),
                        format!("site[{other}] is already the default site"),
                        Some("only one site may have default = true".into()),
                    );
                }
                default_seen = Some(i);
            }
            let name = match &s.name {
                Some(n) => n.get_ref().clone(),
                None => hosts
                    .first()
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "default".into()),
            };
            let tls = s.tls.as_ref().and_then(|t| self.tls(t, &key, &hosts));
            let redirect_https = match s.redirect_https.as_ref().map(|r| (*r.get_ref(), r.span())) {
                None | Some((RawRedirectHttps::On(false), _)) => None,
                Some((RawRedirectHttps::On(true), _)) => Some(StatusCode::PERMANENT_REDIRECT),
                Some((RawRedirectHttps::Status(n @ (301 | 302 | 307 | 308)), _)) => {
                    StatusCode::from_u16(n as u16).ok()
                }
                Some((RawRedirectHttps::Status(n), span)) => {
                    self.c.error(
                        Some(span),
                        format!("{key}.redirect_https"),
                        format!("{n} is not a redirect status for this"),
                        Some("use true (308), 301, 302, 307 or 308".into()),
                    );
                    None
                }
            };
            if let Some(r) = &s.redirect_https {
                if redirect_https.is_some() && server.https.is_empty() {
                    self.c.error(
                        Some(r.span()),
                        format!("{key}.redirect_https"),
                        "there is no https listener to redirect to",
                        Some(
                            "add server.https = [\"0.0.0.0:443\"] or remove redirect_https".into(),
                        ),
                    );
                }
            }
            let hsts = s
                .hsts
                .as_ref()
                .and_then(|h| match HeaderValue::from_str(h.get_ref()) {
                    Ok(v) if h.get_ref().contains("max-age=") => Some(v),
                    _ => {
                        self.c.error(
                            Some(h.span()),
                            format!("{key}.hsts"),
                            "is not a Strict-Transport-Security value",
                            Some("write it like \"max-age=31536000; includeSubDomains\"".into()),
                        );
                        None
                    }
                });
            let routes = self.routes(s, &key, &name, raw, server, &mut route_ids);
            if routes.is_empty() && !s.routes.is_empty() && !self.c.has_errors() {
                self.c.warn(
                    Some(span.clone()),
                    &key,
                    "every route of this site is switched off: it answers 404 to everything",
                    None,
                );
            } else if s.routes.is_empty() {
                self.c.error(Some(span.clone()), &key, "has no routes", Some("add a [[site.route]] with a prefix and a target, e.g. prefix = \"/\" and upstream = \"http://127.0.0.1:3000\"".into()));
            }
            sites.push(SiteConfig {
                name,
                hosts,
                default,
                tls,
                redirect_https,
                hsts,
                routes,
            });
        }
        sites
    }

    fn tls(&mut self, t: &Spanned<RawTls>, key: &str, hosts: &[HostPattern]) -> Option<TlsSource> {
        let key = format!("{key}.tls");
        match t.get_ref() {
            RawTls::Keyword(k) if k == "self-signed" => Some(TlsSource::SelfSigned),
            RawTls::Keyword(k) => {
                self.c.error(Some(t.span()), key, format!("`{k}` is not a TLS setting"), Some("use tls = \"self-signed\" or tls = { cert = \"fullchain.pem\", key = \"privkey.pem\" }".into()));
                None
            }
            RawTls::Files(f) => {
                let cert_path = self.resolve(f.cert.get_ref());
                let key_path = self.resolve(f.key.get_ref());
                self.files.push(cert_path.clone());
                self.files.push(key_path.clone());
                match crate::tls::load_files(&cert_path, &key_path) {
                    Ok(loaded) => {
                        let left = loaded.seconds_left();
                        if left < 0 {
                            self.c.warn(
                                Some(f.cert.span()),
                                &key,
                                format!(
                                    "{} expired on {}",
                                    cert_path.display(),
                                    loaded.not_after_text()
                                ),
                                Some("renew it (certbot renew)".into()),
                            );
                        } else if left < 14 * 86400 {
                            self.c.warn(
                                Some(f.cert.span()),
                                &key,
                                format!(
                                    "{} expires on {}, in less than 14 days",
                                    cert_path.display(),
                                    loaded.not_after_text()
                                ),
                                Some("renew it (certbot renew)".into()),
                            );
                        }
                        let uncovered: Vec<String> = hosts
                            .iter()
                            .filter(|h| !loaded.covers(h))
                            .map(|h| h.to_string())
                            .collect();
                        if !hosts.is_empty() && uncovered.len() == hosts.len() {
                            self.c.warn(
                                Some(f.cert.span()),
                                &key,
                                format!(
                                    "{} covers none of the site's hosts (it names {})",
                                    cert_path.display(),
                                    loaded.names.join(", ")
                                ),
                                Some(
                                    "check that this is the right certificate for the site".into(),
                                ),
                            );
                        }
                        Some(TlsSource::Files {
                            cert_path,
                            key_path,
                            loaded: Arc::new(loaded),
                        })
                    }
                    Err(e) => {
                        self.c.error(Some(t.span()), key, e, Some("point cert at the full chain (fullchain.pem) and key at its private key (privkey.pem)".into()));
                        None
                    }
                }
            }
        }
    }

    fn routes(
        &mut self,
        s: &RawSite,
        site_key: &str,
        site_name: &str,
        raw: &RawConfig,
        server: &ServerConfig,
        ids: &mut HashMap<String, Span>,
    ) -> Vec<RouteConfig> {
        let mut out = Vec::new();
        let mut matchers: HashMap<PathMatch, usize> = HashMap::new();
        let mut fallbacks: Vec<(usize, String, Span)> = Vec::new();
        for (j, r) in s.routes.iter().enumerate() {
            let span = r.span();
            let r = r.get_ref();
            let key = format!("{site_key}.route[{j}]");
            let matcher = match (&r.prefix, &r.exact) {
                (Some(_), Some(e)) => {
                    self.c.error(Some(e.span()), &key, "has both `prefix` and `exact`", Some("keep one: `exact` matches one path, `prefix` a path and everything under it".into()));
                    None
                }
                (None, None) => {
                    self.c.error(
                        Some(span.clone()),
                        &key,
                        "has neither `prefix` nor `exact`",
                        Some("add prefix = \"/\" to match every path, or exact = \"/path\"".into()),
                    );
                    None
                }
                (Some(p), None) => self
                    .path(p, &format!("{key}.prefix"))
                    .map(|p| PathMatch::prefix(&p)),
                (None, Some(e)) => self.path(e, &format!("{key}.exact")).map(PathMatch::Exact),
            };
            let Some(target) = self.target(
                r,
                &key,
                span.clone(),
                raw,
                matcher.as_ref(),
                &mut fallbacks,
                out.len(),
            ) else {
                continue;
            };
            let Some(matcher) = matcher else { continue };
            // Disabled routes (clerk = false) never reach here, so a disabled and an enabled route
            // may share a prefix: that is how a route is toggled.
            if let Some(&other) = matchers.get(&matcher) {
                self.c.error(
                    Some(span.clone()),
                    &key,
                    format!("`{matcher}` is already matched by {site_key}.route[{other}]"),
                    Some("each prefix or exact path may appear once per site".into()),
                );
                continue;
            }
            matchers.insert(matcher.clone(), j);
            let id = match &r.id {
                Some(id) => {
                    let v = id.get_ref().clone();
                    if v.is_empty() || v.chars().any(|c| c.is_control() || c == '"') {
                        self.c.error(
                            Some(id.span()),
                            format!("{key}.id"),
                            "must be non-empty printable text without quotes",
                            None,
                        );
                    }
                    if ids.contains_key(&v) {
                        self.c.error(Some(id.span()), format!("{key}.id"), format!("`{v}` is already the id of another route"), Some("route ids label metrics and logs, so they must be unique in the file".into()));
                    }
                    v
                }
                None => {
                    let base = match &matcher {
                        PathMatch::Exact(p) => format!("{site_name}={p}"),
                        PathMatch::Prefix(p) => format!("{site_name}{p}"),
                    };
                    let mut id = base.clone();
                    let mut n = 2;
                    while ids.contains_key(&id) {
                        id = format!("{base}#{n}");
                        n += 1;
                    }
                    id
                }
            };
            ids.insert(id.clone(), span.clone());
            let options = self.route_options(r, &key, server, &target, &matcher);
            out.push(RouteConfig {
                id,
                matcher,
                target,
                options,
            });
        }
        // Static fallbacks that name another route must name one of this site.
        for (idx, name, span) in fallbacks {
            let found = out
                .iter()
                .find(|rc| rc.id == name)
                .map(|rc| rc.target.kind());
            match found {
                Some("static") => self.c.error(
                    Some(span),
                    format!("{site_key}.route"),
                    format!("the fallback route `{name}` is itself a static route"),
                    Some("fall back to an upstream route or to \"404\"".into()),
                ),
                Some(_) => {}
                None => {
                    let ids_here: Vec<&str> = out.iter().map(|r| r.id.as_str()).collect();
                    self.c.error(
                        Some(span),
                        format!("{site_key}.route"),
                        format!("no route of this site has the id `{name}`"),
                        Some(format!(
                            "give the route an id = \"{name}\", or use one of: {}",
                            ids_here.join(", ")
                        )),
                    );
                }
            }
            let _ = idx;
        }
        out
    }

    fn path(&mut self, p: &Spanned<String>, key: &str) -> Option<String> {
        let v = p.get_ref();
        if !v.starts_with('/') {
            self.c.error(
                Some(p.span()),
                key,
                format!("`{v}` does not start with `/`"),
                Some(format!("write it as \"/{}\"", v.trim_start_matches('/'))),
            );
            return None;
        }
        match crate::path::normalize(v) {
            Ok(n)
                if n.path == v.as_str()
                    || (n.path.trim_end_matches('/') == v.trim_end_matches('/')) =>
            {
                Some(v.clone())
            }
            Ok(n) => {
                self.c.error(
                    Some(p.span()),
                    key,
                    format!(
                        "`{v}` is not in normal form; requests are matched as `{}`",
                        n.path
                    ),
                    Some(format!("write it as \"{}\"", n.path)),
                );
                None
            }
            Err(e) => {
                self.c
                    .error(Some(p.span()), key, format!("`{v}`: {e}"), None);
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn target(
        &mut self,
        r: &RawRoute,
        key: &str,
        span: Span,
        raw: &RawConfig,
        matcher: Option<&PathMatch>,
        fallbacks: &mut Vec<(usize, String, Span)>,
        index: usize,
    ) -> Option<TargetConfig> {
        let clerk_on = match &r.clerk {
            Some(c) => !matches!(c.get_ref(), RawClerkRoute::Enabled(false)),
            None => false,
        };
        let mut given: Vec<&str> = Vec::new();
        if r.upstream.is_some() {
            given.push("upstream");
        }
        if r.redirect.is_some() {
            given.push("redirect");
        }
        if r.respond.is_some() {
            given.push("respond");
        }
        if clerk_on {
            given.push("clerk");
        }
        if r.static_files.is_some() {
            given.push("static");
        }
        match given.len() {
            0 => {
                if r.clerk.is_some() {
                    // clerk = false with no other target: the route is switched off.
                    return None;
                }
                self.c.error(Some(span), key, "has no target", Some("give it one of: upstream = \"http://127.0.0.1:3000\", redirect = { to = \"...\" }, respond = { status = 200, body = \"...\" }, clerk = true, static = { root = \"...\" }".into()));
                return None;
            }
            1 => {}
            _ => {
                self.c.error(Some(span), key, format!("has several targets ({})", given.join(", ")), Some("a route does one thing: keep one target, or split it into two routes with different prefixes".into()));
                return None;
            }
        }
        if let Some(u) = &r.upstream {
            return self
                .upstream(u, &format!("{key}.upstream"))
                .map(TargetConfig::Upstream);
        }
        if let Some(rd) = &r.redirect {
            let rd_key = format!("{key}.redirect");
            let to = match Template::parse(rd.get_ref().to.get_ref()) {
                Ok(t) => t,
                Err(e) => {
                    self.c.error(
                        Some(rd.get_ref().to.span()),
                        format!("{rd_key}.to"),
                        e,
                        None,
                    );
                    return None;
                }
            };
            let status = match &rd.get_ref().status {
                None => StatusCode::FOUND,
                Some(s) => match *s.get_ref() {
                    301 | 302 | 303 | 307 | 308 => {
                        StatusCode::from_u16(*s.get_ref() as u16).ok()?
                    }
                    other => {
                        self.c.error(
                            Some(s.span()),
                            format!("{rd_key}.status"),
                            format!("{other} is not a redirect status"),
                            Some("use 301, 302, 303, 307 or 308".into()),
                        );
                        return None;
                    }
                },
            };
            return Some(TargetConfig::Redirect(RedirectConfig { to, status }));
        }
        if let Some(rs) = &r.respond {
            let rs_key = format!("{key}.respond");
            let v = rs.get_ref();
            let status = match &v.status {
                None => StatusCode::OK,
                Some(s) => match u16::try_from(*s.get_ref())
                    .ok()
                    .filter(|n| (200..=599).contains(n))
                    .and_then(|n| StatusCode::from_u16(n).ok())
                {
                    Some(st) => st,
                    None => {
                        self.c.error(
                            Some(s.span()),
                            format!("{rs_key}.status"),
                            format!("{} is not a status code a response can have", s.get_ref()),
                            Some("use a code from 200 to 599".into()),
                        );
                        return None;
                    }
                },
            };
            let content_type = match &v.content_type {
                None => HeaderValue::from_static("text/plain; charset=utf-8"),
                Some(ct) => match HeaderValue::from_str(ct.get_ref()) {
                    Ok(h) => h,
                    Err(_) => {
                        self.c.error(
                            Some(ct.span()),
                            format!("{rs_key}.content_type"),
                            "is not a valid header value",
                            None,
                        );
                        return None;
                    }
                },
            };
            return Some(TargetConfig::Respond(RespondConfig {
                status,
                body: Bytes::from(v.body.clone()),
                content_type,
            }));
        }
        if clerk_on {
            let c = r.clerk.as_ref()?;
            if let Some(PathMatch::Prefix(p)) = matcher {
                if p == "/" {
                    self.c.error(r.prefix.as_ref().map(|p| p.span()), format!("{key}.prefix"), "a clerk route cannot have the prefix `/`: it would send every request of the site to Clerk", Some("use prefix = \"/__clerk\"".into()));
                    return None;
                }
            }
            if matches!(matcher, Some(PathMatch::Exact(_))) {
                self.c.error(
                    Some(c.span()),
                    format!("{key}.clerk"),
                    "a clerk route needs a `prefix`, not `exact`",
                    Some("use prefix = \"/__clerk\"".into()),
                );
                return None;
            }
            let overrides = match c.get_ref() {
                RawClerkRoute::Overrides(o) => Some(o),
                RawClerkRoute::Enabled(_) => None,
            };
            return self
                .clerk(overrides, raw.clerk.as_ref(), key, c.span())
                .map(TargetConfig::Clerk);
        }
        if let Some(st) = &r.static_files {
            return self
                .static_files(st, &format!("{key}.static"), fallbacks, index)
                .map(TargetConfig::Static);
        }
        None
    }

    fn upstream(&mut self, u: &Spanned<OneOrMany>, key: &str) -> Option<UpstreamConfig> {
        let items = u.get_ref().items(u.span());
        if items.is_empty() {
            self.c.error(
                Some(u.span()),
                key,
                "is an empty list",
                Some("list at least one backend, e.g. upstream = \"http://127.0.0.1:3000\"".into()),
            );
            return None;
        }
        let mut backends = Vec::new();
        let mut ok = true;
        for (text, span) in items {
            match BackendUrl::parse(&text) {
                Ok(b) => {
                    if backends.contains(&b) {
                        self.c.warn(
                            Some(span),
                            key,
                            format!("`{text}` is listed twice: it gets twice the traffic"),
                            None,
                        );
                    }
                    backends.push(b)
                }
                Err(e) => {
                    self.c.error(Some(span), key, e, Some("write a backend as \"http://127.0.0.1:3000\" or \"https://backend.internal\"".into()));
                    ok = false;
                }
            }
        }
        ok.then_some(UpstreamConfig { backends })
    }

    fn secret(&mut self, src: &Spanned<RawSecret>, key: &str, is_secret: bool) -> Option<String> {
        let value = match src.get_ref() {
            RawSecret::Literal(v) => {
                if is_secret {
                    self.c.warn(Some(src.span()), key, "the secret key is written into the config file", Some("config files end up in backups and version control: use { env = \"CLERK_SECRET_KEY\" } or { file = \"/run/credentials/gatehouse.service/clerk-secret-key\" }".into()));
                }
                v.clone()
            }
            RawSecret::Env(name) => match (self.env)(name) {
                Some(v) => v,
                None => {
                    self.c.error(Some(src.span()), key, format!("the environment variable {name} is not set"), Some(format!("set {name} in the service's environment (EnvironmentFile=/etc/gatehouse/env), or use {{ file = \"...\" }}")));
                    return None;
                }
            },
            RawSecret::File(p) => {
                let path = self.resolve(p);
                self.files.push(path.clone());
                match std::fs::read_to_string(&path) {
                    Ok(v) => v,
                    Err(e) => {
                        self.c.error(Some(src.span()), key, format!("cannot read {}: {e}", path.display()), Some("check the path; under systemd use LoadCredential= and $CREDENTIALS_DIRECTORY".into()));
                        return None;
                    }
                }
            }
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            self.c.error(
                Some(src.span()),
                key,
                "the value is empty".to_string(),
                None,
            );
            return None;
        }
        Some(value)
    }

    fn clerk(
        &mut self,
        route: Option<&RawClerk>,
        defaults: Option<&Spanned<RawClerk>>,
        key: &str,
        span: Span,
    ) -> Option<ClerkConfig> {
        let d = defaults.map(|d| d.get_ref());
        let pick = |f: fn(&RawClerk) -> Option<&Spanned<RawSecret>>| {
            route.and_then(f).or_else(|| d.and_then(f)).cloned()
        };
        let pk_src = pick(|c| c.publishable_key.as_ref()).unwrap_or_else(|| {
            Spanned::new(span.clone(), RawSecret::Env("CLERK_PUBLISHABLE_KEY".into()))
        });
        let sk_src = pick(|c| c.secret_key.as_ref()).unwrap_or_else(|| {
            Spanned::new(span.clone(), RawSecret::Env("CLERK_SECRET_KEY".into()))
        });
        let pk = self.secret(&pk_src, &format!("{key}.clerk.publishable_key"), false);
        let sk = self.secret(&sk_src, &format!("{key}.clerk.secret_key"), true);
        if let Some(sk) = &sk {
            if !sk.starts_with("sk_") {
                self.c.warn(
                    Some(sk_src.span()),
                    format!("{key}.clerk.secret_key"),
                    "does not look like a Clerk secret key (sk_live_... or sk_test_...)",
                    Some("copy it from the Clerk Dashboard, API keys page".into()),
                );
            }
        }
        if let Some(pk) = &pk {
            if clerk::decode_publishable_key(pk).is_none() {
                self.c.warn(Some(pk_src.span()), format!("{key}.clerk.publishable_key"), "does not decode as a Clerk publishable key; the proxy targets https://frontend-api.clerk.dev", Some("copy it from the Clerk Dashboard (pk_live_...)".into()));
            } else if !clerk::is_live_key(pk) {
                self.c.warn(Some(pk_src.span()), format!("{key}.clerk.publishable_key"), "is a development key: Clerk supports proxying the Frontend API for production instances only", None);
            }
        }
        let fapi_src: Option<(String, Option<Span>)> = route
            .and_then(|c| c.fapi_url.as_ref())
            .or_else(|| d.and_then(|c| c.fapi_url.as_ref()))
            .map(|s| (s.get_ref().clone(), Some(s.span())))
            .or_else(|| (self.env)("CLERK_FAPI_URL").map(|v| (v, Some(span.clone()))));
        let fapi = match (&fapi_src, &pk) {
            (Some((url, s)), _) => match FapiUrl::parse(url) {
                Ok(f) => Some(f),
                Err(e) => {
                    self.c.error(s.clone(), format!("{key}.clerk.fapi_url"), e, Some("use an absolute URL such as \"https://frontend-api.clerk.dev\" (also checked in CLERK_FAPI_URL)".into()));
                    None
                }
            },
            (None, Some(pk)) => FapiUrl::parse(clerk::fapi_url_from_publishable_key(pk)).ok(),
            (None, None) => None,
        };
        let public_url = route
            .and_then(|c| c.public_url.as_ref())
            .or_else(|| d.and_then(|c| c.public_url.as_ref()));
        let public_url = match public_url {
            None => None,
            Some(p) => match BackendUrl::parse(p.get_ref()) {
                Ok(u) if !p.get_ref().contains('#') => Some(u.to_string()),
                _ => {
                    self.c.error(Some(p.span()), format!("{key}.clerk.public_url"), format!("`{}` is not an absolute http(s) URL without query", p.get_ref()), Some("write the public URL of the proxy, e.g. \"https://app.example.com/__clerk\"".into()));
                    None
                }
            },
        };
        Some(ClerkConfig {
            secret_key: Secret::new(sk?),
            publishable_key: pk?,
            fapi: fapi?,
            public_url,
        })
    }

    fn static_files(
        &mut self,
        st: &Spanned<RawStatic>,
        key: &str,
        fallbacks: &mut Vec<(usize, String, Span)>,
        index: usize,
    ) -> Option<StaticConfig> {
        let v = st.get_ref();
        let root = self.resolve(v.root.get_ref());
        if !root.is_dir() {
            self.c.warn(
                Some(v.root.span()),
                format!("{key}.root"),
                format!(
                    "{} is not a folder (yet): every request will get the fallback",
                    root.display()
                ),
                None,
            );
        }
        let index_files = match &v.index {
            None => vec!["index.html".to_owned()],
            Some(i) => i
                .get_ref()
                .items(i.span())
                .into_iter()
                .map(|(s, _)| s)
                .collect(),
        };
        for f in &index_files {
            if f.contains('/') || f == ".." || f.is_empty() {
                self.c.error(
                    Some(st.span()),
                    format!("{key}.index"),
                    format!("`{f}` is not a file name"),
                    None,
                );
            }
        }
        let fallback = match &v.fallback {
            None => StaticFallback::NotFound,
            Some(f) if f.get_ref() == "404" => StaticFallback::NotFound,
            Some(f)
                if f.get_ref().starts_with("http://") || f.get_ref().starts_with("https://") =>
            {
                let one = Spanned::new(f.span(), OneOrMany::One(f.get_ref().clone()));
                StaticFallback::Upstream(self.upstream(&one, &format!("{key}.fallback"))?)
            }
            Some(f) if f.get_ref().starts_with('/') => {
                if !is_served_file_path(f.get_ref()) {
                    self.c.error(
                        Some(f.span()),
                        format!("{key}.fallback"),
                        format!("`{}` is not a file path under root", f.get_ref()),
                        Some("name a file the route serves, like \"/index.html\" (no `..`, no dotfiles, no trailing `/`)".into()),
                    );
                }
                StaticFallback::File(f.get_ref().clone())
            }
            Some(f) => {
                fallbacks.push((index, f.get_ref().clone(), f.span()));
                StaticFallback::Route(f.get_ref().clone())
            }
        };
        let cache_control = match &v.cache_control {
            None => None,
            Some(c) => match HeaderValue::from_str(c.get_ref()) {
                Ok(h) => Some(h),
                Err(_) => {
                    self.c.error(
                        Some(c.span()),
                        format!("{key}.cache_control"),
                        "is not a valid header value",
                        None,
                    );
                    None
                }
            },
        };
        Some(StaticConfig {
            root,
            index: index_files,
            fallback,
            allow_symlinks: v.allow_symlinks.unwrap_or(false),
            precompressed: v.precompressed.unwrap_or(true),
            cache_control,
        })
    }

    fn header_ops(&mut self, h: &Option<Spanned<RawHeaderOps>>, key: &str) -> HeaderOps {
        let Some(h) = h else {
            return HeaderOps::default();
        };
        let mut ops = HeaderOps::default();
        let bad = |c: &mut Collector<'_>, what: String| c.error(Some(h.span()), key, what, None);
        let pair = |c: &mut Collector<'_>, k: &str, v: &str| -> Option<(HeaderName, HeaderValue)> {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(v)) => Some((n, v)),
                (Err(_), _) => {
                    c.error(
                        Some(h.span()),
                        key,
                        format!("`{k}` is not a valid header name"),
                        None,
                    );
                    None
                }
                (_, Err(_)) => {
                    c.error(
                        Some(h.span()),
                        key,
                        format!("the value of `{k}` is not a valid header value"),
                        None,
                    );
                    None
                }
            }
        };
        for (k, v) in &h.get_ref().set {
            if let Some(p) = pair(&mut self.c, k, v) {
                ops.set.push(p)
            }
        }
        for (k, v) in &h.get_ref().add {
            if let Some(p) = pair(&mut self.c, k, v) {
                ops.add.push(p)
            }
        }
        for k in &h.get_ref().remove {
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(n) => ops.remove.push(n),
                Err(_) => bad(&mut self.c, format!("`{k}` is not a valid header name")),
            }
        }
        ops
    }

    fn route_options(
        &mut self,
        r: &RawRoute,
        key: &str,
        server: &ServerConfig,
        target: &TargetConfig,
        matcher: &PathMatch,
    ) -> RouteOptions {
        let proxying = matches!(
            target,
            TargetConfig::Upstream(_)
                | TargetConfig::Static(StaticConfig {
                    fallback: StaticFallback::Upstream(_) | StaticFallback::Route(_),
                    ..
                })
        );
        let kind = target.kind();
        let mut inapplicable = Vec::new();
        if !matches!(target, TargetConfig::Upstream(_)) {
            if r.host.is_some() {
                inapplicable.push("host");
            }
            if r.tls_verify.is_some() {
                inapplicable.push("tls_verify");
            }
            if r.tls_ca.is_some() && !matches!(target, TargetConfig::Clerk(_)) {
                inapplicable.push("tls_ca");
            }
            if r.http2.is_some() {
                inapplicable.push("http2");
            }
            if r.websocket.is_some() {
                inapplicable.push("websocket");
            }
            if r.allow_underscore_headers.is_some() {
                inapplicable.push("allow_underscore_headers");
            }
        }
        if matches!(
            target,
            TargetConfig::Redirect(_) | TargetConfig::Respond(_) | TargetConfig::Clerk(_)
        ) {
            if r.strip_prefix.is_some() {
                inapplicable.push("strip_prefix");
            }
            if r.request_headers.is_some() && !matches!(target, TargetConfig::Clerk(_)) {
                inapplicable.push("request_headers");
            }
        }
        if !inapplicable.is_empty() {
            self.c.warn(
                None.or(r.prefix.as_ref().or(r.exact.as_ref()).map(|p| p.span())),
                key,
                format!(
                    "{} has no effect on a {kind} route",
                    inapplicable.join(", ")
                ),
                Some("remove it, or it will surprise the next reader".into()),
            );
        }
        let _ = proxying;
        let host = match &r.host {
            None => HostPolicy::Keep,
            Some(h) if h.get_ref() == "keep" => HostPolicy::Keep,
            Some(h) if h.get_ref() == "upstream" => HostPolicy::Upstream,
            Some(h) => match HeaderValue::from_str(h.get_ref()) {
                Ok(v) if !h.get_ref().is_empty() => HostPolicy::Literal(v),
                _ => {
                    self.c.error(Some(h.span()), format!("{key}.host"), "is not a valid Host value", Some("use \"keep\" (the default), \"upstream\", or a host name such as \"api.internal\"".into()));
                    HostPolicy::Keep
                }
            },
        };
        let tls_ca = r.tls_ca.as_ref().map(|p| {
            let path = self.resolve(p.get_ref());
            self.files.push(path.clone());
            if let Err(e) = crate::tls::client_config(true, Some(&path)) {
                self.c.error(Some(p.span()), format!("{key}.tls_ca"), e, Some("point tls_ca at a PEM file with the CA certificate(s) that signed the backend's certificate".into()));
            }
            path
        });
        let strip_prefix = r.strip_prefix.unwrap_or(false);
        if strip_prefix && matches!(matcher, PathMatch::Prefix(p) if p == "/") {
            self.c.warn(
                r.prefix.as_ref().map(|p| p.span()),
                format!("{key}.strip_prefix"),
                "stripping the prefix `/` changes nothing",
                None,
            );
        }
        let timeouts = Timeouts {
            connect: self.duration(
                &r.connect_timeout,
                &format!("{key}.connect_timeout"),
                server.timeouts.connect,
            ),
            response: self.duration(
                &r.response_timeout,
                &format!("{key}.response_timeout"),
                server.timeouts.response,
            ),
            body: self.duration(
                &r.body_timeout,
                &format!("{key}.body_timeout"),
                server.timeouts.body,
            ),
            idle: self.duration(
                &r.idle_timeout,
                &format!("{key}.idle_timeout"),
                server.timeouts.idle,
            ),
        };
        for (d, v, name) in [
            (timeouts.connect, &r.connect_timeout, "connect_timeout"),
            (timeouts.response, &r.response_timeout, "response_timeout"),
            (timeouts.body, &r.body_timeout, "body_timeout"),
            (timeouts.idle, &r.idle_timeout, "idle_timeout"),
        ] {
            self.nonzero(d, v, &format!("{key}.{name}"));
        }
        let limits = Limits {
            max_request_header_bytes: self.size(
                &r.max_request_header_bytes,
                &format!("{key}.max_request_header_bytes"),
                server.limits.max_request_header_bytes,
            ),
            max_body: self.size(
                &r.max_body,
                &format!("{key}.max_body"),
                server.limits.max_body,
            ),
        };
        if limits.max_request_header_bytes > server.limits.max_request_header_bytes {
            self.c.error(r.max_request_header_bytes.as_ref().map(|v| v.span()), format!("{key}.max_request_header_bytes"), "is larger than server.max_request_header_bytes, which every connection enforces first", Some("raise server.max_request_header_bytes, or lower this".into()));
        }
        RouteOptions {
            strip_prefix,
            host,
            tls_verify: r.tls_verify.unwrap_or(true),
            tls_ca,
            http2: r.http2.unwrap_or(false),
            websocket: r.websocket.unwrap_or(true),
            allow_encoded_slashes: r.allow_encoded_slashes.unwrap_or(false),
            allow_underscore_headers: r.allow_underscore_headers.unwrap_or(false),
            timeouts,
            limits,
            request_headers: self.header_ops(&r.request_headers, &format!("{key}.request_headers")),
            response_headers: self
                .header_ops(&r.response_headers, &format!("{key}.response_headers")),
        }
    }

    fn cross_checks(&mut self, raw: &RawConfig, server: &ServerConfig, sites: &[SiteConfig]) {
        if raw.sites.is_empty() {
            self.c.error(None, "site", "the file defines no [[site]]", Some("add a [[site]] with hosts = [...] and at least one [[site.route]]; see config/gatehouse.toml".into()));
        }
        if server.http.is_empty() && server.https.is_empty() {
            let span = raw.sites.first().map(|s| s.span());
            self.c.error(
                span.map(|_| 0..0),
                "server",
                "no listener: neither server.http nor server.https is set",
                Some("add http = [\"127.0.0.1:8080\"] (or \"0.0.0.0:80\") under [server]".into()),
            );
        }
        let mut all: Vec<(SocketAddr, &str)> =
            server.http.iter().map(|a| (*a, "server.http")).collect();
        all.extend(server.https.iter().map(|a| (*a, "server.https")));
        all.extend(server.admin.iter().map(|a| (*a, "server.admin")));
        let mut seen = HashSet::new();
        for (addr, key) in all {
            if addr.port() != 0 && !seen.insert(addr) {
                self.c.error(
                    None,
                    key,
                    format!("{addr} is used by two listeners"),
                    Some("give every listener its own address or port".into()),
                );
            }
        }
        let any_tls = sites.iter().any(|s| s.tls.is_some());
        if !server.https.is_empty() && !any_tls {
            self.c.warn(raw.server.https.as_ref().map(|h| h.span()), "server.https", "there is an https listener but no site has a certificate: every TLS handshake will fail", Some("add tls = { cert = \"...\", key = \"...\" } (or tls = \"self-signed\") to the sites served over https, or remove server.https".into()));
        }
        if server.https.is_empty() && any_tls {
            self.c.warn(None, "server.https", "sites have certificates but there is no https listener: they are served over plain HTTP only", Some("add https = [\"0.0.0.0:443\"] under [server]".into()));
        }
    }
}

/// `127.0.0.1:8080`, `[::]:443`, `0.0.0.0:80`; a bare port is refused with a hint.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if t.parse::<u16>().is_ok() || t.starts_with(':') {
        let port = t.trim_start_matches(':');
        return Err(format!(
            "`{t}` has no address: write \"0.0.0.0:{port}\" for every interface or \"127.0.0.1:{port}\" for this machine only"
        ));
    }
    if t.starts_with("localhost:") {
        return Err(format!(
            "`{t}`: use an IP address, e.g. \"127.0.0.1:{}\"",
            t.trim_start_matches("localhost:")
        ));
    }
    Err(format!("`{t}` is not an address and port"))
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!("`{t}` is not an IP address or CIDR range"))
}

/// A configured host: `app.example.com`, `*.example.com`, an IP address.
fn parse_host_pattern(text: &str) -> Result<HostPattern, (String, String)> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('.').unwrap_or(&t).to_owned();
    if t.is_empty() {
        return Err((
            "a host is empty".into(),
            "remove the empty string from hosts".into(),
        ));
    }
    if t == "*" {
        return Err((
            "`*` is not a host".into(),
            "to catch every other host, mark the site default = true".into(),
        ));
    }
    if let Some(rest) = t.strip_prefix('.') {
        return Err((
            format!("`{t}` is nginx syntax"),
            format!("write both \"{rest}\" and \"*.{rest}\""),
        ));
    }
    let (wild, name) = match t.strip_prefix("*.") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, t.clone()),
    };
    if name.contains('*') {
        return Err((
            format!("`{t}`: only a leading `*.` wildcard is supported"),
            "write wildcards as \"*.example.com\"".into(),
        ));
    }
    if name.parse::<IpAddr>().is_ok() || (name.starts_with('[') && name.ends_with(']')) {
        if wild {
            return Err((
                format!("`{t}` is a wildcard over an IP address"),
                "list the address itself".into(),
            ));
        }
        return Ok(HostPattern::Exact(name));
    }
    if name.contains(':') {
        return Err((
            format!("`{t}` has a port"),
            "hosts take no port: list the name only; ports belong to server.http / server.https"
                .into(),
        ));
    }
    if !name.is_ascii() {
        return Err((
            format!("`{t}` is not ASCII"),
            "write internationalized names in their xn-- (punycode) form".into(),
        ));
    }
    let valid = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !valid {
        return Err((
            format!("`{t}` is not a valid host name"),
            "use letters, digits, `-` and dots, e.g. \"app.example.com\"".into(),
        ));
    }
    Ok(if wild {
        HostPattern::Wildcard(name)
    } else {
        HostPattern::Exact(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_bare_ports_get_a_hint() {
        assert_eq!(parse_listen("127.0.0.1:8080").unwrap().port(), 8080);
        assert!(parse_listen("[::]:443").is_ok());
        assert!(parse_listen("8080").unwrap_err().contains("0.0.0.0:8080"));
        assert!(
            parse_listen(":8080")
                .unwrap_err()
                .contains("127.0.0.1:8080")
        );
        assert!(
            parse_listen("localhost:80")
                .unwrap_err()
                .contains("127.0.0.1:80")
        );
    }

    #[test]
    fn trusted_proxy_entries_are_addresses_or_ranges() {
        assert_eq!(parse_net("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }

    #[test]
    fn host_patterns_are_lowercased_and_wildcards_split() {
        assert_eq!(
            parse_host_pattern("App.Example.com.").unwrap(),
            HostPattern::Exact("app.example.com".into())
        );
        assert_eq!(
            parse_host_pattern("*.preview.example.com").unwrap(),
            HostPattern::Wildcard("preview.example.com".into())
        );
        assert_eq!(
            parse_host_pattern("127.0.0.1").unwrap(),
            HostPattern::Exact("127.0.0.1".into())
        );
    }

    #[test]
    fn nginx_dot_hosts_get_a_translation_hint() {
        let (msg, help) = parse_host_pattern(".example.com").unwrap_err();
        assert!(msg.contains("nginx"));
        assert!(help.contains("*.example.com"));
    }

    #[test]
    fn bad_hosts_are_refused() {
        for h in [
            "",
            "*",
            "a.*.com",
            "app.example.com:8080",
            "exa mple.com",
            "a..b",
            "*.127.0.0.1",
            "ünï.com",
        ] {
            assert!(parse_host_pattern(h).is_err(), "{h}");
        }
    }
}

/// A static fallback file: `/`-separated segments that the static target itself would serve
/// (no empty, `.` or `..` segment, no dotfile, no backslash or NUL).
fn is_served_file_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && rest
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.starts_with('.') && !seg.contains(['\\', '\0', '%']))
}

#[cfg(test)]
mod fallback_path_tests {
    use super::is_served_file_path;

    #[test]
    fn a_file_under_root_is_accepted() {
        assert!(is_served_file_path("/index.html"));
        assert!(is_served_file_path("/app/shell.html"));
    }

    #[test]
    fn paths_that_leave_root_or_name_dotfiles_are_refused() {
        for p in [
            "index.html",
            "/",
            "/../etc/passwd",
            "/a/../b",
            "/.env",
            "/a//b",
            "/a/",
            "/a%2fb",
            "/a\\b",
        ] {
            assert!(!is_served_file_path(p), "{p}");
        }
    }
}

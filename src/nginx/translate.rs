//! nginx directives → Gatehouse's model, with a report entry for every directive.
//!
//! nginx inherits settings from `http` to `server` to `location`, and some directives
//! (`add_header`, `proxy_set_header`) are inherited only when the inner level sets none of its
//! own; [`Inherited`] carries that state down. Each handled directive is recorded once in the
//! report; a final sweep reports anything the walk never looked at as left out.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::parse::Directive;
use super::{Entry, Outcome, Report};

/// The translated configuration.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub http: BTreeSet<String>,
    pub https: BTreeSet<String>,
    pub trusted_proxies: Vec<String>,
    pub clerk: bool,
    pub sites: Vec<Site>,
    pub report: Report,
}

#[derive(Debug, Clone, Default)]
pub struct Site {
    pub from: String,
    pub hosts: Vec<String>,
    pub default: bool,
    pub tls: Option<(String, String)>,
    pub redirect_https: bool,
    pub hsts: Option<String>,
    pub routes: Vec<Route>,
    /// Listens on plain HTTP (false for a TLS-only server block).
    pub plain: bool,
    pub secure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    Prefix(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Upstream(Vec<String>),
    Redirect {
        to: String,
        status: u16,
    },
    Respond {
        status: u16,
        body: String,
    },
    Clerk,
    Static {
        root: String,
        index: Vec<String>,
        fallback: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Route {
    pub from: String,
    pub matcher: Matcher,
    pub target: Target,
    pub strip_prefix: bool,
    pub host: Option<String>,
    pub max_body: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub request_set: Vec<(String, String)>,
    pub response_set: Vec<(String, String)>,
    pub response_remove: Vec<String>,
}

/// Settings that flow from `http` to `server` to `location`.
#[derive(Debug, Clone, Default)]
struct Inherited {
    max_body: Option<String>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    root: Option<String>,
    index: Option<Vec<String>>,
    add_header: Vec<(String, String)>,
    proxy_set_header: Vec<(String, String)>,
    hide_header: Vec<String>,
}

struct Upstream {
    servers: Vec<String>,
}

struct Tr<'a> {
    prefix: &'a Path,
    report: Report,
    seen: HashSet<(PathBuf, usize, String)>,
    upstreams: BTreeMap<String, Upstream>,
    model: Model,
}

fn key(d: &Directive) -> (PathBuf, usize, String) {
    (d.file.clone(), d.line, d.name.clone())
}

/// Translates parsed directives. `prefix` resolves relative paths (certificates, roots).
pub fn translate(directives: &[Directive], prefix: &Path) -> Model {
    let mut t = Tr {
        prefix,
        report: Report::default(),
        seen: HashSet::new(),
        upstreams: BTreeMap::new(),
        model: Model::default(),
    };
    let http_blocks: Vec<&Directive> = directives.iter().filter(|d| d.name == "http").collect();
    for d in directives {
        match d.name.as_str() {
            "http" => t.note(d, Outcome::Translated, "the http context: its servers become sites"),
            "server" | "upstream" | "location" | "map" | "geo" => {}
            "events" => t.note_tree(d, Outcome::LeftOut, "connection processing is Gatehouse's own (tokio); no events block is needed"),
            "user" | "worker_processes" | "worker_rlimit_nofile" | "pid" | "daemon" | "master_process" | "worker_cpu_affinity" | "worker_shutdown_timeout" => {
                t.note(d, Outcome::LeftOut, "process settings: systemd runs Gatehouse (systemd/gatehouse.service sets the user and limits; `workers` sets threads)")
            }
            "error_log" => t.note(d, Outcome::LeftOut, "Gatehouse logs to stderr (the journal); set the level with [log] level"),
            "load_module" | "include" | "env" | "stream" | "mail" => t.note_tree(d, Outcome::LeftOut, "not supported by Gatehouse"),
            _ => {}
        }
    }
    let contexts: Vec<&[Directive]> = if http_blocks.is_empty() {
        vec![directives]
    } else {
        http_blocks.iter().map(|h| h.children()).collect()
    };
    for ctx in contexts {
        t.http(ctx);
    }
    t.merge_redirect_servers();
    t.pick_default();
    // Anything not looked at is reported as left out.
    let mut all = Vec::new();
    flatten(directives, &mut all);
    for d in all {
        if !t.seen.contains(&key(d)) {
            t.note(
                d,
                Outcome::LeftOut,
                "not translated: Gatehouse has no equivalent",
            );
        }
    }
    t.report.entries.sort_by_key(|e| natural(&e.at));
    t.model.report = t.report;
    t.model
}

fn natural(at: &str) -> (String, usize) {
    match at.rsplit_once(':') {
        Some((f, l)) => (f.to_owned(), l.parse().unwrap_or(0)),
        None => (at.to_owned(), 0),
    }
}

fn flatten<'a>(ds: &'a [Directive], out: &mut Vec<&'a Directive>) {
    for d in ds {
        out.push(d);
        flatten(d.children(), out);
    }
}

/// nginx time (`60`, `60s`, `1m30s`, `500ms`) → Gatehouse's duration text.
pub fn nginx_time(t: &str) -> Option<String> {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = t.trim().chars().peekable();
    if t.trim().is_empty() {
        return None;
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                Duration::from_millis(n)
            }
            's' => Duration::from_secs(n),
            'm' => Duration::from_secs(n * 60),
            'h' => Duration::from_secs(n * 3600),
            'd' => Duration::from_secs(n * 86400),
            'w' => Duration::from_secs(n * 7 * 86400),
            _ => return None,
        };
        total += unit;
    }
    if !num.is_empty() {
        total += Duration::from_secs(num.parse().ok()?);
    }
    Some(crate::config::units::format_duration(total))
}

/// nginx size (`10m`, `512k`, `1g`, `100`) → Gatehouse's size text.
pub fn nginx_size(s: &str) -> Option<String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1024u64),
        'm' | 'M' => (&s[..s.len() - 1], 1024 * 1024),
        'g' | 'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    Some(crate::config::units::format_size(n.checked_mul(mul)?))
}

/// nginx variables in a redirect target → Gatehouse's template variables, or `None` when the
/// text uses a variable Gatehouse does not have.
pub fn map_variables(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let (name, after) = if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}')?;
            (&r[..end], &r[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let mapped = match name {
            "host" | "server_name" | "http_host" => "host",
            "request_uri" => "request_uri",
            "uri" | "document_uri" => "path",
            "args" | "query_string" => "query",
            "is_args" => "is_args",
            "scheme" => "scheme",
            _ => return None,
        };
        out.push_str("${");
        out.push_str(mapped);
        out.push('}');
        rest = after;
    }
    out.push_str(rest);
    Some(out)
}

/// A regex location that says the same as a prefix: `^/api/`, `^/api(/|$)`, `^/api`.
pub fn regex_as_prefix(re: &str) -> Option<String> {
    let body = re.strip_prefix('^')?;
    let body = body
        .strip_suffix("(/|$)")
        .or_else(|| body.strip_suffix("(/.*)?$"))
        .unwrap_or(body);
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() || !body.starts_with('/') {
        return None;
    }
    let ok = body
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_'));
    ok.then(|| body.to_owned())
}

impl Tr<'_> {
    fn note(&mut self, d: &Directive, outcome: Outcome, note: &str) {
        if self.seen.insert(key(d)) {
            self.report.entries.push(Entry {
                at: d.at(),
                directive: d.head(),
                outcome,
                note: note.to_owned(),
            });
        }
    }

    /// Notes a block and everything in it.
    fn note_tree(&mut self, d: &Directive, outcome: Outcome, note: &str) {
        self.note(d, outcome, note);
        let mut all = Vec::new();
        flatten(d.children(), &mut all);
        for c in all {
            self.note(c, outcome, note);
        }
    }

    fn path(&self, p: &str) -> String {
        let path = Path::new(p);
        if path.is_absolute() {
            p.to_owned()
        } else {
            self.prefix.join(path).display().to_string()
        }
    }

    /// Applies a directive that changes inherited settings; returns false if it is not one.
    fn inherit(
        &mut self,
        d: &Directive,
        inh: &mut Inherited,
        fresh_headers: &mut bool,
        fresh_proxy_headers: &mut bool,
    ) -> bool {
        match d.name.as_str() {
            "client_max_body_size" => {
                match d.arg(0).and_then(nginx_size) {
                    Some(_) if d.arg(0) == Some("0") => {
                        inh.max_body = Some("1024GiB".into());
                        self.note(d, Outcome::Approximated, "0 (no limit) becomes max_body = \"1024GiB\": Gatehouse always has a limit");
                    }
                    Some(s) => {
                        self.note(d, Outcome::Translated, &format!("max_body = \"{s}\""));
                        inh.max_body = Some(s);
                    }
                    None => self.note(d, Outcome::LeftOut, "cannot read the size"),
                }
                true
            }
            "proxy_connect_timeout" => {
                match d.arg(0).and_then(nginx_time) {
                    Some(t) => {
                        self.note(
                            d,
                            Outcome::Translated,
                            &format!("connect_timeout = \"{t}\""),
                        );
                        inh.connect_timeout = Some(t);
                    }
                    None => self.note(d, Outcome::LeftOut, "cannot read the time"),
                }
                true
            }
            "proxy_read_timeout" => {
                match d.arg(0).and_then(nginx_time) {
                    Some(t) => {
                        self.note(d, Outcome::Translated, &format!("response_timeout and body_timeout = \"{t}\": the wait for the response headers, and between two reads of the response body"));
                        inh.read_timeout = Some(t);
                    }
                    None => self.note(d, Outcome::LeftOut, "cannot read the time"),
                }
                true
            }
            "root" => {
                if let Some(r) = d.arg(0) {
                    inh.root = Some(self.path(r));
                    self.note(d, Outcome::Translated, "the folder of static routes");
                }
                true
            }
            "index" => {
                inh.index = Some(d.args.iter().map(|a| a.text.clone()).collect());
                self.note(d, Outcome::Translated, "index files of static routes");
                true
            }
            "add_header" => {
                if !*fresh_headers {
                    inh.add_header.clear();
                    *fresh_headers = true;
                }
                if let (Some(n), Some(v)) = (d.arg(0), d.arg(1)) {
                    if n.eq_ignore_ascii_case("strict-transport-security") {
                        inh.add_header.push((n.to_owned(), v.to_owned()));
                        self.note(d, Outcome::Translated, "hsts on the site");
                    } else if v.contains('$') {
                        self.note(
                            d,
                            Outcome::LeftOut,
                            "the value uses nginx variables, which Gatehouse headers do not expand",
                        );
                    } else {
                        inh.add_header.push((n.to_owned(), v.to_owned()));
                        let always = d.arg(2) == Some("always");
                        self.note(
                            d,
                            if always { Outcome::Translated } else { Outcome::Approximated },
                            if always {
                                "response_headers set"
                            } else {
                                "response_headers set: nginx adds it to 2xx and 3xx responses only (without `always`); Gatehouse adds it to every response"
                            },
                        );
                    }
                }
                true
            }
            "proxy_set_header" => {
                if !*fresh_proxy_headers {
                    inh.proxy_set_header.clear();
                    *fresh_proxy_headers = true;
                }
                if let (Some(n), Some(v)) = (d.arg(0), d.arg(1)) {
                    inh.proxy_set_header.push((n.to_owned(), v.to_owned()));
                    let (outcome, note) = classify_proxy_header(n, v);
                    self.note(d, outcome, note);
                }
                true
            }
            "proxy_hide_header" => {
                if let Some(n) = d.arg(0) {
                    inh.hide_header.push(n.to_owned());
                    self.note(d, Outcome::Translated, "response_headers remove");
                }
                true
            }
            "set_real_ip_from" => {
                if let Some(n) = d.arg(0) {
                    if n == "unix:" {
                        self.note(
                            d,
                            Outcome::LeftOut,
                            "unix sockets are not a listener type of Gatehouse",
                        );
                    } else {
                        self.model.trusted_proxies.push(n.to_owned());
                        self.note(d, Outcome::Translated, "server.trusted_proxies");
                    }
                }
                true
            }
            "real_ip_header" | "real_ip_recursive" => {
                self.note(d, Outcome::Approximated, "Gatehouse reads X-Forwarded-For from trusted_proxies, walking back over trusted hops (real_ip_recursive on)");
                true
            }
            "proxy_http_version" => {
                if d.arg(0) == Some("1.1") {
                    self.note(
                        d,
                        Outcome::Translated,
                        "built in: Gatehouse always speaks HTTP/1.1 with keep-alive to backends",
                    );
                } else {
                    self.note(
                        d,
                        Outcome::Approximated,
                        "Gatehouse speaks HTTP/1.1 to backends",
                    );
                }
                true
            }
            "proxy_redirect" if d.arg(0) == Some("off") => {
                self.note(
                    d,
                    Outcome::Translated,
                    "built in: Gatehouse does not rewrite backends' Location headers",
                );
                true
            }
            "proxy_buffering" | "proxy_request_buffering" if d.arg(0) == Some("off") => {
                self.note(
                    d,
                    Outcome::Translated,
                    "built in: Gatehouse streams bodies both ways",
                );
                true
            }
            "proxy_buffering"
            | "proxy_buffers"
            | "proxy_buffer_size"
            | "proxy_busy_buffers_size"
            | "proxy_request_buffering"
            | "client_body_buffer_size" => {
                self.note(
                    d,
                    Outcome::LeftOut,
                    "Gatehouse streams bodies and buffers nothing whole; no buffer settings",
                );
                true
            }
            "client_body_timeout" | "send_timeout" | "proxy_send_timeout" => {
                self.note(d, Outcome::Approximated, "body_timeout (default 60s) bounds every wait for a body to move: between two reads of either body, and for a client or backend to take what is written; set it by hand if needed");
                true
            }
            "keepalive_timeout" => {
                match d.arg(0).and_then(nginx_time) {
                    Some(t) => self.note(d, Outcome::Approximated, &format!("set server.idle_timeout = \"{t}\" by hand if you need it (it also bounds idle upstream connections)")),
                    None => self.note(d, Outcome::LeftOut, "cannot read the time"),
                }
                true
            }
            "client_header_timeout" => {
                self.note(d, Outcome::Approximated, "server.header_read_timeout is the equivalent (default 10s); set it by hand if needed");
                true
            }
            "large_client_header_buffers" | "client_header_buffer_size" => {
                self.note(
                    d,
                    Outcome::Approximated,
                    "server.max_request_header_bytes (default 32KiB) bounds the whole request head",
                );
                true
            }
            "access_log" => {
                self.note(d, Outcome::Approximated, "set [log] access_log = \"/var/log/gatehouse/access.log\" (nginx's combined format is the default) by hand");
                true
            }
            "error_log" => {
                self.note(
                    d,
                    Outcome::LeftOut,
                    "Gatehouse logs to stderr (the journal)",
                );
                true
            }
            "gzip" | "gzip_types" | "gzip_vary" | "gzip_proxied" | "gzip_comp_level"
            | "gzip_min_length" | "gzip_http_version" | "gzip_buffers" | "gzip_disable" => {
                self.note(d, Outcome::LeftOut, "Gatehouse does not compress responses: let the app compress, or ship .gz/.br files next to static ones (served when clients accept them)");
                true
            }
            "gzip_static" => {
                self.note(
                    d,
                    Outcome::Translated,
                    "built in: static routes serve .gz and .br siblings",
                );
                true
            }
            "ssl_protocols"
            | "ssl_ciphers"
            | "ssl_prefer_server_ciphers"
            | "ssl_session_cache"
            | "ssl_session_timeout"
            | "ssl_session_tickets"
            | "ssl_dhparam"
            | "ssl_ecdh_curve"
            | "ssl_stapling"
            | "ssl_stapling_verify"
            | "ssl_trusted_certificate"
            | "ssl_buffer_size"
            | "ssl_early_data" => {
                self.note(d, Outcome::Approximated, "Gatehouse's TLS settings are fixed and modern (TLS 1.2 and 1.3, rustls defaults, session tickets and cache on)");
                true
            }
            "types" => {
                self.note_tree(
                    d,
                    Outcome::Translated,
                    "built in: static routes choose Content-Type by extension",
                );
                true
            }
            "sendfile"
            | "tcp_nopush"
            | "tcp_nodelay"
            | "types_hash_max_size"
            | "server_tokens"
            | "charset"
            | "default_type"
            | "server_names_hash_bucket_size"
            | "server_names_hash_max_size"
            | "resolver"
            | "resolver_timeout"
            | "open_file_cache"
            | "open_file_cache_valid"
            | "etag"
            | "underscores_in_headers"
            | "ignore_invalid_headers"
            | "merge_slashes"
            | "absolute_redirect"
            | "port_in_redirect"
            | "server_name_in_redirect"
            | "keepalive_requests"
            | "reset_timedout_connection"
            | "proxy_ignore_client_abort"
            | "include" => {
                let note = match d.name.as_str() {
                    "tcp_nodelay" => {
                        "built in: TCP_NODELAY is on where nginx turns it on (kept-alive connections, TLS, HTTP/2) and before a response's second write"
                    }
                    "types" | "default_type" => {
                        "built in: static routes choose Content-Type by extension"
                    }
                    "merge_slashes" => "built in: routing merges slashes",
                    "etag" => "built in: static routes send ETag",
                    "underscores_in_headers" => {
                        "Gatehouse drops headers with `_` unless a route sets allow_underscore_headers = true"
                    }
                    "server_tokens" => "Gatehouse sends no Server header of its own",
                    "sendfile" | "tcp_nopush" => "file sending is Gatehouse's own",
                    _ => "no equivalent needed in Gatehouse",
                };
                self.note(d, Outcome::Translated, note);
                true
            }
            _ => false,
        }
    }

    fn http(&mut self, ctx: &[Directive]) {
        let mut inh = Inherited::default();
        let (mut a, mut b) = (false, false);
        for d in ctx {
            if d.name == "upstream" {
                self.upstream(d);
            }
        }
        for d in ctx {
            if d.name == "upstream" || d.name == "server" {
                continue;
            }
            if !self.inherit(d, &mut inh, &mut a, &mut b) {
                match d.name.as_str() {
                    "map" | "geo" | "split_clients" => self.note_tree(d, Outcome::LeftOut, "variables are not supported; routes that use them are reported too"),
                    "log_format" => self.note(d, Outcome::LeftOut, "Gatehouse's access log is nginx's combined format plus its own fields, or JSON"),
                    "limit_req_zone" | "limit_conn_zone" | "limit_req" | "limit_conn" => self.note(d, Outcome::LeftOut, "rate and connection limits are not supported yet (only server.max_connections)"),
                    "proxy_cache_path" => self.note(d, Outcome::LeftOut, "Gatehouse does not cache"),
                    _ => {}
                }
            }
        }
        for d in ctx {
            if d.name == "server" {
                self.server(d, &inh);
            }
        }
    }

    fn upstream(&mut self, d: &Directive) {
        let Some(name) = d.arg(0) else { return };
        let mut servers = Vec::new();
        self.note(
            d,
            Outcome::Translated,
            &format!("the upstream list of routes that proxy_pass to http://{name}"),
        );
        for s in d.children() {
            match s.name.as_str() {
                "server" => {
                    let Some(addr) = s.arg(0) else { continue };
                    if addr.starts_with("unix:") {
                        self.note(
                            s,
                            Outcome::LeftOut,
                            "unix socket backends are not supported: listen on 127.0.0.1 instead",
                        );
                        continue;
                    }
                    let flags: Vec<&str> = s.args.iter().skip(1).map(|a| a.text.as_str()).collect();
                    if flags.contains(&"down") {
                        self.note(s, Outcome::LeftOut, "marked down: not in the list");
                        continue;
                    }
                    if flags.contains(&"backup") {
                        self.note(s, Outcome::LeftOut, "backup servers are not supported: Gatehouse has no standby tier (add it to the list to share the load, or leave it out)");
                        continue;
                    }
                    let addr = if addr.contains(':') {
                        addr.to_owned()
                    } else {
                        format!("{addr}:80")
                    };
                    let weight = flags
                        .iter()
                        .find_map(|f| f.strip_prefix("weight="))
                        .and_then(|w| w.parse::<usize>().ok());
                    let other: Vec<&&str> =
                        flags.iter().filter(|f| !f.starts_with("weight=")).collect();
                    match weight {
                        Some(w) if w > 1 => {
                            for _ in 0..w.min(10) {
                                servers.push(format!("http://{addr}"));
                            }
                            self.note(
                                s,
                                Outcome::Approximated,
                                &format!(
                                    "weight={w}: listed {} times (round-robin over the list)",
                                    w.min(10)
                                ),
                            );
                        }
                        _ if !other.is_empty() => {
                            servers.push(format!("http://{addr}"));
                            self.note(s, Outcome::Approximated, &format!("{}: Gatehouse skips a refusing backend for 10s (max_fails=1 fail_timeout=10s)", other.iter().map(|s| **s).collect::<Vec<_>>().join(" ")));
                        }
                        _ => {
                            servers.push(format!("http://{addr}"));
                            self.note(s, Outcome::Translated, "a backend of the list");
                        }
                    }
                }
                "keepalive" | "keepalive_timeout" | "keepalive_requests" => self.note(
                    s,
                    Outcome::Translated,
                    "built in: backend connections are pooled and kept alive (up to 256 idle per backend and worker)",
                ),
                "least_conn" | "ip_hash" | "hash" | "random" | "least_time" | "sticky" => {
                    self.note(s, Outcome::Approximated, "Gatehouse balances round-robin")
                }
                _ => self.note(s, Outcome::LeftOut, "not supported in upstream lists"),
            }
        }
        self.upstreams.insert(name.to_owned(), Upstream { servers });
    }

    fn server(&mut self, d: &Directive, http: &Inherited) {
        let mut inh = http.clone();
        let (mut fresh_h, mut fresh_p) = (false, false);
        let mut site = Site {
            from: d.at(),
            ..Default::default()
        };
        let mut listens_default = false;
        let mut cert = None;
        let mut key = None;
        let mut redirect_only = false;
        self.note(d, Outcome::Translated, "a [[site]]");
        for c in d.children() {
            if c.name == "location" {
                continue;
            }
            if self.inherit(c, &mut inh, &mut fresh_h, &mut fresh_p) {
                continue;
            }
            match c.name.as_str() {
                "listen" => {
                    let Some(a) = c.arg(0) else { continue };
                    let flags: Vec<&str> = c.args.iter().skip(1).map(|a| a.text.as_str()).collect();
                    let addr = if a.starts_with('[') {
                        if a.contains("]:") { a.to_owned() } else { format!("{a}:80") }
                    } else if let Ok(port) = a.parse::<u16>() {
                        format!("0.0.0.0:{port}")
                    } else if a.contains(':') {
                        a.to_owned()
                    } else {
                        format!("{a}:80")
                    };
                    let ssl = flags.contains(&"ssl");
                    if ssl {
                        self.model.https.insert(addr.clone());
                        site.secure = true;
                    } else {
                        self.model.http.insert(addr.clone());
                        site.plain = true;
                    }
                    if flags.contains(&"default_server") || flags.contains(&"default") {
                        listens_default = true;
                    }
                    let unknown: Vec<&&str> = flags.iter().filter(|f| !matches!(**f, "ssl" | "http2" | "default_server" | "default" | "reuseport" | "ipv6only=on")).collect();
                    let mut note = format!("server.{} = \"{addr}\"", if ssl { "https" } else { "http" });
                    if flags.contains(&"http2") {
                        note.push_str("; HTTP/2 is always offered (ALPN on TLS, h2c prior knowledge on plain listeners)");
                    }
                    if unknown.is_empty() {
                        self.note(c, Outcome::Translated, &note);
                    } else {
                        note.push_str(&format!("; ignored: {}", unknown.iter().map(|s| **s).collect::<Vec<_>>().join(" ")));
                        self.note(c, Outcome::Approximated, &note);
                    }
                }
                "http2" => self.note(c, Outcome::Translated, "HTTP/2 is always offered"),
                "server_name" => {
                    let mut notes = Vec::new();
                    let mut approx = false;
                    for a in &c.args {
                        let n = a.text.to_ascii_lowercase();
                        if n == "_" || n.is_empty() || n == "\"\"" {
                            continue;
                        }
                        if n.starts_with('~') {
                            approx = true;
                            notes.push(format!("{n}: regex server names are not supported; list the names"));
                        } else if let Some(rest) = n.strip_prefix('.') {
                            site.hosts.push(rest.to_owned());
                            site.hosts.push(format!("*.{rest}"));
                        } else if n.ends_with(".*") {
                            approx = true;
                            notes.push(format!("{n}: trailing wildcards are not supported; list the names"));
                        } else if n.contains('*') && !n.starts_with("*.") {
                            approx = true;
                            notes.push(format!("{n}: only leading `*.` wildcards are supported"));
                        } else if !site.hosts.contains(&n) {
                            site.hosts.push(n);
                        }
                    }
                    let mut note = format!("hosts = [{}]", site.hosts.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", "));
                    if !notes.is_empty() {
                        note.push_str("; ");
                        note.push_str(&notes.join("; "));
                    }
                    self.note(c, if approx { Outcome::Approximated } else { Outcome::Translated }, &note);
                }
                "ssl_certificate" => {
                    cert = c.arg(0).map(|p| self.path(p));
                    self.note(c, Outcome::Translated, "tls.cert");
                }
                "ssl_certificate_key" => {
                    key = c.arg(0).map(|p| self.path(p));
                    self.note(c, Outcome::Translated, "tls.key");
                }
                "ssl" if c.arg(0) == Some("on") => {
                    self.note(c, Outcome::Translated, "TLS on this server's listeners");
                }
                "return" | "rewrite" if is_https_redirect(c) => {
                    redirect_only = true;
                    self.note(c, Outcome::Translated, "redirect_https = true on the site with these hosts (308)");
                }
                "return" if c.arg(0) == Some("404") && c.args.len() == 1 => {
                    self.note(c, Outcome::Translated, "the default answer for paths no route matches (404)");
                }
                "if" if is_certbot_if(c) => {
                    redirect_only = true;
                    self.note_tree(c, Outcome::Translated, "certbot's redirect: redirect_https = true on the site with this host");
                }
                "if" => self.note_tree(c, Outcome::LeftOut, "`if` blocks are not supported: express the condition as routes or do it in the app"),
                "return" | "rewrite" => {
                    // A server-level return/rewrite answers every path: a root route.
                    if let Some(r) = self.return_or_rewrite(c, &Matcher::Prefix("/".into())) {
                        site.routes.push(self.finish(r, &inh, c));
                    }
                }
                _ => {}
            }
        }
        if let (Some(c), Some(k)) = (cert.clone(), key.clone()) {
            site.tls = Some((c, k));
        }
        if let Some((_, v)) = inh
            .add_header
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("strict-transport-security"))
        {
            site.hsts = Some(v.clone());
        }
        site.default = listens_default;
        let mut named: BTreeMap<String, &Directive> = BTreeMap::new();
        collect_named(d.children(), &mut named);
        self.locations(d.children(), &inh, &mut site, &named, 0);
        if redirect_only
            && site
                .routes
                .iter()
                .all(|r| matches!(r.target, Target::Respond { status: 404, .. }))
            && !site.secure
        {
            // Merged into the TLS site with these hosts afterwards.
            site.redirect_https = true;
            site.routes.clear();
        }
        self.model.sites.push(site);
    }

    fn locations(
        &mut self,
        ds: &[Directive],
        inh: &Inherited,
        site: &mut Site,
        named: &BTreeMap<String, &Directive>,
        depth: usize,
    ) {
        for l in ds.iter().filter(|d| d.name == "location") {
            let (modifier, path) = match (l.arg(0), l.arg(1)) {
                (Some(m), Some(p)) => (Some(m), p),
                (Some(p), None) => (None, p),
                _ => continue,
            };
            let matcher = match modifier {
                None if path.starts_with('@') => {
                    // Named: translated where try_files uses it.
                    continue;
                }
                None | Some("^~") => Matcher::Prefix(path.to_owned()),
                Some("=") => Matcher::Exact(path.to_owned()),
                Some("~") | Some("~*") => match regex_as_prefix(path) {
                    Some(p) => {
                        self.note(
                            l,
                            Outcome::Approximated,
                            &format!(
                                "the regex says the same as prefix = \"{p}\" (on path segments)"
                            ),
                        );
                        Matcher::Prefix(p)
                    }
                    None => {
                        self.note_tree(l, Outcome::LeftOut, "regex locations are not supported: write the paths as prefix or exact routes");
                        continue;
                    }
                },
                Some(other) => {
                    self.note_tree(
                        l,
                        Outcome::LeftOut,
                        &format!("unknown location modifier {other}"),
                    );
                    continue;
                }
            };
            if depth > 0 {
                self.note(l, Outcome::Approximated, "a nested location: translated as a route of its own, with the settings it inherits");
            }
            let mut linh = inh.clone();
            let (mut fh, mut fp) = (false, false);
            for c in l.children() {
                if c.name != "location" {
                    self.inherit(c, &mut linh, &mut fh, &mut fp);
                }
            }
            if let Some(r) = self.location(l, &matcher, &linh, named) {
                if let Matcher::Prefix(p) = &matcher {
                    let bare = p.trim_end_matches('/');
                    if p != "/" && p.ends_with('/') {
                        self.note(l, Outcome::Approximated, &format!("prefix = \"{bare}\": Gatehouse also serves {bare} itself (nginx's `location {p}` does not match it)"));
                    } else if p != "/" {
                        self.note(l, Outcome::Approximated, &format!("prefix = \"{bare}\" matches on path segments: nginx's `location {p}` also matches {bare}x and {bare}-other; Gatehouse's does not"));
                    } else {
                        self.note(l, Outcome::Translated, "a route");
                    }
                } else {
                    self.note(l, Outcome::Translated, "an exact route");
                }
                if site
                    .routes
                    .iter()
                    .any(|x| x.matcher == r.matcher || normalized_eq(&x.matcher, &r.matcher))
                {
                    self.report.entries.push(Entry { at: l.at(), directive: l.head(), outcome: Outcome::LeftOut, note: "another location already has this path in Gatehouse's terms (`/x` and `/x/` are one prefix)".into() });
                } else {
                    site.routes.push(r);
                }
            }
            let nested: Vec<Directive> = l
                .children()
                .iter()
                .filter(|c| c.name == "location")
                .cloned()
                .collect();
            if !nested.is_empty() {
                self.locations(&nested, &linh, site, named, depth + 1);
            }
        }
    }

    /// The route of one location, or `None` (reported) when it cannot be expressed.
    fn location(
        &mut self,
        l: &Directive,
        matcher: &Matcher,
        inh: &Inherited,
        named: &BTreeMap<String, &Directive>,
    ) -> Option<Route> {
        let find = |n: &str| l.children().iter().find(|c| c.name == n);
        let mut strip_by_rewrite = false;
        for c in l.children() {
            match c.name.as_str() {
                "location" => {}
                "if" => self.note_tree(c, Outcome::LeftOut, "`if` blocks are not supported: express the condition as routes or do it in the app"),
                "expires" => self.note(c, Outcome::Approximated, "set Cache-Control with response_headers (or static.cache_control) by hand"),
                "try_files" | "alias" | "proxy_pass" | "return" => {}
                "rewrite" if is_strip_rewrite(c, matcher) => {
                    strip_by_rewrite = true;
                    self.note(c, Outcome::Translated, "strip_prefix = true (the rewrite removes the location's prefix)");
                }
                "rewrite" => {}
                "internal" => self.note(c, Outcome::LeftOut, "internal locations are not supported"),
                "deny" | "allow" | "auth_basic" | "auth_basic_user_file" | "auth_request" => self.note(c, Outcome::LeftOut, "access control is not supported: protect the route in the app"),
                "proxy_cache" | "proxy_cache_valid" | "proxy_cache_key" | "proxy_cache_bypass" | "proxy_no_cache" => self.note(c, Outcome::LeftOut, "Gatehouse does not cache"),
                "proxy_ssl_verify" if c.arg(0) == Some("off") => {}
                "proxy_ssl_server_name" | "proxy_ssl_name" | "proxy_ssl_verify" | "proxy_ssl_trusted_certificate" => self.note(c, Outcome::Approximated, "Gatehouse verifies https backends against the system roots (tls_ca adds a CA; tls_verify = false turns it off)"),
                "proxy_intercept_errors" | "error_page" => self.note(c, Outcome::LeftOut, "custom error pages are not supported"),
                _ => {}
            }
        }
        let route = if let Some(pp) = find("proxy_pass") {
            self.proxy_pass(l, pp, matcher, inh, strip_by_rewrite)
        } else if let Some(r) = find("return").or_else(|| {
            l.children()
                .iter()
                .find(|c| c.name == "rewrite" && !is_strip_rewrite(c, matcher))
        }) {
            self.return_or_rewrite(r, matcher)
        } else {
            self.static_files(l, matcher, inh, named)
        };
        route.map(|r| self.finish(r, inh, l))
    }

    fn proxy_pass(
        &mut self,
        l: &Directive,
        pp: &Directive,
        matcher: &Matcher,
        inh: &Inherited,
        strip_by_rewrite: bool,
    ) -> Option<Route> {
        let url = pp.arg(0)?;
        if url.contains('$') {
            self.note(
                pp,
                Outcome::LeftOut,
                "proxy_pass with variables is not supported: write the backend's address",
            );
            return None;
        }
        let (scheme, rest) = url.split_once("://")?;
        if rest.starts_with("unix:") {
            self.note(
                pp,
                Outcome::LeftOut,
                "unix socket backends are not supported: listen on 127.0.0.1 instead",
            );
            return None;
        }
        let (authority, uri) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let headers = &inh.proxy_set_header;
        let is_clerk = authority.contains("clerk.")
            && headers.iter().any(|(n, _)| {
                n.eq_ignore_ascii_case("clerk-secret-key")
                    || n.eq_ignore_ascii_case("clerk-proxy-url")
            });
        if is_clerk {
            self.model.clerk = true;
            self.note(pp, Outcome::Translated, "clerk = true: Gatehouse's built-in Frontend API proxy (prefix stripped, headers set, Location rewritten, cookies kept)");
            return Some(self.route(l, matcher.clone(), Target::Clerk));
        }
        let backends: Vec<String> = match self.upstreams.get(authority) {
            Some(u) if !u.servers.is_empty() => u
                .servers
                .iter()
                .map(|s| s.replacen("http://", &format!("{scheme}://"), 1))
                .collect(),
            Some(_) => {
                self.note(
                    pp,
                    Outcome::LeftOut,
                    &format!("the upstream {authority} has no usable server"),
                );
                return None;
            }
            None => vec![format!("{scheme}://{authority}")],
        };
        let mut strip = strip_by_rewrite;
        let mut backends = backends;
        let mut note = format!("upstream = {}", backends.join(", "));
        let mut outcome = Outcome::Translated;
        if let Some(uri) = uri {
            // With a URI part, nginx replaces the matched prefix with it.
            strip = true;
            for b in &mut backends {
                b.push_str(uri);
            }
            let loc_slash = match matcher {
                Matcher::Prefix(p) | Matcher::Exact(p) => p.ends_with('/'),
            };
            note = format!(
                "upstream = {}, strip_prefix = true (nginx replaces the location's prefix with the URI part)",
                backends.join(", ")
            );
            if matches!(matcher, Matcher::Exact(_)) && uri != "/" {
                outcome = Outcome::Approximated;
                note.push_str(&format!(
                    "; for an exact location Gatehouse sends {}/ where nginx sends {uri}",
                    uri.trim_end_matches('/')
                ));
            } else if loc_slash != uri.ends_with('/') {
                outcome = Outcome::Approximated;
                note.push_str("; the location and the URI disagree on the trailing slash, so nginx builds paths like /v2x or /v2//x where Gatehouse builds /v2/x");
            }
        }
        self.note(pp, outcome, &note);
        let mut r = self.route(l, matcher.clone(), Target::Upstream(backends));
        r.strip_prefix = strip;
        self.proxy_headers(inh, &mut r);
        if !inh
            .proxy_set_header
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            // nginx's default is `proxy_set_header Host $proxy_host`: the upstream's name.
            let host = if self.upstreams.contains_key(authority) {
                authority.to_owned()
            } else {
                "upstream".to_owned()
            };
            self.report.entries.push(Entry {
                at: pp.at(),
                directive: "(no proxy_set_header Host)".into(),
                outcome: Outcome::Translated,
                note: format!("host = \"{host}\": nginx sends $proxy_host as Host unless told otherwise (Gatehouse's own default keeps the client's Host)"),
            });
            r.host = Some(host);
        }
        if l.children()
            .iter()
            .any(|c| c.name == "proxy_ssl_verify" && c.arg(0) == Some("off"))
        {
            r.host = r.host.take();
        }
        Some(r)
    }

    /// Applies `proxy_set_header` (reported where written, by [`classify_proxy_header`]) to a
    /// route: the Host policy and the literal request headers.
    fn proxy_headers(&mut self, inh: &Inherited, r: &mut Route) {
        for (name, value) in &inh.proxy_set_header {
            match (name.to_ascii_lowercase().as_str(), value.as_str()) {
                ("host", "$host" | "$http_host") => {}
                ("host", "$proxy_host") => r.host = Some("upstream".into()),
                ("host", v) if !v.contains('$') => r.host = Some(v.to_owned()),
                (n, v) if !v.contains('$') && !is_built_in_header(n, v) => {
                    r.request_set.push((name.clone(), v.to_owned()))
                }
                _ => {}
            }
        }
    }

    fn return_or_rewrite(&mut self, d: &Directive, matcher: &Matcher) -> Option<Route> {
        let loc_like = Directive {
            name: "location".into(),
            args: vec![],
            block: None,
            file: d.file.clone(),
            line: d.line,
        };
        if d.name == "return" {
            let (code, rest) = match (d.arg(0), d.arg(1)) {
                (Some(c), rest) if c.parse::<u16>().is_ok() => (c.parse::<u16>().ok()?, rest),
                (Some(url), None) => (302, Some(url)),
                _ => return None,
            };
            let target = if matches!(code, 301 | 302 | 303 | 307 | 308) {
                let to = rest.unwrap_or("");
                match map_variables(to) {
                    Some(t) => {
                        self.note(
                            d,
                            Outcome::Translated,
                            &format!("redirect = {{ to = \"{t}\", status = {code} }}"),
                        );
                        Target::Redirect {
                            to: t,
                            status: code,
                        }
                    }
                    None => {
                        self.note(d, Outcome::LeftOut, "the target uses nginx variables Gatehouse does not have ($scheme, $host, $request_uri, $uri, $args, $is_args are supported)");
                        return None;
                    }
                }
            } else if (200..=599).contains(&code) {
                let body = rest.unwrap_or("").to_owned();
                if body.contains('$') {
                    self.note(
                        d,
                        Outcome::LeftOut,
                        "the text uses nginx variables, which respond bodies do not expand",
                    );
                    return None;
                }
                self.note(
                    d,
                    Outcome::Translated,
                    &format!("respond = {{ status = {code} }}"),
                );
                Target::Respond { status: code, body }
            } else {
                self.note(
                    d,
                    Outcome::LeftOut,
                    &format!("status {code} cannot be a response"),
                );
                return None;
            };
            return Some(self.route(&loc_like, matcher.clone(), target));
        }
        // rewrite REGEX REPLACEMENT FLAG: only plain redirects are translated.
        let (re, repl, flag) = (d.arg(0)?, d.arg(1)?, d.arg(2).unwrap_or(""));
        let status = match flag {
            "permanent" => 301,
            "redirect" => 302,
            _ if repl.starts_with("http://") || repl.starts_with("https://") => 302,
            _ => {
                self.note(d, Outcome::LeftOut, "internal rewrites are not supported: point the route's upstream at the new path (upstream = \"http://backend/new/\" with strip_prefix) or redirect");
                return None;
            }
        };
        let keep_args = !repl.ends_with('?');
        let repl = repl.trim_end_matches('?');
        let to = match (re, repl) {
            // Everything: `^(.*)$` → `...$1`, or `^` → `...$request_uri`.
            ("^(.*)$" | "^(.*)" | "(.*)", r) if r.ends_with("$1") => Some(format!(
                "{}{}",
                &r[..r.len() - 2],
                if keep_args { "$request_uri" } else { "$uri" }
            )),
            ("^" | "^/" | "^/.*$" | "^/(.*)$", r) if r.contains("$request_uri") => {
                Some(r.to_owned())
            }
            // A literal path: `^/old$` → a fixed target.
            (re, r)
                if re.starts_with("^/")
                    && re.ends_with('$')
                    && re[1..re.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_'))
                    && !r.contains("$1") =>
            {
                let path = &re[1..re.len() - 1];
                let loc = Matcher::Exact(path.to_owned());
                let to = map_variables(r)?
                    + if keep_args && !r.contains('?') {
                        "${is_args}${query}"
                    } else {
                        ""
                    };
                self.note(
                    d,
                    Outcome::Translated,
                    &format!(
                        "exact = \"{path}\" with redirect = {{ to = \"{to}\", status = {status} }}"
                    ),
                );
                return Some(self.route(&loc_like, loc, Target::Redirect { to, status }));
            }
            _ => None,
        };
        match to.and_then(|t| map_variables(&t)) {
            Some(t) => {
                self.note(
                    d,
                    Outcome::Translated,
                    &format!("redirect = {{ to = \"{t}\", status = {status} }}"),
                );
                Some(self.route(
                    &loc_like,
                    matcher.clone(),
                    Target::Redirect { to: t, status },
                ))
            }
            None => {
                self.note(d, Outcome::LeftOut, "only plain redirects (`^(.*)$ https://x$1`, `^/old$ /new`) are translated; write this one as a redirect route by hand");
                None
            }
        }
    }

    fn static_files(
        &mut self,
        l: &Directive,
        matcher: &Matcher,
        inh: &Inherited,
        named: &BTreeMap<String, &Directive>,
    ) -> Option<Route> {
        let alias = l.children().iter().find(|c| c.name == "alias");
        let try_files = l.children().iter().find(|c| c.name == "try_files");
        let (root, strip) = match (alias, &inh.root) {
            (Some(a), _) => {
                let p = a.arg(0).map(|p| self.path(p))?;
                self.note(a, Outcome::Translated, "static.root with strip_prefix = true (the location's prefix is replaced by the folder)");
                (p, true)
            }
            (None, Some(r)) => (r.clone(), false),
            (None, None) => {
                let p = self.prefix.join("html").display().to_string();
                self.note(l, Outcome::Approximated, &format!("no proxy_pass, return or root: nginx serves files from its default root {p}"));
                (p, false)
            }
        };
        let mut fallback = None;
        if let Some(t) = try_files {
            let last = t.args.last().map(|a| a.text.as_str()).unwrap_or("");
            let files: Vec<&str> = t.args[..t.args.len().saturating_sub(1)]
                .iter()
                .map(|a| a.text.as_str())
                .collect();
            let plain = files
                .iter()
                .all(|f| matches!(*f, "$uri" | "$uri/" | "$uri.html" | "$uri/index.html"));
            if let Some(name) = last.strip_prefix('@') {
                match named.get(&format!("@{name}")) {
                    Some(nl) => {
                        let pp = nl.children().iter().find(|c| c.name == "proxy_pass");
                        match pp.and_then(|p| p.arg(0)).filter(|u| !u.contains('$')) {
                            Some(url) => {
                                let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
                                let authority = rest.split('/').next().unwrap_or(rest);
                                let backend = match self.upstreams.get(authority) {
                                    Some(u) => u
                                        .servers
                                        .first()
                                        .cloned()
                                        .unwrap_or_default()
                                        .replacen("http://", &format!("{scheme}://"), 1),
                                    None => format!("{scheme}://{authority}"),
                                };
                                if self
                                    .upstreams
                                    .get(authority)
                                    .is_some_and(|u| u.servers.len() > 1)
                                {
                                    self.note(t, Outcome::Approximated, &format!("misses go to {backend}, the first server of upstream {authority} (a static fallback takes one backend)"));
                                } else {
                                    self.note(
                                        t,
                                        Outcome::Translated,
                                        &format!("static files, misses go to {backend} (@{name})"),
                                    );
                                }
                                fallback = Some(backend);
                                self.note_tree(nl, Outcome::Approximated, &format!("the named location becomes the fallback of {}: its other directives are not carried over", l.head()));
                            }
                            None => {
                                self.note(
                                    t,
                                    Outcome::Approximated,
                                    &format!(
                                        "@{name} does not proxy to a fixed backend: misses get 404"
                                    ),
                                );
                            }
                        }
                    }
                    None => self.note(
                        t,
                        Outcome::Approximated,
                        &format!("@{name} is not defined in this server: misses get 404"),
                    ),
                }
            } else if last == "=404" && plain {
                self.note(t, Outcome::Translated, "static files, 404 on a miss");
            } else if plain && last.starts_with('/') && !last.contains('$') {
                self.note(
                    t,
                    Outcome::Translated,
                    &format!("static files, misses get the file {last} (fallback = \"{last}\")"),
                );
                fallback = Some(last.to_owned());
            } else {
                self.note(
                    t,
                    Outcome::Approximated,
                    "static files with 404 on a miss; this try_files form is not supported",
                );
            }
        }
        let index = inh
            .index
            .clone()
            .unwrap_or_else(|| vec!["index.html".into()]);
        let mut r = self.route(
            l,
            matcher.clone(),
            Target::Static {
                root,
                index,
                fallback,
            },
        );
        r.strip_prefix = strip;
        Some(r)
    }

    fn route(&mut self, l: &Directive, matcher: Matcher, target: Target) -> Route {
        let matcher = match matcher {
            Matcher::Prefix(p) => {
                let t = p.trim_end_matches('/');
                Matcher::Prefix(if t.is_empty() {
                    "/".into()
                } else {
                    t.to_owned()
                })
            }
            m => m,
        };
        Route {
            from: l.at(),
            matcher,
            target,
            strip_prefix: false,
            host: None,
            max_body: None,
            connect_timeout: None,
            response_timeout: None,
            body_timeout: None,
            request_set: Vec::new(),
            response_set: Vec::new(),
            response_remove: Vec::new(),
        }
    }

    /// Applies the inherited settings that routes carry.
    fn finish(&mut self, mut r: Route, inh: &Inherited, _at: &Directive) -> Route {
        r.max_body = inh.max_body.clone();
        if matches!(
            r.target,
            Target::Upstream(_)
                | Target::Static {
                    fallback: Some(_),
                    ..
                }
        ) {
            r.connect_timeout = inh.connect_timeout.clone();
            r.response_timeout = inh.read_timeout.clone();
            r.body_timeout = inh.read_timeout.clone();
        }
        r.response_set = inh
            .add_header
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("strict-transport-security"))
            .cloned()
            .collect();
        r.response_remove = inh.hide_header.clone();
        r
    }

    /// certbot writes a port-80 server that only redirects: fold it into the TLS site with the
    /// same hosts as `redirect_https = true`.
    fn merge_redirect_servers(&mut self) {
        let sites = std::mem::take(&mut self.model.sites);
        let mut out: Vec<Site> = Vec::new();
        let mut redirects = Vec::new();
        for s in sites {
            if s.redirect_https && s.routes.is_empty() {
                redirects.push(s);
            } else {
                out.push(s);
            }
        }
        for r in redirects {
            let mut merged = false;
            for s in out.iter_mut().filter(|s| s.tls.is_some()) {
                if r.hosts.iter().all(|h| s.hosts.contains(h)) {
                    s.redirect_https = true;
                    s.plain = true;
                    merged = true;
                    self.report.entries.push(Entry {
                        at: r.from.clone(),
                        directive: "server".into(),
                        outcome: Outcome::Translated,
                        note: format!("an HTTPS redirect server: merged into the site at {} as redirect_https = true", s.from),
                    });
                }
            }
            if !merged {
                // No TLS site with these hosts: keep a site that redirects everything.
                let mut r = r;
                r.redirect_https = false;
                r.routes.push(Route {
                    from: r.from.clone(),
                    matcher: Matcher::Prefix("/".into()),
                    target: Target::Redirect {
                        to: "https://${host}${request_uri}".into(),
                        status: 301,
                    },
                    strip_prefix: false,
                    host: None,
                    max_body: None,
                    connect_timeout: None,
                    response_timeout: None,
                    body_timeout: None,
                    request_set: Vec::new(),
                    response_set: Vec::new(),
                    response_remove: Vec::new(),
                });
                out.push(r);
            }
        }
        // Two server blocks with the same names (one per port) become one site.
        let mut merged: Vec<Site> = Vec::new();
        for s in out {
            let same = merged.iter_mut().find(|m| {
                !s.hosts.is_empty() && {
                    let mut a = m.hosts.clone();
                    let mut b = s.hosts.clone();
                    a.sort();
                    b.sort();
                    a == b
                }
            });
            match same {
                Some(m) => {
                    let keep_routes = m.routes.is_empty();
                    if keep_routes {
                        m.routes = s.routes;
                    }
                    m.tls = m.tls.take().or(s.tls);
                    m.hsts = m.hsts.take().or(s.hsts);
                    m.default |= s.default;
                    self.report.entries.push(Entry {
                        at: s.from.clone(),
                        directive: "server".into(),
                        outcome: Outcome::Approximated,
                        note: format!("same server_name as the server at {}: one site serves both; {} routes are used", m.from, if keep_routes { "this server's" } else { "the first server's" }),
                    });
                }
                None => merged.push(s),
            }
        }
        // A host claimed by two sites: keep the first.
        let mut taken: BTreeSet<String> = BTreeSet::new();
        for s in &mut merged {
            let before = s.hosts.len();
            s.hosts.retain(|h| taken.insert(h.clone()));
            if s.hosts.len() != before {
                self.report.entries.push(Entry { at: s.from.clone(), directive: "server_name".into(), outcome: Outcome::Approximated, note: "a name also served by an earlier server was dropped from this site (a host belongs to one site)".into() });
            }
        }
        merged.retain(|s| !(s.hosts.is_empty() && !s.default && s.routes.is_empty()));
        self.model.sites = merged;
    }

    /// nginx's default server is the first one of its port unless one says `default_server`.
    fn pick_default(&mut self) {
        let defaults: Vec<usize> = self
            .model
            .sites
            .iter()
            .enumerate()
            .filter(|(_, s)| s.default)
            .map(|(i, _)| i)
            .collect();
        for &i in defaults.iter().skip(1) {
            self.model.sites[i].default = false;
            let from = self.model.sites[i].from.clone();
            self.report.entries.push(Entry {
                at: from,
                directive: "listen ... default_server".into(),
                outcome: Outcome::Approximated,
                note: "Gatehouse has one default site for all listeners; the first one is kept"
                    .into(),
            });
        }
        if defaults.is_empty() {
            if let Some(first) = self.model.sites.iter_mut().find(|s| !s.routes.is_empty()) {
                first.default = true;
                let from = first.from.clone();
                self.report.entries.push(Entry {
                    at: from,
                    directive: "server".into(),
                    outcome: Outcome::Translated,
                    note:
                        "default = true: nginx sends requests for unknown hosts to the first server"
                            .into(),
                });
            }
        }
        for s in &mut self.model.sites {
            if s.hosts.is_empty() && !s.default {
                s.default = true;
            }
        }
    }
}

/// Headers Gatehouse sets itself (or that only mean "keep-alive"/"upgrade").
fn is_built_in_header(name: &str, value: &str) -> bool {
    matches!(
        (name, value),
        ("x-forwarded-for", _)
            | ("x-real-ip", _)
            | ("x-forwarded-proto", _)
            | ("x-forwarded-host", _)
            | ("upgrade", _)
            | ("connection", _)
            | ("clerk-secret-key", _)
            | ("clerk-proxy-url", _)
    )
}

/// What a `proxy_set_header` becomes in Gatehouse, for the report.
pub fn classify_proxy_header(name: &str, value: &str) -> (Outcome, &'static str) {
    match (name.to_ascii_lowercase().as_str(), value) {
        ("host", "$host" | "$http_host") => (
            Outcome::Translated,
            "built in: the client's Host is kept (host = \"keep\")",
        ),
        ("host", "$proxy_host") => (Outcome::Translated, "host = \"upstream\""),
        ("host", v) if !v.contains('$') => (Outcome::Translated, "host = the literal value"),
        ("x-forwarded-for", "$proxy_add_x_forwarded_for" | "$remote_addr")
        | ("x-real-ip", "$remote_addr")
        | ("x-forwarded-proto", "$scheme")
        | ("x-forwarded-host", "$host" | "$http_host") => (
            Outcome::Translated,
            "built in: Gatehouse sets it (believing incoming values only from trusted_proxies)",
        ),
        ("upgrade", "$http_upgrade")
        | ("connection", "upgrade" | "Upgrade" | "$connection_upgrade") => (
            Outcome::Translated,
            "built in: WebSocket upgrades are proxied",
        ),
        ("connection", "" | "keep-alive") => (
            Outcome::Translated,
            "built in: backend connections are kept alive",
        ),
        ("clerk-secret-key", _) => (
            Outcome::Translated,
            "NOT copied: put the secret in CLERK_SECRET_KEY (/etc/gatehouse/env) or a file (LoadCredential, secret_key = { file = ... }); the [clerk] table reads it",
        ),
        ("clerk-proxy-url", _) => (
            Outcome::Translated,
            "built in: Clerk-Proxy-Url is the request's origin plus the prefix (clerk.public_url fixes it)",
        ),
        (_, v) if !v.contains('$') => (Outcome::Translated, "request_headers set"),
        _ => (
            Outcome::LeftOut,
            "the value uses nginx variables, which Gatehouse headers do not expand",
        ),
    }
}

fn normalized_eq(a: &Matcher, b: &Matcher) -> bool {
    match (a, b) {
        (Matcher::Prefix(x), Matcher::Prefix(y)) => {
            x.trim_end_matches('/') == y.trim_end_matches('/')
        }
        _ => false,
    }
}

fn collect_named<'a>(ds: &'a [Directive], out: &mut BTreeMap<String, &'a Directive>) {
    for d in ds {
        if d.name == "location" && d.args.len() == 1 && d.arg(0).is_some_and(|a| a.starts_with('@'))
        {
            out.insert(d.arg(0).unwrap_or("").to_owned(), d);
        }
    }
}

/// `return 301 https://$host$request_uri` (or 308, or `$server_name`), or the `rewrite` form.
fn is_https_redirect(d: &Directive) -> bool {
    let target = match d.name.as_str() {
        "return" if matches!(d.arg(0), Some("301" | "302" | "307" | "308")) => d.arg(1),
        "rewrite"
            if matches!(d.arg(0), Some("^" | "^(.*)$" | "^/(.*)$"))
                && matches!(d.arg(2), Some("permanent" | "redirect")) =>
        {
            d.arg(1)
        }
        _ => None,
    };
    target.is_some_and(|t| {
        let t = t.trim_end_matches('?');
        matches!(
            t,
            "https://$host$request_uri"
                | "https://$server_name$request_uri"
                | "https://$http_host$request_uri"
                | "https://${host}${request_uri}"
                | "https://$host$1"
                | "https://$server_name$1"
        )
    })
}

/// certbot's `if ($host = example.com) { return 301 https://$host$request_uri; }`.
fn is_certbot_if(d: &Directive) -> bool {
    d.arg(0).is_some_and(|a| a.starts_with("($host"))
        && d.children().len() == 1
        && is_https_redirect(&d.children()[0])
}

/// `rewrite ^/__clerk/(.*)$ /$1 break;` inside `location /__clerk/`: a prefix strip.
fn is_strip_rewrite(d: &Directive, matcher: &Matcher) -> bool {
    let Matcher::Prefix(p) = matcher else {
        return false;
    };
    let p = p.trim_end_matches('/');
    let (Some(re), Some(repl)) = (d.arg(0), d.arg(1)) else {
        return false;
    };
    let flag_ok = matches!(d.arg(2), Some("break") | Some("last") | None);
    flag_ok
        && (re == format!("^{p}/(.*)$")
            || re == format!("^{p}(/.*)$")
            || re == format!("^{p}/(.*)"))
        && (repl == "/$1" || repl == "$1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_times_convert() {
        for (n, g) in [
            ("60", "1m"),
            ("60s", "1m"),
            ("1m30s", "90s"),
            ("500ms", "500ms"),
            ("2h", "2h"),
            ("75s", "75s"),
        ] {
            assert_eq!(nginx_time(n).as_deref(), Some(g), "{n}");
        }
        assert_eq!(nginx_time("abc"), None);
    }

    #[test]
    fn nginx_sizes_convert() {
        for (n, g) in [
            ("10m", "10MiB"),
            ("512k", "512KiB"),
            ("1g", "1GiB"),
            ("100", "100B"),
            ("1M", "1MiB"),
        ] {
            assert_eq!(nginx_size(n).as_deref(), Some(g), "{n}");
        }
    }

    #[test]
    fn variables_map_to_template_names() {
        assert_eq!(
            map_variables("https://$host$request_uri").as_deref(),
            Some("https://${host}${request_uri}")
        );
        assert_eq!(
            map_variables("https://x$uri$is_args$args").as_deref(),
            Some("https://x${path}${is_args}${query}")
        );
        assert_eq!(map_variables("https://$cookie_x/"), None);
    }

    #[test]
    fn simple_regex_locations_become_prefixes() {
        assert_eq!(regex_as_prefix("^/api/").as_deref(), Some("/api"));
        assert_eq!(regex_as_prefix("^/api(/|$)").as_deref(), Some("/api"));
        assert_eq!(regex_as_prefix("\\.(css|js)$"), None);
        assert_eq!(regex_as_prefix("^/(api|v1)/"), None);
    }

    #[test]
    fn https_redirect_forms_are_recognised() {
        let d = super::super::parse::parse_str("return 301 https://$host$request_uri;\nrewrite ^ https://$server_name$request_uri? permanent;\nreturn 302 /x;").unwrap();
        assert!(is_https_redirect(&d[0]));
        assert!(is_https_redirect(&d[1]));
        assert!(!is_https_redirect(&d[2]));
    }
}

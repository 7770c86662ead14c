//! The translated model as a Gatehouse routes file, with a comment naming the nginx source of
//! every site and route.

use std::fmt::Write as _;
use std::path::Path;

use super::translate::{Matcher, Model, Route, Target};

/// A TOML basic string.
pub fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
    )
}

fn table(pairs: &[(String, String)]) -> String {
    format!(
        "{{ {} }}",
        pairs
            .iter()
            .map(|(k, v)| format!("{} = {}", q(k), q(v)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub fn emit(m: &Model, source: &Path) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Imported from {} by `gatehouse import-nginx`.",
        source.display()
    );
    let _ = writeln!(
        o,
        "# Read the import report: it lists what was approximated or left out, with file:line."
    );
    let _ = writeln!(
        o,
        "# Routes match on path segments: prefix = \"/api\" matches /api and /api/x, never /apix."
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "[server]");
    let http: Vec<String> = m.http.iter().cloned().collect();
    let https: Vec<String> = m.https.iter().cloned().collect();
    if !http.is_empty() {
        let _ = writeln!(o, "http = {}", list(&http));
    }
    if !https.is_empty() {
        let _ = writeln!(o, "https = {}", list(&https));
    }
    if http.is_empty() && https.is_empty() {
        let _ = writeln!(
            o,
            "http = [\"0.0.0.0:80\"]   # nginx listens on 80 when no listen is given"
        );
    }
    let _ = writeln!(o, "admin = \"127.0.0.1:9901\"");
    if !m.trusted_proxies.is_empty() {
        let _ = writeln!(o, "trusted_proxies = {}", list(&m.trusted_proxies));
    }
    if m.clerk {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "# The secret key was not copied from the nginx file: set CLERK_SECRET_KEY and"
        );
        let _ = writeln!(
            o,
            "# CLERK_PUBLISHABLE_KEY in /etc/gatehouse/env, or point secret_key at a file."
        );
        let _ = writeln!(o, "[clerk]");
        let _ = writeln!(o, "publishable_key = {{ env = \"CLERK_PUBLISHABLE_KEY\" }}");
        let _ = writeln!(o, "secret_key = {{ env = \"CLERK_SECRET_KEY\" }}");
    }
    for s in &m.sites {
        let _ = writeln!(o);
        let _ = writeln!(o, "# from {}", s.from);
        let _ = writeln!(o, "[[site]]");
        if !s.hosts.is_empty() {
            let _ = writeln!(o, "hosts = {}", list(&s.hosts));
        }
        if s.default {
            let _ = writeln!(o, "default = true");
        }
        if let Some((c, k)) = &s.tls {
            let _ = writeln!(o, "tls = {{ cert = {}, key = {} }}", q(c), q(k));
        }
        if s.redirect_https && s.tls.is_some() {
            let _ = writeln!(
                o,
                "redirect_https = 301   # certbot's `return 301 https://$host$request_uri`"
            );
        }
        if let Some(h) = &s.hsts {
            let _ = writeln!(o, "hsts = {}", q(h));
        }
        if s.routes.is_empty() {
            let _ = writeln!(
                o,
                "  [[site.route]]   # the nginx server had no location that Gatehouse can express"
            );
            let _ = writeln!(o, "  prefix = \"/\"");
            let _ = writeln!(o, "  respond = {{ status = 404, body = \"Not Found\\n\" }}");
        }
        for r in &s.routes {
            route(&mut o, r);
        }
    }
    o
}

fn route(o: &mut String, r: &Route) {
    let _ = writeln!(o, "  # from {}", r.from);
    let _ = writeln!(o, "  [[site.route]]");
    match &r.matcher {
        Matcher::Prefix(p) => {
            let _ = writeln!(o, "  prefix = {}", q(p));
        }
        Matcher::Exact(p) => {
            let _ = writeln!(o, "  exact = {}", q(p));
        }
    }
    match &r.target {
        Target::Upstream(b) if b.len() == 1 => {
            let _ = writeln!(o, "  upstream = {}", q(&b[0]));
        }
        Target::Upstream(b) => {
            let _ = writeln!(o, "  upstream = {}", list(b));
        }
        Target::Redirect { to, status } => {
            let _ = writeln!(o, "  redirect = {{ to = {}, status = {status} }}", q(to));
        }
        Target::Respond { status, body } => {
            let _ = writeln!(o, "  respond = {{ status = {status}, body = {} }}", q(body));
        }
        Target::Clerk => {
            let _ = writeln!(o, "  clerk = true");
        }
        Target::Static {
            root,
            index,
            fallback,
        } => {
            let mut parts = vec![format!("root = {}", q(root))];
            if index.as_slice() != ["index.html"] {
                parts.push(format!("index = {}", list(index)));
            }
            if let Some(f) = fallback {
                parts.push(format!("fallback = {}", q(f)));
            }
            let _ = writeln!(o, "  static = {{ {} }}", parts.join(", "));
        }
    }
    let proxying = matches!(r.target, Target::Upstream(_) | Target::Static { .. });
    if r.strip_prefix && proxying && !matches!(&r.matcher, Matcher::Prefix(p) if p == "/") {
        let _ = writeln!(o, "  strip_prefix = true");
    }
    if matches!(r.target, Target::Upstream(_)) {
        if let Some(h) = &r.host {
            let _ = writeln!(o, "  host = {}", q(h));
        }
    }
    if let Some(b) = &r.max_body {
        let _ = writeln!(o, "  max_body = {}", q(b));
    }
    if let Some(t) = &r.connect_timeout {
        let _ = writeln!(o, "  connect_timeout = {}", q(t));
    }
    if let Some(t) = &r.response_timeout {
        let _ = writeln!(o, "  response_timeout = {}", q(t));
    }
    if let Some(t) = &r.body_timeout {
        let _ = writeln!(o, "  body_timeout = {}", q(t));
    }
    if !r.request_set.is_empty() && matches!(r.target, Target::Upstream(_)) {
        let _ = writeln!(
            o,
            "  request_headers = {{ set = {} }}",
            table(&r.request_set)
        );
    }
    if !r.response_set.is_empty() || !r.response_remove.is_empty() {
        let mut parts = Vec::new();
        if !r.response_set.is_empty() {
            parts.push(format!("set = {}", table(&r.response_set)));
        }
        if !r.response_remove.is_empty() {
            parts.push(format!("remove = {}", list(&r.response_remove)));
        }
        let _ = writeln!(o, "  response_headers = {{ {} }}", parts.join(", "));
    }
}

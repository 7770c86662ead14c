//! The access log: one line per request, in nginx's `combined` format or JSON, to stderr or a
//! file that is reopened on SIGUSR1 (for logrotate).
//!
//! Lines are formatted on the request's task and handed to one writer task over a bounded
//! channel, so a slow disk never blocks a request; if the writer falls behind, lines are dropped
//! and counted (`gatehouse_access_log_dropped_total`) rather than buffered without bound.
//!
//! What is never logged: request or response headers other than `Referer` and `User-Agent`
//! (so no `Cookie`, `Authorization` or `Clerk-Secret-Key`), and the query string unless
//! `access_log_query = true`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::config::{AccessLogFormat, AccessLogTarget};

/// What one line records.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub client_ip: IpAddr,
    pub host: String,
    pub method: String,
    /// Path, and the query when configured.
    pub target: String,
    pub version: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub site: Arc<str>,
    pub route: Arc<str>,
    pub upstream: Option<String>,
    pub generation: u64,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
}

enum Msg {
    Line(String),
    Reopen(AccessLogTarget),
}

/// A handle to the writer; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
    settings: Arc<Mutex<(AccessLogFormat, bool)>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessLog {
    /// Starts the writer task. Returns `None` when the log is off.
    pub fn start(
        target: &AccessLogTarget,
        format: AccessLogFormat,
        with_query: bool,
    ) -> Option<AccessLog> {
        if *target == AccessLogTarget::Off {
            return None;
        }
        let (tx, rx) = mpsc::channel(16 * 1024);
        let target = target.clone();
        tokio::task::spawn_blocking(move || writer(rx, target));
        Some(AccessLog {
            tx,
            settings: Arc::new(Mutex::new((format, with_query))),
        })
    }

    /// Whether query strings go in the log.
    pub fn with_query(&self) -> bool {
        self.settings.lock().map(|s| s.1).unwrap_or(false)
    }

    /// Applies a reloaded `[log]` section.
    pub fn update(&self, target: &AccessLogTarget, format: AccessLogFormat, with_query: bool) {
        if let Ok(mut s) = self.settings.lock() {
            *s = (format, with_query);
        }
        let _ = self.tx.try_send(Msg::Reopen(target.clone()));
    }

    /// Reopens the file (after logrotate moved it).
    pub fn reopen(&self, target: &AccessLogTarget) {
        let _ = self.tx.try_send(Msg::Reopen(target.clone()));
    }

    pub fn log(&self, e: &Entry) {
        let format = self
            .settings
            .lock()
            .map(|s| s.0)
            .unwrap_or(AccessLogFormat::Combined);
        let line = match format {
            AccessLogFormat::Combined => combined(e),
            AccessLogFormat::Json => json(e),
        };
        if self.tx.try_send(Msg::Line(line)).is_err() {
            ::metrics::counter!(crate::metrics::ACCESS_LOG_DROPPED).increment(1);
        }
    }
}

fn open(target: &AccessLogTarget) -> Box<dyn std::io::Write + Send> {
    match target {
        AccessLogTarget::File(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Box::new(std::io::BufWriter::with_capacity(64 * 1024, f)),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the access log; writing it to stderr");
                Box::new(std::io::stderr())
            }
        },
        _ => Box::new(std::io::BufWriter::new(std::io::stderr())),
    }
}

fn writer(mut rx: mpsc::Receiver<Msg>, target: AccessLogTarget) {
    let mut out = open(&target);
    while let Some(msg) = rx.blocking_recv() {
        handle(&mut out, msg);
        // Write whatever else is queued, then flush once.
        while let Ok(msg) = rx.try_recv() {
            handle(&mut out, msg);
        }
        let _ = out.flush();
    }
}

fn handle(out: &mut Box<dyn std::io::Write + Send>, msg: Msg) {
    match msg {
        Msg::Line(l) => {
            let _ = out.write_all(l.as_bytes());
        }
        Msg::Reopen(t) => {
            let _ = out.flush();
            *out = open(&t);
        }
    }
}

/// nginx's `combined` format, then the Gatehouse fields:
/// `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
/// "$http_user_agent" host= in= rt= site= route= upstream= gen=`.
pub fn combined(e: &Entry) -> String {
    let mut s = String::with_capacity(256);
    let _ = writeln!(
        s,
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" host={} in={} rt={:.3} site={} route={} upstream={} gen={}",
        e.client_ip,
        clf_time(e.time),
        e.method,
        escape(&e.target),
        e.version,
        e.status,
        e.bytes_out,
        escape(e.referer.as_deref().unwrap_or("-")),
        escape(e.user_agent.as_deref().unwrap_or("-")),
        escape(if e.host.is_empty() { "-" } else { &e.host }),
        e.bytes_in,
        e.duration.as_secs_f64(),
        escape(&e.site),
        escape(&e.route),
        e.upstream.as_deref().unwrap_or("-"),
        e.generation
    );
    s
}

pub fn json(e: &Entry) -> String {
    let q = crate::clerk::json_string;
    let opt = |v: &Option<String>| v.as_deref().map(q).unwrap_or_else(|| "null".into());
    format!(
        "{{\"time\":{},\"client_ip\":\"{}\",\"host\":{},\"method\":{},\"path\":{},\"protocol\":\"{}\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"site\":{},\"route\":{},\"upstream\":{},\"generation\":{},\"referer\":{},\"user_agent\":{}}}\n",
        q(&httpdate::fmt_http_date(e.time)),
        e.client_ip,
        q(&e.host),
        q(&e.method),
        q(&e.target),
        e.version,
        e.status,
        e.bytes_in,
        e.bytes_out,
        e.duration.as_secs_f64() * 1000.0,
        q(&e.site),
        q(&e.route),
        opt(&e.upstream),
        e.generation,
        opt(&e.referer),
        opt(&e.user_agent),
    )
}

/// nginx escapes `"`, `\` and non-printable bytes as `\xHH` in log values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
    out
}

/// `26/Nov/2026:17:20:37 +0000`, nginx's `$time_local` (in UTC).
fn clf_time(t: SystemTime) -> String {
    // httpdate gives "Thu, 26 Nov 2026 17:20:37 GMT".
    let h = httpdate::fmt_http_date(t);
    let parts: Vec<&str> = h.split(' ').collect();
    if parts.len() == 6 {
        format!("{}/{}/{}:{} +0000", parts[1], parts[2], parts[3], parts[4])
    } else {
        h
    }
}

/// The access log file path, if it is a file (for `/config`).
pub fn path_of(t: &AccessLogTarget) -> Option<PathBuf> {
    match t {
        AccessLogTarget::File(p) => Some(p.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            client_ip: "203.0.113.9".parse().unwrap(),
            host: "app.example.com".into(),
            method: "GET".into(),
            target: "/api/x".into(),
            version: "HTTP/1.1",
            status: 200,
            bytes_in: 12,
            bytes_out: 345,
            duration: Duration::from_millis(1500),
            site: "app".into(),
            route: "app/api".into(),
            upstream: Some("http://127.0.0.1:3000".into()),
            generation: 3,
            referer: None,
            user_agent: Some("curl/8.0 \"x\"".into()),
        }
    }

    #[test]
    fn combined_is_nginx_combined_then_gatehouse_fields() {
        assert_eq!(
            combined(&entry()),
            "203.0.113.9 - - [14/Nov/2023:22:13:20 +0000] \"GET /api/x HTTP/1.1\" 200 345 \"-\" \"curl/8.0 \\x22x\\x22\" host=app.example.com in=12 rt=1.500 site=app route=app/api upstream=http://127.0.0.1:3000 gen=3\n"
        );
    }

    #[test]
    fn json_lines_carry_every_field() {
        let j = json(&entry());
        for field in [
            "\"client_ip\":\"203.0.113.9\"",
            "\"status\":200",
            "\"bytes_in\":12",
            "\"bytes_out\":345",
            "\"duration_ms\":1500.000",
            "\"route\":\"app/api\"",
            "\"generation\":3",
            "\"referer\":null",
        ] {
            assert!(j.contains(field), "{field} in {j}");
        }
        assert!(j.ends_with("}\n"));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\nb\"c"), "a\\x0Ab\\x22c");
    }
}

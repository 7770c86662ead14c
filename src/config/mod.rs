//! The routes file: loading, validation, and the typed configuration it becomes.
//!
//! Two layers (parse, don't validate): [`raw`] mirrors the TOML with serde; [`build`] turns it
//! into the typed [`Config`] below, in which every value is already parsed (socket addresses,
//! URIs, durations, header names, loaded certificates, resolved secrets). Nothing downstream
//! re-checks a value or touches the file system for config again. Building collects *every*
//! problem with its `file:line:column` before giving up, so `gatehouse check` lists them all.
//!
//! This module owns the meaning of every key and its default (see [`defaults`]); it must not
//! start tasks, bind sockets, or keep state between loads.

pub mod build;
pub mod diag;
pub mod raw;
pub mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri};

pub use diag::{Diagnostic, Severity};

use crate::headers::{HeaderOps, TrustedProxies};
use crate::router::{HostPattern, PathMatch};

/// Defaults for every key, in one place (the README and `config/gatehouse.toml` quote them).
pub mod defaults {
    use std::time::Duration;

    pub const CONFIG_PATH: &str = "/etc/gatehouse/gatehouse.toml";
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
    /// nginx's `client_body_timeout` and `proxy_read_timeout`.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub const MAX_REQUEST_HEADER_BYTES: u64 = 32 * 1024;
    pub const MAX_BODY: u64 = 100 * 1024 * 1024;
    pub const MAX_CONNECTIONS: usize = 100_000;
    /// How long a backend that refused a connection is skipped (nginx's `fail_timeout`).
    pub const BACKEND_COOL_OFF: Duration = Duration::from_secs(10);
}

/// A secret value (the Clerk secret key). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(s: impl Into<Arc<str>>) -> Self {
        Secret(s.into())
    }
    /// The value itself. Call only where it is sent to Clerk.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// SHA-256 of the file's bytes, hex, shown by `/config` so an operator can tell versions apart.
    pub hash: String,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub sites: Vec<SiteConfig>,
    /// Warnings found while loading (certificates about to expire, literal secrets, ...).
    pub warnings: Vec<Diagnostic>,
    /// Every file the config reads (certificates, keys, secret files, the file itself): the
    /// reloader watches them all.
    pub files: Vec<PathBuf>,
    /// The content of those files when this config was loaded: the reloader reloads when it
    /// differs, and only then.
    pub fingerprint: Fingerprint,
}

/// SHA-256 of each file a config read (`None` when it could not be read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(pub Vec<(PathBuf, Option<[u8; 32]>)>);

impl Fingerprint {
    /// Reads and hashes `files` now.
    pub fn of(files: &[PathBuf]) -> Fingerprint {
        Fingerprint(
            files
                .iter()
                .map(|p| (p.clone(), std::fs::read(p).ok().map(|b| sha256(&b))))
                .collect(),
        )
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub trusted_proxies: TrustedProxies,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    /// Runtime worker threads; `None` = one per core.
    pub workers: Option<usize>,
}

/// The timeouts a route may override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    /// From the end of the request body to the upstream's response headers.
    pub response: Duration,
    /// The longest a request or response body may go without a byte arriving (nginx's
    /// `client_body_timeout` and `proxy_read_timeout` between two reads).
    pub body: Duration,
    /// Idle keep-alive, both toward clients and in the upstream pool.
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_request_header_bytes: u64,
    pub max_body: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Combined,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: Option<String>,
    pub format: LogFormat,
    pub access_log: AccessLogTarget,
    pub access_log_format: AccessLogFormat,
    /// Log the query string too (off by default: queries carry tokens).
    pub access_log_query: bool,
}

#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// For logs and metric labels: the `name` key, else the first host.
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub default: bool,
    pub tls: Option<TlsSource>,
    /// Plain-HTTP requests get this redirect to https (308 for `true`).
    pub redirect_https: Option<StatusCode>,
    pub hsts: Option<HeaderValue>,
    pub routes: Vec<RouteConfig>,
}

/// Where a site's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    Files {
        cert_path: PathBuf,
        key_path: PathBuf,
        loaded: Arc<crate::tls::LoadedCert>,
    },
    /// Made at snapshot build (and kept while the hosts are unchanged).
    SelfSigned,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Unique in the file; the metric and log label.
    pub id: String,
    pub matcher: PathMatch,
    pub target: TargetConfig,
    pub options: RouteOptions,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetConfig {
    Upstream(UpstreamConfig),
    Redirect(RedirectConfig),
    Respond(RespondConfig),
    Clerk(ClerkConfig),
    Static(StaticConfig),
}

impl TargetConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            TargetConfig::Upstream(_) => "upstream",
            TargetConfig::Redirect(_) => "redirect",
            TargetConfig::Respond(_) => "respond",
            TargetConfig::Clerk(_) => "clerk",
            TargetConfig::Static(_) => "static",
        }
    }
}

/// A backend URL, split at load so nothing is parsed per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendUrl {
    pub https: bool,
    /// `host:port` as written (port omitted when it is the scheme's default).
    pub authority: http::uri::Authority,
    /// Path prefix carried by the URL (`http://b/app` → `/app`), without a trailing slash;
    /// empty when the URL has none.
    pub base_path: String,
}

impl BackendUrl {
    pub fn parse(text: &str) -> Result<BackendUrl, String> {
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL ({e})"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(format!(
                    "scheme `{other}` is not supported: use http or https"
                ));
            }
            None => return Err(format!("`{text}` has no scheme: write http://{text}")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{text}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err("a backend URL must not carry credentials".into());
        }
        if authority.host().is_empty() {
            return Err(format!("`{text}` has no host"));
        }
        if uri.query().is_some() {
            return Err("a backend URL must not carry a query string".into());
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(BackendUrl {
            https,
            authority,
            base_path,
        })
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.base_path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub backends: Vec<BackendUrl>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// The target with `$host`, `$request_uri`, `$path`, `$query`, `$scheme` placeholders.
    pub to: crate::template::Template,
    pub status: StatusCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespondConfig {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: HeaderValue,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClerkConfig {
    pub secret_key: Secret,
    pub publishable_key: String,
    pub fapi: crate::clerk::FapiUrl,
    /// A fixed public origin + prefix for `Clerk-Proxy-Url` (for a CDN in front).
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    pub root: PathBuf,
    pub index: Vec<String>,
    pub fallback: StaticFallback,
    pub allow_symlinks: bool,
    pub precompressed: bool,
    pub cache_control: Option<HeaderValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticFallback {
    NotFound,
    /// Hand misses to another route of the same site, by id (`try_files $uri @app`).
    Route(String),
    /// Hand misses to a backend.
    Upstream(UpstreamConfig),
    /// Answer misses with this file under `root`, with a 200 (an SPA's
    /// `try_files $uri $uri/ /index.html`: the client-side router reads the path).
    File(String),
}

/// How the upstream request's `Host` is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// The client's Host (the usual reverse-proxy choice).
    Keep,
    /// The backend's `host:port`.
    Upstream,
    Literal(HeaderValue),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOptions {
    pub strip_prefix: bool,
    pub host: HostPolicy,
    pub tls_verify: bool,
    /// Extra CA certificates (PEM) for `https://` backends with a private CA.
    pub tls_ca: Option<PathBuf>,
    pub http2: bool,
    pub websocket: bool,
    pub allow_encoded_slashes: bool,
    pub allow_underscore_headers: bool,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{path}: cannot read the config file: {source}\n  help: check the path (-c FILE or GATEHOUSE_CONFIG) and its permissions"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// Every diagnostic (errors and the warnings found alongside them).
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            ConfigError::Read { path, source } => vec![Diagnostic {
                severity: Severity::Error,
                file: path.clone(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read the config file: {source}"),
                help: Some(
                    "check the path (-c FILE or GATEHOUSE_CONFIG) and its permissions".into(),
                ),
            }],
            ConfigError::Invalid(d) => d.clone(),
        }
    }

    /// The first error, on one line: for log lines and `STATUS=`.
    pub fn summary(&self) -> String {
        let diags = self.diagnostics();
        let errors: Vec<&Diagnostic> = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        let first = errors
            .first()
            .map(|d| {
                d.to_string().replace("\n  help: ", " (help: ")
                    + if d_has_help(d) { ")" } else { "" }
            })
            .unwrap_or_else(|| "invalid config".into());
        if errors.len() > 1 {
            format!("{first} (and {} more errors)", errors.len() - 1)
        } else {
            first
        }
    }
}

fn d_has_help(d: &Diagnostic) -> bool {
    d.help.is_some()
}

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where environment variables come from: the process, or a map in tests (Rust 2024 makes
/// `set_var` unsafe, and parallel tests must not share one environment anyway).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment.
pub fn process_env() -> EnvLookup {
    Arc::new(|name| std::env::var(name).ok())
}

/// Reads and validates the routes file at `path`.
pub fn load(path: &Path, env: &EnvLookup) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load_bytes(path, &bytes, env)
}

/// Validates `bytes` as if read from `path` (relative paths resolve against its folder).
pub fn load_bytes(path: &Path, bytes: &[u8], env: &EnvLookup) -> Result<Config, ConfigError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = diag::line_col(
                &String::from_utf8_lossy(&bytes[..e.valid_up_to()]),
                e.valid_up_to(),
            );
            return Err(ConfigError::Invalid(vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line,
                column,
                key: String::new(),
                message: "the file is not valid UTF-8".into(),
                help: Some("save it as UTF-8".into()),
            }]));
        }
    };
    build::build(path, text, env)
}

/// SHA-256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(64);
    for b in sha256(bytes) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

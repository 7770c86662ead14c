//! Upstream connections: pooled HTTP clients and backend selection.
//!
//! One hyper-util pooled client per *client profile* (TLS verification, extra CA, HTTP/2,
//! connect and idle timeouts): the pool is keyed on scheme and authority only, so two routes with
//! different TLS settings to the same backend must not share one (pingora's pooling notes).
//! Clients are kept in a [`ClientCache`] that outlives snapshots: a reload that leaves a
//! backend's profile alone keeps its idle keep-alive connections.
//!
//! Backend selection is round-robin. A backend that refuses a connection (or times out
//! connecting) is skipped for a cool-off period (nginx's `max_fails=1 fail_timeout=10s`) and tried
//! again after it. A route with a single backend never marks it down: there is nothing to fail
//! over to, so every request tries it and gets a 502 of its own, as nginx does.
//!
//! This module must not look at requests beyond what the client needs to send them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Scheme;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::UpstreamBody;
use crate::config::BackendUrl;
use crate::worker::{Padded, PerWorker};

/// The client type every upstream call goes through.
pub type HttpClient = Client<Counting<HttpsConnector<HttpConnector>>, UpstreamBody>;

/// What makes two routes need different clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientProfile {
    pub tls_verify: bool,
    pub tls_ca: Option<PathBuf>,
    pub http2: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Clients by profile, and HTTP/1.1 pools by profile and backend, shared by consecutive
/// snapshots: a reload keeps the idle connections of backends it did not change.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<ClientProfile, HttpClient>>,
    pools: Mutex<HashMap<(ClientProfile, String), Arc<crate::pool::Pool>>>,
}

impl ClientCache {
    /// The client for `profile`, built on first use. Called at snapshot build, never per request.
    pub fn get(&self, profile: &ClientProfile) -> Result<HttpClient, String> {
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(profile) {
            return Ok(c.clone());
        }
        let client = build_client(profile)?;
        map.insert(profile.clone(), client.clone());
        Ok(client)
    }

    /// The HTTP/1.1 pool for `backend` under `profile` (not for HTTP/2 profiles).
    pub fn pool(
        &self,
        profile: &ClientProfile,
        backend: &BackendUrl,
    ) -> Result<Arc<crate::pool::Pool>, String> {
        let label = format!(
            "{}://{}",
            if backend.https { "https" } else { "http" },
            backend.authority
        );
        let key = (profile.clone(), label.clone());
        let mut map = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(&key) {
            return Ok(p.clone());
        }
        let host = backend
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = backend
            .authority
            .port_u16()
            .unwrap_or(if backend.https { 443 } else { 80 });
        let tls = if backend.https {
            let mut cfg =
                (*crate::tls::client_config(profile.tls_verify, profile.tls_ca.as_deref())?)
                    .clone();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host}: not a server name ({e})"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        let pool = Arc::new(crate::pool::Pool::new(crate::pool::Target {
            host,
            port,
            tls,
            connect_timeout: profile.connect_timeout,
            idle_timeout: profile.idle_timeout,
            label,
        }));
        map.insert(key, pool.clone());
        Ok(pool)
    }

    /// Drops clients and pools no snapshot uses any more (their idle connections close).
    pub fn retain(&self, live: &[ClientProfile]) {
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| live.contains(k));
        drop(map);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|(k, _), _| live.contains(k));
    }
}

fn build_client(p: &ClientProfile) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(p.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let tls = crate::tls::client_config(p.tls_verify, p.tls_ca.as_deref())?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http();
    let connector = if p.http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(p.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false)
        .http2_only(p.http2);
    Ok(b.build(Counting(connector)))
}

/// A connector that counts open upstream connections per `scheme://authority`
/// (`gatehouse_upstream_open_connections`), so idle pooled connections are visible.
#[derive(Clone)]
pub struct Counting<C>(C);

impl<C> tower_service::Service<http::Uri> for Counting<C>
where
    C: tower_service::Service<http::Uri> + Send,
    C::Future: Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
{
    type Response = Counted<C::Response>;
    type Error = C::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let label = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        let fut = self.0.call(uri);
        Box::pin(async move {
            let io = fut.await?;
            ::metrics::gauge!(crate::metrics::UPSTREAM_OPEN_CONNECTIONS, "upstream" => label.clone()).increment(1.0);
            Ok(Counted { io, label })
        })
    }
}

/// An upstream connection that decrements the open-connections gauge when it closes.
pub struct Counted<T> {
    io: T,
    label: String,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        ::metrics::gauge!(crate::metrics::UPSTREAM_OPEN_CONNECTIONS, "upstream" => self.label.clone()).decrement(1.0);
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.io.connected()
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Milliseconds since the process started: a cheap monotonic clock for cool-off deadlines.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One backend of a route.
#[derive(Debug)]
pub struct Backend {
    pub url: BackendUrl,
    pub scheme: Scheme,
    /// `scheme://host:port`, the label in logs and metrics.
    pub label: Arc<str>,
    /// When the cool-off ends (ms on [`now_ms`]'s clock); 0 = healthy.
    down_until: AtomicU64,
    /// Requests in flight, counted per worker ([`crate::worker`]);
    /// `gatehouse_upstream_active_requests` is their sum, taken when the metrics are read.
    /// Made on the first request: every route has its own backends, and a table of 10,000
    /// sites would otherwise hold half a KiB per backend that never sees a request.
    local: OnceLock<PerWorker<BackendLocal>>,
    /// The HTTP/1.1 pool (None for HTTP/2 backends, which use the client).
    pub pool: Option<Arc<crate::pool::Pool>>,
}

/// What one worker keeps of a backend: its count of requests in flight, and the label.
#[derive(Debug)]
pub struct BackendLocal {
    label: Arc<str>,
    in_flight: AtomicI64,
}

/// A request in flight to a backend, counted while this lives (until its response body ends).
/// It also carries the backend's label, for the access log, without a shared reference count.
#[derive(Debug)]
pub struct InFlight(Arc<Padded<BackendLocal>>);

impl InFlight {
    pub fn label(&self) -> &str {
        &self.0.label
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend {
    /// Counts a request in flight on this worker's count.
    pub fn start(&self) -> InFlight {
        let local = self
            .local
            .get_or_init(|| {
                PerWorker::new(|| BackendLocal {
                    label: self.label.clone(),
                    in_flight: AtomicI64::new(0),
                })
            })
            .local()
            .clone();
        local.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(local)
    }

    /// Requests in flight, all workers together.
    pub fn in_flight(&self) -> i64 {
        self.local.get().map_or(0, |per_worker| {
            per_worker
                .iter()
                .map(|l| l.in_flight.load(Ordering::Relaxed))
                .sum()
        })
    }

    pub fn new(url: BackendUrl, pool: Option<Arc<crate::pool::Pool>>) -> Backend {
        let scheme = if url.https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let label: Arc<str> = format!("{}://{}", scheme, url.authority).into();
        Backend {
            pool,
            local: OnceLock::new(),
            url,
            scheme,
            label,
            down_until: AtomicU64::new(0),
        }
    }

    fn is_up(&self, now: u64) -> bool {
        self.down_until.load(Ordering::Relaxed) <= now
    }
}

/// The backends of one route and its client.
pub struct Upstream {
    pub backends: Vec<Arc<Backend>>,
    pub client: HttpClient,
    next: AtomicUsize,
    cool_off: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("backends", &self.backends)
            .finish()
    }
}

impl Upstream {
    pub fn new(backends: Vec<Arc<Backend>>, client: HttpClient, cool_off: Duration) -> Upstream {
        Upstream {
            backends,
            client,
            next: AtomicUsize::new(0),
            cool_off,
        }
    }

    /// The next healthy backend in round-robin order, or `None` when every one is cooling off.
    pub fn pick(&self) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        if n == 1 {
            return self.backends.first();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        (0..n)
            .map(|i| &self.backends[(start + i) % n])
            .find(|b| b.is_up(now))
    }

    /// Marks `backend` down for the cool-off (only meaningful with several backends).
    pub fn mark_down(&self, backend: &Backend) {
        if self.backends.len() > 1 {
            backend.down_until.store(
                now_ms() + self.cool_off.as_millis() as u64,
                Ordering::Relaxed,
            );
            tracing::warn!(backend = %backend.label, cool_off_ms = self.cool_off.as_millis() as u64, "backend marked down");
        }
    }

    /// The backends currently cooling off.
    pub fn down_backends(&self) -> Vec<Arc<Backend>> {
        let now = now_ms();
        self.backends
            .iter()
            .filter(|b| !b.is_up(now))
            .cloned()
            .collect()
    }
}

/// How an upstream call failed, for the status code and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Refused,
    ConnectTimeout,
    Dns,
    Tls,
    Reset,
    Other,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Refused => "refused",
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::Dns => "dns",
            FailureKind::Tls => "tls",
            FailureKind::Reset => "reset",
            FailureKind::Other => "error",
        }
    }

    /// Failures that happened before anything was sent: safe to retry on another backend.
    pub fn before_send(self) -> bool {
        matches!(
            self,
            FailureKind::Refused
                | FailureKind::ConnectTimeout
                | FailureKind::Dns
                | FailureKind::Tls
        )
    }
}

/// Classifies a client error by walking its source chain.
pub fn classify(err: &hyper_util::client::legacy::Error) -> FailureKind {
    let connect = err.is_connect();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(mut io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            // Connectors wrap io errors in io errors (hyper-rustls: Other around InvalidData
            // around the rustls error): look at the innermost one.
            while let Some(inner) = io
                .get_ref()
                .and_then(|i| i.downcast_ref::<std::io::Error>())
            {
                io = inner;
            }
            return match io.kind() {
                ConnectionRefused => FailureKind::Refused,
                TimedOut if connect => FailureKind::ConnectTimeout,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    FailureKind::Reset
                }
                _ if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>()) =>
                {
                    FailureKind::Tls
                }
                _ if connect && io.to_string().contains("dns") => FailureKind::Dns,
                _ if connect => FailureKind::Refused,
                _ => FailureKind::Reset,
            };
        }
        if e.is::<rustls::Error>() {
            return FailureKind::Tls;
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return FailureKind::Reset;
            }
        }
        source = e.source();
    }
    if connect {
        let text = err.to_string();
        if text.contains("dns") {
            return FailureKind::Dns;
        }
        return FailureKind::Refused;
    }
    FailureKind::Other
}

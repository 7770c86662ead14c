//! Test harness: real in-process backends and a real gateway on 127.0.0.1 with ports from `:0`,
//! driven by real HTTP clients. No sleeps for synchronisation: every wait is on an event
//! (a channel, a socket read) under a generous upper bound that only fires when a test is broken.

#![allow(dead_code)]

pub mod pki;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::Gateway;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The upper bound on any wait in a test. Reaching it means the test failed.
pub const LIMIT: Duration = Duration::from_secs(20);

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for: {what}"),
    }
}

/// A request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>
        + Send
        + Sync,
>;
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A backend on 127.0.0.1:0.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted.
    pub conns: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl Backend {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .last()
            .cloned()
            .expect("the backend saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A backend that records each request (body included) and answers 200 with its `name` as the
/// body and `x-backend: name`.
pub async fn backend(name: &'static str) -> Backend {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    serve(
        Arc::new(move |req: Request<Incoming>| {
            let seen = seen2.clone();
            Box::pin(async move {
                record(&seen, req).await;
                let mut r = Response::new(full(name));
                r.headers_mut()
                    .insert("x-backend", HeaderValue::from_static(name));
                r
            })
        }),
        seen,
        false,
    )
    .await
}

/// Collects a request into the record.
pub async fn record(seen: &Arc<Mutex<Vec<Seen>>>, req: Request<Incoming>) -> Seen {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let s = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers,
        body,
    };
    seen.lock().unwrap().push(s.clone());
    s
}

/// A backend with a custom handler (HTTP/1.1 with upgrades, or h2c when `h2`).
pub async fn backend_with(h: Handler) -> Backend {
    serve(h, Arc::default(), false).await
}

pub async fn backend_h2c(h: Handler) -> Backend {
    serve(h, Arc::default(), true).await
}

async fn serve(h: Handler, seen: Arc<Mutex<Vec<Seen>>>, h2: bool) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stop_rx) = oneshot::channel();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let conns2 = conns.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                _ = &mut stop_rx => return,
            };
            conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    Backend {
        addr,
        seen,
        conns,
        stop: Some(stop),
    }
}

/// A port with nothing listening on it (bound, then closed).
pub async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A running gateway on a config written to a temporary folder.
pub struct Gw {
    pub gw: Arc<Gateway>,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Gw {
    pub fn http(&self) -> SocketAddr {
        self.gw.http_addrs()[0]
    }

    pub fn https(&self) -> SocketAddr {
        self.gw.https_addrs()[0]
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn env_of(pairs: &[(&str, &str)]) -> gatehouse::config::EnvLookup {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Arc::new(move |k| map.get(k).cloned())
}

/// Starts a gateway on `toml` (which should listen on 127.0.0.1:0).
pub async fn gateway(toml: &str) -> Gw {
    gateway_env(toml, &[]).await
}

pub async fn gateway_env(toml: &str, env: &[(&str, &str)]) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    gateway_in(dir, toml, env).await
}

/// Two worker runtimes shared by every gateway in the test binary, so that the tests serve
/// connections the way `gatehouse run` does by default: on worker threads of their own, not on
/// the test's runtime.
pub fn workers() -> Vec<tokio::runtime::Handle> {
    static WORKERS: std::sync::OnceLock<Vec<tokio::runtime::Handle>> = std::sync::OnceLock::new();
    WORKERS
        .get_or_init(|| gatehouse::server::worker_runtimes(2).expect("worker threads"))
        .clone()
}

/// `TEST_LOG=debug cargo test ...` shows the gateway's logs.
pub fn init_log() {
    if let Ok(level) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(level)
            .with_test_writer()
            .try_init();
    }
}

pub async fn gateway_in(dir: tempfile::TempDir, toml: &str, env: &[(&str, &str)]) -> Gw {
    gateway_on(dir, toml, env, workers()).await
}

/// As [`gateway`], on one worker: every client connection reaches the same worker, and so the
/// same idle upstream connections (each worker keeps its own, as each nginx worker does). For
/// tests about upstream connection reuse.
pub async fn gateway_one_worker(toml: &str) -> Gw {
    gateway_on(
        tempfile::tempdir().unwrap(),
        toml,
        &[],
        workers()[..1].to_vec(),
    )
    .await
}

pub async fn gateway_on(
    dir: tempfile::TempDir,
    toml: &str,
    env: &[(&str, &str)],
    workers: Vec<tokio::runtime::Handle>,
) -> Gw {
    init_log();
    gatehouse::tls::install_default_provider();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, toml).unwrap();
    let gw = Gateway::start(gatehouse::Options {
        config_path: path.clone(),
        env: env_of(env),
        workers,
    })
    .await
    .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    Gw { gw, dir, path }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request over a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    within("an HTTP/1.1 response", async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.unwrap();
        collect(resp).await
    })
    .await
}

/// Sends one request over a fresh HTTP/2 (prior knowledge, h2c) connection.
pub async fn send_h2c<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    within("an h2c response", async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.unwrap();
        collect(resp).await
    })
    .await
}

pub async fn collect(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// `GET path` with `Host: host`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(
        addr,
        Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

pub fn req(method: &str, host: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
}

pub fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// Writes raw bytes on a fresh TCP connection and reads until the peer closes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("a raw exchange", async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
}

/// Opens a TLS connection. `sni = None` connects by IP, which sends no SNI.
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = match sni {
        Some(n) => rustls::pki_types::ServerName::try_from(n.to_string()).unwrap(),
        None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await?;
    within(
        "a TLS handshake",
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
}

/// Sends a request on an open TLS stream, HTTP/2 if ALPN chose it, else HTTP/1.1.
pub async fn tls_send(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    req: Request<Full<Bytes>>,
) -> Reply {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    within("a TLS response", async move {
        let io = TokioIo::new(stream);
        let resp = if h2 {
            let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(c);
            s.send_request(req).await.unwrap()
        } else {
            let (mut s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(c);
            s.send_request(req).await.unwrap()
        };
        collect(resp).await
    })
    .await
}

/// `GET /` with a `Host` field on an open TLS stream.
pub async fn tls_get(stream: tokio_rustls::client::TlsStream<TcpStream>, host: &str) -> Reply {
    tls_send(
        stream,
        Request::get("/")
            .header("host", host)
            .body(empty())
            .unwrap(),
    )
    .await
}

/// The `gatehouse` binary running as a child process, with its JSON log lines.
pub struct Proc {
    pub child: Option<std::process::Child>,
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub lines: std::sync::mpsc::Receiver<serde_json::Value>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `gatehouse run -c path` and waits for it to log "gatehouse started".
    pub fn start(path: &std::path::Path, envs: &[(&str, &str)]) -> Proc {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        cmd.args(["run", "--log-format", "json", "-c"]).arg(path);
        cmd.env("RUST_LOG", "info").env_remove("NOTIFY_SOCKET");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log2.lock().unwrap().push(line.clone());
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let mut p = Proc {
            child: Some(child),
            http: Vec::new(),
            https: Vec::new(),
            lines: rx,
            log,
        };
        loop {
            let v = p.next_line("the process to start");
            let f = &v["fields"];
            match f["message"].as_str() {
                Some("listening") => {
                    let addr: SocketAddr = f["addr"].as_str().unwrap().parse().unwrap();
                    match f["kind"].as_str() {
                        Some("Http") => p.http.push(addr),
                        _ => p.https.push(addr),
                    }
                }
                Some("gatehouse started") => break,
                _ => {}
            }
        }
        p
    }

    /// The next JSON log line (blocking, bounded by [`LIMIT`]).
    pub fn next_line(&self, what: &str) -> serde_json::Value {
        match self.lines.recv_timeout(LIMIT) {
            Ok(v) => v,
            Err(_) => panic!(
                "timed out waiting for {what}; log so far:\n{}",
                self.log.lock().unwrap().join("\n")
            ),
        }
    }

    /// Waits for a log line whose message contains `needle`.
    pub fn wait_for(&self, needle: &str) -> serde_json::Value {
        loop {
            let v = self.next_line(needle);
            if v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle))
            {
                return v;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("already waited");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait().map(|s| s.code()));
        });
        match rx.recv_timeout(LIMIT) {
            Ok(r) => r.unwrap(),
            Err(_) => panic!("the process did not exit; log:\n{}", self.full_log()),
        }
    }

    pub fn full_log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A backend behind TLS (HTTP/1.1), with a certificate from `cert`/`key` PEM files. Counts the
/// TCP connections it accepts.
pub async fn backend_tls(
    h: Handler,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (Backend, Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(gatehouse::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let conns2 = conns.clone();
    let (stop, mut stop_rx) = oneshot::channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                _ = &mut stop_rx => return,
            };
            conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let h = h.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (
        Backend {
            addr,
            seen: Arc::default(),
            conns: conns.clone(),
            stop: Some(stop),
        },
        conns,
    )
}

/// A backend that runs `script(n, tcp)` on its `n`th accepted connection (from 0).
/// Returns its address and the number of connections it accepted.
pub async fn raw_backend<F, Fut>(script: F) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(usize, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(script(n, tcp));
        }
    });
    (addr, count)
}

/// A backend that reads its first connection to the end and answers nothing: the receiver gets
/// every byte the gateway sent it before giving up on the request.
pub async fn swallowing_backend() -> (SocketAddr, oneshot::Receiver<Vec<u8>>) {
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let (addr, _) = raw_backend(move |_, mut tcp| {
        let tx = tx.clone();
        async move {
            let mut got = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut got).await;
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(got);
            }
        }
    })
    .await;
    (addr, rx)
}

/// Checks that what reached a client cannot pass for a whole response: if a head arrived, it
/// still declares `declared` bytes, and fewer came.
pub fn assert_cut_off(out: &str, declared: usize) {
    if let Some((head, body)) = out.split_once("\r\n\r\n") {
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {declared}")),
            "{out}"
        );
        assert!(body.len() < declared, "{out}");
    }
}

/// Reads one request head; `None` when the peer closed first.
pub async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::io::AsyncReadExt::read(tcp, &mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A gateway config: one plain listener, site `app.example.com`, everything to `upstream`.
pub fn app_site(upstream: &str) -> String {
    format!(
        "[server]\nhttp = \"127.0.0.1:0\"\n\n[[site]]\nhosts = [\"app.example.com\"]\n  [[site.route]]\n  prefix = \"/\"\n  upstream = \"{upstream}\"\n"
    )
}

/// Checks that a connection the connection limit holds back gets no answer for 300 ms (the
/// kernel completes the handshake; Gatehouse does not take the connection).
pub async fn assert_not_answered(tcp: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
    assert!(early.is_err(), "answered over the limit: {early:?}");
}

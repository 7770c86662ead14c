//! Pooled HTTP/1.1 upstream connections, driven by the task of the request that uses them.
//!
//! hyper-util's pooled client runs every upstream connection in a task of its own and hands
//! requests and responses to it over channels, and spawns another task per request to put the
//! connection back. At proxy request rates those hand-offs cost more CPU than the HTTP work
//! (measured with perf; see bench/README.md). Here the request's task polls the upstream
//! connection itself, alongside the response, and then the response body does, until the last
//! byte; the connection then goes back to the pool, idle and unpolled. A pooled connection is
//! polled once when it is taken out, so one the backend closed meanwhile is noticed and dropped,
//! and a request that could not even be written to a reused connection is retried on a fresh one
//! (nothing was sent, so this is safe for any method).
//!
//! HTTP/2 backends and WebSocket upgrades keep using hyper-util's client (`upstream.rs`): h2
//! multiplexes many requests on one connection, which needs a task of its own.
//!
//! This module must not look at requests: it sends what it is given.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::UpstreamBody;

/// Idle connections kept per backend (nginx's `keepalive 64` is per worker; this is per pool).
const MAX_IDLE: usize = 256;

/// A TCP or TLS stream to a backend.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type Conn = http1::Connection<TokioIo<Stream>, UpstreamBody>;

/// One upstream connection: the request handle and the connection state machine.
pub struct Pooled {
    sender: http1::SendRequest<UpstreamBody>,
    conn: Conn,
    /// False once the connection future has finished (closed, or failed).
    open: bool,
    idle_since: Instant,
    reused: bool,
    gauge: metrics::Gauge,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

impl Pooled {
    /// Drives the connection; returns false once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if self.open {
            if let Poll::Ready(r) = Pin::new(&mut self.conn).poll(cx) {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                self.open = false;
            }
        }
        self.open
    }
}

/// How a pool connects.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// TLS client config (ALPN http/1.1) and the name to verify, for `https://` backends.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// `scheme://host:port`, the metric label.
    pub label: String,
}

/// The idle connections to one backend.
pub struct Pool {
    target: Target,
    /// Boxed so that taking one out and handing it to a response body moves a pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Pooled>>>,
    open_gauge: metrics::Gauge,
}

/// Why a connection could not be made or a request not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("connect: timed out")]
    ConnectTimeout,
    #[error("resolve {0}: {1}")]
    Dns(String, #[source] io::Error),
    #[error("TLS: {0}")]
    Tls(#[source] io::Error),
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

impl SendError {
    pub fn kind(&self) -> crate::upstream::FailureKind {
        use crate::upstream::FailureKind::*;
        match self {
            SendError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => Refused,
            SendError::Connect(e) if e.kind() == io::ErrorKind::TimedOut => ConnectTimeout,
            SendError::Connect(_) => Refused,
            SendError::ConnectTimeout => ConnectTimeout,
            SendError::Dns(..) => Dns,
            SendError::Tls(_) => Tls,
            SendError::Http(_) => Reset,
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("target", &self.target.label)
            .finish()
    }
}

impl Pool {
    pub fn new(target: Target) -> Pool {
        let open_gauge = metrics::gauge!(crate::metrics::UPSTREAM_OPEN_CONNECTIONS, "upstream" => target.label.clone());
        Pool {
            target,
            idle: Mutex::new(Vec::new()),
            open_gauge,
        }
    }

    fn take_idle(&self) -> Option<Box<Pooled>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Expired connections are at the bottom (LIFO): drop them from there.
        let keep_from = idle
            .iter()
            .position(|c| now.duration_since(c.idle_since) < self.target.idle_timeout)
            .unwrap_or(idle.len());
        idle.drain(..keep_from);
        idle.pop()
    }

    fn put_back(&self, mut c: Box<Pooled>) {
        if !c.open || !c.sender.is_ready() {
            return;
        }
        c.idle_since = Instant::now();
        c.reused = true;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    async fn connect(&self) -> Result<Box<Pooled>, SendError> {
        let t = &self.target;
        let tcp = tokio::time::timeout(t.connect_timeout, async {
            let addrs = tokio::net::lookup_host((t.host.as_str(), t.port))
                .await
                .map_err(|e| SendError::Dns(t.host.clone(), e))?;
            let mut last = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(SendError::Connect(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no address")
            })))
        })
        .await
        .map_err(|_| SendError::ConnectTimeout)??;
        let _ = tcp.set_nodelay(true);
        let stream = match &t.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(t.connect_timeout, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| SendError::ConnectTimeout)?
                        .map_err(SendError::Tls)?;
                Stream::Tls(Box::new(tls))
            }
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        self.open_gauge.increment(1.0);
        Ok(Box::new(Pooled {
            sender,
            conn,
            open: true,
            idle_since: Instant::now(),
            reused: false,
            gauge: self.open_gauge.clone(),
        }))
    }

    /// A live connection: an idle one that is still open, or a new one.
    async fn checkout(&self) -> Result<Box<Pooled>, SendError> {
        while let Some(mut c) = self.take_idle() {
            // Poll once: a connection the backend closed while idle finishes here.
            let alive = poll_fn(|cx| Poll::Ready(c.drive(cx))).await;
            if alive && c.sender.is_ready() {
                return Ok(c);
            }
        }
        self.connect().await
    }

    /// Sends `req`; returns the response with the connection riding in its body.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let mut c = self.checkout().await?;
            let fut = c.sender.try_send_request(req);
            let mut fut = std::pin::pin!(fut);
            let result = poll_fn(|cx| {
                let open = c.drive(cx);
                match fut.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(r),
                    Poll::Pending if !open => {
                        // The connection ended; the response future resolves with its error on
                        // the next poll.
                        fut.as_mut().poll(cx)
                    }
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match result {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|body| PooledBody {
                        body,
                        conn: Some(c),
                        pool,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Not written at all: a reused connection the backend had just closed.
                    Some(r) if c.reused => {
                        tracing::debug!(backend = %self.target.label, "pooled connection was closed; retrying on a new one");
                        req = r;
                    }
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }
}

/// A response body that keeps its connection moving and returns it to the pool at the end.
pub struct PooledBody {
    body: Incoming,
    /// Boxed: the connection state is large, and the body moves a few times.
    conn: Option<Box<Pooled>>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(mut c) = self.conn.take() {
            // One more turn lets the connection notice the message is done and become idle.
            c.drive(cx);
            self.pool.put_back(c);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(c) = this.conn.as_mut() {
            c.drive(cx);
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.release(cx),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(cx),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response without a body (HEAD, 204, 304) is never polled: give its connection back when
/// the body is dropped. A body dropped part-way drops its connection (the rest is unread).
impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.conn.is_some() && self.body.is_end_stream() {
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            self.release(&mut cx);
        }
    }
}

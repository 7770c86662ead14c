//! Pooled HTTP/1.1 upstream connections, driven by the task of the request that uses them.
//!
//! hyper-util's pooled client runs every upstream connection in a task of its own and hands
//! requests and responses to it over channels, and spawns another task per request to put the
//! connection back. At proxy request rates those hand-offs cost more CPU than the HTTP work
//! (measured with perf; see bench/README.md). Here the request's task writes the request and
//! reads the response head itself, with the framing rules of `h1.rs`, and then the response body
//! reads the rest, until the last byte; the connection then goes back to the pool, idle and
//! unpolled. A pooled connection is polled once when it is taken out, so one the backend closed
//! meanwhile is noticed and dropped. A request that failed on a reused connection before the
//! backend sent a byte is retried once on a fresh one when that is safe: nothing of its body was
//! read yet, and either the head could not be written or the method is idempotent
//! (RFC 9110 §9.2.2, RFC 9112 §9.3.1), as nginx's `proxy_next_upstream error` does.
//!
//! Each worker thread keeps its own idle list in every pool, as each nginx worker keeps its own
//! `keepalive` connections: a socket is registered with the runtime of the worker that opened
//! it, and a request on another worker would get its readiness from that worker's reactor (a
//! cross-thread wake-up per read, the cost the one-runtime-per-worker design is there to
//! avoid).
//!
//! HTTP/2 backends and WebSocket upgrades keep using hyper-util's client (`upstream.rs`): h2
//! multiplexes many requests on one connection, which needs a task of its own.
//!
//! This module must not look at requests: it sends what it is given.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use crate::body::UpstreamBody;
use crate::h1::{self, BodyLen, Chunk, ChunkedDecoder, H1Error, ReqFraming};
use crate::worker::{Padded, PerWorker, lock};

/// Idle connections kept per backend and worker (nginx's `keepalive 64` is per worker too).
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

/// One upstream connection and the bytes read from it that nobody has taken yet.
pub struct Pooled {
    io: Stream,
    buf: BytesMut,
    idle_since: Instant,
    reused: bool,
    gauge: metrics::Gauge,
    /// The response timer, kept with the connection and moved forward lazily (see
    /// [`Pooled::poll_timed_out`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Room made in the read buffer before each read. Response bodies are handed on as slices of
/// this buffer (no copy); the space is reused once the client side has written them out.
const READ_CHUNK: usize = 16 * 1024;
/// The largest read of a response body whose length is known.
const MAX_READ: usize = 256 * 1024;

impl Pooled {
    /// Reads what the backend has sent into `buf`; `Ok(0)` is the backend closing.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.poll_fill_up_to(cx, READ_CHUNK)
    }

    /// Whether `deadline` has passed, waking the task then if not.
    ///
    /// A new timer per request was 3% of a small request's instructions: registering it in
    /// tokio's timer wheel and taking it out again. This one stays registered with the
    /// connection; while requests follow each other it is left to fire at an earlier request's
    /// deadline and, when it does, set again to the current one. (When it fires with the
    /// connection idle in the pool, it wakes the last task that used it once, for nothing.)
    fn poll_timed_out(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if timer.deadline() > deadline.into() {
            timer.as_mut().reset(deadline.into());
        }
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline.into());
        }
        false
    }

    /// As `poll_fill`, with room for up to `want` bytes: a large body moves in large reads.
    fn poll_fill_up_to(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < want / 4 {
            self.buf.reserve(want);
        }
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
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
    /// One idle list per worker ([`crate::worker`]): a response body returns its connection to
    /// the list it came from without touching another worker's.
    idle: PerWorker<IdleList>,
    open_gauge: metrics::Gauge,
}

/// One worker's idle connections, newest last. Boxed so that taking one out and handing it to a
/// response body moves a pointer.
#[allow(clippy::vec_box)]
type IdleList = Mutex<Vec<Box<Pooled>>>;

fn put_back(list: &IdleList, mut c: Box<Pooled>) {
    c.reused = true;
    let mut idle = lock(list);
    if idle.len() < MAX_IDLE {
        idle.push(c);
    }
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
    Io(#[source] io::Error),
    #[error("{0}")]
    Protocol(#[source] H1Error),
    /// The request body failed (the client went away, or it was over `max_body`).
    #[error("request body: {0}")]
    Body(#[source] crate::body::BoxError),
    /// No response head by the deadline given to [`Pool::send`].
    #[error("no response in time")]
    Timeout,
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
            SendError::Io(_) => Reset,
            SendError::Protocol(_) | SendError::Body(_) | SendError::Timeout => Other,
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
        Pool::with_slots(target, crate::worker::slots())
    }

    fn with_slots(target: Target, slots: usize) -> Pool {
        let open_gauge = metrics::gauge!(crate::metrics::UPSTREAM_OPEN_CONNECTIONS, "upstream" => target.label.clone());
        Pool {
            target,
            idle: PerWorker::with_slots(slots, IdleList::default),
            open_gauge,
        }
    }

    fn take_idle(&self, now: Instant) -> Option<Box<Pooled>> {
        let mut idle = lock(self.idle.local());
        // Expired connections are at the bottom (LIFO): drop them from there.
        let keep_from = idle
            .iter()
            .position(|c| now.duration_since(c.idle_since) < self.target.idle_timeout)
            .unwrap_or(idle.len());
        idle.drain(..keep_from);
        idle.pop()
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
        self.open_gauge.increment(1.0);
        Ok(Box::new(Pooled {
            io: stream,
            buf: BytesMut::new(),
            idle_since: Instant::now(),
            reused: false,
            gauge: self.open_gauge.clone(),
            timer: None,
        }))
    }

    /// A live connection: an idle one that is still open, or a new one, made by `deadline` (the
    /// response deadline counts the connecting too, as it does for the caller's own timer).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice: see proxy::serve"
    )]
    fn checkout(
        &self,
        now: Instant,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Box<Pooled>, SendError>> {
        async move {
            while let Some(mut c) = self.take_idle(now) {
                // Read once: a connection the backend closed (or wrote to) while idle is dropped.
                let alive = poll_fn(|cx| Poll::Ready(c.poll_fill(cx).is_pending())).await;
                if alive {
                    return Ok(c);
                }
            }
            // Boxed: connecting (a TLS handshake's state) is 1.3 KiB that every request's future
            // would otherwise carry, and copy at each level above, to use on a new connection only.
            let connect = Box::pin(self.connect());
            match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), connect)
                    .await
                    .map_err(|_| SendError::Timeout)?,
                None => connect.await,
            }
        }
    }

    /// Sends a request (`target` in origin-form, written as given); returns the response with
    /// the connection riding in its body. With a `timeout`, a response head that has not arrived
    /// that long after the call is [`SendError::Timeout`] (a request with a body is timed by the
    /// caller instead, from the end of its body).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice: see proxy::serve"
    )]
    pub fn send<'a>(
        &'a self,
        method: Method,
        target: &'a str,
        headers: HeaderMap,
        appended: Option<crate::headers::Appended<'a>>,
        mut body: UpstreamBody,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Response<PooledBody>, SendError>> + 'a {
        async move {
            // One clock read serves the pool's idle check, the deadline and the connection's idle
            // mark (each read is a vDSO call: 7 per request were 1.4% of a small request's time).
            let now = Instant::now();
            let deadline = timeout.map(|t| now + t);
            let framing = h1::request_framing(body.is_end_stream(), body.size_hint().exact());
            let mut head = Vec::with_capacity(512);
            h1::encode_request_head(
                &mut head,
                &method,
                target,
                &headers,
                appended.as_ref(),
                framing,
            );
            h1::recycle_map(headers);
            loop {
                let mut c = self.checkout(now, deadline).await?;
                // Idle from the start of its last request, not the end: the pool gives a connection
                // up a response time early, which errs on the side of a backend that closes it.
                c.idle_since = now;
                let mut ex = Exchange::new(&head, &mut body, framing);
                let result = poll_fn(|cx| match ex.poll(&mut c, cx) {
                    Poll::Pending if deadline.is_some_and(|d| c.poll_timed_out(cx, d)) => {
                        Poll::Ready(Err(SendError::Timeout))
                    }
                    polled => polled,
                })
                .await;
                let replayable = ex.replayable(&method);
                let body_sent = ex.body_done && ex.head.is_empty() && ex.out.is_empty();
                drop(ex);
                let resp = match result {
                    Ok(r) => r,
                    // A timeout is the backend's slowness, not a connection that went stale.
                    Err(e) if c.reused && replayable && !matches!(e, SendError::Timeout) => {
                        tracing::debug!(backend = %self.target.label, error = %e, "pooled connection failed before the response; retrying on a new one");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let len = h1::response_body_len(&method, &resp).map_err(SendError::Protocol)?;
                // An unfinished request body leaves the connection mid-message: close it after.
                // So does a response framed two ways (RFC 9112 §6.3 rule 3: "ought to be handled
                // as an error"; it may be an attempt at response splitting).
                let keep = h1::keep_alive(&resp)
                    && body_sent
                    && len != BodyLen::UntilClose
                    && !h1::framed_twice(&resp);
                let mut out = Response::new(());
                *out.status_mut() = resp.status;
                *out.version_mut() = resp.version;
                *out.headers_mut() = resp.headers;
                let mut pb = PooledBody {
                    conn: Some(c),
                    state: match len {
                        BodyLen::Empty => BodyState::Done,
                        BodyLen::Length(n) => BodyState::Length(n),
                        BodyLen::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
                        BodyLen::UntilClose => BodyState::UntilClose,
                    },
                    keep,
                    idle: self.idle.local().clone(),
                };
                if len == BodyLen::Empty {
                    pb.release();
                }
                return Ok(out.map(|()| pb));
            }
        }
    }
}

/// One request on one connection: the bytes still to write, the request body still to read,
/// and the response head being read, all polled together, so a backend that answers before it
/// has read the whole body (a 413, a redirect) is heard.
struct Exchange<'a> {
    /// The request head, until written; kept out of `out` so a bodiless request allocates no
    /// queue (and borrowed: turning it into `Bytes` cost an allocation).
    head: &'a [u8],
    out: VecDeque<Bytes>,
    body: &'a mut UpstreamBody,
    chunked: bool,
    body_done: bool,
    body_started: bool,
    head_written: bool,
    /// A write failed: stop writing, but keep reading, since the response may already be there.
    write_error: Option<io::Error>,
    got_bytes: bool,
}

impl<'a> Exchange<'a> {
    fn new(head: &'a [u8], body: &'a mut UpstreamBody, framing: ReqFraming) -> Self {
        Exchange {
            head,
            out: VecDeque::new(),
            body,
            chunked: framing == ReqFraming::Chunked,
            body_done: framing == ReqFraming::None,
            body_started: false,
            head_written: false,
            write_error: None,
            got_bytes: false,
        }
    }

    /// Whether a failure can be retried on another connection (see the module doc).
    fn replayable(&self, method: &Method) -> bool {
        !self.body_started && !self.got_bytes && (!self.head_written || method.is_idempotent())
    }

    fn poll(&mut self, c: &mut Pooled, cx: &mut Context<'_>) -> Poll<Result<h1::Head, SendError>> {
        loop {
            let mut progress = false;
            if self.write_error.is_none() {
                if let Err(e) = self.fill_from_body(cx) {
                    return Poll::Ready(Err(e));
                }
                progress |= self.poll_write(c, cx);
                if self.write_error.is_some() && !self.body_done {
                    // Nothing more can be sent: let the client's body go, which also starts the
                    // response timeout (it waits for the end of the body), so a backend that
                    // stops reading and never answers is still a 504, not a hang.
                    *self.body = UpstreamBody::empty();
                    self.body_done = true;
                }
            }
            match c.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    let e = self.write_error.take().unwrap_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "backend closed the connection before responding",
                        )
                    });
                    return Poll::Ready(Err(SendError::Io(e)));
                }
                Poll::Ready(Ok(_)) => {
                    self.got_bytes = true;
                    progress = true;
                    // Interim 1xx responses (100 Continue, 103 Early Hints) are skipped; the
                    // final response may follow in the same read.
                    loop {
                        match h1::parse_response_head(&mut c.buf) {
                            Ok(Some(head))
                                if head.status == http::StatusCode::SWITCHING_PROTOCOLS =>
                            {
                                return Poll::Ready(Err(SendError::Protocol(
                                    H1Error::UnexpectedUpgrade,
                                )));
                            }
                            Ok(Some(head)) if head.status.is_informational() => continue,
                            Ok(Some(head)) => return Poll::Ready(Ok(head)),
                            Ok(None) => break,
                            Err(e) => return Poll::Ready(Err(SendError::Protocol(e))),
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SendError::Io(e))),
                Poll::Pending => {}
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Queues what the request body has ready, framed.
    fn fill_from_body(&mut self, cx: &mut Context<'_>) -> Result<(), SendError> {
        while !self.body_done && self.out.len() < 8 {
            match Pin::new(&mut *self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.body_started = true;
                    match frame.into_data() {
                        Ok(d) if d.is_empty() => {}
                        Ok(d) if self.chunked => {
                            self.out.push_back(h1::chunk_header(d.len()));
                            self.out.push_back(d);
                            self.out.push_back(Bytes::from_static(b"\r\n"));
                        }
                        Ok(d) => self.out.push_back(d),
                        Err(frame) => {
                            // Trailers end the body; only chunked framing can carry them.
                            self.body_done = true;
                            if self.chunked {
                                self.out.push_back(h1::last_chunk(frame.trailers_ref()));
                            }
                        }
                    }
                }
                Poll::Ready(None) => {
                    self.body_done = true;
                    if self.chunked {
                        self.out.push_back(h1::last_chunk(None));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Err(SendError::Body(e)),
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Writes what is queued; true if anything was written.
    fn poll_write(&mut self, c: &mut Pooled, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.head.is_empty() || !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); 8];
            let mut n = 0;
            if !self.head.is_empty() {
                slices[0] = IoSlice::new(self.head);
                n = 1;
            }
            for b in self.out.iter().take(slices.len() - n) {
                slices[n] = IoSlice::new(b);
                n += 1;
            }
            match Pin::new(&mut c.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    self.write_error = Some(io::ErrorKind::WriteZero.into());
                    break;
                }
                Poll::Ready(Ok(mut written)) => {
                    progress = true;
                    if !self.head.is_empty() {
                        let k = written.min(self.head.len());
                        self.head = &self.head[k..];
                        written -= k;
                        self.head_written = self.head.is_empty();
                    }
                    while written > 0 {
                        let Some(front) = self.out.front_mut() else {
                            break;
                        };
                        let k = written.min(front.len());
                        front.advance(k);
                        written -= k;
                        if front.is_empty() {
                            self.out.pop_front();
                        }
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.write_error = Some(e);
                    break;
                }
                Poll::Pending => break,
            }
        }
        progress
    }
}

/// How much of the response body is left.
enum BodyState {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// A response body that reads its connection and returns it to the pool at the end.
pub struct PooledBody {
    /// Boxed: it moves with the body, a few times.
    conn: Option<Box<Pooled>>,
    state: BodyState,
    /// The response allows another request on the connection, and the request was all sent.
    keep: bool,
    /// The idle list the connection goes back to (this worker's, not the pool: a count on
    /// the pool would be written by every worker).
    idle: Arc<Padded<IdleList>>,
}

impl PooledBody {
    /// The body is complete: the connection goes back if it is clean (no bytes past the body).
    fn release(&mut self) {
        self.state = BodyState::Done;
        if let Some(c) = self.conn.take() {
            if self.keep && c.buf.is_empty() {
                put_back(&self.idle, c);
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        self.state = BodyState::Done;
        Poll::Ready(Some(Err(e)))
    }
}

fn invalid(e: H1Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(c) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) if !c.buf.is_empty() => {
                    let n = (c.buf.len() as u64).min(*left) as usize;
                    let data = c.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::Chunked(d) => match d.decode(&mut c.buf) {
                    Ok(Chunk::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Chunk::End(trailers)) => {
                        this.release();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Chunk::More) => {}
                    Err(e) => return this.fail(invalid(e)),
                },
                BodyState::UntilClose if !c.buf.is_empty() => {
                    let data = c.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            let want = match this.state {
                BodyState::Length(left) => (left.min(MAX_READ as u64) as usize).max(READ_CHUNK),
                _ => READ_CHUNK,
            };
            match ready!(c.poll_fill_up_to(cx, want)) {
                Ok(0) if matches!(this.state, BodyState::UntilClose) => {
                    this.conn = None;
                    this.state = BodyState::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backend closed the connection before the end of the body",
                    ));
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_takes_only_the_connections_it_put_back() {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = backend.local_addr().unwrap();
        let pool = Pool::with_slots(
            Target {
                host: addr.ip().to_string(),
                port: addr.port(),
                tls: None,
                connect_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(60),
                label: format!("http://{addr}"),
            },
            2,
        );
        let conn = pool.connect().await.unwrap();
        let _accepted = backend.accept().await.unwrap();
        crate::worker::set(0);
        put_back(pool.idle.local(), conn);
        crate::worker::set(1);
        assert!(pool.take_idle(Instant::now()).is_none());
        crate::worker::set(0);
        assert!(pool.take_idle(Instant::now()).is_some());
    }
}

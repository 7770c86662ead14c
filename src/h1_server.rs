//! Our HTTP/1.1 fast path: requests without a body, read and answered without hyper.
//!
//! Why: hyper keeps an 8 KiB read and an 8 KiB write buffer for an HTTP/1 connection's whole
//! life, and offers no way to release them between requests; an idle keep-alive connection cost
//! 16 KiB (nginx: 0.6). Most requests a gateway sees are GETs without a body. This path parses
//! them with `httparse` (the parser hyper uses), hands them to the same service, writes the
//! response itself, and holds no buffer while the connection waits for its next request; after
//! a while idle, a plain-TCP connection leaves to be parked ([`crate::park`]). The CPU per
//! request is about the same as hyper's, since most of it is building the same `http` types
//! (see bench/README.md).
//!
//! Anything it does not fully understand goes to hyper, with the bytes read so far, for the rest
//! of the connection: a request with a body or `Expect`, an upgrade, a target that is not
//! origin-form, `CONNECT`, a malformed or oversized head (hyper then answers 400 or 431 as it
//! always did). So this path never makes up an error answer and never guesses at framing.
//!
//! Must not: look at routes (the service does), or read a request body.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::{Body, ReqBody};
use crate::proxy::ConnInfo;
use crate::state::Shared;

/// The most header fields in a request head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Room left in a request's header map for the fields the proxy adds (`X-Forwarded-For`,
/// `-Proto`, `-Host`, `-Prefix`, `X-Real-IP`): growing the map rehashes it, and that was 5% of
/// a small request's instructions (callgrind).
const FORWARDING_ROOM: usize = 6;
/// The most body bytes and pieces gathered into one write.
const MAX_GATHER_BYTES: usize = 256 * 1024;
const MAX_GATHER_PIECES: usize = 48;
/// Room made in the read buffer before a read: nginx's `client_header_buffer_size`, and small
/// enough for the allocator's per-thread cache, since it is freed while a connection is idle.
const READ_CHUNK: usize = 1024;
/// A response body up to this size is copied behind the head rather than gathered.
const SMALL_BODY: usize = 4096;

/// The timeouts and limit a connection reads once when it is accepted.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub idle: Duration,
    pub header_read: Duration,
    pub max_header: usize,
    /// Whether an idle connection may leave to be parked ([`crate::park`]).
    pub park: bool,
}

/// How the fast path left a connection.
pub(crate) enum Next<T> {
    Closed,
    /// hyper takes over: the stream, with the bytes already read in front.
    Hyper(Prefixed<T>),
    /// Idle for [`crate::park::PARK_AFTER`]: the stream may wait parked until `until` (its
    /// idle deadline).
    Park {
        io: T,
        until: Instant,
    },
}

/// What the fast path needs from a stream besides reading and writing.
pub(crate) trait Transport {
    /// Waits for bytes to read without reading them, so an idle connection holds no read
    /// buffer.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Turns off Nagle's algorithm. A plain connection has it on until it needs it off (see
    /// [`serve`]); a TLS one has it off from the start.
    fn set_nodelay(&self);
    /// Whether closing takes more than dropping the stream: TLS sends `close_notify` first; a
    /// TCP socket's close sends its FIN itself, so a `shutdown` first is a system call for
    /// nothing.
    const CLOSE_NEEDS_SHUTDOWN: bool;
}

impl Transport for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
    fn set_nodelay(&self) {
        let _ = TcpStream::set_nodelay(self, true);
    }
    const CLOSE_NEEDS_SHUTDOWN: bool = false;
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    /// Decrypted bytes that rustls holds already will never show on the socket: then at once.
    /// Otherwise when the socket has bytes, which may be a TLS record without application data
    /// or part of one: the read then finds nothing, a wake-up with nothing to read, which the
    /// busy state handles (see [`Burst::Idle`]). Waiting on the socket, rather than reading at
    /// once, lets an idle TLS connection wait in the idle state, without the busy state's
    /// 1.9 KiB (massif, bench/README.md).
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, session) = self.get_ref();
        if session.wants_read() {
            tcp.poll_read_ready(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
    /// Set when the connection was accepted (the handshake takes several flights).
    fn set_nodelay(&self) {}
    const CLOSE_NEEDS_SHUTDOWN: bool = true;
}

/// Serves requests until the connection closes or a request needs hyper.
///
/// Nagle's algorithm stays on until the connection needs it off, as nginx's `tcp_nodelay`
/// does: a response sent in one write on a connection that then closes (the common case for
/// a new connection per request) is not held back by it, and the system call is saved. It is
/// turned off when a response takes a second write, when the connection stays open after a
/// response, and before hyper takes over.
///
/// Two states, so that a connection waiting for its next request costs little: idle (this
/// function: the stream, one timer, the shutdown watch) and busy (a boxed [`burst`], holding
/// the read buffer, the request, the handler and the response). Unboxed, the busy state
/// (2.5 KiB) made every connection that had just been served that much larger until it was
/// parked, and idle memory measured after a burst of new connections (scenario 5) rose from
/// 0.5-0.6 to 0.7-0.8 KiB per connection. So a connection's first busy spell ends with its
/// first response; a connection that comes back for more is likely to come back again soon,
/// and its busy state waits for the next request for up to [`crate::park::PARK_AFTER`]: making
/// a new one per request was a 2.4 KiB copy (0.9% of the time in a `perf` profile), an
/// allocation and a free.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
pub(crate) fn serve<T>(
    mut io: T,
    read: BytesMut,
    conn: &Arc<ConnInfo>,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> impl Future<Output = Next<T>>
where
    T: AsyncRead + AsyncWrite + Transport + Unpin,
{
    async move {
        // One timer and one shutdown waiter for the connection's life (a new waiter per request
        // costs a registration each time).
        let closing = shutdown.clone();
        let shutdown_signal = async move {
            let _ = shutdown.changed().await;
        };
        tokio::pin!(shutdown_signal);
        let timer = tokio::time::sleep(limits.header_read);
        tokio::pin!(timer);
        // Bytes read already (the listener's look for the HTTP/2 preface): a head has begun.
        let mut read = read;
        let mut nodelay = false;
        let park = limits.park && crate::park::PARK_AFTER < limits.idle;
        // Since when the connection has waited for its next request, when a busy spell waited
        // already (its wait counts towards the idle deadline).
        let mut waiting_since: Option<Instant> = None;
        // Whether a busy spell has ended already: the next ones wait in the busy state.
        let mut came_back = false;
        loop {
            if *closing.borrow() {
                return Next::Closed;
            }
            if read.is_empty() {
                let now = Instant::now();
                let since = waiting_since.unwrap_or(now);
                let until = since + limits.idle;
                let wake = if park {
                    since + crate::park::PARK_AFTER
                } else {
                    until
                };
                if now >= wake {
                    return if park {
                        Next::Park { io, until }
                    } else {
                        Next::Closed
                    };
                }
                waiting_since = Some(since);
                timer.as_mut().reset(wake);
                match next_bytes(&io, shutdown_signal.as_mut(), timer.as_mut()).await {
                    Woke::Readable => {}
                    Woke::TimedOut if park => return Next::Park { io, until },
                    Woke::TimedOut | Woke::Closed => return Next::Closed,
                }
            }
            let buf = std::mem::take(&mut read);
            let ctx = BurstCtx {
                conn,
                shared,
                closing: &closing,
                limits,
                stay: came_back,
            };
            came_back = true;
            let waits = Waits {
                timer: timer.as_mut(),
                shutdown: shutdown_signal.as_mut(),
                since: waiting_since.take(),
            };
            let busy = burst(&mut io, buf, &ctx, waits, &mut nodelay);
            match Box::pin(busy).await {
                // Waiting for the next request (since `since`), in the idle state from now on.
                Burst::Idle { since } => waiting_since = since,
                Burst::Closed => return Next::Closed,
                Burst::Hyper(buf) => {
                    io.set_nodelay();
                    return Next::Hyper(Prefixed::new(buf.freeze(), io));
                }
            }
        }
    }
}

/// How a busy spell ended.
enum Burst {
    /// Every buffered request answered: wait for the next one in the idle state. `since`:
    /// when the wait began, if the busy spell waited already (`None`: it begins now).
    ///
    /// A busy spell also ends this way when it woke with nothing to read and its timer ran
    /// out: readiness can be reported with nothing to read (a read that filled its buffer
    /// leaves tokio believing the socket readable, and a TLS record may carry no request); the
    /// idle state then decides from the times (park, close, or wait on) as if it had not woken.
    Idle {
        since: Option<Instant>,
    },
    Closed,
    /// hyper takes over, with these bytes read already.
    Hyper(BytesMut),
}

/// What a busy spell reads from its connection.
struct BurstCtx<'a> {
    conn: &'a Arc<ConnInfo>,
    shared: &'a Arc<Shared>,
    closing: &'a watch::Receiver<bool>,
    limits: Limits,
    /// Whether to wait for the next request in the busy state (see [`serve`]).
    stay: bool,
}

/// The connection's timer and shutdown waiter, lent to a busy spell.
struct Waits<'a, S> {
    timer: Pin<&'a mut tokio::time::Sleep>,
    shutdown: Pin<&'a mut S>,
    /// When the connection began waiting for the request this spell reads first, if it is
    /// waiting (`None`: a head has begun).
    since: Option<Instant>,
}

/// Reads and answers requests while the client has some buffered (pipelining), from the first
/// byte of a head to the end of the last response, and (`ctx.stay`) while the next ones come
/// soon enough. `nodelay`: see [`write_response`].
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
fn burst<T, S>(
    io: &mut T,
    mut buf: BytesMut,
    ctx: &BurstCtx<'_>,
    waits: Waits<'_, S>,
    nodelay: &mut bool,
) -> impl Future<Output = Burst>
where
    T: AsyncRead + AsyncWrite + Transport + Unpin,
    S: Future<Output = ()>,
{
    async move {
        let Waits {
            mut timer,
            mut shutdown,
            since,
        } = waits;
        let mut waiting_since = since;
        loop {
            // Read until a whole head is buffered: the idle timer until its first byte (a TLS
            // stream can say "readable" with no request to read, so the wait for the first
            // byte may be here), then
            // header_read_timeout from the first time the head is seen incomplete (a slowloris
            // client is closed, an idle one is not). A head that arrives whole, the common case,
            // costs no timer change.
            let mut head_deadline = false;
            let (req, keep_alive) = loop {
                if !buf.is_empty() {
                    match parse(&mut buf) {
                        Ok(Some(parsed)) => break parsed,
                        Ok(None) if buf.len() < ctx.limits.max_header => {
                            if !head_deadline {
                                timer
                                    .as_mut()
                                    .reset(Instant::now() + ctx.limits.header_read);
                                head_deadline = true;
                            }
                        }
                        Ok(None) | Err(Handover) => return Burst::Hyper(buf),
                    }
                }
                buf.reserve(READ_CHUNK);
                let quiet = buf.is_empty();
                let n = tokio::select! {
                    biased;
                    r = io.read_buf(&mut buf) => r.unwrap_or(0),
                    _ = &mut timer => {
                        if quiet {
                            return Burst::Idle { since: waiting_since };
                        }
                        0
                    }
                };
                if n == 0 {
                    return Burst::Closed;
                }
                waiting_since = None;
            };
            let head_only = req.method() == Method::HEAD;
            let version = req.version();
            let resp = match crate::proxy::serve(req, ctx.conn, ctx.shared).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let keep_alive = keep_alive && !*ctx.closing.borrow();
            match write_response(io, resp, version, head_only, keep_alive, nodelay).await {
                Ok(true) => {}
                Ok(false) => {
                    if T::CLOSE_NEEDS_SHUTDOWN {
                        let _ = io.shutdown().await;
                    }
                    return Burst::Closed;
                }
                Err(e) => {
                    tracing::debug!(peer = %ctx.conn.peer, error = %e, "connection ended while writing a response");
                    return Burst::Closed;
                }
            }
            if !buf.is_empty() {
                // Pipelined: the next head is here already.
                continue;
            }
            if !ctx.stay {
                return Burst::Idle { since: None };
            }
            // Wait here for the next request, for a while (see [`serve`]).
            let now = Instant::now();
            waiting_since = Some(now);
            timer
                .as_mut()
                .reset(now + crate::park::PARK_AFTER.min(ctx.limits.idle));
            match next_bytes(io, shutdown.as_mut(), timer.as_mut()).await {
                Woke::Readable => {}
                Woke::TimedOut => {
                    return Burst::Idle {
                        since: waiting_since,
                    };
                }
                Woke::Closed => return Burst::Closed,
            }
        }
    }
}

/// How a wait for a request's first bytes ended.
enum Woke {
    /// Bytes to read (or so the stream says: see [`Burst::Idle`]).
    Readable,
    /// The connection failed or the server is shutting down.
    Closed,
    /// The timer ran out.
    TimedOut,
}

/// Waits for a request's first bytes without reading them (the idle state's wait and the busy
/// state's are the same wait, with their own timer deadlines).
async fn next_bytes<T: Transport, S: Future<Output = ()>>(
    io: &T,
    shutdown: Pin<&mut S>,
    timer: Pin<&mut tokio::time::Sleep>,
) -> Woke {
    tokio::select! {
        biased;
        r = poll_fn(|cx| io.poll_readable(cx)) => match r {
            Ok(()) => Woke::Readable,
            Err(_) => Woke::Closed,
        },
        _ = shutdown => Woke::Closed,
        _ = timer => Woke::TimedOut,
    }
}

/// This request is for hyper.
#[derive(Debug, PartialEq, Eq)]
struct Handover;

/// Parses a head from the front of `buf` into a bodiless request and whether the connection
/// may stay open after it. Consumes nothing unless it returns a request.
fn parse(buf: &mut BytesMut) -> Result<Option<(Request<ReqBody>, bool)>, Handover> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Handover),
    };
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(Handover),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| Handover)?;
    let path = req.path.unwrap_or("");
    if method == Method::CONNECT || !path.starts_with('/') {
        return Err(Handover);
    }
    // RFC 9112 §9.3: `close` ends the connection wherever it appears; an HTTP/1.0 client must
    // ask to keep it.
    let (mut close, mut asked) = (false, false);
    // Fields that concern this connection only and say nothing more than `close` and
    // `keep-alive` (read here): they stay out of the request's map, which saves the proxy
    // looking them up and removing them as hop-by-hop (RFC 9110 §7.6.1), 2.5% of a request on
    // a new connection with `Connection: close` (callgrind, scenario 3 of bench/README.md).
    // A `Connection` that names other fields stays, so that those are removed with it.
    let mut unforwarded: u128 = 0;
    const _: () = assert!(MAX_HEADERS <= 128, "one bit per field");
    for (i, h) in req.headers.iter().enumerate() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if h.value.trim_ascii() != b"0" {
                return Err(Handover);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Err(Handover);
        } else if name.eq_ignore_ascii_case(b"connection") {
            let mut only_ours = true;
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    asked = true;
                } else if !token.is_empty() {
                    only_ours = false;
                }
            }
            if only_ours {
                unforwarded |= 1 << i;
            }
        } else if name.eq_ignore_ascii_case(b"keep-alive") {
            unforwarded |= 1 << i;
        }
    }
    let keep_alive = !close && (version == Version::HTTP_11 || asked);
    // The values share the head's bytes, as hyper's do: offsets first, then split it off.
    let mut spans = crate::h1::FieldSpans::default();
    spans.collect(buf, req.headers);
    let target = path.as_ptr() as usize - buf.as_ptr() as usize;
    let target = target..target + path.len();
    let head = buf.split_to(len).freeze();
    let built = (|| {
        let spans = spans.as_slice();
        let mut headers = crate::h1::header_map(spans.len() + FORWARDING_ROOM);
        for (i, &[ns, ne, vs, ve]) in spans.iter().enumerate() {
            if unforwarded & (1 << i) != 0 {
                continue;
            }
            let name = HeaderName::from_bytes(&head[ns..ne]).ok()?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve)).ok()?;
            headers.append(name, value);
        }
        let uri = Uri::from_maybe_shared(head.slice(target)).ok()?;
        Some((headers, uri))
    })();
    let Some((headers, uri)) = built else {
        // A field or target httparse let through but `http` refuses: hyper answers it, from
        // the same bytes (the rare path, so the copy does not matter).
        let mut whole = BytesMut::from(&head[..]);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Err(Handover);
    };
    let mut r = Request::new(ReqBody::Empty);
    *r.method_mut() = method;
    *r.uri_mut() = uri;
    *r.version_mut() = version;
    *r.headers_mut() = headers;
    Ok(Some((r, keep_alive)))
}

/// Writes a response; returns whether the connection may carry another request. `nodelay`:
/// whether Nagle's algorithm is off already; it is turned off before the response's second
/// write, and after the response when the connection stays open (see [`serve`]).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
fn write_response<T: AsyncWrite + Transport + Unpin>(
    io: &mut T,
    resp: Response<Body>,
    req_version: Version,
    head_only: bool,
    mut keep_alive: bool,
    nodelay: &mut bool,
) -> impl Future<Output = io::Result<bool>> {
    async move {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status;
        // One walk over the fields for what framing needs (three lookups hashed each name).
        let (mut length_field, mut has_date) = (None, false);
        for (name, value) in &parts.headers {
            if name == header::CONNECTION {
                if crate::headers::has_token(value, "close") {
                    keep_alive = false;
                }
            } else if name == header::CONTENT_LENGTH {
                // The first value, as a lookup would give.
                length_field.get_or_insert(value);
            } else if name == header::DATE {
                has_date = true;
            }
        }
        let declared = length_field
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // RFC 9112 §6.3: no body after HEAD, 1xx, 204, 304.
        let bodiless = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        // The length: the header's when the response has one (a static file knows its size; its
        // streamed body does not), else the body's when it is known.
        let length = declared.or_else(|| body.size_hint().exact());
        let chunked = !bodiless && length.is_none() && req_version == Version::HTTP_11;
        if !bodiless && length.is_none() && req_version == Version::HTTP_10 {
            // An HTTP/1.0 client knows no chunked coding: the end of the body is the close.
            keep_alive = false;
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            let framing = name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING;
            // Our own framing replaces the map's, except that HEAD and 304 keep the length the GET
            // would have had (RFC 9110 §8.6).
            let keep_length = name == header::CONTENT_LENGTH
                && bodiless
                && !status.is_informational()
                && status != StatusCode::NO_CONTENT;
            if name == header::CONNECTION || (framing && !keep_length) {
                continue;
            }
            push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        if head_only && declared.is_none() && length.is_some_and(|n| n > 0) {
            // A HEAD answered by a body we would have sent (a fixed response): its length.
            push_field(
                &mut out,
                b"content-length",
                crate::h1::decimal(length.unwrap_or(0), &mut [0; 20]),
            );
        }
        if !bodiless {
            match length {
                Some(n) => push_field(
                    &mut out,
                    b"content-length",
                    crate::h1::decimal(n, &mut [0; 20]),
                ),
                None if chunked => push_field(&mut out, b"transfer-encoding", b"chunked"),
                None => {}
            }
        }
        if !has_date {
            push_field(&mut out, b"date", date().as_bytes());
        }
        if !keep_alive {
            push_field(&mut out, b"connection", b"close");
        } else if req_version == Version::HTTP_10 {
            push_field(&mut out, b"connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");
        crate::h1::recycle_map(parts.headers);
        if bodiless {
            drop(body);
            write_all(io, &mut [IoSlice::new(&out)]).await?;
            return Ok(keep_open(io, keep_alive, nodelay));
        }
        // A small body that is all there already goes out copied behind the head, in one write
        // without gathering (the common small API answer: two allocations fewer).
        let mut first = None;
        if let (Some(n), false) = (length.filter(|&n| n <= SMALL_BODY as u64), chunked) {
            match ready_now(&mut body) {
                Ready::Whole(data) => {
                    if data.len() as u64 != n {
                        return Err(length_mismatch());
                    }
                    out.extend_from_slice(&data);
                    write_all(io, &mut [IoSlice::new(&out)]).await?;
                    io.flush().await?;
                    return Ok(keep_open(io, keep_alive, nodelay));
                }
                Ready::First(data) => first = Some(data),
                Ready::Failed(e) => return Err(io::Error::other(e)),
                Ready::NotYet => {}
            }
        }
        // The head goes out with the first piece of the body, in one write. Then every piece the
        // body has ready is gathered into one vectored write (as hyper does), and a body that has
        // nothing ready is never waited for with bytes held back (server-sent events stream).
        let mut sent = 0u64;
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut trailers = None;
        loop {
            let mut end = false;
            let mut ready = 0usize;
            while ready < MAX_GATHER_BYTES && pieces.len() < MAX_GATHER_PIECES {
                let polled = match first.take() {
                    Some(data) => Some(Some(Ok(http_body::Frame::data(data)))),
                    None => {
                        poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                            // Nothing more ready: write what we have (the head at least) first.
                            Poll::Pending if !pieces.is_empty() || !out.is_empty() => {
                                Poll::Ready(None)
                            }
                            Poll::Pending => Poll::Pending,
                            Poll::Ready(f) => Poll::Ready(Some(f)),
                        })
                        .await
                    }
                };
                let Some(frame) = polled else { break };
                let data = match frame {
                    None => {
                        end = true;
                        break;
                    }
                    Some(Ok(f)) => match f.into_data() {
                        Ok(data) => data,
                        // Trailers end the body. Only chunked framing carries them (RFC 9112
                        // §7.1.2); a response framed by its length drops them.
                        Err(f) => {
                            trailers = f.into_trailers().ok();
                            end = true;
                            break;
                        }
                    },
                    // The client gets a short body on a closed connection, never a padded one.
                    Some(Err(e)) => return Err(io::Error::other(e)),
                };
                sent += data.len() as u64;
                if !data.is_empty() {
                    if chunked {
                        pieces.push(crate::h1::chunk_header(data.len()));
                    }
                    ready += data.len();
                    pieces.push(data);
                    if chunked {
                        pieces.push(Bytes::from_static(b"\r\n"));
                    }
                }
                if body.is_end_stream() {
                    end = true;
                    break;
                }
            }
            if length.is_some_and(|n| sent > n || (end && sent < n)) {
                return Err(length_mismatch());
            }
            if end && chunked {
                pieces.push(crate::h1::last_chunk(trailers.as_ref()));
            }
            let mut bufs: Vec<IoSlice<'_>> = Vec::with_capacity(pieces.len() + 1);
            bufs.push(IoSlice::new(&out));
            bufs.extend(pieces.iter().map(|p| IoSlice::new(p)));
            if out.is_empty() {
                // Not the response's first write (that one carries the head): a small piece
                // would otherwise wait for the peer's ACK of the last one, up to its delayed-ACK
                // timer (40 ms on Linux).
                nodelay_once(io, nodelay);
            }
            write_all(io, &mut bufs).await?;
            drop(bufs);
            out.clear();
            pieces.clear();
            if end {
                break;
            }
        }
        io.flush().await?;
        Ok(keep_open(io, keep_alive, nodelay))
    }
}

/// Passes `keep_alive` through, first turning Nagle's algorithm off if the connection stays
/// open: the next response may be written before the peer has acknowledged this one
/// (pipelining), and would then wait for that ACK.
fn keep_open<T: Transport>(io: &T, keep_alive: bool, nodelay: &mut bool) -> bool {
    if keep_alive {
        nodelay_once(io, nodelay);
    }
    keep_alive
}

/// Turns Nagle's algorithm off unless `done` says it is off already (one system call per
/// connection at most).
fn nodelay_once<T: Transport>(io: &T, done: &mut bool) {
    if !*done {
        io.set_nodelay();
        *done = true;
    }
}

/// A body that does not match its declared length would desynchronise the connection: it is
/// ended there, as hyper does, and the client sees a short response.
fn length_mismatch() -> io::Error {
    io::Error::other("response body length differs from Content-Length")
}

/// What a response body has ready without waiting.
enum Ready {
    /// All of it.
    Whole(Bytes),
    /// Its first piece; more is to come.
    First(Bytes),
    Failed(crate::body::BoxError),
    NotYet,
}

/// Polls a body once without waiting (a body that is not ready is waited for by the caller).
fn ready_now(body: &mut Body) -> Ready {
    if body.is_end_stream() {
        return Ready::Whole(Bytes::new());
    }
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut *body).poll_frame(&mut cx) {
        Poll::Ready(None) => Ready::Whole(Bytes::new()),
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if body.is_end_stream() => Ready::Whole(data),
            Ok(data) => Ready::First(data),
            // Trailers: this path is for a body framed by its length, which has no place for
            // them (RFC 9112 §7.1.2: only chunked framing carries trailers).
            Err(_) => Ready::Whole(Bytes::new()),
        },
        Poll::Ready(Some(Err(e))) => Ready::Failed(e),
        Poll::Pending => Ready::NotYet,
    }
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
fn write_all<T: AsyncWrite + Unpin>(
    io: &mut T,
    mut bufs: &mut [IoSlice<'_>],
) -> impl Future<Output = io::Result<()>> {
    async move {
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let n = io.write_vectored(bufs).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        Ok(())
    }
}

/// The `Date` header value (RFC 9110 §6.6.1), formatted once a second per thread.
pub(crate) fn date() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHE: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                *c = (secs, v);
            }
        }
        c.1.clone()
    })
}

/// A stream with bytes already read from it in front, for hyper to read first.
pub(crate) struct Prefixed<T> {
    pre: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(pre: Bytes, inner: T) -> Self {
        Prefixed { pre, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Result<Option<(Request<ReqBody>, bool)>, Handover> {
        parse(&mut BytesMut::from(raw))
    }

    #[test]
    fn a_plain_get_is_ours_and_keeps_the_connection() {
        let (r, keep) = parsed("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri(), "/a?b=1");
        assert_eq!(r.headers()["host"], "x");
        assert!(keep);
    }

    #[test]
    fn connection_fields_that_only_say_close_or_keep_alive_stay_out_of_the_map() {
        let (r, keep) = parsed(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nKeep-Alive: timeout=5\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(!keep);
        assert_eq!(r.headers().len(), 1, "{:?}", r.headers());
        let (r, keep) = parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(keep);
        assert!(r.headers().is_empty(), "{:?}", r.headers());
    }

    #[test]
    fn a_connection_field_that_names_other_fields_is_kept_for_the_proxy_to_act_on() {
        let (r, keep) = parsed(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, x-secret\r\nX-Secret: 1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(!keep);
        assert_eq!(r.headers()["connection"], "close, x-secret");
        assert_eq!(r.headers()["x-secret"], "1");
    }

    #[test]
    fn the_bytes_after_the_head_stay_in_the_buffer() {
        let mut b = BytesMut::from("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next");
        parse(&mut b).unwrap().unwrap();
        assert_eq!(&b[..], b"GET /next");
    }

    #[test]
    fn a_partial_head_waits_and_consumes_nothing() {
        let mut b = BytesMut::from("GET / HTTP/1.1\r\nHost:");
        assert!(parse(&mut b).unwrap().is_none());
        assert_eq!(b.len(), 21);
    }

    #[test]
    fn connection_close_and_http10_keep_alive_rules() {
        // RFC 9112 §9.3.
        let close = parsed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!close.1);
        let old = parsed("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.1);
        let asked = parsed("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(asked.1);
    }

    #[test]
    fn close_wins_over_keep_alive_in_any_order() {
        // RFC 9112 §9.3: a `close` option means the connection closes after this response.
        for raw in [
            "GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n",
            "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            "GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
        ] {
            let (_, keep) = parsed(raw).unwrap().unwrap();
            assert!(!keep, "{raw}");
        }
    }

    #[test]
    fn a_zero_content_length_is_ours() {
        assert!(
            parsed("DELETE /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn bodies_upgrades_expect_and_odd_targets_go_to_hyper() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(matches!(parsed(raw), Err(Handover)), "{raw}");
        }
    }

    #[test]
    fn malformed_heads_go_to_hyper_untouched() {
        let mut b = BytesMut::from("BLAH\r\n\r\n");
        assert!(matches!(parse(&mut b), Err(Handover)));
        assert_eq!(&b[..], b"BLAH\r\n\r\n");
    }

    /// The bytes `write_response` sends for `resp` to an HTTP/1.1 GET, or its error.
    async fn written(resp: Response<Body>) -> io::Result<String> {
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let sent = write_response(&mut ours, resp, Version::HTTP_11, false, true, &mut true).await;
        drop(ours);
        let mut out = String::new();
        theirs.read_to_string(&mut out).await?;
        sent.map(|_| out)
    }

    fn with_length(body: Body, len: &'static str) -> Response<Body> {
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static(len));
        r
    }

    /// A body of `first`, then (once `later` fires) `rest`.
    fn two_pieces(
        first: &'static str,
        rest: &'static str,
    ) -> (Body, tokio::sync::oneshot::Sender<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let frames = futures_util::stream::unfold((0, Some(rx)), move |(n, rx)| async move {
            match n {
                0 => Some((Bytes::from_static(first.as_bytes()), (1, rx))),
                1 => {
                    let _ = rx?.await;
                    Some((Bytes::from_static(rest.as_bytes()), (2, None)))
                }
                _ => None,
            }
        });
        let frames = futures_util::StreamExt::map(frames, |b| {
            Ok::<_, crate::body::BoxError>(http_body::Frame::data(b))
        });
        (Body::stream(http_body_util::StreamBody::new(frames)), tx)
    }

    #[tokio::test]
    async fn a_small_ready_body_follows_the_head_in_the_same_bytes() {
        let out = written(Response::new(Body::full("hello"))).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("content-length: 5\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhello"), "{out}");
    }

    #[tokio::test]
    async fn a_small_body_whose_first_piece_is_ready_is_sent_whole() {
        let (body, later) = two_pieces("hel", "lo");
        let resp = with_length(body, "5");
        let task = tokio::spawn(written(resp));
        later.send(()).unwrap();
        let out = task.await.unwrap().unwrap();
        assert!(out.ends_with("\r\n\r\nhello"), "{out}");
    }

    #[tokio::test]
    async fn a_small_body_shorter_than_its_length_is_an_error() {
        let resp = with_length(Body::full("hell"), "5");
        assert!(written(resp).await.is_err());
    }

    impl Transport for tokio::io::DuplexStream {
        fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn set_nodelay(&self) {}
        const CLOSE_NEEDS_SHUTDOWN: bool = true;
    }

    /// The server's end of a loopback connection, Nagle on as accepted, and the client's.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        assert!(!server.nodelay().unwrap());
        (server, client)
    }

    /// Whether TCP_NODELAY is on after writing `resp` on a fresh connection.
    async fn nodelay_after(resp: Response<Body>, keep_alive: bool) -> bool {
        let (mut server, _client) = tcp_pair().await;
        let mut flag = false;
        write_response(
            &mut server,
            resp,
            Version::HTTP_11,
            false,
            keep_alive,
            &mut flag,
        )
        .await
        .unwrap();
        assert_eq!(flag, server.nodelay().unwrap());
        flag
    }

    #[tokio::test]
    async fn one_write_then_close_leaves_nagle_alone() {
        assert!(!nodelay_after(Response::new(Body::full("hello")), false).await);
    }

    #[tokio::test]
    async fn a_connection_kept_open_turns_nagle_off() {
        assert!(nodelay_after(Response::new(Body::full("hello")), true).await);
    }

    #[tokio::test]
    async fn a_second_write_turns_nagle_off_first() {
        let (mut server, mut client) = tcp_pair().await;
        let (body, later) = two_pieces("hel", "lo");
        let resp = with_length(body, "5");
        let task = tokio::spawn(async move {
            let mut flag = false;
            write_response(&mut server, resp, Version::HTTP_11, false, false, &mut flag)
                .await
                .unwrap();
            (flag, server.nodelay().unwrap())
        });
        // The head and the first piece arrive (the first write) before the rest is ready.
        let mut seen = Vec::new();
        while !seen.ends_with(b"\r\n\r\nhel") {
            let mut chunk = [0u8; 256];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&chunk[..n]);
        }
        later.send(()).unwrap();
        assert_eq!(task.await.unwrap(), (true, true));
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_first() {
        let inner: &[u8] = b" world";
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), inner);
        let mut s = String::new();
        p.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}

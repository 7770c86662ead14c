//! Listeners and connections: accept, TLS handshake, HTTP/1.1 or HTTP/2, timeouts, drain.
//!
//! Each listener runs one accept loop per worker runtime (on Linux each on a socket of its own
//! in a `SO_REUSEPORT` group: see [`Bound`]), and each loop never dies on an error (EMFILE
//! backs off and retries; a per-connection error is ignored), caps open connections with a
//! counter ([`ConnLimit`]), sets `TCP_NODELAY` on TLS connections (a plain one gets it when it needs it:
//! `h1_server::serve`), and spawns one task per connection. The task does the TLS handshake
//! under a deadline, then serves HTTP/1.1 or HTTP/2 (chosen by ALPN, or by the h2c preface on
//! plain listeners) with upgrades enabled.
//!
//! Client timeouts are ours, not hyper's, because hyper's header-read timer also starts while a
//! keep-alive connection is idle, which would make `idle_timeout` and `header_read_timeout` the
//! same number. [`Activity`] tracks, per connection, whether a request is in flight, when the
//! connection went idle, and when the first byte of a new request head arrived; the connection
//! task wakes at the next deadline and closes the connection if it passed. Writes to a client
//! are bounded by `body_timeout` ([`TrackedIo`]): a client that takes nothing for that long is
//! closed. An HTTP/2 connection runs its streams under [`crate::h2_stall::StreamExec`], which
//! resets one stream whose client takes nothing of it while the connection flows.
//!
//! Shutdown: stop accepting, ask every connection to finish gracefully (HTTP/1 closes after the
//! current response, HTTP/2 sends GOAWAY), wait for them up to `shutdown_grace`.
//!
//! This module must not look inside requests: it hands them to `proxy::serve`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::body::ReqBody;
use crate::h2_stall::{NextWatch, SendWatch, StreamExec};
use crate::park::Parked;
use crate::proxy::ConnInfo;
use crate::state::Shared;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Per-connection request activity, for the idle and header-read timeouts.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// ms since `epoch` when the connection last became idle.
    idle_since: AtomicU64,
    /// ms since `epoch` (+1) when the first byte of a request head arrived; 0 = none pending.
    head_started: AtomicU64,
    /// HTTP/2 frames arrive all the time; header-read tracking applies to HTTP/1 only.
    h2: AtomicBool,
    /// The first read (4+ bytes) has been looked at for the h2 preface.
    seen: AtomicBool,
    /// hyper serves the connection, and the watchdog in `run` reads these times. The fast path
    /// keeps its own timers: it skips the clock reads (two per request).
    watched: AtomicBool,
}

impl Activity {
    pub fn new(h2: bool) -> Activity {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            h2: AtomicBool::new(h2),
            seen: AtomicBool::new(h2),
            watched: AtomicBool::new(h2),
        }
    }

    /// hyper takes the connection over from the fast path, with a request head begun.
    pub fn watch(&self) {
        let now = self.now_ms();
        self.idle_since.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            self.head_started.store(now + 1, Ordering::Relaxed);
        }
        // The protocol is known (HTTP/1): no later read is taken for an h2 preface.
        self.seen.store(true, Ordering::Relaxed);
        self.watched.store(true, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn on_read(&self, bytes: &[u8]) {
        if self.h2.load(Ordering::Relaxed) || !self.watched.load(Ordering::Relaxed) {
            return;
        }
        // The first 4+ bytes tell an h2c prior-knowledge client from HTTP/1 (a slowloris that
        // sends "P" alone must not be mistaken for one).
        if bytes.len() >= 4 && !self.seen.swap(true, Ordering::Relaxed) {
            let n = bytes.len().min(H2_PREFACE.len());
            if bytes[..n] == H2_PREFACE[..n] {
                self.h2.store(true, Ordering::Relaxed);
                return;
            }
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// What the connection task should do now.
    fn check(&self, idle: Duration, header_read: Duration) -> Check {
        let now = self.now_ms();
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Check::WaitFor(idle);
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 {
            let deadline = head - 1 + header_read.as_millis() as u64;
            return if now >= deadline {
                Check::HeaderTimeout
            } else {
                Check::WaitFor(Duration::from_millis(deadline - now))
            };
        }
        let deadline = self.idle_since.load(Ordering::Relaxed) + idle.as_millis() as u64;
        if now >= deadline {
            Check::Idle
        } else {
            Check::WaitFor(Duration::from_millis(deadline - now))
        }
    }
}

enum Check {
    WaitFor(Duration),
    Idle,
    HeaderTimeout,
}

/// Held for the life of one request (until its response body ends or is dropped).
pub struct ActivityGuard(Arc<ConnInfo>);

impl ActivityGuard {
    pub fn begin(conn: &Arc<ConnInfo>) -> ActivityGuard {
        let a = &conn.activity;
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.head_started.store(0, Ordering::Relaxed);
        ActivityGuard(conn.clone())
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let a = &self.0.activity;
        if a.watched.load(Ordering::Relaxed) {
            a.idle_since.store(a.now_ms(), Ordering::Relaxed);
        }
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that reports reads to its connection's [`Activity`], and gives up on a client that
/// takes nothing of what is written for `body_timeout` (nginx's `send_timeout`): a write that
/// goes out at once never touches the timer.
pub struct TrackedIo<T> {
    inner: T,
    conn: Arc<ConnInfo>,
    send: crate::body::Stall,
}

impl<T> TrackedIo<T> {
    fn bounded<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.send.progress();
            return r;
        }
        if self.send.poll_expired(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took nothing written for {:?} (body_timeout)",
                self.send.limit
            ),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.conn.activity.on_read(new);
            }
        }
        r
    }
}

impl<T: crate::h1_server::Transport> crate::h1_server::Transport for TrackedIo<T> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_readable(cx)
    }
    fn set_nodelay(&self) {
        self.inner.set_nodelay();
    }
    const CLOSE_NEEDS_SHUTDOWN: bool = T::CLOSE_NEEDS_SHUTDOWN;
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bounded(cx, r)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.bounded(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bounded(cx, r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bounded(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Plain HTTP or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    Http,
    Https,
}

impl ListenerKind {
    pub fn label(self) -> &'static str {
        match self {
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
        }
    }
}

/// Everything a connection task needs, shared by all listeners.
pub struct ServerCtx {
    pub shared: Arc<Shared>,
    pub tls: Arc<rustls::ServerConfig>,
    pub tracker: TaskTracker,
    pub shutdown: watch::Receiver<bool>,
    pub limit: Arc<ConnLimit>,
}

/// `server.max_connections`: the connections open at once, across all workers.
///
/// Ours rather than a tokio `Semaphore`, whose every release takes its waiter list's lock: a
/// connection taken and given back is two atomic operations here, and only an accept loop
/// that found the limit reached waits (callgrind, scenario 3 of bench/README.md). The limit
/// changes on reload ([`ConnLimit::set_max`]), as nginx's `worker_connections` does.
#[derive(Debug)]
pub struct ConnLimit {
    open: AtomicUsize,
    max: AtomicUsize,
    freed: tokio::sync::Notify,
}

/// One open connection's place under the limit, given back when dropped.
#[derive(Debug)]
pub struct ConnPermit(Arc<ConnLimit>);

impl ConnLimit {
    pub fn new(max: usize) -> ConnLimit {
        ConnLimit {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// A new limit, from a reload. A lower one closes nothing: connections over it stay open,
    /// and new ones wait until the count is under it. Waiters are woken either way and look
    /// again, so none sleeps through a raised limit, and none misses a release that compared
    /// against the old one (every access to the two counts is `SeqCst`: one order for all).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    /// A place, at once when one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnPermit> {
        // Compare-and-swap rather than add-then-undo: a count that overshot for a moment could
        // make a waiter see the limit reached after the release that was meant to wake it.
        let max = self.max.load(Ordering::SeqCst);
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnPermit(self.clone()))
    }

    /// A place, waiting for a connection to close while the limit is reached.
    pub async fn acquire(self: &Arc<Self>) -> ConnPermit {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the look: a release after it wakes this waiter.
            freed.as_mut().enable();
            if let Some(p) = self.try_acquire() {
                return p;
            }
            freed.await;
        }
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        // Only the release that takes the count below the limit can unblock a waiter.
        let was = self.0.open.fetch_sub(1, Ordering::SeqCst);
        if was == self.0.max.load(Ordering::SeqCst) {
            self.0.freed.notify_waiters();
        }
    }
}

/// Binds a listener with a generous backlog and `SO_REUSEADDR` (a restart must not wait out
/// TIME_WAIT). IPv6 addresses are IPv6-only, as in nginx, so `0.0.0.0:80` and `[::]:80` can both
/// be listed (a dual-stack `[::]:80` would take the IPv4 port too and make the pair conflict).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind_with(addr, false)
}

/// As [`bind`]; `reuse_port` puts the socket in a `SO_REUSEPORT` group, each member with a
/// queue of its own.
fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A bound listening address, with one socket per worker that will accept from it.
///
/// With several workers (on Linux), each has a socket of its own in a `SO_REUSEPORT` group, and
/// the kernel spreads new connections over them by address hash. One shared socket woke every
/// worker for each new connection, and the first to wake accepted the whole burst: wrk's 64
/// connections all landed on one of two workers, which then did all the work (bench/README.md,
/// scenario 1). Envoy, HAProxy and nginx's `reuseport` do the same.
///
/// The sockets are made when binding, so that a failure (out of descriptors) fails the start or
/// the reload whole instead of leaving a listener that some workers do not serve.
#[derive(Debug)]
pub struct Bound {
    pub addr: SocketAddr,
    copies: Vec<std::net::TcpListener>,
}

impl Bound {
    pub fn new(addr: SocketAddr, workers: usize) -> io::Result<Bound> {
        let workers = workers.max(1);
        if workers == 1 || !cfg!(target_os = "linux") {
            let first = bind(addr)?;
            let addr = first.local_addr().unwrap_or(addr);
            let mut copies = Vec::with_capacity(workers);
            for _ in 1..workers {
                copies.push(first.try_clone()?);
            }
            copies.push(first);
            return Ok(Bound { addr, copies });
        }
        let mut copies = Vec::with_capacity(workers);
        let addr = if addr.port() == 0 {
            // The kernel picks a port that no socket holds, group or not (Linux 4.6 on), and
            // the group forms on it. A probe here would free its port before the group bound
            // it, and a parallel bind could take it in between (a flaky "address in use").
            let first = bind_with(addr, true)?;
            let addr = first.local_addr()?;
            copies.push(first);
            addr
        } else {
            // A socket without SO_REUSEPORT first: an address that another process holds (even
            // with SO_REUSEPORT, say a second Gatehouse) fails here with "address in use", where
            // joining its group would silently split the traffic.
            drop(bind(addr)?);
            addr
        };
        while copies.len() < workers {
            copies.push(bind_with(addr, true)?);
        }
        Ok(Bound { addr, copies })
    }

    /// Starts one accept loop per copy: on the given worker runtimes, or on the current
    /// runtime when there are none.
    pub fn serve(
        self,
        kind: ListenerKind,
        ctx: &Arc<ServerCtx>,
        stop: &watch::Receiver<bool>,
        workers: &[tokio::runtime::Handle],
    ) {
        for (i, std) in self.copies.into_iter().enumerate() {
            let (ctx, stop, addr) = (ctx.clone(), stop.clone(), self.addr);
            // Registering with the reactor must happen on the runtime that will poll it.
            let task = async move {
                match TcpListener::from_std(std) {
                    Ok(l) => accept_loop(l, kind, ctx, stop).await,
                    Err(e) => tracing::error!(%addr, error = %e, "cannot register the listener"),
                }
            };
            match workers.get(i) {
                Some(h) => drop(h.spawn(task)),
                None => drop(tokio::spawn(task)),
            }
        }
    }
}

/// Starts `n` worker threads, each running its own single-threaded runtime, and returns their
/// handles: nginx's model. Every worker accepts from the same listening sockets and serves its
/// connections start to finish on its own thread, so a request never pays for work stealing or
/// cross-thread wake-ups (measured against tokio's multi-thread scheduler: bench/README.md).
/// The threads live as long as the process.
pub fn worker_runtimes(n: usize) -> io::Result<Vec<tokio::runtime::Handle>> {
    (0..n)
        .map(|i| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            std::thread::Builder::new()
                .name(format!("gatehouse-worker-{i}"))
                .spawn(move || {
                    crate::worker::set(i);
                    rt.block_on(std::future::pending::<()>())
                })?;
            Ok(handle)
        })
        .collect()
}

/// Accepts until `stop` fires (this listener removed by a reload) or the server shuts down.
///
/// The accepting runs as a task of its own, which this one aborts when told to stop: a loop
/// that looked at the stop signals before each accept paid for it per connection (two watch
/// waiters re-polled, each behind a lock shared by every worker: 440 instructions of a
/// new connection's 26k, callgrind, scenario 3 of bench/README.md).
pub async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    ctx: Arc<ServerCtx>,
    mut stop: watch::Receiver<bool>,
) {
    let mut shutdown = ctx.shutdown.clone();
    // A reload that removes this listener waits for every `stop` receiver to go
    // (`stop.closed()` in gateway.rs) and then expects the address to refuse connections. This
    // clone goes with the accepting task's future, after its listener: so the socket is closed
    // first, whenever the runtime gets to dropping the aborted task.
    let held_until_closed = stop.clone();
    let mut accepting = tokio::spawn(accept(listener, kind, ctx, held_until_closed));
    tokio::select! {
        _ = shutdown.changed() => {}
        _ = stop.changed() => {}
        _ = &mut accepting => return,
    }
    accepting.abort();
}

/// The accept loop proper: it never returns, and ends when [`accept_loop`] aborts it.
async fn accept(
    listener: TcpListener,
    kind: ListenerKind,
    ctx: Arc<ServerCtx>,
    _held_until_closed: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    // A local (parameters are dropped after locals): the listener goes before the receiver.
    let listener = listener;
    // Idle plain-HTTP/1.1 connections wait here, on this loop's runtime, as bare sockets.
    let lot = (kind == ListenerKind::Http).then(|| crate::park::Lot::start(&ctx));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                handle_accept_error(e).await;
                continue;
            }
        };
        // The place is taken after the accept, not before: a loop that held one while it
        // waited for a connection kept it from the other workers' loops, and at a limit below
        // the number of workers a connection that the kernel gave another worker's socket was
        // never served. Over the limit, this one connection waits here, unserved, and the rest
        // wait in the kernel's queue, as they did. (`try_acquire` first: the common case builds
        // no waiting future.)
        let permit = match ctx.limit.try_acquire() {
            Some(p) => p,
            None => ctx.limit.acquire().await,
        };
        if kind == ListenerKind::Https {
            // A plain connection's is set when it needs it (h1_server::serve).
            let _ = tcp.set_nodelay(true);
        }
        let ctx2 = ctx.clone();
        let lot = lot.clone();
        let span = tracing::debug_span!("conn", %peer, listener = ?local);
        ctx.tracker
            .spawn(serve_tcp(tcp, peer, local, kind, ctx2, permit, lot).instrument(span));
    }
}

/// Per-connection errors (the peer gave up) are ignored; anything else (EMFILE, ENOBUFS) is
/// logged and the loop pauses a moment so it does not spin.
async fn handle_accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 100ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Written as a function returning an `async move` block, not as an `async fn`, which would
/// keep its arguments twice in its state (see proxy::serve): this state is the connection
/// task's, built and moved five times on its way into the task's cell (spawn, tracing,
/// tracker), and at 368 bytes it made that cell 640 bytes, which mimalloc serves 128-aligned
/// (tokio's alignment for it) only by over-allocating on its slow path; at 248 the cell is 512,
/// a power of two, which it serves from its fast path (scenario 3 of bench/README.md).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice: see proxy::serve"
)]
fn serve_tcp(
    mut tcp: TcpStream,
    peer: SocketAddr,
    listen: Option<SocketAddr>,
    kind: ListenerKind,
    ctx: Arc<ServerCtx>,
    permit: ConnPermit,
    lot: Option<crate::park::Lot>,
) -> impl Future<Output = ()> + Send {
    async move {
        crate::metrics::connection_accepted(kind.label());
        // The listener's address, unless it is a wildcard (one system call saved per
        // connection).
        let local = match listen {
            Some(a) if !a.ip().is_unspecified() => a,
            _ => tcp.local_addr().unwrap_or(peer),
        };
        let limits = Limits::read(&ctx, lot.is_some());
        match kind {
            ListenerKind::Http => {
                // HTTP/2 with prior knowledge starts with the connection preface (RFC 9113
                // §3.4). Boxed, like the branches below: the connection task keeps only what it
                // needs for its whole life (idle memory, scenario 5 of bench/README.md).
                let Some((proto, read)) = Box::pin(first_read(&mut tcp, limits.header_read)).await
                else {
                    return;
                };
                let h2 = proto == Proto::H2;
                let conn = conn_info(peer, local, Tls::PLAIN, h2);
                // Boxed inside serve_http, as the TLS branch is here: each branch allocates only
                // its own state (the TLS one is several KiB).
                let idle = serve_http(tcp, read, h2, conn.clone(), &ctx, limits).await;
                park(idle, conn, permit, lot.as_ref());
            }
            ListenerKind::Https => {
                // Boxed whole, handshake and all: the task is built and moved five times on its
                // way to the runtime (serve_tcp, tracing, tracker, task cell), at its full size,
                // and this branch's state made that 1.2 KiB for every connection, plain ones
                // included.
                Box::pin(serve_tls(tcp, peer, local, ctx, limits)).await;
                drop(permit);
            }
        }
    }
}

/// A TLS connection: the handshake under its deadline, then HTTP/1.1 or HTTP/2 by ALPN.
async fn serve_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: Arc<ServerCtx>,
    limits: Limits,
) {
    // The handshake's result lives in this block only: a local that lived on across the await
    // below would keep its (several KiB) slot in the task for the connection's whole life,
    // although it was moved out.
    let serve = {
        let accepted = match Box::pin(crate::tls::accept(
            tcp,
            ctx.tls.clone(),
            &*ctx.shared,
            limits.handshake,
        ))
        .await
        {
            Ok(a) => {
                crate::metrics::tls_handshake(Ok(if a.h2 { "h2" } else { "http/1.1" }));
                a
            }
            Err(e) => {
                crate::metrics::tls_handshake(Err(e.reason()));
                tracing::debug!(%peer, reason = e.reason(), error = %e, "TLS handshake failed");
                return;
            }
        };
        let tls = Tls {
            on: true,
            sni: accepted.sni.map(String::into_boxed_str),
        };
        let conn = conn_info(peer, local, tls, accepted.h2);
        let read = BytesMut::new();
        serve_http(accepted.stream, read, accepted.h2, conn, &ctx, limits)
    };
    serve.await;
}

/// Serves a parked connection again: its client has sent the next request (or closed).
pub(crate) async fn resume(parked: Parked, ctx: Arc<ServerCtx>, lot: Option<crate::park::Lot>) {
    let Parked { tcp, permit, gauge } = parked;
    let (Ok(peer), Ok(local)) = (tcp.peer_addr(), tcp.local_addr()) else {
        return; // reset while parked
    };
    let conn = conn_info(peer, local, Tls::PLAIN, false);
    if let Some(g) = gauge {
        let _ = conn.gauge.set(g);
    }
    let limits = Limits::read(&ctx, lot.is_some());
    let idle = serve_http(tcp, BytesMut::new(), false, conn.clone(), &ctx, limits)
        .instrument(tracing::debug_span!("conn", %peer, resumed = true))
        .await;
    park(idle, conn, permit, lot.as_ref());
}

/// Parks a connection that `serve_http` left idle (`idle` holds its socket and deadline): it
/// keeps its socket, its permit and its gauge; the rest of its `ConnInfo` is dropped (rebuilt on
/// resume). Were that still shared (it never is between requests), the connection is closed
/// instead, as an idle keep-alive connection may be. Anything else just closes.
fn park(
    idle: Idle<TcpStream>,
    conn: Arc<ConnInfo>,
    permit: ConnPermit,
    lot: Option<&crate::park::Lot>,
) {
    let (Some((tcp, until)), Some(lot)) = (idle, lot) else {
        return;
    };
    if let Some(info) = Arc::into_inner(conn) {
        let gauge = info.gauge.into_inner();
        lot.park(Parked { tcp, permit, gauge }, until);
    }
}

/// What the request path knows about a new connection.
fn conn_info(peer: SocketAddr, local: SocketAddr, tls: Tls, h2: bool) -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        peer,
        local,
        tls: tls.on,
        sni: tls.sni,
        peer_text: crate::headers::IpText::new(peer.ip()),
        activity: Activity::new(h2),
        gauge: Default::default(),
    })
}

/// A connection's settings, read once from the snapshot when it is accepted (or resumed).
#[derive(Clone, Copy)]
struct Limits {
    idle: Duration,
    header_read: Duration,
    /// How long a client may take nothing of what is written (`body_timeout`).
    send: Duration,
    handshake: Duration,
    max_header: u64,
    /// An idle HTTP/1.1 connection may be parked (plain TCP with a lot to park in).
    park: bool,
}

impl Limits {
    fn read(ctx: &ServerCtx, park: bool) -> Limits {
        let snap = ctx.shared.load();
        let server = &snap.config.server;
        Limits {
            idle: server.timeouts.idle,
            header_read: server.header_read_timeout,
            send: server.timeouts.body,
            handshake: server.tls_handshake_timeout,
            max_header: server.limits.max_request_header_bytes,
            park,
        }
    }
}

/// Whether the connection is TLS, and the server name it asked for.
struct Tls {
    on: bool,
    sni: Option<Box<str>>,
}

impl Tls {
    const PLAIN: Tls = Tls {
        on: false,
        sni: None,
    };
}

/// How serving a connection ended: its stream, left idle long enough to be parked, with its idle
/// deadline; or nothing (closed, or not to be parked).
type Idle<T> = Option<(T, tokio::time::Instant)>;

/// Serves HTTP/1.1 or HTTP/2 on an established stream (plain TCP or TLS alike), `read` being
/// bytes read from it already. Returns the stream when it has been idle long enough to be
/// parked, with its idle deadline.
///
/// Each protocol's state is an allocation of its own: one future for both would be the size of
/// the larger, the HTTP/1.1 fast path's (3 KiB over TLS), for every HTTP/2 connection too, held
/// for its whole life (massif, idle TLS connections in bench/README.md). `T: Sync` because the
/// HTTP/1.1 path holds a reference to its stream across awaits and the boxed future is `Send`.
fn serve_http<'a, T>(
    stream: T,
    read: BytesMut,
    h2: bool,
    conn: Arc<ConnInfo>,
    ctx: &'a ServerCtx,
    limits: Limits,
) -> Pin<Box<dyn Future<Output = Idle<T>> + Send + 'a>>
where
    T: AsyncRead + AsyncWrite + crate::h1_server::Transport + Unpin + Send + Sync + 'static,
{
    let tracked = TrackedIo {
        inner: stream,
        conn: conn.clone(),
        send: crate::body::Stall::new(limits.send),
    };
    if h2 {
        let served = serve_h2(tracked, read, conn, ctx, limits);
        Box::pin(async move {
            served.await;
            None
        })
    } else {
        Box::pin(serve_h1(tracked, read, conn, ctx, limits))
    }
}

/// HTTP/2: hyper's connection, boxed, is built before the future, which holds only it: built
/// inside, the stream's slot (it is moved into hyper's connection) would stay in the future.
fn serve_h2<'a, T>(
    tracked: TrackedIo<T>,
    read: BytesMut,
    conn: Arc<ConnInfo>,
    ctx: &'a ServerCtx,
    limits: Limits,
) -> impl Future<Output = ()> + Send + 'a
where
    T: AsyncRead + AsyncWrite + crate::h1_server::Transport + Unpin + Send + 'static,
{
    crate::h1_server::Transport::set_nodelay(&tracked);
    let io = crate::h1_server::Prefixed::new(read.freeze(), tracked);
    let exec = StreamExec::default();
    let streams = Some((exec.next.clone(), limits.send));
    let service = service(conn.clone(), ctx.shared.clone(), streams);
    let http =
        Box::pin(h2_builder(exec, limits.max_header).serve_connection(TokioIo::new(io), service));
    async move { run(http, &conn, ctx, limits.idle, limits.header_read).await }
}

/// HTTP/1.1: our own path first; hyper from the first request it does not take.
async fn serve_h1<T>(
    tracked: TrackedIo<T>,
    read: BytesMut,
    conn: Arc<ConnInfo>,
    ctx: &ServerCtx,
    limits: Limits,
) -> Idle<T>
where
    T: AsyncRead + AsyncWrite + crate::h1_server::Transport + Unpin + Send + 'static,
{
    let Limits {
        idle,
        header_read,
        max_header,
        park,
        ..
    } = limits;
    // hyper's connection state is boxed, as the fast path's busy state is: what this function
    // holds while an HTTP/1.1 connection waits for its next request is all an idle connection
    // costs (scenario 5 of bench/README.md).
    // (The hyper connection is built inside a block: a local that lived on across the await,
    // although moved out, would keep its slot in this future.)
    let fast = crate::h1_server::Limits {
        idle,
        header_read,
        max_header: max_header.try_into().unwrap_or(usize::MAX),
        park,
    };
    let shutdown = ctx.shutdown.clone();
    let io = match crate::h1_server::serve(tracked, read, &conn, &ctx.shared, shutdown, fast).await
    {
        crate::h1_server::Next::Closed => return None,
        crate::h1_server::Next::Park { io, until } => return Some((io.inner, until)),
        crate::h1_server::Next::Hyper(io) => {
            conn.activity.watch();
            io
        }
    };
    let served = {
        let http = h1_builder(max_header)
            .serve_connection(
                TokioIo::new(io),
                service(conn.clone(), ctx.shared.clone(), None),
            )
            .with_upgrades();
        Box::pin(run(Box::pin(http), &conn, ctx, idle, header_read))
    };
    served.await;
    None
}

/// The service hyper calls: our one request handler, with this connection's details.
///
/// On HTTP/2, `streams` is the connection's slot for each stream's watch and the server's
/// `body_timeout`: each response body then tells its stream's task whether the client is taking
/// it (`h2_stall`), with the route's `body_timeout` when it comes from one.
fn service(
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    streams: Option<(NextWatch, Duration)>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = http::Response<crate::body::Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<crate::body::Body>, std::convert::Infallible>>
             + Send,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        let watch = streams.as_ref().map(|(next, limit)| {
            let watch = SendWatch::new(*limit);
            // hyper hands this stream's task to the executor next, which takes the watch.
            *crate::worker::lock(next) = Some(watch.clone());
            watch
        });
        let (conn, shared) = (conn.clone(), shared.clone());
        async move {
            let mut resp = crate::proxy::serve(req.map(ReqBody::Hyper), &conn, &shared).await?;
            if let Some(w) = watch {
                resp.body_mut().watch_send(w);
            }
            Ok(resp)
        }
    })
}

/// The HTTP version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// Reads a connection's first bytes and tells HTTP/2 prior knowledge (RFC 9113 §3.4) from
/// HTTP/1 by them. The bytes are the start of the first request: they go on to whichever
/// protocol serves it (reading rather than peeking saves a system call per connection). A
/// client that sends nothing is dropped after `deadline` (the header-read timeout).
async fn first_read(tcp: &mut TcpStream, deadline: Duration) -> Option<(Proto, BytesMut)> {
    let look = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(1024);
            if tcp.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] {
                return Some((Proto::H1, buf));
            }
            if n == H2_PREFACE.len() {
                return Some((Proto::H2, buf));
            }
            // Part of the preface so far: read on.
        }
    };
    tokio::time::timeout(deadline, look).await.ok().flatten()
}

fn h1_builder(max_header: u64) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    // Headers are capped on their own; the read buffer stays large so bodies move in big reads.
    b.max_header_size(max_header as usize).keep_alive(true);
    b
}

fn h2_builder(
    exec: StreamExec,
    max_header: u64,
) -> hyper::server::conn::http2::Builder<StreamExec> {
    let mut b = hyper::server::conn::http2::Builder::new(exec);
    b.max_header_list_size(max_header.min(u32::MAX as u64) as u32)
        .max_concurrent_streams(250)
        .max_pending_accept_reset_streams(100)
        .max_local_error_reset_streams(1024);
    b
}

/// An HTTP connection that can be asked to finish gracefully.
trait Graceful: std::future::Future<Output = hyper::Result<()>> {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> Graceful for hyper::server::conn::http2::Connection<I, S, StreamExec>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    StreamExec: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives one connection: serves it, applies the idle and header-read timeouts, and finishes it
/// gracefully when the server shuts down.
async fn run<C: Graceful>(
    mut http: Pin<Box<C>>,
    conn: &ConnInfo,
    ctx: &ServerCtx,
    idle: Duration,
    header_read: Duration,
) {
    let mut shutdown = ctx.shutdown.clone();
    let mut closing = *shutdown.borrow();
    if closing {
        http.as_mut().graceful();
    }
    // One shutdown future for the connection's life: making a new one per loop turn costs a
    // waiter registration each time.
    let shutdown_signal = async move {
        let _ = shutdown.changed().await;
    };
    tokio::pin!(shutdown_signal);
    let timer = tokio::time::sleep(header_read.min(idle));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            r = http.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut shutdown_signal, if !closing => {
                closing = true;
                http.as_mut().graceful();
            }
            _ = &mut timer => {
                match conn.activity.check(idle, header_read) {
                    Check::WaitFor(d) => timer.as_mut().reset(tokio::time::Instant::now() + d),
                    Check::Idle => {
                        tracing::debug!(peer = %conn.peer, "closing idle keep-alive connection");
                        if closing {
                            return;
                        }
                        closing = true;
                        http.as_mut().graceful();
                        timer.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                    Check::HeaderTimeout => {
                        tracing::debug!(peer = %conn.peer, timeout_ms = header_read.as_millis() as u64, "request headers not received in time; closing");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::net::TcpStream as StdStream;

    #[test]
    fn the_limit_hands_out_its_places_and_no_more() {
        let limit = Arc::new(ConnLimit::new(2));
        let a = limit.try_acquire().expect("first place");
        let _b = limit.try_acquire().expect("second place");
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert!(limit.try_acquire().is_some());
    }

    /// A limit of one, its place held, and a task waiting for a place.
    async fn full_with_a_waiter() -> (
        Arc<ConnLimit>,
        ConnPermit,
        tokio::task::JoinHandle<ConnPermit>,
    ) {
        let limit = Arc::new(ConnLimit::new(1));
        let held = limit.try_acquire().expect("the one place");
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await }
        });
        // The waiter is registered (or has looked and found none) before the release: let it
        // run until it waits.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        (limit, held, waiting)
    }

    #[tokio::test]
    async fn a_raised_limit_wakes_a_waiter() {
        let (limit, _held, waiting) = full_with_a_waiter().await;
        limit.set_max(2);
        waiting.await.expect("waiter");
    }

    #[test]
    fn a_lowered_limit_keeps_its_connections_and_gives_a_place_only_under_it() {
        let limit = Arc::new(ConnLimit::new(3));
        let a = limit.try_acquire().expect("first place");
        let b = limit.try_acquire().expect("second place");
        limit.set_max(1);
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert!(limit.try_acquire().is_none(), "one open, limit one");
        drop(b);
        assert!(limit.try_acquire().is_some());
    }

    #[tokio::test]
    async fn a_waiter_gets_the_place_a_closed_connection_gives_back() {
        let (limit, held, waiting) = full_with_a_waiter().await;
        drop(held);
        let got = waiting.await.expect("waiter");
        assert!(limit.try_acquire().is_none(), "the waiter holds the place");
        drop(got);
        assert!(limit.try_acquire().is_some());
    }

    /// How many connections each of `bound`'s sockets has queued (accepted until it would block).
    fn queued(bound: &Bound) -> Vec<usize> {
        bound
            .copies
            .iter()
            .map(|l| std::iter::from_fn(|| l.accept().ok()).count())
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn each_worker_gets_a_share_of_new_connections() {
        let bound = Bound::new("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let clients: Vec<StdStream> = (0..64)
            .map(|_| StdStream::connect(bound.addr).unwrap())
            .collect();
        // A connection is queued once the handshake completes, before `connect` returns.
        let counts = queued(&bound);
        assert_eq!(counts.iter().sum::<usize>(), clients.len(), "{counts:?}");
        // By address hash: every split is possible, one socket taking all 64 is 2^-63.
        assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    }

    #[test]
    fn one_worker_has_one_socket() {
        let bound = Bound::new("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let _client = StdStream::connect(bound.addr).unwrap();
        assert_eq!(queued(&bound), [1]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_address_another_socket_group_holds_is_refused() {
        // Another process with SO_REUSEPORT on the port (a second Gatehouse): joining its
        // group would split the traffic without a word.
        let other = bind_with("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = other.local_addr().unwrap();
        let err = Bound::new(addr, 2).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
    }
}

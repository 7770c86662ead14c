//! Body types on both sides of the proxy.
//!
//! [`Body`] is every response we send: a synthetic one (error, redirect, `respond`), or an
//! upstream's body streamed through untouched. It counts the bytes it sends and calls a
//! completion hook exactly once, when the last byte is sent or the body is dropped early: that
//! hook writes the access log line, records metrics, and marks the connection idle.
//!
//! [`ReqBody`] is every request body we receive: hyper's, or none at all for the requests our
//! own HTTP/1.1 fast path (`h1_server.rs`) reads, which never have one.
//!
//! [`UpstreamBody`] is every request body we send upstream: the client's body streamed with a
//! size limit (`max_body`) and a signal when it is complete, which starts the response timeout.
//!
//! Both directions bound the wait for a body's next bytes (`body_timeout`, [`Stall`]): a client
//! that stops sending its body mid-way, or a backend that stops mid-response, is given up on
//! rather than held forever. On HTTP/2 a [`Body`] also tells its stream's task when what it
//! handed over waits on the client ([`crate::h2_stall`]), and hands data over in pieces of one
//! frame ([`SEND_PIECE`]) so that each piece the client takes shows.
//!
//! An enum rather than a boxed trait object, so the common cases cost no allocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::{Body as HttpBody, Incoming};
use tokio::sync::oneshot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a response body ended.
#[derive(Debug, Clone)]
pub struct BodyOutcome {
    pub bytes: u64,
    /// False when the client went away or the upstream body failed mid-way.
    pub complete: bool,
    /// The body's own error, when it failed (a backend that broke off its body), as opposed to
    /// a client that went away.
    pub failure: Option<String>,
}

/// Called once when a response body ends.
pub type Completion = Box<dyn FnOnce(BodyOutcome) + Send + Sync>;

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    Pooled(crate::pool::PooledBody),
    Stream(Pin<Box<dyn HttpBody<Data = Bytes, Error = BoxError> + Send>>),
}

/// What the completion hook records about the upstream that answered.
#[derive(Debug)]
pub struct UpstreamUsed {
    /// The backend, counted in flight until the response ends; its label is the log's.
    pub active: crate::upstream::InFlight,
    /// Bytes of request body sent (only when there was a body).
    pub stats: Option<Arc<RequestBodyStats>>,
}

/// A response body.
pub struct Body {
    kind: Kind,
    sent: u64,
    /// An upstream's body: how long it may go without sending.
    stall: Option<Stall>,
    done: Option<Completion>,
    /// Set by the upstream paths; taken by the completion hook.
    pub used: Option<UpstreamUsed>,
    /// HTTP/2 only: tells the stream's task when a frame handed over is waiting on the client
    /// ([`crate::h2_stall`]).
    send_watch: Option<Arc<crate::h2_stall::SendWatch>>,
    /// HTTP/2 only: the rest of a data frame handed over in pieces (see [`SEND_PIECE`]).
    rest: Option<Bytes>,
}

/// The largest piece of data handed to an HTTP/2 stream at once: h2's default frame size, so
/// the frames on the wire are the same. h2 holds a piece it cannot send until the client's
/// window has room for all of it, and meanwhile asks for nothing: a smaller piece means the
/// body is asked again each time the client has taken this much, which is the progress
/// [`crate::h2_stall`] watches for. (A backend's reads can be a megabyte.)
pub const SEND_PIECE: usize = 16 << 10;

impl Body {
    pub fn empty() -> Body {
        Body::from_kind(Kind::Empty)
    }

    pub fn full(b: impl Into<Bytes>) -> Body {
        let b = b.into();
        if b.is_empty() {
            Body::empty()
        } else {
            Body::from_kind(Kind::Full(Some(b)))
        }
    }

    pub fn incoming(i: Incoming) -> Body {
        Body::from_kind(Kind::Incoming(i))
    }

    /// An upstream response body, from either upstream path, with what the completion hook
    /// records about the upstream, and how long it may go without a byte (`body_timeout`).
    pub fn upstream(u: crate::proxy::UpResp, used: UpstreamUsed, body_timeout: Duration) -> Body {
        let mut b = match u {
            crate::proxy::UpResp::Legacy(i) => Body::incoming(i),
            crate::proxy::UpResp::Pooled(p) => Body::from_kind(Kind::Pooled(p)),
        };
        b.used = Some(used);
        b.stall = Some(Stall::new(body_timeout));
        b
    }

    pub fn stream(s: impl HttpBody<Data = Bytes, Error = BoxError> + Send + 'static) -> Body {
        Body::from_kind(Kind::Stream(Box::pin(s)))
    }

    fn from_kind(kind: Kind) -> Body {
        Body {
            kind,
            sent: 0,
            stall: None,
            done: None,
            used: None,
            send_watch: None,
            rest: None,
        }
    }

    /// Reports this body's progress to its HTTP/2 stream's task, which resets the stream when
    /// the client takes nothing for `body_timeout`: the route's, for an upstream's body.
    pub fn watch_send(&mut self, watch: Arc<crate::h2_stall::SendWatch>) {
        if let Some(stall) = &self.stall {
            watch.set_limit(stall.limit);
        }
        self.send_watch = Some(watch);
    }

    /// Sets the hook called when the body ends (replacing any earlier one).
    pub fn on_complete(&mut self, f: Completion) {
        self.done = Some(f);
    }

    fn finish(&mut self, complete: bool, failure: Option<String>) {
        if let Some(f) = self.done.take() {
            f(BodyOutcome {
                bytes: self.sent,
                complete,
                failure,
            });
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let complete = self.is_end_stream();
        self.finish(complete, None);
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(w) = &this.send_watch {
            w.polled();
        }
        let mut polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match this.rest.take() {
            Some(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
            None => match &mut this.kind {
                Kind::Empty => Poll::Ready(None),
                Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
                Kind::Incoming(i) => Pin::new(i).poll_frame(cx).map_err(|e| e.into()),
                Kind::Pooled(p) => Pin::new(p).poll_frame(cx).map_err(|e| e.into()),
                Kind::Stream(s) => s.as_mut().poll_frame(cx),
            },
        };
        if let Some(stall) = &mut this.stall {
            if polled.is_pending() {
                if stall.poll_expired(cx).is_ready() {
                    // Dropping the upstream's body closes its connection (it is mid-message).
                    this.kind = Kind::Empty;
                    polled = Poll::Ready(Some(Err(Box::new(Stalled {
                        who: "the backend",
                        limit: stall.limit,
                    }))));
                }
            } else {
                stall.progress();
            }
        }
        if let (Some(w), Poll::Ready(Some(Ok(frame)))) = (&this.send_watch, &mut polled) {
            if let Some(d) = frame.data_mut() {
                if d.len() > SEND_PIECE {
                    this.rest = Some(d.split_off(SEND_PIECE));
                }
                // An empty frame needs no flow-control window, so never waits on one.
                if !d.is_empty() {
                    w.handed();
                }
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true, None);
                }
            }
            Poll::Ready(None) => this.finish(true, None),
            Poll::Ready(Some(Err(e))) => {
                let failure = crate::proxy::error_chain(e.as_ref());
                this.finish(false, Some(failure));
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if self.rest.is_some() {
            return false;
        }
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Incoming(i) => i.is_end_stream(),
            Kind::Pooled(p) => p.is_end_stream(),
            Kind::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Incoming(i) => i.size_hint(),
            Kind::Pooled(p) => p.size_hint(),
            Kind::Stream(s) => s.size_hint(),
        };
        if let Some(rest) = &self.rest {
            // Upper first: a lower bound above the upper one panics.
            let n = rest.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(n));
            }
            hint.set_lower(hint.lower().saturating_add(n));
        }
        hint
    }
}

/// A request body as received.
pub enum ReqBody {
    Hyper(Incoming),
    /// A request without a body, read by our own HTTP/1.1 fast path.
    Empty,
}

impl HttpBody for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Hyper(i) => Pin::new(i).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Hyper(i) => i.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Hyper(i) => i.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Shared between a request body on its way upstream and the handler waiting for the response.
#[derive(Debug, Default)]
pub struct RequestBodyStats {
    pub bytes: AtomicU64,
    pub too_large: AtomicBool,
    /// The client sent nothing for `body_timeout` mid-body.
    pub stalled: AtomicBool,
    /// The body's last poll found nothing from the client yet: a body that stops moving now is
    /// the client's doing, not the backend's.
    pub awaiting_client: AtomicBool,
    /// The client's side of the body failed (a malformed chunk, a connection or stream closed
    /// mid-body): the upstream call fails because of the client, not the backend.
    pub client_failed: AtomicBool,
}

/// The request body exceeded `max_body` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// A request body on its way upstream.
pub struct UpstreamBody {
    inner: Option<ReqBody>,
    limit: u64,
    stats: Arc<RequestBodyStats>,
    /// Fired when the body is complete: the response timeout starts then.
    finished: Option<oneshot::Sender<()>>,
    stall: Stall,
}

impl UpstreamBody {
    pub fn empty() -> UpstreamBody {
        UpstreamBody {
            inner: None,
            limit: u64::MAX,
            stats: Arc::default(),
            finished: None,
            stall: Stall::new(Duration::MAX),
        }
    }

    /// The client's body, at most `limit` bytes, with at most `body_timeout` between bytes.
    pub fn new(
        inner: ReqBody,
        limit: u64,
        body_timeout: Duration,
        stats: Arc<RequestBodyStats>,
        finished: Option<oneshot::Sender<()>>,
    ) -> UpstreamBody {
        UpstreamBody {
            inner: Some(inner),
            limit,
            stats,
            finished,
            stall: Stall::new(body_timeout),
        }
    }

    fn signal_finished(&mut self) {
        if let Some(tx) = self.finished.take() {
            let _ = tx.send(());
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progress();
                this.stats.awaiting_client.store(false, Ordering::Relaxed);
                if let Some(d) = frame.data_ref() {
                    let total = this
                        .stats
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed)
                        + d.len() as u64;
                    if total > this.limit {
                        this.stats.too_large.store(true, Ordering::Relaxed);
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
                    }
                }
                if this.inner.as_ref().is_some_and(|i| i.is_end_stream()) {
                    this.signal_finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.signal_finished();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.stats.client_failed.store(true, Ordering::Relaxed);
                this.inner = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                this.stats.awaiting_client.store(true, Ordering::Relaxed);
                if this.stall.poll_expired(cx).is_pending() {
                    return Poll::Pending;
                }
                this.stats.stalled.store(true, Ordering::Relaxed);
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(Stalled {
                    who: "the client",
                    limit: this.stall.limit,
                }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|i| i.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

/// A body that went `limit` without sending anything (`body_timeout`).
#[derive(Debug, thiserror::Error)]
#[error("{who} sent no body bytes for {limit:?} (body_timeout)")]
pub struct Stalled {
    pub who: &'static str,
    pub limit: Duration,
}

/// The wait for a body's next bytes (or, in `server::TrackedIo`, for a client to take what is
/// written), bounded.
///
/// The timer is armed the first time the body has nothing ready, and moved on only when bytes
/// came in since, so a wake-up without progress never pushes the deadline back; a body that
/// is always ready (most small ones) never arms it.
pub(crate) struct Stall {
    pub(crate) limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    progressed: bool,
}

impl Stall {
    pub(crate) fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            timer: None,
            progressed: false,
        }
    }

    pub(crate) fn progress(&mut self) {
        self.progressed = true;
    }

    /// Called when the body has nothing ready: `Ready` once nothing came for `limit`.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // No limit (`Duration::MAX`, a body with nothing to wait for) never expires.
        let Some(deadline) = tokio::time::Instant::now().checked_add(self.limit) else {
            return Poll::Pending;
        };
        match &mut self.timer {
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            Some(t) if self.progressed => t.as_mut().reset(deadline),
            Some(_) => {}
        }
        self.progressed = false;
        match &mut self.timer {
            Some(t) => t.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn watched(len: usize) -> Body {
        let mut b = Body::full(vec![1u8; len]);
        b.watch_send(crate::h2_stall::SendWatch::new(Duration::from_secs(60)));
        b
    }

    #[tokio::test]
    async fn on_http2_a_large_frame_is_handed_over_in_pieces_of_the_frame_size() {
        let mut b = watched(2 * SEND_PIECE + 100);
        let mut sizes = Vec::new();
        while let Some(f) = b.frame().await {
            sizes.push(f.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [SEND_PIECE, SEND_PIECE, 100]);
    }

    #[tokio::test]
    async fn a_body_with_pieces_left_is_not_at_its_end_and_says_how_much_is_left() {
        let mut b = watched(SEND_PIECE + 100);
        b.frame().await.unwrap().unwrap();
        assert!(!b.is_end_stream());
        assert_eq!(b.size_hint().exact(), Some(100));
        b.frame().await.unwrap().unwrap();
        assert!(b.is_end_stream());
    }

    #[tokio::test]
    async fn without_a_watch_a_frame_is_handed_over_whole() {
        let mut b = Body::full(vec![1u8; 2 * SEND_PIECE]);
        let f = b.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap().len(), 2 * SEND_PIECE);
    }
}

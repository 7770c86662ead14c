//! HTTP/2 streams whose client has stopped taking the response.
//!
//! On HTTP/1.1 a client that takes nothing of a response stops the connection's writes, which
//! `server::TrackedIo` bounds with `body_timeout`. On HTTP/2 a client can do that to one stream
//! alone: it stops sending WINDOW_UPDATE for it (or opens it with a window of zero) while the
//! connection flows. hyper then waits for send capacity and never polls the response body
//! again, so neither the body's own timer nor the connection's writes see anything, and the
//! stream holds its backend connection for as long as the client likes: up to
//! `max_concurrent_streams` of them per connection. nginx resets such a stream after
//! `send_timeout`; so do we, after `body_timeout`.
//!
//! hyper runs each stream as a task it hands to the connection's executor. [`StreamExec`] is
//! that executor: it runs each stream's task inside [`watched`], which learns from the response
//! body, through the [`SendWatch`] they share, when the body has handed over a frame and has not
//! been asked for the next one since: the stream is waiting on its client. If that lasts the
//! stream's `body_timeout` with no frame taken, the task is dropped: h2 resets the stream
//! (RST_STREAM with CANCEL) and the body, dropped with it, closes the backend's connection.
//! The connection's other streams go on.
//!
//! The link between a stream's service call and its task is the order in which hyper works:
//! for each new stream it calls the service, then hands the stream's task to the executor. The
//! service puts the stream's watch in the connection's [`NextWatch`] slot and the executor
//! takes it out. A task that arrives with no watch is run unwatched.
//!
//! Must not: arm a timer for a stream that is not waiting on its client, or hold more per
//! stream than one small allocation.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use crate::body::Stall;
use crate::worker::lock;

/// What a response body tells its stream's task: how many frames it has handed over, and
/// whether the last one is still waiting for the body to be asked again.
#[derive(Debug)]
pub struct SendWatch {
    /// Frames handed over times two, plus one while the last is waiting. Written by the body
    /// and read by the task that polls it, in the same task: `Relaxed` is enough.
    state: AtomicU64,
    /// The stream's `body_timeout` in milliseconds: the server's until the response says.
    limit_ms: AtomicU64,
}

impl SendWatch {
    pub fn new(limit: Duration) -> Arc<SendWatch> {
        let w = SendWatch {
            state: AtomicU64::new(0),
            limit_ms: AtomicU64::new(0),
        };
        w.set_limit(limit);
        Arc::new(w)
    }

    /// The route's `body_timeout`, once the response is known to come from one.
    pub fn set_limit(&self, limit: Duration) {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        self.limit_ms.store(ms, Ordering::Relaxed);
    }

    fn limit(&self) -> Duration {
        Duration::from_millis(self.limit_ms.load(Ordering::Relaxed))
    }

    /// The body is asked for its next frame: nothing it handed over is waiting.
    pub fn polled(&self) {
        let s = self.state.load(Ordering::Relaxed);
        if s & 1 == 1 {
            self.state.store(s & !1, Ordering::Relaxed);
        }
    }

    /// The body handed over a frame of data, which now waits until the body is asked again.
    pub fn handed(&self) {
        let s = self.state.load(Ordering::Relaxed);
        self.state.store(((s >> 1) + 1) << 1 | 1, Ordering::Relaxed);
    }

    /// Whether a handed frame is waiting, and how many have been handed.
    fn read(&self) -> (bool, u64) {
        let s = self.state.load(Ordering::Relaxed);
        (s & 1 == 1, s >> 1)
    }
}

/// One connection's slot for the watch of the stream being opened (see the module doc).
pub type NextWatch = Arc<Mutex<Option<Arc<SendWatch>>>>;

/// The executor of one HTTP/2 connection: runs each stream's task, watched when the service
/// left a watch for it.
#[derive(Clone, Default)]
pub struct StreamExec {
    pub next: NextWatch,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        match lock(&self.next).take() {
            Some(watch) => tokio::spawn(watched(task, watch)),
            None => tokio::spawn(task),
        };
    }
}

/// Runs a stream's task, and drops it when what its body handed over has waited the stream's
/// `body_timeout` without the client taking any of it.
async fn watched<F: Future<Output = ()>>(task: F, watch: Arc<SendWatch>) {
    let mut task = std::pin::pin!(task);
    // Made the first time the stream waits, with the limit the response set by then.
    let mut stall: Option<Stall> = None;
    let mut seen = 0;
    std::future::poll_fn(|cx| {
        if task.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let (waiting, handed) = watch.read();
        if !waiting {
            // Waiting on the backend (its body has its own timer) or on nothing: a later wait
            // on the client starts from its own beginning.
            if let Some(s) = &mut stall {
                s.progress();
            }
            return Poll::Pending;
        }
        let s = stall.get_or_insert_with(|| Stall::new(watch.limit()));
        if handed != seen {
            seen = handed;
            s.progress();
        }
        if s.poll_expired(cx).is_pending() {
            return Poll::Pending;
        }
        tracing::debug!(
            limit = ?s.limit,
            "HTTP/2 stream reset: the client took nothing of its response for body_timeout"
        );
        Poll::Ready(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_watch_has_nothing_waiting() {
        assert_eq!(SendWatch::new(Duration::from_secs(1)).read(), (false, 0));
    }

    #[test]
    fn a_handed_frame_waits_until_the_body_is_polled_again() {
        let w = SendWatch::new(Duration::from_secs(1));
        w.polled();
        w.handed();
        assert_eq!(w.read(), (true, 1));
        w.polled();
        assert_eq!(w.read(), (false, 1));
    }

    #[test]
    fn each_handed_frame_counts_as_progress() {
        let w = SendWatch::new(Duration::from_secs(1));
        w.handed();
        w.handed();
        w.handed();
        assert_eq!(w.read(), (true, 3));
    }

    #[test]
    fn the_limit_is_the_one_set_last() {
        let w = SendWatch::new(Duration::from_secs(60));
        w.set_limit(Duration::from_millis(300));
        assert_eq!(w.limit(), Duration::from_millis(300));
    }
}

//! Idle HTTP/1.1 keep-alive connections, parked as bare sockets.
//!
//! Why: a connection's task, waiting for the next request, costs about 1.8 KiB (the task, its
//! future, a timer, a shutdown waiter); an idle nginx connection costs 0.6. Most connections a
//! gateway holds are idle browsers. So a plain-TCP HTTP/1.1 connection idle for [`PARK_AFTER`]
//! leaves its task: the lot keeps the socket, its place under `max_connections` and in the
//! open-connections gauge, and its idle deadline (about 0.5 KiB in all, most of it tokio's
//! registration of the socket), and hands it to a new task when the client sends again
//! (scenario 5 of bench/README.md). Busy keep-alive connections never get here.
//!
//! One lot per accept loop (so per worker thread): a parked socket is polled on the runtime it
//! is registered with. Each parked socket's readiness wakes a small waker naming its slot; the
//! lot's own timer closes the sockets whose idle timeout passes; shutdown closes them all.
//!
//! Must not: read from or write to a parked socket (the task it is handed back to does), or
//! park a connection with state of its own (TLS, HTTP/2, hyper, a request in progress).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::metrics::ConnGauge;
use crate::server::ServerCtx;

/// How long a connection waits for its next request in its own task before it is parked: long
/// enough that a client sending request after request never pays for parking (a task spawned
/// per request), short enough that idle browsers hold little.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(100);

/// A connection waiting for its next request, with what it keeps between requests (the rest
/// of its [`crate::proxy::ConnInfo`] is rebuilt from the socket when it is resumed).
pub(crate) struct Parked {
    pub tcp: TcpStream,
    /// Its place under `server.max_connections`, held while parked.
    pub permit: crate::server::ConnPermit,
    /// Its count in `gatehouse_open_connections`, when its first request set one.
    pub gauge: Option<ConnGauge>,
}

/// Where a connection task sends its connection to be parked.
#[derive(Clone)]
pub(crate) struct Lot {
    tx: mpsc::UnboundedSender<(Parked, Instant)>,
}

impl Lot {
    /// Starts a lot on the current runtime (the one its connections are registered with).
    pub(crate) fn start(ctx: &Arc<ServerCtx>) -> Lot {
        let (tx, rx) = mpsc::unbounded_channel();
        let weak = tx.downgrade();
        ctx.tracker.spawn(run(rx, weak, ctx.clone()));
        Lot { tx }
    }

    /// Parks a connection until `until` (its idle deadline). A lot that has stopped (shutdown)
    /// drops it, which closes it.
    pub(crate) fn park(&self, parked: Parked, until: Instant) {
        let _ = self.tx.send((parked, until));
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<(Parked, Instant)>,
    weak: mpsc::WeakUnboundedSender<(Parked, Instant)>,
    ctx: Arc<ServerCtx>,
) {
    let mut slots = Slots::default();
    let mut shutdown = ctx.shutdown.clone();
    let mut stopping = *shutdown.borrow_and_update();
    let mut closed = false;
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        let mut resume = Vec::new();
        tokio::select! {
            biased;
            changed = shutdown.changed(), if !stopping => {
                if changed.is_err() || *shutdown.borrow() {
                    stopping = true;
                    slots.clear();
                }
            }
            msg = rx.recv(), if !closed => match msg {
                Some((parked, until)) if !stopping => slots.add(parked, until, &mut resume),
                Some(_) => {}
                None => closed = true,
            },
            () = slots.woken.notify.notified() => slots.wake(&mut resume),
            () = &mut timer, if armed.is_some() => {
                armed = None;
                slots.expire(Instant::now());
            }
        }
        for parked in resume {
            let lot = weak.upgrade().map(|tx| Lot { tx });
            ctx.tracker
                .spawn(crate::server::resume(parked, ctx.clone(), lot));
        }
        if closed && slots.is_empty() {
            return;
        }
        let next = slots.next_deadline();
        if next != armed {
            if let Some(at) = next {
                timer.as_mut().reset(at);
            }
            armed = next;
        }
    }
}

/// The parked connections of one lot: slots reused through a free list, each with a
/// generation so that a late wake-up never resumes the slot's next tenant.
#[derive(Default)]
struct Slots {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    deadlines: BTreeSet<(Instant, usize)>,
    generation: u64,
    woken: Arc<Woken>,
}

struct Entry {
    parked: Parked,
    generation: u64,
    until: Instant,
}

impl Slots {
    fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Parks a connection, unless it has bytes (or its end) to read already.
    fn add(&mut self, parked: Parked, until: Instant, resume: &mut Vec<Parked>) {
        let key = self.free.pop().unwrap_or_else(|| {
            self.entries.push(None);
            self.entries.len() - 1
        });
        self.generation += 1;
        let generation = self.generation;
        if self.readable(&parked.tcp, key, generation) {
            self.free.push(key);
            resume.push(parked);
            return;
        }
        self.entries[key] = Some(Entry {
            parked,
            generation,
            until,
        });
        self.deadlines.insert((until, key));
        crate::metrics::parked().increment(1.0);
    }

    /// Resumes the woken connections that are readable; a wake-up without bytes (spurious)
    /// leaves its connection parked, with a new waker.
    fn wake(&mut self, resume: &mut Vec<Parked>) {
        let woken = std::mem::take(
            &mut *self
                .woken
                .keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (key, generation) in woken {
            let current = self.entries.get(key).and_then(Option::as_ref);
            if current.is_none_or(|e| e.generation != generation) {
                continue;
            }
            let ready = current.is_some_and(|e| self.readable(&e.parked.tcp, key, generation));
            if ready && let Some(parked) = self.remove(key) {
                resume.push(parked);
            }
        }
    }

    /// Closes the connections whose idle timeout has passed.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.deadlines.first() {
            if at > now {
                break;
            }
            if let Some(parked) = self.remove(key) {
                tracing::debug!(peer = ?parked.tcp.peer_addr().ok(), "closing idle keep-alive connection");
            }
        }
    }

    fn remove(&mut self, key: usize) -> Option<Parked> {
        let entry = self.entries.get_mut(key)?.take()?;
        self.deadlines.remove(&(entry.until, key));
        self.free.push(key);
        crate::metrics::parked().decrement(1.0);
        Some(entry.parked)
    }

    /// Closes every parked connection (shutdown).
    fn clear(&mut self) {
        let n = self.deadlines.len();
        self.entries.clear();
        self.free.clear();
        self.deadlines.clear();
        crate::metrics::parked().decrement(n as f64);
    }

    /// Whether `tcp` has something to read; if not, its next readiness wakes this slot.
    fn readable(&self, tcp: &TcpStream, key: usize, generation: u64) -> bool {
        let waker = Waker::from(Arc::new(SlotWaker {
            key,
            generation,
            woken: self.woken.clone(),
        }));
        matches!(
            tcp.poll_read_ready(&mut Context::from_waker(&waker)),
            Poll::Ready(_)
        )
    }
}

/// The slots whose sockets became readable, and the lot's wake-up.
#[derive(Default)]
struct Woken {
    keys: Mutex<Vec<(usize, u64)>>,
    notify: Notify,
}

/// Wakes the lot naming one slot (and the generation it was registered for).
struct SlotWaker {
    key: usize,
    generation: u64,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.key, self.generation));
        self.woken.notify.notify_one();
    }
}

//! Which worker a thread is, and state kept once per worker.
//!
//! Every worker reads the same snapshot, and that is free; writing to it is not. A reference
//! count or a counter that all workers update per request is one cache line the cores pass back
//! and forth: on two workers, those atomic writes were half of `proxy::serve`'s samples under
//! `perf` (bench/README.md), where nginx's worker processes share nothing. State the request path
//! updates (a pool's idle list, a backend's in-flight count) is therefore kept once per worker,
//! each on cache lines of its own, and whatever reports it (the metrics endpoint) adds the
//! workers' values up.
//!
//! This module must not know what it holds.

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

thread_local! {
    /// This thread's worker index: 0 unless [`set`] said otherwise.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Tells this thread which worker it is. Called once by each worker thread when it starts.
pub fn set(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// How many per-worker slots to keep: one per core. A worker beyond that shares a slot, which
/// stays correct (the values are atomics or locked) and only costs the sharing.
pub fn slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Locks a per-worker value. A worker that panicked while holding it left counts or a list,
/// which are still sound to use: poisoning is ignored.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A value alone on its cache lines: 128 bytes, since Intel's prefetcher pulls lines in pairs.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One `T` per worker slot. Each is its own allocation, so a clone of this worker's handle
/// (a response body keeping it until the body ends) writes only this worker's count.
#[derive(Debug)]
pub struct PerWorker<T> {
    slots: Box<[Arc<Padded<T>>]>,
}

impl<T> PerWorker<T> {
    pub fn new(mut make: impl FnMut() -> T) -> PerWorker<T> {
        PerWorker::with_slots(slots(), &mut make)
    }

    pub fn with_slots(n: usize, mut make: impl FnMut() -> T) -> PerWorker<T> {
        PerWorker {
            slots: (0..n.max(1)).map(|_| Arc::new(Padded(make()))).collect(),
        }
    }

    /// The calling worker's value.
    pub fn local(&self) -> &Arc<Padded<T>> {
        let i = WORKER.with(Cell::get);
        // A worker's index is below the slot count but on a machine with more workers than
        // cores: the division (tens of cycles, several times per request) only then.
        match self.slots.get(i) {
            Some(slot) => slot,
            None => &self.slots[i % self.slots.len()],
        }
    }

    /// Every worker's value, to add them up.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|s| &s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_gets_its_own_slot() {
        let counts = PerWorker::with_slots(2, || Cell::new(0));
        set(0);
        counts.local().set(1);
        set(1);
        counts.local().set(2);
        assert_eq!(counts.iter().map(Cell::get).collect::<Vec<_>>(), [1, 2]);
        set(0);
    }

    #[test]
    fn workers_beyond_the_slots_share_one() {
        let counts = PerWorker::with_slots(2, || Cell::new(0));
        set(3);
        counts.local().set(7);
        set(0);
        assert_eq!(counts.iter().map(Cell::get).collect::<Vec<_>>(), [0, 7]);
    }

    #[test]
    fn slots_do_not_share_cache_lines() {
        let counts = PerWorker::with_slots(2, || 0u8);
        let a = &*counts.slots[0] as *const Padded<u8> as usize;
        let b = &*counts.slots[1] as *const Padded<u8> as usize;
        assert_eq!(a % 128, 0);
        assert!(a.abs_diff(b) >= 128);
    }
}

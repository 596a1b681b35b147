//! Atomic counters and the [`Metrics`] snapshot.
//!
//! Counters are bumped once per batch, not per event: a publisher tallies a chunk of events
//! locally and adds the totals, and `published` and `pending` are read off the ring's own
//! counters, so keeping metrics costs the enqueue path nothing.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering};

/// A snapshot of a store's counters, from [`EventStore::metrics`](crate::EventStore::metrics).
///
/// Every event accepted by the store is in exactly one of `processed`, `failed`, `dropped`,
/// `unrouted`, `pending` or `in_flight`, so once the store is quiescent (no enqueue or publish
/// running) [`is_balanced`](Self::is_balanced) holds:
///
/// `published == processed + failed + dropped + unrouted + pending + in_flight`
///
/// and `in_flight` is 0 once [`drain`](crate::EventStore::drain) has returned `Ok`.
///
/// [Scheduled](crate::EventStore::schedule_at) events are outside that sum until they fire: an
/// event waiting in the timer is counted in `scheduled` only; when it fires it goes through
/// `enqueue` and becomes `published` (or `rejected` if the store refuses it); cancelled before
/// firing, by its handle or by [`close`](crate::EventStore::close), it moves to `cancelled`.
/// So every event handed to the timer is in `scheduled`, `cancelled`, or (once fired)
/// `published` / `rejected`. Each field
/// is read separately, so a snapshot taken while other threads work may be off by the events
/// that moved between two reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Events accepted into the ring (GoEventBus's `published`).
    pub published: u64,
    /// Events whose handlers all returned `Ok`.
    pub processed: u64,
    /// Events for which at least one handler returned an error or panicked.
    pub failed: u64,
    /// Handler invocations that returned an error or panicked (an event with two failing
    /// handlers counts twice here, once in `failed`).
    pub handler_errors: u64,
    /// The subset of `handler_errors` that were panics.
    pub panics: u64,
    /// Events discarded by `DropOldest` to make room.
    pub dropped: u64,
    /// Events refused and handed back: ring full under `ReturnError`, `Block` deadline passed,
    /// or store closed. Not part of `published`.
    pub rejected: u64,
    /// Events whose projection had no handler.
    pub unrouted: u64,
    /// Events in the ring, not yet taken by a publisher.
    pub pending: u64,
    /// Events taken by a publisher whose handlers have not finished (async batches included).
    pub in_flight: u64,
    /// Scheduled events waiting in the timer: not fired, not cancelled. Not part of
    /// `published` until they fire.
    pub scheduled: u64,
    /// Scheduled events cancelled before they fired: by their handle, or by `close`.
    pub cancelled: u64,
    /// Panics caught in the `Drop` of an event or of its projection (each reported as
    /// [`ErrorKind::DropPanic`](crate::ErrorKind::DropPanic)); an event whose `Drop` and whose
    /// projection's `Drop` both panic counts twice. Not part of the balance: such an event was
    /// already counted once, as processed, failed, unrouted, dropped or cancelled.
    pub drop_panics: u64,
}

impl Metrics {
    /// True when every published event is accounted for (see the type's docs).
    pub fn is_balanced(&self) -> bool {
        self.published
            == self.processed
                + self.failed
                + self.dropped
                + self.unrouted
                + self.pending
                + self.in_flight
    }
}

/// What one publisher saw in a run of handlers; summed locally, added to [`Counters`] once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) processed: u64,
    pub(crate) failed: u64,
    pub(crate) unrouted: u64,
    pub(crate) handler_errors: u64,
    pub(crate) panics: u64,
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(self, o: Tally) -> Tally {
        Tally {
            processed: self.processed + o.processed,
            failed: self.failed + o.failed,
            unrouted: self.unrouted + o.unrouted,
            handler_errors: self.handler_errors + o.handler_errors,
            panics: self.panics + o.panics,
        }
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        *self = *self + o;
    }
}

/// The store's live counters. Producer-side and publisher-side counters sit on separate cache
/// lines so that overrun accounting does not slow publishers down.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    outcomes: CachePadded<Outcomes>,
    /// Events taken out of the ring whose handlers have not finished.
    pub(crate) in_flight: CachePadded<AtomicU64>,
    overrun: CachePadded<Overrun>,
}

#[derive(Debug, Default)]
struct Outcomes {
    processed: AtomicU64,
    failed: AtomicU64,
    unrouted: AtomicU64,
    handler_errors: AtomicU64,
    panics: AtomicU64,
}

#[derive(Debug, Default)]
struct Overrun {
    dropped: AtomicU64,
    rejected: AtomicU64,
    /// Rare (a panicking `Drop`), so it shares the producers' line rather than take its own.
    drop_panics: AtomicU64,
}

/// Adds `n` unless it is 0, sparing the cache line a write in the common case.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    if n != 0 {
        // Relaxed: counters order nothing; readers want totals, not happens-before.
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Counters {
    /// Adds a publisher's tally.
    #[inline]
    pub(crate) fn record(&self, t: Tally) {
        bump(&self.outcomes.processed, t.processed);
        bump(&self.outcomes.failed, t.failed);
        bump(&self.outcomes.unrouted, t.unrouted);
        bump(&self.outcomes.handler_errors, t.handler_errors);
        bump(&self.outcomes.panics, t.panics);
    }

    pub(crate) fn add_dropped(&self, n: u64) {
        bump(&self.overrun.dropped, n);
    }

    pub(crate) fn add_rejected(&self, n: u64) {
        bump(&self.overrun.rejected, n);
    }

    pub(crate) fn add_drop_panics(&self, n: u64) {
        bump(&self.overrun.drop_panics, n);
    }

    /// Counts up to `want` more events in flight, as many as keep the count at or below
    /// `bound`; returns how many (`None` when the count is already at the bound).
    ///
    /// SeqCst, as every change of `in_flight`: see `Shared::take` in `store.rs`.
    #[inline]
    pub(crate) fn reserve_in_flight(&self, want: u64, bound: u64) -> Option<u64> {
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            let room = want.min(bound.checked_sub(current).filter(|&r| r > 0)?);
            match self.in_flight.compare_exchange_weak(
                current,
                current + room,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(room),
                Err(now) => current = now,
            }
        }
    }

    /// Reads every counter. `published` and `pending` come from the ring: the caller passes
    /// its head and tail, read head first so that `pending` cannot underflow.
    pub(crate) fn snapshot(&self, head: u64, tail: u64) -> Metrics {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Metrics {
            published: tail,
            processed: load(&self.outcomes.processed),
            failed: load(&self.outcomes.failed),
            handler_errors: load(&self.outcomes.handler_errors),
            panics: load(&self.outcomes.panics),
            dropped: load(&self.overrun.dropped),
            rejected: load(&self.overrun.rejected),
            unrouted: load(&self.outcomes.unrouted),
            pending: tail.saturating_sub(head),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            // The timer's counters live with the timer; the store fills these in.
            scheduled: 0,
            cancelled: 0,
            drop_panics: load(&self.overrun.drop_panics),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn records_tallies_and_balances() {
        let c = Counters::default();
        c.record(Tally {
            processed: 5,
            failed: 2,
            unrouted: 1,
            handler_errors: 3,
            panics: 1,
        });
        c.add_dropped(4);
        c.add_rejected(9);
        let m = c.snapshot(12, 15);
        assert_eq!(m.published, 15);
        assert_eq!(m.pending, 3);
        assert_eq!((m.processed, m.failed, m.unrouted), (5, 2, 1));
        assert_eq!(
            (m.handler_errors, m.panics, m.dropped, m.rejected),
            (3, 1, 4, 9)
        );
        assert!(m.is_balanced());
        assert!(!Metrics { published: 1, ..m }.is_balanced());
    }
}

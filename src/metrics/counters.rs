//! The store's live counters ([`Counters`]) and a publisher's local [`Tally`].

use crossbeam_utils::CachePadded;

use super::{InFlight, Metrics};
use crate::sync::{AtomicU64, Ordering};

/// What one publisher saw in a run of handlers; summed locally, added to [`Counters`] once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) processed: u64,
    pub(crate) failed: u64,
    pub(crate) unrouted: u64,
    pub(crate) handler_errors: u64,
    pub(crate) panics: u64,
    /// Events the store-wide filter turned away.
    pub(crate) filtered: u64,
    /// Events whose failure went to the dead-letter queue.
    pub(crate) dead_lettered: u64,
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
            filtered: self.filtered + o.filtered,
            dead_lettered: self.dead_lettered + o.dead_lettered,
        }
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        *self = *self + o;
    }
}

/// Why an event was refused (and handed back), for [`Counters::add_rejected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No room under `ReturnError` (or a batch larger than the ring, under any policy).
    Full,
    /// The store is closed (to outside producers, or sealed).
    Closed,
    /// `Block`'s deadline passed.
    Timeout,
}

/// The store's live counters. Producer-side and publisher-side counters sit on separate cache
/// lines so that overrun accounting does not slow publishers down.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    outcomes: CachePadded<Outcomes>,
    /// Events taken out of the ring whose handlers have not finished.
    pub(crate) in_flight: CachePadded<InFlight>,
    overrun: CachePadded<Overrun>,
}

#[derive(Debug, Default)]
struct Outcomes {
    processed: AtomicU64,
    failed: AtomicU64,
    unrouted: AtomicU64,
    handler_errors: AtomicU64,
    panics: AtomicU64,
    filtered: AtomicU64,
    dead_lettered: AtomicU64,
    /// Events held past their run by a pending retry (a gauge: up when held, down when done).
    retrying: AtomicU64,
    /// Handler calls a circuit breaker skipped.
    skipped: AtomicU64,
    /// Retry attempts run.
    retries: AtomicU64,
    /// The deepest a lane was seen (`Metrics::depth_high_water`).
    depth_high_water: AtomicU64,
}

#[derive(Debug, Default)]
struct Overrun {
    dropped: AtomicU64,
    rejected_full: AtomicU64,
    rejected_closed: AtomicU64,
    rejected_timeout: AtomicU64,
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
        bump(&self.outcomes.filtered, t.filtered);
        bump(&self.outcomes.dead_lettered, t.dead_lettered);
    }

    /// An event is held past its run for a retry (see `store/held.rs`).
    pub(crate) fn hold(&self) {
        self.outcomes.retrying.fetch_add(1, Ordering::Relaxed);
    }

    /// A held event's last retry finished: it leaves `retrying` for the place `t` says
    /// (recorded first, so that a snapshot never sees it in neither).
    pub(crate) fn release(&self, t: Tally) {
        self.record(t);
        // Release: a snapshot that sees it gone from `retrying` (Acquire) sees `t` recorded.
        self.outcomes.retrying.fetch_sub(1, Ordering::Release);
    }

    /// A handler call failed outside a run's tally (a retry, an inline retry's earlier
    /// attempt).
    pub(crate) fn record_failure<Err>(&self, failure: &crate::error::HandlerFailure<Err>) {
        bump(&self.outcomes.handler_errors, 1);
        if matches!(failure, crate::error::HandlerFailure::Panic(_)) {
            bump(&self.outcomes.panics, 1);
        }
    }

    /// A lane was seen holding `depth` events.
    #[inline]
    pub(crate) fn note_depth(&self, depth: u64) {
        // A plain load first: the mark rarely moves, so the line is usually only read.
        if depth > self.outcomes.depth_high_water.load(Ordering::Relaxed) {
            self.outcomes
                .depth_high_water
                .fetch_max(depth, Ordering::Relaxed);
        }
    }

    /// A circuit breaker skipped `n` handler calls.
    pub(crate) fn add_skipped(&self, n: u64) {
        bump(&self.outcomes.skipped, n);
    }

    /// `n` retry attempts ran.
    pub(crate) fn add_retries(&self, n: u64) {
        bump(&self.outcomes.retries, n);
    }

    pub(crate) fn add_dropped(&self, n: u64) {
        bump(&self.overrun.dropped, n);
    }

    pub(crate) fn add_rejected(&self, why: Rejection, n: u64) {
        let (counter, reason) = match why {
            Rejection::Full => (&self.overrun.rejected_full, "full"),
            Rejection::Closed => (&self.overrun.rejected_closed, "closed"),
            Rejection::Timeout => (&self.overrun.rejected_timeout, "timeout"),
        };
        bump(counter, n);
        crate::trace::rejected(reason, n);
    }

    pub(crate) fn add_drop_panics(&self, n: u64) {
        bump(&self.overrun.drop_panics, n);
    }

    /// Reads every counter. `published` and `pending` come from the ring: the caller passes
    /// its head and tail, read head first so that `pending` cannot underflow.
    pub(crate) fn snapshot(&self, head: u64, tail: u64) -> Metrics {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // First, Acquire: an event that left `retrying` is then seen in its outcome (see
        // `release`); one seen in both for a moment is possible, in neither not.
        let retrying = self.outcomes.retrying.load(Ordering::Acquire);
        Metrics {
            published: tail,
            processed: load(&self.outcomes.processed),
            failed: load(&self.outcomes.failed),
            handler_errors: load(&self.outcomes.handler_errors),
            panics: load(&self.outcomes.panics),
            dropped: load(&self.overrun.dropped),
            rejected: load(&self.overrun.rejected_full)
                + load(&self.overrun.rejected_closed)
                + load(&self.overrun.rejected_timeout),
            rejected_full: load(&self.overrun.rejected_full),
            rejected_closed: load(&self.overrun.rejected_closed),
            rejected_timeout: load(&self.overrun.rejected_timeout),
            unrouted: load(&self.outcomes.unrouted),
            pending: tail.saturating_sub(head),
            in_flight: self.in_flight.get(),
            // The timer's counters live with the timer; the store fills these in.
            scheduled: 0,
            cancelled: 0,
            drop_panics: load(&self.overrun.drop_panics),
            filtered: load(&self.outcomes.filtered),
            dead_lettered: load(&self.outcomes.dead_lettered),
            retrying,
            skipped: load(&self.outcomes.skipped),
            retries: load(&self.outcomes.retries),
            dead_letters: 0,
            dead_letters_dropped: 0,
            depth_high_water: load(&self.outcomes.depth_high_water),
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
            ..Tally::default()
        });
        c.add_dropped(4);
        c.add_rejected(Rejection::Full, 5);
        c.add_rejected(Rejection::Closed, 3);
        c.add_rejected(Rejection::Timeout, 1);
        let m = c.snapshot(12, 15);
        assert_eq!(m.published, 15);
        assert_eq!(m.pending, 3);
        assert_eq!((m.processed, m.failed, m.unrouted), (5, 2, 1));
        assert_eq!(
            (m.handler_errors, m.panics, m.dropped, m.rejected),
            (3, 1, 4, 9)
        );
        assert_eq!(
            (m.rejected_full, m.rejected_closed, m.rejected_timeout),
            (5, 3, 1)
        );
        assert!(m.is_balanced());
        assert!(!Metrics { published: 1, ..m }.is_balanced());
    }
}

//! Events held past their run: an event one of whose handlers failed and has a retry pending
//! stays out of `processed` / `failed` / `dead_lettered` until that retry (and any other
//! pending for it) has finished, counted in the meantime in
//! [`Metrics::retrying`](crate::Metrics::retrying).
//!
//! The run loop takes the hold on a subscriber's request ([`Context::hold`]) and keeps one
//! share for itself until the event's handlers have all run; each retry job keeps one until it
//! gives up or succeeds. The last share released moves the event to its final place: dead-
//! lettered if any failure went to the dead-letter queue, failed if any failure stands,
//! processed otherwise. So a retry that finishes before the run does (on another publisher)
//! cannot count the event before the run has added its own failures.

use std::sync::Arc;

use crate::metrics::{Counters, Outcome, ProjectionCounters, Tally};
use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// How a share of a held event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Nothing failed for good (the retry succeeded, or the run had no other failure).
    Ok,
    /// A failure stands (retries exhausted or permanent, not dead-lettered).
    Failed,
    /// A failure went to the dead-letter queue.
    DeadLettered,
}

/// The shares of one held event and the worst of their outcomes.
#[derive(Debug)]
pub(crate) struct Held {
    shares: AtomicU64,
    failed: AtomicBool,
    dead_lettered: AtomicBool,
    /// The event's projection's counters, which hold it in their `retrying` too.
    projection: Arc<ProjectionCounters>,
}

impl Held {
    /// A hold with the run's own share, counted in `retrying`.
    pub(crate) fn new(counters: &Counters, projection: Arc<ProjectionCounters>) -> Self {
        counters.hold();
        projection.hold();
        Self {
            shares: AtomicU64::new(1),
            failed: AtomicBool::new(false),
            dead_lettered: AtomicBool::new(false),
            projection,
        }
    }

    /// The event's projection's counters.
    pub(crate) fn projection(&self) -> &Arc<ProjectionCounters> {
        &self.projection
    }

    /// One more share, for a retry job.
    pub(crate) fn share(&self) {
        // Relaxed: the caller holds a share already, so the count cannot reach 0 meanwhile.
        self.shares.fetch_add(1, Ordering::Relaxed);
    }

    /// Releases one share that ended as `standing`; the last one moves the event from
    /// `retrying` to its final place.
    pub(crate) fn release(&self, standing: Standing, counters: &Counters) {
        match standing {
            Standing::Ok => {}
            Standing::Failed => self.failed.store(true, Ordering::Relaxed),
            Standing::DeadLettered => self.dead_lettered.store(true, Ordering::Relaxed),
        }
        // AcqRel: the last releaser sees every other share's outcome stored above.
        if self.shares.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut tally = Tally::default();
        let outcome = if self.dead_lettered.load(Ordering::Relaxed) {
            tally.dead_lettered = 1;
            Outcome::DeadLettered
        } else if self.failed.load(Ordering::Relaxed) {
            tally.failed = 1;
            Outcome::Failed
        } else {
            tally.processed = 1;
            Outcome::Processed
        };
        self.projection.release(outcome);
        counters.release(tally);
    }
}

/// Two retries of one held event end on two threads, each with its outcome: exactly one of
/// them moves the event out of `retrying`, to the worse of the two places.
/// `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_` (CI runs it).
#[cfg(all(test, loom))]
mod loom_held {
    use super::{Held, Standing};
    use crate::metrics::Counters;
    use loom::sync::Arc;

    #[test]
    fn loom_the_last_share_released_decides_once() {
        loom::model(|| {
            let counters = Arc::new(Counters::default());
            let registry = crate::metrics::ProjectionRegistry::new(None);
            let held = Arc::new(Held::new(&counters, registry.get(&"p")));
            held.share();
            held.share();
            let other = {
                let (held, counters) = (held.clone(), counters.clone());
                loom::thread::spawn(move || held.release(Standing::Failed, &counters))
            };
            held.release(Standing::Ok, &counters); // the run's own share
            held.release(Standing::Ok, &counters);
            other.join().unwrap();
            let m = counters.snapshot(0, 1);
            assert_eq!((m.retrying, m.failed, m.processed), (0, 1, 0), "{m:?}");
            let p = &registry.snapshot()[0];
            assert_eq!((p.retrying, p.failed, p.published), (0, 1, 1), "{p:?}");
        });
    }
}

//! The [`Metrics`] snapshot, and every live counter behind it.
//!
//! Counters are bumped once per batch, not per event: a publisher tallies a chunk of events
//! locally and adds the totals, and `published` and `pending` are read off the ring's own
//! counters, so keeping metrics costs the enqueue path nothing. The counters' memory orderings
//! are chosen here and nowhere else: [`counters`] (Relaxed totals) and [`in_flight`] (the one
//! counter that orders something, SeqCst, with the reason).

mod counters;
mod in_flight;
mod latency;
mod projection;

pub(crate) use counters::{Counters, Rejection, Tally};
pub(crate) use in_flight::InFlight;
pub use latency::{LatencySummary, ProjectionLatency};
pub(crate) use latency::{Sampling, SamplingConfig};
pub(crate) use projection::{
    LOCAL_ROUTES, Outcome, ProjectionCounters, ProjectionRegistry, RunCounts, UnlistedCache,
    name_of,
};
pub use projection::{MAX_PROJECTIONS, OVERFLOW, ProjectionMetrics};

/// A snapshot of a store's counters, from [`EventStore::metrics`](crate::EventStore::metrics).
///
/// Every event accepted by the store is in exactly one of `processed`, `failed`, `dropped`,
/// `unrouted`, `pending` or `in_flight`, so once the store is quiescent (no enqueue or publish
/// running) [`is_balanced`](Self::is_balanced) holds:
///
/// `published == processed + failed + dead_lettered + filtered + dropped + unrouted + pending
///   + in_flight + retrying`
///
/// (`dead_lettered`, `filtered` and `retrying` are 0 for a store that uses no subscription
/// with a retry policy or dead letters and no store-wide filter.)
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
    /// Events accepted into the ring, both lanes of a store with a
    /// [`Producer`](crate::Producer) (GoEventBus's `published`).
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
    /// or store closed. Not part of `published`. The sum of the three below.
    pub rejected: u64,
    /// Refused for want of room: ring full under `ReturnError`, or a batch (transaction)
    /// larger than the ring, under any policy.
    pub rejected_full: u64,
    /// Refused because the store was closed: an outside enqueue or schedule after `close`
    /// began, or a handler's follow-up after `close` finished.
    pub rejected_closed: u64,
    /// Refused because `Block`'s deadline passed before room came.
    pub rejected_timeout: u64,
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
    /// Events the store-wide filter ([`Builder::filter`](crate::Builder::filter)) turned away
    /// before routing: no handler ran for them.
    pub filtered: u64,
    /// Events with at least one failure that went to the dead-letter queue (a handler that
    /// exhausted its retries, failed permanently, or panicked, as its subscription says).
    pub dead_lettered: u64,
    /// Events held past their run because a retry of one of their handlers is pending. Each
    /// leaves for `processed`, `failed` or `dead_lettered` when its last retry finishes.
    pub retrying: u64,
    /// Handler calls skipped because the subscription's circuit breaker was open (a
    /// handler-level count, like `handler_errors`: not part of the balance).
    pub skipped: u64,
    /// Retry attempts run (handler-level, not part of the balance).
    pub retries: u64,
    /// Dead letters in the queue now.
    pub dead_letters: u64,
    /// Dead letters the queue dropped when full (its [`DeadLetterOverrun`](crate::DeadLetterOverrun)).
    pub dead_letters_dropped: u64,
    /// The most events seen waiting in one lane (ring) at once: by a publisher about to take
    /// them, or by a snapshot. Since only publishers shrink a lane, the depth a publisher sees
    /// when it comes is the peak since the last take, so this is the lane's true peak up to
    /// the events enqueued between a publisher's look and its take.
    pub depth_high_water: u64,
}

impl Metrics {
    /// True when every published event is accounted for (see the type's docs).
    pub fn is_balanced(&self) -> bool {
        self.published
            == self.processed
                + self.failed
                + self.dead_lettered
                + self.filtered
                + self.dropped
                + self.unrouted
                + self.pending
                + self.in_flight
                + self.retrying
    }
}

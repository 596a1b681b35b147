//! What the store tells its callers and its error hook: [`Enqueued`], [`PublishReport`],
//! [`ErrorReport`] and [`ErrorKind`].

#[cfg(doc)]
use super::{Builder, EventStore};
#[cfg(doc)]
use crate::metrics::Metrics;
use crate::metrics::Tally;

/// An accepted enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// Sequence number of the event (of the first event, for a batch).
    pub sequence: u64,
    /// Older events `DropOldest` discarded to make room for this one (or this batch).
    pub dropped: u64,
}

/// What a [`publish`](crate::EventStore::publish) did.
///
/// Reports add up with `+=` (`AddAssign`), field by field, to total a tick or a run:
///
/// ```
/// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy, PublishReport};
/// # struct Ev;
/// # impl Event for Ev { type Projection = u8; fn projection(&self) -> u8 { 0 } }
/// let store = EventStore::new(Dispatcher::<Ev>::new(), 8, OverrunPolicy::ReturnError)?;
/// let mut total = PublishReport::default();
/// for _ in 0..3 {
///     store.enqueue(Ev)?;
///     total += store.publish();
/// }
/// assert_eq!((total.dispatched, total.unrouted), (3, 3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReport {
    /// Events taken out of the ring by this call. In
    /// [`DispatchMode::Async`](crate::DispatchMode::Async) they were handed to the pool, the
    /// outcome fields below stay 0, and the events the pool's jobs hand out later for this
    /// call (past the in-flight bound) are not counted here: see
    /// [`EventStore::metrics`](crate::EventStore::metrics).
    pub dispatched: u64,
    /// Events whose handlers all succeeded.
    pub processed: u64,
    /// Events with at least one failing or panicking handler.
    pub failed: u64,
    /// Events whose projection had no handler.
    pub unrouted: u64,
    /// Handler invocations that returned an error or panicked.
    pub handler_errors: u64,
}

impl std::ops::AddAssign for PublishReport {
    fn add_assign(&mut self, o: Self) {
        self.dispatched += o.dispatched;
        self.processed += o.processed;
        self.failed += o.failed;
        self.unrouted += o.unrouted;
        self.handler_errors += o.handler_errors;
    }
}

impl PublishReport {
    pub(super) fn from_tally(dispatched: u64, t: Tally) -> Self {
        Self {
            dispatched,
            processed: t.processed,
            failed: t.failed,
            unrouted: t.unrouted,
            handler_errors: t.handler_errors,
        }
    }
}

/// A failure reported to the [`Builder::on_error`](crate::Builder::on_error) callback.
#[derive(Debug)]
#[non_exhaustive]
pub struct ErrorReport<'a, K, Err> {
    /// The event's projection; `None` when it is not known: the event's own `projection()`
    /// panicked, or the event is gone ([`ErrorKind::DropPanic`]).
    pub projection: Option<&'a K>,
    /// The event's sequence number; `None` for a scheduled event that never reached the ring.
    pub sequence: Option<u64>,
    /// What went wrong.
    pub kind: ErrorKind<'a, Err>,
}

/// What went wrong, in an [`ErrorReport`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind<'a, Err> {
    /// A handler returned this error.
    Handler(&'a Err),
    /// A handler, or the event's own `projection()` (then [`ErrorReport::projection`] is
    /// `None`), panicked with this message (`"<non-string panic>"` when the payload was not a
    /// string).
    Panic(&'a str),
    /// The store was dropped with this event still pending; its handlers never ran.
    Discarded,
    /// The event's own `Drop` panicked with this message, after the event was counted
    /// (processed, failed, unrouted, dropped, discarded or cancelled). Counted in
    /// [`Metrics::drop_panics`](crate::Metrics::drop_panics).
    DropPanic(&'a str),
    /// A subscription's handler ran past its time budget
    /// ([`SubscriptionBuilder::deadline`](crate::SubscriptionBuilder::deadline)).
    Timeout,
}

/// The [`Builder::on_error`](crate::Builder::on_error) callback.
pub(super) type ErrorHook<K, Err> = Box<dyn Fn(&ErrorReport<'_, K, Err>) + Send + Sync>;

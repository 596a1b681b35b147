//! [`Context`]: what a handler gets besides the event: its sequence, its projection, the
//! publish's deadline, and its own store.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::held::Held;
use super::{Enqueued, EventStore};
use crate::error::{BatchError, EnqueueError};
use crate::event::{BoxError, Event};
use crate::metrics::ProjectionCounters;
use crate::ring::Intake;
use crate::wait::earlier;

/// What a handler knows about the event it is handling besides the event itself, and its way
/// back into its own store.
///
/// [`store`](Self::store) lends the handler the store it runs in, for follow-up events,
/// schedules, transactions and metrics, without the handler owning a handle: a handler that
/// captured a clone of its own store would keep it alive forever (the store owns the handler),
/// so its pending events would never be reported discarded and its state never freed.
///
/// ```
/// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
///
/// #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// enum Kind { Hit, Died }
/// struct Ev { kind: Kind, hp: i32 }
/// impl Event for Ev {
///     type Projection = Kind;
///     fn projection(&self) -> Kind { self.kind }
/// }
///
/// let mut dispatcher = Dispatcher::<Ev>::new();
/// dispatcher.on(Kind::Hit, |ctx, ev| {
///     if ev.hp <= 0 {
///         ctx.enqueue(Ev { kind: Kind::Died, hp: 0 })?; // a follow-up
///     }
///     Ok(())
/// });
/// let store = EventStore::new(dispatcher, 64, OverrunPolicy::ReturnError)?;
/// store.enqueue(Ev { kind: Kind::Hit, hp: -5 })?;
/// assert_eq!(store.publish().dispatched, 1);
/// assert_eq!(store.pending(), 1); // the follow-up, for the next publish
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Context<'a, E: Event, Err = BoxError> {
    pub(super) store: &'a EventStore<E, Err>,
    pub(super) sequence: u64,
    pub(super) projection: &'a E::Projection,
    pub(super) deadline: Option<Instant>,
    /// The event's hold, once a subscriber's retry asked for one (`store/held.rs`): a slot
    /// of the run's, so that making a context per event writes nothing.
    pub(super) held: &'a OnceLock<Arc<Held>>,
    /// The counters of the event's projection.
    pub(super) counters: &'a Arc<ProjectionCounters>,
}

impl<'a, E: Event, Err> Context<'a, E, Err> {
    /// The event's sequence number: its position in its lane's total order of enqueues,
    /// starting at 0; unique per store. The shared ring's count from 0; a [`Producer`]'s
    /// lane's count from 0 too, with the [`PRODUCER_LANE`] bit set.
    ///
    /// [`Producer`]: crate::Producer
    /// [`PRODUCER_LANE`]: crate::PRODUCER_LANE
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The projection the event was routed by.
    pub fn projection(&self) -> &'a E::Projection {
        self.projection
    }

    /// The deadline of the publish running this handler, if it has one
    /// ([`EventStore::close`] sets one). A long handler should check
    /// [`is_expired`](Self::is_expired) and wrap up.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// True once the deadline has passed. Reads the clock; without a deadline, always false.
    pub fn is_expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The store this handler runs in, lent for the call. What a handler does through it is
    /// what any producer does: during [`close`](EventStore::close) its enqueues are refused.
    /// Use [`enqueue`](Self::enqueue) for follow-ups that must get in while the store closes.
    pub fn store(&self) -> &'a EventStore<E, Err> {
        self.store
    }

    /// A share of this event's hold, taken (and counted in `retrying`) on first use: a retry
    /// job keeps the event's outcome open until it releases its share.
    pub(crate) fn hold(&self) -> Arc<Held> {
        let held = self.held.get_or_init(|| {
            let projection = Arc::clone(self.counters);
            Arc::new(Held::new(&self.store.shared.counters, projection))
        });
        held.share();
        Arc::clone(held)
    }

    /// The context of a call outside a run of events (a subscription's retry, on a publishing
    /// thread): no deadline, and `held` an empty slot of the caller's (a retry is not held
    /// again: its outcome is its job's).
    pub(crate) fn outside_run(
        store: &'a EventStore<E, Err>,
        sequence: u64,
        projection: &'a E::Projection,
        counters: &'a Arc<ProjectionCounters>,
        held: &'a OnceLock<Arc<Held>>,
    ) -> Self {
        Context {
            store,
            sequence,
            projection,
            deadline: None,
            held,
            counters,
        }
    }

    /// The counters of the event's projection.
    pub(crate) fn projection_counters(&self) -> &'a ProjectionCounters {
        self.counters
    }

    /// This context for a handler with its own time budget: the earlier of the two deadlines.
    pub(crate) fn with_budget(&self, budget: Instant) -> Context<'a, E, Err> {
        Context {
            store: self.store,
            sequence: self.sequence,
            projection: self.projection,
            deadline: earlier(self.deadline, Some(budget)),
            held: self.held,
            counters: self.counters,
        }
    }
}

impl<E, Err> Context<'_, E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Enqueues a follow-up event: [`EventStore::enqueue`], except that it is still accepted
    /// while the store [closes](EventStore::close), until the close has dispatched everything
    /// (so work accepted before a shutdown gets its follow-ups), and that under
    /// [`OverrunPolicy::Block`](crate::OverrunPolicy::Block) it waits for room only until
    /// this context's [deadline](Self::deadline) (`close`'s, or a timed `settle`'s), so a
    /// fan-out of follow-ups cannot hold a shutdown past its timeout. Without a deadline it
    /// waits like `enqueue`: a handler that may fill its own ring under `Block` should use
    /// [`enqueue_timeout`](Self::enqueue_timeout) (on a single dispatching thread, the
    /// publisher that would make room is the one waiting).
    ///
    /// # Errors
    /// As [`EventStore::enqueue`]: [`EnqueueError::Closed`] only once the close has finished,
    /// [`EnqueueError::Timeout`] when the deadline passed first.
    #[inline]
    pub fn enqueue(&self, event: E) -> Result<Enqueued, EnqueueError<E>> {
        self.store
            .enqueue_as(event, self.deadline, Intake::FollowUp)
    }

    /// [`enqueue`](Self::enqueue), waiting under `Block` at most `timeout` (and never past
    /// this context's deadline).
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    pub fn enqueue_timeout(
        &self,
        event: E,
        timeout: Duration,
    ) -> Result<Enqueued, EnqueueError<E>> {
        let deadline = earlier(Instant::now().checked_add(timeout), self.deadline);
        self.store.enqueue_as(event, deadline, Intake::FollowUp)
    }

    /// Enqueues a batch of follow-ups, all or nothing: [`EventStore::enqueue_batch`], accepted
    /// during a close and bounded by this context's deadline as [`enqueue`](Self::enqueue) is.
    ///
    /// # Errors
    /// As [`EventStore::enqueue_batch`]; [`BatchError::Closed`] only once the close has
    /// finished.
    pub fn enqueue_batch(&self, batch: &mut Vec<E>) -> Result<Enqueued, BatchError> {
        self.store
            .enqueue_batch_as(batch, self.deadline, Intake::FollowUp)
    }
}

impl<E: Event, Err> fmt::Debug for Context<'_, E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("sequence", &self.sequence)
            .field("projection", self.projection)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

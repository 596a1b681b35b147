//! [`Producer`]: the one producer of a store's producer lane, enforced by the type system.

use std::fmt;
use std::time::{Duration, Instant};

use super::lanes::{ExclusiveLane, Source};
use super::{Enqueued, EventStore, Shared};
use crate::error::{BatchError, EnqueueError};
use crate::event::Event;

/// The single producer of a store built with
/// [`Builder::build_with_producer`](super::Builder::build_with_producer).
///
/// `Send` (move it to the feed thread) but not `Clone`, and every enqueue takes `&mut self`:
/// there is never a second producer on its lane, so its claim is a plain store of the tail,
/// where [`EventStore::enqueue`] needs a CAS (`lock cmpxchg` on x86). The rest of the contract
/// is the store's: the [`OverrunPolicy`](crate::OverrunPolicy) (evicting, waiting, refusing),
/// all-or-nothing batches, [`close`](EventStore::close) (after which every enqueue is refused
/// with the event handed back; an enqueue racing the close either gets in and is dispatched
/// by it, or is refused), and the accounting.
///
/// **Order.** The producer's events are in its program order, and their sequence numbers
/// ([`Enqueued::sequence`], [`Context::sequence`](crate::Context::sequence)) count the
/// producer lane on their own, tagged with [`PRODUCER_LANE`](crate::PRODUCER_LANE) (without a
/// lane of its own, see [`is_single_producer_lane`](Self::is_single_producer_lane), they are
/// the shared ring's, untagged). Between the producer's events and those of the shared ring
/// (the store's `enqueue`, follow-ups, the timer, commits) there is no order: a publisher
/// takes from both lanes, the producer's first; a commit runs the lane's events accepted
/// before it, then the shared ring's up to its own.
///
/// **Progress.** An enqueue with room is wait-free: no read-modify-write, no loop. Under
/// `DropOldest` a full lane costs an eviction (one CAS on the lane's head, which publishers
/// also move); under `Block` the producer sleeps until a publisher makes room. The write may
/// wait, as on the shared ring, for a publisher still copying the previous lap's event out of
/// that slot.
///
/// **One producer, checked by the compiler.** A second handle cannot be made:
///
/// ```compile_fail,E0599
/// # use ringbus::{Dispatcher, Event, EventStore};
/// # struct Quote;
/// # impl Event for Quote { type Projection = (); fn projection(&self) {} }
/// let (_store, producer) = EventStore::builder(Dispatcher::<Quote>::new()).build_with_producer()?;
/// let second = producer.clone(); // no `Clone`
/// # Ok::<(), ringbus::BuildError>(())
/// ```
///
/// nor can two threads share one to enqueue (enqueueing takes `&mut self`):
///
/// ```compile_fail,E0596
/// # use ringbus::{Dispatcher, Event, EventStore};
/// # struct Quote;
/// # impl Event for Quote { type Projection = (); fn projection(&self) {} }
/// let (_store, producer) = EventStore::builder(Dispatcher::<Quote>::new()).build_with_producer()?;
/// let shared = std::sync::Arc::new(producer);
/// shared.enqueue(Quote); // cannot borrow data in an `Arc` as mutable
/// # Ok::<(), ringbus::BuildError>(())
/// ```
pub struct Producer<E: Event + Send + 'static, Err: 'static = crate::BoxError> {
    store: EventStore<E, Err>,
}

impl<E, Err> Producer<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    pub(super) fn new(store: EventStore<E, Err>) -> Self {
        Self { store }
    }

    /// This producer's lane, with the store's state: `None` when it has no lane of its own.
    #[inline(always)]
    fn exclusive(&mut self) -> Option<(&Shared<E, Err>, ExclusiveLane<'_, E>)> {
        let shared = &*self.store.shared;
        let lane = shared.producer_lane.as_ref()?;
        // SAFETY: `&mut self` makes this the lane's one producer while the `ExclusiveLane`
        // lives, and it lives no longer than that borrow.
        Some((shared, unsafe { ExclusiveLane::new(lane) }))
    }

    /// Puts an event in the producer lane (see [`EventStore::enqueue`]).
    ///
    /// # Errors
    /// [`EnqueueError::Closed`] after [`close`](EventStore::close); [`EnqueueError::Full`]
    /// when the lane is full under `ReturnError`. The event comes back in the error.
    #[inline(always)] // a claim and a write: worth its place in the caller's loop
    pub fn enqueue(&mut self, event: E) -> Result<Enqueued, EnqueueError<E>> {
        match self.exclusive() {
            Some((shared, lane)) => shared
                .try_enqueue(event, &lane)
                .or_else(|(event, refusal)| shared.enqueue_slow(event, refusal, None, &lane)),
            None => self.enqueue_shared(event),
        }
    }

    /// [`enqueue`](Self::enqueue) without a lane of its own: the store's shared one. Out of
    /// line, so that the lane path stays small enough to inline into the caller's loop.
    #[cold]
    #[inline(never)]
    fn enqueue_shared(&self, event: E) -> Result<Enqueued, EnqueueError<E>> {
        self.store.enqueue(event)
    }

    /// [`enqueue`](Self::enqueue), waiting at most `timeout` for room under `Block` (see
    /// [`EventStore::enqueue_timeout`]).
    pub fn enqueue_timeout(
        &mut self,
        event: E,
        timeout: Duration,
    ) -> Result<Enqueued, EnqueueError<E>> {
        match self.exclusive() {
            Some((shared, lane)) => shared.enqueue_timeout(event, timeout, &lane),
            None => self.store.enqueue_timeout(event, timeout),
        }
    }

    /// Puts a whole batch in the producer lane, all or nothing (see
    /// [`EventStore::enqueue_batch`]).
    pub fn enqueue_batch(&mut self, batch: &mut Vec<E>) -> Result<Enqueued, BatchError> {
        match self.exclusive() {
            Some((shared, lane)) => shared.enqueue_batch(batch, None, &lane),
            None => self.store.enqueue_batch(batch),
        }
    }

    /// [`enqueue_batch`](Self::enqueue_batch), waiting at most `timeout` for room under
    /// `Block` (see [`EventStore::enqueue_batch_timeout`]).
    pub fn enqueue_batch_timeout(
        &mut self,
        batch: &mut Vec<E>,
        timeout: Duration,
    ) -> Result<Enqueued, BatchError> {
        let deadline = Instant::now().checked_add(timeout);
        match self.exclusive() {
            Some((shared, lane)) => shared.enqueue_batch(batch, deadline, &lane),
            None => self.store.enqueue_batch_timeout(batch, timeout),
        }
    }

    /// The store this producer feeds.
    pub fn store(&self) -> &EventStore<E, Err> {
        &self.store
    }

    /// True when this producer has its own lane and claims with a plain store; false when
    /// the process cannot use asymmetric barriers (not Linux, a kernel before 4.14, or a
    /// sandbox that filters `membarrier`) and it claims on the shared ring with a CAS.
    pub fn is_single_producer_lane(&self) -> bool {
        self.store.shared.producer_lane.is_some()
    }

    /// How many events the lane has room for now. With a lane of its own, at least this
    /// many enqueues in a row go in without evicting, waiting or being refused: only this
    /// producer fills the lane, and publishers only empty it. Without one, the shared ring's
    /// room, which other producers may take first.
    pub fn room(&self) -> usize {
        let shared = &*self.store.shared;
        let (ring, depth) = match &shared.producer_lane {
            Some(lane) => (lane.ring(), Source::producer(lane).depth()),
            None => (&shared.ring, Source::shared(&shared.ring).depth()),
        };
        usize::try_from(ring.capacity() - depth).unwrap_or(usize::MAX)
    }
}

impl<E: Event + Send + 'static, Err: 'static> fmt::Debug for Producer<E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field(
                "single_producer_lane",
                &self.store.shared.producer_lane.is_some(),
            )
            .finish_non_exhaustive()
    }
}

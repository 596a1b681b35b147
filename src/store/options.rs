//! How a store is configured and built: [`OverrunPolicy`], [`DispatchMode`] and the [`Builder`].

use std::fmt;
use std::sync::Arc;

use super::Dispatcher;
use super::buffers::BufferPool;
use super::lanes::ProducerLane;
use super::layers::Layers;
use super::reports::ErrorHook;
use super::routes::RouteTable;
use super::{ErrorReport, EventStore, Producer, Shared};
use crate::error::BuildError;
use crate::event::{BoxError, Event};
use crate::metrics::{Counters, ProjectionRegistry, Sampling, SamplingConfig};
use crate::ring::{MAX_CAPACITY, Ring};
use crate::sync::AtomicU64;
use crate::wait::Sleepers;

/// What [`EventStore::enqueue`] does when the ring is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OverrunPolicy {
    /// Discard the oldest pending event to make room (GoEventBus's default). The discarded
    /// event is dropped on the enqueuing thread, counted in [`Metrics::dropped`](crate::Metrics::dropped), and the
    /// count is returned in [`Enqueued::dropped`](crate::Enqueued::dropped).
    ///
    /// An event is evicted only when the ring is full at the moment of the eviction (fewer
    /// free slots than the enqueue needs) and the event is already written: an event another
    /// producer is still writing is never evicted; the evicting producer retries instead.
    #[default]
    DropOldest,
    /// Wait for room: spin briefly, then yield, then park until a publisher takes events out.
    /// [`EventStore::enqueue_timeout`] bounds the wait; closing the store wakes waiters, who get
    /// [`EnqueueError::Closed`](crate::EnqueueError::Closed) with their event. In [`DispatchMode::Async`] the room also
    /// waits for the pool (see [`Builder::max_in_flight`]).
    Block,
    /// Return [`EnqueueError::Full`](crate::EnqueueError::Full) at once, with the event.
    ReturnError,
}

/// How [`EventStore::publish`] runs handlers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DispatchMode {
    /// In the calling thread, in FIFO order. `publish` returns when all handlers have run.
    #[default]
    Sync,
    /// Fork-join on the rayon pool: `publish` returns when all handlers have run. A batch too
    /// small to pay for the fork runs in the caller instead (see the crate docs).
    Parallel,
    /// Hand the batch to the rayon pool and return at once (GoEventBus's `Async = true`);
    /// [`EventStore::drain`] waits for it.
    Async,
}

/// Configures an [`EventStore`]; from [`EventStore::builder`].
pub struct Builder<E: Event, Err = BoxError> {
    dispatcher: Dispatcher<E, Err>,
    capacity: usize,
    policy: OverrunPolicy,
    mode: DispatchMode,
    pool: Option<Arc<rayon::ThreadPool>>,
    max_in_flight: Option<usize>,
    on_error: Option<ErrorHook<E::Projection, Err>>,
    filter: Option<super::StoreFilter<E>>,
    /// One in how many events has its latencies sampled; `None`: none.
    sample_latency: Option<u64>,
}

impl<E, Err> Builder<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Ring capacity in events: a power of two, at least 1. Default 65,536.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// What enqueue does when the ring is full. Default [`OverrunPolicy::DropOldest`].
    pub fn policy(mut self, policy: OverrunPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How `publish` runs handlers. Default [`DispatchMode::Sync`].
    pub fn mode(mut self, mode: DispatchMode) -> Self {
        self.mode = mode;
        self
    }

    /// The rayon pool for [`DispatchMode::Parallel`] and [`DispatchMode::Async`]. Default:
    /// rayon's global pool.
    pub fn thread_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The most events [`DispatchMode::Async`] may have handed to the pool and not yet
    /// finished: a `publish` hands out only what fits under it, and the pool's jobs hand out
    /// the rest of what it was asked to dispatch as they finish; meanwhile the ring fills and
    /// producers meet the overrun policy (`Block` waits, `ReturnError` refuses, `DropOldest`
    /// evicts) instead of the pool's queue growing without bound. At least 1.
    /// Default: the ring's capacity. The other modes finish their work inside `publish`.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = Some(max);
        self
    }

    /// Called for every handler error and panic, for a panic in an event's `projection()` or
    /// `Drop`, and for each event discarded when the store is dropped. Runs on the thread
    /// where it happened; a panic in it is caught and ignored.
    pub fn on_error<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ErrorReport<'_, E::Projection, Err>) + Send + Sync + 'static,
    {
        self.on_error = Some(Box::new(hook));
        self
    }

    /// A store-wide filter, asked before routing each event: an event it returns `false` for
    /// reaches no handler and is counted in [`Metrics::filtered`](crate::Metrics::filtered).
    /// It runs on the publishing thread; a panic in it counts the event failed (and is
    /// reported like a panicking `projection()`). Subscriptions have filters of their own
    /// ([`SubscriptionBuilder::filter`](crate::SubscriptionBuilder::filter)).
    pub fn filter<F>(mut self, filter: F) -> Self
    where
        F: Fn(&E) -> bool + Send + Sync + 'static,
    {
        self.filter = Some(Box::new(filter));
        self
    }

    /// Samples latencies: one event in `every` (a power of two; 1 samples every event) has
    /// its wait in the ring (enqueue to dispatch) and its handlers' run time recorded in its
    /// projection's HdrHistograms, read with [`EventStore::latency`]. Off by default; the
    /// cost per sampled event is two clock reads and one short lock (the bench report
    /// measures 1 in 64 and 1 in 1).
    ///
    /// The wait is measured from the enqueue to the moment the event's handlers start. It is
    /// read from a stamp array with room for the ring's events and `max_in_flight` more (at
    /// most the ring's capacity more; a stamp array that cannot be allocated fails the build
    /// with [`BuildError::AllocationFailed`]); an
    /// event whose stamp was reused before its handlers started (an async batch that rayon
    /// started after newer ones had cycled that many events through, or, on a tiny ring,
    /// `DropOldest` evictions racing past it between its take and its run) has its wait
    /// counted in [`ProjectionLatency::wait_lost`](crate::ProjectionLatency), not guessed.
    ///
    /// [`build`](Self::build) fails with [`BuildError::SampleRate`] unless `every` is a power
    /// of two.
    pub fn sample_latency(mut self, every: u64) -> Self {
        self.sample_latency = Some(every);
        self
    }

    /// Allocates the ring and builds the store.
    pub fn build(self) -> Result<EventStore<E, Err>, BuildError> {
        self.build_lanes(false)
    }

    /// Builds the store and its one [`Producer`]: a handle that is `Send` but not `Clone`, and
    /// enqueues through `&mut self`, so the type system makes it the only producer of its lane
    /// and its claim is a plain store of the tail instead of a CAS. Everything else (the
    /// store's own `enqueue`, handlers' follow-ups, the timer, transactions) still goes in
    /// through the store's shared ring, which publishers drain alongside the producer's.
    ///
    /// The fast claim needs asymmetric barriers (Linux `membarrier`, see
    /// [`Producer::is_single_producer_lane`]); without them the producer claims on the shared
    /// ring like every other producer, with the same semantics. The producer lane allocates a
    /// second ring of the same capacity.
    ///
    /// ```
    /// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    /// struct Quote(u64);
    /// impl Event for Quote {
    ///     type Projection = ();
    ///     fn projection(&self) {}
    /// }
    /// let (store, mut feed) = EventStore::builder(Dispatcher::<Quote>::new())
    ///     .capacity(1024)
    ///     .policy(OverrunPolicy::DropOldest)
    ///     .build_with_producer()?;
    /// let feed_thread = std::thread::spawn(move || {
    ///     for price in 0..100 {
    ///         feed.enqueue(Quote(price)).map_err(|e| e.kind())?;
    ///     }
    ///     Ok::<_, ringbus::EnqueueErrorKind>(())
    /// });
    /// feed_thread.join().unwrap()?;
    /// assert_eq!(store.publish().dispatched, 100);
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    #[allow(clippy::type_complexity)] // a pair, named where it is destructured
    pub fn build_with_producer(self) -> Result<(EventStore<E, Err>, Producer<E, Err>), BuildError> {
        let store = self.build_lanes(true)?;
        Ok((store.clone(), Producer::new(store)))
    }

    fn build_lanes(self, producer_lane: bool) -> Result<EventStore<E, Err>, BuildError> {
        let capacity = self.capacity;
        if capacity == 0 {
            return Err(BuildError::ZeroCapacity);
        }
        if !capacity.is_power_of_two() {
            return Err(BuildError::NotPowerOfTwo(capacity));
        }
        if capacity > MAX_CAPACITY {
            return Err(BuildError::TooLarge {
                capacity,
                max: MAX_CAPACITY,
            });
        }
        let max_in_flight = self.max_in_flight.unwrap_or(capacity);
        if max_in_flight == 0 {
            return Err(BuildError::ZeroMaxInFlight);
        }
        let sampling = match self.sample_latency {
            Some(every) if every.is_power_of_two() => Some(SamplingConfig::one_in(every)),
            Some(every) => return Err(BuildError::SampleRate(every)),
            None => None,
        };
        let no_memory = || BuildError::AllocationFailed {
            capacity,
            bytes: capacity.saturating_mul(std::mem::size_of::<E>() + 8),
        };
        let ring = Ring::try_new(capacity).ok_or_else(no_memory)?;
        let producer_lane = match producer_lane {
            true => ProducerLane::try_new(capacity).ok_or_else(no_memory)?,
            false => None,
        };
        // Stamps outlive their slot by the events a publisher may hold taken but not yet
        // run (async batches, up to `max_in_flight`), so that a sampled event's stamp is
        // still there when its handlers start.
        let sampling_lanes = match sampling {
            Some(config) => Some(
                Sampling::try_new(config, capacity, max_in_flight, producer_lane.is_some())
                    .ok_or_else(no_memory)?,
            ),
            None => None,
        };
        Ok(EventStore {
            shared: Arc::new(Shared {
                sampling: sampling_lanes,
                ring,
                producer_lane,
                routes: RouteTable::new(self.dispatcher, ProjectionRegistry::new(sampling)),
                filter: self.filter,
                policy: self.policy,
                mode: self.mode,
                counters: Counters::default(),
                on_error: self.on_error,
                pool: self.pool,
                max_in_flight: max_in_flight as u64,
                async_limits: [AtomicU64::new(0), AtomicU64::new(0)],
                buffers: BufferPool::new(capacity as u64),
                blocked: Sleepers::new(),
                idle_consumers: Sleepers::new(),
                layers: Layers::default(),
                deferred: std::sync::OnceLock::new(),
                settled: std::sync::OnceLock::new(),
            }),
        })
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// A store of `capacity` slots (a power of two) with the given overrun policy, dispatching
    /// synchronously. GoEventBus's `NewEventStore`.
    pub fn new(
        dispatcher: Dispatcher<E, Err>,
        capacity: usize,
        policy: OverrunPolicy,
    ) -> Result<Self, BuildError> {
        Self::builder(dispatcher)
            .capacity(capacity)
            .policy(policy)
            .build()
    }

    /// A [`Builder`] for a store with every option.
    pub fn builder(dispatcher: Dispatcher<E, Err>) -> Builder<E, Err> {
        Builder {
            dispatcher,
            capacity: 1 << 16,
            policy: OverrunPolicy::default(),
            mode: DispatchMode::default(),
            pool: None,
            max_in_flight: None,
            on_error: None,
            filter: None,
            sample_latency: None,
        }
    }
}

impl<E: Event, Err> fmt::Debug for Builder<E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("capacity", &self.capacity)
            .field("policy", &self.policy)
            .field("mode", &self.mode)
            .field("dispatcher", &self.dispatcher)
            .finish_non_exhaustive()
    }
}

//! [`EventStore`]: the handle every user holds, and the state its clones share.
//!
//! One concern a file: `options.rs` (policies, modes, the builder), `enqueue.rs` (into the
//! ring), `publish.rs` (out of the ring), `run.rs` (running handlers), `shutdown.rs` (`drain`,
//! `close`, dropping), `disposal.rs` (dropping events and reporting failures), `buffers.rs`,
//! `reports.rs` (what the store tells its callers) and `layers.rs` (the seam layers attach to).

use std::fmt;
use std::sync::Arc;

use crate::event::{BoxError, Event};
use crate::metrics::{Counters, Metrics, ProjectionLatency, ProjectionMetrics};
use crate::ring::Ring;
use crate::sync::AtomicU64;
use crate::wait::Sleepers;
use lanes::{ProducerLane, Source};

mod buffers;
mod consumer;
mod context;
mod deferred;
mod dispatcher;
mod disposal;
mod enqueue;
mod fork;
mod held;
mod lanes;
mod layers;
mod local;
mod options;
mod producer;
mod publish;
mod reports;
mod routes;
mod run;
mod settle;
mod settled;
mod shutdown;

use layers::Layers;
use reports::ErrorHook;

pub(crate) use buffers::BufferPool;
pub use consumer::{ConsumerThread, WaitStrategy};
pub use context::Context;
pub(crate) use deferred::Deferred;
pub use dispatcher::{Dispatcher, Variant};
pub(crate) use held::{Held, Standing};
pub use lanes::PRODUCER_LANE;
pub(crate) use layers::{Layer, WeakStore};
pub use local::LocalDispatcher;
pub use options::{Builder, DispatchMode, OverrunPolicy};
pub use producer::Producer;
pub use reports::{Enqueued, ErrorKind, ErrorReport, PublishReport};
pub(crate) use routes::{Delivery, Entry, RouteTable, Subscriber};
pub(crate) use run::Outcomes;
pub(crate) use run::RunningHandlers;
pub use settle::{Settle, SettleReport};

/// The store-wide filter: true lets the event through.
type StoreFilter<E> = Box<dyn Fn(&E) -> bool + Send + Sync>;

/// The state every handle of a store shares.
struct Shared<E: Event, Err> {
    /// The shared lane: any producer claims here with a CAS.
    ring: Ring<E>,
    /// The [`Producer`]'s lane, for a store built with one (and a process that can use
    /// asymmetric barriers).
    producer_lane: Option<ProducerLane<E>>,
    /// The handlers, looked up per event; runtime subscriptions swap in new versions.
    routes: RouteTable<E, Err>,
    /// The store-wide filter ([`Builder::filter`]): events it turns away reach no handler.
    filter: Option<StoreFilter<E>>,
    policy: OverrunPolicy,
    mode: DispatchMode,
    counters: Counters,
    on_error: Option<ErrorHook<E::Projection, Err>>,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// The most events [`DispatchMode::Async`] hands to the pool before they finish.
    max_in_flight: u64,
    /// Per lane (shared, producer), the highest tail an async `publish` asked to be dispatched
    /// up to: the pool's jobs hand out what is left below it as they finish.
    async_limits: [AtomicU64; 2],
    /// Emptied buffers for publishers to reuse, so publishing allocates nothing in steady state.
    buffers: BufferPool<E>,
    /// Producers blocked on a full ring (`Block`).
    blocked: Sleepers,
    /// Consumers asleep in `publish_wait` on an empty ring.
    idle_consumers: Sleepers,
    /// Latency sampling ([`Builder::sample_latency`]), when on.
    sampling: Option<crate::metrics::Sampling>,
    /// What layers built on the core (the timer) keep in the store; told of shutdown.
    layers: Layers<E>,
    /// Work a layer holds for publishing threads to run later (retries), once registered.
    deferred: std::sync::OnceLock<std::sync::Arc<dyn Deferred<E, Err>>>,
    /// The layer told of producer-lane events that settled as handled, once registered.
    settled: std::sync::OnceLock<settled::Settled>,
}

/// A ring-buffer event store: any thread enqueues, `publish` runs the handlers.
///
/// Cloning is cheap and every clone is a handle to the same store. See the
/// [crate docs](crate) for the full contract (ordering, overrun, accounting, shutdown).
///
/// ```
/// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// struct Deposit(u64);
/// impl Event for Deposit {
///     type Projection = &'static str;
///     fn projection(&self) -> &'static str { "deposit" }
/// }
///
/// let total = Arc::new(AtomicU64::new(0));
/// let mut dispatcher = Dispatcher::<Deposit>::new();
/// let sum = total.clone();
/// dispatcher.on("deposit", move |_ctx, d| {
///     sum.fetch_add(d.0, Ordering::Relaxed);
///     Ok(())
/// });
///
/// let store = EventStore::new(dispatcher, 1024, OverrunPolicy::ReturnError)?;
/// for amount in 1..=10 {
///     store.enqueue(Deposit(amount))?;
/// }
/// let report = store.publish();
/// assert_eq!(report.dispatched, 10);
/// assert_eq!(total.load(Ordering::Relaxed), 55);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventStore<E: Event, Err = BoxError> {
    shared: Arc<Shared<E, Err>>,
}

impl<E: Event, Err> Clone for EventStore<E, Err> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<E: Event, Err> Shared<E, Err> {
    /// The lanes publishers take from: the producer lane first (when there is one), then the
    /// shared one.
    #[inline]
    fn sources(&self) -> impl Iterator<Item = Source<'_, E>> {
        let producer = self.producer_lane.as_ref().map(Source::producer);
        producer
            .into_iter()
            .chain(std::iter::once(Source::shared(&self.ring)))
    }

    /// Every lane with its tail now: what a publish that starts now may take.
    #[inline]
    fn tails(&self) -> impl Iterator<Item = (Source<'_, E>, u64)> {
        let tails = [
            self.producer_lane
                .as_ref()
                .map(|lane| (Source::producer(lane), lane.ring().tail())),
            Some((Source::shared(&self.ring), self.ring.tail())),
        ];
        tails.into_iter().flatten()
    }

    /// Events ever taken out, over every lane (the head is read before the tail in each, as
    /// every count of pending events does, so that pending is never understated).
    #[inline]
    fn head(&self) -> u64 {
        self.sources().map(|s| s.ring.head()).sum()
    }

    /// Events ever claimed, over every lane.
    #[inline]
    fn tail(&self) -> u64 {
        self.sources().map(|s| s.ring.tail()).sum()
    }

    /// True when some lane has a claimed event not yet taken.
    #[inline]
    fn has_pending(&self) -> bool {
        self.sources().any(|s| s.ring.head() < s.ring.tail())
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// The live counters, for layers that count (the subscription layer's retries).
    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// The route table, for the subscription layer.
    pub(crate) fn routes(&self) -> &RouteTable<E, Err> {
        &self.shared.routes
    }

    /// Reports a failure outside a run (a retry's) to the `on_error` hook.
    pub(crate) fn report_failure(
        &self,
        projection: &E::Projection,
        sequence: u64,
        failure: &crate::error::HandlerFailure<Err>,
    ) {
        self.shared.report_failure(projection, sequence, failure);
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        for lane in self.shared.sources() {
            self.shared.counters.note_depth(lane.depth());
        }
        let head = self.shared.head();
        let tail = self.shared.tail();
        let mut metrics = self.shared.counters.snapshot(head, tail);
        if let Some(lane) = &self.shared.producer_lane {
            metrics.dropped += lane.dropped();
        }
        self.shared.layers.add_metrics(&mut metrics);
        metrics
    }

    /// Counts per projection, sorted by the projection's `Debug` form: every projection with
    /// a route, and every one an event was seen with (up to
    /// [`MAX_PROJECTIONS`](crate::MAX_PROJECTIONS)). See [`ProjectionMetrics`] for when an
    /// event is counted and the sums that hold.
    ///
    /// ```
    /// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    /// struct Ev(&'static str);
    /// impl Event for Ev {
    ///     type Projection = &'static str;
    ///     fn projection(&self) -> &'static str { self.0 }
    /// }
    /// let mut dispatcher = Dispatcher::<Ev>::new();
    /// dispatcher.on("order", |_, _| Ok(()));
    /// let store = EventStore::new(dispatcher, 8, OverrunPolicy::ReturnError)?;
    /// for p in ["order", "order", "nobody"] {
    ///     store.enqueue(Ev(p))?;
    /// }
    /// store.publish();
    /// let counts = store.projection_metrics();
    /// assert_eq!(counts[0].projection, r#""nobody""#);
    /// assert_eq!((counts[0].published, counts[0].unrouted), (1, 1));
    /// assert_eq!((counts[1].published, counts[1].processed), (2, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn projection_metrics(&self) -> Vec<ProjectionMetrics> {
        self.shared.routes.projections().snapshot()
    }

    /// Sampled latencies per projection (wait in the ring, handler run time), sorted by the
    /// projection's `Debug` form; empty unless the store was built with
    /// [`Builder::sample_latency`].
    pub fn latency(&self) -> Vec<ProjectionLatency> {
        self.shared.routes.projections().latency()
    }

    /// Every sampled projection's name and copies of its latency histograms (wait, run), for
    /// an exporter.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn latency_histograms(
        &self,
    ) -> Vec<(
        String,
        hdrhistogram::Histogram<u64>,
        hdrhistogram::Histogram<u64>,
    )> {
        self.shared.routes.projections().histograms()
    }

    /// The subscriptions whose circuit breaker is open now: each one's projection (its `Debug`
    /// form) and id.
    pub(crate) fn open_breakers(&self) -> Vec<(String, u64)> {
        let table = self.shared.routes.load();
        let mut open: Vec<(String, u64)> = table
            .iter()
            .flat_map(|(projection, entries)| {
                entries
                    .iter()
                    .filter_map(|e| e.open_breaker())
                    .map(move |id| (crate::metrics::name_of(projection), id))
            })
            .collect();
        open.sort_unstable();
        open.dedup();
        open
    }

    /// The events waiting in the fullest lane (the shared ring, or a [`Producer`]'s).
    pub(crate) fn deepest_lane(&self) -> u64 {
        self.shared
            .sources()
            .map(|lane| lane.depth())
            .max()
            .unwrap_or(0)
    }

    /// Events waiting in the ring (in both lanes, for a store with a [`Producer`]).
    pub fn pending(&self) -> u64 {
        let head = self.shared.head();
        self.shared.tail().saturating_sub(head)
    }

    /// The ring's capacity (the shared ring's; a [`Producer`]'s lane has as many slots).
    pub fn capacity(&self) -> usize {
        self.shared.ring.capacity() as usize
    }

    /// True once [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.shared.ring.is_closed()
    }

    /// The overrun policy.
    pub fn policy(&self) -> OverrunPolicy {
        self.shared.policy
    }

    /// The dispatch mode.
    pub fn mode(&self) -> DispatchMode {
        self.shared.mode
    }
}

impl<E: Event, Err> fmt::Debug for EventStore<E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("EventStore")
            .field("ring", &s.ring)
            .field("policy", &s.policy)
            .field("mode", &s.mode)
            .field("routes", &s.routes)
            .finish_non_exhaustive()
    }
}

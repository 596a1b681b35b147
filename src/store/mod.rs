//! [`EventStore`]: the handle every user holds, and the state its clones share.
//!
//! One concern a file: `options.rs` (policies, modes, the builder), `enqueue.rs` (into the
//! ring), `publish.rs` (out of the ring), `run.rs` (running handlers), `shutdown.rs` (`drain`,
//! `close`, dropping), `disposal.rs` (dropping events and reporting failures), `buffers.rs`,
//! `reports.rs` (what the store tells its callers) and `layers.rs` (the seam layers attach to).

use std::fmt;
use std::sync::Arc;

use crate::event::{BoxError, Event};
use crate::metrics::{Counters, Metrics};
use crate::ring::Ring;
use crate::sync::AtomicU64;
use crate::wait::Sleepers;
use routes::RouteTable;

mod buffers;
mod consumer;
mod context;
mod dispatcher;
mod disposal;
mod enqueue;
mod layers;
mod local;
mod options;
mod publish;
mod reports;
mod routes;
mod run;
mod settle;
mod shutdown;

use layers::Layers;
use reports::ErrorHook;

pub(crate) use buffers::BufferPool;
pub use consumer::{ConsumerThread, WaitStrategy};
pub use context::Context;
pub use dispatcher::{Dispatcher, Variant};
pub(crate) use layers::{Layer, WeakStore};
pub use local::LocalDispatcher;
pub use options::{Builder, DispatchMode, OverrunPolicy};
pub use reports::{Enqueued, ErrorKind, ErrorReport, PublishReport};
pub(crate) use run::Outcomes;
pub use settle::{Settle, SettleReport};

/// The state every handle of a store shares.
struct Shared<E: Event, Err> {
    ring: Ring<E>,
    /// The handlers, looked up per event (the seam where subscriptions will swap them).
    routes: RouteTable<E, Err>,
    policy: OverrunPolicy,
    mode: DispatchMode,
    counters: Counters,
    on_error: Option<ErrorHook<E::Projection, Err>>,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// The most events [`DispatchMode::Async`] hands to the pool before they finish.
    max_in_flight: u64,
    /// The highest tail an async `publish` asked to be dispatched up to: the pool's jobs hand
    /// out what is left below it as they finish.
    async_limit: AtomicU64,
    /// Emptied buffers for publishers to reuse, so publishing allocates nothing in steady state.
    buffers: BufferPool<E>,
    /// Producers blocked on a full ring (`Block`).
    blocked: Sleepers,
    /// Consumers asleep in `publish_wait` on an empty ring.
    idle_consumers: Sleepers,
    /// What layers built on the core (the timer) keep in the store; told of shutdown.
    layers: Layers<E>,
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

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        let head = self.shared.ring.head();
        let tail = self.shared.ring.tail();
        let mut metrics = self.shared.counters.snapshot(head, tail);
        self.shared.layers.add_metrics(&mut metrics);
        metrics
    }

    /// Events waiting in the ring.
    pub fn pending(&self) -> u64 {
        let head = self.shared.ring.head();
        self.shared.ring.tail().saturating_sub(head)
    }

    /// The ring's capacity.
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

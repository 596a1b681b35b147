//! [`EventStore`]: enqueue into the ring, publish to the handlers, drain and close.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::dispatcher::{BoxError, Dispatcher, Event};
use crate::error::{BatchError, BuildError, EnqueueError, TimeoutError};
use crate::metrics::{Counters, Metrics, Tally};
use crate::panics::{self, Payload, dispose, drop_caught};
use crate::ring::{ClaimError, Eviction, MAX_CAPACITY, Ring};
use crate::routes::Routes;
use crate::schedule::Timers;
use crate::sync::{self, AtomicUsize, Backoff, Condvar, Mutex, Ordering, fence};

mod run;

/// What [`EventStore::enqueue`] does when the ring is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OverrunPolicy {
    /// Discard the oldest pending event to make room (GoEventBus's default). The discarded
    /// event is dropped on the enqueuing thread, counted in [`Metrics::dropped`], and the
    /// count is returned in [`Enqueued::dropped`].
    ///
    /// An event is evicted only when the ring is full at the moment of the eviction (fewer
    /// free slots than the enqueue needs) and the event is already written: an event another
    /// producer is still writing is never evicted; the evicting producer retries instead.
    #[default]
    DropOldest,
    /// Wait for room: spin briefly, then yield, then park until a publisher takes events out.
    /// [`EventStore::enqueue_timeout`] bounds the wait; closing the store wakes waiters, who get
    /// [`EnqueueError::Closed`] with their event. In [`DispatchMode::Async`] the room also
    /// waits for the pool (see [`Builder::max_in_flight`]).
    Block,
    /// Return [`EnqueueError::Full`] at once, with the event.
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

/// An accepted enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// Sequence number of the event (of the first event, for a batch).
    pub sequence: u64,
    /// Older events `DropOldest` discarded to make room for this one (or this batch).
    pub dropped: u64,
}

/// What a [`publish`](EventStore::publish) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReport {
    /// Events taken out of the ring by this call. In [`DispatchMode::Async`] they were handed
    /// to the pool, and the outcome fields below stay 0: see [`EventStore::metrics`].
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
    fn from_tally(dispatched: u64, t: Tally) -> Self {
        Self {
            dispatched,
            processed: t.processed,
            failed: t.failed,
            unrouted: t.unrouted,
            handler_errors: t.handler_errors,
        }
    }
}

/// A failure reported to the [`Builder::on_error`] callback.
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
    /// [`Metrics::drop_panics`].
    DropPanic(&'a str),
}

type ErrorHook<K, Err> = Box<dyn Fn(&ErrorReport<'_, K, Err>) + Send + Sync>;

/// Events a sync publisher takes out of the ring per claim: a few KiB, so the chunk stays in
/// L1 between the copy-out and the handlers, and producers get the slots back early.
const SYNC_CHUNK: u64 = 256;
/// The longest `drain` / `close` sleeps between two looks at the in-flight count.
const IDLE_POLL_MAX: Duration = Duration::from_millis(1);
/// Spare buffers kept for publishers.
const BUFFER_POOL: usize = 8;

/// Producers blocked on a full ring under `Block`, waiting for a publisher to make room.
///
/// The waker checks `count` after making progress and only takes the lock when someone waits;
/// the waiter registers in `count` before re-checking the condition. A SeqCst fence sits between
/// the write and the read on both sides (a Dekker pattern), so either the waker sees the waiter
/// or the waiter sees the progress.
///
/// The fences are what make this hold under loom too: loom models SeqCst *accesses* as AcqRel
/// only (see its README), so with SeqCst loads and RMWs alone it reports lost wake-ups that the
/// C++ memory model rules out. The fences cost one barrier per wake check (per chunk of events,
/// not per event, and only under `Block`), right after an RMW that is already a full barrier on
/// x86.
#[derive(Debug)]
struct Waiters {
    count: AtomicUsize,
    lock: Mutex<()>,
    condvar: Condvar,
}

impl Waiters {
    fn new() -> Self {
        Self {
            count: AtomicUsize::new(0),
            lock: Mutex::new(()),
            condvar: Condvar::new(),
        }
    }

    /// Wakes all waiters if there are any.
    #[inline]
    fn wake(&self) {
        // Orders the caller's progress (head CAS, `in_flight` decrement) before the read of
        // `count`; pairs with the fence in `wait`.
        fence(Ordering::SeqCst);
        if self.count.load(Ordering::SeqCst) > 0 {
            self.wake_all();
        }
    }

    #[cold]
    fn wake_all(&self) {
        drop(sync::lock(&self.lock));
        self.condvar.notify_all();
    }

    /// Blocks until `ready()` or `deadline`; returns `ready()`'s last answer.
    fn wait(&self, deadline: Option<Instant>, ready: impl Fn() -> bool) -> bool {
        let backoff = Backoff::new();
        while !backoff.is_completed() {
            if ready() {
                return true;
            }
            backoff.snooze();
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        // Orders our registration before `ready()` reads the condition; pairs with `wake`.
        fence(Ordering::SeqCst);
        let mut guard = sync::lock(&self.lock);
        let outcome = loop {
            if ready() {
                break true;
            }
            let (g, timed_out) = sync::wait_until(&self.condvar, guard, deadline);
            guard = g;
            if timed_out {
                break ready();
            }
        };
        drop(guard);
        self.count.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

/// The state every handle of a store shares.
struct Shared<E: Event, Err> {
    ring: Ring<E>,
    routes: Routes<E, Err>,
    policy: OverrunPolicy,
    mode: DispatchMode,
    counters: Counters,
    on_error: Option<ErrorHook<E::Projection, Err>>,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// The most events [`DispatchMode::Async`] hands to the pool before they finish.
    max_in_flight: u64,
    /// Emptied buffers for publishers to reuse, so publishing allocates nothing in steady state.
    buffers: ArrayQueue<Vec<E>>,
    /// Producers blocked on a full ring (`Block`).
    blocked: Waiters,
    /// Scheduled events and the timer thread that fires them (`schedule.rs`).
    timers: Timers<E>,
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

/// Configures an [`EventStore`]; from [`EventStore::builder`].
pub struct Builder<E: Event, Err = BoxError> {
    dispatcher: Dispatcher<E, Err>,
    capacity: usize,
    policy: OverrunPolicy,
    mode: DispatchMode,
    pool: Option<Arc<rayon::ThreadPool>>,
    max_in_flight: Option<usize>,
    on_error: Option<ErrorHook<E::Projection, Err>>,
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
    /// finished: a `publish` hands out only what fits under it and leaves the rest in the
    /// ring, so producers meet the overrun policy (`Block` waits, `ReturnError` refuses,
    /// `DropOldest` evicts) instead of the pool's queue growing without bound. At least 1.
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

    /// Allocates the ring and builds the store.
    pub fn build(self) -> Result<EventStore<E, Err>, BuildError> {
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
        let ring = Ring::try_new(capacity).ok_or(BuildError::AllocationFailed {
            capacity,
            bytes: capacity.saturating_mul(std::mem::size_of::<E>() + 8),
        })?;
        Ok(EventStore {
            shared: Arc::new(Shared {
                ring,
                routes: Routes::new(self.dispatcher),
                policy: self.policy,
                mode: self.mode,
                counters: Counters::default(),
                on_error: self.on_error,
                pool: self.pool,
                max_in_flight: max_in_flight as u64,
                buffers: ArrayQueue::new(BUFFER_POOL),
                blocked: Waiters::new(),
                timers: Timers::new(),
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
        }
    }

    /// Puts an event in the ring for the next [`publish`](Self::publish) (GoEventBus's
    /// `Subscribe`). Lock-free unless the ring is full under [`OverrunPolicy::Block`].
    ///
    /// # Errors
    /// [`EnqueueError::Closed`] after [`close`](Self::close); [`EnqueueError::Full`] when the
    /// ring is full under [`OverrunPolicy::ReturnError`]. The event comes back in the error.
    #[inline]
    pub fn enqueue(&self, event: E) -> Result<Enqueued, EnqueueError<E>> {
        self.shared
            .try_enqueue(event)
            .or_else(|(event, refusal)| self.shared.enqueue_slow(event, refusal, None))
    }

    /// Like [`enqueue`](Self::enqueue), but under [`OverrunPolicy::Block`] waits at most
    /// `timeout` for room, then returns [`EnqueueError::Timeout`] with the event. Under the
    /// other policies it is `enqueue`.
    pub fn enqueue_timeout(
        &self,
        event: E,
        timeout: Duration,
    ) -> Result<Enqueued, EnqueueError<E>> {
        // The deadline is only worked out if there is no room at once.
        self.shared.try_enqueue(event).or_else(|(event, refusal)| {
            let deadline = Instant::now().checked_add(timeout);
            self.shared.enqueue_slow(event, refusal, deadline)
        })
    }

    /// Enqueues a whole batch, all or nothing: the events take consecutive sequence numbers
    /// with no other producer's event between them, and a publisher never sees part of the
    /// batch without the rest becoming visible right behind it. One atomic claim for the whole
    /// batch makes this the fastest way in.
    ///
    /// On success `batch` is left empty (its allocation kept, for reuse next tick). On error it
    /// is left untouched: every event is handed back. A batch the ring can never hold fails
    /// with [`BatchError::TooLarge`] under every policy. Full ring: `DropOldest` discards as
    /// many old events as needed; `Block` waits for room for the whole batch; `ReturnError`
    /// fails with [`BatchError::Full`].
    ///
    /// ```
    /// # use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    /// # struct Ev(u32);
    /// # impl Event for Ev { type Projection = u8; fn projection(&self) -> u8 { 0 } }
    /// let store = EventStore::new(Dispatcher::<Ev>::new(), 8, OverrunPolicy::ReturnError)?;
    /// let mut batch: Vec<Ev> = (0..6).map(Ev).collect();
    /// let first = store.enqueue_batch(&mut batch)?;
    /// assert_eq!((first.sequence, batch.len()), (0, 0));
    ///
    /// batch.extend((0..6).map(Ev));
    /// assert!(store.enqueue_batch(&mut batch).is_err()); // only 2 free slots
    /// assert_eq!(batch.len(), 6); // handed back
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn enqueue_batch(&self, batch: &mut Vec<E>) -> Result<Enqueued, BatchError> {
        self.shared.enqueue_batch(batch, None)
    }

    /// [`enqueue_batch`](Self::enqueue_batch) that waits at most `timeout` for room under
    /// [`OverrunPolicy::Block`].
    pub fn enqueue_batch_timeout(
        &self,
        batch: &mut Vec<E>,
        timeout: Duration,
    ) -> Result<Enqueued, BatchError> {
        self.shared
            .enqueue_batch(batch, Instant::now().checked_add(timeout))
    }

    /// Dispatches the events enqueued before the call (GoEventBus's `Publish`), according to
    /// the store's [`DispatchMode`]. Events enqueued while it runs, by handlers or other
    /// threads, wait for the next call; so does an event another thread is still in the middle
    /// of enqueueing, with those behind it (see the crate docs on ordering): `publish` never
    /// waits for a producer.
    ///
    /// Safe to call from several threads at once: each event is dispatched by exactly one of
    /// them.
    pub fn publish(&self) -> PublishReport {
        self.shared.publish(None)
    }

    /// Waits until no handler is running: every async batch handed out, and every concurrent
    /// `publish`, has finished. Does not dispatch pending events (call [`publish`](Self::publish)
    /// first for that). Do not call it from a handler: it would wait for itself.
    ///
    /// It polls (spinning briefly, then sleeping up to 1 ms between looks), so it may return up
    /// to about a millisecond after the last handler finished; in exchange publishing never
    /// pays for waking it.
    ///
    /// # Errors
    /// [`TimeoutError`] if work is still running after `timeout` (a zero timeout fails at once
    /// if anything is in flight). Nothing is lost.
    pub fn drain(&self, timeout: Duration) -> Result<(), TimeoutError> {
        self.shared.wait_idle(Instant::now().checked_add(timeout))
    }

    /// Shuts the store down (GoEventBus's `Close`): from now on every enqueue fails with the
    /// event handed back (producers blocked in `Block` wake up with theirs), then every event
    /// already accepted is dispatched in the store's mode and in-flight work is waited for,
    /// all within `timeout`. Returns what the final dispatch did. Calling it again is harmless.
    ///
    /// Scheduled events still waiting in the timer are cancelled (counted in
    /// [`Metrics::cancelled`], their handles say so) and the timer thread is stopped; an event
    /// the timer was already firing is accepted or refused like any concurrent enqueue.
    ///
    /// # Errors
    /// [`TimeoutError`] when the deadline passes first; the events not yet dispatched stay in
    /// the ring, and a later `publish` or `close` dispatches them. A zero timeout dispatches
    /// nothing and fails if anything is pending or in flight.
    pub fn close(&self, timeout: Duration) -> Result<PublishReport, TimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        self.shared.ring.close();
        self.shared.blocked.wake_all();
        for event in self.shared.timers.close() {
            self.shared.drop_event(None, event);
        }
        let report = self.shared.publish_all(deadline);
        self.shared.wait_idle(deadline)?;
        if self.pending() > 0 {
            return Err(self.shared.timeout_error());
        }
        Ok(report)
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> Metrics {
        let head = self.shared.ring.head();
        let tail = self.shared.ring.tail();
        let mut metrics = self.shared.counters.snapshot(head, tail);
        (metrics.scheduled, metrics.cancelled) = self.shared.timers.counts();
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

impl<E, Err> Shared<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// The fast path of every single enqueue: claim one slot and write it, or give the event
    /// back with the reason.
    #[inline(always)]
    fn try_enqueue(&self, event: E) -> Result<Enqueued, (E, ClaimError)> {
        match self.ring.claim(1) {
            Ok(sequence) => {
                // SAFETY: `sequence` was claimed just above, and is written once.
                unsafe { self.ring.write(sequence, event) };
                Ok(Enqueued {
                    sequence,
                    dropped: 0,
                })
            }
            Err(refusal) => Err((event, refusal)),
        }
    }

    /// The full-ring and closed paths of `enqueue`, out of line to keep the fast path small.
    #[cold]
    #[inline(never)]
    fn enqueue_slow(
        &self,
        mut event: E,
        mut refusal: ClaimError,
        deadline: Option<Instant>,
    ) -> Result<Enqueued, EnqueueError<E>> {
        let mut dropped = 0;
        // The evicted event is dropped once our own is in: its `Drop` is user code, which
        // may enqueue too, and must not take the slot we made room in.
        let mut evicted = None;
        let backoff = Backoff::new();
        let outcome = loop {
            match (refusal, self.policy) {
                (ClaimError::Closed, _) => {
                    self.counters.add_rejected(1);
                    break Err(EnqueueError::Closed(event));
                }
                (ClaimError::Full | ClaimError::Gated, OverrunPolicy::ReturnError) => {
                    self.counters.add_rejected(1);
                    break Err(EnqueueError::Full(event));
                }
                (ClaimError::Full, OverrunPolicy::DropOldest) => match self.ring.evict_oldest(1) {
                    Eviction::Evicted(sequence, old) => {
                        self.counters.add_dropped(1);
                        dropped += 1;
                        // An earlier eviction of this call (another enqueue took its room).
                        if let Some((seq, previous)) = evicted.replace((sequence, old)) {
                            self.drop_event(Some(seq), previous);
                        }
                    }
                    // Another producer's event at the head is being written: it will be
                    // evictable in a moment. We hold no claim meanwhile.
                    Eviction::Unwritten => backoff.snooze(),
                    Eviction::NotNeeded => {}
                },
                // A batch holds the gate and makes room for itself; wait for it to claim.
                (ClaimError::Gated, OverrunPolicy::DropOldest) => backoff.snooze(),
                // (`Gated` only happens under `DropOldest`.)
                (ClaimError::Full | ClaimError::Gated, OverrunPolicy::Block) => {
                    if !self.wait_for_room(1, deadline) {
                        self.counters.add_rejected(1);
                        break Err(EnqueueError::Timeout(event));
                    }
                }
            }
            match self.try_enqueue(event) {
                Ok(enqueued) => {
                    break Ok(Enqueued {
                        dropped,
                        ..enqueued
                    });
                }
                Err((back, r)) => (event, refusal) = (back, r),
            }
        };
        if let Some((sequence, old)) = evicted {
            self.drop_event(Some(sequence), old);
        }
        outcome
    }

    fn enqueue_batch(
        &self,
        batch: &mut Vec<E>,
        deadline: Option<Instant>,
    ) -> Result<Enqueued, BatchError> {
        let len = batch.len();
        if len == 0 {
            return Ok(Enqueued {
                sequence: self.ring.tail(),
                dropped: 0,
            });
        }
        let n = len as u64;
        if n > self.ring.capacity() {
            self.counters.add_rejected(n);
            return Err(BatchError::TooLarge {
                len,
                capacity: self.ring.capacity() as usize,
            });
        }
        match self.ring.claim(n) {
            Ok(first) => {
                // SAFETY: `[first, first + n)` was claimed just above, for this batch.
                unsafe { self.ring.write_batch(first, batch) };
                Ok(Enqueued {
                    sequence: first,
                    dropped: 0,
                })
            }
            Err(ClaimError::Closed) => {
                self.counters.add_rejected(n);
                Err(BatchError::Closed)
            }
            Err(ClaimError::Full | ClaimError::Gated) => match self.policy {
                OverrunPolicy::ReturnError => {
                    self.counters.add_rejected(n);
                    Err(BatchError::Full { len })
                }
                OverrunPolicy::DropOldest => self.enqueue_batch_evicting(batch),
                OverrunPolicy::Block => self.enqueue_batch_waiting(batch, deadline),
            },
        }
    }

    /// A batch that found no room under `Block`: waits for room for all of it, then claims.
    ///
    /// Not starvation-free: a single enqueue may take a freed slot before the batch claims, so
    /// a steady stream of single enqueues that keeps the ring nearly full can hold a batch back
    /// for as long as it lasts. `enqueue_batch_timeout` bounds that. (A gate that held single
    /// enqueues back for the batch would make them wait for publishers even with room in the
    /// ring, which deadlocks a thread that both enqueues and publishes, or a handler that
    /// enqueues, against another thread's batch.)
    #[cold]
    #[inline(never)]
    fn enqueue_batch_waiting(
        &self,
        batch: &mut Vec<E>,
        deadline: Option<Instant>,
    ) -> Result<Enqueued, BatchError> {
        let (len, n) = (batch.len(), batch.len() as u64);
        loop {
            if !self.wait_for_room(n, deadline) {
                self.counters.add_rejected(n);
                return Err(BatchError::Timeout { len });
            }
            match self.ring.claim(n) {
                Ok(first) => {
                    // SAFETY: `[first, first + n)` was claimed just above, for this batch.
                    unsafe { self.ring.write_batch(first, batch) };
                    return Ok(Enqueued {
                        sequence: first,
                        dropped: 0,
                    });
                }
                Err(ClaimError::Closed) => {
                    self.counters.add_rejected(n);
                    return Err(BatchError::Closed);
                }
                Err(ClaimError::Full | ClaimError::Gated) => {}
            }
        }
    }

    /// A batch that found no room under `DropOldest`: takes the ring's gate, so that no other
    /// enqueue can claim the slots it makes, evicts the oldest written events until the batch
    /// fits, and claims. Without the gate, single enqueues could take each slot it freed and
    /// keep it evicting forever. While it holds the gate, other enqueues wait for it; it waits
    /// only for the events at the head to be written (no publisher, no user code): the evicted
    /// events are dropped (their `Drop` and the `on_error` hook are user code, which may
    /// enqueue) only once the gate is down.
    #[cold]
    #[inline(never)]
    fn enqueue_batch_evicting(&self, batch: &mut Vec<E>) -> Result<Enqueued, BatchError> {
        let n = batch.len() as u64;
        let backoff = Backoff::new();
        // Take the gate, or claim outright if room appeared meanwhile.
        loop {
            match self.ring.try_gate() {
                Ok(true) => break,
                Err(_) => {
                    self.counters.add_rejected(n);
                    return Err(BatchError::Closed);
                }
                // Another batch holds the gate: wait for it like any other enqueue.
                Ok(false) => backoff.snooze(),
            }
            match self.ring.claim(n) {
                Ok(first) => {
                    // SAFETY: `[first, first + n)` was claimed just above, for this batch.
                    unsafe { self.ring.write_batch(first, batch) };
                    return Ok(Enqueued {
                        sequence: first,
                        dropped: 0,
                    });
                }
                Err(ClaimError::Closed) => {
                    self.counters.add_rejected(n);
                    return Err(BatchError::Closed);
                }
                Err(ClaimError::Full | ClaimError::Gated) => {}
            }
        }
        // We hold the gate: the tail stands still, and only publishers and our evictions move
        // the head. At most `n` evictions are needed, so `evicted` stays within `n`.
        let mut evicted = Vec::new();
        let outcome = loop {
            match self.ring.claim_gated(n) {
                Ok(first) => {
                    // SAFETY: `[first, first + n)` was claimed just above, for this batch.
                    unsafe { self.ring.write_batch(first, batch) };
                    break Ok(Enqueued {
                        sequence: first,
                        dropped: evicted.len() as u64,
                    });
                }
                Err(ClaimError::Full) => match self.ring.evict_oldest(n) {
                    Eviction::Evicted(sequence, old) => {
                        self.counters.add_dropped(1);
                        evicted.push((sequence, old));
                    }
                    Eviction::Unwritten => backoff.snooze(),
                    Eviction::NotNeeded => {}
                },
                // `claim_gated` lowered the gate. The events evicted stay dropped: they were
                // discarded while the ring was full, before the close.
                Err(_) => {
                    self.counters.add_rejected(n);
                    break Err(BatchError::Closed);
                }
            }
        };
        for (sequence, old) in evicted {
            self.drop_event(Some(sequence), old);
        }
        outcome
    }

    /// Blocks until `n` slots are free or the ring closes (true), or `deadline` passes
    /// (false).
    fn wait_for_room(&self, n: u64, deadline: Option<Instant>) -> bool {
        let ring = &self.ring;
        self.blocked
            .wait(deadline, || ring.is_closed() || ring.has_room(n))
    }

    /// Takes a spare (empty) buffer.
    fn buffer(&self) -> Vec<E> {
        self.buffers.pop().unwrap_or_default()
    }

    fn recycle(&self, buf: Vec<E>) {
        debug_assert!(buf.is_empty());
        let _ = self.buffers.push(buf);
    }

    /// Takes up to `max` events below `limit` out of the ring into `buf` (see [`Ring::take`])
    /// and counts them in flight; under `Block`, wakes producers waiting for the room made.
    ///
    /// The events are counted in flight *before* they are claimed, and what was not claimed is
    /// given back after. Otherwise `close` could find the ring empty (our claim) and nothing in
    /// flight (our count, not yet made), and return `Ok` before our handlers ran. With the
    /// count first, the SeqCst increment happens-before our head CAS, so a `close` that sees
    /// the head moved (Acquire) also sees the count.
    #[inline]
    fn take(&self, limit: u64, max: u64, buf: &mut Vec<E>) -> Option<(u64, u64)> {
        self.counters.in_flight.fetch_add(max, Ordering::SeqCst);
        self.take_counted(limit, max, buf)
    }

    /// [`take`](Self::take) of up to `max` events already counted in flight by the caller.
    #[inline]
    fn take_counted(&self, limit: u64, max: u64, buf: &mut Vec<E>) -> Option<(u64, u64)> {
        let taken = self.ring.take(limit, max, buf);
        let n = taken.map_or(0, |(_, n)| n);
        if n < max {
            self.release_in_flight(max - n);
        }
        if n > 0 && self.policy == OverrunPolicy::Block {
            self.blocked.wake();
        }
        taken
    }

    /// Takes `n` off `in_flight`. Nobody is woken: `wait_idle` polls, so that publishing
    /// never pays for a wake-up check.
    #[inline]
    fn release_in_flight(&self, n: u64) {
        // SeqCst: `wait_idle` reading 0 must see the outcome counters recorded before.
        self.counters.in_flight.fetch_sub(n, Ordering::SeqCst);
    }

    /// Records the outcome of `n` in-flight events and wakes `drain` if they were the last.
    #[inline]
    fn finished(&self, n: u64, tally: Tally) {
        self.counters.record(tally);
        self.release_in_flight(n);
    }

    #[inline]
    fn publish(self: &Arc<Self>, deadline: Option<Instant>) -> PublishReport {
        // Nothing pending: return before touching the buffer pool, so that a thread spinning
        // on `publish` (the lowest-latency way to run a bus) costs two loads per spin.
        if self.ring.head() >= self.ring.tail() {
            return PublishReport::default();
        }
        match self.mode {
            DispatchMode::Sync => self.publish_sync(deadline),
            DispatchMode::Parallel => self.publish_parallel(deadline),
            DispatchMode::Async => self.publish_async(deadline),
        }
    }

    /// Publishes until every event accepted so far is taken, or `deadline` passes: `publish`
    /// leaves events behind an enqueue still being written, and `close` must not.
    fn publish_all(self: &Arc<Self>, deadline: Option<Instant>) -> PublishReport {
        let limit = self.ring.tail();
        let mut report = PublishReport::default();
        let mut idle = IdleWait::new(deadline);
        while self.ring.head() < limit && !expired(deadline) {
            let r = self.publish(deadline);
            if r.dispatched == 0 {
                // An enqueue is between its claim and its write (it finishes in nanoseconds
                // unless its thread was preempted), or async work is at its bound.
                if !self.help_pool() {
                    idle.step();
                }
            }
            report += r;
        }
        report
    }

    /// Runs one pending job of the store's pool if this thread is one of its workers and a
    /// job is there; returns whether it ran one. The work `drain` or `close` waits for may be
    /// queued behind this very thread, which would otherwise never run it.
    fn help_pool(&self) -> bool {
        let helped = match &self.pool {
            // `None` unless this thread is one of the pool's.
            Some(pool) => pool.yield_now(),
            // No pool of our own: jobs go wherever `rayon::spawn` puts them, the pool of the
            // publishing thread. Only this thread's own queue is run (jobs it spawned itself,
            // as this `close` does): a job of an unrelated pool could take any time.
            None => rayon::yield_local(),
        };
        helped == Some(rayon::Yield::Executed)
    }

    /// Sync publish: chunks of [`SYNC_CHUNK`] events, copied out, then run in order.
    fn publish_sync(&self, deadline: Option<Instant>) -> PublishReport {
        let limit = self.ring.tail();
        if limit.saturating_sub(self.ring.head()) == 1 {
            return self.publish_one(limit, deadline);
        }
        let mut buf = self.buffer();
        let mut dispatched = 0;
        let mut tally = Tally::default();
        while !expired(deadline) {
            // Sized to what is pending, so that `take`'s in-flight count is usually exact.
            let max = limit.saturating_sub(self.ring.head()).min(SYNC_CHUNK);
            if max == 0 {
                break;
            }
            let Some((first, n)) = self.take(limit, max, &mut buf) else {
                break;
            };
            let t = self.run_in_order(first, &mut buf, deadline);
            self.finished(n, t);
            dispatched += n;
            tally += t;
        }
        self.recycle(buf);
        PublishReport::from_tally(dispatched, tally)
    }

    /// Sync publish of the one pending event: straight from the ring to the stack, without a
    /// pooled buffer. The common case for a thread spinning on `publish`.
    fn publish_one(&self, limit: u64, deadline: Option<Instant>) -> PublishReport {
        if expired(deadline) {
            return PublishReport::default();
        }
        // Counted in flight before the claim, for the same reason as in `take`.
        self.counters.in_flight.fetch_add(1, Ordering::SeqCst);
        let Some((sequence, event)) = self.ring.take_one(limit) else {
            self.release_in_flight(1);
            return PublishReport::default();
        };
        if self.policy == OverrunPolicy::Block {
            self.blocked.wake();
        }
        let mut tally = Tally::default();
        self.run_events(sequence, std::slice::from_ref(&event), deadline, &mut tally);
        self.drop_event(Some(sequence), event);
        self.finished(1, tally);
        PublishReport::from_tally(1, tally)
    }

    /// Parallel publish: takes everything pending in one claim, then forks it out if it is
    /// worth it (see [`Self::run_parallel`]).
    fn publish_parallel(&self, deadline: Option<Instant>) -> PublishReport {
        let limit = self.ring.tail();
        let mut dispatched = 0;
        let mut tally = Tally::default();
        while !expired(deadline) {
            let want = limit.saturating_sub(self.ring.head());
            if want == 0 {
                break;
            }
            let mut buf = self.buffer();
            let Some((first, n)) = self.take(limit, want, &mut buf) else {
                self.recycle(buf);
                break;
            };
            let t = self.run_parallel(first, &mut buf, deadline);
            self.finished(n, t);
            self.recycle(buf);
            dispatched += n;
            tally += t;
        }
        PublishReport::from_tally(dispatched, tally)
    }

    /// Async publish: hands what is pending to the pool, as far as
    /// [`Builder::max_in_flight`] allows; the rest stays in the ring for a later publish.
    fn publish_async(self: &Arc<Self>, deadline: Option<Instant>) -> PublishReport {
        let limit = self.ring.tail();
        let mut dispatched = 0;
        while !expired(deadline) {
            let want = limit.saturating_sub(self.ring.head());
            if want == 0 {
                break;
            }
            // Room under the bound is reserved in `in_flight` before the claim, as `take`
            // counts it, so that concurrent publishers cannot overshoot the bound together.
            let Some(room) = self.counters.reserve_in_flight(want, self.max_in_flight) else {
                break;
            };
            let mut buf = self.buffer();
            let Some((first, n)) = self.take_counted(limit, room, &mut buf) else {
                self.recycle(buf);
                break;
            };
            dispatched += n;
            let shared = Arc::clone(self);
            let job = move || {
                let t = shared.run_parallel(first, &mut buf, deadline);
                shared.finished(n, t);
                shared.recycle(buf);
            };
            match &self.pool {
                Some(pool) => pool.spawn(job),
                None => rayon::spawn(job),
            }
        }
        PublishReport {
            dispatched,
            ..PublishReport::default()
        }
    }

    /// Waits until nothing is in flight, or `deadline`.
    ///
    /// Polls (spin, yield, then sleeps growing to [`IDLE_POLL_MAX`]) rather than waiting to be
    /// woken: `drain` and `close` are rare and may return a little late, while a wake-up check
    /// would cost every publish a fence.
    fn wait_idle(&self, deadline: Option<Instant>) -> Result<(), TimeoutError> {
        let idle = || self.counters.in_flight.load(Ordering::SeqCst) == 0;
        let mut wait = IdleWait::new(deadline);
        while !idle() {
            if expired(deadline) {
                return Err(self.timeout_error());
            }
            // Our jobs may be queued behind this thread: run one rather than wait.
            if !self.help_pool() {
                wait.step();
            }
        }
        Ok(())
    }

    fn timeout_error(&self) -> TimeoutError {
        let head = self.ring.head();
        TimeoutError {
            pending: self.ring.tail().saturating_sub(head),
            in_flight: self.counters.in_flight.load(Ordering::SeqCst),
        }
    }
}

/// The waiting of `drain` and `close`: spin, then yield, then sleep in naps growing to
/// [`IDLE_POLL_MAX`], never past the deadline. Polling rather than being woken keeps the
/// publish path free of a wake-up check.
struct IdleWait {
    backoff: Backoff,
    nap: Duration,
    deadline: Option<Instant>,
}

impl IdleWait {
    fn new(deadline: Option<Instant>) -> Self {
        Self {
            backoff: Backoff::new(),
            nap: Duration::from_micros(10),
            deadline,
        }
    }

    fn step(&mut self) {
        if !self.backoff.is_completed() {
            return self.backoff.snooze();
        }
        let left = self
            .deadline
            .map_or(self.nap, |d| d.saturating_duration_since(Instant::now()));
        sync::sleep(self.nap.min(left));
        self.nap = (self.nap * 2).min(IDLE_POLL_MAX);
    }
}

fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

impl<E: Event, Err> Drop for Shared<E, Err> {
    /// The last handle is gone: report each pending event to the error hook as
    /// [`ErrorKind::Discarded`], then drop it; likewise the scheduled events still waiting.
    /// No user code (`projection()`, the hook, an event's `Drop`) can unwind out of here.
    fn drop(&mut self) {
        // `&mut self`: no other thread is left, every claimed event is written.
        while let Some((sequence, event)) = self.ring.take_one(self.ring.tail()) {
            if self.on_error.is_some() {
                match panics::catch(|| event.projection()) {
                    Ok(projection) => {
                        self.report(Some(&projection), Some(sequence), ErrorKind::Discarded);
                        self.drop_projection(Some(sequence), projection);
                    }
                    Err(payload) => {
                        let message = panics::panic_message(&*payload);
                        self.report(None, Some(sequence), ErrorKind::Panic(message));
                        self.report(None, Some(sequence), ErrorKind::Discarded);
                        dispose(payload);
                    }
                }
            }
            self.drop_event(Some(sequence), event);
        }
        for event in self.timers.close() {
            self.drop_event(None, event);
        }
        // The hook's captured state is user code too (the routes contain their own).
        if let Err(payload) = drop_caught(self.on_error.take()) {
            dispose(payload);
        }
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

impl<E: Event, Err> Shared<E, Err> {
    /// Reports a failure to the `on_error` hook, if any; a panic in the hook is contained.
    #[cold]
    pub(crate) fn report(
        &self,
        projection: Option<&E::Projection>,
        sequence: Option<u64>,
        kind: ErrorKind<'_, Err>,
    ) {
        if let Some(hook) = &self.on_error {
            let report = ErrorReport {
                projection,
                sequence,
                kind,
            };
            if let Err(payload) = panics::catch(|| hook(&report)) {
                dispose(payload);
            }
        }
    }

    /// Drops an event the store is done with, containing a panic in its `Drop` (counted in
    /// [`Metrics::drop_panics`] and reported).
    #[inline]
    pub(crate) fn drop_event(&self, sequence: Option<u64>, event: E) {
        if let Err(payload) = drop_caught(event) {
            self.drop_panicked(sequence, payload);
        }
    }

    /// Drops the events of `buf` (sequences from `first`), emptying it, as
    /// [`drop_event`](Self::drop_event) does: one `catch_unwind` around the whole loop, which
    /// resumes after a panicking `Drop`. Free for events without drop glue.
    #[inline]
    pub(crate) fn drop_events(&self, first: u64, buf: &mut Vec<E>) {
        if !std::mem::needs_drop::<E>() {
            buf.clear();
            return;
        }
        let mut events = buf.drain(..);
        let mut next = first;
        loop {
            let run = panics::catch(|| {
                for event in &mut events {
                    next += 1;
                    drop(event);
                }
            });
            match run {
                Ok(()) => break,
                Err(payload) => self.drop_panicked(Some(next - 1), payload),
            }
        }
    }

    /// Drops a projection computed for a report, containing a panic in its `Drop` (counted
    /// and reported like an event's).
    #[cold]
    fn drop_projection(&self, sequence: Option<u64>, projection: E::Projection) {
        if let Err(payload) = drop_caught(projection) {
            self.drop_panicked(sequence, payload);
        }
    }

    #[cold]
    #[inline(never)]
    fn drop_panicked(&self, sequence: Option<u64>, payload: Payload) {
        self.counters.add_drop_panics(1);
        let message = panics::panic_message(&*payload);
        self.report(None, sequence, ErrorKind::DropPanic(message));
        dispose(payload);
    }
}

// Hooks for `transaction.rs` and `schedule.rs`: everything they need from the store's insides,
// kept here so that the enqueue and publish paths above stay as they are.

/// A handler failure, as [`EventStore::dispatch_through`] hands it to its caller.
pub(crate) enum Failure<Err> {
    /// The handler returned this error.
    Error(Err),
    /// The handler panicked with this payload.
    Panic(Payload),
}

impl<Err> Failure<Err> {
    /// Drops the failure, containing a panic in the error's or the payload's `Drop`.
    #[cold]
    pub(crate) fn discard(self) {
        if let Err(payload) = drop_caught(self) {
            dispose(payload);
        }
    }
}

/// A handle that does not keep the store alive (the timer thread holds one).
pub(crate) struct WeakStore<E: Event, Err>(Weak<Shared<E, Err>>);

impl<E: Event, Err> WeakStore<E, Err> {
    /// The store, unless every handle to it has been dropped.
    pub(crate) fn upgrade(&self) -> Option<EventStore<E, Err>> {
        self.0.upgrade().map(|shared| EventStore { shared })
    }
}

impl<E: Event, Err> EventStore<E, Err> {
    /// Gives an emptied transaction buffer back to the publishers' pool (from a `Drop`, hence
    /// no bounds), unless it grew larger than the ring, as a refused oversized one may have.
    pub(crate) fn recycle_buffer(&self, buf: Vec<E>) {
        debug_assert!(buf.is_empty());
        if buf.capacity() as u64 <= self.shared.ring.capacity() {
            let _ = self.shared.buffers.push(buf);
        }
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// A commit's dispatch: runs, in the caller and in sequence order, every event still
    /// pending below `range.end` (a sync publish that stops there, whatever the store's
    /// mode), and hands each handler failure to `on_failure` with its event's sequence.
    /// Returns what it did and how many of the events in `range` it ran itself: the others
    /// were taken out of the ring by another thread first.
    pub(crate) fn dispatch_through(
        &self,
        range: Range<u64>,
        mut on_failure: impl FnMut(u64, Failure<Err>),
    ) -> (PublishReport, u64) {
        let shared = &*self.shared;
        let mut buf = shared.buffer();
        let (mut dispatched, mut mine) = (0, 0);
        let mut tally = Tally::default();
        let backoff = Backoff::new();
        // Until another thread's in-progress enqueue ahead of the transaction is written and
        // taken, `take` stops short of `range.end`: wait for it, as `close` does.
        while shared.ring.head() < range.end {
            let Some((first, n)) = shared.take(range.end, SYNC_CHUNK, &mut buf) else {
                backoff.snooze();
                continue;
            };
            let mut t = Tally::default();
            shared.run_events_observed(first, &buf, None, &mut t, &mut on_failure);
            shared.drop_events(first, &mut buf);
            shared.finished(n, t);
            dispatched += n;
            tally += t;
            mine += (first + n)
                .min(range.end)
                .saturating_sub(first.max(range.start));
        }
        shared.recycle(buf);
        (PublishReport::from_tally(dispatched, tally), mine)
    }

    /// Drops an event that never reached the ring (a scheduled one), containing a panic in
    /// its `Drop`.
    pub(crate) fn discard_unsequenced(&self, event: E) {
        self.shared.drop_event(None, event);
    }

    /// An empty buffer from the publishers' pool, for a transaction.
    pub(crate) fn spare_buffer(&self) -> Vec<E> {
        self.shared.buffer()
    }

    /// The store's timers.
    pub(crate) fn timers(&self) -> &Timers<E> {
        &self.shared.timers
    }

    /// A handle that does not keep the store alive.
    pub(crate) fn downgrade(&self) -> WeakStore<E, Err> {
        WeakStore(Arc::downgrade(&self.shared))
    }

    /// The timer thread's enqueue: [`enqueue`](Self::enqueue), except that under
    /// [`OverrunPolicy::Block`] it waits for room only until `deadline`, then hands the event
    /// back as [`EnqueueError::Timeout`] *without* counting it as rejected, so that the timer
    /// can drop its strong handle and try again.
    pub(crate) fn enqueue_or_wait(
        &self,
        mut event: E,
        deadline: Instant,
    ) -> Result<Enqueued, EnqueueError<E>> {
        let shared = &*self.shared;
        if shared.policy == OverrunPolicy::Block {
            loop {
                match shared.try_enqueue(event) {
                    Ok(enqueued) => return Ok(enqueued),
                    // `enqueue` below counts the refusal and hands the event back.
                    Err((back, ClaimError::Closed)) => {
                        event = back;
                        break;
                    }
                    Err((back, ClaimError::Full | ClaimError::Gated)) => {
                        event = back;
                        if !shared.wait_for_room(1, Some(deadline)) {
                            return Err(EnqueueError::Timeout(event));
                        }
                    }
                }
            }
        }
        self.enqueue(event)
    }
}

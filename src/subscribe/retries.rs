//! Retries waiting for their time: a min-heap of jobs by due time, run by publishing threads
//! through the core's deferred-work seam (`store/deferred.rs`), never by a sleeping thread of
//! their own, so a tick loop is never stalled by a retry's delay.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use super::SubscriptionId;
use super::retry::next_random;
use super::subscription::{Attempt, Sub};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::store::{Context, Deferred, EventStore, Held, Layer, Standing};

/// One retry waiting: the failed subscription, a copy of the event, the attempt it will be.
pub(super) struct Job<E: Event, Err> {
    pub(super) due: Instant,
    pub(super) event: E,
    pub(super) sub: Arc<Sub<E, Err>>,
    pub(super) attempt: u32,
    pub(super) held: Arc<Held>,
    pub(super) sequence: u64,
}

/// A job in the heap, ordered by due time, then by arrival.
struct Queued<E: Event, Err> {
    order: (Instant, u64),
    job: Job<E, Err>,
}

impl<E: Event, Err> PartialEq for Queued<E, Err> {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}
impl<E: Event, Err> Eq for Queued<E, Err> {}
impl<E: Event, Err> PartialOrd for Queued<E, Err> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl<E: Event, Err> Ord for Queued<E, Err> {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.order.cmp(&other.order)
    }
}

/// The store's retries (a [`Layer`], and the core's [`Deferred`] work).
pub(super) struct Retries<E: Event, Err> {
    jobs: Mutex<BinaryHeap<Reverse<Queued<E, Err>>>>,
    /// Jobs in the heap or running (Relaxed: a count for `publish` to skip the layer when 0;
    /// the heap's mutex orders the jobs themselves).
    waiting: AtomicU64,
    arrivals: AtomicU64,
    random: AtomicU64,
    /// The subscriptions with retries, by id, so a delivery can hand its own `Arc` to a job.
    subs: Mutex<HashMap<SubscriptionId, Arc<Sub<E, Err>>>>,
}

impl<E, Err> Retries<E, Err>
where
    E: Event + Send + Sync + 'static,
    E::Projection: Clone + Send + Sync,
    Err: Send + 'static,
{
    /// The store's retries, registered (as a layer and as deferred work) on first use.
    pub(super) fn of(store: &EventStore<E, Err>) -> Arc<Self> {
        static SEED: OnceLock<u64> = OnceLock::new();
        let retries = store.layer(|| Self {
            jobs: Mutex::new(BinaryHeap::new()),
            waiting: AtomicU64::new(0),
            arrivals: AtomicU64::new(0),
            random: AtomicU64::new(*SEED.get_or_init(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                t ^ 0x5EED
            })),
            subs: Mutex::new(HashMap::new()),
        });
        let deferred = Arc::clone(&retries) as Arc<dyn Deferred<E, Err>>;
        store.deferred_or(|| deferred);
        retries
    }

    /// A pseudo-random number, for jitter.
    pub(super) fn random(&self) -> u64 {
        let mut state = self.random.fetch_add(1, Ordering::Relaxed);
        next_random(&mut state)
    }

    pub(super) fn register(&self, sub: Arc<Sub<E, Err>>) {
        self.subs().insert(sub.id, sub);
    }

    pub(super) fn unregister(&self, id: SubscriptionId) {
        let sub = self.subs().remove(&id);
        crate::panics::drop_contained(sub);
    }

    pub(super) fn subscription(&self, id: SubscriptionId) -> Option<Arc<Sub<E, Err>>> {
        self.subs().get(&id).cloned()
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, HashMap<SubscriptionId, Arc<Sub<E, Err>>>> {
        // Poison ignored: every update is one insert or remove.
        self.subs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn heap(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Queued<E, Err>>>> {
        // Poison ignored: every update is one push or pop, and no user code runs under it.
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a retry.
    pub(super) fn push(&self, job: Job<E, Err>) {
        let order = (job.due, self.arrivals.fetch_add(1, Ordering::Relaxed));
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.heap().push(Reverse(Queued { order, job }));
    }

    /// Takes the earliest job if it is due by its subscription's clock (or any, when `all`).
    fn take_due(&self, all: bool) -> Option<Job<E, Err>> {
        let mut heap = self.heap();
        let due = heap
            .peek()
            .is_some_and(|Reverse(q)| all || q.job.sub.clock.now() >= q.job.due);
        due.then(|| heap.pop().map(|Reverse(q)| q.job)).flatten()
    }

    /// Runs one retry on the calling (publishing) thread.
    fn run(&self, store: &EventStore<E, Err>, job: Job<E, Err>) {
        let Job {
            event,
            sub,
            attempt,
            held,
            sequence,
            ..
        } = job;
        // The table version this run uses: `unsubscribe` waits for it, and a subscription
        // removed before this load is seen as removed below.
        let _table = store.routes().load();
        let counters = store.counters();
        if sub.removed.load(Ordering::Acquire) {
            // Unsubscribed meanwhile: the failure stands.
            held.release(Standing::Failed, counters);
            return store.discard_unsequenced(event);
        }
        let projection = sub.projection.clone();
        // A retry is not held again: its own outcome is this job's.
        let no_hold = OnceLock::new();
        let ctx = Context {
            store,
            sequence,
            projection: &projection,
            deadline: None,
            held: &no_hold,
        };
        counters.add_retries(1);
        // An open breaker skips the retry: it uses up its attempt without a call.
        let attempted = if sub.breaker_allows(store) {
            sub.attempt(&ctx, &event)
        } else {
            Attempt::Failed(crate::error::HandlerFailure::CircuitOpen)
        };
        let standing = match attempted {
            Attempt::Ok => {
                sub.record(true);
                Standing::Ok
            }
            Attempt::Failed(failure) => {
                let skipped = matches!(failure, crate::error::HandlerFailure::CircuitOpen);
                if !skipped {
                    sub.record(false);
                    counters.record_failure(&failure);
                }
                store.report_failure(&projection, sequence, &failure);
                if sub.retries_left(&failure, attempt + 1) {
                    let policy = &sub.retry.as_ref().expect("retries_left").policy;
                    let delay = policy.delay_before(attempt + 1, self.random());
                    crate::panics::drop_contained(failure);
                    self.push(Job {
                        due: sub.clock.now() + delay,
                        event,
                        sub,
                        attempt: attempt + 1,
                        held,
                        sequence,
                    });
                    return;
                }
                let (standing, failure) = sub.give_up(store, &event, failure, attempt);
                crate::panics::drop_contained(failure);
                standing
            }
        };
        held.release(standing, counters);
        store.discard_unsequenced(event);
    }
}

impl<E, Err> Deferred<E, Err> for Retries<E, Err>
where
    E: Event + Send + Sync + 'static,
    E::Projection: Clone + Send + Sync,
    Err: Send + 'static,
{
    fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    fn next_due(&self) -> Option<Instant> {
        self.heap().peek().map(|Reverse(q)| q.job.due)
    }

    fn run_due(&self, store: &EventStore<E, Err>, all: bool) -> u64 {
        let mut ran = 0;
        while let Some(job) = self.take_due(all) {
            self.run(store, job);
            // After the run: a job rescheduled by it was counted again when pushed.
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            ran += 1;
        }
        ran
    }
}

impl<E, Err> Layer<E> for Retries<E, Err>
where
    E: Event + Send + Sync + 'static,
    E::Projection: Clone + Send + Sync,
    Err: Send + 'static,
{
    /// Nothing to hand back at `close`: the jobs run (the store's `close` runs the deferred
    /// work, due or not). When the store is dropped, the jobs are dropped with the layer.
    fn shut_down(&self) -> Vec<E> {
        Vec::new()
    }

    fn add_metrics(&self, _: &mut Metrics) {}
}

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
use crate::metrics::Counters;
use crate::metrics::Metrics;
use crate::store::{Context, Deferred, EventStore, Held, Layer, RunningHandlers, Standing};

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
        // A handler run: an `unsubscribe` from the handler (or a hook it triggers) must not
        // wait for the table loaded just above, which this thread holds.
        let _running = RunningHandlers::enter();
        let counters = store.counters();
        let projection_counters = Arc::clone(held.projection());
        // Released as failed if user code (a breaker, a clock, the event's `Clone`) panics
        // below: the panic is contained by `run_due`, the event's hold must still end.
        let mut share = Share {
            held: Some(held),
            counters,
        };
        if sub.removed.load(Ordering::Acquire) {
            // Unsubscribed meanwhile: the failure stands (the share, dropped, says so).
            drop(share);
            return store.discard_unsequenced(event);
        }
        let projection = sub.projection.clone();
        // A retry is not held again: its own outcome is this job's.
        let no_hold = OnceLock::new();
        let ctx =
            Context::outside_run(store, sequence, &projection, &projection_counters, &no_hold);
        counters.add_retries(1);
        projection_counters.add_retry();
        // An open breaker skips the retry: it uses up its attempt without a call.
        let attempted = if sub.breaker_allows(store, &projection_counters) {
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
                    projection_counters.add_handler_errors(1);
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
                        held: share.take(),
                        sequence,
                    });
                    return;
                }
                let (standing, failure) = sub.give_up(store, &event, failure, attempt);
                crate::panics::drop_contained(failure);
                standing
            }
        };
        share.release(standing);
        if sub.is_once() {
            // Its one event is done with: no retry of it will run again.
            self.unregister(sub.id);
        }
        store.discard_unsequenced(event);
    }
}

/// A retry job's share of its event's hold while the job runs: released as failed if the run
/// ends without releasing or passing it on (a panic of user code around the handler).
struct Share<'a> {
    held: Option<Arc<Held>>,
    counters: &'a Counters,
}

impl Share<'_> {
    /// The share, passed on to the next attempt's job.
    fn take(&mut self) -> Arc<Held> {
        self.held.take().expect("a share is taken once")
    }

    fn release(&mut self, standing: Standing) {
        if let Some(held) = self.held.take() {
            held.release(standing, self.counters);
        }
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.release(Standing::Failed);
    }
}

/// Counts a panic that escaped a retry's run (outside its handler, whose own panics
/// `Sub::attempt` contains), as a failed call.
#[cold]
fn counters_panicked<E, Err>(store: &EventStore<E, Err>, payload: crate::panics::Payload)
where
    E: Event + Send + 'static,
    Err: 'static,
{
    let failure = crate::error::HandlerFailure::<Err>::Panic(crate::panics::into_message(payload));
    store.counters().record_failure(&failure);
    crate::panics::drop_contained(failure);
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
        loop {
            // A clock (user code) is read here: a panic in it leaves the job queued, and `close`
            // (which reads no clock) still runs it.
            let job = match crate::panics::catch(|| self.take_due(all)) {
                Ok(Some(job)) => job,
                Ok(None) => break,
                Err(payload) => {
                    crate::panics::dispose(payload);
                    break;
                }
            };
            // User code around the handler (a breaker, a clock, a dead-letter hook, the event's
            // `Clone` and `Drop`) may panic: nothing unwinds out of a publish or `close`, and
            // the job's share of the event's hold is released as failed (`Share`).
            if let Err(payload) = crate::panics::catch(|| self.run(store, job)) {
                counters_panicked(store, payload);
            }
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

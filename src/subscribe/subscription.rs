//! Runtime subscriptions: [`EventStore::subscribe`] and its [`SubscriptionBuilder`], the
//! [`Subscription`] handle, and the subscriber the run loop calls (`Sub`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::breaker::{BreakerState, CircuitBreaker};
use super::clock::{Clock, SystemClock};
use super::dead_letters::{DeadLetter, DeadLetterLayer};
use super::retries::{Job, Retries};
use super::retry::{RetryPolicy, RetryPolicyError};
use super::{Retryable, SubscriptionId};
use crate::error::HandlerFailure;
use crate::event::Event;
use crate::metrics::ProjectionCounters;
use crate::panics;
use crate::store::{Context, Delivery, Entry, EventStore, RunningHandlers, Standing, Subscriber};
use crate::sync::Backoff;

/// A subscription's handler.
type SubHandler<E, Err> = Box<dyn Fn(&Context<'_, E, Err>, &E) -> Result<(), Err> + Send + Sync>;
/// A subscription's filter.
type SubFilter<E> = Box<dyn Fn(&E) -> bool + Send + Sync>;

/// Why [`SubscriptionBuilder::handle`] refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The retry policy is invalid.
    #[error("invalid retry policy: {0}")]
    Retry(#[from] RetryPolicyError),
    /// The store is closed.
    #[error("the store is closed")]
    Closed,
}

/// How a subscription keeps a copy of an event past its run (retries, dead letters): the
/// event type's `Clone`, captured where the option was set.
struct Keep<E> {
    clone: fn(&E) -> E,
}

/// A subscription's retries: the policy and how to tell a retryable error.
pub(super) struct RetryWith<Err> {
    pub(super) policy: RetryPolicy,
    retryable: fn(&Err) -> bool,
    /// Panics are retried too.
    panics: bool,
}

/// The subscription the run loop calls ([`Subscriber`]).
pub(super) struct Sub<E: Event, Err> {
    pub(super) id: SubscriptionId,
    pub(super) projection: E::Projection,
    handler: SubHandler<E, Err>,
    filter: Option<SubFilter<E>>,
    /// `Some` for a `once` subscription: set by the one delivery that runs.
    once: Option<AtomicBool>,
    pub(super) retry: Option<RetryWith<Err>>,
    keep: Option<Keep<E>>,
    dead_letter: bool,
    breaker: Option<Box<dyn CircuitBreaker>>,
    budget: Option<Duration>,
    pub(super) clock: Arc<dyn Clock>,
    /// Set by `unsubscribe` (and a used-up `once`): retries still waiting give up.
    pub(super) removed: AtomicBool,
    /// No retry, dead letters, breaker or budget: the handler is called straight.
    plain: bool,
    retries: Weak<Retries<E, Err>>,
}

/// What one call of a subscription's handler came to.
pub(super) enum Attempt<Err> {
    Ok,
    Failed(HandlerFailure<Err>),
}

impl<E, Err> Sub<E, Err>
where
    E: Event + Send + Sync + 'static,
    E::Projection: Clone + Send + Sync,
    Err: Send + 'static,
{
    /// Calls the handler once: panics contained, its time budget checked.
    pub(super) fn attempt(&self, ctx: &Context<'_, E, Err>, event: &E) -> Attempt<Err> {
        let started = self.budget.map(|budget| (self.clock.now(), budget));
        let budgeted;
        let ctx = match started {
            Some((now, budget)) => {
                budgeted =
                    ctx.with_budget(Instant::now() + budget.min(Duration::from_secs(1 << 30)));
                let _ = now;
                &budgeted
            }
            None => ctx,
        };
        let result = match panics::catch(|| (self.handler)(ctx, event)) {
            Ok(result) => result.map_err(HandlerFailure::Error),
            Err(payload) => Err(HandlerFailure::Panic(panics::into_message(payload))),
        };
        if let Some((start, budget)) = started {
            let elapsed = self.clock.now().saturating_duration_since(start);
            if elapsed > budget {
                if let Err(failure) = result {
                    panics::drop_contained(failure);
                }
                return Attempt::Failed(HandlerFailure::Timeout { elapsed, budget });
            }
        }
        match result {
            Ok(()) => Attempt::Ok,
            Err(failure) => Attempt::Failed(failure),
        }
    }

    /// True when `failure` may be tried again by the policy, at attempt `next`.
    pub(super) fn retries_left(&self, failure: &HandlerFailure<Err>, next: u32) -> bool {
        let Some(retry) = &self.retry else {
            return false;
        };
        let retryable = match failure {
            HandlerFailure::Error(err) => (retry.retryable)(err),
            HandlerFailure::Panic(_) => retry.panics,
            HandlerFailure::Timeout { .. } | HandlerFailure::CircuitOpen => true,
            HandlerFailure::DeadLettered => false,
        };
        retryable && next <= retry.policy.max_attempts()
    }

    /// True unless the breaker is open now; a skip is counted.
    pub(super) fn breaker_allows(
        &self,
        store: &EventStore<E, Err>,
        projection: &ProjectionCounters,
    ) -> bool {
        match &self.breaker {
            Some(breaker) if !breaker.allow(self.clock.now()) => {
                store.counters().add_skipped(1);
                projection.add_skipped();
                false
            }
            _ => true,
        }
    }

    /// True for a `once` subscription.
    pub(super) fn is_once(&self) -> bool {
        self.once.is_some()
    }

    /// Tells the breaker how a call went.
    pub(super) fn record(&self, ok: bool) {
        if let Some(breaker) = &self.breaker {
            let now = self.clock.now();
            if ok {
                breaker.record_success(now);
            } else {
                breaker.record_failure(now);
            }
        }
    }

    /// The dead-letter queue a failure given up on goes to, if this subscription sends its
    /// failures there and the store has one (looked up when needed: a queue enabled after
    /// the subscription counts too).
    fn dead_letter_queue(
        &self,
        store: &EventStore<E, Err>,
    ) -> Option<Arc<DeadLetterLayer<E, Err>>> {
        if self.dead_letter && self.keep.is_some() {
            store.find_layer::<DeadLetterLayer<E, Err>>()
        } else {
            None
        }
    }

    /// Gives up on `failure` after `attempts`: a dead letter if this subscription sends its
    /// failures there and the store keeps them, else a failure that stands.
    pub(super) fn give_up(
        &self,
        store: &EventStore<E, Err>,
        event: &E,
        failure: HandlerFailure<Err>,
        attempts: u32,
    ) -> (Standing, Option<HandlerFailure<Err>>)
    where
        E::Projection: Clone,
    {
        match (self.dead_letter_queue(store), &self.keep) {
            (Some(queue), Some(keep)) => {
                let letter = DeadLetter {
                    event: Arc::new((keep.clone)(event)),
                    projection: self.projection.clone(),
                    subscription: self.id,
                    error: failure,
                    attempts,
                    at: self.clock.now(),
                };
                queue.push(letter);
                (Standing::DeadLettered, None)
            }
            _ => (Standing::Failed, Some(failure)),
        }
    }
}

impl<E, Err> Subscriber<E, Err> for Sub<E, Err>
where
    E: Event + Send + Sync + 'static,
    E::Projection: Clone + Send + Sync,
    Err: Send + 'static,
{
    fn id(&self) -> u64 {
        self.id.get()
    }

    fn breaker_open(&self) -> bool {
        self.breaker
            .as_ref()
            .is_some_and(|b| b.state(self.clock.now()) == BreakerState::Open)
    }

    fn deliver(&self, ctx: &Context<'_, E, Err>, event: &E) -> Delivery<Err> {
        if self.removed.load(Ordering::Acquire) {
            return Delivery::Done;
        }
        if let Some(filter) = &self.filter {
            if !filter(event) {
                return Delivery::Done;
            }
        }
        let Some(once) = &self.once else {
            return self.deliver_now(ctx, event);
        };
        // The one delivery that swaps it first runs, even with several publishers.
        if once.swap(true, Ordering::AcqRel) {
            return Delivery::Done;
        }
        let delivery = self.deliver_now(ctx, event);
        if !matches!(delivery, Delivery::Deferred(_)) {
            // No retry of it will ever run.
            if let Some(retries) = self.retries.upgrade() {
                retries.unregister(self.id);
            }
        }
        // Out of the table for later runs, once its call is over (an `unsubscribe` meanwhile
        // finds it there and waits for this run); no waiting here, inside a run.
        ctx.store().routes().remove(self.id.get());
        delivery
    }
}

impl<E, Err> Sub<E, Err>
where
    E: Event + Send + Sync + 'static,
    E::Projection: Clone + Send + Sync,
    Err: Send + 'static,
{
    /// Delivers `event` past the `once` check.
    fn deliver_now(&self, ctx: &Context<'_, E, Err>, event: &E) -> Delivery<Err> {
        if self.plain {
            // Nothing to retry, dead-letter, time or break: the handler's panic is the run
            // loop's to contain, as for a dispatcher handler (no unwinding frame here).
            return match (self.handler)(ctx, event) {
                Ok(()) => Delivery::Done,
                Err(err) => Delivery::Failed(HandlerFailure::Error(err)),
            };
        }
        if !self.breaker_allows(ctx.store(), ctx.projection_counters()) {
            // Skipped: a dead letter if this subscription sends them, else nothing.
            return match self.give_up(ctx.store(), event, HandlerFailure::CircuitOpen, 0) {
                (Standing::DeadLettered, _) => Delivery::DeadLettered {
                    handler_failed: false,
                    panicked: false,
                },
                (_, failure) => {
                    panics::drop_contained(failure);
                    Delivery::Done
                }
            };
        }
        let mut attempts = 1;
        let mut failure = match self.attempt(ctx, event) {
            Attempt::Ok => {
                self.record(true);
                return Delivery::Done;
            }
            Attempt::Failed(failure) => failure,
        };
        self.record(false);
        // Inline retries, only when the policy asks: this publisher waits out the delays.
        while let Some(retry) = self.retry.as_ref().filter(|r| r.policy.is_inline()) {
            if !self.retries_left(&failure, attempts + 1) {
                break;
            }
            attempts += 1;
            let report = std::mem::replace(&mut failure, HandlerFailure::Panic(String::new()));
            ctx.store()
                .report_failure(ctx.projection(), ctx.sequence(), &report);
            ctx.store().counters().record_failure(&report);
            ctx.projection_counters().add_handler_errors(1);
            panics::drop_contained(report);
            std::thread::sleep(retry.policy.delay_before(attempts, 0));
            ctx.store().counters().add_retries(1);
            ctx.projection_counters().add_retry();
            match self.attempt(ctx, event) {
                Attempt::Ok => {
                    self.record(true);
                    return Delivery::Done;
                }
                Attempt::Failed(again) => {
                    self.record(false);
                    failure = again;
                }
            }
        }
        if self.retries_left(&failure, attempts + 1) {
            if let (Some(retries), Some(keep), Some(retry)) =
                (self.retries.upgrade(), &self.keep, &self.retry)
            {
                let delay = retry.policy.delay_before(attempts + 1, retries.random());
                let this = retries.subscription(self.id);
                if let Some(sub) = this {
                    retries.push(Job {
                        due: self.clock.now() + delay,
                        event: (keep.clone)(event),
                        sub,
                        attempt: attempts + 1,
                        held: ctx.hold(),
                        sequence: ctx.sequence(),
                    });
                    return Delivery::Deferred(failure);
                }
            }
        }
        let panicked = matches!(failure, HandlerFailure::Panic(_));
        if self.dead_letter_queue(ctx.store()).is_some() {
            ctx.store()
                .report_failure(ctx.projection(), ctx.sequence(), &failure);
        }
        match self.give_up(ctx.store(), event, failure, attempts) {
            (_, Some(failure)) => Delivery::Failed(failure),
            (_, None) => Delivery::DeadLettered {
                handler_failed: true,
                panicked,
            },
        }
    }
}

/// A subscription made by [`SubscriptionBuilder::handle`]: [`unsubscribe`](Self::unsubscribe)
/// it, or, if built with [`unsubscribe_on_drop`](SubscriptionBuilder::unsubscribe_on_drop),
/// drop it.
pub struct Subscription {
    id: SubscriptionId,
    remove: Option<Box<dyn FnOnce() -> bool + Send + Sync>>,
    on_drop: bool,
}

impl Subscription {
    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// Removes the subscription; true if it was still subscribed (a `once` subscription that
    /// ran is not). Once this returns, its handler never runs again and none of its calls is
    /// in progress: it waits for the runs that had loaded the table with it (a chunk of at
    /// most 256 events each), and its retries still waiting give up (their events' failures
    /// stand). Called from a handler (of any store), it does not wait, since the caller's own
    /// run may be one of them: then calls already under way, and the rest of the chunks
    /// already taken, may still run it.
    pub fn unsubscribe(mut self) -> bool {
        self.remove.take().is_some_and(|remove| remove())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.on_drop {
            if let Some(remove) = self.remove.take() {
                remove();
            }
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("unsubscribe_on_drop", &self.on_drop)
            .finish()
    }
}

/// Options of one subscription, from [`EventStore::subscribe`]; [`handle`](Self::handle)
/// subscribes the handler.
pub struct SubscriptionBuilder<'s, E: Event, Err> {
    store: &'s EventStore<E, Err>,
    projection: E::Projection,
    filter: Option<SubFilter<E>>,
    once: bool,
    retry: Option<RetryWith<Err>>,
    keep: Option<Keep<E>>,
    dead_letter: bool,
    breaker: Option<Box<dyn CircuitBreaker>>,
    budget: Option<Duration>,
    clock: Option<Arc<dyn Clock>>,
    on_drop: bool,
}

impl<'s, E, Err> SubscriptionBuilder<'s, E, Err>
where
    E: Event + Send + Sync + 'static,
    E::Projection: Clone + Send + Sync,
    Err: Send + 'static,
{
    /// The handler runs only for events `filter` returns true for (the others are not this
    /// subscription's: no effect on their outcome).
    pub fn filter(mut self, filter: impl Fn(&E) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Box::new(filter));
        self
    }

    /// The handler runs for exactly one event, even when several threads publish at once;
    /// the subscription then removes itself.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// Retries a failing handler as `policy` says: the one failed handler runs again (not the
    /// event's others), later, on a publishing thread (`publish`, `settle`, `publish_wait`
    /// and the consumer thread run retries that are due; `close` runs those still waiting at
    /// once), unless the policy is [`inline`](RetryPolicy::inline). An error whose
    /// [`Retryable::is_retryable`] says no (a [`Permanent`](super::Permanent) one) is not
    /// retried; nor is a panic, unless [`retry_panics`](Self::retry_panics). The event is
    /// counted in [`Metrics::retrying`](crate::Metrics::retrying) until its retries are done.
    /// A retry needs its own copy of the event, hence `E: Clone`.
    pub fn retry(mut self, policy: RetryPolicy) -> Self
    where
        E: Clone,
        Err: Retryable,
    {
        self.retry = Some(RetryWith {
            policy,
            retryable: Err::is_retryable,
            panics: false,
        });
        self.keep = Some(Keep { clone: E::clone });
        self
    }

    /// Panics of the handler are retried like errors (after [`retry`](Self::retry)).
    pub fn retry_panics(mut self) -> Self {
        if let Some(retry) = &mut self.retry {
            retry.panics = true;
        }
        self
    }

    /// A failure given up on (retries exhausted, a permanent error, a panic not retried, a
    /// timeout) goes to the store's dead-letter queue
    /// ([`EventStore::enable_dead_letters`]), with a copy of the event: the event ends in
    /// [`Metrics::dead_lettered`](crate::Metrics::dead_lettered). Without a queue enabled,
    /// failures stand as usual.
    pub fn dead_letters(mut self) -> Self
    where
        E: Clone,
    {
        self.dead_letter = true;
        self.keep = Some(Keep { clone: E::clone });
        self
    }

    /// A circuit breaker: while it is open the handler is skipped (counted in
    /// [`Metrics::skipped`](crate::Metrics::skipped)); it hears of every call's success or
    /// failure. [`ConsecutiveFailures`](super::ConsecutiveFailures) is the classic one.
    pub fn breaker(mut self, breaker: impl CircuitBreaker + 'static) -> Self {
        self.breaker = Some(Box::new(breaker));
        self
    }

    /// A time budget per call: the handler sees it as its context's
    /// [`deadline`](Context::deadline) (cooperative: nothing interrupts it), and a call that
    /// returns after it counts as a [`HandlerFailure::Timeout`] (retried, if a retry policy
    /// is set).
    pub fn deadline(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Where the subscription reads the time (retry delays, breaker cooldowns, budgets).
    /// Default: [`SystemClock`]. Tests use a [`ManualClock`](super::ManualClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Dropping the [`Subscription`] unsubscribes it (by default dropping it leaves the
    /// subscription in place).
    pub fn unsubscribe_on_drop(mut self) -> Self {
        self.on_drop = true;
        self
    }

    /// Subscribes `handler`: it runs for the events of the projection published from now on,
    /// after the dispatcher's handlers and the earlier subscriptions of that projection (in
    /// subscription order, in sync mode), before the catch-all handlers. A publish run
    /// already under way (a chunk of at most 256 events) keeps the table it loaded: the
    /// subscription is seen from the next chunk on.
    ///
    /// # Errors
    /// [`SubscribeError::Retry`] for an invalid retry policy; [`SubscribeError::Closed`] once
    /// the store is closed.
    pub fn handle<F>(self, handler: F) -> Result<Subscription, SubscribeError>
    where
        F: Fn(&Context<'_, E, Err>, &E) -> Result<(), Err> + Send + Sync + 'static,
    {
        if let Some(retry) = &self.retry {
            retry.policy.validate()?;
        }
        if self.store.is_closed() {
            return Err(SubscribeError::Closed);
        }
        let store = self.store;
        let retries = match &self.retry {
            Some(retry) if !retry.policy.is_inline() => Arc::downgrade(&Retries::of(store)),
            _ => Weak::new(),
        };
        let id = SubscriptionId::new(next_id());
        let plain = self.retry.is_none()
            && !self.dead_letter
            && self.breaker.is_none()
            && self.budget.is_none();
        if plain && self.filter.is_none() && !self.once {
            // Nothing for the layer to decide: the run loop calls the handler straight.
            let entry = Entry::Direct(id.get(), Arc::new(handler));
            store.routes().add(self.projection, entry);
            return Ok(Subscription::new(id, store, None, self.on_drop));
        }
        let sub = Arc::new(Sub {
            id,
            projection: self.projection.clone(),
            handler: Box::new(handler),
            filter: self.filter,
            once: self.once.then(|| AtomicBool::new(false)),
            retry: self.retry,
            keep: self.keep,
            dead_letter: self.dead_letter,
            breaker: self.breaker,
            budget: self.budget,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            removed: AtomicBool::new(false),
            plain,
            retries: retries.clone(),
        });
        if let Some(retries) = retries.upgrade() {
            retries.register(Arc::clone(&sub));
        }
        let entry = Entry::Subscriber(Arc::clone(&sub) as Arc<dyn Subscriber<E, Err>>);
        store.routes().add(self.projection, entry);
        Ok(Subscription::new(id, store, Some(sub), self.on_drop))
    }
}

impl Subscription {
    /// The handle of subscription `id` of `store` (`sub`: its layer state, if it has any).
    fn new<E, Err>(
        id: SubscriptionId,
        store: &EventStore<E, Err>,
        sub: Option<Arc<Sub<E, Err>>>,
        on_drop: bool,
    ) -> Self
    where
        E: Event + Send + Sync + 'static,
        E::Projection: Clone + Send + Sync,
        Err: Send + 'static,
    {
        let weak = store.downgrade();
        let remove = move || -> bool {
            let Some(store) = weak.upgrade() else {
                return false;
            };
            if let Some(sub) = &sub {
                sub.removed.store(true, Ordering::Release);
                if let Some(retries) = sub.retries.upgrade() {
                    retries.unregister(sub.id);
                }
            }
            let Some(old) = store.routes().remove(id.get()) else {
                return false;
            };
            if !RunningHandlers::on_this_thread() {
                // Every run that loaded a table with the subscription holds a count of it.
                let backoff = Backoff::new();
                while Arc::strong_count(&old) > 1 {
                    if backoff.is_completed() {
                        std::thread::sleep(Duration::from_micros(50));
                    } else {
                        backoff.snooze();
                    }
                }
            }
            true
        };
        Subscription {
            id,
            remove: Some(Box::new(remove)),
            on_drop,
        }
    }
}

impl<E: Event, Err> fmt::Debug for SubscriptionBuilder<'_, E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionBuilder")
            .field("once", &self.once)
            .field("retry", &self.retry.as_ref().map(|r| &r.policy))
            .field("dead_letters", &self.dead_letter)
            .field("deadline", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Subscription ids, unique in the process (so unique in each store).
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + Sync + 'static,
    E::Projection: Clone + Send + Sync,
    Err: Send + 'static,
{
    /// Starts a runtime subscription to `projection`: set its options on the builder, then
    /// [`handle`](SubscriptionBuilder::handle) subscribes the handler. Lock-free for
    /// publishers: the route table is an atomically swapped snapshot, rebuilt by each
    /// subscribe and unsubscribe.
    ///
    /// ```
    /// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    ///
    /// #[derive(Clone)]
    /// struct Order(u32);
    /// impl Event for Order {
    ///     type Projection = &'static str;
    ///     fn projection(&self) -> &'static str { "order" }
    /// }
    /// let store = EventStore::new(Dispatcher::<Order>::new(), 64, OverrunPolicy::Block)?;
    /// let big = Arc::new(AtomicU32::new(0));
    /// let seen = big.clone();
    /// let sub = store
    ///     .subscribe("order")
    ///     .filter(|o| o.0 >= 100)
    ///     .handle(move |_, _| { seen.fetch_add(1, Ordering::Relaxed); Ok(()) })?;
    /// for amount in [5, 150, 300] {
    ///     store.enqueue(Order(amount))?;
    /// }
    /// store.publish();
    /// assert_eq!(big.load(Ordering::Relaxed), 2);
    /// assert!(sub.unsubscribe());
    /// store.enqueue(Order(500))?;
    /// store.publish();
    /// assert_eq!(big.load(Ordering::Relaxed), 2); // no longer subscribed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(&self, projection: E::Projection) -> SubscriptionBuilder<'_, E, Err> {
        SubscriptionBuilder {
            store: self,
            projection,
            filter: None,
            once: false,
            retry: None,
            keep: None,
            dead_letter: false,
            breaker: None,
            budget: None,
            clock: None,
            on_drop: false,
        }
    }
}

/// The lock `OnceLock` import is used by the retries module through this re-export.
#[allow(unused)]
type _Once = OnceLock<()>;

//! Running handlers: the in-order loop with panic isolation, and the parallel fork.
//!
//! Everything here runs on events already taken out of the ring; `publish.rs` decides what to
//! take and when, this module decides how the handlers run and tallies what they did.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::Context;
use super::fork::Plan;
use super::held::{Held, Standing};
use super::local::{LocalHandlers, NoLocal};
use super::routes::{Delivery, Entry, Table, hash_of};
use super::{ErrorKind, EventStore, PRODUCER_LANE};
use crate::error::HandlerFailure;
use crate::event::Event;
use crate::metrics::{
    LOCAL_ROUTES, Outcome, ProjectionCounters, RunCounts, Sampling, Tally, UnlistedCache,
};
use crate::panics::{self, Payload, dispose, panic_message};
use crate::trace;

/// Events a parallel publish runs in the caller, timed, to estimate the batch's cost.
pub(super) const PROBE_EVENTS: usize = 16;
/// Estimated handler time below which a parallel publish stays in the caller: waking rayon's
/// workers and joining them costs tens of microseconds on a small machine.
const PARALLEL_MIN_WORK: Duration = Duration::from_micros(50);
/// Work per chunk of a fork, so that taking a chunk (one shared `fetch_add`) costs nothing
/// next to running it.
const PARALLEL_TASK_WORK: Duration = Duration::from_micros(10);

/// The per-event outcome seam: what a run of handlers tells its caller about each handler
/// failure, beyond the tally and the `on_error` hook (which see every failure anyway).
///
/// A publish discards them ([`Discard`]); a transaction's commit keeps the first failure of
/// its own events. Retries and dead letters hang here: they see which event failed and how.
pub(crate) trait Outcomes<Err> {
    /// A handler of the event at `sequence` returned an error or panicked.
    fn failed(&mut self, sequence: u64, failure: HandlerFailure<Err>);
}

/// The publish path's [`Outcomes`]: failures are counted and reported, nothing more.
pub(crate) struct Discard;

impl<Err> Outcomes<Err> for Discard {
    #[inline(always)]
    fn failed(&mut self, _: u64, failure: HandlerFailure<Err>) {
        panics::drop_contained(failure);
    }
}

/// Where [`EventStore::run_events`] is: survives a caught panic so the run can resume after it.
#[derive(Debug)]
struct Cursor {
    /// Index of the event being dispatched.
    event: usize,
    /// Index of the handler of that event last started, [`Cursor::ROUTING`] while the
    /// event's projection is computed and looked up, or [`Cursor::DROPPING`] while the
    /// projection is dropped after the event was tallied.
    handler: usize,
    /// Handlers of that event that failed so far, for good.
    failures: u64,
    /// Whether a failure of that event went to the dead-letter queue.
    dead_lettered: bool,
    /// Of `failures`, those a subscription took to its dead letters (the rest stand).
    dead_letter_failures: u64,
    /// That event's hold, kept here once a subscriber deferred a retry, so that a later
    /// handler's panic (which ends the event's context) does not lose it.
    held: Option<Arc<Held>>,
}

impl Cursor {
    /// `handler` before any handler of the event has started.
    const ROUTING: usize = usize::MAX;
    /// `handler` while the event's projection is dropped, its outcome already tallied.
    const DROPPING: usize = usize::MAX - 1;

    fn new() -> Self {
        Self {
            event: 0,
            handler: Self::ROUTING,
            failures: 0,
            dead_lettered: false,
            dead_letter_failures: 0,
            held: None,
        }
    }

    #[inline(always)]
    fn next_event(&mut self) {
        self.event += 1;
        self.handler = Self::ROUTING;
        self.failures = 0;
        self.dead_lettered = false;
        self.dead_letter_failures = 0;
        self.held = None;
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Runs the handlers of `buf`'s events (sequences from `first`) in order, emptying `buf`.
    #[inline]
    pub(super) fn run_in_order(
        &self,
        first: u64,
        buf: &mut Vec<E>,
        deadline: Option<Instant>,
    ) -> Tally {
        let mut tally = Tally::default();
        self.run_events(first, buf, deadline, &mut tally, &mut Discard, &mut NoLocal);
        self.shared.drop_events(first, buf);
        tally
    }

    /// Runs `buf`'s events on the rayon pool when the batch is worth forking, emptying `buf`
    /// (an async job's batch; a parallel `publish` probes before it takes the batch, see
    /// `publish_parallel`).
    ///
    /// The first [`PROBE_EVENTS`] run here, timed, to estimate the cost of the rest (twice
    /// when the first estimate says fork, keeping the lower; see [`Self::probe`]). Below
    /// [`PARALLEL_MIN_WORK`] of estimated work the rest runs here too; above it the rest is
    /// split into chunks of about [`PARALLEL_TASK_WORK`] each (see [`Plan`]) that this thread
    /// and the pool's helpers take as they come (see [`Self::fork`]).
    pub(super) fn run_parallel(
        &self,
        first: u64,
        buf: &mut Vec<E>,
        deadline: Option<Instant>,
    ) -> Tally {
        let threads = self.pool_threads();
        if threads < 2 || buf.len() <= 2 * PROBE_EVENTS {
            return self.run_in_order(first, buf, deadline);
        }
        let mut tally = Tally::default();
        let (per_event, probed) = self.probe(first, buf, buf.len(), deadline, &mut tally);
        let rest = &mut buf[probed..];
        tally += self.run_rest(first + probed as u64, rest, deadline, per_event, threads);
        self.shared.drop_events(first, buf);
        tally
    }

    /// Threads of the pool a parallel run forks on.
    pub(super) fn pool_threads(&self) -> usize {
        self.shared
            .pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    /// Runs [`PROBE_EVENTS`] of `events` (sequences from `first`), timed; if `pending` events
    /// at that rate look worth forking, times [`PROBE_EVENTS`] more and keeps the cheaper
    /// estimate: a preemption inside one probe would otherwise make a cheap batch look
    /// expensive. Returns the estimate per event and how many events ran (`events` holds at
    /// least `2 * PROBE_EVENTS`).
    pub(super) fn probe(
        &self,
        first: u64,
        events: &[E],
        pending: usize,
        deadline: Option<Instant>,
        tally: &mut Tally,
    ) -> (Duration, usize) {
        let mut per_event = Duration::MAX;
        let mut probed = 0;
        while probed < 2 * PROBE_EVENTS
            && self.worth_forking(per_event, pending.saturating_sub(probed))
        {
            let started = Instant::now();
            let run = &events[probed..probed + PROBE_EVENTS];
            self.run_events(
                first + probed as u64,
                run,
                deadline,
                tally,
                &mut Discard,
                &mut NoLocal,
            );
            per_event = per_event.min(started.elapsed() / PROBE_EVENTS as u32);
            probed += PROBE_EVENTS;
        }
        (per_event, probed)
    }

    /// Runs `events` (sequences from `first`, estimated at `per_event` each): forked on a
    /// pool of `threads` if that is worth it, else in order here. Does not drop them.
    pub(super) fn run_rest(
        &self,
        first: u64,
        events: &mut [E],
        deadline: Option<Instant>,
        per_event: Duration,
        threads: usize,
    ) -> Tally {
        if threads >= 2 && self.worth_forking(per_event, events.len()) {
            let plan = Plan::new(per_event, events.len(), threads, PARALLEL_TASK_WORK);
            return self.fork(first, events, deadline, plan);
        }
        let mut tally = Tally::default();
        self.run_events(
            first,
            events,
            deadline,
            &mut tally,
            &mut Discard,
            &mut NoLocal,
        );
        tally
    }

    /// True if `n` events at `per_event` each are enough work to pay for a fork.
    pub(super) fn worth_forking(&self, per_event: Duration, n: usize) -> bool {
        per_event.as_nanos().saturating_mul(n as u128) >= PARALLEL_MIN_WORK.as_nanos()
    }

    /// Runs every handler of every event in `events` (sequences from `first`), in order,
    /// telling `outcomes` of each failure.
    ///
    /// The route table is read once per run: a swap (runtime subscriptions) takes effect at
    /// the next run. Panics are caught once around the whole run rather than around each
    /// handler call, which keeps the per-event path free of unwinding trampolines: `cursor`
    /// records where the run is, so after a panic the run resumes with the next handler of
    /// the same event.
    #[inline]
    pub(super) fn run_events(
        &self,
        first: u64,
        events: &[E],
        deadline: Option<Instant>,
        tally: &mut Tally,
        outcomes: &mut impl Outcomes<Err>,
        locals: &mut impl LocalHandlers<E, Err>,
    ) {
        let _span = trace::run(first, events.len());
        let routes = self.shared.routes.load();
        let _running = RunningHandlers::enter();
        let mut cursor = Cursor::new();
        // The event's hold, if a subscriber's retry takes one: lent to each event's context,
        // emptied when the event ends.
        let mut held = OnceLock::new();
        let mut counts = RunCounts::new();
        let mut unlisted = UnlistedCache::new();
        while cursor.event < events.len() {
            let run = panics::catch(|| {
                self.run_from(
                    &routes,
                    &mut cursor,
                    &mut held,
                    &mut counts,
                    &mut unlisted,
                    first,
                    events,
                    deadline,
                    tally,
                    outcomes,
                    locals,
                )
            });
            if let Err(payload) = run {
                self.handle_panic(&mut cursor, first, events, payload, tally, outcomes);
            }
        }
        counts.flush(|index| match index {
            slot if slot < LOCAL_ROUTES => routes.counters_at(slot),
            cached => unlisted.at(cached),
        });
    }

    /// The hot loop of [`Self::run_events`]: runs events from `cursor` on.
    ///
    /// `cursor` lives in memory so that it survives an unwind: per event the loop stores the
    /// event index and per handler the handler index, and nothing else on the success path.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)] // the loop's whole state, passed down, not stored
    fn run_from(
        &self,
        routes: &Table<E, Err>,
        cursor: &mut Cursor,
        held: &mut OnceLock<Arc<Held>>,
        counts: &mut RunCounts,
        unlisted: &mut UnlistedCache,
        first: u64,
        events: &[E],
        deadline: Option<Instant>,
        tally: &mut Tally,
        outcomes: &mut impl Outcomes<Err>,
        locals: &mut impl LocalHandlers<E, Err>,
    ) {
        let filter = self.shared.filter.as_deref();
        let sampling = self.shared.sampling.as_ref();
        let projections = self.shared.routes.projections();
        // Sequences to tell the settled-events layer of: the producer lane's, if one is
        // registered; none otherwise (a mask of 0 makes each check one AND and a branch).
        let tell = if self.shared.settled.get().is_some() {
            PRODUCER_LANE
        } else {
            0
        };
        while let Some(event) = events.get(cursor.event) {
            // Handlers are numbered across both lists: the store's, then the local ones. After
            // a handler's panic the run resumes here with the next one; the cursor goes back to
            // `ROUTING` while the projection is computed again, so that a panic in it reads as
            // the event's own, not as that handler's once more (which would loop).
            let resume = cursor.handler.wrapping_add(1);
            if resume != 0 {
                cursor.handler = Cursor::ROUTING;
            } else if held.get().is_some() {
                // Left by an event a `projection()` panic cut short: `handle_panic` released
                // it through the cursor's copy.
                held.take();
            }
            if let Some(filter) = filter {
                if resume == 0 && !filter(event) {
                    tally.filtered += 1;
                    if (first + cursor.event as u64) & tell != 0 {
                        self.tell_settled(first + cursor.event as u64);
                    }
                    cursor.next_event();
                    continue;
                }
            }
            let sequence = first + cursor.event as u64;
            let projection = event.projection();
            let (slot, shared) = routes.lookup(&projection);
            // The projection's counters, and where the run counts it: its route's (at its
            // slot), or for a projection without a route the registry's, through the run's
            // small cache.
            let (index, counters) = match slot {
                // Routes past the local array are counted straight into their atomics.
                Some(slot) if slot < LOCAL_ROUTES => (slot, routes.counters_at(slot)),
                Some(slot) => (usize::MAX, routes.counters_at(slot)),
                None => unlisted.counters(hash_of(&projection), |hash| {
                    projections.by_hash(hash, &projection)
                }),
            };
            // Without local handlers (every path but `publish_with`) `local` is an empty
            // slice known at compile time, and this is the plain lookup.
            let (local, state) = locals.get(&projection);
            if shared.is_some() || !local.is_empty() {
                let shared = shared.unwrap_or_default();
                let ctx = Context {
                    store: self,
                    sequence,
                    projection: &projection,
                    deadline,
                    held,
                    counters,
                };
                if resume != 0 {
                    // Resuming after a panic: the event's hold, if a retry took one.
                    if let Some(held) = cursor.held.take() {
                        let _ = ctx.held.set(held);
                    }
                }
                // A sampled event is timed from here (not after a handler's panic: its run
                // is cut in two).
                let started = match sampling {
                    Some(s) if resume == 0 && s.config.samples(sequence) => Some(s.start(sequence)),
                    _ => None,
                };
                for (index, entry) in shared.iter().enumerate().skip(resume) {
                    cursor.handler = index;
                    let _span = trace::handler(&projection, ctx.sequence, index);
                    match entry {
                        Entry::Handler(handler) | Entry::Direct(_, handler) => {
                            if let Err(err) = handler(&ctx, event) {
                                self.handler_failed(cursor, &ctx, err, outcomes);
                            }
                        }
                        Entry::Subscriber(subscriber) => {
                            let delivery = subscriber.deliver(&ctx, event);
                            if !matches!(delivery, Delivery::Done) {
                                self.delivered(cursor, &ctx, delivery, tally, outcomes);
                            }
                        }
                    }
                }
                let skip = resume.saturating_sub(shared.len());
                for (index, handler) in local.iter_mut().enumerate().skip(skip) {
                    cursor.handler = shared.len() + index;
                    let _span = trace::handler(&projection, ctx.sequence, cursor.handler);
                    if let Err(err) = handler(state, &ctx, event) {
                        self.handler_failed(cursor, &ctx, err, outcomes);
                    }
                }
                if let Some((started, waited)) = started {
                    self.record_latency(counters, waited, started);
                }
                if cursor.failures == 0 && !cursor.dead_lettered && held.get().is_none() {
                    tally.processed += 1;
                    counts.processed(index, counters);
                    if sequence & tell != 0 {
                        self.tell_settled(sequence);
                    }
                } else if self.settle_unusual(cursor, held, counters, tally) && sequence & tell != 0
                {
                    self.tell_settled(sequence);
                }
            } else {
                tally.unrouted += 1;
                counters.add(Outcome::Unrouted, 1);
                if sequence & tell != 0 {
                    self.tell_settled(sequence);
                }
            }
            // A projection's `Drop` is user code too; for keys without one (the usual enums,
            // integers and `&str`) this compiles to nothing.
            if std::mem::needs_drop::<E::Projection>() {
                cursor.handler = Cursor::DROPPING;
                drop(projection);
            }
            cursor.next_event();
        }
    }

    /// Settles an event whose handlers did not all simply succeed: one failed, a subscriber
    /// dead-lettered it, or a retry holds it. Out of the loop, which keeps the success path
    /// to one test. True if the event settled as handled: dead-lettered, not held, and no
    /// failure but the dead-lettered ones (a plain handler's failure stands).
    #[cold]
    #[inline(never)]
    fn settle_unusual(
        &self,
        cursor: &Cursor,
        held: &mut OnceLock<Arc<Held>>,
        counters: &ProjectionCounters,
        tally: &mut Tally,
    ) -> bool {
        tally.handler_errors += cursor.failures;
        let held_now = held.get().is_some();
        if let Some(held) = held.take() {
            // A retry is pending: the hold decides the event's place when it ends.
            let standing = match (cursor.dead_lettered, cursor.failures) {
                (true, _) => Standing::DeadLettered,
                (false, 0) => Standing::Ok,
                (false, _) => Standing::Failed,
            };
            held.release(standing, &self.shared.counters);
        } else if cursor.dead_lettered {
            tally.dead_lettered += 1;
            counters.add(Outcome::DeadLettered, 1);
        } else {
            tally.failed += 1;
            counters.add(Outcome::Failed, 1);
        }
        if cursor.failures != 0 {
            counters.add_handler_errors(cursor.failures);
        }
        cursor.dead_lettered && !held_now && cursor.failures == cursor.dead_letter_failures
    }

    /// Records a sampled event's wait in the ring (read when its handlers started) and its
    /// handlers' run time, from `started`.
    #[cold]
    #[inline(never)]
    fn record_latency(&self, counters: &ProjectionCounters, waited: Option<u64>, started: u64) {
        let (Some(sampling), Some(latency)) = (self.shared.sampling.as_ref(), counters.latency())
        else {
            return;
        };
        latency.record(waited, Sampling::between(started, sampling.now()));
    }

    /// Counts and reports what a subscriber said other than `Done`.
    #[cold]
    #[inline(never)]
    fn delivered(
        &self,
        cursor: &mut Cursor,
        ctx: &Context<'_, E, Err>,
        delivery: Delivery<Err>,
        tally: &mut Tally,
        outcomes: &mut impl Outcomes<Err>,
    ) {
        let failure = match delivery {
            Delivery::Done => return,
            Delivery::Failed(failure) => {
                cursor.failures += 1;
                failure
            }
            // Reported by the subscriber; the failure itself is in the dead-letter queue.
            Delivery::DeadLettered {
                handler_failed,
                panicked,
            } => {
                cursor.failures += u64::from(handler_failed);
                cursor.dead_letter_failures += u64::from(handler_failed);
                cursor.dead_lettered = true;
                tally.panics += u64::from(panicked);
                if handler_failed {
                    outcomes.failed(ctx.sequence, HandlerFailure::DeadLettered);
                }
                return;
            }
            // Counted as a handler error now; the event's outcome waits for the retry.
            Delivery::Deferred(failure) => {
                tally.handler_errors += 1;
                ctx.counters.add_handler_errors(1);
                if cursor.held.is_none() {
                    cursor.held = ctx.held.get().cloned();
                }
                if matches!(failure, HandlerFailure::Panic(_)) {
                    tally.panics += 1;
                }
                self.shared
                    .report_failure(ctx.projection, ctx.sequence, &failure);
                return panics::drop_contained(failure);
            }
        };
        if matches!(failure, HandlerFailure::Panic(_)) {
            tally.panics += 1;
        }
        self.shared
            .report_failure(ctx.projection, ctx.sequence, &failure);
        outcomes.failed(ctx.sequence, failure);
    }

    /// Counts, reports and hands on a handler's error.
    #[cold]
    #[inline(never)]
    fn handler_failed(
        &self,
        cursor: &mut Cursor,
        ctx: &Context<'_, E, Err>,
        err: Err,
        outcomes: &mut impl Outcomes<Err>,
    ) {
        cursor.failures += 1;
        self.shared.report(
            Some(ctx.projection),
            Some(ctx.sequence),
            ErrorKind::Handler(&err),
        );
        outcomes.failed(ctx.sequence, HandlerFailure::Error(err));
    }

    /// Accounts for a panic caught by [`Self::run_events`] and moves `cursor` past it.
    #[cold]
    #[inline(never)]
    fn handle_panic(
        &self,
        cursor: &mut Cursor,
        first: u64,
        events: &[E],
        payload: Payload,
        tally: &mut Tally,
        outcomes: &mut impl Outcomes<Err>,
    ) {
        let sequence = first + cursor.event as u64;
        if cursor.handler == Cursor::DROPPING {
            // The event's projection panicked in its `Drop`, after the event was tallied.
            cursor.next_event();
            return self.shared.drop_panicked(Some(sequence), payload);
        }
        tally.panics += 1;
        cursor.failures += 1;
        if cursor.handler != Cursor::ROUTING {
            // A handler panicked: report it; the run resumes with the event's next handler.
            // The projection is computed again: it returned before the handler ran.
            match panics::catch(|| events[cursor.event].projection()) {
                Ok(projection) => {
                    let message = panic_message(&*payload);
                    self.shared.report(
                        Some(&projection),
                        Some(sequence),
                        ErrorKind::Panic(message),
                    );
                    self.shared.drop_projection(Some(sequence), projection);
                }
                Err(again) => {
                    self.shared.report(
                        None,
                        Some(sequence),
                        ErrorKind::Panic(panic_message(&*payload)),
                    );
                    dispose(again);
                }
            }
            outcomes.failed(
                sequence,
                HandlerFailure::Panic(panics::into_message(payload)),
            );
        } else {
            // The event's own `projection()` (or its key's `Hash`/`Eq`) panicked, first or
            // when computed again to resume after a handler's panic: no (further) handler can
            // run for it. It counts as failed, with every failure so far, and is reported
            // without a projection.
            tally.handler_errors += cursor.failures;
            match cursor.held.take() {
                // A retry is pending: the hold decides the event's place when it ends.
                Some(held) => held.release(Standing::Failed, &self.shared.counters),
                None => tally.failed += 1,
            }
            cursor.next_event();
            self.shared.report(
                None,
                Some(sequence),
                ErrorKind::Panic(panic_message(&*payload)),
            );
            outcomes.failed(
                sequence,
                HandlerFailure::Panic(panics::into_message(payload)),
            );
        }
    }
}

thread_local! {
    /// How many runs of handlers (of any store) this thread is inside.
    static RUNNING: Cell<u32> = const { Cell::new(0) };
}

/// Marks this thread as running handlers while it lives: an `unsubscribe` called from a
/// handler must not wait for the runs in progress, its own among them.
pub(crate) struct RunningHandlers(());

impl RunningHandlers {
    pub(crate) fn enter() -> Self {
        RUNNING.with(|r| r.set(r.get() + 1));
        Self(())
    }

    /// True on a thread inside a run of handlers.
    pub(crate) fn on_this_thread() -> bool {
        RUNNING.with(|r| r.get() > 0)
    }
}

impl Drop for RunningHandlers {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(r.get() - 1));
    }
}

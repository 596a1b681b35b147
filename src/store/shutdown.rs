//! Shutting down and waiting: `drain`, `close`, and what dropping the last handle does.

use std::time::{Duration, Instant};

use super::{ErrorKind, EventStore, PublishReport, Shared};
use crate::error::TimeoutError;
use crate::event::Event;
use crate::panics;
use crate::wait::{IdleWait, expired};

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
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
        self.wait_idle(Instant::now().checked_add(timeout))
    }

    /// Shuts the store down (GoEventBus's `Close`), letting accepted work finish, all within
    /// `timeout`:
    /// 1. **Intake closes.** From now on every enqueue, batch, transaction commit and schedule
    ///    from outside fails with the event handed back (counted in
    ///    [`Metrics::rejected_closed`](crate::Metrics::rejected_closed)), producers blocked in
    ///    `Block` included. The timer stops: scheduled events still waiting are cancelled
    ///    (counted in [`Metrics::cancelled`](crate::Metrics::cancelled), their handles say
    ///    so); an event it was already firing is refused like any outside enqueue (its handle
    ///    says [`Rejected`](crate::ScheduleStatus::Rejected)).
    /// 2. **Accepted work finishes.** Every pending event is dispatched in the store's mode and
    ///    in-flight work is waited for, again and again while handlers enqueue follow-ups
    ///    through their [`Context`](crate::Context) (`ctx.enqueue`, `ctx.enqueue_batch`,
    ///    `ctx.begin_transaction`), which are still accepted, until nothing is pending or in
    ///    flight. (A handler's `ctx.store().schedule_after` is refused like any outside one:
    ///    the timer does not hold a shutdown open.)
    /// 3. **The store seals.** Nothing gets in any more, follow-ups included.
    ///
    /// Returns what the dispatch did. Calling it again is harmless. Do not call it from a
    /// handler: like [`drain`](Self::drain), it would wait for that handler itself (until its
    /// timeout).
    ///
    /// # Errors
    /// [`TimeoutError`] when the deadline passes first. Before the seal (the usual case), the
    /// store is then closed to outside producers but not sealed: the events not yet
    /// dispatched stay in the ring, and a later `publish` or `close` dispatches them (and
    /// accepts their handlers' follow-ups). After the seal, only events claimed just before
    /// it can be left, and their follow-ups are refused. A zero timeout dispatches nothing
    /// and fails if anything is pending or in flight.
    pub fn close(&self, timeout: Duration) -> Result<PublishReport, TimeoutError> {
        self.close_by(timeout, Closer::Caller)
    }

    /// [`close`](Self::close), with the dispatching of step 2 done by `closer`.
    pub(super) fn close_by(
        &self,
        timeout: Duration,
        closer: Closer,
    ) -> Result<PublishReport, TimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        // The producer lane first: once `is_closed` (the shared ring's mark) says closed,
        // the producer is refused too.
        if let Some(lane) = &self.shared.producer_lane {
            lane.close();
        }
        self.shared.ring.close();
        self.shared.blocked.wake_all();
        self.shut_down_layers();
        let mut report = self.settle_for_close(deadline, closer)?;
        self.shared.ring.seal();
        // Follow-ups blocked on a full ring: they are refused now. Sleeping consumers: nothing
        // will come any more.
        self.shared.blocked.wake_all();
        self.shared.idle_consumers.wake_all();
        report += self.settle_for_close(deadline, closer)?;
        Ok(report)
    }
}

/// Who dispatches what a closing store accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closer {
    /// The thread calling `close` (it publishes).
    Caller,
    /// The store's dedicated consumer thread (`ConsumerThread::close`): the caller only
    /// waits, so handlers keep running on that one thread, in order.
    Consumer,
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Until every event accepted so far is taken, or `deadline` passes, publishes (`Caller`:
    /// `publish` leaves events behind an enqueue still being written, and `close` must not)
    /// or waits for the consumer thread to (`Consumer`).
    fn publish_all(&self, deadline: Option<Instant>, closer: Closer) -> PublishReport {
        let limits = self.shared.tails().collect::<Vec<_>>();
        let behind = || limits.iter().any(|(lane, limit)| lane.ring.head() < *limit);
        let mut report = PublishReport::default();
        let mut idle = IdleWait::new(deadline);
        while behind() && !expired(deadline) {
            let r = match closer {
                Closer::Caller => self.publish_by_mode(deadline),
                Closer::Consumer => PublishReport::default(),
            };
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

    /// Dispatches and waits until nothing is pending or in flight (handlers may add
    /// follow-ups), or fails at `deadline`.
    fn settle_for_close(
        &self,
        deadline: Option<Instant>,
        closer: Closer,
    ) -> Result<PublishReport, TimeoutError> {
        let mut report = PublishReport::default();
        loop {
            // Retries still waiting run now, without their delays: a closing store does not
            // wait out a backoff. (Their follow-ups are dispatched below like any other.)
            while self.run_deferred(true) > 0 && !expired(deadline) {}
            report += self.publish_all(deadline, closer);
            let head = self.shared.head();
            self.wait_idle(deadline)?;
            if self.still_at(head) && self.deferred_waiting() == 0 {
                return Ok(report);
            }
            if expired(deadline) {
                return Err(self.timeout_error());
            }
        }
    }

    /// True when nothing is pending and no take happened since the head read `head`: with
    /// nothing in flight in between (the caller checked), the store is quiet. Two separate
    /// reads of "in flight" and "pending" are not enough: another thread's publish can take a
    /// follow-up between them and run its handler after both. A publisher counts in flight
    /// before it moves the head, so a take the in-flight check missed moved the head.
    pub(super) fn still_at(&self, head: u64) -> bool {
        // Sums over the lanes: each lane's head never passes its tail and neither goes back,
        // so the sums are equal only when every lane's are.
        self.shared.tail() == head && self.shared.head() == head
    }

    /// Runs one pending job of the store's pool if this thread is one of its workers and a
    /// job is there; returns whether it ran one. The work `drain` or `close` waits for may be
    /// queued behind this very thread, which would otherwise never run it.
    fn help_pool(&self) -> bool {
        let helped = match &self.shared.pool {
            // `None` unless this thread is one of the pool's.
            Some(pool) => pool.yield_now(),
            // No pool of our own: jobs go wherever `rayon::spawn` puts them, the pool of the
            // publishing thread. Only this thread's own queue is run (jobs it spawned itself,
            // as this `close` does): a job of an unrelated pool could take any time.
            None => rayon::yield_local(),
        };
        helped == Some(rayon::Yield::Executed)
    }

    /// Tells every layer the store is closing (the ring is closed already) and drops what
    /// they held back.
    fn shut_down_layers(&self) {
        for event in self.shared.layers.shut_down() {
            self.shared.drop_event(None, event);
        }
    }

    /// Waits until nothing is in flight, or `deadline`.
    ///
    /// Polls ([`IdleWait`]) rather than waiting to be
    /// woken: `drain` and `close` are rare and may return a little late, while a wake-up check
    /// would cost every publish a fence.
    pub(super) fn wait_idle(&self, deadline: Option<Instant>) -> Result<(), TimeoutError> {
        let mut wait = IdleWait::new(deadline);
        while !self.shared.counters.in_flight.is_idle() {
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

    /// What is left, for a [`TimeoutError`].
    fn timeout_error(&self) -> TimeoutError {
        let head = self.shared.head();
        TimeoutError {
            pending: self.shared.tail().saturating_sub(head),
            in_flight: self.shared.counters.in_flight.get(),
        }
    }
}

impl<E: Event, Err> Drop for Shared<E, Err> {
    /// The last handle is gone: report each pending event to the error hook as
    /// [`ErrorKind::Discarded`], then drop it; likewise the events the layers still hold (scheduled ones).
    /// No user code (`projection()`, the hook, an event's `Drop`) can unwind out of here.
    fn drop(&mut self) {
        // `&mut self`: no other thread is left, every claimed event is written.
        let pending = self.sources().flat_map(|lane| {
            std::iter::from_fn(move || lane.ring.take_one(lane.ring.tail()))
                .map(move |(sequence, event)| (sequence | lane.tag, event))
        });
        for (sequence, event) in pending {
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
                        panics::dispose(payload);
                    }
                }
            }
            self.drop_event(Some(sequence), event);
        }
        for event in self.layers.shut_down() {
            self.drop_event(None, event);
        }
        // The hook's captured state is user code too (the routes contain their own).
        panics::drop_contained(self.on_error.take());
    }
}

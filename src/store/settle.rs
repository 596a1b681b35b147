//! Settling a tick: publishing again and again until the follow-ups that handlers enqueue have
//! run too, within a bound on rounds and time.

use std::time::{Duration, Instant};

use super::local::LocalDispatcher;
use super::{DispatchMode, EventStore, PublishReport};
use crate::event::Event;
use crate::wait::expired;

/// How far [`EventStore::settle`] may go: at most some publish rounds, optionally within a
/// time budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    rounds: u32,
    timeout: Option<Duration>,
}

impl Settle {
    /// At most `rounds` publish rounds (at least 1 runs), with no time budget.
    pub fn rounds(rounds: u32) -> Self {
        Self {
            rounds: rounds.max(1),
            timeout: None,
        }
    }

    /// The same, but starting no new round after `timeout`, and passing the deadline to the
    /// handlers ([`Context::deadline`](crate::Context::deadline)).
    pub fn within(self, timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            ..self
        }
    }
}

/// What a [`settle`](EventStore::settle) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettleReport {
    /// Every round's [`PublishReport`], summed. In [`DispatchMode::Async`] its outcome fields
    /// stay 0, as `publish`'s do (the handlers ran on the pool): see the metrics.
    pub publish: PublishReport,
    /// The rounds run.
    pub rounds: u32,
    /// True when the store was quiet at the end: nothing pending, nothing in flight. False
    /// when the round limit or the time budget came first (a chain of follow-ups longer than
    /// the rounds, or a handler that re-enqueues forever): what is left waits for the next
    /// call.
    pub settled: bool,
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Publishes until the store is quiet, so that a tick's follow-ups (move, then damage,
    /// then die) run in the same tick: round after round, each a [`publish`](Self::publish)
    /// of what is pending at its start (in [`DispatchMode::Async`], also waiting for the
    /// round's handlers to finish), until nothing is pending or in flight, or `limit` stops
    /// it.
    ///
    /// ```
    /// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy, Settle};
    ///
    /// struct Countdown(u32);
    /// impl Event for Countdown {
    ///     type Projection = ();
    ///     fn projection(&self) {}
    /// }
    /// let mut dispatcher = Dispatcher::<Countdown>::new();
    /// dispatcher.on((), |ctx, c| {
    ///     if c.0 > 0 {
    ///         ctx.enqueue(Countdown(c.0 - 1))?; // a follow-up, for the next round
    ///     }
    ///     Ok(())
    /// });
    /// let store = EventStore::new(dispatcher, 16, OverrunPolicy::ReturnError)?;
    /// store.enqueue(Countdown(3))?;
    /// let report = store.settle(Settle::rounds(8));
    /// assert_eq!((report.rounds, report.publish.processed, report.settled), (4, 4, true));
    ///
    /// store.enqueue(Countdown(10))?;
    /// let cut = store.settle(Settle::rounds(2));
    /// assert_eq!((cut.rounds, cut.settled, store.pending()), (2, false, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn settle(&self, limit: Settle) -> SettleReport {
        self.settle_rounds(limit, |deadline| {
            let report = self.publish_by_mode(deadline);
            if self.shared.mode == DispatchMode::Async {
                // Their follow-ups are the next round's work; a deadline ends the settle.
                let _ = self.wait_idle(deadline);
            }
            report
        })
    }

    /// [`settle`](Self::settle) with [`publish_with`](Self::publish_with) rounds: the
    /// store's handlers, then `handlers` with `state`, in the caller.
    pub fn settle_with<S>(
        &self,
        handlers: &mut LocalDispatcher<E, S, Err>,
        state: &mut S,
        limit: Settle,
    ) -> SettleReport {
        self.settle_rounds(limit, |deadline| {
            self.publish_with_deadline(handlers, state, deadline)
        })
    }

    fn settle_rounds(
        &self,
        limit: Settle,
        mut round: impl FnMut(Option<Instant>) -> PublishReport,
    ) -> SettleReport {
        let deadline = limit.timeout.and_then(|t| Instant::now().checked_add(t));
        let mut report = SettleReport::default();
        while report.rounds < limit.rounds && !(report.rounds > 0 && expired(deadline)) {
            // Retries that are due run with each round; those due later stay scheduled (like
            // the timer's events, they do not keep a tick from settling).
            self.run_deferred(false);
            report.publish += round(deadline);
            report.rounds += 1;
            if self.is_quiet() {
                report.settled = true;
                break;
            }
        }
        report
    }

    /// Nothing pending, nothing in flight, judged as `close` does (see `still_at`).
    fn is_quiet(&self) -> bool {
        let head = self.shared.head();
        self.shared.counters.in_flight.is_idle() && self.still_at(head)
    }
}

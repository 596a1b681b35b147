//! Where the store lets go of events and reports failures: drops that contain a panicking
//! `Drop` (counted in `Metrics::drop_panics`), and calls to the `on_error` hook that contain a
//! panicking hook. Both run user code outside the handlers.

use super::routes::hash_of;
use super::{ErrorKind, ErrorReport, Shared};
use crate::error::HandlerFailure;
use crate::event::Event;
use crate::metrics::Outcome;
use crate::panics::{self, Payload, drop_caught};
use crate::trace;

impl<E: Event, Err> Shared<E, Err> {
    /// Reports a failure to the `on_error` hook, if any; a panic in the hook is contained.
    #[cold]
    pub(super) fn report(
        &self,
        projection: Option<&E::Projection>,
        sequence: Option<u64>,
        kind: ErrorKind<'_, Err>,
    ) {
        trace::failure(projection, sequence, &kind);
        if let Some(hook) = &self.on_error {
            let report = ErrorReport {
                projection,
                sequence,
                kind,
            };
            if let Err(payload) = panics::catch(|| hook(&report)) {
                panics::dispose(payload);
            }
        }
    }

    /// Reports a handler's failure to the `on_error` hook.
    pub(crate) fn report_failure(
        &self,
        projection: &E::Projection,
        sequence: u64,
        failure: &HandlerFailure<Err>,
    ) {
        let kind = match failure {
            HandlerFailure::Error(err) => ErrorKind::Handler(err),
            HandlerFailure::Panic(message) => ErrorKind::Panic(message),
            HandlerFailure::Timeout { .. } => ErrorKind::Timeout,
            // Not a handler's failure: counted in `skipped`, not reported.
            HandlerFailure::CircuitOpen | HandlerFailure::DeadLettered => return,
        };
        self.report(Some(projection), Some(sequence), kind);
    }

    /// Drops an event the store is done with, containing a panic in its `Drop` (counted in
    /// [`Metrics::drop_panics`] and reported).
    #[inline]
    pub(super) fn drop_event(&self, sequence: Option<u64>, event: E) {
        if let Err(payload) = drop_caught(event) {
            self.drop_panicked(sequence, payload);
        }
    }

    /// Drops an event `DropOldest` evicted, after counting it dropped under its projection.
    /// Its `projection()` and the key's `Hash` and `Eq` (the route lookup) are user code, run
    /// here on the producer's thread: a panic in them is contained and the event stays
    /// counted in the store-wide `dropped`, under no projection, as the run loop does for
    /// such events. It is not reported: reports are of events whose handling failed, and this
    /// one was never going to be handled.
    #[cold]
    pub(super) fn drop_evicted(&self, sequence: u64, event: E) {
        match panics::catch(|| event.projection()) {
            Ok(projection) => {
                let counted = panics::catch(|| {
                    let routed = self
                        .routes
                        .load()
                        .counters_of(&projection)
                        .map(|counters| counters.add(Outcome::Dropped, 1))
                        .is_some();
                    if !routed {
                        // As the run loop counts it: lock-free once met.
                        let projections = self.routes.projections();
                        projections
                            .by_hash(hash_of(&projection), &projection)
                            .add(Outcome::Dropped, 1);
                    }
                });
                if let Err(payload) = counted {
                    panics::dispose(payload);
                }
                self.drop_projection(Some(sequence), projection);
            }
            Err(payload) => panics::dispose(payload),
        }
        self.drop_event(Some(sequence), event);
    }

    /// Drops the events of `buf` (sequences from `first`), emptying it, as
    /// [`drop_event`](Self::drop_event) does: one `catch_unwind` around the whole loop, which
    /// resumes after a panicking `Drop`. Free for events without drop glue.
    #[inline]
    pub(super) fn drop_events(&self, first: u64, buf: &mut Vec<E>) {
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
    pub(super) fn drop_projection(&self, sequence: Option<u64>, projection: E::Projection) {
        if let Err(payload) = drop_caught(projection) {
            self.drop_panicked(sequence, payload);
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn drop_panicked(&self, sequence: Option<u64>, payload: Payload) {
        self.counters.add_drop_panics(1);
        let message = panics::panic_message(&*payload);
        self.report(None, sequence, ErrorKind::DropPanic(message));
        panics::dispose(payload);
    }
}

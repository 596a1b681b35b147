//! The `tracing` feature: spans and events for a user's subscriber (fmt, OpenTelemetry).
//!
//! Every instrumentation point of the crate is a call to one of the helpers here. Without the
//! feature they are empty `#[inline(always)]` functions returning zero-sized guards, so they
//! compile to nothing. With it:
//!
//! | what | kind, level | name / message | fields |
//! |---|---|---|---|
//! | a `publish` call | span, DEBUG | `publish` | `dispatched`, `processed`, `failed`, `unrouted`, `handler_errors` (recorded at the end) |
//! | a run of handlers over one chunk of events | span, DEBUG | `run` | `first` (sequence), `events` |
//! | one handler call | span, TRACE | `handler` | `projection` (`Debug`), `sequence`, `handler` (index) |
//! | a `DropOldest` eviction | event, WARN | "event dropped" | `sequence` |
//! | an enqueue refused | event, DEBUG | "event rejected" | `reason` (`full`, `closed`, `timeout`), `count` |
//! | a handler's error, panic or timeout; a panic in an event's `Drop`; an event discarded with the store | event, WARN (panics ERROR) | "handler failed", "handler panicked", ... | `kind`, `projection`, `sequence`, `panic` (the panic's message) |
//!
//! The handler span is per event and handler, so it sits at TRACE: `trace_span!` checks the
//! level first and builds nothing when the subscriber does not want it. The projection is
//! recorded through its `Debug`, which [`Event::Projection`](crate::Event::Projection) already
//! requires. A handler's error value is not recorded: `Err` has no `Debug` or `Display` bound,
//! and the feature adds none (features must not change what compiles); the
//! [`on_error`](crate::Builder::on_error) hook gets the value. The failure events go out from
//! the same place as the hook's reports, so a discarded event is traced only for a store with
//! an `on_error` hook (without one the store skips computing its projection at drop).

use std::fmt::Debug;

use crate::store::{ErrorKind, PublishReport};

/// Guard of the `publish` span: exits it when dropped.
#[must_use]
pub(crate) struct Publish(#[cfg(feature = "tracing")] tracing::span::EnteredSpan);

/// Enters a `publish` span.
#[inline(always)]
pub(crate) fn publish() -> Publish {
    Publish(
        #[cfg(feature = "tracing")]
        tracing::debug_span!(
            "publish",
            dispatched = tracing::field::Empty,
            processed = tracing::field::Empty,
            failed = tracing::field::Empty,
            unrouted = tracing::field::Empty,
            handler_errors = tracing::field::Empty,
        )
        .entered(),
    )
}

impl Publish {
    /// Records what the publish did.
    #[inline(always)]
    pub(crate) fn finish(self, _report: &PublishReport) {
        #[cfg(feature = "tracing")]
        if !self.0.is_disabled() {
            let r = _report;
            self.0.record("dispatched", r.dispatched);
            self.0.record("processed", r.processed);
            self.0.record("failed", r.failed);
            self.0.record("unrouted", r.unrouted);
            self.0.record("handler_errors", r.handler_errors);
        }
    }
}

/// Guard of a `run` or `handler` span: exits it when dropped (also on unwind).
#[must_use]
pub(crate) struct Entered(
    #[cfg(feature = "tracing")]
    #[allow(dead_code)] // held for its `Drop`, which exits the span
    tracing::span::EnteredSpan,
);

/// Enters a `run` span over `events` events from sequence `first`.
#[inline(always)]
pub(crate) fn run(_first: u64, _events: usize) -> Entered {
    Entered(
        #[cfg(feature = "tracing")]
        tracing::debug_span!("run", first = _first, events = _events as u64).entered(),
    )
}

/// Enters a `handler` span: handler number `index` of the event at `sequence`.
#[inline(always)]
pub(crate) fn handler<K: Debug>(_projection: &K, _sequence: u64, _index: usize) -> Entered {
    Entered(
        #[cfg(feature = "tracing")]
        tracing::trace_span!(
            "handler",
            projection = ?_projection,
            sequence = _sequence,
            handler = _index as u64,
        )
        .entered(),
    )
}

/// A `DropOldest` eviction of the event at `sequence`.
#[inline(always)]
pub(crate) fn dropped(_sequence: u64) {
    #[cfg(feature = "tracing")]
    tracing::warn!(sequence = _sequence, "event dropped");
}

/// `count` events refused, for `reason`.
#[inline(always)]
pub(crate) fn rejected(_reason: &'static str, _count: u64) {
    #[cfg(feature = "tracing")]
    tracing::debug!(reason = _reason, count = _count, "event rejected");
}

/// A failure the store reports (to the `on_error` hook as well).
#[inline(always)]
pub(crate) fn failure<K: Debug, Err>(
    _projection: Option<&K>,
    _sequence: Option<u64>,
    _kind: &ErrorKind<'_, Err>,
) {
    #[cfg(feature = "tracing")]
    report(_projection, _sequence, _kind);
}

#[cfg(feature = "tracing")]
#[cold]
#[inline(never)]
fn report<K: Debug, Err>(projection: Option<&K>, sequence: Option<u64>, kind: &ErrorKind<'_, Err>) {
    use tracing::{error, warn};
    // `Option`'s `Debug` would print `Some(..)`: record the field only when there is a value.
    let projection = projection.map(tracing::field::debug);
    match kind {
        ErrorKind::Handler(_) => {
            warn!(kind = "handler", projection, sequence, "handler failed");
        }
        ErrorKind::Panic(message) => {
            let panic = *message;
            error!(
                kind = "panic",
                projection, sequence, panic, "handler panicked"
            );
        }
        ErrorKind::Timeout => {
            warn!(kind = "timeout", projection, sequence, "handler timed out");
        }
        ErrorKind::DropPanic(message) => {
            let panic = *message;
            error!(
                kind = "drop_panic",
                sequence, panic, "event's drop panicked"
            );
        }
        ErrorKind::Discarded => {
            warn!(kind = "discarded", projection, sequence, "event discarded");
        }
    }
}

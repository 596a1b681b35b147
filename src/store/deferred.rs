//! The deferred-work seam: work a layer holds for later that runs on publishing threads (the
//! subscription layer's retries). The core only asks how much is waiting and runs what is
//! due; it never names the layer.
//!
//! A publish runs the due work first; `close` runs all of it, due or not, until none is left
//! (each job ends within its policy's bounded attempts); `publish_wait` sleeps no longer than
//! the earliest due time.

use std::sync::Arc;
use std::time::Instant;

use super::EventStore;
use crate::event::Event;

/// Work held for later by a layer.
pub(crate) trait Deferred<E: Event, Err>: Send + Sync {
    /// Jobs waiting, due or not (0: a publish skips the layer).
    fn waiting(&self) -> u64;
    /// When the earliest job is due, if any waits.
    fn next_due(&self) -> Option<Instant>;
    /// Runs the jobs due now (every job when `all`) on the calling thread; returns how many ran.
    fn run_due(&self, store: &EventStore<E, Err>, all: bool) -> u64;
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Registers the store's deferred work, once; later calls return the first one.
    pub(crate) fn deferred_or(
        &self,
        make: impl FnOnce() -> Arc<dyn Deferred<E, Err>>,
    ) -> &Arc<dyn Deferred<E, Err>> {
        self.shared.deferred.get_or_init(make)
    }

    /// Runs what deferred work is due (all of it when `all`); returns how many jobs ran.
    #[inline]
    pub(crate) fn run_deferred(&self, all: bool) -> u64 {
        match self.shared.deferred.get() {
            Some(work) if work.waiting() > 0 => work.run_due(self, all),
            _ => 0,
        }
    }

    /// Deferred jobs waiting.
    pub(crate) fn deferred_waiting(&self) -> u64 {
        self.shared.deferred.get().map_or(0, |w| w.waiting())
    }

    /// When the earliest deferred job is due.
    pub(crate) fn deferred_next_due(&self) -> Option<Instant> {
        self.shared.deferred.get().and_then(|w| w.next_due())
    }
}

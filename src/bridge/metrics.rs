//! What crossed the bridge, counted.

use std::sync::atomic::{AtomicU64, Ordering};

/// A backend's counters (lock-free; read with [`snapshot`]). Duplicates are counted by the
/// [`DedupWindow`](super::DedupWindow) that drops them.
///
/// [`snapshot`]: Self::snapshot
#[derive(Debug, Default)]
pub struct BridgeMetrics {
    sent: AtomicU64,
    received: AtomicU64,
    acked: AtomicU64,
    redelivered: AtomicU64,
    malformed: AtomicU64,
    dead_letter_failures: AtomicU64,
    reconnects: AtomicU64,
}

/// A reading of [`BridgeMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeMetricsSnapshot {
    /// Events appended to the stream.
    pub sent: u64,
    /// Events delivered to this consumer (redeliveries included; an entry's each).
    pub received: u64,
    /// Entries acknowledged (an entry holds one event, or several the sender packed).
    pub acked: u64,
    /// Events delivered again (after a consumer's death or restart).
    pub redelivered: u64,
    /// Received events that were not events (missing fields, bad id, over the size limit, a
    /// trimmed entry).
    pub malformed: u64,
    /// Events not events that could not be copied to the dead-letter stream (it refused).
    pub dead_letter_failures: u64,
    /// Connections made again after one broke.
    pub reconnects: u64,
}

/// The counters of [`BridgeMetrics`], by name, for [`BridgeMetrics::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    Sent,
    Received,
    Acked,
    Redelivered,
    Malformed,
    DeadLetterFailures,
    Reconnects,
}

impl BridgeMetrics {
    /// Adds `n` to `count`. Relaxed: each counter is a tally read on its own.
    pub(crate) fn add(&self, count: Count, n: u64) {
        let counter = match count {
            Count::Sent => &self.sent,
            Count::Received => &self.received,
            Count::Acked => &self.acked,
            Count::Redelivered => &self.redelivered,
            Count::Malformed => &self.malformed,
            Count::DeadLetterFailures => &self.dead_letter_failures,
            Count::Reconnects => &self.reconnects,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now (each read on its own: they may be from slightly different moments).
    pub fn snapshot(&self) -> BridgeMetricsSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BridgeMetricsSnapshot {
            sent: read(&self.sent),
            received: read(&self.received),
            acked: read(&self.acked),
            redelivered: read(&self.redelivered),
            malformed: read(&self.malformed),
            dead_letter_failures: read(&self.dead_letter_failures),
            reconnects: read(&self.reconnects),
        }
    }
}

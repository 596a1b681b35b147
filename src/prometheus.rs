//! Prometheus / OpenMetrics export (feature `prometheus`), on the `prometheus-client` crate.
//!
//! An [`Exporter`] is a collector for a `prometheus_client` registry; it exports the stores
//! [`add`](Exporter::add)ed to it. It reads each store at each scrape ([`metrics`](EventStore::metrics),
//! [`projection_metrics`](EventStore::projection_metrics), the sampled latency histograms and
//! [`health`](EventStore::health)), so it costs nothing between scrapes and nothing on the
//! publish path. It holds the stores weakly: once every handle of one is dropped it exports
//! nothing of it.
//!
//! Every series has the label `store` (the name given to [`add`](Exporter::add)); the per-projection
//! ones add `projection` (its `Debug` form, with the quotes of a string key taken off).
//!
//! | Family | Type | Labels | What |
//! |---|---|---|---|
//! | `ringbus_published_total` | counter | | events accepted |
//! | `ringbus_events_total` | counter | `outcome` | processed, failed, dead_lettered, filtered, dropped, unrouted |
//! | `ringbus_rejected_total` | counter | `reason` | full, closed, timeout |
//! | `ringbus_handler_errors_total`, `ringbus_panics_total`, `ringbus_retries_total`, `ringbus_skipped_total`, `ringbus_drop_panics_total`, `ringbus_cancelled_total` | counter | | as in [`Metrics`] |
//! | `ringbus_pending`, `ringbus_in_flight`, `ringbus_retrying`, `ringbus_scheduled`, `ringbus_dead_letters`, `ringbus_depth_high_water`, `ringbus_capacity` | gauge | | as in [`Metrics`] |
//! | `ringbus_healthy` | gauge | | 1 when [`health`](EventStore::health) says healthy, else 0 |
//! | `ringbus_backlog_ratio` | gauge | | the fullest lane's depth over its capacity |
//! | `ringbus_projection_events_total` | counter | `projection`, `outcome` | processed, failed, dead_lettered, dropped, unrouted |
//! | `ringbus_projection_handler_errors_total`, `ringbus_projection_retries_total`, `ringbus_projection_skipped_total` | counter | `projection` | |
//! | `ringbus_projection_retrying` | gauge | `projection` | |
//! | `ringbus_wait_seconds`, `ringbus_handler_seconds` | histogram | `projection` | sampled waits in the ring and handler run times ([`Builder::sample_latency`](crate::Builder::sample_latency)) |
//!
//! The histograms are converted from the store's HdrHistograms into fixed buckets
//! ([`BUCKETS`]): each recorded value falls in the first bucket whose bound is at or above the
//! lowest value HdrHistogram cannot tell apart from it (within 1%), and `_sum` is the mean
//! times the count.
//!
//! A scrape also records a health check, so regular scrapes keep the error-rate window of
//! [`health`](EventStore::health) current.
//!
//! ```
//! use prometheus_client::{encoding::text::encode, registry::Registry};
//! use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
//!
//! struct Order;
//! impl Event for Order {
//!     type Projection = &'static str;
//!     fn projection(&self) -> &'static str { "order" }
//! }
//! let mut dispatcher = Dispatcher::<Order>::new();
//! dispatcher.on("order", |_, _| Ok(()));
//! let store = EventStore::new(dispatcher, 64, OverrunPolicy::Block)?;
//! let mut registry = Registry::default();
//! let exporter = ringbus::prometheus::Exporter::register(&mut registry);
//! exporter.add("orders", &store);
//!
//! store.enqueue(Order)?;
//! store.publish();
//! let mut text = String::new();
//! encode(&mut text, &registry)?;
//! assert!(text.contains(
//!     r#"ringbus_projection_events_total{store="orders",projection="order",outcome="processed"} 1"#
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::event::Event;
use crate::health::Health;
use crate::metrics::{Metrics, ProjectionMetrics};
use crate::store::EventStore;

/// The upper bounds, in seconds, of the exported latency histograms' buckets (and `+Inf`).
pub const BUCKETS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A `prometheus-client` collector for any number of stores, each named in its series'
/// `store` label. Register it once per registry (a clone shares the stores), then
/// [`add`](Self::add) stores: every family then holds the series of every store, as
/// OpenMetrics requires (a family may appear only once in an exposition, so one collector
/// per store would break it as soon as there were two).
///
/// The exporter holds each store weakly (it does not keep it alive) and reads it at each
/// scrape; a store that is gone exports nothing and is forgotten.
#[derive(Clone, Default)]
pub struct Exporter {
    stores: Arc<Mutex<Vec<(String, Read)>>>,
}

impl Exporter {
    /// An exporter with no store yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exports `store` under the label `store="<name>"`.
    pub fn add<E, Err>(&self, name: &str, store: &EventStore<E, Err>)
    where
        E: Event + Send + 'static,
        Err: 'static,
    {
        let weak = store.downgrade();
        let read: Read = Arc::new(move || weak.upgrade().map(|store| Snapshot::of(&store)));
        self.lock().push((name.to_owned(), read));
    }

    /// A new exporter registered with `registry`: the usual start.
    pub fn register(registry: &mut Registry) -> Self {
        let exporter = Self::new();
        registry.register_collector(Box::new(exporter.clone()));
        exporter
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Read)>> {
        self.stores.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every live store's name and snapshot; the gone ones are forgotten. Read outside the
    /// lock (a scrape runs user code: projections' `Debug`, breakers' `state`).
    fn snapshots(&self) -> Vec<(String, Snapshot)> {
        let readers: Vec<(String, Arc<ReadFn>)> = self
            .lock()
            .iter()
            .map(|(name, read)| (name.clone(), Arc::clone(read)))
            .collect();
        let mut live = Vec::with_capacity(readers.len());
        let mut gone = Vec::new();
        for (name, read) in readers {
            match read() {
                Some(snapshot) => live.push((name, snapshot)),
                None => gone.push(Arc::as_ptr(&read)),
            }
        }
        if !gone.is_empty() {
            self.lock()
                .retain(|(_, read)| !gone.contains(&Arc::as_ptr(read)));
        }
        live
    }
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.lock().iter().map(|(n, _)| n.clone()).collect();
        f.debug_struct("Exporter").field("stores", &names).finish()
    }
}

/// What one scrape reads from a store.
struct Snapshot {
    metrics: Metrics,
    capacity: u64,
    health: Health,
    projections: Vec<ProjectionMetrics>,
    histograms: Vec<(String, Histogram<u64>, Histogram<u64>)>,
}

impl Snapshot {
    fn of<E, Err>(store: &EventStore<E, Err>) -> Self
    where
        E: Event + Send + 'static,
        Err: 'static,
    {
        Self {
            health: store.health(),
            metrics: store.metrics(),
            capacity: store.capacity() as u64,
            projections: store.projection_metrics(),
            histograms: store.latency_histograms(),
        }
    }
}

/// Reads a store, or `None` once it is gone.
type ReadFn = dyn Fn() -> Option<Snapshot> + Send + Sync;
type Read = Arc<ReadFn>;

/// A projection's `Debug` form as a label: a string key's quotes taken off.
fn projection_label(name: &str) -> &str {
    name.strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .filter(|n| !n.is_empty())
        .unwrap_or(name)
}

/// Encodes one family of a single metric type, one series per label set.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let encoder = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(encoder)?,
            _ => ConstGauge::new(value as i64).encode(encoder)?,
        }
    }
    Ok(())
}

/// Per-bucket counts of `h` (nanoseconds) at [`BUCKETS`], `+Inf` last, for the encoder, which
/// accumulates them.
fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    // Compared in whole nanoseconds: 1000 ns * 1e-9 is a hair above 1e-6 in floating point.
    let bounds = BUCKETS.map(|seconds| (seconds * 1e9).round() as u64);
    let mut counts = vec![0u64; BUCKETS.len() + 1];
    for v in h.iter_recorded() {
        let nanos = h.lowest_equivalent(v.value_iterated_to());
        let i = bounds.partition_point(|&bound| bound < nanos);
        counts[i] += v.count_at_value();
    }
    BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(counts)
        .collect()
}

/// A store-wide counter or gauge: its name, help and value.
type StoreField = (&'static str, &'static str, fn(&Snapshot) -> u64);

const STORE_COUNTERS: [StoreField; 7] = [
    ("ringbus_published", "Events accepted by the store", |s| {
        s.metrics.published
    }),
    ("ringbus_handler_errors", "Handler calls that failed", |s| {
        s.metrics.handler_errors
    }),
    ("ringbus_panics", "Handler calls that panicked", |s| {
        s.metrics.panics
    }),
    ("ringbus_retries", "Retry attempts run", |s| {
        s.metrics.retries
    }),
    (
        "ringbus_skipped",
        "Handler calls an open circuit breaker skipped",
        |s| s.metrics.skipped,
    ),
    (
        "ringbus_drop_panics",
        "Panics caught in the Drop of events or projections",
        |s| s.metrics.drop_panics,
    ),
    (
        "ringbus_cancelled",
        "Scheduled events cancelled before they fired",
        |s| s.metrics.cancelled,
    ),
];

const STORE_GAUGES: [StoreField; 8] = [
    (
        "ringbus_pending",
        "Events in the ring, not yet taken",
        |s| s.metrics.pending,
    ),
    (
        "ringbus_in_flight",
        "Events taken whose handlers have not finished",
        |s| s.metrics.in_flight,
    ),
    ("ringbus_retrying", "Events held for a pending retry", |s| {
        s.metrics.retrying
    }),
    (
        "ringbus_scheduled",
        "Scheduled events waiting in the timer",
        |s| s.metrics.scheduled,
    ),
    ("ringbus_dead_letters", "Dead letters in the queue", |s| {
        s.metrics.dead_letters
    }),
    (
        "ringbus_depth_high_water",
        "The most events seen waiting in one lane",
        |s| s.metrics.depth_high_water,
    ),
    ("ringbus_capacity", "Slots per lane", |s| s.capacity),
    (
        "ringbus_healthy",
        "1 when health() says healthy, else 0",
        |s| u64::from(s.health.healthy),
    ),
];

/// A per-projection counter or gauge: its name, type, help and value.
type ProjectionField = (
    &'static str,
    MetricType,
    &'static str,
    fn(&ProjectionMetrics) -> u64,
);

const PROJECTION_FIELDS: [ProjectionField; 4] = [
    (
        "ringbus_projection_handler_errors",
        MetricType::Counter,
        "Handler calls of a projection that failed",
        |p| p.handler_errors,
    ),
    (
        "ringbus_projection_retries",
        MetricType::Counter,
        "Retry attempts of a projection",
        |p| p.retries,
    ),
    (
        "ringbus_projection_skipped",
        MetricType::Counter,
        "Calls of a projection an open breaker skipped",
        |p| p.skipped,
    ),
    (
        "ringbus_projection_retrying",
        MetricType::Gauge,
        "Events of a projection held for a retry",
        |p| p.retrying,
    ),
];

impl Collector for Exporter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stores = self.snapshots();
        if stores.is_empty() {
            return Ok(());
        }
        let each = || stores.iter().map(|(name, s)| (("store", name.as_str()), s));
        for (name, help, field) in STORE_COUNTERS {
            let series = each().map(|(store, s)| ([store], field(s)));
            family(&mut encoder, name, help, MetricType::Counter, series)?;
        }
        let outcomes = each().flat_map(|(store, s)| {
            let m = &s.metrics;
            [
                ("processed", m.processed),
                ("failed", m.failed),
                ("dead_lettered", m.dead_lettered),
                ("filtered", m.filtered),
                ("dropped", m.dropped),
                ("unrouted", m.unrouted),
            ]
            .map(|(o, v)| ([store, ("outcome", o)], v))
        });
        family(
            &mut encoder,
            "ringbus_events",
            "Events by outcome",
            MetricType::Counter,
            outcomes,
        )?;
        let reasons = each().flat_map(|(store, s)| {
            let m = &s.metrics;
            [
                ("full", m.rejected_full),
                ("closed", m.rejected_closed),
                ("timeout", m.rejected_timeout),
            ]
            .map(|(r, v)| ([store, ("reason", r)], v))
        });
        let help = "Events refused and handed back, by reason";
        family(
            &mut encoder,
            "ringbus_rejected",
            help,
            MetricType::Counter,
            reasons,
        )?;
        for (name, help, field) in STORE_GAUGES {
            let series = each().map(|(store, s)| ([store], field(s)));
            family(&mut encoder, name, help, MetricType::Gauge, series)?;
        }
        {
            let help = "The fullest lane's depth over its capacity";
            let mut metric = encoder.encode_descriptor(
                "ringbus_backlog_ratio",
                help,
                None,
                MetricType::Gauge,
            )?;
            for (store, s) in each() {
                ConstGauge::new(s.health.backlog).encode(metric.encode_family(&[store])?)?;
            }
        }
        let projections = || {
            each().flat_map(|(store, s)| {
                s.projections
                    .iter()
                    .map(move |p| (store, ("projection", projection_label(&p.projection)), p))
            })
        };
        let events = projections().flat_map(|(store, projection, p)| {
            [
                ("processed", p.processed),
                ("failed", p.failed),
                ("dead_lettered", p.dead_lettered),
                ("dropped", p.dropped),
                ("unrouted", p.unrouted),
            ]
            .map(|(o, v)| ([store, projection, ("outcome", o)], v))
        });
        let help = "Events of a projection by outcome";
        family(
            &mut encoder,
            "ringbus_projection_events",
            help,
            MetricType::Counter,
            events,
        )?;
        for (name, kind, help, field) in PROJECTION_FIELDS {
            let series =
                projections().map(|(store, projection, p)| ([store, projection], field(p)));
            family(&mut encoder, name, help, kind, series)?;
        }
        if stores.iter().any(|(_, s)| !s.histograms.is_empty()) {
            // Seconds, named so (no UNIT line: some OpenMetrics parsers refuse one on a
            // histogram).
            for (name, help, wait) in [
                (
                    "ringbus_wait_seconds",
                    "Sampled time from enqueue to handler start",
                    true,
                ),
                (
                    "ringbus_handler_seconds",
                    "Sampled time an event's handlers ran",
                    false,
                ),
            ] {
                let mut metric =
                    encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
                for (store, s) in each() {
                    for (projection, w, r) in &s.histograms {
                        let h = if wait { w } else { r };
                        let labels = [store, ("projection", projection_label(projection))];
                        let sum = h.mean() * h.len() as f64 * 1e-9;
                        metric
                            .encode_family(&labels)?
                            .encode_histogram::<NoLabelSet>(sum, h.len(), &buckets(h), None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_each_value_at_its_first_bound_at_or_above_it() {
        let mut h = Histogram::<u64>::new(2).unwrap();
        h.record(500).unwrap(); // 0.5 us: the 1 us bucket
        h.record(1_000).unwrap(); // 1 us exactly: the 1 us bucket
        h.record(3_000_000).unwrap(); // 3 ms: the 5 ms bucket
        h.record_n(20_000_000_000, 2).unwrap(); // 20 s: +Inf
        let b = buckets(&h);
        assert_eq!(b.len(), BUCKETS.len() + 1);
        assert_eq!(b[0], (1e-6, 2));
        let five_ms = BUCKETS.iter().position(|&x| x == 5e-3).unwrap();
        assert_eq!(b[five_ms].1, 1);
        assert_eq!(b.last().copied(), Some((f64::INFINITY, 2)));
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), h.len());
    }

    #[test]
    fn string_keys_lose_their_quotes_and_others_keep_their_form() {
        assert_eq!(projection_label(r#""order""#), "order");
        assert_eq!(projection_label("Moved"), "Moved");
        assert_eq!(projection_label(r#""""#), r#""""#);
    }
}

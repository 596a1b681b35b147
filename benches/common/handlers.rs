//! The handlers every system calls: what they do ([`Work`]), where they leave their effects
//! ([`Sink`]), and the shapes they are registered in: ringbus's [`Dispatcher`], its runtime
//! subscriptions ([`subscribe`]), and the [`Table`] that `direct` and every peer's consumer
//! call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ahash::AHashMap;
use crossbeam_utils::CachePadded;
use ringbus::{BoxError, Dispatcher, EventStore, Subscription, SubscriptionBuilder};

use super::calibrate::spin;
use super::payload::{Ev, KEYS};

/// What a handler does besides counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A relaxed `fetch_add` of `a` to the key's counter, nothing else.
    Tiny,
    /// About 1 µs of CPU work (a calibrated loop, see `Calibration`), then the count.
    Spin(u64),
    /// The count, then records `now - ev.b` as the event's latency sample.
    Latency,
}

/// Where handlers leave their effects: per-key counters (cache-padded, so that parallel
/// handlers of different keys do not false-share) and latency samples.
#[derive(Debug)]
pub struct Sink {
    counts: [CachePadded<AtomicU64>; KEYS],
    epoch: Instant,
    /// One slot per event of a latency run, written by the handler; preallocated so that
    /// recording costs a store, not an allocation or a lock.
    samples: Box<[AtomicU64]>,
}

impl Sink {
    /// A sink with room for `samples` latency samples.
    pub fn new(samples: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: Default::default(),
            epoch: Instant::now(),
            samples: (0..samples).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Asserts that `system`'s handlers saw exactly `expected` events: the sum of all
    /// counters, since every event's `a` is 1. Called after a run, outside the timed region.
    pub fn expect_total(&self, expected: u64, system: &str) {
        assert_eq!(self.total(), expected, "{system} lost or duplicated events");
    }

    /// Events the handlers have seen so far (every event's `a` is 1): what a thread waiting
    /// for another's consumer watches.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    #[inline(always)]
    fn count(&self, ev: &Ev) {
        self.counts[ev.key as usize].fetch_add(ev.a, Ordering::Relaxed);
    }

    /// Nanoseconds since the sink was made: a stamp both threads can compare.
    #[inline(always)]
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The recorded latency samples, sorted, in ns.
    pub fn sorted_samples(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .samples
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect();
        v.sort_unstable();
        v
    }
}

/// The key -> handlers table used by the direct loop and by every peer's consumer: the same
/// shape as ringbus's dispatcher (a hash map to a `Vec` of boxed handlers) minus its
/// `Context`, error results and panic isolation.
pub type Table = AHashMap<u8, Vec<Box<dyn Fn(&Ev) + Send + Sync>>>;

/// Calls every handler of `ev`'s key.
#[inline(always)]
pub fn dispatch(table: &Table, ev: &Ev) {
    if let Some(handlers) = table.get(&ev.key) {
        for h in handlers {
            h(ev);
        }
    }
}

/// The handler body for `work`, handed to `register` as one concrete closure type so that
/// ringbus and the table each get a closure they can inline, with no extra indirection.
macro_rules! with_handler {
    ($work:expr, $sink:expr, $register:ident) => {
        match $work {
            Work::Tiny => {
                let s = Arc::clone($sink);
                $register(move |ev: &Ev| s.count(ev))
            }
            Work::Spin(iters) => {
                let s = Arc::clone($sink);
                $register(move |ev: &Ev| {
                    spin(iters);
                    s.count(ev)
                })
            }
            Work::Latency => {
                let s = Arc::clone($sink);
                $register(move |ev: &Ev| {
                    s.count(ev);
                    let lat = s.now_ns().saturating_sub(ev.b);
                    s.samples[ev.c as usize].store(lat, Ordering::Relaxed);
                })
            }
        }
    };
}

/// The peers' and the direct loop's handler table: one handler per key.
pub fn table(work: Work, sink: &Arc<Sink>) -> Table {
    fn build<F: Fn(&Ev) + Clone + Send + Sync + 'static>(f: F) -> Table {
        (0..KEYS as u8)
            .map(|k| {
                let h: Box<dyn Fn(&Ev) + Send + Sync> = Box::new(f.clone());
                (k, vec![h])
            })
            .collect()
    }
    with_handler!(work, sink, build)
}

/// ringbus's dispatcher: the same handlers, one per key.
pub fn dispatcher(work: Work, sink: &Arc<Sink>) -> Dispatcher<Ev> {
    fn build<F: Fn(&Ev) + Clone + Send + Sync + 'static>(f: F) -> Dispatcher<Ev> {
        let mut d = Dispatcher::new();
        for k in 0..KEYS as u8 {
            let f = f.clone();
            d.on(k, move |_, ev| {
                f(ev);
                Ok(())
            });
        }
        d
    }
    with_handler!(work, sink, build)
}

/// ringbus's runtime subscriptions: the same [`Work::Tiny`] handler as [`dispatcher`]'s, one
/// subscription per key, each builder set up by `options` (a filter, a retry policy) before
/// `handle`. Dropping the returned handles leaves the subscriptions in place.
pub fn subscribe(
    store: &EventStore<Ev>,
    sink: &Arc<Sink>,
    options: impl for<'s> Fn(
        SubscriptionBuilder<'s, Ev, BoxError>,
    ) -> SubscriptionBuilder<'s, Ev, BoxError>,
) -> Vec<Subscription> {
    (0..KEYS as u8)
        .map(|k| {
            let s = Arc::clone(sink);
            options(store.subscribe(k))
                .handle(move |_, ev| {
                    s.count(ev);
                    Ok(())
                })
                .expect("a valid policy and an open store")
        })
        .collect()
}

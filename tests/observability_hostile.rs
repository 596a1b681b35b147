//! A second reader's attempts to break the observability promises (issue 13): hostile user code
//! on the paths that now count per projection, sampled waits read from the wrong lap, depths
//! seen deeper than a ring can be. Every test bounds its run time with a deadline or a
//! watchdog: a hang fails.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{DispatchMode, Dispatcher, Event, EventStore, OverrunPolicy};

mod support {
    pub mod deadline;
    pub mod watchdog;
}
use support::deadline::deadline;
use support::watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(60);

/// Keeps the planned panics ("exploded" in the message) out of the output.
fn quiet() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planned = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| m.contains("exploded"));
            if !planned {
                default(info);
            }
        }));
    });
}

/// A projection key whose `Hash` panics for the value 13.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TouchyKey(u32);

impl Hash for TouchyKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        if self.0 == 13 {
            panic!("hash exploded");
        }
        self.0.hash(state);
    }
}

struct Touchy(u32);

impl Event for Touchy {
    type Projection = TouchyKey;
    fn projection(&self) -> TouchyKey {
        TouchyKey(self.0)
    }
}

/// `DropOldest` now computes an evicted event's projection and looks it up in the route table
/// on the producer's thread. The key's `Hash` is user code: a panic in it must stay in the
/// store, like a panic in `projection()` or in the event's `Drop` does, not unwind out of the
/// producer's `enqueue` (whose event did get in).
#[test]
fn a_panicking_hash_of_an_evicted_projection_stays_in_the_store() {
    let _deadline = deadline(
        "a_panicking_hash_of_an_evicted_projection_stays_in_the_store",
        LIMIT,
    );
    quiet();
    let mut d = Dispatcher::<Touchy>::new();
    d.on(TouchyKey(1), |_, _| Ok(()));
    let store = EventStore::new(d, 1, OverrunPolicy::DropOldest).unwrap();
    store.enqueue(Touchy(13)).unwrap();
    // Evicts the 13: its key's `Hash` panics while the eviction is counted.
    let enqueued =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.enqueue(Touchy(1))));
    let enqueued = enqueued.expect("a key's panicking Hash unwound out of enqueue");
    assert_eq!(enqueued.unwrap().dropped, 1);
    // The same through a batch that evicts, and through the second eviction of one enqueue.
    let mut batch = vec![Touchy(13)];
    store.enqueue_batch(&mut batch).unwrap(); // evicts the 1
    let mut batch = vec![Touchy(1)];
    let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.enqueue_batch(&mut batch)
    }));
    assert!(
        batch
            .expect("a key's panicking Hash unwound out of enqueue_batch")
            .is_ok(),
        "the batch got in"
    );
    assert_eq!(store.publish().processed, 1);
    let m = store.metrics();
    assert_eq!((m.published, m.dropped, m.processed), (4, 3, 1), "{m:?}");
    assert!(m.is_balanced(), "{m:?}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lap {
    /// Its handler enqueues `FOLLOW_UPS` follow-ups.
    Flood,
    /// No handler.
    FollowUp,
}

struct LapEv(Lap);

impl Event for LapEv {
    type Projection = Lap;
    fn projection(&self) -> Lap {
        self.0
    }
}

/// A ring of 1 slot has a stamp array of 2 (the ring plus `max_in_flight`, 1), and a stamp's lap
/// is kept in 16 bits: after 2 * 65536 more enqueues the slot of sequence 0 holds a stamp whose
/// lap reads as sequence 0's again.
const FOLLOW_UPS: u64 = 2 * 65536;

/// A sampled event's wait is its enqueue-to-start time. The wait must come from its own stamp,
/// or be counted lost: a handler that floods its own `DropOldest` ring of one slot overwrites
/// the event's stamp while it runs; a stamp written after the event started, read back as the
/// event's own, makes a wait that "ends before it began", which wraps to 2^48 ns (78 hours).
#[test]
fn a_sampled_wait_is_never_read_from_a_stamp_written_after_its_start() {
    let _deadline = deadline(
        "a_sampled_wait_is_never_read_from_a_stamp_written_after_its_start",
        LIMIT,
    );
    let mut d = Dispatcher::<LapEv>::new();
    d.on(Lap::Flood, |ctx, _| {
        for _ in 0..FOLLOW_UPS {
            ctx.enqueue(LapEv(Lap::FollowUp)).unwrap();
        }
        Ok(())
    });
    let store = EventStore::builder(d)
        .capacity(1)
        .policy(OverrunPolicy::DropOldest)
        .sample_latency(1)
        .build()
        .unwrap();
    store.enqueue(LapEv(Lap::Flood)).unwrap();
    let started = Instant::now();
    store.publish();
    store.publish();
    let elapsed = started.elapsed();
    let flood = store
        .latency()
        .into_iter()
        .find(|l| l.projection == "Flood")
        .unwrap();
    assert_eq!(flood.run.count, 1, "{flood:?}");
    assert_eq!(flood.wait.count + flood.wait_lost, 1, "{flood:?}");
    assert!(
        flood.wait.max <= elapsed,
        "a wait longer than the whole test: {flood:?} (test ran {elapsed:?})"
    );
}

/// The depth a snapshot records (`depth_high_water`) and health's backlog can never be deeper
/// than the lane's capacity: a lane never holds more. Under more threads than cores, with
/// tiny rings churning under `DropOldest`, a snapshot that reads the head, is preempted, then
/// reads the tail must not record a depth that never existed.
#[test]
fn a_snapshot_never_sees_a_lane_deeper_than_its_capacity() {
    watchdog(
        "a_snapshot_never_sees_a_lane_deeper_than_its_capacity",
        LIMIT,
        |abort| {
            for capacity in [1usize, 2, 4] {
                depth_within_capacity(capacity, &abort);
            }
        },
    );
}

fn depth_within_capacity(capacity: usize, abort: &Arc<AtomicBool>) {
    let mut d = Dispatcher::<LapEv>::new();
    d.on(Lap::FollowUp, |_, _| Ok(()));
    let store = EventStore::builder(d)
        .capacity(capacity)
        .policy(OverrunPolicy::DropOldest)
        .mode(DispatchMode::Sync)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let producers = 2 * thread::available_parallelism().map_or(2, |n| n.get());
    let mut threads: Vec<_> = (0..producers)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = store.enqueue(LapEv(Lap::FollowUp));
                }
            })
        })
        .collect();
    threads.push({
        let (store, stop) = (store.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                store.publish();
            }
        })
    });
    let worst_backlog = Arc::new(AtomicU64::new(0));
    let observers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop, worst) = (store.clone(), stop.clone(), worst_backlog.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let h = store.health();
                    worst.fetch_max(h.backlog.to_bits(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(3);
    let cap = capacity as u64;
    while Instant::now() < until && !abort.load(Ordering::Relaxed) {
        if store.metrics().depth_high_water > cap
            || f64::from_bits(worst_backlog.load(Ordering::Relaxed)) > 1.0
        {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads.into_iter().chain(observers) {
        t.join().unwrap();
    }
    let m = store.metrics();
    let backlog = f64::from_bits(worst_backlog.load(Ordering::Relaxed));
    assert!(
        m.depth_high_water <= cap,
        "ring of {capacity}: depth_high_water {} (a lane never holds more than its capacity)",
        m.depth_high_water
    );
    assert!(
        backlog <= 1.0,
        "ring of {capacity}: health saw a backlog of {backlog} (over the capacity)"
    );
}

mod health {
    use super::*;
    use ringbus::{BreakerState, CircuitBreaker, HealthThresholds, Unhealthy};

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Outcome {
        Ok,
        Err,
    }

    struct Ev(Outcome);

    impl Event for Ev {
        type Projection = Outcome;
        fn projection(&self) -> Outcome {
            self.0
        }
    }

    fn store() -> EventStore<Ev> {
        let mut d = Dispatcher::<Ev>::new();
        d.on(Outcome::Ok, |_, _| Ok(()));
        d.on(Outcome::Err, |_, _| Err("no".into()));
        EventStore::new(d, 256, OverrunPolicy::ReturnError).unwrap()
    }

    fn send(store: &EventStore<Ev>, outcome: Outcome, n: usize) {
        for _ in 0..n {
            store.enqueue(Ev(outcome)).unwrap();
        }
        store.publish();
    }

    /// The error rate's window must slide however often health is checked. Checks closer
    /// together than `window / 64` replace the newest record; if that replacement keeps the
    /// newest record forever within a step of now, the window never moves past the first
    /// check and failures from long ago count forever.
    #[test]
    fn the_window_slides_under_frequent_checks() {
        let _deadline = deadline("the_window_slides_under_frequent_checks", LIMIT);
        let store = store();
        let window = Duration::from_secs(10);
        store.set_health_thresholds(HealthThresholds {
            window,
            ..HealthThresholds::default()
        });
        let t0 = Instant::now();
        send(&store, Outcome::Err, 30);
        assert!(!store.health_at(t0).healthy, "30 of 30 failed");
        // A check every 10 ms for 20 s (a scrape loop, a health endpoint polled often), with
        // only successes after the first check.
        for ms in (10..=20_000u64).step_by(10) {
            if ms == 15_000 {
                send(&store, Outcome::Ok, 100);
            }
            let h = store.health_at(t0 + Duration::from_millis(ms));
            if ms == 20_000 {
                assert!(
                    h.healthy && h.error_rate == 0.0,
                    "the failures are 20 s old, the window 10 s: {h:?}"
                );
            }
        }
    }

    /// A user's circuit breaker whose `state` panics.
    #[derive(Debug)]
    struct Exploding;

    impl CircuitBreaker for Exploding {
        fn allow(&self, _: Instant) -> bool {
            true
        }
        fn record_success(&self, _: Instant) {}
        fn record_failure(&self, _: Instant) {}
        fn state(&self, _: Instant) -> BreakerState {
            panic!("breaker state exploded")
        }
    }

    /// A breaker and a clock are user code, contained everywhere the store calls them (the
    /// run loop, retries). `health()` asks each subscription's breaker for its state: a
    /// panic there must not unwind out of `health()` (nor out of a Prometheus scrape, which
    /// calls it).
    #[test]
    fn a_panicking_breaker_does_not_unwind_out_of_health() {
        let _deadline = deadline("a_panicking_breaker_does_not_unwind_out_of_health", LIMIT);
        quiet();
        let store = store();
        let _sub = store
            .subscribe(Outcome::Ok)
            .breaker(Exploding)
            .handle(|_, _| Ok(()))
            .unwrap();
        send(&store, Outcome::Ok, 1);
        let h = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.health()))
            .expect("a breaker's panicking state() unwound out of health()");
        assert!(
            !h.reasons
                .iter()
                .any(|r| matches!(r, Unhealthy::BreakerOpen { .. })),
            "{h:?}"
        );
    }
}

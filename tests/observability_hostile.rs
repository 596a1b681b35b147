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
        flood.wait.max <= elapsed.mul_f64(1.02),
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

/// Everything at once, hostile: handlers that fail, panic and observe the store from inside;
/// a `projection()` that panics, a key whose `Hash` panics, one whose `Debug` panics, a
/// `Debug` and an `on_error` hook and an event's `Drop` that call back into the store, events
/// whose `Drop` panics; more than 32 route slots, more than 8 projections without a route in
/// one run (with and without a catch-all), retries, dead letters, a breaker, a store-wide
/// filter, batches, transactions, the single producer's lane, scheduled events, `publish_with`,
/// an observer thread, `DropOldest` on a small ring, in every mode. Nothing may deadlock, and
/// once closed the counts per projection must add up to the store's:
/// `published == Σ published + filtered + pending + events whose projection() (or key's Hash)
/// panicked`.
mod soup {
    use super::*;
    use std::cell::Cell;
    use std::sync::Mutex;

    use ringbus::{
        ConsecutiveFailures, DeadLetterOverrun, LocalDispatcher, Producer, RetryPolicy, Settle,
    };

    const ROUTED: u16 = 40;
    /// Keys `ROUTED..UNROUTED` have no route of the store's.
    const UNROUTED: u16 = 60;
    /// Its `Hash` panics.
    const BAD_HASH: u16 = 998;
    /// Its `Debug` panics.
    const BAD_DEBUG: u16 = 999;
    /// Handled locally by `publish_with` only.
    const LOCAL: u16 = 41;

    static CURRENT: Mutex<Option<EventStore<Soup>>> = Mutex::new(None);

    thread_local! {
        static OBSERVING: Cell<bool> = const { Cell::new(false) };
    }

    /// Calls every observer of the current store, unless this thread is already inside one.
    fn observe() {
        if OBSERVING.with(|o| o.replace(true)) {
            return;
        }
        let store = CURRENT.try_lock().ok().and_then(|s| s.clone());
        if let Some(store) = store {
            let _ = store.projection_metrics();
            let _ = store.health();
            let _ = store.latency();
            let _ = store.metrics();
        }
        OBSERVING.with(|o| o.set(false));
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    struct Key(u16);

    impl Hash for Key {
        fn hash<H: Hasher>(&self, state: &mut H) {
            if self.0 == BAD_HASH {
                panic!("hash exploded");
            }
            self.0.hash(state);
        }
    }

    impl std::fmt::Debug for Key {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.0 == BAD_DEBUG {
                panic!("debug exploded");
            }
            observe();
            write!(f, "k{}", self.0)
        }
    }

    #[derive(Clone)]
    struct Soup {
        key: u16,
        bad_projection: bool,
        bad_drop: bool,
    }

    impl Soup {
        fn new(key: u16) -> Self {
            Self {
                key,
                bad_projection: false,
                bad_drop: false,
            }
        }

        /// Whether its projection panics (its own or its key's `Hash`): counted under no
        /// projection.
        fn is_bad(&self) -> bool {
            self.bad_projection || self.key == BAD_HASH
        }
    }

    impl Event for Soup {
        type Projection = Key;
        fn projection(&self) -> Key {
            if self.bad_projection {
                panic!("projection exploded");
            }
            Key(self.key)
        }
    }

    impl Drop for Soup {
        fn drop(&mut self) {
            if self.key % 11 == 0 {
                observe();
            }
            if self.bad_drop && !thread::panicking() {
                panic!("drop exploded");
            }
        }
    }

    /// The `i`-th event a producer sends: now and then a hostile one.
    fn nth(i: u64, t: u64) -> Soup {
        let key = ((i * 7 + t * 13) % u64::from(UNROUTED)) as u16;
        let mut ev = Soup::new(key);
        match i % 101 {
            13 => ev.bad_projection = true,
            29 => ev.key = BAD_HASH,
            47 => ev.key = BAD_DEBUG,
            61 => ev.bad_drop = true,
            _ => {}
        }
        ev
    }

    fn dispatcher(catch_all: bool) -> Dispatcher<Soup> {
        let mut d = Dispatcher::<Soup>::new();
        for key in 0..ROUTED {
            match key % 4 {
                0 => d.on(Key(key), |_, _| Ok(())),
                1 => d.on(Key(key), |_, _| Err("no".into())),
                2 => d.on(Key(key), |_, ev| {
                    if ev.key % 8 == 2 {
                        panic!("handler exploded");
                    }
                    Ok(())
                }),
                _ => d.on(Key(key), |ctx, _| {
                    let _ = ctx.store().projection_metrics();
                    let _ = ctx.store().health();
                    let _ = ctx.store().latency();
                    Ok(())
                }),
            };
        }
        if catch_all {
            d.on_any(|_, _| Ok(()));
        }
        d
    }

    /// Accepted events whose projection panics (counted under no projection).
    #[derive(Default)]
    struct Bad(AtomicU64);

    #[test]
    fn counts_add_up_and_nothing_deadlocks() {
        watchdog("counts_add_up_and_nothing_deadlocks", LIMIT, |abort| {
            quiet();
            for mode in [
                DispatchMode::Sync,
                DispatchMode::Parallel,
                DispatchMode::Async,
            ] {
                for catch_all in [false, true] {
                    if abort.load(Ordering::Relaxed) {
                        return;
                    }
                    one(mode, catch_all);
                }
            }
        });
    }

    fn one(mode: DispatchMode, catch_all: bool) {
        let tag = format!("{mode:?} catch_all={catch_all}");
        let (store, producer) = EventStore::builder(dispatcher(catch_all))
            .capacity(64)
            .policy(OverrunPolicy::DropOldest)
            .mode(mode)
            .sample_latency(2)
            // Filters routed keys 10 and 20 (never a hostile event).
            .filter(|ev: &Soup| !(ev.key == 10 || ev.key == 20) || ev.is_bad())
            .on_error(|_| observe())
            .build_with_producer()
            .unwrap();
        *CURRENT.lock().unwrap() = Some(store.clone());
        store
            .enable_dead_letters(1024, DeadLetterOverrun::DropOldest, None)
            .unwrap();
        let tries = Arc::new(AtomicU64::new(0));
        let t = tries.clone();
        let retried = store
            .subscribe(Key(5))
            .retry(RetryPolicy::new(3).initial_delay(Duration::ZERO))
            .handle(move |_, _| match t.fetch_add(1, Ordering::Relaxed) % 2 {
                0 => Err("once".into()),
                _ => Ok(()),
            })
            .unwrap();
        let dead = store
            .subscribe(Key(6))
            .dead_letters()
            .handle(|_, _| Err("poison".into()))
            .unwrap();
        let broken = store
            .subscribe(Key(7))
            .breaker(ConsecutiveFailures::new(1, Duration::from_millis(1), 1).unwrap())
            .handle(|_, _| Err("down".into()))
            .unwrap();
        let bad = Arc::new(Bad::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // Single enqueues.
        threads.push({
            let (store, bad) = (store.clone(), bad.clone());
            thread::spawn(move || {
                for i in 0..3000 {
                    let ev = nth(i, 0);
                    let is_bad = ev.is_bad();
                    if store.enqueue(ev).is_ok() && is_bad {
                        bad.0.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        });
        // Batches and transactions.
        threads.push({
            let (store, bad) = (store.clone(), bad.clone());
            thread::spawn(move || {
                let mut batch = Vec::new();
                for i in 0..300u64 {
                    let events: Vec<Soup> = (0..5).map(|j| nth(i * 5 + j, 1)).collect();
                    // Counted before they go in (the events are not kept: a copy of one whose
                    // `Drop` panics would panic here).
                    let n = events.iter().filter(|e| e.is_bad()).count() as u64;
                    let accepted = match i % 3 {
                        0 => {
                            batch.extend(events);
                            store.enqueue_batch(&mut batch).is_ok()
                        }
                        1 => {
                            let mut tx = store.begin_transaction();
                            tx.extend(events);
                            tx.commit_deferred().is_ok()
                        }
                        _ => {
                            let mut tx = store.begin_transaction();
                            tx.extend(events);
                            // A handler's failure: the events went in all the same.
                            matches!(
                                tx.commit(),
                                Ok(_) | Err(ringbus::CommitError::Handler { .. })
                            )
                        }
                    };
                    assert!(accepted, "DropOldest takes every batch");
                    bad.0.fetch_add(n, Ordering::Relaxed);
                }
            })
        });
        // The single producer.
        threads.push({
            let bad = bad.clone();
            let mut producer: Producer<Soup> = producer;
            thread::spawn(move || {
                for i in 0..3000 {
                    let ev = nth(i, 2);
                    let is_bad = ev.is_bad();
                    if producer.enqueue(ev).is_ok() && is_bad {
                        bad.0.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        });
        // Scheduled events (never hostile ones).
        threads.push({
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..200u64 {
                    let delay = Duration::from_micros(i % 7 * 100);
                    let _ = store.schedule_after(delay, Soup::new((i % 60) as u16));
                }
            })
        });
        // Publishers: plain, and with local handlers.
        threads.push({
            let (store, stop) = (store.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    store.publish();
                    thread::yield_now();
                }
            })
        });
        threads.push({
            let (store, stop) = (store.clone(), stop.clone());
            thread::spawn(move || {
                let mut local = LocalDispatcher::<Soup, u64>::new();
                local.on(Key(LOCAL), |n, _, _| {
                    *n += 1;
                    Ok(())
                });
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    store.publish_with(&mut local, &mut n);
                    thread::yield_now();
                }
            })
        });
        // An observer.
        threads.push({
            let (store, stop) = (store.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = store.health();
                    let _ = store.projection_metrics();
                    let _ = store.latency();
                    thread::sleep(Duration::from_micros(200));
                }
            })
        });
        let workers = threads.len() - 3;
        let join = |t: thread::JoinHandle<()>| {
            if let Err(p) = t.join() {
                let message = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned());
                panic!("{tag}: a test thread panicked: {message:?}");
            }
        };
        for t in threads.drain(..workers) {
            join(t);
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            join(t);
        }
        thread::sleep(Duration::from_millis(2));
        store.close(Duration::from_secs(20)).unwrap();
        let settled = store.settle(Settle::rounds(50));
        assert!(settled.settled, "{tag}: {settled:?}");
        drop((retried, dead, broken));
        let m = store.metrics();
        let per: Vec<_> = store.projection_metrics();
        let bad = bad.0.load(Ordering::Relaxed);
        assert!(m.is_balanced(), "{tag}: {m:?}");
        assert_eq!(
            (m.in_flight, m.retrying, m.pending),
            (0, 0, 0),
            "{tag}: {m:?}"
        );
        for p in &per {
            assert!(p.is_balanced(), "{tag}: {p:?}");
        }
        let sum = |f: fn(&ringbus::ProjectionMetrics) -> u64| per.iter().map(f).sum::<u64>();
        assert_eq!(
            sum(|p| p.published) + m.filtered + m.pending + bad,
            m.published,
            "{tag}: Σ published {} + filtered {} + pending {} + bad {bad} != {m:?}",
            sum(|p| p.published),
            m.filtered,
            m.pending,
        );
        assert_eq!(sum(|p| p.processed), m.processed, "{tag}: {m:?}");
        // Dropped, too: the store's also counts the evicted events whose projection panicked.
        assert!(sum(|p| p.dropped) <= m.dropped, "{tag}: {m:?}");
        assert_eq!(sum(|p| p.unrouted), m.unrouted, "{tag}: {m:?}");
        assert_eq!(sum(|p| p.dead_lettered), m.dead_lettered, "{tag}: {m:?}");
        assert_eq!(sum(|p| p.skipped), m.skipped, "{tag}: {m:?}");
        assert_eq!(sum(|p| p.retries), m.retries, "{tag}: {m:?}");
        // Failed: the store's also counts the events whose projection panicked at dispatch.
        assert!(sum(|p| p.failed) <= m.failed, "{tag}: {m:?}");
        let store = CURRENT.lock().unwrap().take();
        drop(store);
    }
}

/// `max_in_flight` is any positive number (a user who wants no bound may say `usize::MAX`),
/// and sampling sizes its stamp array from it (room for the ring's events and `max_in_flight`
/// more): that must neither overflow into an empty array (every sampled enqueue then indexes
/// out of bounds) nor ask for terabytes it cannot have (an allocation failure aborts the
/// process, where the ring's own allocation fails with `BuildError::AllocationFailed`).
#[test]
fn sampling_with_a_huge_max_in_flight_builds_and_runs() {
    let _deadline = deadline("sampling_with_a_huge_max_in_flight_builds_and_runs", LIMIT);
    for max_in_flight in [usize::MAX, (1 << 63) + 1, 1 << 40] {
        let mut d = Dispatcher::<LapEv>::new();
        d.on(Lap::FollowUp, |_, _| Ok(()));
        let built = EventStore::builder(d)
            .capacity(8)
            .max_in_flight(max_in_flight)
            .mode(DispatchMode::Async)
            .sample_latency(1)
            .build();
        let Ok(store) = built else {
            continue; // refused cleanly: fine too
        };
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..20 {
                store.enqueue(LapEv(Lap::FollowUp)).unwrap();
                store.publish();
            }
        }));
        assert!(
            sent.is_ok(),
            "max_in_flight {max_in_flight}: a sampled enqueue panicked"
        );
        store.drain(Duration::from_secs(10)).unwrap();
        let l = store.latency();
        assert_eq!(l[0].run.count, 20, "max_in_flight {max_in_flight}: {l:?}");
    }
}

/// Both lanes sampled: the producer lane's sequences carry `PRODUCER_LANE` and have stamps of
/// their own; each wait is read from its own lane's stamp (never the other lane's, whose
/// sequence numbers are the same).
#[test]
fn both_lanes_waits_come_from_their_own_stamps() {
    let _deadline = deadline("both_lanes_waits_come_from_their_own_stamps", LIMIT);
    let mut d = Dispatcher::<LapEv>::new();
    d.on(Lap::FollowUp, |_, _| Ok(()));
    d.on(Lap::Flood, |_, _| Ok(()));
    let (store, mut producer) = EventStore::builder(d)
        .capacity(16)
        .sample_latency(1)
        .build_with_producer()
        .unwrap();
    let start = Instant::now();
    // The shared lane's first, then a pause, then the producer's: had the producer lane's
    // waits been read from the shared lane's stamps (same sequence numbers), they would
    // carry the pause.
    for _ in 0..8 {
        store.enqueue(LapEv(Lap::Flood)).unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    let between = Instant::now();
    for _ in 0..8 {
        producer.enqueue(LapEv(Lap::FollowUp)).unwrap();
    }
    assert_eq!(store.publish().processed, 16);
    let after = between.elapsed();
    let by: std::collections::HashMap<_, _> = store
        .latency()
        .into_iter()
        .map(|l| (l.projection.clone(), l))
        .collect();
    let (shared, lane) = (&by["Flood"], &by["FollowUp"]);
    assert_eq!((shared.wait.count, lane.wait.count), (8, 8), "{by:?}");
    assert!(shared.wait.min >= Duration::from_millis(49), "{shared:?}");
    // HdrHistogram's values are within 1% of a sample (its max rounds up).
    let within = |d: Duration| d.mul_f64(1.02);
    assert!(
        lane.wait.max <= within(after),
        "{lane:?} (published {after:?} after)"
    );
    assert!(shared.wait.max <= within(start.elapsed()), "{shared:?}");
}

/// Projections without a route are counted by the route table's hash: two with one hash share
/// one entry. The hash pads a string's last chunk of bytes with zeros, so `"a"` and `"a\0"`
/// hashed alike, and the events of one were counted under the other's name, although their
/// `Debug` forms differ (the public promise: only projections with the same `Debug` form
/// share an entry).
#[test]
fn strings_that_differ_by_trailing_nuls_are_counted_apart() {
    let _deadline = deadline(
        "strings_that_differ_by_trailing_nuls_are_counted_apart",
        LIMIT,
    );
    struct Named(&'static str);
    impl Event for Named {
        type Projection = &'static str;
        fn projection(&self) -> &'static str {
            self.0
        }
    }
    let store = EventStore::new(Dispatcher::<Named>::new(), 16, OverrunPolicy::Block).unwrap();
    for name in ["a", "a\0", "a\0", "", "\0"] {
        store.enqueue(Named(name)).unwrap();
    }
    store.publish();
    let counts: std::collections::HashMap<_, _> = store
        .projection_metrics()
        .into_iter()
        .map(|m| (m.projection, m.unrouted))
        .collect();
    assert_eq!(counts.get(r#""a""#), Some(&1), "{counts:?}");
    assert_eq!(counts.get(r#""a\0""#), Some(&2), "{counts:?}");
    assert_eq!(counts.get(r#""""#), Some(&1), "{counts:?}");
    assert_eq!(counts.get(r#""\0""#), Some(&1), "{counts:?}");
}

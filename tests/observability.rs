//! Issue 13: counts per projection, the depth high-water mark, and sampled latencies. Every
//! test bounds its run time with a deadline or a watchdog: a hang fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use ringbus::{
    BuildError, DispatchMode, Dispatcher, Event, EventStore, OverrunPolicy, ProjectionMetrics,
    RetryPolicy,
};

mod support {
    pub mod deadline;
    pub mod watchdog;
}
use support::deadline::deadline;
use support::watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(60);

/// An event of one of five projections: `Ok` (handled), `Err` (its handler fails), `Panic` (its
/// handler panics), `None` (no handler), and `Both` (two handlers, the second fails).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Ok,
    Err,
    Panic,
    None,
    Both,
}

const KINDS: [Kind; 5] = [Kind::Ok, Kind::Err, Kind::Panic, Kind::None, Kind::Both];

#[derive(Debug, Clone)]
struct Ev(Kind);

impl Event for Ev {
    type Projection = Kind;
    fn projection(&self) -> Kind {
        self.0
    }
}

fn dispatcher() -> Dispatcher<Ev> {
    let mut d = Dispatcher::<Ev>::new();
    d.on(Kind::Ok, |_, _| Ok(()));
    d.on(Kind::Err, |_, _| Err("no".into()));
    d.on(Kind::Panic, |_, _| panic!("handler bomb"));
    d.on(Kind::Both, |_, _| Ok(()));
    d.on(Kind::Both, |_, _| Err("second".into()));
    d
}

/// Silences the panics the tests cause on purpose; any other panic (a failed assertion) is
/// printed as usual.
fn quiet_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| ["handler bomb", "unlucky"].contains(m));
        if !planned {
            default(info);
        }
    }));
}

fn by_name(store: &EventStore<Ev>) -> HashMap<String, ProjectionMetrics> {
    store
        .projection_metrics()
        .into_iter()
        .map(|m| (m.projection.clone(), m))
        .collect()
}

fn name(kind: Kind) -> String {
    format!("{kind:?}")
}

/// Checks that each projection's outcome is where its handlers put it, and that the
/// projections' sums match the store's counts.
fn assert_outcomes(store: &EventStore<Ev>, sent: &HashMap<Kind, u64>, tag: &str) {
    let m = store.metrics();
    let counts = by_name(store);
    for kind in KINDS {
        let p = counts.get(&name(kind)).cloned().unwrap_or_default();
        let sent = sent.get(&kind).copied().unwrap_or(0);
        assert!(p.is_balanced(), "{tag} {kind:?}: {p:?}");
        assert_eq!(p.published, sent, "{tag} {kind:?}: {p:?}");
        let handled = p.published - p.dropped;
        let (processed, failed, unrouted, errors) = match kind {
            Kind::Ok => (handled, 0, 0, 0),
            Kind::Err | Kind::Panic | Kind::Both => (0, handled, 0, handled),
            Kind::None => (0, 0, handled, 0),
        };
        assert_eq!(
            (p.processed, p.failed, p.unrouted, p.handler_errors),
            (processed, failed, unrouted, errors),
            "{tag} {kind:?}: {p:?}"
        );
    }
    let sum = |f: fn(&ProjectionMetrics) -> u64| counts.values().map(f).sum::<u64>();
    assert_eq!(sum(|p| p.published), m.published, "{tag}: {m:?}");
    assert_eq!(sum(|p| p.processed), m.processed, "{tag}: {m:?}");
    assert_eq!(sum(|p| p.failed), m.failed, "{tag}: {m:?}");
    assert_eq!(sum(|p| p.dropped), m.dropped, "{tag}: {m:?}");
    assert_eq!(sum(|p| p.unrouted), m.unrouted, "{tag}: {m:?}");
    assert_eq!(sum(|p| p.handler_errors), m.handler_errors, "{tag}: {m:?}");
}

/// Single-threaded and exact: which events `DropOldest` evicts and `ReturnError` refuses is
/// known, so each projection's counts are known.
#[test]
fn counts_per_projection_are_exact_under_each_policy() {
    let _deadline = deadline("counts_per_projection_are_exact_under_each_policy", LIMIT);
    quiet_panics();
    // 12 events, in this order, into a ring of 4.
    let order: Vec<Kind> = (0..12).map(|i| KINDS[i % KINDS.len()]).collect();
    for policy in [OverrunPolicy::DropOldest, OverrunPolicy::ReturnError] {
        let store = EventStore::new(dispatcher(), 4, policy).unwrap();
        let mut sent = HashMap::new();
        for &kind in &order {
            if store.enqueue(Ev(kind)).is_ok() {
                *sent.entry(kind).or_insert(0) += 1;
            }
        }
        let evicted = &order[..order.len() - 4];
        if policy == OverrunPolicy::ReturnError {
            assert_eq!(sent.values().sum::<u64>(), 4);
        }
        // Before any publish: nothing is attributed yet but the evictions.
        let early = by_name(&store);
        for kind in KINDS {
            let dropped = match policy {
                OverrunPolicy::DropOldest => evicted.iter().filter(|&&k| k == kind).count(),
                _ => 0,
            } as u64;
            let p = early.get(&name(kind)).cloned().unwrap_or_default();
            assert_eq!(
                (p.published, p.dropped),
                (dropped, dropped),
                "{policy:?} {kind:?}"
            );
        }
        assert_eq!(store.metrics().depth_high_water, 4, "{policy:?}");
        store.publish();
        assert_outcomes(&store, &sent, &format!("{policy:?}"));
        let counts = by_name(&store);
        if policy == OverrunPolicy::DropOldest {
            // The last four survived: Panic, None, Both, Ok (indices 8..12).
            assert_eq!(counts[&name(Kind::Ok)].processed, 1);
            assert_eq!(counts[&name(Kind::Ok)].dropped, 2);
            assert_eq!(counts[&name(Kind::Err)].dropped, 2);
            assert_eq!(counts[&name(Kind::Both)].handler_errors, 1);
        }
    }
}

/// More threads than cores on rings of 1, 2 and 4 slots, under every policy and mode: each
/// projection's `published` is exactly what producers got in, and the projections add up to
/// the store's counts.
#[test]
fn counts_per_projection_add_up_under_contention() {
    watchdog(
        "counts_per_projection_add_up_under_contention",
        LIMIT,
        |_| contended_counts(),
    );
}

fn contended_counts() {
    quiet_panics();
    let producers = 2 * thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let per_producer = 600u64;
    for capacity in [1, 2, 4] {
        for policy in [
            OverrunPolicy::DropOldest,
            OverrunPolicy::Block,
            OverrunPolicy::ReturnError,
        ] {
            for mode in [
                DispatchMode::Sync,
                DispatchMode::Parallel,
                DispatchMode::Async,
            ] {
                let store = EventStore::builder(dispatcher())
                    .capacity(capacity)
                    .policy(policy)
                    .mode(mode)
                    .sample_latency(4)
                    .build()
                    .unwrap();
                let sent: Vec<Arc<AtomicU64>> =
                    KINDS.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
                let done = Arc::new(AtomicU64::new(0));
                let threads: Vec<_> = (0..producers)
                    .map(|t| {
                        let (store, sent, done) = (store.clone(), sent.clone(), done.clone());
                        thread::spawn(move || {
                            for i in 0..per_producer {
                                let k = (i as usize + t) % KINDS.len();
                                let ok = store
                                    .enqueue_timeout(Ev(KINDS[k]), Duration::from_millis(1))
                                    .is_ok();
                                if ok {
                                    sent[k].fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            done.fetch_add(1, Ordering::Release);
                        })
                    })
                    .collect();
                let publisher = {
                    let (store, done) = (store.clone(), done.clone());
                    thread::spawn(move || {
                        while done.load(Ordering::Acquire) < producers as u64 {
                            store.publish();
                            thread::yield_now();
                        }
                    })
                };
                for t in threads {
                    t.join().unwrap();
                }
                publisher.join().unwrap();
                // What the publisher left: published, then waited for (async batches).
                store.publish();
                store.drain(Duration::from_secs(20)).unwrap();
                let sent: HashMap<Kind, u64> = KINDS
                    .iter()
                    .zip(&sent)
                    .map(|(&k, n)| (k, n.load(Ordering::Relaxed)))
                    .collect();
                let tag = format!("{capacity} {policy:?} {mode:?}");
                assert_outcomes(&store, &sent, &tag);
                let m = store.metrics();
                assert!(m.is_balanced(), "{tag}: {m:?}");
                assert!(
                    (1..=capacity as u64).contains(&m.depth_high_water),
                    "{tag}: {m:?}"
                );
                // One in four events sampled, at most: a wait and a run each.
                let sampled: u64 = store.latency().iter().map(|l| l.run.count).sum();
                // Each sampled run has its wait, or counts it lost (an async batch started
                // late, or evictions raced past it on these tiny rings).
                for l in store.latency() {
                    assert_eq!(l.wait.count + l.wait_lost, l.run.count, "{tag}");
                }
                let handled = m.processed + m.failed;
                assert!(sampled <= handled.div_ceil(4) + KINDS.len() as u64, "{tag}");
            }
        }
    }
}

/// A retried subscription's attempts, its held event and the final outcome are counted under
/// its projection.
#[test]
fn retries_and_their_outcome_are_counted_per_projection() {
    let _deadline = deadline(
        "retries_and_their_outcome_are_counted_per_projection",
        LIMIT,
    );
    let store = EventStore::new(Dispatcher::<Ev>::new(), 16, OverrunPolicy::Block).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    let _sub = store
        .subscribe(Kind::Err)
        .retry(RetryPolicy::new(3).initial_delay(Duration::ZERO))
        .handle(move |_, _| {
            // Fails twice, then succeeds.
            match seen.fetch_add(1, Ordering::Relaxed) {
                0 | 1 => Err("not yet".into()),
                _ => Ok(()),
            }
        })
        .unwrap();
    store.enqueue(Ev(Kind::Err)).unwrap();
    store.enqueue(Ev(Kind::Ok)).unwrap();
    store.publish();
    let p = by_name(&store)[&name(Kind::Err)].clone();
    assert_eq!(
        (p.retrying, p.published),
        (1, 1),
        "held for its retry: {p:?}"
    );
    let report = store.settle(ringbus::Settle::rounds(10));
    assert!(report.settled, "{report:?}");
    let p = by_name(&store)[&name(Kind::Err)].clone();
    assert_eq!(
        (p.processed, p.retrying, p.retries, p.handler_errors),
        (1, 0, 2, 2),
        "{p:?}"
    );
    let ok = by_name(&store)[&name(Kind::Ok)].clone();
    assert_eq!((ok.unrouted, ok.published), (1, 1), "{ok:?}");
}

/// `sample_latency(n)` samples the sequences that are multiples of `n`, in both waits and runs;
/// the recorded run time covers the handler's sleep.
#[test]
fn latencies_are_sampled_one_in_n_per_projection() {
    let _deadline = deadline("latencies_are_sampled_one_in_n_per_projection", LIMIT);
    for every in [1u64, 4, 64] {
        let mut d = Dispatcher::<Ev>::new();
        d.on(Kind::Ok, |_, _| {
            thread::sleep(Duration::from_micros(200));
            Ok(())
        });
        d.on(Kind::Err, |_, _| Ok(()));
        let store = EventStore::builder(d)
            .capacity(256)
            .sample_latency(every)
            .build()
            .unwrap();
        // Sequences 0..128: Ok at even ones, Err at odd ones.
        for i in 0..128 {
            let kind = if i % 2 == 0 { Kind::Ok } else { Kind::Err };
            store.enqueue(Ev(kind)).unwrap();
        }
        thread::sleep(Duration::from_millis(2));
        store.publish();
        let latency: HashMap<_, _> = store
            .latency()
            .into_iter()
            .map(|l| (l.projection.clone(), l))
            .collect();
        let ok = &latency[&name(Kind::Ok)];
        let err = &latency[&name(Kind::Err)];
        let multiples = |odd: bool| {
            (0..128u64)
                .filter(|s| s % every == 0 && (s % 2 == 1) == odd)
                .count() as u64
        };
        assert_eq!(
            (ok.run.count, ok.wait.count),
            (multiples(false), multiples(false))
        );
        assert_eq!(
            (err.run.count, err.wait.count),
            (multiples(true), multiples(true))
        );
        assert!(ok.run.p50 >= Duration::from_micros(190), "{ok:?}");
        assert!(ok.wait.min >= Duration::from_millis(1), "{ok:?}");
        assert!(
            ok.run.p50 <= ok.run.p99 && ok.run.p99 <= ok.run.max,
            "{ok:?}"
        );
    }
    let off = EventStore::new(dispatcher(), 8, OverrunPolicy::Block).unwrap();
    off.enqueue(Ev(Kind::Ok)).unwrap();
    off.publish();
    assert!(off.latency().is_empty(), "sampling is off by default");
    let bad = EventStore::builder(dispatcher()).sample_latency(3).build();
    assert!(matches!(bad, Err(BuildError::SampleRate(3))));
    let zero = EventStore::builder(dispatcher()).sample_latency(0).build();
    assert!(matches!(zero, Err(BuildError::SampleRate(0))));
}

/// The high-water mark is the deepest a lane got, not the depth now.
#[test]
fn the_depth_high_water_mark_keeps_the_peak() {
    let _deadline = deadline("the_depth_high_water_mark_keeps_the_peak", LIMIT);
    let store = EventStore::new(dispatcher(), 64, OverrunPolicy::Block).unwrap();
    for _ in 0..40 {
        store.enqueue(Ev(Kind::Ok)).unwrap();
    }
    store.publish();
    for _ in 0..5 {
        store.enqueue(Ev(Kind::Ok)).unwrap();
    }
    let m = store.metrics();
    assert_eq!((m.pending, m.depth_high_water), (5, 40), "{m:?}");
}

/// An event without a route and a projection with a panicking `Debug` are counted, not lost.
#[test]
fn unrouted_projections_are_counted_by_name() {
    let _deadline = deadline("unrouted_projections_are_counted_by_name", LIMIT);
    #[derive(PartialEq, Eq, Hash)]
    struct Key(u32);
    impl std::fmt::Debug for Key {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.0 == 13 {
                panic!("unlucky");
            }
            write!(f, "key-{}", self.0)
        }
    }
    struct K(u32);
    impl Event for K {
        type Projection = Key;
        fn projection(&self) -> Key {
            Key(self.0)
        }
    }
    quiet_panics();
    let store = EventStore::new(Dispatcher::<K>::new(), 64, OverrunPolicy::Block).unwrap();
    for n in [1, 2, 2, 13, 1, 1] {
        store.enqueue(K(n)).unwrap();
    }
    store.publish();
    let counts: HashMap<_, _> = store
        .projection_metrics()
        .into_iter()
        .map(|m| (m.projection, m.unrouted))
        .collect();
    assert_eq!(counts["key-1"], 3);
    assert_eq!(counts["key-2"], 2);
    assert_eq!(counts["(Debug panicked)"], 1);
    assert_eq!(store.metrics().unrouted, 6);
}

mod health {
    use super::*;
    use ringbus::{
        ConsecutiveFailures, DeadLetterOverrun, HealthThresholds, ManualClock, Unhealthy,
    };
    use std::time::Instant;

    /// Health judged without the error rate, which the failing handlers below would trip.
    fn ignore_error_rate(store: &EventStore<Ev>) {
        store.set_health_thresholds(HealthThresholds {
            max_error_rate: 1.0,
            ..HealthThresholds::default()
        });
    }

    fn send_one_err(store: &EventStore<Ev>) {
        store.enqueue(Ev(Kind::Err)).unwrap();
        store.publish();
    }

    /// Past the backlog threshold and back, with the default and a configured threshold.
    #[test]
    fn backlog_flips_past_its_threshold_and_back() {
        let _deadline = deadline("backlog_flips_past_its_threshold_and_back", LIMIT);
        let store = EventStore::new(dispatcher(), 8, OverrunPolicy::ReturnError).unwrap();
        for _ in 0..6 {
            store.enqueue(Ev(Kind::Ok)).unwrap();
        }
        let h = store.health();
        assert!(h.healthy, "6 of 8 is under 0.8: {h:?}");
        assert_eq!(h.backlog, 0.75);
        store.enqueue(Ev(Kind::Ok)).unwrap();
        let h = store.health();
        assert_eq!(
            h.reasons,
            [Unhealthy::Backlog {
                depth: 7,
                capacity: 8
            }]
        );
        store.set_health_thresholds(HealthThresholds {
            max_backlog_ratio: 0.9,
            ..HealthThresholds::default()
        });
        assert!(store.health().healthy, "7 of 8 is under 0.9");
        store.publish();
        let h = store.health();
        assert!(h.healthy && h.backlog == 0.0, "{h:?}");
    }

    /// The error rate counts only the window: failures past it stop counting, and too few
    /// events give no verdict.
    #[test]
    fn the_error_rate_flips_within_its_window_and_back() {
        let _deadline = deadline("the_error_rate_flips_within_its_window_and_back", LIMIT);
        let store = EventStore::new(dispatcher(), 128, OverrunPolicy::ReturnError).unwrap();
        quiet_panics();
        let window = Duration::from_secs(10);
        store.set_health_thresholds(HealthThresholds {
            window,
            ..HealthThresholds::default()
        });
        let t0 = Instant::now();
        let send = |kind: Kind, n: usize| {
            for _ in 0..n {
                store.enqueue(Ev(kind)).unwrap();
            }
            store.publish();
        };
        send(Kind::Err, 5);
        let h = store.health_at(t0);
        assert!(h.healthy, "5 events are under min_events: {h:?}");
        assert_eq!(h.error_rate, 1.0);
        send(Kind::Ok, 100);
        let h = store.health_at(t0 + Duration::from_secs(1));
        assert!(h.healthy, "5 of 105 is under 5%: {h:?}");
        send(Kind::Err, 10);
        let h = store.health_at(t0 + Duration::from_secs(2));
        match &h.reasons[..] {
            [
                Unhealthy::ErrorRate {
                    failures: 15,
                    finished: 115,
                    over,
                },
            ] => {
                assert!(*over >= window, "{h:?}")
            }
            other => panic!("{other:?}"),
        }
        // Ten seconds on: the window starts after the failures; only successes since.
        send(Kind::Ok, 30);
        let h = store.health_at(t0 + Duration::from_secs(13));
        assert!(h.healthy, "{h:?}");
        assert_eq!(h.error_rate, 0.0);
        assert_eq!(h.metrics.failed, 15, "the totals keep them");
        // A burst of failures inside the window flips it again.
        send(Kind::Panic, 20);
        let h = store.health_at(t0 + Duration::from_secs(14));
        assert!(
            matches!(
                h.reasons[..],
                [Unhealthy::ErrorRate {
                    failures: 20,
                    finished: 50,
                    ..
                }]
            ),
            "{h:?}"
        );
        assert!(h.errors_per_second > 0.0);
    }

    /// Dead letters waiting make the store unhealthy until they are taken.
    #[test]
    fn dead_letters_flip_health_until_drained() {
        let _deadline = deadline("dead_letters_flip_health_until_drained", LIMIT);
        let store = EventStore::new(Dispatcher::<Ev>::new(), 16, OverrunPolicy::Block).unwrap();
        store
            .enable_dead_letters(8, DeadLetterOverrun::DropNewest, None)
            .unwrap();
        let _sub = store
            .subscribe(Kind::Err)
            .dead_letters()
            .handle(|_, _| Err("poison".into()))
            .unwrap();
        ignore_error_rate(&store);
        send_one_err(&store);
        let h = store.health();
        assert_eq!(h.reasons, [Unhealthy::DeadLetters { waiting: 1 }]);
        assert_eq!(store.dead_letters().unwrap().drain().len(), 1);
        assert!(store.health().healthy);
    }

    /// An open breaker makes the store unhealthy; half-open (cooldown passed) it is healthy.
    #[test]
    fn an_open_breaker_flips_health_until_its_cooldown() {
        let _deadline = deadline("an_open_breaker_flips_health_until_its_cooldown", LIMIT);
        let store = EventStore::new(Dispatcher::<Ev>::new(), 16, OverrunPolicy::Block).unwrap();
        let clock = Arc::new(ManualClock::new());
        let breaker = ConsecutiveFailures::new(2, Duration::from_secs(5), 1).unwrap();
        let sub = store
            .subscribe(Kind::Err)
            .breaker(breaker)
            .clock(clock.clone())
            .handle(|_, _| Err("down".into()))
            .unwrap();
        ignore_error_rate(&store);
        send_one_err(&store);
        assert!(store.health().healthy, "one failure: still closed");
        send_one_err(&store);
        let h = store.health();
        assert_eq!(
            h.reasons,
            [Unhealthy::BreakerOpen {
                projection: name(Kind::Err),
                subscription: sub.id(),
            }]
        );
        clock.advance(Duration::from_secs(6));
        assert!(store.health().healthy, "half-open after the cooldown");
        store.set_health_thresholds(HealthThresholds {
            max_error_rate: 1.0,
            open_breakers: false,
            ..HealthThresholds::default()
        });
        clock.advance(Duration::ZERO);
        store.enqueue(Ev(Kind::Err)).unwrap();
        store.publish(); // fails on trial: open again, but not judged
        assert!(store.health().healthy);
    }

    /// A closed store says so.
    #[test]
    fn a_closed_store_is_unhealthy() {
        let _deadline = deadline("a_closed_store_is_unhealthy", LIMIT);
        let store = EventStore::new(dispatcher(), 8, OverrunPolicy::Block).unwrap();
        store.close(Duration::from_secs(5)).unwrap();
        assert_eq!(store.health().reasons, [Unhealthy::Closed]);
    }
}

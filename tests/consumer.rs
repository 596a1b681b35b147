//! `publish_wait` and the dedicated consumer thread: woken by producers (never a lost
//! wake-up), timing out when nothing comes, stopping on `close`, every event run once under
//! every policy and strategy, with more threads than cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{DispatchMode, Dispatcher, EventStore, OverrunPolicy, WaitStrategy};

mod support {
    pub mod ev;
    pub mod hostile;
    pub mod plan;
    pub mod watchdog;
}
use support::ev::Ev;
use support::hostile::{Hostile, quiet};
use support::plan::{Census, Reported, Tally};
use support::watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(60);

fn counting(
    capacity: usize,
    policy: OverrunPolicy,
    mode: DispatchMode,
) -> (EventStore<Ev>, Arc<AtomicU64>) {
    let ran = Arc::new(AtomicU64::new(0));
    let mut dispatcher = Dispatcher::<Ev>::new();
    let r = ran.clone();
    dispatcher.on(0, move |_, _| {
        r.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let store = EventStore::builder(dispatcher)
        .capacity(capacity)
        .policy(policy)
        .mode(mode)
        .build()
        .unwrap();
    (store, ran)
}

#[test]
fn publish_wait_sleeps_until_an_event_arrives_and_times_out_when_none_does() {
    watchdog("publish_wait", LIMIT, |_| {
        let (store, ran) = counting(8, OverrunPolicy::ReturnError, DispatchMode::Sync);
        // Nothing comes: it returns after the timeout, not before, with nothing dispatched.
        let started = Instant::now();
        assert_eq!(store.publish_wait(Duration::from_millis(30)).dispatched, 0);
        assert!(started.elapsed() >= Duration::from_millis(30));
        // An event comes after it went to sleep: it wakes well before its 30 s timeout.
        for round in 0..50 {
            let producer = {
                let store = store.clone();
                thread::spawn(move || {
                    thread::sleep(Duration::from_micros(200 * (round % 5)));
                    store.enqueue(Ev::new(0, round)).unwrap();
                })
            };
            let started = Instant::now();
            let report = store.publish_wait(Duration::from_secs(30));
            assert_eq!(report.dispatched, 1, "round {round}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "round {round}: slow wake"
            );
            producer.join().unwrap();
        }
        assert_eq!(ran.load(Ordering::Relaxed), 50);
    });
}

#[test]
fn close_wakes_a_sleeping_consumer() {
    watchdog("close_wakes_consumer", LIMIT, |_| {
        let (store, _) = counting(8, OverrunPolicy::Block, DispatchMode::Sync);
        let consumer = {
            let store = store.clone();
            thread::spawn(move || {
                let started = Instant::now();
                let report = store.publish_wait(Duration::from_secs(30));
                (report.dispatched, started.elapsed())
            })
        };
        thread::sleep(Duration::from_millis(20));
        store.close(Duration::from_secs(5)).unwrap();
        let (dispatched, waited) = consumer.join().unwrap();
        assert_eq!(dispatched, 0);
        assert!(
            waited < Duration::from_secs(5),
            "woken by the seal, not the timeout"
        );
    });
}

/// A store of [`Hostile`] events whose handler counts what it runs, then misbehaves as the
/// event's plan says; its `on_error` hook counts what it is told.
fn hostile(
    capacity: usize,
    policy: OverrunPolicy,
) -> (EventStore<Hostile>, Arc<Tally>, Arc<Reported>) {
    let ran = Arc::new(Tally::default());
    let reported = Arc::new(Reported::default());
    let mut dispatcher = Dispatcher::<Hostile>::new();
    let r = ran.clone();
    dispatcher.on(0, move |_, ev| {
        r.record(&ev.ev);
        ev.act();
        Ok(())
    });
    let store = EventStore::builder(dispatcher)
        .capacity(capacity)
        .policy(policy)
        .on_error(reported.hook())
        .build()
        .unwrap();
    (store, ran, reported)
}

/// 4 producers and a dedicated consumer on 2 cores, rings of 1, 2 and 4, every policy and
/// strategy, with hostile events (5 in 16: `projection()` panics, a handler panics with a
/// string or with a payload whose `Drop` panics, `Drop` panics): every accepted event runs
/// exactly once or fails in its projection, the consumer stops on `close`, its report plus what
/// `close` dispatched is everything, and every planned panic of an accepted event is counted
/// and reported once.
#[test]
fn a_dedicated_consumer_runs_everything_under_every_policy_and_strategy() {
    quiet();
    watchdog("dedicated_consumer", LIMIT, |abort| {
        let mut told_in_all = Census::default();
        for strategy in [
            WaitStrategy::BusySpin,
            WaitStrategy::SpinYield,
            WaitStrategy::SpinYieldPark,
        ] {
            for capacity in [1usize, 2, 4] {
                for policy in [
                    OverrunPolicy::DropOldest,
                    OverrunPolicy::Block,
                    OverrunPolicy::ReturnError,
                ] {
                    let (store, ran, reported) = hostile(capacity, policy);
                    let consumer = store.spawn_consumer(strategy);
                    let producers: Vec<_> = (0..4)
                        .map(|p| {
                            let store = store.clone();
                            let abort = abort.clone();
                            thread::spawn(move || {
                                let (mut accepted, mut planned) = (0u64, Census::default());
                                for i in 0..2_000 {
                                    if abort.load(Ordering::Relaxed) {
                                        break;
                                    }
                                    let ev = Ev::new(p, i);
                                    match store.enqueue_timeout(
                                        Hostile::planned(ev),
                                        Duration::from_secs(5),
                                    ) {
                                        Ok(_) => {
                                            accepted += 1;
                                            planned += Census::of(&ev);
                                        }
                                        Err(refused) => {
                                            refused.into_inner().defuse();
                                        }
                                    }
                                }
                                (accepted, planned)
                            })
                        })
                        .collect();
                    let (mut accepted, mut planned) = (0, Census::default());
                    for producer in producers {
                        let (a, p) = producer.join().unwrap();
                        accepted += a;
                        planned += p;
                    }
                    let closed = store.close(Duration::from_secs(20)).unwrap();
                    let by_consumer = consumer.join();
                    let m = store.metrics();
                    let tag = format!("{strategy:?} {capacity} {policy:?}");
                    let (ran_events, ran) = ran.get();
                    let told = reported.census();
                    // Events whose `projection()` panicked never reach the handler.
                    let bad_projections = told.projection_panics;
                    assert_eq!(ran.projection_panics, 0, "{tag}");
                    assert_eq!(m.published, accepted, "{tag}");
                    assert_eq!(
                        ran_events + bad_projections + m.dropped,
                        accepted,
                        "{tag}: {m:?}"
                    );
                    assert_eq!(
                        by_consumer.dispatched + closed.dispatched + m.dropped,
                        accepted,
                        "{tag}"
                    );
                    // Each failed event failed once: in a handler, or in its projection.
                    let failures = ran.in_handlers() + bad_projections;
                    assert_eq!(
                        (m.failed, m.handler_errors, m.panics),
                        (failures, failures, failures),
                        "{tag}: {m:?}"
                    );
                    assert_eq!(m.processed, ran_events - ran.in_handlers(), "{tag}: {m:?}");
                    // Every accepted event is dropped by the store once (run or evicted).
                    assert_eq!(m.drop_panics, planned.drop_panics, "{tag}: {m:?}");
                    // The hook was told of nothing unplanned, and of each panic once, by kind.
                    assert_eq!(reported.unexpected(), Vec::<String>::new(), "{tag}");
                    assert_eq!(
                        told,
                        Census {
                            drop_panics: planned.drop_panics,
                            projection_panics: bad_projections,
                            ..ran
                        },
                        "{tag}"
                    );
                    if policy == OverrunPolicy::DropOldest {
                        // The planned projection panics that did not happen were evicted.
                        let evicted = planned.projection_panics.checked_sub(bad_projections);
                        assert!(evicted.is_some_and(|e| e <= m.dropped), "{tag}: {m:?}");
                    } else {
                        // Nothing evicted: every accepted event's plan came true.
                        assert_eq!(told, planned, "{tag}");
                        assert_eq!(m.dropped, 0, "{tag}");
                    }
                    assert!(m.is_balanced(), "{tag}: {m:?}");
                    told_in_all += told;
                }
            }
        }
        // Not vacuous: every kind of misbehaviour happened (under `Block` all 8,000 events
        // run, a few hundred of each kind).
        let c = told_in_all;
        assert!(
            [
                c.projection_panics,
                c.handler_panics,
                c.bomb_panics,
                c.drop_panics
            ]
            .iter()
            .all(|&n| n > 0),
            "{c:?}"
        );
    });
}

/// `ConsumerThread::close`: the caller only waits, so every handler (the events accepted
/// before the close and the follow-ups their handlers add during it) runs on the consumer
/// thread, in sequence order; then the thread stops and `join` reports all of it.
#[test]
fn closing_through_the_consumer_thread_runs_everything_there_in_order() {
    for strategy in [
        WaitStrategy::BusySpin,
        WaitStrategy::SpinYield,
        WaitStrategy::SpinYieldPark,
    ] {
        watchdog(&format!("consumer close {strategy:?}"), LIMIT, move |_| {
            let log = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut dispatcher = Dispatcher::<Ev>::new();
            let l = log.clone();
            dispatcher.on(0, move |ctx, ev| {
                l.lock()
                    .unwrap()
                    .push((thread::current().id(), ctx.sequence()));
                // Each head event (producer 0) adds one follow-up (producer 1).
                if ev.producer == 0 {
                    ctx.enqueue(Ev::new(1, ev.index)).map_err(|e| e.kind())?;
                }
                Ok(())
            });
            // Room for every event and follow-up: a handler's follow-up must not wait under
            // `Block` for room only its own thread would make.
            let store = EventStore::builder(dispatcher)
                .capacity(4096)
                .policy(OverrunPolicy::Block)
                .build()
                .unwrap();
            let consumer = store.spawn_consumer(strategy);
            for i in 0..1_000 {
                store.enqueue(Ev::new(0, i)).unwrap();
            }
            consumer.close(Duration::from_secs(30)).unwrap();
            let report = consumer.join();
            let log = log.lock().unwrap();
            assert_eq!(log.len(), 2_000, "{strategy:?}");
            assert_eq!(
                report.dispatched, 2_000,
                "{strategy:?}: all on the consumer thread"
            );
            let me = thread::current().id();
            assert!(
                log.iter().all(|(id, _)| *id != me),
                "ran on the closing thread"
            );
            assert!(log.windows(2).all(|w| w[0].1 < w[1].1), "in sequence order");
            let m = store.metrics();
            assert_eq!((m.processed, m.pending, m.in_flight), (2_000, 0, 0));
            assert!(store.enqueue(Ev::new(0, 0)).is_err(), "closed");
        });
    }
}

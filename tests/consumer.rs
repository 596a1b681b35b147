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
    pub mod watchdog;
}
use support::ev::Ev;
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

/// 4 producers and a dedicated consumer on 2 cores, rings of 1, 2 and 4, every policy and
/// strategy: every accepted event runs exactly once, the consumer stops on `close`, and its
/// report plus what `close` dispatched is everything.
#[test]
fn a_dedicated_consumer_runs_everything_under_every_policy_and_strategy() {
    watchdog("dedicated_consumer", LIMIT, |abort| {
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
                    let (store, ran) = counting(capacity, policy, DispatchMode::Sync);
                    let consumer = store.spawn_consumer(strategy);
                    let producers: Vec<_> = (0..4)
                        .map(|p| {
                            let store = store.clone();
                            let abort = abort.clone();
                            thread::spawn(move || {
                                let mut accepted = 0u64;
                                for i in 0..2_000 {
                                    if abort.load(Ordering::Relaxed) {
                                        break;
                                    }
                                    if store
                                        .enqueue_timeout(Ev::new(p, i), Duration::from_secs(5))
                                        .is_ok()
                                    {
                                        accepted += 1;
                                    }
                                }
                                accepted
                            })
                        })
                        .collect();
                    let accepted: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
                    let closed = store.close(Duration::from_secs(20)).unwrap();
                    let by_consumer = consumer.join();
                    let m = store.metrics();
                    let tag = format!("{strategy:?} {capacity} {policy:?}");
                    assert_eq!(m.published, accepted, "{tag}");
                    assert_eq!(ran.load(Ordering::Relaxed) + m.dropped, accepted, "{tag}");
                    assert_eq!(
                        by_consumer.dispatched + closed.dispatched + m.dropped,
                        accepted,
                        "{tag}"
                    );
                    assert!(m.is_balanced(), "{tag}: {m:?}");
                }
            }
        }
    });
}

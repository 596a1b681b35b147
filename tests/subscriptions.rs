//! Runtime subscriptions and their failure handling: subscribe / unsubscribe while others
//! publish, filters, `once`, retries through the publishers, dead letters and replay, circuit
//! breakers and budgets driven by a manual clock (no sleeps), and the metrics invariant at
//! quiescence in every test.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ringbus::{
    ConsecutiveFailures, DispatchMode, Dispatcher, ErrorKind, EventStore, ManualClock,
    OverrunPolicy, Permanent, RetryPolicy,
};

mod support {
    pub mod keyed;
    pub mod watchdog;
}
use support::keyed::{Ev, ev, flaky, quiet_balanced};
use support::watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(60);

fn store(mode: DispatchMode) -> EventStore<Ev> {
    EventStore::builder(Dispatcher::new())
        .capacity(1024)
        .policy(OverrunPolicy::Block)
        .mode(mode)
        .build()
        .unwrap()
}

#[test]
fn subscriptions_run_in_order_after_the_dispatcher_s_handlers_and_filters_apply() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut dispatcher = Dispatcher::<Ev>::new();
    let l = log.clone();
    dispatcher.on(1, move |_, e| {
        l.lock().unwrap().push(("dispatcher", e.id));
        Ok(())
    });
    let store = EventStore::builder(dispatcher)
        .capacity(64)
        .filter(|e: &Ev| e.id != 13)
        .build()
        .unwrap();
    let subs: Vec<_> = ["first", "second"]
        .into_iter()
        .map(|name| {
            let l = log.clone();
            store
                .subscribe(1)
                .filter(move |e| name == "first" || e.id % 2 == 0)
                .handle(move |_, e| {
                    l.lock().unwrap().push((name, e.id));
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    for id in [1, 2, 13] {
        store.enqueue(ev(1, id)).unwrap();
    }
    store.publish();
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            ("dispatcher", 1),
            ("first", 1),
            ("dispatcher", 2),
            ("first", 2),
            ("second", 2)
        ]
    );
    let m = store.metrics();
    assert_eq!((m.processed, m.filtered), (2, 1), "{m:?}");
    quiet_balanced(m);
    for sub in subs {
        assert!(sub.unsubscribe());
    }
    store.enqueue(ev(1, 4)).unwrap();
    store.publish();
    assert_eq!(log.lock().unwrap().last(), Some(&("dispatcher", 4)));
}

/// Publishers run flat out on more threads than cores while the main thread subscribes and
/// unsubscribes, over and over: no call of a subscription starts or is under way once its
/// `unsubscribe` has returned.
#[test]
fn no_handler_runs_after_unsubscribe_returns() {
    watchdog("unsubscribe during publish", LIMIT, |abort| {
        let store = store(DispatchMode::Sync);
        let stop = Arc::new(AtomicBool::new(false));
        let publishers: Vec<_> = (0..3)
            .map(|p| {
                let (store, stop, abort) = (store.clone(), stop.clone(), abort.clone());
                thread::spawn(move || {
                    let mut id = 0;
                    while !stop.load(Ordering::Relaxed) && !abort.load(Ordering::Relaxed) {
                        let _ = store
                            .enqueue_timeout(ev(7, p * 1_000_000 + id), Duration::from_millis(10));
                        id += 1;
                        store.publish();
                    }
                })
            })
            .collect();
        let late = Arc::new(AtomicU64::new(0));
        for _ in 0..200 {
            let gone = Arc::new(AtomicBool::new(false));
            let ran = Arc::new(AtomicU64::new(0));
            let (g, r, l) = (gone.clone(), ran.clone(), late.clone());
            let sub = store
                .subscribe(7)
                .handle(move |_, _| {
                    if g.load(Ordering::SeqCst) {
                        l.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::yield_now();
                    if g.load(Ordering::SeqCst) {
                        l.fetch_add(1, Ordering::Relaxed);
                    }
                    r.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                })
                .unwrap();
            while ran.load(Ordering::Relaxed) == 0 {
                thread::yield_now();
            }
            assert!(sub.unsubscribe());
            gone.store(true, Ordering::SeqCst);
        }
        stop.store(true, Ordering::Relaxed);
        for p in publishers {
            p.join().unwrap();
        }
        assert_eq!(
            late.load(Ordering::Relaxed),
            0,
            "a handler ran after unsubscribe"
        );
        store.publish();
        quiet_balanced(store.metrics());
    });
}

#[test]
fn once_runs_for_exactly_one_event_under_parallel_publishers() {
    watchdog("once under parallel publish", LIMIT, |_| {
        for round in 0..20 {
            let store = store(DispatchMode::Parallel);
            let runs = Arc::new(AtomicU64::new(0));
            let r = runs.clone();
            store
                .subscribe(3)
                .once()
                .handle(move |_, _| {
                    r.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                })
                .unwrap();
            for id in 0..1000 {
                store.enqueue(ev(3, id)).unwrap();
            }
            let publishers: Vec<_> = (0..6)
                .map(|_| {
                    let store = store.clone();
                    thread::spawn(move || while store.publish().dispatched > 0 {})
                })
                .collect();
            for p in publishers {
                p.join().unwrap();
            }
            store.publish();
            assert_eq!(runs.load(Ordering::Relaxed), 1, "round {round}");
            quiet_balanced(store.metrics());
        }
    });
}

#[test]
fn a_retry_succeeds_on_attempt_three_without_stalling_the_publisher() {
    let store = store(DispatchMode::Sync);
    let clock = Arc::new(ManualClock::new());
    let calls = Arc::new(AtomicU32::new(0));
    store
        .subscribe(1)
        .retry(
            RetryPolicy::new(5)
                .initial_delay(Duration::from_secs(1))
                .max_delay(Duration::from_secs(60)),
        )
        .clock(clock.clone())
        .handle(flaky(2, &calls))
        .unwrap();
    store.enqueue(ev(1, 1)).unwrap();
    store.publish(); // attempt 1 fails, the retry waits 1 s of the manual clock
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    let m = store.metrics();
    assert_eq!(
        (m.retrying, m.processed, m.handler_errors),
        (1, 0, 1),
        "{m:?}"
    );
    assert!(m.is_balanced(), "{m:?}");
    store.publish(); // not due: nothing runs, nothing waits
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    clock.advance(Duration::from_secs(1));
    store.publish(); // attempt 2 fails, the next waits 2 s
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    clock.advance(Duration::from_millis(1999));
    store.publish();
    assert_eq!(calls.load(Ordering::Relaxed), 2, "backoff doubles");
    clock.advance(Duration::from_millis(1));
    store.publish(); // attempt 3 succeeds
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    let m = store.metrics();
    assert_eq!(
        (
            m.processed,
            m.failed,
            m.retries,
            m.handler_errors,
            m.retrying
        ),
        (1, 0, 2, 2, 0),
        "{m:?}"
    );
    quiet_balanced(m);
}

#[test]
fn exhausted_retries_go_to_dead_letters_and_replay_puts_them_back() {
    let store = store(DispatchMode::Sync);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    store
        .enable_dead_letters(
            8,
            Default::default(),
            Some(Box::new(move |letter| {
                s.lock().unwrap().push((letter.event.id, letter.attempts));
            })),
        )
        .unwrap();
    let clock = Arc::new(ManualClock::new());
    let calls = Arc::new(AtomicU32::new(0));
    let healthy = Arc::new(AtomicBool::new(false));
    let (c, h) = (calls.clone(), healthy.clone());
    store
        .subscribe(2)
        .retry(RetryPolicy::new(3).initial_delay(Duration::from_millis(10)))
        .dead_letters()
        .clock(clock.clone())
        .handle(move |_, _| {
            c.fetch_add(1, Ordering::Relaxed);
            if h.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("down".into())
            }
        })
        .unwrap();
    for id in 0..4 {
        store.enqueue(ev(2, id)).unwrap();
    }
    store.publish();
    for _ in 0..2 {
        clock.advance(Duration::from_secs(1));
        store.publish();
    }
    assert_eq!(calls.load(Ordering::Relaxed), 12, "3 attempts each");
    let mut letters = seen.lock().unwrap().clone();
    letters.sort();
    assert_eq!(letters, vec![(0, 3), (1, 3), (2, 3), (3, 3)]);
    let m = store.metrics();
    assert_eq!(
        (
            m.dead_lettered,
            m.dead_letters,
            m.handler_errors,
            m.retries,
            m.processed
        ),
        (4, 4, 12, 8, 0),
        "{m:?}"
    );
    quiet_balanced(m);

    healthy.store(true, Ordering::Relaxed);
    let report = store.dead_letters().unwrap().replay();
    assert_eq!((report.replayed, report.refused), (4, 0));
    store.publish();
    let m = store.metrics();
    assert_eq!(
        (m.published, m.processed, m.dead_lettered, m.dead_letters),
        (8, 4, 4, 0),
        "{m:?}"
    );
    quiet_balanced(m);
}

#[test]
fn a_permanent_error_skips_the_retries() {
    let store = store(DispatchMode::Sync);
    store
        .enable_dead_letters(8, Default::default(), None)
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    store
        .subscribe(1)
        .retry(RetryPolicy::new(5))
        .dead_letters()
        .handle(move |_, _| {
            c.fetch_add(1, Ordering::Relaxed);
            Err(Permanent::new("bad input").into())
        })
        .unwrap();
    store.enqueue(ev(1, 1)).unwrap();
    store.publish();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    let letters = store.dead_letters().unwrap().drain();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    let m = store.metrics();
    assert_eq!((m.dead_lettered, m.retrying, m.retries), (1, 0, 0), "{m:?}");
    quiet_balanced(m);
}

#[test]
fn the_breaker_opens_skips_then_half_opens_and_closes_by_the_clock() {
    let store = store(DispatchMode::Sync);
    let clock = Arc::new(ManualClock::new());
    let calls = Arc::new(AtomicU32::new(0));
    let healthy = Arc::new(AtomicBool::new(false));
    let (c, h) = (calls.clone(), healthy.clone());
    store
        .subscribe(1)
        .breaker(ConsecutiveFailures::new(2, Duration::from_secs(10), 1).unwrap())
        .clock(clock.clone())
        .handle(move |_, _| {
            c.fetch_add(1, Ordering::Relaxed);
            if h.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("down".into())
            }
        })
        .unwrap();
    let publish_one = |id| {
        store.enqueue(ev(1, id)).unwrap();
        store.publish();
    };
    publish_one(0);
    publish_one(1); // two failures: open
    publish_one(2);
    publish_one(3); // skipped
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    assert_eq!(store.metrics().skipped, 2);
    clock.advance(Duration::from_secs(10)); // half-open: one probe goes through
    healthy.store(true, Ordering::Relaxed);
    publish_one(4);
    publish_one(5); // closed again
    assert_eq!(calls.load(Ordering::Relaxed), 4);
    let m = store.metrics();
    // Skipped events are not failures: processed (their other handlers, none here, ran).
    assert_eq!((m.failed, m.processed, m.skipped), (2, 4, 2), "{m:?}");
    quiet_balanced(m);
}

#[test]
fn a_handler_past_its_budget_is_a_timeout_failure() {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = reports.clone();
    let store = EventStore::builder(Dispatcher::<Ev>::new())
        .capacity(16)
        .on_error(move |report| {
            if matches!(report.kind, ErrorKind::Timeout) {
                r.lock().unwrap().push(report.sequence);
            }
        })
        .build()
        .unwrap();
    let clock = Arc::new(ManualClock::new());
    let c = clock.clone();
    store
        .subscribe(1)
        .deadline(Duration::from_millis(5))
        .clock(clock.clone())
        .handle(move |ctx, e| {
            assert!(ctx.deadline().is_some(), "the budget shows as the deadline");
            if e.id == 1 {
                c.advance(Duration::from_millis(6));
            }
            Ok(())
        })
        .unwrap();
    store.enqueue(ev(1, 0)).unwrap();
    store.enqueue(ev(1, 1)).unwrap();
    store.publish();
    assert_eq!(*reports.lock().unwrap(), vec![Some(1)]);
    let m = store.metrics();
    assert_eq!((m.processed, m.failed), (1, 1), "{m:?}");
    quiet_balanced(m);
}

#[test]
fn close_runs_the_retries_still_waiting_without_their_delays() {
    let store = store(DispatchMode::Sync);
    let calls = Arc::new(AtomicU32::new(0));
    store
        .subscribe(1)
        .retry(
            RetryPolicy::new(4)
                .initial_delay(Duration::from_secs(3600))
                .max_delay(Duration::from_secs(4 * 3600)),
        )
        .handle(flaky(2, &calls))
        .unwrap();
    store.enqueue(ev(1, 1)).unwrap();
    store.publish();
    assert_eq!(store.metrics().retrying, 1);
    store.close(Duration::from_secs(10)).unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    let m = store.metrics();
    assert_eq!((m.processed, m.retrying, m.retries), (1, 0, 2), "{m:?}");
    quiet_balanced(m);
}

#[test]
fn panicking_subscription_handlers_are_contained_and_counted() {
    let store = store(DispatchMode::Sync);
    store
        .enable_dead_letters(8, Default::default(), None)
        .unwrap();
    store
        .subscribe(1)
        .retry(RetryPolicy::new(2).initial_delay(Duration::ZERO))
        .retry_panics()
        .dead_letters()
        .handle(|_, e| {
            if e.id % 2 == 0 {
                panic!("planned panic")
            } else {
                Ok(())
            }
        })
        .unwrap();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for id in 0..4 {
        store.enqueue(ev(1, id)).unwrap();
    }
    store.publish();
    store.publish(); // the retries, due at once
    std::panic::set_hook(hook);
    let m = store.metrics();
    assert_eq!(
        (
            m.processed,
            m.dead_lettered,
            m.panics,
            m.handler_errors,
            m.dead_letters
        ),
        (2, 2, 4, 4, 2),
        "{m:?}"
    );
    quiet_balanced(m);
}

/// While the breaker is open, a subscription that sends dead letters sends the skipped events
/// there (no handler error counted), and a retry that finds the breaker open uses up its
/// attempt without calling the handler.
#[test]
fn an_open_breaker_dead_letters_skips_and_holds_back_retries() {
    use ringbus::{BreakerState, CircuitBreaker, Clock, HandlerFailure};
    let store = store(DispatchMode::Sync);
    store
        .enable_dead_letters(16, Default::default(), None)
        .unwrap();
    let clock = Arc::new(ManualClock::new());
    let breaker = Arc::new(ConsecutiveFailures::new(1, Duration::from_secs(60), 1).unwrap());
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    store
        .subscribe(1)
        .retry(RetryPolicy::new(2).initial_delay(Duration::from_secs(1)))
        .dead_letters()
        .breaker(breaker.clone())
        .clock(clock.clone())
        .handle(move |_, _| {
            c.fetch_add(1, Ordering::Relaxed);
            Err("down".into())
        })
        .unwrap();
    store.enqueue(ev(1, 0)).unwrap();
    store.publish(); // fails: the breaker opens, a retry waits 1 s
    assert_eq!(breaker.state(clock.now()), BreakerState::Open);
    store.enqueue(ev(1, 1)).unwrap();
    store.publish(); // skipped: straight to the dead letters
    clock.advance(Duration::from_secs(1));
    store.publish(); // the retry finds the breaker open: its last attempt, used up
    assert_eq!(calls.load(Ordering::Relaxed), 1, "no call while open");
    let letters = store.dead_letters().unwrap().drain();
    let mut kinds: Vec<(u64, u32, bool)> = letters
        .iter()
        .map(|l| {
            (
                l.event.id,
                l.attempts,
                matches!(l.error, HandlerFailure::CircuitOpen),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec![(0, 2, true), (1, 0, true)]);
    let m = store.metrics();
    assert_eq!(
        (m.dead_lettered, m.handler_errors, m.skipped, m.retrying),
        (2, 1, 2, 0),
        "{m:?}"
    );
    quiet_balanced(m);
}

/// Oversubscribed: 3 producers and 3 publishers on rings of 1, 2 and 4 under `Block`, a
/// subscription that retries (panics too) and dead-letters: events whose handler always
/// panics end dead-lettered after their attempts, events that fail once end processed, the
/// rest processed at once; exact counts after `close`.
#[test]
fn retries_and_dead_letters_under_oversubscription_on_tiny_rings() {
    const PER_PRODUCER: u64 = 2_000;
    for capacity in [1, 2, 4] {
        watchdog(
            &format!("oversubscribed retries, ring of {capacity}"),
            LIMIT,
            move |abort| {
                let store = EventStore::builder(Dispatcher::<Ev>::new())
                    .capacity(capacity)
                    .policy(OverrunPolicy::Block)
                    .build()
                    .unwrap();
                store
                    .enable_dead_letters(1 << 16, Default::default(), None)
                    .unwrap();
                let failed_once = Arc::new(Mutex::new(std::collections::HashSet::new()));
                let f = failed_once.clone();
                store
                    .subscribe(1)
                    .retry(RetryPolicy::new(3).initial_delay(Duration::ZERO))
                    .retry_panics()
                    .dead_letters()
                    .handle(move |_, e| {
                        if e.id % 7 == 0 {
                            panic!("planned panic");
                        }
                        if e.id % 5 == 0 && f.lock().unwrap().insert(e.id) {
                            return Err("once".into());
                        }
                        Ok(())
                    })
                    .unwrap();
                let hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let producers: Vec<_> = (0..3)
                    .map(|p| {
                        let store = store.clone();
                        thread::spawn(move || {
                            for i in 0..PER_PRODUCER {
                                store.enqueue(ev(1, p * PER_PRODUCER + i)).unwrap();
                            }
                        })
                    })
                    .collect();
                let stop = Arc::new(AtomicBool::new(false));
                let publishers: Vec<_> = (0..3)
                    .map(|_| {
                        let (store, stop, abort) = (store.clone(), stop.clone(), abort.clone());
                        thread::spawn(move || {
                            while !stop.load(Ordering::Relaxed) && !abort.load(Ordering::Relaxed) {
                                if store.publish().dispatched == 0 {
                                    thread::yield_now();
                                }
                            }
                        })
                    })
                    .collect();
                for p in producers {
                    p.join().unwrap();
                }
                store.close(Duration::from_secs(30)).unwrap();
                stop.store(true, Ordering::Relaxed);
                for p in publishers {
                    p.join().unwrap();
                }
                std::panic::set_hook(hook);
                let total = 3 * PER_PRODUCER;
                let always = (0..total).filter(|id| id % 7 == 0).count() as u64;
                let once = (0..total).filter(|id| id % 5 == 0 && id % 7 != 0).count() as u64;
                let m = store.metrics();
                assert_eq!(m.published, total, "{m:?}");
                assert_eq!(
                    (m.dead_lettered, m.processed),
                    (always, total - always),
                    "{m:?}"
                );
                assert_eq!(m.panics, 3 * always, "{m:?}");
                assert_eq!(m.handler_errors, 3 * always + once, "{m:?}");
                assert_eq!(m.retries, 2 * always + once, "{m:?}");
                assert_eq!(store.dead_letters().unwrap().len() as u64, always);
                quiet_balanced(m);
            },
        );
    }
}

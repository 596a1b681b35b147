//! The subscription layer's failure paths found by a second reader: a hold surviving a later
//! panic, `unsubscribe` from a retried handler, `once` against `unsubscribe` and with a retry,
//! panics in user code around a retry, a commit told of a dead-lettered failure. Each under a
//! watchdog where it could hang.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{
    BreakerState, CircuitBreaker, DispatchMode, Dispatcher, EventStore, ManualClock, OverrunPolicy,
    RetryPolicy, Subscription,
};

mod support {
    pub mod keyed;
    pub mod watchdog;
}
use support::keyed::{Ev, ev, flaky, quiet_balanced};
use support::watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(20);

fn store_with(dispatcher: Dispatcher<Ev>) -> EventStore<Ev> {
    EventStore::builder(dispatcher)
        .capacity(64)
        .policy(OverrunPolicy::Block)
        .mode(DispatchMode::Sync)
        .build()
        .unwrap()
}

fn quietly<R>(f: impl FnOnce() -> R) -> R {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = f();
    std::panic::set_hook(hook);
    r
}

/// A subscription defers a retry (the run takes the event's hold), then a later handler of the
/// same event (a catch-all one) panics: the run resumes with a fresh context, loses the hold,
/// tallies the event itself, and the hold's run share is never released.
#[test]
fn a_panic_after_a_deferred_retry_keeps_the_event_s_hold() {
    let mut dispatcher = Dispatcher::<Ev>::new();
    dispatcher.on_any(|_, _| panic!("catch-all panics"));
    let store = store_with(dispatcher);
    let clock = Arc::new(ManualClock::new());
    let calls = Arc::new(AtomicU32::new(0));
    store
        .subscribe(1)
        .retry(RetryPolicy::new(3).initial_delay(Duration::ZERO))
        .clock(clock)
        .handle(flaky(1, &calls))
        .unwrap();
    store.enqueue(ev(1, 1)).unwrap();
    quietly(|| store.publish());
    store.publish(); // the retry, due at once, succeeds
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    let m = store.metrics();
    assert_eq!((m.failed, m.processed, m.retrying), (1, 0, 0), "{m:?}");
    quiet_balanced(m);
}

/// A retry runs outside any run of handlers, yet holds a loaded table: its handler calling
/// `unsubscribe` waits for that table's count to drop, which it never does.
#[test]
fn unsubscribe_from_a_retried_handler_does_not_deadlock() {
    watchdog("unsubscribe from a retry", LIMIT, |_| {
        let store = store_with(Dispatcher::new());
        let slot: Arc<Mutex<Option<Subscription>>> = Arc::new(Mutex::new(None));
        let s = slot.clone();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let sub = store
            .subscribe(1)
            .retry(RetryPolicy::new(3).initial_delay(Duration::ZERO))
            .handle(move |_, _| {
                if c.fetch_add(1, Ordering::Relaxed) == 0 {
                    return Err("first call fails".into());
                }
                if let Some(sub) = s.lock().unwrap().take() {
                    sub.unsubscribe();
                }
                Ok(())
            })
            .unwrap();
        *slot.lock().unwrap() = Some(sub);
        store.enqueue(ev(1, 1)).unwrap();
        store.publish();
        store.publish(); // the retry: its handler unsubscribes
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        quiet_balanced(store.metrics());
    });
}

/// `unsubscribe` of a `once` subscription whose one call is under way returns at once
/// (`remove` finds it gone from the table and skips the wait), while the docs say that once it
/// returns none of its calls is in progress.
#[test]
fn unsubscribe_of_a_running_once_subscription_waits_for_its_call() {
    watchdog("once vs unsubscribe", LIMIT, |_| {
        let store = store_with(Dispatcher::new());
        let started = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let (s, f) = (started.clone(), finished.clone());
        let sub = store
            .subscribe(1)
            .once()
            .handle(move |_, _| {
                s.store(true, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(300));
                f.store(true, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
        store.enqueue(ev(1, 1)).unwrap();
        let publisher = {
            let store = store.clone();
            thread::spawn(move || store.publish())
        };
        while !started.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        sub.unsubscribe();
        assert!(
            finished.load(Ordering::SeqCst),
            "unsubscribe returned while the handler's call was in progress"
        );
        publisher.join().unwrap();
    });
}

/// `once().retry(..)`: the one delivery marks the subscription removed, so its retry gives up
/// without running (the failure stands), silently.
#[test]
fn a_once_subscription_s_retry_runs() {
    let store = store_with(Dispatcher::new());
    let calls = Arc::new(AtomicU32::new(0));
    store
        .subscribe(1)
        .once()
        .retry(RetryPolicy::new(3).initial_delay(Duration::ZERO))
        .handle(flaky(1, &calls))
        .unwrap();
    store.enqueue(ev(1, 1)).unwrap();
    store.publish();
    store.publish();
    let m = store.metrics();
    assert_eq!(calls.load(Ordering::Relaxed), 2, "{m:?}");
    assert_eq!((m.processed, m.failed), (1, 0), "{m:?}");
    quiet_balanced(m);
}

/// A breaker whose `record_failure` panics from its second call on (user code, like any).
#[derive(Debug, Default)]
struct PanickyBreaker(AtomicU32);

impl CircuitBreaker for PanickyBreaker {
    fn allow(&self, _: Instant) -> bool {
        true
    }
    fn record_success(&self, _: Instant) {}
    fn record_failure(&self, _: Instant) {
        if self.0.fetch_add(1, Ordering::Relaxed) > 0 {
            panic!("breaker panics");
        }
    }
    fn state(&self, _: Instant) -> BreakerState {
        BreakerState::Closed
    }
}

/// A retry's breaker (or clock, or event `Clone` when dead-lettering) panics: the panic
/// escapes `publish`, the job's hold and its `waiting` count are never released, so the
/// event stays in `retrying` and `close` spins until its timeout.
#[test]
fn a_panic_in_a_retry_s_user_code_is_contained() {
    watchdog("panicking breaker in a retry", LIMIT, |_| {
        let store = store_with(Dispatcher::new());
        store
            .subscribe(1)
            .retry(RetryPolicy::new(2).initial_delay(Duration::ZERO))
            .breaker(PanickyBreaker::default())
            .handle(|_, _| Err("always".into()))
            .unwrap();
        store.enqueue(ev(1, 1)).unwrap();
        store.publish();
        let escaped = quietly(|| catch_unwind(AssertUnwindSafe(|| store.publish())).is_err());
        let closed = store.close(Duration::from_secs(2));
        assert!(!escaped, "a retry's panic escaped publish");
        assert!(closed.is_ok(), "close timed out: {closed:?}");
        quiet_balanced(store.metrics());
    });
}

/// A transaction's commit is told of dispatcher handlers' failures, but not of a
/// subscription's failure that went to the dead-letter queue: the commit reports success.
#[test]
fn a_commit_reports_a_dead_lettered_failure() {
    let store = store_with(Dispatcher::new());
    store
        .enable_dead_letters(8, Default::default(), None)
        .unwrap();
    store
        .subscribe(1)
        .dead_letters()
        .handle(|_, _| Err("fails for good".into()))
        .unwrap();
    let mut tx = store.begin_transaction();
    tx.push(ev(1, 1));
    let committed = tx.commit();
    let m = store.metrics();
    assert_eq!((m.dead_lettered, m.dead_letters), (1, 1), "{m:?}");
    assert!(
        committed.is_err(),
        "commit hid a handler failure: {committed:?}"
    );
}

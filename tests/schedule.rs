//! Scheduled events: time order, cancel, past deadlines, overrun when firing, close and drop.
//!
//! Timing tolerance: the machine running these is shared and noisy, so an event must fire no
//! earlier than its deadline and is given up to `LATE` (200 ms) after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{
    Dispatcher, EnqueueError, Event, EventStore, OverrunPolicy, ScheduleHandle, ScheduleStatus,
};

mod support {
    pub mod deadline;
}
use support::deadline::deadline;

/// Every test here fails the run if it is still going after this (a hang, not a slow machine).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

const LATE: Duration = Duration::from_millis(200);

/// A scheduled event: its id, and an optional token that lets a test count the live ones
/// (so it is neither `Copy` nor the shared `support::ev::Ev`).
#[derive(Debug)]
struct TokenEv {
    id: u64,
    /// Dropped with the event: lets a test count live events.
    _token: Option<Arc<()>>,
}

impl TokenEv {
    fn new(id: u64) -> Self {
        Self { id, _token: None }
    }
}

impl Event for TokenEv {
    type Projection = u8;
    fn projection(&self) -> u8 {
        0
    }
}

/// Polls `cond` every millisecond for up to `limit`.
fn wait_for(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    cond()
}

#[test]
fn events_fire_in_time_order_never_early_and_within_the_tolerance() {
    let _deadline = deadline(
        "events_fire_in_time_order_never_early_and_within_the_tolerance",
        DEADLINE,
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut d = Dispatcher::<TokenEv>::new();
    let log = seen.clone();
    d.on(0, move |_, ev| {
        log.lock().unwrap().push((ev.id, Instant::now()));
        Ok(())
    });
    let store = EventStore::new(d, 64, OverrunPolicy::ReturnError).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (store, stop) = (store.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                store.publish();
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // Scheduled out of order; two share a deadline (they fire in call order).
    let start = Instant::now();
    let offsets_ms = [120, 30, 90, 10, 60, 60, 150, 40];
    let deadlines: Vec<Instant> = offsets_ms
        .iter()
        .map(|&ms| start + Duration::from_millis(ms))
        .collect();
    let handles: Vec<ScheduleHandle> = deadlines
        .iter()
        .enumerate()
        .map(|(id, &at)| store.schedule_at(at, TokenEv::new(id as u64)).unwrap())
        .collect();
    assert_eq!(store.metrics().scheduled, 8);
    assert!(wait_for(Duration::from_secs(5), || seen
        .lock()
        .unwrap()
        .len()
        == 8));
    stop.store(true, Ordering::Release);
    publisher.join().unwrap();

    let seen = seen.lock().unwrap();
    let order: Vec<u64> = seen.iter().map(|&(id, _)| id).collect();
    assert_eq!(
        order,
        [3, 1, 7, 4, 5, 2, 0, 6],
        "deadline order, ties in call order"
    );
    for &(id, at) in seen.iter() {
        let deadline = deadlines[id as usize];
        assert!(at >= deadline, "event {id} ran before its deadline");
        assert!(
            at - deadline <= LATE,
            "event {id} ran {:?} late",
            at - deadline
        );
    }
    assert!(handles.iter().all(|h| h.status() == ScheduleStatus::Fired));
    let m = store.metrics();
    assert_eq!((m.scheduled, m.cancelled, m.published), (0, 0, 8));
    assert!(m.is_balanced());
}

#[test]
fn cancel_stops_an_event_before_it_fires_and_reports_false_after() {
    let _deadline = deadline(
        "cancel_stops_an_event_before_it_fires_and_reports_false_after",
        DEADLINE,
    );
    let store =
        EventStore::new(Dispatcher::<TokenEv>::new(), 8, OverrunPolicy::ReturnError).unwrap();
    let early = store
        .schedule_after(Duration::from_millis(40), TokenEv::new(1))
        .unwrap();
    let late = store
        .schedule_after(Duration::from_millis(80), TokenEv::new(2))
        .unwrap();
    assert_eq!(store.metrics().scheduled, 2);
    assert!(early.cancel(), "cancelled before firing");
    assert!(!early.cancel(), "a second cancel stops nothing");
    assert_eq!(early.status(), ScheduleStatus::Cancelled);
    let m = store.metrics();
    assert_eq!((m.scheduled, m.cancelled), (1, 1));

    assert!(wait_for(Duration::from_secs(5), || store.pending() == 1));
    assert!(wait_for(Duration::from_secs(1), || late.status()
        == ScheduleStatus::Fired));
    assert!(!late.cancel(), "too late: it fired");
    thread::sleep(Duration::from_millis(60)); // past `early`'s deadline too
    assert_eq!(store.pending(), 1, "the cancelled event never fired");
    let m = store.metrics();
    assert_eq!(
        (m.scheduled, m.cancelled, m.published, m.rejected),
        (0, 1, 1, 0)
    );
    assert!(m.is_balanced());
}

#[test]
fn past_deadlines_and_zero_delays_enqueue_in_the_call() {
    let _deadline = deadline(
        "past_deadlines_and_zero_delays_enqueue_in_the_call",
        DEADLINE,
    );
    let store =
        EventStore::new(Dispatcher::<TokenEv>::new(), 2, OverrunPolicy::ReturnError).unwrap();
    let past = Instant::now() - Duration::from_millis(5);
    let a = store.schedule_at(past, TokenEv::new(1)).unwrap();
    let b = store
        .schedule_after(Duration::ZERO, TokenEv::new(2))
        .unwrap();
    assert_eq!(store.pending(), 2);
    for h in [&a, &b] {
        assert_eq!(h.status(), ScheduleStatus::Fired);
        assert!(!h.cancel());
    }
    // The ring is full: the immediate enqueue's refusal comes back to the caller.
    match store.schedule_after(Duration::ZERO, TokenEv::new(3)) {
        Err(EnqueueError::Full(ev)) => assert_eq!(ev.id, 3),
        other => panic!("expected Full, got {other:?}"),
    }
    let m = store.metrics();
    assert_eq!(
        (m.scheduled, m.cancelled, m.published, m.rejected),
        (0, 0, 2, 1)
    );
}

#[test]
fn a_delay_too_long_for_instant_is_clamped_not_fired_at_once() {
    let _deadline = deadline(
        "a_delay_too_long_for_instant_is_clamped_not_fired_at_once",
        DEADLINE,
    );
    let store =
        EventStore::new(Dispatcher::<TokenEv>::new(), 2, OverrunPolicy::ReturnError).unwrap();
    let h = store
        .schedule_after(Duration::MAX, TokenEv::new(1))
        .unwrap();
    assert_eq!(h.status(), ScheduleStatus::Pending);
    assert!(h.deadline() > Instant::now() + Duration::from_secs(365 * 24 * 3600));
    assert!(h.cancel());
    assert_eq!(store.pending(), 0);
}

#[test]
fn an_event_refused_when_it_fires_is_counted_as_rejected() {
    let _deadline = deadline(
        "an_event_refused_when_it_fires_is_counted_as_rejected",
        DEADLINE,
    );
    let store =
        EventStore::new(Dispatcher::<TokenEv>::new(), 1, OverrunPolicy::ReturnError).unwrap();
    store.enqueue(TokenEv::new(0)).unwrap();
    let h = store
        .schedule_after(Duration::from_millis(10), TokenEv::new(1))
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || h.status()
        == ScheduleStatus::Rejected));
    let m = store.metrics();
    assert_eq!((m.scheduled, m.rejected, m.published), (0, 1, 1));
}

#[test]
fn under_block_the_timer_waits_for_room_and_close_releases_it() {
    let _deadline = deadline(
        "under_block_the_timer_waits_for_room_and_close_releases_it",
        DEADLINE,
    );
    let store = EventStore::new(Dispatcher::<TokenEv>::new(), 1, OverrunPolicy::Block).unwrap();
    store.enqueue(TokenEv::new(0)).unwrap();
    let first = store
        .schedule_after(Duration::from_millis(5), TokenEv::new(1))
        .unwrap();
    let second = store
        .schedule_after(Duration::from_millis(10), TokenEv::new(2))
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || first.status()
        == ScheduleStatus::Firing));
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        first.status(),
        ScheduleStatus::Firing,
        "still waiting for room"
    );
    assert!(!first.cancel(), "a firing event cannot be cancelled");
    assert_eq!(store.metrics().rejected, 0, "waiting is not rejecting");

    assert_eq!(store.publish().dispatched, 1); // room for `first`
    assert!(wait_for(Duration::from_secs(5), || first.status()
        == ScheduleStatus::Fired));
    assert!(wait_for(Duration::from_secs(5), || second.status()
        == ScheduleStatus::Firing));

    // `second` waits for room in a full ring; close refuses it at once instead of hanging.
    let started = Instant::now();
    let report = store.close(Duration::from_secs(5)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(report.dispatched, 1);
    assert_eq!(second.status(), ScheduleStatus::Rejected);
    let m = store.metrics();
    assert_eq!(
        (m.scheduled, m.cancelled, m.published, m.rejected),
        (0, 0, 2, 1)
    );
    assert!(m.is_balanced());
}

#[test]
fn close_cancels_100k_pending_events_promptly_and_counts_them() {
    let _deadline = deadline(
        "close_cancels_100k_pending_events_promptly_and_counts_them",
        DEADLINE,
    );
    const N: u64 = if cfg!(miri) { 100 } else { 100_000 };
    let token = Arc::new(());
    let store = EventStore::new(
        Dispatcher::<TokenEv>::new(),
        1024,
        OverrunPolicy::ReturnError,
    )
    .unwrap();
    let handles: Vec<ScheduleHandle> = (0..N)
        .map(|id| {
            let at = Duration::from_secs(3600) + Duration::from_micros(id);
            let ev = TokenEv {
                id,
                _token: Some(token.clone()),
            };
            store.schedule_after(at, ev).unwrap()
        })
        .collect();
    assert_eq!(store.metrics().scheduled, N);
    assert_eq!(Arc::strong_count(&token), N as usize + 1);

    let started = Instant::now();
    store.close(Duration::from_secs(5)).unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "close took {took:?}");

    assert_eq!(Arc::strong_count(&token), 1, "every event dropped once");
    assert!(
        handles
            .iter()
            .all(|h| h.status() == ScheduleStatus::Cancelled)
    );
    assert!(!handles[0].cancel());
    let m = store.metrics();
    assert_eq!((m.scheduled, m.cancelled, m.published), (0, N, 0));
    assert!(m.is_balanced());

    // After close, scheduling is refused with the event.
    match store.schedule_after(Duration::from_secs(1), TokenEv::new(7)) {
        Err(EnqueueError::Closed(ev)) => assert_eq!(ev.id, 7),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert_eq!(store.metrics().rejected, 1);
}

#[test]
fn cancelled_events_do_not_pile_up() {
    let _deadline = deadline("cancelled_events_do_not_pile_up", DEADLINE);
    let token = Arc::new(());
    let store =
        EventStore::new(Dispatcher::<TokenEv>::new(), 8, OverrunPolicy::ReturnError).unwrap();
    for id in 0..1_000 {
        let ev = TokenEv {
            id,
            _token: Some(token.clone()),
        };
        let h = store.schedule_after(Duration::from_secs(3600), ev).unwrap();
        assert!(h.cancel());
    }
    // Purged as they came to dominate the heap: far fewer than 1,000 are still held.
    assert!(
        Arc::strong_count(&token) < 200,
        "{}",
        Arc::strong_count(&token)
    );
    let m = store.metrics();
    assert_eq!((m.scheduled, m.cancelled), (0, 1_000));
}

#[test]
fn dropping_the_store_stops_the_timer_and_drops_pending_events() {
    let _deadline = deadline(
        "dropping_the_store_stops_the_timer_and_drops_pending_events",
        DEADLINE,
    );
    let token = Arc::new(());
    let hook_token = Arc::new(());
    let store = {
        let hook_token = hook_token.clone();
        EventStore::builder(Dispatcher::<TokenEv>::new())
            .capacity(8)
            .on_error(move |_| {
                let _ = &hook_token;
            })
            .build()
            .unwrap()
    };
    let h = store
        .schedule_after(
            Duration::from_secs(3600),
            TokenEv {
                id: 1,
                _token: Some(token.clone()),
            },
        )
        .unwrap();
    let soon = store
        .schedule_after(Duration::from_millis(1), TokenEv::new(2))
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || soon.status()
        == ScheduleStatus::Fired));
    drop(store);
    // The timer thread held no strong handle: the store (and its hook) is gone at once.
    assert_eq!(Arc::strong_count(&hook_token), 1, "store freed");
    assert_eq!(Arc::strong_count(&token), 1, "pending event dropped");
    assert_eq!(h.status(), ScheduleStatus::Cancelled);
}

//! Cross-thread behaviour of `EventStore`: every policy with exact counts, close, panics,
//! concurrent publishers, bad capacities.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{
    BatchError, BuildError, DispatchMode, Dispatcher, EnqueueError, ErrorKind, Event, EventStore,
    OverrunPolicy,
};

mod support {
    pub mod deadline;
    pub mod ev;
}
use support::deadline::deadline;
use support::ev::Ev;

/// Every test here fails the run if it is still going after this (a hang, not a slow machine).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

const PRODUCERS: u32 = 4;
const PER_PRODUCER: u64 = if cfg!(miri) { 50 } else { 50_000 };

/// Records every event the handlers see, per producer.
fn recording_dispatcher(seen: Arc<Mutex<Vec<Vec<u64>>>>) -> Dispatcher<Ev> {
    let mut d = Dispatcher::new();
    d.on(0, move |_, ev: &Ev| {
        seen.lock().unwrap()[ev.producer as usize].push(ev.index);
        Ok(())
    });
    d
}

/// Runs `PRODUCERS` producer threads against one publisher thread until they finish, then
/// publishes the rest. Returns what each producer got back (rejections) and what was seen.
fn run_mp(
    policy: OverrunPolicy,
    capacity: usize,
) -> (EventStore<Ev>, Vec<Vec<u64>>, Vec<Vec<u64>>) {
    let seen = Arc::new(Mutex::new(vec![Vec::new(); PRODUCERS as usize]));
    let store = EventStore::new(recording_dispatcher(seen.clone()), capacity, policy).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (store, done) = (store.clone(), done.clone());
        thread::spawn(move || {
            while done.load(Ordering::Acquire) < PRODUCERS as usize {
                store.publish();
            }
        })
    };
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (store, done) = (store.clone(), done.clone());
            thread::spawn(move || {
                let mut rejected = Vec::new();
                for n in 0..PER_PRODUCER {
                    let ev = Ev::new(u64::from(p), n);
                    match store.enqueue(ev) {
                        Ok(_) => {}
                        Err(EnqueueError::Full(back)) => {
                            assert_eq!(back, ev, "the rejected event comes back intact");
                            rejected.push(n);
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                done.fetch_add(1, Ordering::Release);
                rejected
            })
        })
        .collect();
    let rejected: Vec<_> = producers.into_iter().map(|h| h.join().unwrap()).collect();
    publisher.join().unwrap();
    store.publish();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (store, rejected, seen)
}

fn assert_increasing(seen: &[u64]) {
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "per-producer FIFO violated"
    );
}

#[test]
fn block_loses_nothing_and_duplicates_nothing() {
    let _deadline = deadline("block_loses_nothing_and_duplicates_nothing", DEADLINE);
    let (store, rejected, seen) = run_mp(OverrunPolicy::Block, 64);
    for (p, s) in seen.iter().enumerate() {
        assert!(rejected[p].is_empty());
        assert_eq!(*s, (0..PER_PRODUCER).collect::<Vec<_>>(), "producer {p}");
    }
    let m = store.metrics();
    assert_eq!(m.published, PRODUCERS as u64 * PER_PRODUCER);
    assert_eq!(m.processed, m.published);
    assert!(m.is_balanced());
}

#[test]
fn drop_oldest_accounts_for_every_event() {
    let _deadline = deadline("drop_oldest_accounts_for_every_event", DEADLINE);
    let (store, rejected, seen) = run_mp(OverrunPolicy::DropOldest, 64);
    let delivered: u64 = seen.iter().map(|s| s.len() as u64).sum();
    for s in &seen {
        assert_increasing(s);
    }
    assert!(rejected.iter().all(Vec::is_empty));
    let m = store.metrics();
    assert_eq!(m.published, PRODUCERS as u64 * PER_PRODUCER);
    assert_eq!(m.processed, delivered);
    assert_eq!(m.published, m.processed + m.dropped);
    assert!(m.is_balanced());
}

#[test]
fn return_error_hands_back_exactly_what_was_not_delivered() {
    let _deadline = deadline(
        "return_error_hands_back_exactly_what_was_not_delivered",
        DEADLINE,
    );
    let (store, rejected, seen) = run_mp(OverrunPolicy::ReturnError, 64);
    for p in 0..PRODUCERS as usize {
        assert_increasing(&seen[p]);
        let mut all: Vec<u64> = seen[p].iter().chain(&rejected[p]).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..PER_PRODUCER).collect::<Vec<_>>(), "producer {p}");
    }
    let m = store.metrics();
    let rejected_total: u64 = rejected.iter().map(|r| r.len() as u64).sum();
    assert_eq!(m.rejected, rejected_total);
    assert_eq!(m.published + m.rejected, PRODUCERS as u64 * PER_PRODUCER);
    assert!(m.is_balanced());
}

#[test]
fn concurrent_publishers_dispatch_each_event_once() {
    let _deadline = deadline("concurrent_publishers_dispatch_each_event_once", DEADLINE);
    let count = Arc::new(AtomicU64::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let mut d = Dispatcher::<Ev>::new();
    let (c, s) = (count.clone(), sum.clone());
    d.on(0, move |_, ev| {
        c.fetch_add(1, Ordering::Relaxed);
        s.fetch_add(ev.index, Ordering::Relaxed);
        Ok(())
    });
    let store = EventStore::new(d, 256, OverrunPolicy::Block).unwrap();
    let total: u64 = 200_000;
    let done = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..3)
        .map(|_| {
            let (store, done) = (store.clone(), done.clone());
            thread::spawn(move || {
                while done.load(Ordering::Acquire) == 0 {
                    store.publish();
                }
            })
        })
        .collect();
    for n in 0..total {
        store.enqueue(Ev::new(0, n)).unwrap();
    }
    done.store(1, Ordering::Release);
    for p in publishers {
        p.join().unwrap();
    }
    store.publish();
    assert_eq!(count.load(Ordering::Relaxed), total);
    assert_eq!(sum.load(Ordering::Relaxed), total * (total - 1) / 2);
    assert!(store.metrics().is_balanced());
}

#[test]
fn bad_capacities_are_typed_errors() {
    let _deadline = deadline("bad_capacities_are_typed_errors", DEADLINE);
    let build = |cap| EventStore::new(Dispatcher::<Ev>::new(), cap, OverrunPolicy::Block);
    assert_eq!(build(0).unwrap_err(), BuildError::ZeroCapacity);
    assert_eq!(build(3).unwrap_err(), BuildError::NotPowerOfTwo(3));
    assert!(matches!(
        build(1 << 63).unwrap_err(),
        BuildError::TooLarge { .. }
    ));
    #[allow(dead_code)] // only its size matters
    struct Huge([u8; 1 << 20]);
    impl Event for Huge {
        type Projection = u8;
        fn projection(&self) -> u8 {
            0
        }
    }
    let err =
        EventStore::new(Dispatcher::<Huge>::new(), 1 << 32, OverrunPolicy::Block).unwrap_err();
    assert!(
        matches!(err, BuildError::AllocationFailed { .. }),
        "{err:?}"
    );
    assert!(build(1).is_ok());
}

#[test]
fn panicking_handler_is_caught_counted_and_reported() {
    let _deadline = deadline("panicking_handler_is_caught_counted_and_reported", DEADLINE);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let mut d = Dispatcher::<Ev>::new();
    d.on(0, |_, ev| {
        if ev.index % 3 == 0 {
            panic!("boom {}", ev.index);
        }
        Ok(())
    });
    d.on(0, |_, ev| {
        if ev.index % 5 == 0 {
            return Err(format!("bad {}", ev.index).into());
        }
        Ok(())
    });
    let r = reports.clone();
    let store = EventStore::builder(d)
        .capacity(64)
        .on_error(move |rep| {
            let what = match rep.kind {
                ErrorKind::Panic(msg) => format!("panic:{msg}"),
                ErrorKind::Handler(e) => format!("error:{e}"),
                _ => "other".into(),
            };
            r.lock().unwrap().push((rep.sequence.unwrap(), what));
        })
        .build()
        .unwrap();
    for n in 0..30 {
        store.enqueue(Ev::new(0, n)).unwrap();
    }
    let report = store.publish();
    // Panics at 0,3,...,27 (10), errors at 0,5,...,25 (6); both at 0 and 15.
    assert_eq!(report.dispatched, 30);
    assert_eq!(report.handler_errors, 16);
    assert_eq!(report.failed, 14);
    assert_eq!(report.processed, 16);
    let m = store.metrics();
    assert_eq!((m.panics, m.handler_errors, m.failed), (10, 16, 14));
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 16);
    assert!(reports.contains(&(3, "panic:boom 3".into())));
    assert!(reports.contains(&(5, "error:bad 5".into())));
    // The store keeps working.
    store.enqueue(Ev::new(0, 31)).unwrap();
    assert_eq!(store.publish().processed, 1);
}

#[test]
fn unrouted_events_are_counted() {
    let _deadline = deadline("unrouted_events_are_counted", DEADLINE);
    let store = EventStore::new(
        recording_dispatcher(Default::default()),
        8,
        Default::default(),
    );
    let store = store.unwrap();
    for key in [1, 2, 3] {
        store
            .enqueue(Ev {
                key,
                ..Ev::new(0, 0)
            })
            .unwrap();
    }
    assert_eq!(store.publish().unrouted, 3);
    let m = store.metrics();
    assert_eq!((m.unrouted, m.published), (3, 3));
    assert!(m.is_balanced());
}

#[test]
fn close_wakes_blocked_producers_and_hands_events_back() {
    let _deadline = deadline(
        "close_wakes_blocked_producers_and_hands_events_back",
        DEADLINE,
    );
    let store = EventStore::new(Dispatcher::<Ev>::new(), 2, OverrunPolicy::Block).unwrap();
    let ev = |n| Ev::new(0, n);
    store.enqueue(ev(0)).unwrap();
    store.enqueue(ev(1)).unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let blocked: Vec<_> = (0..3)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                store.enqueue(ev(10 + i))
            })
        })
        .collect();
    barrier.wait();
    thread::sleep(Duration::from_millis(50));
    let report = store.close(Duration::from_secs(5)).unwrap();
    assert_eq!(report.dispatched, 2);
    for (i, h) in blocked.into_iter().enumerate() {
        match h.join().unwrap() {
            Err(EnqueueError::Closed(back)) => assert_eq!(back, ev(10 + i as u64)),
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    assert!(matches!(store.enqueue(ev(99)), Err(EnqueueError::Closed(e)) if e.index == 99));
    let m = store.metrics();
    assert_eq!(
        (m.published, m.unrouted, m.rejected, m.pending),
        (2, 2, 4, 0)
    );
}

#[test]
fn block_timeout_hands_the_event_back() {
    let _deadline = deadline("block_timeout_hands_the_event_back", DEADLINE);
    let store = EventStore::new(Dispatcher::<Ev>::new(), 1, OverrunPolicy::Block).unwrap();
    let ev = Ev::new(0, 0);
    store.enqueue(ev).unwrap();
    let start = Instant::now();
    let err = store
        .enqueue_timeout(ev, Duration::from_millis(20))
        .unwrap_err();
    assert!(matches!(err, EnqueueError::Timeout(e) if e == ev));
    assert!(start.elapsed() >= Duration::from_millis(20));
    assert_eq!(store.metrics().rejected, 1);
}

#[test]
fn zero_timeout_close_loses_nothing() {
    let _deadline = deadline("zero_timeout_close_loses_nothing", DEADLINE);
    let store = EventStore::new(Dispatcher::<Ev>::new(), 8, OverrunPolicy::Block).unwrap();
    for n in 0..5 {
        store.enqueue(Ev::new(0, n)).unwrap();
    }
    let err = store.close(Duration::ZERO).unwrap_err();
    assert_eq!(err.pending, 5);
    assert!(store.is_closed());
    assert!(store.drain(Duration::ZERO).is_ok(), "nothing in flight");
    assert_eq!(store.close(Duration::from_secs(1)).unwrap().dispatched, 5);
    assert!(store.metrics().is_balanced());
}

#[test]
fn batch_is_all_or_nothing_and_contiguous() {
    let _deadline = deadline("batch_is_all_or_nothing_and_contiguous", DEADLINE);
    let seen = Arc::new(Mutex::new(vec![Vec::new(); 2]));
    let store = EventStore::new(
        recording_dispatcher(seen.clone()),
        8,
        OverrunPolicy::ReturnError,
    )
    .unwrap();
    let mk = |p, range: std::ops::Range<u64>| -> Vec<Ev> { range.map(|n| Ev::new(p, n)).collect() };
    let mut a = mk(0, 0..5);
    assert_eq!(store.enqueue_batch(&mut a).unwrap().sequence, 0);
    assert!(a.is_empty());
    let mut b = mk(1, 0..4);
    assert_eq!(
        store.enqueue_batch(&mut b),
        Err(BatchError::Full { len: 4 })
    );
    assert_eq!(b, mk(1, 0..4), "handed back untouched");
    let mut huge = mk(1, 0..9);
    assert!(matches!(
        store.enqueue_batch(&mut huge),
        Err(BatchError::TooLarge {
            len: 9,
            capacity: 8
        })
    ));
    store.publish();
    assert_eq!(store.enqueue_batch(&mut b).unwrap().sequence, 5);
    store.publish();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], (0..5).collect::<Vec<_>>());
    assert_eq!(seen[1], (0..4).collect::<Vec<_>>());
    assert_eq!(store.metrics().rejected, 13);
}

#[test]
fn batch_drop_oldest_evicts_just_enough() {
    let _deadline = deadline("batch_drop_oldest_evicts_just_enough", DEADLINE);
    let store = EventStore::new(Dispatcher::<Ev>::new(), 8, OverrunPolicy::DropOldest).unwrap();
    let mut batch: Vec<Ev> = (0..6).map(|n| Ev::new(0, n)).collect();
    store.enqueue_batch(&mut batch.clone()).unwrap();
    let r = store.enqueue_batch(&mut batch).unwrap();
    assert_eq!((r.sequence, r.dropped), (6, 4));
    assert_eq!(store.pending(), 8);
    assert_eq!(store.metrics().dropped, 4);
}

#[test]
fn drop_oldest_reports_the_eviction_at_the_call_site() {
    let _deadline = deadline(
        "drop_oldest_reports_the_eviction_at_the_call_site",
        DEADLINE,
    );
    let store = EventStore::new(Dispatcher::<Ev>::new(), 2, OverrunPolicy::DropOldest).unwrap();
    let ev = |n| Ev::new(0, n);
    assert_eq!(store.enqueue(ev(0)).unwrap().dropped, 0);
    assert_eq!(store.enqueue(ev(1)).unwrap().dropped, 0);
    let r = store.enqueue(ev(2)).unwrap();
    assert_eq!((r.sequence, r.dropped), (2, 1));
}

fn counting_store(mode: DispatchMode, work: Duration) -> (EventStore<Ev>, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let mut d = Dispatcher::<Ev>::new();
    d.on(0, move |_, _| {
        let until = Instant::now() + work;
        while Instant::now() < until {}
        c.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let store = EventStore::builder(d)
        .capacity(4096)
        .mode(mode)
        .build()
        .unwrap();
    (store, count)
}

#[test]
fn parallel_publish_runs_everything_before_returning() {
    let _deadline = deadline(
        "parallel_publish_runs_everything_before_returning",
        DEADLINE,
    );
    for work in [Duration::ZERO, Duration::from_micros(2)] {
        let (store, count) = counting_store(DispatchMode::Parallel, work);
        for n in 0..3000 {
            store
                .enqueue(Ev {
                    key: (n % 2) as u8,
                    ..Ev::new(0, n)
                })
                .unwrap();
        }
        let report = store.publish();
        assert_eq!(report.dispatched, 3000);
        assert_eq!((report.processed, report.unrouted), (1500, 1500));
        assert_eq!(count.load(Ordering::Relaxed), 1500);
        assert!(store.metrics().is_balanced());
    }
}

/// Crate docs, "Parallel dispatch": a batch of 32 events or fewer always runs in the caller,
/// however slow its handlers; a large slow batch is forked onto the pool.
#[test]
fn parallel_small_batches_run_in_the_caller_and_large_slow_ones_fork() {
    let _deadline = deadline(
        "parallel_small_batches_run_in_the_caller_and_large_slow_ones_fork",
        DEADLINE,
    );
    let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let mut d = Dispatcher::<Ev>::new();
    let seen = threads.clone();
    d.on(0, move |_, _| {
        let until = Instant::now() + Duration::from_micros(50);
        while Instant::now() < until {}
        seen.lock().unwrap().insert(thread::current().id());
        Ok(())
    });
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    );
    let store = EventStore::builder(d)
        .mode(DispatchMode::Parallel)
        .thread_pool(pool)
        .build()
        .unwrap();
    let ev = |n| Ev::new(0, n);
    for n in 0..32 {
        store.enqueue(ev(n)).unwrap();
    }
    assert_eq!(store.publish().processed, 32);
    assert_eq!(
        *threads.lock().unwrap(),
        [thread::current().id()].into_iter().collect(),
        "32 events must run in the caller"
    );
    for n in 0..400 {
        store.enqueue(ev(n)).unwrap();
    }
    assert_eq!(store.publish().processed, 400);
    assert!(
        threads.lock().unwrap().len() > 1,
        "20 ms of handler work must be forked onto the pool"
    );
}

/// A forked batch does not wait for the pool to have a free thread: the caller takes chunks
/// itself and waits only for chunks a helper has started. Here every pool thread is busy for
/// the whole publish (each waits for the test to let it go, for at most 10 s), so the caller
/// must run the whole batch. The old fork handed the batch to the pool and slept until the
/// pool's threads were free again: 10 s here.
#[test]
fn parallel_publish_does_not_wait_for_a_busy_pool() {
    let _deadline = deadline("parallel_publish_does_not_wait_for_a_busy_pool", DEADLINE);
    const THREADS: usize = 2;
    let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let mut d = Dispatcher::<Ev>::new();
    let seen = threads.clone();
    d.on(0, move |_, _| {
        let until = Instant::now() + Duration::from_micros(50);
        while Instant::now() < until {}
        seen.lock().unwrap().insert(thread::current().id());
        Ok(())
    });
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(THREADS)
            .build()
            .unwrap(),
    );
    // Occupy every pool thread until the publish has returned (or 10 s have passed).
    let busy = Arc::new(Barrier::new(THREADS + 1));
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let timed_out = Arc::new(AtomicUsize::new(0));
    for _ in 0..THREADS {
        let (busy, released, timed_out) = (busy.clone(), released.clone(), timed_out.clone());
        pool.spawn(move || {
            busy.wait();
            let got = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10));
            if got.is_err() {
                timed_out.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    busy.wait();
    let store = EventStore::builder(d)
        .mode(DispatchMode::Parallel)
        .thread_pool(pool)
        .build()
        .unwrap();
    for n in 0..400 {
        store.enqueue(Ev::new(0, n)).unwrap();
    }
    let report = store.publish();
    for _ in 0..THREADS {
        release.send(()).unwrap();
    }
    assert_eq!(report.processed, 400);
    assert_eq!(
        timed_out.load(Ordering::Relaxed),
        0,
        "the publish waited for the busy pool"
    );
    assert_eq!(
        *threads.lock().unwrap(),
        [thread::current().id()].into_iter().collect(),
        "with every pool thread busy, the caller runs the batch"
    );
    assert!(store.metrics().is_balanced());
}

#[test]
fn async_publish_returns_at_once_and_drain_waits() {
    let _deadline = deadline("async_publish_returns_at_once_and_drain_waits", DEADLINE);
    let (store, count) = counting_store(DispatchMode::Async, Duration::from_micros(20));
    for n in 0..500 {
        store.enqueue(Ev::new(0, n)).unwrap();
    }
    let report = store.publish();
    assert_eq!(report.dispatched, 500);
    assert_eq!(report.processed, 0, "outcomes of an async batch come later");
    store.drain(Duration::from_secs(30)).unwrap();
    assert_eq!(count.load(Ordering::Relaxed), 500);
    let m = store.metrics();
    assert_eq!((m.processed, m.in_flight), (500, 0));
    assert!(m.is_balanced());
}

#[test]
fn dropping_the_store_reports_and_drops_pending_events() {
    let _deadline = deadline(
        "dropping_the_store_reports_and_drops_pending_events",
        DEADLINE,
    );
    let discarded = Arc::new(AtomicU64::new(0));
    let d2 = discarded.clone();
    let token = Arc::new(());
    #[allow(dead_code)] // held only for its `Drop`
    struct Held(Arc<()>);
    impl Event for Held {
        type Projection = u8;
        fn projection(&self) -> u8 {
            0
        }
    }
    let store = EventStore::builder(Dispatcher::<Held>::new())
        .capacity(8)
        .on_error(move |r| {
            assert!(matches!(r.kind, ErrorKind::Discarded));
            d2.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    for _ in 0..5 {
        store.enqueue(Held(token.clone())).unwrap();
    }
    assert_eq!(Arc::strong_count(&token), 6);
    drop(store);
    assert_eq!(discarded.load(Ordering::Relaxed), 5);
    assert_eq!(Arc::strong_count(&token), 1);
}

#[test]
fn handlers_may_enqueue_and_it_waits_for_the_next_publish() {
    let _deadline = deadline(
        "handlers_may_enqueue_and_it_waits_for_the_next_publish",
        DEADLINE,
    );
    let store_slot: Arc<Mutex<Option<EventStore<Ev>>>> = Arc::default();
    let s = store_slot.clone();
    let mut d = Dispatcher::<Ev>::new();
    d.on(0, move |_, ev| {
        if ev.index < 100 {
            let store = s.lock().unwrap().clone().unwrap();
            store
                .enqueue(Ev {
                    index: ev.index + 1,
                    ..*ev
                })
                .unwrap();
        }
        Ok(())
    });
    let store = EventStore::new(d, 1, OverrunPolicy::DropOldest).unwrap();
    *store_slot.lock().unwrap() = Some(store.clone());
    store.enqueue(Ev::new(0, 0)).unwrap();
    let mut publishes = 0;
    while store.publish().dispatched > 0 {
        publishes += 1;
    }
    assert_eq!(publishes, 101);
    store_slot.lock().unwrap().take();
}

#[test]
fn handles_are_send_and_sync() {
    let _deadline = deadline("handles_are_send_and_sync", DEADLINE);
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<EventStore<Ev>>();
    assert_send_sync::<ringbus::ScheduleHandle>();
    // Built on one thread, committed on another.
    assert_send::<ringbus::Transaction<Ev>>();
}

//! The races that break GoEventBus, each run long enough to hit it on real threads.
//!
//! Each test runs for a bounded number of rounds (well under a second on 2 cores) and checks
//! exact accounting afterwards; none asserts anything about speed.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{Dispatcher, EnqueueError, Event, EventStore, OverrunPolicy};

mod support {
    pub mod deadline;
}
use support::deadline::deadline;

/// Every test here fails the run if it is still going after this (a hang, not a slow machine).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Shrinks the work under Miri, which runs these ~1000x slower.
const fn scaled(n: u64) -> u64 {
    if cfg!(miri) { n / 100 + 1 } else { n }
}

/// A heap payload, so that a read of a slot before its write is a use of uninitialised memory
/// or a bad pointer, not a quietly wrong integer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeapEv {
    producer: u64,
    index: u64,
    check: String,
}

impl HeapEv {
    fn new(producer: u64, index: u64) -> Self {
        Self {
            producer,
            index,
            check: format!("{producer}:{index}"),
        }
    }
}

impl Event for HeapEv {
    type Projection = u8;
    fn projection(&self) -> u8 {
        0
    }
}

/// How often each sequence number ran, and which event ran under it.
struct Runs {
    count: Vec<AtomicU8>,
    event: Mutex<Vec<Option<(u64, u64)>>>,
}

impl Runs {
    fn new(max_seq: u64) -> Arc<Self> {
        Arc::new(Self {
            count: (0..max_seq).map(|_| AtomicU8::new(0)).collect(),
            event: Mutex::new(vec![None; max_seq as usize]),
        })
    }

    fn record(&self, seq: u64, ev: &HeapEv) {
        assert_eq!(
            ev.check,
            format!("{}:{}", ev.producer, ev.index),
            "torn event"
        );
        self.count[seq as usize].fetch_add(1, Ordering::SeqCst);
        self.event.lock().unwrap()[seq as usize] = Some((ev.producer, ev.index));
    }

    fn ran(&self, seq: u64) -> u8 {
        self.count[seq as usize].load(Ordering::SeqCst)
    }
}

fn recording_store(capacity: usize, policy: OverrunPolicy, runs: &Arc<Runs>) -> EventStore<HeapEv> {
    let mut d = Dispatcher::<HeapEv>::new();
    let r = runs.clone();
    d.on(0, move |ctx, ev| {
        r.record(ctx.sequence(), ev);
        Ok(())
    });
    EventStore::new(d, capacity, policy).unwrap()
}

/// What producers got: `(sequence, producer, index)` for each accepted event, refusals, drops.
#[derive(Default)]
struct Produced {
    accepted: Vec<(u64, u64, u64)>,
    refused: Vec<EnqueueError<HeapEv>>,
    dropped: u64,
}

/// Checks that every accepted event ran exactly once under its own sequence, except
/// `dropped` of them that never ran.
fn check_exactly_once(runs: &Runs, produced: &Produced, dropped: u64) {
    let events = runs.event.lock().unwrap();
    let mut not_run = 0;
    for &(seq, p, i) in &produced.accepted {
        match runs.ran(seq) {
            0 => not_run += 1,
            1 => assert_eq!(events[seq as usize], Some((p, i)), "seq {seq}"),
            n => panic!("sequence {seq} ran {n} times"),
        }
    }
    assert_eq!(not_run, dropped);
}

/// Runs `producers` threads enqueueing `per_producer` events each and `publishers` threads
/// publishing until the producers are done, then a final publish.
fn run(
    store: &EventStore<HeapEv>,
    producers: u64,
    per_producer: u64,
    publishers: usize,
) -> Produced {
    let done = Arc::new(AtomicBool::new(false));
    let pubs: Vec<_> = (0..publishers)
        .map(|_| {
            let (store, done) = (store.clone(), done.clone());
            thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    store.publish();
                }
            })
        })
        .collect();
    let prods: Vec<_> = (0..producers)
        .map(|p| {
            let store = store.clone();
            thread::spawn(move || {
                let mut out = Produced::default();
                for i in 0..per_producer {
                    match store.enqueue_timeout(HeapEv::new(p, i), Duration::from_secs(10)) {
                        Ok(e) => {
                            out.accepted.push((e.sequence, p, i));
                            out.dropped += e.dropped;
                        }
                        Err(e) => out.refused.push(e),
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Produced::default();
    for h in prods {
        let out = h.join().unwrap();
        all.accepted.extend(out.accepted);
        all.refused.extend(out.refused);
        all.dropped += out.dropped;
    }
    done.store(true, Ordering::SeqCst);
    for h in pubs {
        h.join().unwrap();
    }
    store.publish();
    all
}

#[test]
fn publisher_reaching_a_claimed_but_unwritten_slot_waits_for_it() {
    let _deadline = deadline(
        "publisher_reaching_a_claimed_but_unwritten_slot_waits_for_it",
        DEADLINE,
    );
    // A ring of 2 with publishers spinning: they constantly reach slots whose producer has
    // claimed the sequence but not yet written it. Reading early would run a torn or stale
    // event (caught by `Runs::record`) or run one twice.
    let n = scaled(20_000);
    let runs = Runs::new(4 * n);
    let store = recording_store(2, OverrunPolicy::Block, &runs);
    let produced = run(&store, 4, n, 2);
    assert!(produced.refused.is_empty());
    assert_eq!(produced.accepted.len() as u64, 4 * n);
    check_exactly_once(&runs, &produced, produced.dropped);
    assert!(store.metrics().is_balanced());
}

#[test]
fn producers_racing_for_the_last_free_slot_never_overfill() {
    let _deadline = deadline(
        "producers_racing_for_the_last_free_slot_never_overfill",
        DEADLINE,
    );
    let threads = 4;
    for capacity in [1usize, 2, 4] {
        let barrier = Arc::new(Barrier::new(threads));
        for _ in 0..scaled(300) {
            let store = EventStore::new(
                Dispatcher::<HeapEv>::new(),
                capacity,
                OverrunPolicy::ReturnError,
            )
            .unwrap();
            // All but one slot taken; then every thread tries for the rest at once.
            for i in 0..capacity as u64 - 1 {
                store.enqueue(HeapEv::new(99, i)).unwrap();
            }
            let accepted: u64 = (0..threads as u64)
                .map(|p| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    thread::spawn(move || {
                        barrier.wait();
                        (0..2)
                            .filter(|&i| store.enqueue(HeapEv::new(p, i)).is_ok())
                            .count() as u64
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum();
            // Nothing was published, so exactly the one free slot was filled.
            assert_eq!(accepted, 1);
            let m = store.metrics();
            assert_eq!((m.published, m.pending), (capacity as u64, capacity as u64));
            assert_eq!(m.rejected, 2 * threads as u64 - 1);
            assert_eq!(store.publish().dispatched, capacity as u64);
        }
    }
}

#[test]
fn drop_oldest_eviction_racing_publishers_loses_nothing_from_the_accounting() {
    let _deadline = deadline(
        "drop_oldest_eviction_racing_publishers_loses_nothing_from_the_accounting",
        DEADLINE,
    );
    let n = scaled(20_000);
    let runs = Runs::new(4 * n);
    let store = recording_store(2, OverrunPolicy::DropOldest, &runs);
    let produced = run(&store, 4, n, 2);
    assert!(produced.refused.is_empty());
    check_exactly_once(&runs, &produced, produced.dropped);
    let m = store.metrics();
    assert_eq!(m.dropped, produced.dropped);
    assert_eq!(m.processed + m.dropped, 4 * n);
    assert!(m.is_balanced(), "{m:?}");
}

#[test]
fn two_publishers_at_once_run_each_event_once_and_chunks_in_order() {
    let _deadline = deadline(
        "two_publishers_at_once_run_each_event_once_and_chunks_in_order",
        DEADLINE,
    );
    // A "scheduler" thread and the user's loop both publish.
    let n = scaled(50_000);
    let runs = Runs::new(2 * n);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut d = Dispatcher::<HeapEv>::new();
    let (r, o) = (runs.clone(), order.clone());
    d.on(0, move |ctx, ev| {
        r.record(ctx.sequence(), ev);
        o.lock()
            .unwrap()
            .push((thread::current().id(), ctx.sequence()));
        Ok(())
    });
    let store = EventStore::new(d, 64, OverrunPolicy::Block).unwrap();
    let produced = run(&store, 2, n, 2);
    check_exactly_once(&runs, &produced, produced.dropped);
    assert_eq!(produced.dropped, 0);
    // Per publishing thread, sequences only go up.
    let order = order.lock().unwrap();
    let mut last = std::collections::HashMap::new();
    for &(tid, seq) in order.iter() {
        if let Some(prev) = last.insert(tid, seq) {
            assert!(prev < seq, "{tid:?} ran {seq} after {prev}");
        }
    }
}

#[test]
fn enqueue_and_publish_racing_close_lose_nothing() {
    let _deadline = deadline("enqueue_and_publish_racing_close_lose_nothing", DEADLINE);
    for policy in [
        OverrunPolicy::Block,
        OverrunPolicy::DropOldest,
        OverrunPolicy::ReturnError,
    ] {
        for round in 0..scaled(20) {
            let runs = Runs::new(1 << 20);
            let store = recording_store(8, policy, &runs);
            let prods: Vec<_> = (0..3u64)
                .map(|p| {
                    let store = store.clone();
                    thread::spawn(move || {
                        let mut out = Produced::default();
                        for i in 0.. {
                            match store.enqueue_timeout(HeapEv::new(p, i), Duration::from_secs(10))
                            {
                                Ok(e) => {
                                    out.accepted.push((e.sequence, p, i));
                                    out.dropped += e.dropped;
                                }
                                Err(EnqueueError::Closed(ev)) => {
                                    assert_eq!(ev, HeapEv::new(p, i), "the event comes back");
                                    break;
                                }
                                Err(e) => {
                                    // Only ReturnError refuses an open store here.
                                    assert!(matches!(e, EnqueueError::Full(_)));
                                    assert_eq!(policy, OverrunPolicy::ReturnError);
                                }
                            }
                        }
                        out
                    })
                })
                .collect();
            let publisher = {
                let store = store.clone();
                thread::spawn(move || {
                    while !store.is_closed() {
                        store.publish();
                    }
                    store.publish();
                })
            };
            thread::sleep(Duration::from_micros(200 + 100 * round));
            store.close(Duration::from_secs(10)).unwrap();
            // Close returned Ok: everything accepted has run or was dropped, nothing waits.
            let m = store.metrics();
            assert_eq!((m.pending, m.in_flight), (0, 0), "{policy:?} {m:?}");
            let ran_at_close: u64 = (0..m.published).map(|s| u64::from(runs.ran(s))).sum();
            let mut all = Produced::default();
            for h in prods {
                let out = h.join().unwrap();
                all.accepted.extend(out.accepted);
                all.dropped += out.dropped;
            }
            publisher.join().unwrap();
            // Evictions by enqueues that then found the store closed are in the metrics but
            // in no `Enqueued::dropped`, so count drops from the metrics here.
            let dropped = store.metrics().dropped;
            assert!(dropped >= all.dropped);
            assert_eq!(ran_at_close + dropped, m.published, "{policy:?}");
            assert_eq!(all.accepted.len() as u64, m.published);
            check_exactly_once(&runs, &all, dropped);
            assert!(store.metrics().is_balanced());
        }
    }
}

#[test]
fn a_handler_panicking_mid_batch_reruns_nothing() {
    let _deadline = deadline("a_handler_panicking_mid_batch_reruns_nothing", DEADLINE);
    let n = scaled(5_000);
    let first = Arc::new(Vec::from_iter((0..n).map(|_| AtomicU8::new(0))));
    let second = Arc::new(Vec::from_iter((0..n).map(|_| AtomicU8::new(0))));
    let mut d = Dispatcher::<HeapEv>::new();
    let f = first.clone();
    d.on(0, move |ctx, _| {
        f[ctx.sequence() as usize].fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let s = second.clone();
    d.on(0, move |ctx, _| {
        s[ctx.sequence() as usize].fetch_add(1, Ordering::SeqCst);
        if ctx.sequence() % 7 == 3 {
            panic!("handler fails on {}", ctx.sequence());
        }
        Ok(())
    });
    let hook_calls = Arc::new(AtomicU64::new(0));
    let h = hook_calls.clone();
    let store = EventStore::builder(d)
        .capacity(1024)
        .policy(OverrunPolicy::Block)
        .on_error(move |_| {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // the panics are expected; keep the output clean
    let runs = run_plain(&store, n);
    std::panic::set_hook(prev_hook);
    assert_eq!(runs, n);
    for seq in 0..n as usize {
        assert_eq!(
            first[seq].load(Ordering::SeqCst),
            1,
            "first handler of {seq}"
        );
        assert_eq!(
            second[seq].load(Ordering::SeqCst),
            1,
            "second handler of {seq}"
        );
    }
    let panics = (0..n).filter(|s| s % 7 == 3).count() as u64;
    let m = store.metrics();
    assert_eq!(
        (m.failed, m.panics, m.processed),
        (panics, panics, n - panics)
    );
    assert_eq!(hook_calls.load(Ordering::SeqCst), panics);
    assert!(m.is_balanced());
}

/// One producer thread, the caller publishing meanwhile; returns events dispatched.
fn run_plain(store: &EventStore<HeapEv>, n: u64) -> u64 {
    let producer = {
        let store = store.clone();
        thread::spawn(move || {
            for i in 0..n {
                store.enqueue(HeapEv::new(0, i)).unwrap();
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut dispatched = 0;
    while dispatched < n && Instant::now() < deadline {
        dispatched += store.publish().dispatched;
    }
    producer.join().unwrap();
    dispatched
}

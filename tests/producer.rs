//! The single producer (`Builder::build_with_producer`): its lane beside the shared ring,
//! every overrun policy, batches, close, consumers, settle, and what dropping the store
//! discards. The oversubscribed runs with hostile events are in `stress.rs`, the loom models
//! of its claim in `loom.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ringbus::{
    BatchError, DispatchMode, Dispatcher, EnqueueError, ErrorKind, EventStore, OverrunPolicy,
    PRODUCER_LANE, Producer, Settle, WaitStrategy,
};

mod support {
    pub mod ev;
    pub mod seen;
    pub mod watchdog;
}
use support::ev::Ev;
use support::watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(60);

use support::seen::{Seen, logging_dispatcher};

fn logging(
    capacity: usize,
    policy: OverrunPolicy,
    mode: DispatchMode,
) -> (EventStore<Ev>, Producer<Ev>, Seen) {
    let (dispatcher, seen) = logging_dispatcher();
    let (store, producer) = EventStore::builder(dispatcher)
        .capacity(capacity)
        .policy(policy)
        .mode(mode)
        .build_with_producer()
        .unwrap();
    (store, producer, seen)
}

fn events(seen: &Seen, producer: u64) -> Vec<u64> {
    let seen = seen.lock().unwrap();
    seen.iter()
        .filter(|(_, e)| e.producer == producer)
        .map(|(_, e)| e.index)
        .collect()
}

#[test]
#[cfg(target_os = "linux")]
fn on_linux_the_producer_has_its_own_lane() {
    let (_store, producer, _) = logging(8, OverrunPolicy::ReturnError, DispatchMode::Sync);
    assert!(producer.is_single_producer_lane());
}

/// `room` is what the lane takes without evicting: filled to it under `DropOldest`, nothing is
/// dropped; one more is.
#[test]
#[cfg(target_os = "linux")]
fn room_is_what_the_lane_takes_without_an_overrun() {
    let (store, mut producer, seen) = logging(4, OverrunPolicy::DropOldest, DispatchMode::Sync);
    assert_eq!(producer.room(), 4);
    store.enqueue(Ev::new(0, 0)).unwrap(); // the shared ring's: not the lane's room
    for i in 0..3 {
        producer.enqueue(Ev::new(1, i)).unwrap();
    }
    assert_eq!(producer.room(), 1);
    producer.enqueue(Ev::new(1, 3)).unwrap();
    assert_eq!((producer.room(), store.metrics().dropped), (0, 0));
    producer.enqueue(Ev::new(1, 4)).unwrap();
    assert_eq!((producer.room(), store.metrics().dropped), (0, 1));
    store.publish();
    assert_eq!(producer.room(), 4);
    assert_eq!(events(&seen, 1), [1, 2, 3, 4]);
}

#[test]
fn both_lanes_are_published_each_in_order_with_tagged_sequences() {
    let (store, mut producer, seen) = logging(64, OverrunPolicy::ReturnError, DispatchMode::Sync);
    for i in 0..20 {
        let e = producer.enqueue(Ev::new(1, i)).unwrap();
        assert_eq!(e.sequence, i | PRODUCER_LANE);
        store.enqueue(Ev::new(2, i)).unwrap();
    }
    assert_eq!(store.pending(), 40);
    assert_eq!(store.publish().dispatched, 40);
    assert_eq!(events(&seen, 1), (0..20).collect::<Vec<_>>());
    assert_eq!(events(&seen, 2), (0..20).collect::<Vec<_>>());
    for &(seq, ev) in seen.lock().unwrap().iter() {
        let tagged = ev.producer == 1;
        assert_eq!(seq & PRODUCER_LANE != 0, tagged, "{seq:#x} {ev:?}");
        assert_eq!(seq & !PRODUCER_LANE, ev.index);
    }
    let m = store.metrics();
    assert_eq!((m.published, m.processed, m.pending), (40, 40, 0));
    assert!(m.is_balanced(), "{m:?}");
}

#[test]
fn a_full_lane_meets_every_policy() {
    // ReturnError: refused, the event handed back, counted.
    let (store, mut producer, _) = logging(2, OverrunPolicy::ReturnError, DispatchMode::Sync);
    producer.enqueue(Ev::new(1, 0)).unwrap();
    producer.enqueue(Ev::new(1, 1)).unwrap();
    match producer.enqueue(Ev::new(1, 2)) {
        Err(EnqueueError::Full(ev)) => assert_eq!(ev, Ev::new(1, 2)),
        other => panic!("expected Full, got {other:?}"),
    }
    // The shared ring has room of its own.
    store.enqueue(Ev::new(2, 0)).unwrap();
    assert_eq!(store.metrics().rejected_full, 1);

    // DropOldest: the oldest of the lane goes, and the call says so.
    let (store, mut producer, seen) = logging(2, OverrunPolicy::DropOldest, DispatchMode::Sync);
    for i in 0..5 {
        let e = producer.enqueue(Ev::new(1, i)).unwrap();
        assert_eq!(e.dropped, u64::from(i >= 2));
    }
    assert_eq!(store.publish().dispatched, 2);
    assert_eq!(events(&seen, 1), vec![3, 4]);
    let m = store.metrics();
    assert_eq!((m.published, m.dropped, m.processed), (5, 3, 2));
    assert!(m.is_balanced(), "{m:?}");

    // Block: waits for a publisher, or times out with the event back.
    let (store, mut producer, seen) = logging(1, OverrunPolicy::Block, DispatchMode::Sync);
    producer.enqueue(Ev::new(1, 0)).unwrap();
    match producer.enqueue_timeout(Ev::new(1, 1), Duration::from_millis(20)) {
        Err(EnqueueError::Timeout(ev)) => assert_eq!(ev, Ev::new(1, 1)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(store.metrics().rejected_timeout, 1);
    watchdog("block waits for a publisher", LIMIT, move |_| {
        let publisher = {
            let store = store.clone();
            thread::spawn(move || {
                while store.publish().dispatched == 0 {
                    thread::yield_now();
                }
            })
        };
        producer.enqueue(Ev::new(1, 2)).unwrap(); // waits until the publisher made room
        publisher.join().unwrap();
        store.publish();
        assert_eq!(events(&seen, 1), vec![0, 2]);
    });
}

#[test]
fn batches_on_the_lane_are_all_or_nothing() {
    let (store, mut producer, seen) = logging(4, OverrunPolicy::ReturnError, DispatchMode::Sync);
    let mut batch: Vec<Ev> = (0..5).map(|i| Ev::new(1, i)).collect();
    assert_eq!(
        producer.enqueue_batch(&mut batch),
        Err(BatchError::TooLarge {
            len: 5,
            capacity: 4
        })
    );
    assert_eq!(batch.len(), 5, "handed back");
    batch.truncate(3);
    let first = producer.enqueue_batch(&mut batch).unwrap();
    assert_eq!((first.sequence, batch.len()), (PRODUCER_LANE, 0));
    batch.extend((3..5).map(|i| Ev::new(1, i)));
    assert_eq!(
        producer.enqueue_batch(&mut batch),
        Err(BatchError::Full { len: 2 })
    );
    assert_eq!(batch.len(), 2, "handed back");

    // DropOldest evicts just enough for the batch.
    let (store2, mut producer2, seen2) = logging(4, OverrunPolicy::DropOldest, DispatchMode::Sync);
    let mut batch: Vec<Ev> = (0..3).map(|i| Ev::new(1, i)).collect();
    producer2.enqueue_batch(&mut batch).unwrap();
    batch.extend((3..6).map(|i| Ev::new(1, i)));
    let e = producer2.enqueue_batch(&mut batch).unwrap();
    assert_eq!((e.sequence, e.dropped), (3 | PRODUCER_LANE, 2));
    store2.publish();
    assert_eq!(events(&seen2, 1), vec![2, 3, 4, 5]);

    store.publish();
    assert_eq!(events(&seen, 1), vec![0, 1, 2]);
}

/// The producer keeps enqueueing while publishers run and another thread closes the store;
/// more threads than cores, a ring of 1, 2 or 4, every policy. Everything the producer got in
/// ran by the time `close` returned (or, under `DropOldest`, was dropped), once; from its
/// first `Closed` on, every enqueue is refused.
#[test]
fn close_races_the_producer_under_every_policy() {
    for policy in [
        OverrunPolicy::Block,
        OverrunPolicy::DropOldest,
        OverrunPolicy::ReturnError,
    ] {
        for capacity in [1, 2, 4] {
            let name = format!("close races the producer: {policy:?}, capacity {capacity}");
            watchdog(&name.clone(), LIMIT, move |_| {
                let (store, mut producer, seen) = logging(capacity, policy, DispatchMode::Sync);
                let feed = thread::spawn(move || {
                    let (mut accepted, mut dropped, mut index) = (0u64, 0u64, 0u64);
                    loop {
                        match producer.enqueue(Ev::new(1, index)) {
                            Ok(e) => {
                                accepted += 1;
                                dropped += e.dropped;
                            }
                            Err(EnqueueError::Full(_)) => thread::yield_now(),
                            Err(EnqueueError::Closed(ev)) => {
                                assert_eq!(ev, Ev::new(1, index));
                                break;
                            }
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                        index += 1;
                    }
                    for i in 0..10 {
                        assert!(matches!(
                            producer.enqueue(Ev::new(1, index + i)),
                            Err(EnqueueError::Closed(_))
                        ));
                    }
                    (accepted, dropped)
                });
                let publishers: Vec<_> = (0..3)
                    .map(|_| {
                        let store = store.clone();
                        thread::spawn(move || {
                            while !store.is_closed() {
                                if store.publish().dispatched == 0 {
                                    thread::yield_now();
                                }
                            }
                        })
                    })
                    .collect();
                while store.metrics().processed < 2_000 {
                    thread::yield_now();
                }
                store.close(Duration::from_secs(30)).unwrap();
                let ran_at_close = seen.lock().unwrap().len() as u64;
                let (accepted, dropped) = feed.join().unwrap();
                for p in publishers {
                    p.join().unwrap();
                }
                let m = store.metrics();
                assert_eq!(m.published, accepted, "{name}: {m:?}");
                assert_eq!(ran_at_close + m.dropped, accepted, "{name}: {m:?}");
                // The enqueue that met the close may have evicted first: that eviction is
                // counted in the metrics only (its call returned `Closed`).
                assert!(m.dropped - dropped <= 1, "{name}: {dropped} vs {m:?}");
                assert_eq!((m.pending, m.in_flight), (0, 0), "{name}: {m:?}");
                assert!(m.is_balanced(), "{name}: {m:?}");
                // Several publishers: each event ran once (chunks of different publishers
                // may interleave, so no order across them).
                let mut ran = events(&seen, 1);
                ran.sort_unstable();
                assert!(
                    ran.windows(2).all(|w| w[0] < w[1]),
                    "{name}: an event ran twice"
                );
            });
        }
    }
}

/// A dedicated consumer under every strategy drains what the producer feeds through a ring
/// of 4 under `Block`, then stops on `close`.
#[test]
fn a_dedicated_consumer_drains_the_producer_lane() {
    for strategy in [
        WaitStrategy::BusySpin,
        WaitStrategy::SpinYield,
        WaitStrategy::SpinYieldPark,
    ] {
        watchdog(&format!("consumer {strategy:?}"), LIMIT, move |_| {
            const N: u64 = 20_000;
            let (store, mut producer, seen) = logging(4, OverrunPolicy::Block, DispatchMode::Sync);
            let consumer = store.spawn_consumer(strategy);
            let feed = thread::spawn(move || {
                for i in 0..N {
                    producer.enqueue(Ev::new(1, i)).unwrap();
                    if i % 1000 == 0 {
                        thread::sleep(Duration::from_micros(200)); // let it park
                    }
                }
            });
            feed.join().unwrap();
            store.close(Duration::from_secs(30)).unwrap();
            let report = consumer.join();
            assert_eq!(events(&seen, 1), (0..N).collect::<Vec<_>>());
            assert!(report.dispatched <= N);
            assert_eq!(store.metrics().processed, N);
        });
    }
}

/// `settle` runs the producer's events and the follow-ups their handlers put in the shared
/// ring, round after round, until nothing is left.
#[test]
fn settle_covers_both_lanes() {
    let ran = Arc::new(AtomicU64::new(0));
    let mut dispatcher = Dispatcher::<Ev>::new();
    let r = ran.clone();
    dispatcher.on(0, move |ctx, ev| {
        r.fetch_add(1, Ordering::Relaxed);
        if ev.index > 0 {
            ctx.enqueue(Ev::new(ev.producer, ev.index - 1))
                .map_err(|e| e.kind())?;
        }
        Ok(())
    });
    let (store, mut producer) = EventStore::builder(dispatcher)
        .capacity(64)
        .build_with_producer()
        .unwrap();
    producer.enqueue(Ev::new(1, 3)).unwrap();
    producer.enqueue(Ev::new(2, 2)).unwrap();
    let report = store.settle(Settle::rounds(10));
    assert!(report.settled, "{report:?}");
    assert_eq!(ran.load(Ordering::Relaxed), 4 + 3);
    assert_eq!(store.pending(), 0);
}

/// Dropping the store reports and drops what is still pending in both lanes, with the
/// producer lane's sequences tagged.
#[test]
fn dropping_the_store_discards_both_lanes() {
    let discarded = Arc::new(Mutex::new(Vec::new()));
    let d = discarded.clone();
    let (store, mut producer) = EventStore::builder(Dispatcher::<Ev>::new())
        .capacity(8)
        .on_error(move |report| {
            if matches!(report.kind, ErrorKind::Discarded) {
                d.lock().unwrap().push(report.sequence);
            }
        })
        .build_with_producer()
        .unwrap();
    producer.enqueue(Ev::new(1, 0)).unwrap();
    producer.enqueue(Ev::new(1, 1)).unwrap();
    store.enqueue(Ev::new(2, 0)).unwrap();
    drop(store);
    drop(producer);
    let mut seqs = discarded.lock().unwrap().clone();
    seqs.sort();
    assert_eq!(
        seqs,
        vec![Some(0), Some(PRODUCER_LANE), Some(PRODUCER_LANE | 1)]
    );
}

//! Races on the single-producer lane found by a second reader: a commit after the lane's
//! events, `publish_wait` against the lane's feed, evictions racing publishers in every mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{DispatchMode, Dispatcher, Event, EventStore, OverrunPolicy, Producer};

mod support {
    pub mod watchdog;
}
use support::watchdog::watchdog;

/// An event that counts its own drops (live = created - dropped).
#[derive(Debug)]
struct Ev {
    id: u64,
    live: Arc<AtomicU64>,
}
impl Ev {
    fn new(id: u64, live: &Arc<AtomicU64>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self {
            id,
            live: live.clone(),
        }
    }
}
impl Drop for Ev {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}
impl Event for Ev {
    type Projection = ();
    fn projection(&self) {}
}

type Seen = Arc<Mutex<Vec<u64>>>;

fn build(
    capacity: usize,
    policy: OverrunPolicy,
    mode: DispatchMode,
) -> (EventStore<Ev>, Producer<Ev>, Seen) {
    let seen: Seen = Arc::default();
    let mut d = Dispatcher::<Ev>::new();
    let log = seen.clone();
    d.on((), move |_, e| {
        log.lock().unwrap().push(e.id);
        Ok(())
    });
    let (store, producer) = EventStore::builder(d)
        .capacity(capacity)
        .policy(policy)
        .mode(mode)
        .build_with_producer()
        .unwrap();
    assert!(producer.is_single_producer_lane());
    (store, producer, seen)
}

/// The transaction docs: "the events pending before the transaction run first (FIFO), then the
/// transaction's". An event the producer enqueued (and returned from) before the commit is
/// pending before the transaction, yet the commit's `publish_until` drains the shared ring
/// only, so it is left pending.
#[test]
fn commit_runs_the_producer_lanes_earlier_events_first() {
    let live = Arc::new(AtomicU64::new(0));
    let (store, mut producer, seen) = build(8, OverrunPolicy::ReturnError, DispatchMode::Sync);
    producer.enqueue(Ev::new(1, &live)).unwrap();
    let mut tx = store.begin_transaction();
    tx.push(Ev::new(2, &live));
    tx.commit().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![1, 2],
        "pending after the commit: {}",
        store.pending()
    );
}

/// A slow feed through the lane and a consumer in `publish_wait` with no useful timeout: every
/// event is run long before the timeout (a lost wake-up shows as a stall).
#[test]
fn publish_wait_never_misses_the_lane() {
    watchdog("publish_wait on the lane", Duration::from_secs(120), |_| {
        let live = Arc::new(AtomicU64::new(0));
        let (store, mut producer, seen) = build(4, OverrunPolicy::Block, DispatchMode::Sync);
        let consumer = {
            let store = store.clone();
            thread::spawn(move || {
                let mut n = 0;
                while n < 5_000 {
                    let start = Instant::now();
                    let d = store.publish_wait(Duration::from_secs(20)).dispatched;
                    assert!(
                        d > 0 || start.elapsed() < Duration::from_secs(10),
                        "lost wake-up"
                    );
                    n += d;
                }
            })
        };
        for i in 0..5_000u64 {
            producer.enqueue(Ev::new(i, &live)).unwrap();
            // Let the consumer go to sleep now and then.
            if i % 7 == 0 {
                thread::sleep(Duration::from_micros(50));
            }
        }
        consumer.join().unwrap();
        assert_eq!(seen.lock().unwrap().len(), 5_000);
    });
}

/// `DropOldest` on a tiny lane with three publishers in every mode, then `close`: every event
/// is dropped exactly once (none lost, none doubled), and the metrics balance.
#[test]
fn lane_evictions_racing_publishers_drop_each_event_once() {
    for mode in [
        DispatchMode::Sync,
        DispatchMode::Parallel,
        DispatchMode::Async,
    ] {
        for capacity in [1, 2, 8] {
            let name = format!("evictions {mode:?} {capacity}");
            watchdog(&name.clone(), Duration::from_secs(120), move |_| {
                let live = Arc::new(AtomicU64::new(0));
                let (store, mut producer, seen) = build(capacity, OverrunPolicy::DropOldest, mode);
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
                let mut dropped = 0;
                for i in 0..20_000u64 {
                    if i % 3 == 0 {
                        let mut batch: Vec<Ev> = (0..capacity as u64)
                            .map(|k| Ev::new(i * 100 + k, &live))
                            .collect();
                        dropped += producer.enqueue_batch(&mut batch).unwrap().dropped;
                    } else {
                        dropped += producer.enqueue(Ev::new(i * 100, &live)).unwrap().dropped;
                    }
                }
                store.close(Duration::from_secs(60)).unwrap();
                for p in publishers {
                    p.join().unwrap();
                }
                let m = store.metrics();
                assert_eq!(m.dropped, dropped, "{name}: {m:?}");
                assert_eq!(m.processed, seen.lock().unwrap().len() as u64, "{name}");
                assert_eq!(m.processed + m.dropped, m.published, "{name}: {m:?}");
                assert!(m.is_balanced(), "{name}: {m:?}");
                let mut ids = seen.lock().unwrap().clone();
                ids.sort_unstable();
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "{name}: ran twice");
                drop(producer);
                drop(store);
                assert_eq!(
                    live.load(Ordering::SeqCst),
                    0,
                    "{name}: leaked or double-dropped"
                );
            });
        }
    }
}

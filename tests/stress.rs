//! Stress: many producers and publishers for about a second per policy and ring size, with
//! handlers that panic, fail or sleep at (deterministic) random, then exact accounting.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ringbus::{DispatchMode, Dispatcher, Event, EventStore, OverrunPolicy};

const PRODUCERS: u64 = 3;
/// Per run; 9 runs in all, so the file stays well under 30 s.
const RUN_TIME: Duration = Duration::from_millis(if cfg!(miri) { 20 } else { 700 });

#[derive(Debug)]
struct Ev {
    producer: u64,
    index: u64,
}

impl Event for Ev {
    type Projection = u8;
    fn projection(&self) -> u8 {
        0
    }
}

/// xorshift64*: a handler's fate is a function of the event's sequence number, so the expected
/// failures can be recomputed afterwards.
fn fate(seq: u64) -> u64 {
    let mut x = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D) % 100
}

fn fails(seq: u64) -> bool {
    fate(seq) < 6 // 0..3 panic, 3..6 return an error
}

/// Small xorshift for the producers' batch sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Per producer, the indices its events ran with, in the order they ran, and their sequences.
type Log = Arc<Vec<Mutex<Vec<(u64, u64)>>>>;

fn stress(capacity: usize, policy: OverrunPolicy, publishers: usize) {
    let log: Log = Arc::new((0..PRODUCERS).map(|_| Mutex::default()).collect());
    let mut d = Dispatcher::<Ev>::new();
    let l = log.clone();
    d.on(0, move |ctx, ev| {
        l[ev.producer as usize]
            .lock()
            .unwrap()
            .push((ev.index, ctx.sequence()));
        match fate(ctx.sequence()) {
            0..3 => panic!("planned panic"),
            3..6 => Err("planned error".into()),
            6..8 => {
                thread::sleep(Duration::from_micros(20));
                Ok(())
            }
            _ => Ok(()),
        }
    });
    let store = EventStore::builder(d)
        .capacity(capacity)
        .policy(policy)
        .mode(DispatchMode::Sync)
        .build()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (store, stop) = (store.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = Rng(p + 1);
                let mut accepted = Vec::new();
                let (mut index, mut dropped) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    // A bounded wait: a Block producer must not outlive the publishers.
                    let wait = Duration::from_millis(50);
                    let n = rng.next() % 4;
                    if n == 0 {
                        let mut batch: Vec<Ev> = (0..1 + rng.next() % capacity.min(8) as u64)
                            .map(|i| Ev {
                                producer: p,
                                index: index + i,
                            })
                            .collect();
                        let len = batch.len() as u64;
                        if let Ok(e) = store.enqueue_batch_timeout(&mut batch, wait) {
                            accepted.extend(index..index + len);
                            dropped += e.dropped;
                        }
                        index += len;
                    } else {
                        let ev = Ev { producer: p, index };
                        if let Ok(e) = store.enqueue_timeout(ev, wait) {
                            accepted.push(index);
                            dropped += e.dropped;
                        }
                        index += 1;
                    }
                }
                (accepted, dropped)
            })
        })
        .collect();
    let publishing = Arc::new(AtomicBool::new(true));
    let pubs: Vec<_> = (0..publishers)
        .map(|_| {
            let (store, publishing) = (store.clone(), publishing.clone());
            thread::spawn(move || {
                while publishing.load(Ordering::Relaxed) {
                    store.publish();
                }
            })
        })
        .collect();

    thread::sleep(RUN_TIME);
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(Vec<u64>, u64)> = producers.into_iter().map(|h| h.join().unwrap()).collect();
    publishing.store(false, Ordering::Relaxed);
    for h in pubs {
        h.join().unwrap();
    }
    store.close(Duration::from_secs(10)).unwrap();

    let m = store.metrics();
    let mut ran_total = 0;
    let mut expected_failed = 0;
    let dropped: u64 = results.iter().map(|r| r.1).sum();
    for (p, (accepted, _)) in results.iter().enumerate() {
        let ran = log[p].lock().unwrap();
        let accepted: HashSet<u64> = accepted.iter().copied().collect();
        let mut seen = HashSet::new();
        for &(index, seq) in ran.iter() {
            assert!(
                accepted.contains(&index),
                "{index} ran but was never accepted"
            );
            assert!(seen.insert(index), "producer {p}'s event {index} ran twice");
            expected_failed += u64::from(fails(seq));
        }
        if publishers == 1 {
            assert!(
                ran.windows(2).all(|w| w[0].0 < w[1].0),
                "one sync publisher runs each producer's events in its order"
            );
        }
        ran_total += ran.len() as u64;
        let accepted_n = accepted.len() as u64;
        assert!(ran.len() as u64 <= accepted_n);
        if policy != OverrunPolicy::DropOldest {
            assert_eq!(ran.len() as u64, accepted_n, "no loss without DropOldest");
        }
    }
    let accepted_total: u64 = results.iter().map(|r| r.0.len() as u64).sum();
    assert_eq!(m.published, accepted_total, "{m:?}");
    assert_eq!(ran_total + dropped, accepted_total, "{m:?}");
    assert_eq!(m.dropped, dropped);
    assert_eq!(m.processed + m.failed, ran_total);
    assert_eq!(m.failed, expected_failed);
    assert_eq!(m.handler_errors, expected_failed);
    assert_eq!((m.pending, m.in_flight), (0, 0));
    assert!(m.is_balanced(), "{m:?}");
    assert!(accepted_total > 0);
}

fn quiet_panics<R>(f: impl FnOnce() -> R) -> R {
    // The planned panics are caught by the store; keep their messages out of the output.
    // Tests here run in parallel, so the hook is installed once and never restored.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"planned panic") {
                default(info);
            }
        }));
    });
    f()
}

fn all_sizes(policy: OverrunPolicy) {
    quiet_panics(|| {
        stress(1, policy, 1);
        stress(2, policy, 2);
        stress(1 << 16, policy, 1);
    });
}

#[test]
fn stress_block() {
    all_sizes(OverrunPolicy::Block);
}

#[test]
fn stress_drop_oldest() {
    all_sizes(OverrunPolicy::DropOldest);
}

#[test]
fn stress_return_error() {
    all_sizes(OverrunPolicy::ReturnError);
}

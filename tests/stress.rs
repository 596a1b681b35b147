//! Stress: many producers and publishers for about a second per policy and ring size, with
//! handlers that panic, fail or sleep at (deterministic) random, then exact accounting.
//!
//! Oversubscription: more producer and publisher threads than cores, on rings of 1, 2 and 4
//! slots, a fixed number of events per run, then exact accounting. Every run (the timed ones
//! above too) is bounded by a [`watchdog`], so a livelock or a lost wake-up fails the test
//! instead of stalling CI.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{
    BatchError, DispatchMode, Dispatcher, EnqueueError, Enqueued, ErrorKind, Event, EventStore,
    OverrunPolicy, PRODUCER_LANE, Producer,
};

mod support {
    pub mod ev;
    pub mod watchdog;
}
use support::ev::Ev;
use support::watchdog::watchdog;

const PRODUCERS: u64 = 3;
/// Per run; 9 runs in all, so the file stays well under 30 s.
const RUN_TIME: Duration = Duration::from_millis(if cfg!(miri) { 20 } else { 700 });

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
                            .map(|i| Ev::new(p, index + i))
                            .collect();
                        let len = batch.len() as u64;
                        if let Ok(e) = store.enqueue_batch_timeout(&mut batch, wait) {
                            accepted.extend(index..index + len);
                            dropped += e.dropped;
                        }
                        index += len;
                    } else {
                        let ev = Ev::new(p, index);
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

/// Generous bound on one whole run (a healthy one takes well under a second): past it, the
/// run is declared hung.
const WATCHDOG: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 60 });

#[test]
fn stress_block() {
    watchdog("stress_block", WATCHDOG, |_| {
        all_sizes(OverrunPolicy::Block);
    });
}

#[test]
fn stress_drop_oldest() {
    watchdog("stress_drop_oldest", WATCHDOG, |_| {
        all_sizes(OverrunPolicy::DropOldest);
    });
}

#[test]
fn stress_return_error() {
    watchdog("stress_return_error", WATCHDOG, |_| {
        all_sizes(OverrunPolicy::ReturnError);
    });
}

// Oversubscription: 4 producers and 4 publishers on 2 cores, rings of 1 to 4 slots.

const OVERSUB_PRODUCERS: u64 = 4;
const OVERSUB_PUBLISHERS: usize = 4;
/// Events per run, split evenly across the producers.
const OVERSUB_EVENTS: u64 = if cfg!(miri) { 400 } else { 40_000 };

/// Whether the threads of an oversubscribed run give their core away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheduling {
    /// Nobody yields: publishers call `publish` again at once, forever (the lowest-latency
    /// loop), and producers enqueue back to back, so every thread burns its whole time slice.
    /// Only for `DropOldest`, whose producers never wait for a publisher.
    Greedy,
    /// Publishers yield after a `publish` that found nothing to do, and producers now and
    /// then, as threads with other work would. Under `Block` and `ReturnError` the producers
    /// must wait for the publishers, and with four greedy publishers on two cores every such
    /// wait costs scheduler time slices: the run then measures the OS scheduler (seconds to
    /// minutes, even with a healthy store). Under `DropOldest`, producers that never yield
    /// evict everything before a publisher is scheduled, and almost no handler runs.
    Polite,
}

/// About 3% of the handler runs return an error, and 1% panic.
fn oversub_fails(seq: u64) -> bool {
    fate(seq) < 4
}

fn oversub_panics(seq: u64) -> bool {
    fate(seq) == 3
}

/// The oversubscribed runs' event: hostile by its index, so the expected counts can be
/// recomputed. About 1% of events panic in `projection()` and 1% in `Drop`.
struct Hostile {
    producer: u64,
    index: u64,
}

impl Hostile {
    fn bad_projection(index: u64) -> bool {
        index % 101 == 50
    }
    fn bad_drop(index: u64) -> bool {
        index % 103 == 51
    }
}

impl Event for Hostile {
    type Projection = u8;
    fn projection(&self) -> u8 {
        if Self::bad_projection(self.index) {
            panic!("planned panic");
        }
        0
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if Self::bad_drop(self.index) && !thread::panicking() {
            panic!("planned panic");
        }
    }
}

/// What the `on_error` hook saw in an oversubscribed run: (`projection()` panics, `Drop`
/// panics).
#[derive(Default)]
struct HookCounts {
    projection_panics: AtomicU64,
    drop_panics: AtomicU64,
}

/// How the oversubscribed producers get in: all through the store's shared ring, or the
/// first one through a single-producer lane (`build_with_producer`) beside the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lanes {
    Shared,
    WithProducer,
}

/// One oversubscribed producer's way in.
enum Feed {
    Store(EventStore<Hostile>),
    Producer(Producer<Hostile>),
}

impl Feed {
    fn enqueue(&mut self, ev: Hostile) -> Result<Enqueued, EnqueueError<Hostile>> {
        match self {
            Feed::Store(store) => store.enqueue(ev),
            Feed::Producer(producer) => producer.enqueue(ev),
        }
    }

    fn enqueue_batch(&mut self, batch: &mut Vec<Hostile>) -> Result<Enqueued, BatchError> {
        match self {
            Feed::Store(store) => store.enqueue_batch(batch),
            Feed::Producer(producer) => producer.enqueue_batch(batch),
        }
    }
}

/// What one oversubscribed run observed, for the assertions and the timing line.
struct Oversub {
    elapsed: Duration,
    metrics: ringbus::Metrics,
}

fn oversubscribed(
    policy: OverrunPolicy,
    capacity: usize,
    scheduling: Scheduling,
    lanes: Lanes,
    abort: Arc<AtomicBool>,
) -> Oversub {
    let name =
        format!("oversubscribed({policy:?}, capacity {capacity}, {scheduling:?}, {lanes:?})");
    let start = Instant::now();
    let log: Log = Arc::new((0..OVERSUB_PRODUCERS).map(|_| Mutex::default()).collect());
    let mut d = Dispatcher::<Hostile>::new();
    let l = log.clone();
    d.on(0, move |ctx, ev| {
        l[ev.producer as usize]
            .lock()
            .unwrap()
            .push((ev.index, ctx.sequence()));
        if oversub_panics(ctx.sequence()) {
            panic!("planned panic");
        }
        if oversub_fails(ctx.sequence()) {
            return Err("planned error".into());
        }
        Ok(())
    });
    let hooked = Arc::new(HookCounts::default());
    let h = hooked.clone();
    let builder = EventStore::builder(d)
        .capacity(capacity)
        .policy(policy)
        .mode(DispatchMode::Sync)
        .on_error(move |report| match report.kind {
            ErrorKind::Panic(_) if report.projection.is_none() => {
                h.projection_panics.fetch_add(1, Ordering::Relaxed);
            }
            ErrorKind::DropPanic(_) => {
                h.drop_panics.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        });
    let (store, mut single) = match lanes {
        Lanes::Shared => (builder.build().unwrap(), None),
        Lanes::WithProducer => {
            let (store, producer) = builder.build_with_producer().unwrap();
            assert!(producer.is_single_producer_lane(), "{name}");
            (store, Some(producer))
        }
    };

    let per_producer = OVERSUB_EVENTS / OVERSUB_PRODUCERS;
    let producers: Vec<_> = (0..OVERSUB_PRODUCERS)
        .map(|p| {
            let abort = abort.clone();
            let mut feed = match single.take() {
                Some(producer) => Feed::Producer(producer),
                None => Feed::Store(store.clone()),
            };
            thread::spawn(move || {
                let mut rng = Rng(0x5EED + p);
                // (events dropped to make room, events refused and retried)
                let (mut dropped, mut refused) = (0, 0);
                let mut batch = Vec::with_capacity(capacity);
                let mut index = 0;
                'events: while index < per_producer {
                    if scheduling == Scheduling::Polite && rng.next() % 16 == 0 {
                        thread::yield_now();
                    }
                    if rng.next() % 8 == 0 {
                        // A batch of 1..=capacity events, within what is left to send.
                        let len = (1 + rng.next() % capacity as u64).min(per_producer - index);
                        batch.extend(
                            (index..index + len).map(|index| Hostile { producer: p, index }),
                        );
                        loop {
                            match feed.enqueue_batch(&mut batch) {
                                Ok(e) => {
                                    assert!(batch.is_empty());
                                    dropped += e.dropped;
                                    break;
                                }
                                Err(BatchError::Full { len: l }) => {
                                    assert_eq!(policy, OverrunPolicy::ReturnError);
                                    assert_eq!((l, batch.len()), (len as usize, len as usize));
                                    refused += len;
                                }
                                Err(BatchError::Closed) if abort.load(Ordering::SeqCst) => {
                                    break 'events;
                                }
                                Err(e) => panic!("batch of {len}: unexpected {e:?}"),
                            }
                            if abort.load(Ordering::SeqCst) {
                                break 'events;
                            }
                            thread::yield_now();
                        }
                        index += len;
                    } else {
                        let mut ev = Hostile { producer: p, index };
                        loop {
                            match feed.enqueue(ev) {
                                Ok(e) => {
                                    dropped += e.dropped;
                                    break;
                                }
                                Err(EnqueueError::Full(back)) => {
                                    assert_eq!(policy, OverrunPolicy::ReturnError);
                                    ev = back;
                                    refused += 1;
                                }
                                Err(EnqueueError::Closed(_)) if abort.load(Ordering::SeqCst) => {
                                    break 'events;
                                }
                                Err(e) => panic!("event {index}: unexpected {e:?}"),
                            }
                            if abort.load(Ordering::SeqCst) {
                                break 'events;
                            }
                            thread::yield_now();
                        }
                        index += 1;
                    }
                }
                (dropped, refused)
            })
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let pubs: Vec<_> = (0..OVERSUB_PUBLISHERS)
        .map(|_| {
            let (store, done, abort) = (store.clone(), done.clone(), abort.clone());
            thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if abort.load(Ordering::Relaxed) {
                        // The watchdog gave up: wake producers blocked under `Block` (with
                        // `Closed`) so that every thread of the run ends.
                        let _ = store.close(Duration::ZERO);
                        break;
                    }
                    let idle = store.publish().dispatched == 0;
                    if idle && scheduling == Scheduling::Polite {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();

    let results: Vec<(u64, u64)> = producers.into_iter().map(|h| h.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    for h in pubs {
        h.join().unwrap();
    }
    if abort.load(Ordering::SeqCst) {
        // The watchdog has already failed the test; the numbers below would be meaningless.
        return Oversub {
            elapsed: start.elapsed(),
            metrics: store.metrics(),
        };
    }
    store
        .close(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{name}: close timed out: {e:?}"));
    let elapsed = start.elapsed();

    let m = store.metrics();
    let total = per_producer * OVERSUB_PRODUCERS;
    let dropped: u64 = results.iter().map(|r| r.0).sum();
    let refused: u64 = results.iter().map(|r| r.1).sum();
    let mut sequences = HashSet::new();
    let (mut ran_total, mut expected_failed, mut expected_panics) = (0, 0, 0);
    for (p, ran) in log.iter().enumerate() {
        let ran = ran.lock().unwrap();
        let mut seen = HashSet::new();
        for &(index, seq) in ran.iter() {
            assert!(
                index < per_producer,
                "{name}: producer {p}'s event {index} was never enqueued"
            );
            assert!(
                seen.insert(index),
                "{name}: producer {p}'s event {index} ran twice"
            );
            assert!(
                seq & !PRODUCER_LANE < m.published && sequences.insert(seq),
                "{name}: sequence {seq} out of range or reused ({m:?})"
            );
            assert!(
                !Hostile::bad_projection(index),
                "{name}: a handler ran for an event whose projection() panics"
            );
            expected_failed += u64::from(oversub_fails(seq));
            expected_panics += u64::from(oversub_panics(seq));
        }
        let unroutable = (0..per_producer)
            .filter(|&i| Hostile::bad_projection(i))
            .count();
        if policy != OverrunPolicy::DropOldest {
            assert_eq!(
                (ran.len() + unroutable) as u64,
                per_producer,
                "{name}: producer {p} lost events without DropOldest"
            );
        }
        ran_total += ran.len() as u64;
    }
    // Events whose `projection()` panicked never reach a handler: they count as failed (and
    // as a panic), reported without a projection. Every event is dropped by the store in the
    // end (run, evicted or at close), so each hostile `Drop` panics there exactly once.
    let projection_panics = hooked.projection_panics.load(Ordering::Relaxed);
    let bombs =
        OVERSUB_PRODUCERS * (0..per_producer).filter(|&i| Hostile::bad_drop(i)).count() as u64;
    let routed = ran_total + projection_panics;
    assert_eq!(m.published, total, "{name}: {m:?}");
    assert_eq!(routed + dropped, total, "{name}: ran + dropped, {m:?}");
    assert_eq!(m.dropped, dropped, "{name}: per-call drops vs metrics");
    assert_eq!(m.processed + m.failed, routed, "{name}: {m:?}");
    assert_eq!(
        m.failed,
        expected_failed + projection_panics,
        "{name}: {m:?}"
    );
    assert_eq!(
        m.handler_errors,
        expected_failed + projection_panics,
        "{name}: {m:?}"
    );
    assert_eq!(
        m.panics,
        expected_panics + projection_panics,
        "{name}: {m:?}"
    );
    assert_eq!(
        m.drop_panics, bombs,
        "{name}: every hostile Drop, once: {m:?}"
    );
    assert_eq!(hooked.drop_panics.load(Ordering::Relaxed), bombs, "{name}");
    assert_eq!(m.rejected, refused, "{name}: refusals vs metrics");
    assert_eq!((m.pending, m.in_flight), (0, 0), "{name}: {m:?}");
    assert_eq!(m.unrouted, 0, "{name}: {m:?}");
    assert!(m.is_balanced(), "{name}: {m:?}");
    if policy != OverrunPolicy::DropOldest {
        assert_eq!((dropped, routed), (0, total), "{name}: {m:?}");
    }
    if policy != OverrunPolicy::ReturnError {
        assert_eq!(refused, 0, "{name}");
    }
    Oversub {
        elapsed,
        metrics: m,
    }
}

fn oversub(policy: OverrunPolicy, capacity: usize, scheduling: Scheduling, lanes: Lanes) {
    let name = format!("oversub {policy:?} capacity {capacity} {scheduling:?} {lanes:?}");
    let run = watchdog(&name, WATCHDOG, move |abort| {
        quiet_panics(|| oversubscribed(policy, capacity, scheduling, lanes, abort))
    });
    let m = run.metrics;
    println!(
        "{name}: {:?} (ran {}, dropped {}, rejected {}, failed {})",
        run.elapsed,
        m.processed + m.failed,
        m.dropped,
        m.rejected,
        m.failed
    );
}

macro_rules! oversub_tests {
    ($($test:ident: $policy:ident, $capacity:expr, $scheduling:ident, $lanes:ident;)*) => {
        $(
            #[test]
            fn $test() {
                oversub(
                    OverrunPolicy::$policy,
                    $capacity,
                    Scheduling::$scheduling,
                    Lanes::$lanes,
                );
            }
        )*
    };
}

oversub_tests! {
    oversub_drop_oldest_1: DropOldest, 1, Polite, Shared;
    oversub_drop_oldest_2: DropOldest, 2, Polite, Shared;
    oversub_drop_oldest_4: DropOldest, 4, Polite, Shared;
    oversub_block_1: Block, 1, Polite, Shared;
    oversub_block_2: Block, 2, Polite, Shared;
    oversub_block_4: Block, 4, Polite, Shared;
    oversub_return_error_1: ReturnError, 1, Polite, Shared;
    oversub_return_error_2: ReturnError, 2, Polite, Shared;
    oversub_return_error_4: ReturnError, 4, Polite, Shared;
    // The harshest setting, where evictions used to convoy behind a producer preempted
    // between claiming its slot and writing it (seconds to minutes per run).
    oversub_drop_oldest_greedy_1: DropOldest, 1, Greedy, Shared;
    oversub_drop_oldest_greedy_2: DropOldest, 2, Greedy, Shared;
    oversub_drop_oldest_greedy_4: DropOldest, 4, Greedy, Shared;
    // The same with one of the four producers on a single-producer lane
    // (`build_with_producer`): its plain-store claim against the shared ring's CAS claims,
    // the publishers draining both lanes, and the close.
    oversub_single_producer_drop_oldest_1: DropOldest, 1, Polite, WithProducer;
    oversub_single_producer_drop_oldest_2: DropOldest, 2, Polite, WithProducer;
    oversub_single_producer_drop_oldest_4: DropOldest, 4, Polite, WithProducer;
    oversub_single_producer_block_1: Block, 1, Polite, WithProducer;
    oversub_single_producer_block_2: Block, 2, Polite, WithProducer;
    oversub_single_producer_block_4: Block, 4, Polite, WithProducer;
    oversub_single_producer_return_error_1: ReturnError, 1, Polite, WithProducer;
    oversub_single_producer_return_error_2: ReturnError, 2, Polite, WithProducer;
    oversub_single_producer_return_error_4: ReturnError, 4, Polite, WithProducer;
    oversub_single_producer_drop_oldest_greedy_1: DropOldest, 1, Greedy, WithProducer;
}

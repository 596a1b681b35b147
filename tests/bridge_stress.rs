//! Feature `redis`, no Redis server: the bridge's `Receiver` and the store's settled-events
//! seam (`src/store/settled.rs`, told from `src/store/run.rs`) against an in-memory
//! [`Backend`] that checks every acknowledgement as it comes: an entry is acknowledged at
//! most once, only after it was delivered, and only if one delivery of its event settled as
//! handled (every handler succeeded, or the filter turned it away, or nobody handles it).
//! Unacknowledged entries come again after a claim timeout, as Redis's `XAUTOCLAIM` does.
//!
//! - `stress_*`: tiny rings (1, 2, 4) under each overrun policy, the receiver feeding 2,000
//!   events (some failing, some panicking, some forever) while four threads enqueue and
//!   publish local events on the shared lane beside a consumer thread; the receiver's
//!   counters must add up as `receive.rs` and the crate docs say.
//! - hostile user code: events whose `projection()` or `Drop` panics, handler panics with a
//!   payload whose `Drop` panics, a codec that panics or refuses: the receiver thread lives
//!   and keeps acknowledging, the store keeps running.
//! - a store without its own producer lane (a sandbox that filters `membarrier`, made with
//!   seccomp in a child process): `Receiver::start` refuses it.
#![cfg(feature = "redis")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::bridge::{
    Backend, BridgeError, Codec, EventId, Incoming, Json, Malformed, ReceiveMetrics,
    ReceiveOptions, Received, Receiver,
};
use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy, WaitStrategy};

mod support {
    pub mod ev;
    pub mod hostile;
    pub mod watchdog;
}
use support::ev::Ev;
use support::hostile::{Bomb, Hostile, quiet};
use support::watchdog::watchdog;

/// The watchdog's limit for one test.
const LIMIT: Duration = Duration::from_secs(120);
/// How long a test waits for its entries to be acknowledged before it fails with what is
/// missing (below [`LIMIT`], so that the failure says more than the watchdog).
const SETTLE: Duration = Duration::from_secs(90);
/// The fake broker's claim timeout: an entry unacknowledged this long is delivered again.
const CLAIM: Duration = Duration::from_millis(50);
/// The receiver's `forget_after`: above a handler's time, short enough for many rounds.
const FORGET: Duration = Duration::from_millis(100);
/// The origin of the fake stream's event ids; garbage entries use another.
const ORIGIN: u64 = 0x5eed;

// ---------------------------------------------------------------------------------------
// The fake broker.

/// What one entry of the fake stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Event `n`: its id is made from `n` (so a resent copy shares it) and its payload
    /// afresh for each delivery by the stream's payload function, which sees the delivery's
    /// number (from 1).
    Event(u64),
    /// A payload no codec of these tests reads (a well-formed entry, a bad payload).
    Garbage,
    /// Not an event at all (its id field is bad).
    Malformed,
}

/// An entry of the fake stream and what became of it.
struct Slot {
    body: Body,
    deliveries: u32,
    last: Option<Instant>,
    acked: bool,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    /// The first entry never delivered.
    next: usize,
    /// `Received` values handed out, redeliveries included.
    delivered: u64,
    /// Entries acknowledged (each once).
    acked: u64,
    /// No more deliveries: lets the receiver's counters come to rest.
    paused: bool,
    /// Receives answered empty since the pause.
    empty_receives: u64,
    /// What the receiver got wrong, seen at the acknowledgement.
    violations: Vec<String>,
}

type PayloadFn = dyn Fn(u64, u32) -> Vec<u8> + Send + Sync;
type MayAckFn = dyn Fn(u64) -> bool + Send + Sync;

/// A stream with one consumer group of one consumer, in memory.
struct Stream {
    state: Mutex<State>,
    /// The payload of event `n` at its `d`-th delivery.
    payload: Box<PayloadFn>,
    /// Whether event `n` may be acknowledged now: one of its deliveries settled as handled.
    may_ack: Box<MayAckFn>,
}

impl Stream {
    fn new(
        payload: impl Fn(u64, u32) -> Vec<u8> + Send + Sync + 'static,
        may_ack: impl Fn(u64) -> bool + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Stream {
            state: Mutex::default(),
            payload: Box::new(payload),
            may_ack: Box::new(may_ack),
        })
    }

    fn push(&self, body: Body) {
        self.state.lock().unwrap().slots.push(Slot {
            body,
            deliveries: 0,
            last: None,
            acked: false,
        });
    }

    fn backend(self: &Arc<Self>) -> FakeBackend {
        FakeBackend(Arc::clone(self))
    }

    fn pause(&self) {
        self.state.lock().unwrap().paused = true;
    }

    /// Entries (numbered from 1) not acknowledged whose body `wanted` picks.
    fn unacked(&self, wanted: impl Fn(Body) -> bool) -> Vec<usize> {
        let state = self.state.lock().unwrap();
        let slots = state.slots.iter().enumerate();
        slots
            .filter(|(_, s)| !s.acked && wanted(s.body))
            .map(|(i, _)| i + 1)
            .collect()
    }

    fn is_acked(&self, entry: usize) -> bool {
        self.state.lock().unwrap().slots[entry - 1].acked
    }

    /// Deliveries handed out and entries acknowledged.
    fn counts(&self) -> (u64, u64) {
        let state = self.state.lock().unwrap();
        (state.delivered, state.acked)
    }

    fn empty_receives(&self) -> u64 {
        self.state.lock().unwrap().empty_receives
    }

    fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    fn has_violations(&self) -> bool {
        !self.state.lock().unwrap().violations.is_empty()
    }

    /// How many rules were broken, and the first few.
    fn violations_summary(&self) -> String {
        let violations = self.violations();
        let first: Vec<_> = violations.iter().take(8).collect();
        format!("{} violations, the first: {first:?}", violations.len())
    }

    /// Up to `max` entries: those unacknowledged for longer than [`CLAIM`] first, oldest
    /// entry first, then new ones.
    fn take(&self, max: usize) -> Vec<Received> {
        let mut state = self.state.lock().unwrap();
        if state.paused {
            state.empty_receives += 1;
            return Vec::new();
        }
        let now = Instant::now();
        let claimable = |s: &Slot| !s.acked && s.last.is_some_and(|t| now - t >= CLAIM);
        let mut picked: Vec<usize> = (0..state.next)
            .filter(|&i| claimable(&state.slots[i]))
            .take(max)
            .collect();
        let fresh = (state.slots.len() - state.next).min(max - picked.len());
        picked.extend(state.next..state.next + fresh);
        state.next += fresh;
        state.delivered += picked.len() as u64;
        picked
            .into_iter()
            .map(|i| {
                let slot = &mut state.slots[i];
                slot.deliveries += 1;
                slot.last = Some(now);
                let body = match slot.body {
                    Body::Event(n) => Ok(Incoming {
                        id: EventId {
                            origin: ORIGIN,
                            sequence: n,
                        },
                        projection: "job".into(),
                        payload: (self.payload)(n, slot.deliveries),
                    }),
                    Body::Garbage => Ok(Incoming {
                        id: EventId {
                            origin: ORIGIN + 1,
                            sequence: i as u64,
                        },
                        projection: "job".into(),
                        payload: b"\xff not a payload".to_vec(),
                    }),
                    Body::Malformed => Err(Malformed::BadId),
                };
                Received {
                    entry: format!("{}-0", i + 1),
                    body,
                    redelivered: slot.deliveries > 1,
                }
            })
            .collect()
    }

    /// Records the acknowledgement of `entries`, and any rule it breaks.
    fn acknowledge(&self, entries: &[String]) {
        let mut state = self.state.lock().unwrap();
        for entry in entries {
            let index = entry
                .strip_suffix("-0")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1))
                .filter(|&i| i < state.next);
            let Some(index) = index else {
                state
                    .violations
                    .push(format!("{entry}: acknowledged, never delivered"));
                continue;
            };
            let slot = &mut state.slots[index];
            if slot.acked {
                let violation = format!("{entry}: acknowledged twice");
                state.violations.push(violation);
                continue;
            }
            slot.acked = true;
            if let Body::Event(n) = slot.body {
                if !(self.may_ack)(n) {
                    let deliveries = slot.deliveries;
                    state.violations.push(format!(
                        "{entry} (event {n}): acknowledged, but none of its {deliveries} \
                         deliveries settled as handled"
                    ));
                }
            }
            state.acked += 1;
        }
    }
}

/// The receiver's view of a [`Stream`].
struct FakeBackend(Arc<Stream>);

impl Backend for FakeBackend {
    fn send(&mut self, _: &[ringbus::bridge::Outgoing]) -> Result<(), BridgeError> {
        Err(BridgeError::Config("the fake stream only receives".into()))
    }

    fn receive(&mut self, max: usize, wait: Duration) -> Result<Vec<Received>, BridgeError> {
        let batch = self.0.take(max);
        if batch.is_empty() {
            thread::sleep(wait);
        }
        Ok(batch)
    }

    fn acknowledge(&mut self, entries: &[String]) -> Result<(), BridgeError> {
        self.0.acknowledge(entries);
        Ok(())
    }

    fn close(&mut self) -> Result<(), BridgeError> {
        Ok(())
    }
}

/// Polls `done` every few milliseconds until it holds (true), or `limit` passed or `abort`
/// was raised (false).
fn wait_until(limit: Duration, abort: &AtomicBool, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit || abort.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Pauses the stream and waits until the receiver is at rest: nothing it enqueued is still
/// unsettled, and its counters held still across two more turns of its loop (each turn ends
/// in a receive, which the stream counts: a turn's counting happens-before the next receive
/// returns); returns them.
fn at_rest(stream: &Stream, receiver: &Receiver, abort: &AtomicBool) -> ReceiveMetrics {
    stream.pause();
    let mut last = None;
    let rested = wait_until(SETTLE, abort, || {
        let seen = stream.empty_receives();
        if !wait_until(SETTLE, abort, || stream.empty_receives() >= seen + 2) {
            return false;
        }
        let now = receiver.metrics();
        let rested = now.in_flight == 0 && last == Some(now);
        last = Some(now);
        rested
    });
    assert!(rested, "the receiver never came to rest: {last:?}");
    last.unwrap()
}

fn assert_no_violations(stream: &Stream) {
    assert!(!stream.has_violations(), "{}", stream.violations_summary());
}

/// The receiver's accounting (crate docs, "Accounting across the bridge"), at rest, against
/// what the stream delivered and saw acknowledged. The fake broker never fails.
fn assert_receiver_accounting(m: &ReceiveMetrics, stream: &Stream) {
    let (delivered, acked) = stream.counts();
    assert_eq!(
        delivered,
        m.enqueued + m.duplicates + m.malformed + m.refused + m.skipped,
        "every entry read is enqueued, a duplicate, malformed, refused or skipped: {m:?}"
    );
    assert_eq!(m.acked, acked, "acked counts what the broker took: {m:?}");
    assert_eq!((m.ack_failed, m.backend_errors), (0, 0), "{m:?}");
    assert_eq!(
        m.enqueued,
        m.handled + m.forgotten + m.in_flight,
        "every enqueued event is handled, forgotten or in flight: {m:?}"
    );
    // One event an entry here: an entry is acknowledged (or failed to be) per handled
    // event, duplicate and malformed one.
    assert_eq!(
        m.acked + m.ack_failed,
        m.handled + m.duplicates + m.malformed,
        "an entry per handled, duplicate or malformed event: {m:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Stress: tiny rings, every policy, more threads than cores.

/// Events from the fake stream.
const EVENTS: u64 = 2_000;
/// Threads enqueueing and publishing local events on the shared lane.
const LOCAL_THREADS: u64 = 4;

/// What happens to bridged event `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Succeeds,
    /// Its second handler fails on the first delivery.
    FailsFirst,
    /// Its second handler panics on the first two deliveries.
    PanicsTwice,
    /// Its second handler always fails: never acknowledged.
    AlwaysFails,
    /// Its second handler always panics: never acknowledged.
    AlwaysPanics,
    /// No handler takes its projection.
    Unrouted,
    /// The store filter turns it away.
    Filtered,
}

fn fate(n: u64) -> Fate {
    match (n % 100, n % 20, n % 10) {
        (13, _, _) => Fate::AlwaysFails,
        (29, _, _) => Fate::AlwaysPanics,
        (_, _, 5) => Fate::Unrouted,
        (_, 9, _) => Fate::Filtered,
        (_, _, 3) => Fate::FailsFirst,
        (_, _, 7) => Fate::PanicsTwice,
        _ => Fate::Succeeds,
    }
}

fn eventually_acked(n: u64) -> bool {
    !matches!(fate(n), Fate::AlwaysFails | Fate::AlwaysPanics)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Job {
    /// From the stream: event `n`, its `delivery`-th delivery.
    Bridged { n: u64, delivery: u32 },
    /// Enqueued on the shared lane by local thread `thread`.
    Local { thread: u64, i: u64 },
}

impl Event for Job {
    type Projection = &'static str;
    fn projection(&self) -> &'static str {
        match *self {
            Job::Bridged { n, .. } if fate(n) == Fate::Unrouted => "nobody",
            Job::Bridged { .. } => "job",
            Job::Local { .. } => "local",
        }
    }
}

/// The three handlers of "job", as bits of [`Runs`]' marks.
const HANDLERS: [u8; 3] = [1, 2, 4];
const ALL_HANDLERS: u8 = 7;
/// The filter turned the delivery away.
const FILTERED: u8 = 8;

/// What ran for each delivery of each bridged event.
#[derive(Default)]
struct Runs(Mutex<HashMap<u64, Vec<u8>>>);

impl Runs {
    fn mark(&self, n: u64, delivery: u32, bit: u8) {
        let mut runs = self.0.lock().unwrap();
        let marks = runs.entry(n).or_default();
        let d = delivery as usize;
        if marks.len() < d {
            marks.resize(d, 0);
        }
        marks[d - 1] |= bit;
    }

    /// One delivery of event `n` had every handler succeed, or was filtered away.
    fn settled_as_handled(&self, n: u64) -> bool {
        let runs = self.0.lock().unwrap();
        runs.get(&n).is_some_and(|marks| {
            marks
                .iter()
                .any(|&m| m & ALL_HANDLERS == ALL_HANDLERS || m & FILTERED != 0)
        })
    }
}

/// The second handler of "job": fails or panics as `n`'s fate says.
fn second_handler(n: u64, delivery: u32) -> Result<(), ringbus::BoxError> {
    match fate(n) {
        Fate::AlwaysFails => Err("always fails".into()),
        Fate::FailsFirst if delivery == 1 => Err("fails the first time".into()),
        Fate::AlwaysPanics => panic!("planned: always panics"),
        Fate::PanicsTwice if delivery <= 2 => panic!("planned: panics twice"),
        _ => Ok(()),
    }
}

/// A local event's handler: fails for some, panics for others.
fn local_handler(i: u64) -> Result<(), ringbus::BoxError> {
    if i % 11 == 0 {
        panic!("planned: a local event panics");
    }
    if i % 7 == 0 {
        return Err("a local event fails".into());
    }
    Ok(())
}

fn stress(capacity: usize, policy: OverrunPolicy) {
    quiet();
    let name = format!("stress_{capacity}_{policy:?}");
    let started = Instant::now();
    watchdog(&name, LIMIT, move |abort| {
        stress_run(capacity, policy, &abort)
    });
    eprintln!("{name}: {:?}", started.elapsed());
}

fn stress_run(capacity: usize, policy: OverrunPolicy, abort: &Arc<AtomicBool>) {
    let runs = Arc::new(Runs::default());
    // A handler's panic is caught by the store: misrouted events are counted instead.
    let misrouted = Arc::new(AtomicU64::new(0));
    let mut dispatcher = Dispatcher::<Job>::new();
    for bit in HANDLERS {
        let (runs, misrouted) = (Arc::clone(&runs), Arc::clone(&misrouted));
        dispatcher.on("job", move |_, job: &Job| {
            let Job::Bridged { n, delivery } = *job else {
                misrouted.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            };
            if bit == 2 {
                second_handler(n, delivery)?;
            }
            runs.mark(n, delivery, bit);
            Ok(())
        });
    }
    let misrouted_local = Arc::clone(&misrouted);
    dispatcher.on("local", move |_, job: &Job| match *job {
        Job::Local { i, .. } => local_handler(i),
        Job::Bridged { .. } => {
            misrouted_local.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let filter_runs = Arc::clone(&runs);
    let (store, producer) = EventStore::builder(dispatcher)
        .capacity(capacity)
        .policy(policy)
        .filter(move |job: &Job| match *job {
            Job::Bridged { n, delivery } if fate(n) == Fate::Filtered => {
                filter_runs.mark(n, delivery, FILTERED);
                false
            }
            _ => true,
        })
        .build_with_producer()
        .unwrap();
    if !producer.is_single_producer_lane() {
        eprintln!(
            "SKIPPED stress_{capacity}_{policy:?}: no producer lane of its own here \
             (no membarrier), and Receiver::start refuses such a store"
        );
        return;
    }

    let may_ack = Arc::clone(&runs);
    let stream = Stream::new(
        |n, delivery| Codec::<Job>::encode(&Json, &Job::Bridged { n, delivery }).unwrap(),
        move |n| match fate(n) {
            Fate::AlwaysFails | Fate::AlwaysPanics => false,
            // Nothing runs for it that could be seen.
            Fate::Unrouted => true,
            _ => may_ack.settled_as_handled(n),
        },
    );
    for n in 1..=EVENTS {
        stream.push(Body::Event(n));
        if n % 200 == 0 {
            stream.push(Body::Malformed);
            stream.push(Body::Garbage);
        }
    }
    // Resent copies (same event id) of some events that succeed.
    for n in (1..=EVENTS).filter(|n| n % 100 == 1) {
        stream.push(Body::Event(n));
    }

    let consumer = store.spawn_consumer(WaitStrategy::default());
    let done = Arc::new(AtomicBool::new(false));
    let locals: Vec<_> = (0..LOCAL_THREADS)
        .map(|thread| {
            let (store, done, abort) = (store.clone(), Arc::clone(&done), Arc::clone(abort));
            thread::spawn(move || {
                let (mut i, mut accepted) = (0, 0u64);
                while !done.load(Ordering::SeqCst) && !abort.load(Ordering::SeqCst) {
                    for _ in 0..4 {
                        let job = Job::Local { thread, i };
                        let timeout = Duration::from_millis(10);
                        accepted += u64::from(store.enqueue_timeout(job, timeout).is_ok());
                        i += 1;
                    }
                    store.publish();
                    thread::yield_now();
                }
                accepted
            })
        })
        .collect();

    let options = ReceiveOptions::default()
        .batch(16)
        .wait(Duration::from_millis(2))
        .forget_after(FORGET);
    let receiver = Receiver::start(producer, Json, stream.backend(), options).unwrap();
    let expected = |body: Body| match body {
        Body::Event(n) => eventually_acked(n),
        Body::Garbage | Body::Malformed => true,
    };
    let all_acked = wait_until(SETTLE, abort, || {
        stream.unacked(expected).is_empty() || stream.has_violations()
    });
    done.store(true, Ordering::SeqCst);
    let local_accepted: u64 = locals.into_iter().map(|t| t.join().unwrap()).sum();
    assert_no_violations(&stream);
    assert!(
        all_acked,
        "entries never acknowledged: {:?}; {:?}; violations: {:?}",
        stream.unacked(expected),
        receiver.metrics(),
        stream.violations_summary()
    );
    let m = at_rest(&stream, &receiver, abort);
    assert_no_violations(&stream);
    let never = stream.unacked(|body| matches!(body, Body::Event(n) if !eventually_acked(n)));
    assert_eq!(never.len(), 40, "the events that always fail stay pending");
    assert_receiver_accounting(&m, &stream);
    assert_eq!(
        m.malformed, 20,
        "10 malformed entries, 10 bad payloads: {m:?}"
    );
    assert!(m.forgotten > 0, "failed events are forgotten: {m:?}");
    // The receiver enqueues only into room: no policy refuses what it received. (It may give
    // up waiting for room after `forget_after`, 100 ms here, counted in `refused` and left
    // pending: on an oversubscribed machine that can happen, so only the store's own
    // refusals and evictions are asserted away, below.)
    receiver.stop();

    store.close(Duration::from_secs(10)).unwrap();
    consumer.join();
    assert_eq!(
        misrouted.load(Ordering::SeqCst),
        0,
        "events reached another's handlers"
    );
    let s = store.metrics();
    assert!(s.is_balanced(), "{s:?}");
    assert_eq!(
        s.published,
        m.enqueued + local_accepted,
        "published = the receiver's events + the local ones: {s:?}"
    );
    let job_dropped: u64 = store
        .projection_metrics()
        .iter()
        .filter(|p| p.projection != "\"local\"")
        .map(|p| p.dropped)
        .sum();
    // Nor evicts it: received events are never dropped, whatever the policy and ring.
    assert_eq!(job_dropped, 0, "{policy:?}, ring of {capacity}: {s:?}");
    eprintln!(
        "stress_{capacity}_{policy:?}: {m:?}; store: published {}, processed {}, failed {}, \
         dropped {} (received events {job_dropped}), panics {}",
        s.published, s.processed, s.failed, s.dropped, s.panics
    );
}

#[test]
fn stress_ring_of_1_block() {
    stress(1, OverrunPolicy::Block);
}

#[test]
fn stress_ring_of_2_block() {
    stress(2, OverrunPolicy::Block);
}

#[test]
fn stress_ring_of_4_block() {
    stress(4, OverrunPolicy::Block);
}

#[test]
fn stress_ring_of_1_drop_oldest() {
    stress(1, OverrunPolicy::DropOldest);
}

#[test]
fn stress_ring_of_2_drop_oldest() {
    stress(2, OverrunPolicy::DropOldest);
}

#[test]
fn stress_ring_of_4_drop_oldest() {
    stress(4, OverrunPolicy::DropOldest);
}

#[test]
fn stress_ring_of_1_return_error() {
    stress(1, OverrunPolicy::ReturnError);
}

#[test]
fn stress_ring_of_2_return_error() {
    stress(2, OverrunPolicy::ReturnError);
}

#[test]
fn stress_ring_of_4_return_error() {
    stress(4, OverrunPolicy::ReturnError);
}

// ---------------------------------------------------------------------------------------
// Hostile user code.

/// `projection()` panics.
const BAD_PROJECTION: u8 = 1;
/// `Drop` panics.
const BAD_DROP: u8 = 2;
/// The handler panics with a [`Bomb`].
const BOMB_HANDLER: u8 = 4;
/// The codec panics decoding it (a planned message).
const DECODE_PANICS: u8 = 8;
/// The codec panics decoding it, with a [`Bomb`].
const DECODE_BOMB: u8 = 16;
/// The codec refuses it.
const DECODE_REFUSES: u8 = 32;

/// Routing keys of [`Hostile`] events.
const KEY_OK: u8 = 0;
const KEY_BOMB: u8 = 1;
const KEY_LOCAL: u8 = 2;

/// A codec for [`Hostile`] (which has no serde): a flags byte, the event's number and the
/// delivery's, little-endian. It misbehaves as the flags say.
struct HostileCodec;

fn hostile_payload(flags: u8, n: u64, delivery: u32) -> Vec<u8> {
    let mut bytes = vec![flags];
    bytes.extend(n.to_le_bytes());
    bytes.extend(delivery.to_le_bytes());
    bytes
}

impl Codec<Hostile> for HostileCodec {
    fn encode(&self, h: &Hostile) -> Result<Vec<u8>, BridgeError> {
        let flags = u8::from(h.bad_projection) * BAD_PROJECTION
            + u8::from(h.bad_drop) * BAD_DROP
            + u8::from(h.ev.key == KEY_BOMB) * BOMB_HANDLER;
        Ok(hostile_payload(flags, h.ev.producer, h.ev.index as u32))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Hostile, BridgeError> {
        let (&[flags], rest) = bytes.split_at(1.min(bytes.len())) else {
            return Err(BridgeError::Decode("empty".into()));
        };
        let (Ok(n), Ok(delivery)) = (
            <[u8; 8]>::try_from(rest.get(..8).unwrap_or_default()),
            <[u8; 4]>::try_from(rest.get(8..).unwrap_or_default()),
        ) else {
            return Err(BridgeError::Decode("not 13 bytes".into()));
        };
        if flags & DECODE_PANICS != 0 {
            panic!("planned: the codec exploded");
        }
        if flags & DECODE_BOMB != 0 {
            std::panic::panic_any(Bomb);
        }
        if flags & DECODE_REFUSES != 0 {
            return Err(BridgeError::Decode("refused".into()));
        }
        let key = if flags & BOMB_HANDLER != 0 {
            KEY_BOMB
        } else {
            KEY_OK
        };
        let ev = Ev {
            key,
            producer: u64::from_le_bytes(n),
            index: u64::from(u32::from_le_bytes(delivery)),
        };
        Ok(Hostile::new(
            ev,
            flags & BAD_PROJECTION != 0,
            flags & BAD_DROP != 0,
        ))
    }
}

/// What hostile event `n` does at its `delivery`-th delivery.
fn hostile_flags(n: u64, delivery: u32) -> u8 {
    let first = delivery == 1;
    match n % 8 {
        1 => BAD_PROJECTION,
        2 => BAD_DROP,
        3 if first => BOMB_HANDLER,
        4 => DECODE_PANICS,
        5 => DECODE_REFUSES,
        6 if first => BAD_PROJECTION,
        7 if first => BAD_DROP | BOMB_HANDLER,
        7 => BAD_DROP,
        _ => 0,
    }
}

/// A store of [`Hostile`] events whose handlers record the numbers handled (key 0) and
/// panic with a [`Bomb`] (key 1); local events (key 2) are counted.
fn hostile_store(
    capacity: usize,
    policy: OverrunPolicy,
) -> (
    EventStore<Hostile>,
    ringbus::Producer<Hostile>,
    Arc<Mutex<Vec<u64>>>,
) {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let mut dispatcher = Dispatcher::<Hostile>::new();
    let record = Arc::clone(&handled);
    dispatcher.on(KEY_OK, move |_, h: &Hostile| {
        record.lock().unwrap().push(h.ev.producer);
        Ok(())
    });
    dispatcher.on(KEY_BOMB, |_, _| std::panic::panic_any(Bomb));
    dispatcher.on(KEY_LOCAL, |_, _| Ok(()));
    let (store, producer) = EventStore::builder(dispatcher)
        .capacity(capacity)
        .policy(policy)
        .build_with_producer()
        .unwrap();
    (store, producer, handled)
}

fn hostile_stream(handled: &Arc<Mutex<Vec<u64>>>) -> Arc<Stream> {
    let handled = Arc::clone(handled);
    Stream::new(
        |n, delivery| hostile_payload(hostile_flags(n, delivery), n, delivery),
        move |n| match n % 8 {
            1 => false,
            4 | 5 => true,
            _ => handled.lock().unwrap().contains(&n),
        },
    )
}

fn hostile_options() -> ReceiveOptions {
    ReceiveOptions::default()
        .batch(16)
        .wait(Duration::from_millis(2))
        .forget_after(FORGET)
}

/// Events from the stream in the hostile test, per policy.
const HOSTILE_EVENTS: u64 = 800;

#[test]
fn hostile_events_handlers_and_codecs_leave_the_receiver_acknowledging() {
    quiet();
    watchdog("hostile", LIMIT, |abort| {
        for policy in [OverrunPolicy::Block, OverrunPolicy::DropOldest] {
            hostile_run(policy, &abort);
        }
    });
}

fn hostile_run(policy: OverrunPolicy, abort: &Arc<AtomicBool>) {
    let (store, producer, handled) = hostile_store(2, policy);
    if !producer.is_single_producer_lane() {
        eprintln!("SKIPPED hostile {policy:?}: no producer lane of its own here (no membarrier)");
        return;
    }
    let stream = hostile_stream(&handled);
    for n in 1..=HOSTILE_EVENTS {
        stream.push(Body::Event(n));
    }
    let consumer = store.spawn_consumer(WaitStrategy::default());
    let done = Arc::new(AtomicBool::new(false));
    // Local hostile events beside the received ones, published from two more threads.
    let locals: Vec<_> = (0..2)
        .map(|thread| {
            let (store, done, abort) = (store.clone(), Arc::clone(&done), Arc::clone(abort));
            thread::spawn(move || {
                let mut i = 0;
                while !done.load(Ordering::SeqCst) && !abort.load(Ordering::SeqCst) {
                    let ev = Ev {
                        key: KEY_LOCAL,
                        ..Ev::new(thread, i)
                    };
                    let local = Hostile::new(ev, i % 5 == 0, i % 3 == 0);
                    let _ = store.enqueue_timeout(local, Duration::from_millis(10));
                    if i % 4 == 0 {
                        store.publish();
                    }
                    i += 1;
                    thread::yield_now();
                }
            })
        })
        .collect();
    let receiver =
        Receiver::start(producer, HostileCodec, stream.backend(), hostile_options()).unwrap();
    let expected = |body: Body| matches!(body, Body::Event(n) if n % 8 != 1);
    let all_acked = wait_until(SETTLE, abort, || {
        stream.unacked(expected).is_empty() || stream.has_violations()
    });
    assert_no_violations(&stream);
    assert!(
        all_acked,
        "{policy:?}: entries never acknowledged: {:?}; {:?}; violations: {:?}",
        stream.unacked(expected),
        receiver.metrics(),
        stream.violations_summary()
    );
    // Still alive at the end: new entries are handled and acknowledged.
    for n in HOSTILE_EVENTS + 1..=HOSTILE_EVENTS + 16 {
        stream.push(Body::Event(n * 8));
    }
    let canaries = |body: Body| matches!(body, Body::Event(n) if n > HOSTILE_EVENTS * 8);
    assert!(
        wait_until(SETTLE, abort, || stream.unacked(canaries).is_empty()),
        "{policy:?}: the receiver stopped acknowledging: {:?}",
        receiver.metrics()
    );
    done.store(true, Ordering::SeqCst);
    for local in locals {
        local.join().unwrap();
    }
    let m = at_rest(&stream, &receiver, abort);
    assert_no_violations(&stream);
    assert_receiver_accounting(&m, &stream);
    let undecodable = (1..=HOSTILE_EVENTS)
        .filter(|n| matches!(n % 8, 4 | 5))
        .count();
    assert_eq!(m.malformed, undecodable as u64, "{m:?}");
    let never = stream.unacked(|body| matches!(body, Body::Event(n) if n % 8 == 1));
    assert_eq!(
        never.len(),
        HOSTILE_EVENTS as usize / 8,
        "bad projections stay pending"
    );
    receiver.stop();

    // The store runs on.
    let before = store.metrics().processed;
    let ev = Ev {
        key: KEY_LOCAL,
        producer: 9,
        index: 0,
    };
    store.enqueue(Hostile::new(ev, false, false)).unwrap();
    assert!(wait_until(SETTLE, abort, || store.metrics().processed > before));
    store.close(Duration::from_secs(10)).unwrap();
    consumer.join();
    let s = store.metrics();
    assert!(s.is_balanced(), "{s:?}");
    assert!(s.drop_panics > 0 && s.panics > 0, "{s:?}");
    eprintln!("hostile {policy:?}: {m:?}; store: {s:?}");
}

/// The receiver with a [`HostileCodec`] and a store of `capacity` under `policy`, fed
/// `flags` for events 1, 2, … (their later deliveries plain).
fn hostile_receiver(
    capacity: usize,
    policy: OverrunPolicy,
    flags: &'static [u8],
) -> Option<(EventStore<Hostile>, Receiver, Arc<Stream>)> {
    hostile_receiver_with(capacity, policy, flags, hostile_options())
}

/// [`hostile_receiver`] with `options`.
fn hostile_receiver_with(
    capacity: usize,
    policy: OverrunPolicy,
    flags: &'static [u8],
    options: ReceiveOptions,
) -> Option<(EventStore<Hostile>, Receiver, Arc<Stream>)> {
    let (store, producer, handled) = hostile_store(capacity, policy);
    if !producer.is_single_producer_lane() {
        eprintln!("SKIPPED: no producer lane of its own here (no membarrier)");
        return None;
    }
    let may_ack = Arc::clone(&handled);
    let stream = Stream::new(
        move |n, delivery| {
            let f = if delivery == 1 {
                flags[n as usize - 1]
            } else {
                0
            };
            hostile_payload(f, n, delivery)
        },
        move |n| {
            flags[n as usize - 1] & (DECODE_PANICS | DECODE_BOMB | DECODE_REFUSES) != 0 || {
                may_ack.lock().unwrap().contains(&n)
            }
        },
    );
    for n in 1..=flags.len() as u64 {
        stream.push(Body::Event(n));
    }
    let receiver = Receiver::start(producer, HostileCodec, stream.backend(), options);
    Some((store, receiver.unwrap(), stream))
}

/// An event handed back to the receiver (the store closed while it waited for room) is
/// dropped by it: a panicking `Drop` there must not end the receiver thread, which still
/// acknowledges what the close's drain settles.
#[test]
fn an_event_handed_back_whose_drop_panics_leaves_the_receiver_running() {
    quiet();
    watchdog("handed_back_drop", LIMIT, |abort| {
        // Nobody publishes: event 1 fills the lane of one, event 2 waits for room (nothing
        // forgotten meanwhile: the wait is shorter than forget_after).
        let options = hostile_options().forget_after(Duration::from_secs(30));
        let Some((store, receiver, stream)) =
            hostile_receiver_with(1, OverrunPolicy::ReturnError, &[0, BAD_DROP], options)
        else {
            return;
        };
        assert!(wait_until(SETTLE, &abort, || receiver.metrics().enqueued == 1));
        std::thread::sleep(Duration::from_millis(100));
        // The close drains event 1 (handled, settled); event 2 comes back as Closed.
        store.close(Duration::from_secs(5)).unwrap();
        let acked = wait_until(Duration::from_secs(10), &abort, || stream.is_acked(1));
        assert!(
            acked,
            "the receiver stopped after dropping a handed-back event: {:?}",
            receiver.metrics()
        );
        assert!(!stream.is_acked(2), "event 2 was never run");
        assert_no_violations(&stream);
        receiver.stop();
    });
}

/// A codec's panic is a payload it cannot read (receive.rs), even when the panic's payload
/// panics in its own `Drop`, as the store treats a handler's.
#[test]
fn a_codec_panic_whose_payload_panics_on_drop_is_a_malformed_entry() {
    quiet();
    watchdog("codec_bomb", LIMIT, |abort| {
        let Some((store, receiver, stream)) =
            hostile_receiver(4, OverrunPolicy::Block, &[DECODE_BOMB, 0])
        else {
            return;
        };
        let both = wait_until(Duration::from_secs(10), &abort, || {
            store.publish();
            stream.is_acked(1) && stream.is_acked(2)
        });
        assert!(
            both,
            "the receiver stopped after a codec panic with a Bomb payload: {:?}, entries \
             acknowledged: 1 {}, 2 {}",
            receiver.metrics(),
            stream.is_acked(1),
            stream.is_acked(2)
        );
        assert_eq!(receiver.metrics().malformed, 1);
        assert_no_violations(&stream);
        receiver.stop();
        store.close(Duration::from_secs(5)).unwrap();
    });
}

/// A plain codec panic and a codec refusal are malformed entries, acknowledged away, while
/// the events around them are handled (the unpanicking control for the test above).
#[test]
fn a_codec_panic_or_refusal_is_a_malformed_entry_acknowledged_away() {
    quiet();
    watchdog("codec_panic", LIMIT, |abort| {
        let flags = &[DECODE_PANICS, 0, DECODE_REFUSES, 0];
        let Some((store, receiver, stream)) = hostile_receiver(4, OverrunPolicy::Block, flags)
        else {
            return;
        };
        let all = wait_until(Duration::from_secs(10), &abort, || {
            store.publish();
            (1..=4).all(|e| stream.is_acked(e))
        });
        assert!(all, "{:?}", receiver.metrics());
        let m = at_rest(&stream, &receiver, &abort);
        assert_eq!((m.malformed, m.enqueued, m.acked), (2, 2, 4), "{m:?}");
        assert_receiver_accounting(&m, &stream);
        assert_no_violations(&stream);
        receiver.stop();
        store.close(Duration::from_secs(5)).unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// A store without its own producer lane.

/// Set in the child process that the refusal test starts: the child filters `membarrier`
/// before building its store, as a sandbox would.
const SANDBOXED: &str = "RINGBUS_BRIDGE_STRESS_NO_MEMBARRIER";

/// `build_with_producer` falls back to the shared ring where `membarrier` is unavailable, and
/// nothing else makes such a store on Linux: the test runs its child half (the test below)
/// in a process of its own with the call filtered by seccomp, as a sandbox does.
///
/// (A second `Receiver::start` on one store cannot be written: the store's one `Producer` is
/// neither `Clone` nor constructible, and `start` takes it by value.)
#[test]
fn a_store_without_its_own_producer_lane_is_refused() {
    watchdog("no_lane", LIMIT, |_| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["no_lane_sandboxed_child", "--exact", "--nocapture"])
            .args(["--test-threads=1"])
            .env(SANDBOXED, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(skip) = text.lines().find(|l| l.starts_with("SKIPPED")) {
            eprintln!("{skip}");
            return;
        }
        assert!(
            out.status.success() && text.contains("REFUSED-OK"),
            "the sandboxed child failed: {}\n{text}",
            out.status
        );
    });
}

/// The child half of the test above; a no-op anywhere else.
#[test]
fn no_lane_sandboxed_child() {
    if std::env::var_os(SANDBOXED).is_none() {
        return;
    }
    if let Err(why) = filter_membarrier() {
        println!("SKIPPED a_store_without_its_own_producer_lane_is_refused: {why}");
        return;
    }
    let mut dispatcher = Dispatcher::<Job>::new();
    dispatcher.on("job", |_, _| Ok(()));
    let (store, producer) = EventStore::builder(dispatcher)
        .capacity(4)
        .build_with_producer()
        .unwrap();
    assert!(
        !producer.is_single_producer_lane(),
        "membarrier is filtered, yet the producer has a lane of its own"
    );
    let stream = Stream::new(|_, _| Vec::new(), |_| false);
    stream.push(Body::Event(1));
    match Receiver::start(producer, Json, stream.backend(), ReceiveOptions::default()) {
        Err(BridgeError::Config(why)) => assert!(why.contains("producer lane"), "{why}"),
        other => panic!("a store without its own lane was not refused: {other:?}"),
    }
    thread::sleep(Duration::from_millis(50));
    assert_eq!(stream.counts(), (0, 0), "nothing was read");
    // The store itself works on, its events on the shared ring.
    store.enqueue(Job::Bridged { n: 1, delivery: 1 }).unwrap();
    store.publish();
    assert_eq!(store.metrics().processed, 1);
    println!("REFUSED-OK");
}

/// Makes `membarrier` fail with `ENOSYS` for this thread and the threads it starts from now
/// on (seccomp; `no_new_privs` first, as an unprivileged process must).
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn filter_membarrier() -> Result<(), String> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, sock_filter};
    // `AUDIT_ARCH_*` of <linux/audit.h>: the filter leaves other ABIs' calls alone.
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    let op = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    // `struct seccomp_data`: the call's number at offset 0, the ABI at 4.
    let mut program = [
        op(BPF_LD | BPF_W | BPF_ABS, 4, 0, 0),
        op(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 0, 3),
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        op(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_membarrier as u32, 0, 1),
        op(
            BPF_RET | BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
            0,
            0,
        ),
        op(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ];
    let filter = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)` takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1u64, 0u64, 0u64, 0u64) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    let mode = libc::c_ulong::from(libc::SECCOMP_MODE_FILTER);
    // SAFETY: `filter` points at `program`, both alive for the call; the kernel copies them.
    if unsafe { libc::prctl(libc::PR_SET_SECCOMP, mode, &raw const filter) } != 0 {
        return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `membarrier(MEMBARRIER_CMD_QUERY, 0, 0)` takes no pointers.
    let query = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0, 0) };
    match query {
        -1 => Ok(()),
        _ => Err(format!(
            "membarrier still answers ({query}) under the filter"
        )),
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn filter_membarrier() -> Result<(), String> {
    Err("the seccomp filter is written for Linux on x86_64 and aarch64 only".into())
}

// ---------------------------------------------------------------------------------------
// A backend is user code too.

/// A backend that panics with a [`Bomb`] payload on the first call of each kind, then
/// delivers `entries` once and records what it was sent and acknowledged.
#[derive(Default)]
struct PanickyBackend {
    state: Arc<Mutex<Panicky>>,
}

#[derive(Default)]
struct Panicky {
    panicked: Vec<&'static str>,
    to_deliver: Vec<Received>,
    sent: usize,
    acked: Vec<String>,
}

impl PanickyBackend {
    fn first_time(&self, call: &'static str) {
        let mut state = self.state.lock().unwrap();
        if !state.panicked.contains(&call) {
            state.panicked.push(call);
            drop(state);
            std::panic::panic_any(Bomb);
        }
    }
}

impl Backend for PanickyBackend {
    fn send(&mut self, batch: &[ringbus::bridge::Outgoing]) -> Result<(), BridgeError> {
        self.first_time("send");
        self.state.lock().unwrap().sent += batch.len();
        Ok(())
    }
    fn receive(&mut self, _: usize, wait: Duration) -> Result<Vec<Received>, BridgeError> {
        self.first_time("receive");
        let batch = std::mem::take(&mut self.state.lock().unwrap().to_deliver);
        if batch.is_empty() {
            thread::sleep(wait);
        }
        Ok(batch)
    }
    fn acknowledge(&mut self, entries: &[String]) -> Result<(), BridgeError> {
        self.first_time("acknowledge");
        self.state.lock().unwrap().acked.extend_from_slice(entries);
        Ok(())
    }
    fn keep_alive_every(&self) -> Option<Duration> {
        panic!("planned: keep_alive_every exploded");
    }
    fn close(&mut self) -> Result<(), BridgeError> {
        self.first_time("close");
        Ok(())
    }
}

/// Panics in every backend call, with payloads whose own `Drop` panics, are failed calls:
/// the receiver and the forwarder go on, and what failed is tried again.
#[test]
fn a_panicking_backend_is_a_failing_one() {
    quiet();
    watchdog("panicky_backend", LIMIT, |abort| {
        let mut dispatcher = Dispatcher::<Job>::new();
        dispatcher.on("job", |_, _| Ok(()));
        let (store, producer) = EventStore::builder(dispatcher)
            .capacity(8)
            .build_with_producer()
            .unwrap();
        if !producer.is_single_producer_lane() {
            eprintln!("SKIPPED: no producer lane of its own here (no membarrier)");
            return;
        }
        let receiving = PanickyBackend::default();
        let state = Arc::clone(&receiving.state);
        state.lock().unwrap().to_deliver = (0..3)
            .map(|n| Received {
                entry: format!("{n}-0"),
                body: Ok(Incoming {
                    id: EventId {
                        origin: ORIGIN,
                        sequence: n,
                    },
                    projection: "\"job\"".into(),
                    payload: serde_json::to_vec(&Job::Bridged { n, delivery: 1 }).unwrap(),
                }),
                redelivered: false,
            })
            .collect();
        let receiver = Receiver::start(producer, Json, receiving, ReceiveOptions::default())
            .expect("a panicking keep_alive_every is no keep-alive");
        // The first receive panicked (a failed read), the next delivers.
        let enqueued = wait_until(Duration::from_secs(20), &abort, || {
            store.publish();
            receiver.metrics().enqueued == 3 && receiver.metrics().backend_errors >= 2
        });
        assert!(enqueued, "{:?}", receiver.metrics());
        // The first acknowledgement panicked (counted as failed): the receiver is still
        // there, and the next settle is acknowledged.
        state.lock().unwrap().to_deliver = vec![Received {
            entry: "9-0".into(),
            body: Ok(Incoming {
                id: EventId {
                    origin: ORIGIN,
                    sequence: 9,
                },
                projection: "\"job\"".into(),
                payload: serde_json::to_vec(&Job::Bridged { n: 9, delivery: 1 }).unwrap(),
            }),
            redelivered: false,
        }];
        let later = wait_until(Duration::from_secs(20), &abort, || {
            store.publish();
            state.lock().unwrap().acked.contains(&"9-0".to_string())
        });
        assert!(
            later,
            "the receiver went on after the panics: {:?}",
            receiver.metrics()
        );
        assert!(
            receiver.metrics().ack_failed >= 1,
            "{:?}",
            receiver.metrics()
        );
        receiver.stop();
        assert!(state.lock().unwrap().panicked.contains(&"close"));

        // The forwarder: the first send panicked, the batch is sent again.
        let mut dispatcher = Dispatcher::<Job>::new();
        dispatcher.on("job", |_, _| Ok(()));
        let store = EventStore::builder(dispatcher).capacity(8).build().unwrap();
        let sending = PanickyBackend::default();
        let sent = Arc::clone(&sending.state);
        let forwarder = ringbus::bridge::Forwarder::start(
            &store,
            ["local"],
            Json,
            sending,
            ringbus::bridge::ForwardOptions::default(),
        )
        .unwrap();
        for i in 0..5 {
            store
                .enqueue(Job::Local { thread: 0, i })
                .unwrap_or_else(|_| panic!());
        }
        store.publish();
        let all = wait_until(Duration::from_secs(20), &abort, || {
            sent.lock().unwrap().sent == 5
        });
        let fm = forwarder.metrics();
        assert!(all, "{fm:?}");
        assert!(fm.send_retries >= 1, "{fm:?}");
        assert_eq!(forwarder.close(Duration::from_secs(5)), 0);
        assert!(sent.lock().unwrap().panicked.contains(&"close"));
    });
}

//! Feature `redis`: a hostile second reading of the bridge's receiving side (`Receiver`,
//! `RedisStreams`). Each test states what the docs promise, in a case the code broke when
//! the review was written (each failed then; all fixed since).
//!
//! Some use an in-memory scripted [`Backend`] (deterministic: entries handed out in order,
//! up to `max` entries a receive, acknowledgements and keep-alives recorded), the others a
//! `redis-server` of their own (tests/support/redis_server.rs). Every test runs under the
//! deadline helper.
#![cfg(feature = "redis")]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::bridge::{
    Backend, BridgeError, Codec, EventId, Incoming, Json, Outgoing, ReceiveOptions, Received,
    Receiver, RedisOptions, RedisStreams,
};
use ringbus::{ConsumerThread, Dispatcher, EventStore, OverrunPolicy, Producer, WaitStrategy};

mod support {
    pub mod bridge_ev;
    pub mod deadline;
    pub mod redis_server;
}
use support::bridge_ev::{Ev, wait_until};
use support::deadline::deadline;
use support::redis_server::RedisServer;

const LIMIT: Duration = Duration::from_secs(120);

/// A store of `capacity` whose "ev" handler runs `handle`, and its producer.
fn store(
    capacity: usize,
    handle: impl Fn(&Ev) + Send + Sync + 'static,
) -> (EventStore<Ev>, Producer<Ev>) {
    let mut dispatcher = Dispatcher::<Ev>::new();
    dispatcher.on("ev", move |_, ev: &Ev| {
        handle(ev);
        Ok(())
    });
    EventStore::builder(dispatcher)
        .capacity(capacity)
        .policy(OverrunPolicy::Block)
        .build_with_producer()
        .unwrap()
}

/// How many times each `n` ran, from a list of runs.
fn runs_of(ran: &[u64]) -> BTreeMap<u64, usize> {
    let mut runs = BTreeMap::new();
    for &n in ran {
        *runs.entry(n).or_default() += 1;
    }
    runs
}

// ---------------------------------------------------------------------------------------
// A scripted in-memory backend.

#[derive(Default)]
struct Script {
    /// Entries not yet delivered, each its events (handed out whole, up to `max` a receive).
    entries: VecDeque<Vec<Received>>,
    acked: Vec<String>,
    /// Each keep-alive call: when, and its entries.
    keep_alives: Vec<(Instant, Vec<String>)>,
}

#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<Script>>,
    every: Option<Duration>,
}

impl Scripted {
    fn new(every: Option<Duration>) -> Self {
        Scripted {
            script: Arc::default(),
            every,
        }
    }

    /// Adds an entry `entry` holding the events `(id sequence, n)`.
    fn push(&self, entry: &str, events: &[(u64, u64)]) {
        let received = events
            .iter()
            .map(|&(id, n)| Received {
                entry: entry.into(),
                body: Ok(Incoming {
                    id: EventId {
                        origin: 0xfeed,
                        sequence: id,
                    },
                    projection: "\"ev\"".into(),
                    payload: Codec::<Ev>::encode(&Json, &Ev { n }).unwrap(),
                }),
                redelivered: false,
            })
            .collect();
        self.script.lock().unwrap().entries.push_back(received);
    }

    fn acked(&self) -> Vec<String> {
        self.script.lock().unwrap().acked.clone()
    }

    fn keep_alives(&self) -> Vec<(Instant, Vec<String>)> {
        self.script.lock().unwrap().keep_alives.clone()
    }
}

impl Backend for Scripted {
    fn send(&mut self, _: &[Outgoing]) -> Result<(), BridgeError> {
        Err(BridgeError::Config("receives only".into()))
    }

    fn receive(&mut self, max: usize, wait: Duration) -> Result<Vec<Received>, BridgeError> {
        let mut batch = Vec::new();
        {
            let mut script = self.script.lock().unwrap();
            for _ in 0..max {
                match script.entries.pop_front() {
                    Some(entry) => batch.extend(entry),
                    None => break,
                }
            }
        }
        if batch.is_empty() {
            thread::sleep(wait);
        }
        Ok(batch)
    }

    fn acknowledge(&mut self, entries: &[String]) -> Result<(), BridgeError> {
        self.script.lock().unwrap().acked.extend_from_slice(entries);
        Ok(())
    }

    fn keep_alive(&mut self, entries: &[String]) -> Result<(), BridgeError> {
        let mut script = self.script.lock().unwrap();
        script.keep_alives.push((Instant::now(), entries.to_vec()));
        Ok(())
    }

    fn keep_alive_every(&self) -> Option<Duration> {
        self.every
    }

    fn close(&mut self) -> Result<(), BridgeError> {
        Ok(())
    }
}

/// A receiving store fed by `backend`: its consumer thread, its receiver, what ran.
struct Receiving {
    store: EventStore<Ev>,
    consumer: ConsumerThread,
    receiver: Receiver,
    ran: Arc<Mutex<Vec<u64>>>,
}

impl Receiving {
    fn start(backend: impl Backend + 'static, options: ReceiveOptions) -> Self {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let record = ran.clone();
        let (store, producer) = store(1024, move |ev| record.lock().unwrap().push(ev.n));
        let consumer = store.spawn_consumer(WaitStrategy::default());
        let receiver = Receiver::start(producer, Json, backend, options).unwrap();
        Receiving {
            store,
            consumer,
            receiver,
            ran,
        }
    }

    fn runs(&self) -> BTreeMap<u64, usize> {
        runs_of(&self.ran.lock().unwrap())
    }

    fn finish(self) {
        self.receiver.stop();
        self.store.close(Duration::from_secs(5)).unwrap();
        self.consumer.join();
    }
}

// ---------------------------------------------------------------------------------------
// 1. Repeats of an event not yet settled are not dropped.

/// `Backend::send` (backend.rs) says a send that failed "may be partly appended (the
/// receiver's `DedupWindow` absorbs a resend)", and `RedisStreams::run` itself runs a
/// pipeline again after a reply timeout. The resend lands right behind the original, so a
/// receiver reads both copies in one batch; the window only learns an id when its event
/// *settles*, so the second copy is enqueued while the first is still in the store, and
/// every event of the batch runs twice.
#[test]
fn redis_a_resent_batch_read_with_the_original_runs_each_event_once() {
    let _deadline = deadline("resend_in_flight", LIMIT);
    let server = RedisServer::start();
    let mut sender =
        RedisStreams::connect(RedisOptions::new(server.url(""), "s").group("g")).unwrap();
    let batch: Vec<Outgoing> = (0..20)
        .map(|n| Outgoing {
            id: EventId::next(),
            projection: "\"ev\"".into(),
            payload: Codec::<Ev>::encode(&Json, &Ev { n }).unwrap(),
        })
        .collect();
    sender.send(&batch).unwrap();
    // The Forwarder's retry of the same batch after a lost reply (forward.rs: "tries the
    // same batch again").
    sender.send(&batch).unwrap();
    let backend = RedisStreams::connect(
        RedisOptions::new(server.url(""), "s")
            .group("g")
            .consumer("r"),
    )
    .unwrap();
    let r = Receiving::start(backend, ReceiveOptions::default());
    assert!(wait_until(Duration::from_secs(20), || r
        .receiver
        .metrics()
        .acked
        == 40));
    let runs = r.runs();
    let m = r.receiver.metrics();
    let twice: Vec<_> = runs
        .iter()
        .filter(|&(_, &c)| c > 1)
        .map(|(n, _)| *n)
        .collect();
    r.finish();
    assert!(
        twice.is_empty(),
        "events run more than once: {twice:?}; metrics {m:?}"
    );
}

/// The same event id twice in one packed entry (a sender's resend is chunked the same way,
/// and any other writer may do it): both copies are enqueued and run.
#[test]
fn an_event_repeated_inside_one_packed_entry_runs_once() {
    let _deadline = deadline("dup_in_entry", LIMIT);
    let backend = Scripted::new(None);
    backend.push("1-0", &[(1, 1), (2, 2), (1, 1)]);
    let r = Receiving::start(backend.clone(), ReceiveOptions::default());
    assert!(wait_until(Duration::from_secs(10), || backend
        .acked()
        .len()
        == 1));
    let runs = r.runs();
    let m = r.receiver.metrics();
    r.finish();
    assert_eq!(
        runs.get(&1),
        Some(&1),
        "event 1 ran {runs:?}; metrics {m:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Keep-alive covers only entries already taken, from when they were taken.

/// README: "A receiver that is alive keeps the entries whose events are still in its store
/// (`XCLAIM ... JUSTID` every third of `claim_idle`), so a slow store's events are not run
/// twice". But an entry is kept alive only once `take` reaches it (receive.rs: `entries` is
/// filled entry by entry, and `OpenEntry::since` is the take time, not the delivery time).
/// The rest of a batch waits, delivered and pending with this consumer, while `take` waits
/// for room for the earlier entries (`Receiver` only enqueues into room): a slow store
/// makes that wait longer than `claim_idle`, and a live second consumer takes those
/// entries over (`XAUTOCLAIM`) and runs them, then the first runs them too.
#[test]
fn redis_entries_waiting_in_the_receivers_batch_are_kept_from_other_consumers() {
    let _deadline = deadline("keep_alive_batch_tail", LIMIT);
    let server = RedisServer::start();
    let claim = Duration::from_millis(600);
    let ran: Arc<Mutex<Vec<(&'static str, u64)>>> = Arc::default();
    let start = |name: &'static str, slow: Option<Duration>| {
        let record = ran.clone();
        let (store, producer) = store(2, move |ev| {
            if let Some(slow) = slow {
                thread::sleep(slow);
            }
            record.lock().unwrap().push((name, ev.n));
        });
        let consumer = store.spawn_consumer(WaitStrategy::default());
        let backend = RedisStreams::connect(
            RedisOptions::new(server.url(""), "s")
                .group("g")
                .consumer(name)
                .claim_idle(claim),
        )
        .unwrap();
        let receiver = Receiver::start(producer, Json, backend, ReceiveOptions::default()).unwrap();
        (store, consumer, receiver)
    };
    let mut sender =
        RedisStreams::connect(RedisOptions::new(server.url(""), "s").group("g")).unwrap();
    let sent: Vec<Outgoing> = (0..20)
        .map(|n| Outgoing {
            id: EventId::next(),
            projection: "\"ev\"".into(),
            payload: Codec::<Ev>::encode(&Json, &Ev { n }).unwrap(),
        })
        .collect();
    sender.send(&sent).unwrap();
    // The slow consumer reads all 20 in its first read (a batch of up to 256), and takes
    // them into its 2-slot store at 100 ms an event: 2 s, over three claim timeouts.
    let slow = start("slow", Some(Duration::from_millis(100)));
    assert!(wait_until(Duration::from_secs(10), || slow
        .2
        .metrics()
        .enqueued
        >= 1));
    let other = start("other", None);
    let mut probe = RedisStreams::connect(
        RedisOptions::new(server.url(""), "s")
            .group("g")
            .consumer("probe"),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(30), || slow
        .2
        .metrics()
        .enqueued
        + slow.2.metrics().skipped
        >= 20
        && probe.pending().unwrap() == 0));
    thread::sleep(claim * 2);
    let (slow_m, other_m) = (slow.2.metrics(), other.2.metrics());
    for (store, consumer, receiver) in [slow, other] {
        receiver.stop();
        store.close(Duration::from_secs(10)).unwrap();
        consumer.join();
    }
    let ran = ran.lock().unwrap().clone();
    let runs = runs_of(&ran.iter().map(|&(_, n)| n).collect::<Vec<_>>());
    let twice: Vec<_> = ran.iter().filter(|(_, n)| runs[n] > 1).copied().collect();
    assert!(
        twice.is_empty() && runs.len() == 20,
        "run by both live consumers: {twice:?}\nslow: {slow_m:?}\nother: {other_m:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 3. forget_after is not heard while the receiver waits for room.

/// README: the receiver "stops keeping an event after `forget_after`", so that another
/// consumer gets it after the claim timeout; `ReceiveOptions::forget_after` says an
/// unsettled event "is waited for before it is forgotten here". `forget_stale` runs only in
/// `Run::until`'s loop, never while `take` waits for room (`Run::enqueue` calls
/// `acknowledge_settled` and `keep_alive` only). A store whose handler hangs fills its lane,
/// the receiver waits for room for ever, and keeps every open entry alive for ever: no
/// other consumer of the group can ever take them.
#[test]
fn a_hung_store_does_not_keep_its_entries_past_forget_after() {
    let _deadline = deadline("hung_store_forget", LIMIT);
    let every = Duration::from_millis(50);
    let forget = Duration::from_millis(200);
    let backend = Scripted::new(Some(every));
    for i in 1..=6 {
        backend.push(&format!("{i}-0"), &[(i, i)]);
    }
    let gate = Arc::new(AtomicBool::new(false));
    let open = gate.clone();
    let (store, producer) = store(2, move |_| {
        while !open.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(1));
        }
    });
    let consumer = store.spawn_consumer(WaitStrategy::default());
    let receiver = Receiver::start(
        producer,
        Json,
        backend.clone(),
        ReceiveOptions::default()
            .forget_after(forget)
            .wait(Duration::from_millis(10)),
    )
    .unwrap();
    thread::sleep(forget * 8);
    let m = receiver.metrics();
    let late = Instant::now() - forget * 3;
    let kept_late: Vec<_> = backend
        .keep_alives()
        .into_iter()
        .filter(|(at, entries)| *at > late && entries.iter().any(|e| e == "1-0"))
        .collect();
    gate.store(true, Ordering::Release);
    receiver.stop();
    store.close(Duration::from_secs(5)).unwrap();
    consumer.join();
    assert!(
        m.forgotten > 0 && kept_late.is_empty(),
        "entry 1-0 unsettled for {:?} (forget_after {forget:?}): still kept alive {} times \
         in the last {:?}; metrics {m:?}",
        forget * 8,
        kept_late.len(),
        forget * 3
    );
}

// ---------------------------------------------------------------------------------------
// 4. max_in_flight counts entries, not events.

/// `ReceiveOptions::max_in_flight`: "The most received events in the store, not yet
/// settled, at once: past it the receiver stops reading". `Run::until` asks the backend for
/// `max_in_flight - in_flight` *entries*; with packed entries (the sender decides how many
/// events an entry holds, not the receiver) it holds that many times more.
#[test]
fn max_in_flight_bounds_the_events_of_packed_entries() {
    let _deadline = deadline("max_in_flight_packed", LIMIT);
    let backend = Scripted::new(None);
    for i in 0..10u64 {
        let events: Vec<(u64, u64)> = (0..8).map(|k| (i * 8 + k, i * 8 + k)).collect();
        backend.push(&format!("{}-0", i + 1), &events);
    }
    // Nobody publishes: nothing settles.
    let (store, producer) = store(1024, |_| {});
    let receiver = Receiver::start(
        producer,
        Json,
        backend,
        ReceiveOptions::default()
            .max_in_flight(4)
            .wait(Duration::from_millis(10)),
    )
    .unwrap();
    let _ = wait_until(Duration::from_secs(2), || receiver.metrics().enqueued >= 32);
    thread::sleep(Duration::from_millis(100));
    let m = receiver.metrics();
    receiver.stop();
    store.close(Duration::from_secs(5)).unwrap();
    assert!(m.in_flight <= 4, "max_in_flight 4, in flight: {m:?}");
}

// ---------------------------------------------------------------------------------------
// 5. The documented accounting does not add up with packed entries.

/// crate docs, "Accounting across the bridge": every enqueued event is `handled`,
/// `forgotten` or `in_flight`, counted in events; `acked` counts entries: one packed entry
/// of three handled events is 3 enqueued, 3 handled, 1 acked. (It mixed the two before.)
#[test]
fn the_receivers_accounting_adds_up_for_packed_entries() {
    let _deadline = deadline("accounting_packed", LIMIT);
    let backend = Scripted::new(None);
    backend.push("1-0", &[(1, 1), (2, 2), (3, 3)]);
    let r = Receiving::start(backend.clone(), ReceiveOptions::default());
    assert!(wait_until(Duration::from_secs(10), || backend
        .acked()
        .len()
        == 1
        && r.receiver.metrics().in_flight == 0));
    let m = r.receiver.metrics();
    r.finish();
    assert_eq!(
        m.enqueued,
        m.handled + m.forgotten + m.in_flight,
        "every enqueued event is handled, forgotten or in flight: {m:?}"
    );
    assert_eq!(
        (m.enqueued, m.handled, m.acked),
        (3, 3, 1),
        "one entry: {m:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. One malformed entry and a dead-letter stream that refuses: its good neighbours never run.

/// `RedisOptions::dead_letters`: malformed entries are moved aside "before handing them
/// on"; `RedisStreams::received`: "if that fails, none of `entries` is handed on: they stay
/// pending and come again". When the move keeps failing (the dead-letter key holds another
/// type, or an ACL forbids it) every batch holding a malformed entry fails for good: its
/// well-formed entries are delivered (so pending with this consumer) and never handed on,
/// on every redelivery, while the read goes on past them. One foreign entry starves its
/// neighbours for ever, with nothing but `backend_errors` to say so.
#[test]
fn redis_a_refusing_dead_letter_stream_does_not_starve_good_entries() {
    let _deadline = deadline("dead_letter_poison", LIMIT);
    let server = RedisServer::start();
    let client = redis::Client::open(server.url("")).unwrap();
    let mut raw = client.get_connection().unwrap();
    // The dead-letter key is taken by a plain string: XADD to it is WRONGTYPE.
    let _: () = redis::cmd("SET")
        .arg("dl")
        .arg("x")
        .query(&mut raw)
        .unwrap();
    let good = |raw: &mut redis::Connection, n: u64| {
        let payload = Codec::<Ev>::encode(&Json, &Ev { n }).unwrap();
        let _: String = redis::cmd("XADD")
            .arg("s")
            .arg("*")
            .arg("id")
            .arg(EventId::next().to_string())
            .arg("projection")
            .arg("\"ev\"")
            .arg("payload")
            .arg(payload)
            .query(raw)
            .unwrap();
    };
    good(&mut raw, 1);
    let _: String = redis::cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("foreign")
        .arg("entry")
        .query(&mut raw)
        .unwrap();
    good(&mut raw, 2);
    let backend = RedisStreams::connect(
        RedisOptions::new(server.url(""), "s")
            .group("g")
            .consumer("r")
            .claim_idle(Duration::from_millis(300))
            .dead_letters("dl"),
    )
    .unwrap();
    let r = Receiving::start(backend, ReceiveOptions::default());
    let handled = wait_until(Duration::from_secs(5), || r.runs().len() == 2);
    let (runs, m) = (r.runs(), r.receiver.metrics());
    r.finish();
    assert!(
        handled,
        "well-formed events 1, 2 never ran: ran {runs:?}; metrics {m:?}"
    );
}

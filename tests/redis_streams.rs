//! Feature `redis`: the Redis Streams backend against a real `redis-server` the test starts
//! itself (from PATH, on 127.0.0.1, a free port, a temp dir, AOF with `appendfsync always`).
#![cfg(feature = "redis")]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ringbus::bridge::{
    Backend, BridgeError, EventId, Malformed, Outgoing, Received, RedisOptions, RedisStreams,
};

mod support {
    pub mod bridge_ev;
    pub mod deadline;
    pub mod redis_server;
}
use support::bridge_ev::{Ev, wait_until};
use support::deadline::deadline;
use support::redis_server::RedisServer;

const LIMIT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_millis(50);

fn outgoing(n: u64) -> Outgoing {
    Outgoing {
        id: EventId::next(),
        projection: format!("p{}", n % 3),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

fn connect(server: &RedisServer, stream: &str, group: &str, consumer: &str) -> RedisStreams {
    RedisStreams::connect(
        RedisOptions::new(server.url(""), stream)
            .group(group)
            .consumer(consumer),
    )
    .unwrap()
}

/// A consumer of group "g" on stream "s" that claims entries idle for `claim`.
fn connect_claiming(server: &RedisServer, consumer: &str, claim: Duration) -> RedisStreams {
    let options = RedisOptions::new(server.url(""), "s")
        .group("g")
        .consumer(consumer)
        .claim_idle(claim);
    RedisStreams::connect(options).unwrap()
}

/// Receives until `n` entries arrived or `limit` passed; acknowledges each batch if `ack`.
fn receive_n(backend: &mut RedisStreams, n: usize, ack: bool, limit: Duration) -> Vec<Received> {
    let started = Instant::now();
    let mut all = Vec::new();
    while all.len() < n && started.elapsed() < limit {
        let batch = backend.receive(256, WAIT).unwrap();
        if ack {
            let entries: Vec<String> = batch.iter().map(|r| r.entry.clone()).collect();
            backend.acknowledge(&entries).unwrap();
        }
        all.extend(batch);
    }
    all
}

fn payload_of(received: &Received) -> &[u8] {
    &received.body.as_ref().expect("a well-formed entry").payload
}

#[test]
fn a_pipelined_batch_arrives_whole_in_order_and_acked_leaves_nothing_pending() {
    let _deadline = deadline("round_trip", LIMIT);
    let server = RedisServer::start();
    let mut sender = connect(&server, "orders", "svc", "sender");
    let mut receiver = connect(&server, "orders", "svc", "a");
    let sent: Vec<Outgoing> = (0..1000).map(outgoing).collect();
    sender.send(&sent).unwrap();
    let got = receive_n(&mut receiver, 1000, true, Duration::from_secs(20));
    assert_eq!(got.len(), 1000);
    for (s, r) in sent.iter().zip(&got) {
        let body = r.body.as_ref().unwrap();
        assert_eq!(
            (&body.id, &body.projection, &body.payload),
            (&s.id, &s.projection, &s.payload)
        );
        assert!(!r.redelivered);
    }
    assert_eq!(receiver.pending().unwrap(), 0);
    assert!(receiver.receive(10, WAIT).unwrap().is_empty());
    let (s, r) = (sender.metrics().snapshot(), receiver.metrics().snapshot());
    assert_eq!(
        (s.sent, r.received, r.acked, r.redelivered, r.malformed),
        (1000, 1000, 1000, 0, 0)
    );
}

#[test]
fn packed_entries_carry_several_events_in_order_and_are_acknowledged_whole() {
    let _deadline = deadline("packed", LIMIT);
    let server = RedisServer::start();
    let mut sender =
        RedisStreams::connect(RedisOptions::new(server.url(""), "packed").events_per_entry(16))
            .unwrap();
    let mut receiver = connect(&server, "packed", "svc", "a");
    let sent: Vec<Outgoing> = (0..1000).map(outgoing).collect();
    sender.send(&sent).unwrap();
    let mut cli = redis::Client::open(server.url(""))
        .unwrap()
        .get_connection()
        .unwrap();
    let entries: u64 = redis::cmd("XLEN").arg("packed").query(&mut cli).unwrap();
    assert_eq!(entries, 63, "1000 events, 16 an entry");
    let got = receive_n(&mut receiver, 1000, false, Duration::from_secs(20));
    let ids: Vec<EventId> = got.iter().map(|r| r.body.as_ref().unwrap().id).collect();
    assert_eq!(ids, sent.iter().map(|o| o.id).collect::<Vec<_>>());
    for (n, r) in got.iter().enumerate() {
        assert_eq!(
            r.entry,
            got[n / 16 * 16].entry,
            "an entry's events together"
        );
        assert_eq!(payload_of(r), sent[n].payload.as_slice());
    }
    let mut distinct: Vec<String> = got.iter().map(|r| r.entry.clone()).collect();
    distinct.dedup();
    assert_eq!(distinct.len(), 63);
    assert_eq!(receiver.pending().unwrap(), 63);
    receiver.acknowledge(&distinct).unwrap();
    assert_eq!(receiver.pending().unwrap(), 0);
    let r = receiver.metrics().snapshot();
    assert_eq!((r.received, r.acked, r.malformed), (1000, 63, 0));
}

/// An entry another writer packed by hand: events start at each `id` field; one without a
/// field it needs is malformed alone.
#[test]
fn a_packed_entry_with_a_broken_event_yields_the_others() {
    let _deadline = deadline("packed_broken", LIMIT);
    let server = RedisServer::start();
    let mut receiver = connect(&server, "s", "g", "a");
    receiver.pending().unwrap(); // makes the group before the entry
    let (a, b, c) = (EventId::next(), EventId::next(), EventId::next());
    let mut cli = redis::Client::open(server.url(""))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("s")
        .arg("*")
        .arg(&["id", &a.to_string(), "projection", "p", "payload", "1"])
        .arg(&["id", &b.to_string(), "payload", "2"])
        .arg(&["id", &c.to_string(), "projection", "p", "payload", "3"])
        .query(&mut cli)
        .unwrap();
    let got = receive_n(&mut receiver, 3, true, Duration::from_secs(10));
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].body.as_ref().unwrap().id, a);
    assert_eq!(got[1].body, Err(Malformed::MissingField("projection")));
    assert_eq!(got[2].body.as_ref().unwrap().id, c);
    assert_eq!(receiver.pending().unwrap(), 0);
}

#[test]
fn consumers_of_a_group_split_the_work_and_every_group_gets_everything() {
    let _deadline = deadline("groups", LIMIT);
    let server = RedisServer::start();
    let mut sender = connect(&server, "s", "billing", "sender");
    let (mut a, mut b) = (
        connect(&server, "s", "billing", "a"),
        connect(&server, "s", "billing", "b"),
    );
    let mut audit = connect(&server, "s", "audit", "x");
    // Groups exist before the send (a group made later starts from the stream's oldest entry,
    // so this also holds without it).
    for backend in [&mut a, &mut b, &mut audit] {
        assert!(backend.receive(1, WAIT).unwrap().is_empty());
    }
    let sent: Vec<Outgoing> = (0..600).map(outgoing).collect();
    sender.send(&sent).unwrap();
    let mut billing = Vec::new();
    let started = Instant::now();
    while billing.len() < 600 && started.elapsed() < Duration::from_secs(20) {
        for backend in [&mut a, &mut b] {
            // Small batches, so that both consumers get a share.
            let batch = backend.receive(25, WAIT).unwrap();
            let entries: Vec<String> = batch.iter().map(|r| r.entry.clone()).collect();
            backend.acknowledge(&entries).unwrap();
            billing.extend(batch.into_iter().map(|r| r.body.unwrap().id));
        }
    }
    let (ra, rb) = (
        a.metrics().snapshot().received,
        b.metrics().snapshot().received,
    );
    assert!(ra > 0 && rb > 0, "both consumers worked: {ra} and {rb}");
    assert_eq!(ra + rb, 600, "no entry went to both");
    let billing: HashSet<EventId> = billing.into_iter().collect();
    let all: HashSet<EventId> = sent.iter().map(|o| o.id).collect();
    assert_eq!(billing, all);
    let audited: HashSet<EventId> = receive_n(&mut audit, 600, true, Duration::from_secs(20))
        .into_iter()
        .map(|r| r.body.unwrap().id)
        .collect();
    assert_eq!(audited, all, "the other group got every entry too");
}

#[test]
fn a_dead_consumers_entries_go_to_another_after_the_claim_timeout() {
    let _deadline = deadline("claim", LIMIT);
    let server = RedisServer::start();
    let mut sender = connect(&server, "s", "g", "sender");
    let claim = Duration::from_millis(300);
    let open = |consumer: &str| connect_claiming(&server, consumer, claim);
    let mut doomed = open("doomed");
    let mut survivor = open("survivor");
    assert!(survivor.receive(1, WAIT).unwrap().is_empty());
    sender
        .send(&(0..50).map(outgoing).collect::<Vec<_>>())
        .unwrap();
    // `doomed` takes all 50 and dies without acknowledging. (Redis times idleness from the
    // delivery, so the clock starts before it.)
    let started = Instant::now();
    let taken = receive_n(&mut doomed, 50, false, Duration::from_secs(10));
    assert_eq!(taken.len(), 50);
    drop(doomed);
    let got = receive_n(&mut survivor, 50, true, Duration::from_secs(20));
    assert_eq!(got.len(), 50);
    assert!(started.elapsed() >= claim, "not before the claim timeout");
    assert!(got.iter().all(|r| r.redelivered));
    let taken: Vec<&[u8]> = taken.iter().map(payload_of).collect();
    let got: Vec<&[u8]> = got.iter().map(payload_of).collect();
    assert_eq!(taken, got);
    assert_eq!(survivor.pending().unwrap(), 0);
    assert_eq!(survivor.metrics().snapshot().redelivered, 50);
}

#[test]
fn a_restarted_consumer_takes_back_its_own_pending_entries_at_once() {
    let _deadline = deadline("restart", LIMIT);
    let server = RedisServer::start();
    let mut sender = connect(&server, "s", "g", "sender");
    let mut first = connect(&server, "s", "g", "worker-1");
    sender
        .send(&(0..30).map(outgoing).collect::<Vec<_>>())
        .unwrap();
    let taken = receive_n(&mut first, 30, false, Duration::from_secs(10));
    assert_eq!(taken.len(), 30);
    // Acknowledge a third, then "crash".
    let acked: Vec<String> = taken[..10].iter().map(|r| r.entry.clone()).collect();
    first.acknowledge(&acked).unwrap();
    drop(first);
    // The default claim timeout (30 s) is far away: the same name gets them back at once.
    let mut again = connect(&server, "s", "g", "worker-1");
    let started = Instant::now();
    let got = receive_n(&mut again, 20, true, Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(5));
    let expected: Vec<&String> = taken[10..].iter().map(|r| &r.entry).collect();
    let got_entries: Vec<&String> = got.iter().map(|r| &r.entry).collect();
    assert_eq!(got_entries, expected);
    assert!(got.iter().all(|r| r.redelivered));
    assert!(again.receive(10, WAIT).unwrap().is_empty());
    assert_eq!(again.pending().unwrap(), 0);
}

#[test]
fn an_acl_user_needs_the_right_password_and_the_password_is_never_shown() {
    let _deadline = deadline("acl", LIMIT);
    let server = RedisServer::with_config("user default off\nuser alice on >s3cret-pw ~* &* +@all");
    let wrong =
        RedisStreams::connect(RedisOptions::new(server.url("alice:wrong-pw@"), "s")).unwrap_err();
    assert!(matches!(wrong, BridgeError::Auth(_)), "{wrong:?}");
    for shown in [wrong.to_string(), format!("{wrong:?}")] {
        assert!(!shown.contains("wrong-pw"), "{shown}");
    }
    let anonymous = RedisStreams::connect(RedisOptions::new(server.url(""), "s")).unwrap_err();
    assert!(matches!(anonymous, BridgeError::Auth(_)), "{anonymous:?}");
    let mut alice =
        RedisStreams::connect(RedisOptions::new(server.url("alice:s3cret-pw@"), "s")).unwrap();
    let debug = format!("{alice:?}");
    assert!(
        !debug.contains("s3cret-pw") && !debug.contains("alice:"),
        "{debug}"
    );
    alice.send(&[outgoing(1)]).unwrap();
    assert_eq!(
        receive_n(&mut alice, 1, true, Duration::from_secs(10)).len(),
        1
    );
}

#[test]
fn payloads_over_the_limit_are_refused_on_send_and_moved_aside_on_receive() {
    let _deadline = deadline("payload_limit", LIMIT);
    let server = RedisServer::start();
    let small = |consumer: &str| {
        RedisStreams::connect(
            RedisOptions::new(server.url(""), "s")
                .group("g")
                .consumer(consumer)
                .max_payload(100),
        )
        .unwrap()
    };
    let mut strict_sender = small("strict");
    let big = Outgoing {
        payload: vec![b'x'; 101],
        ..outgoing(0)
    };
    let err = strict_sender.send(&[outgoing(1), big.clone()]).unwrap_err();
    assert!(
        matches!(
            err,
            BridgeError::PayloadTooLarge {
                size: 101,
                limit: 100
            }
        ),
        "{err:?}"
    );
    let mut receiver = small("r");
    assert!(
        receiver.receive(10, WAIT).unwrap().is_empty(),
        "nothing of the refused batch was sent"
    );
    assert_eq!(strict_sender.metrics().snapshot().sent, 0);
    // A sender with a larger limit gets it onto the stream; the strict receiver moves it aside.
    let mut lax_sender = connect(&server, "s", "g", "lax");
    lax_sender.send(&[big, outgoing(2)]).unwrap();
    let got = receive_n(&mut receiver, 2, true, Duration::from_secs(10));
    assert_eq!(
        got[0].body,
        Err(Malformed::TooLarge {
            size: 101,
            limit: 100
        })
    );
    assert!(got[1].body.is_ok());
    assert_eq!(receiver.metrics().snapshot().malformed, 1);
    assert_eq!(
        receiver.pending().unwrap(),
        0,
        "the malformed entry was acknowledged away"
    );
}

#[test]
fn entries_that_are_not_events_are_counted_and_can_be_acknowledged_away() {
    let _deadline = deadline("malformed", LIMIT);
    let server = RedisServer::start();
    let mut receiver = connect(&server, "s", "g", "r");
    assert!(receiver.receive(1, WAIT).unwrap().is_empty());
    let client = redis::Client::open(server.url("")).unwrap();
    let mut raw = client.get_connection().unwrap();
    let good_id = EventId::next().to_string();
    let entries: [&[(&str, &[u8])]; 4] = [
        &[("projection", b"p"), ("payload", b"{}")],
        &[
            ("id", b"not-an-id"),
            ("projection", b"p"),
            ("payload", b"{}"),
        ],
        &[
            ("id", good_id.as_bytes()),
            ("projection", b"\xff\xfe"),
            ("payload", b"{}"),
        ],
        &[("id", good_id.as_bytes()), ("projection", b"p")],
    ];
    for fields in entries {
        let _: String = redis::cmd("XADD")
            .arg("s")
            .arg("*")
            .arg(fields)
            .query(&mut raw)
            .unwrap();
    }
    let got = receive_n(&mut receiver, 4, true, Duration::from_secs(10));
    let bodies: Vec<_> = got.iter().map(|r| r.body.clone().unwrap_err()).collect();
    assert_eq!(
        bodies,
        [
            Malformed::MissingField("id"),
            Malformed::BadId,
            Malformed::BadField("projection"),
            Malformed::MissingField("payload"),
        ]
    );
    assert_eq!(receiver.metrics().snapshot().malformed, 4);
    assert_eq!(receiver.pending().unwrap(), 0);
}

#[test]
fn an_entry_with_a_field_name_that_is_not_utf8_is_moved_aside_and_blocks_nothing() {
    let _deadline = deadline("poison", LIMIT);
    let server = RedisServer::start();
    let claim = Duration::from_millis(200);
    let open = |consumer: &str| connect_claiming(&server, consumer, claim);
    let mut receiver = open("r");
    assert!(receiver.receive(1, WAIT).unwrap().is_empty());
    let client = redis::Client::open(server.url("")).unwrap();
    let mut raw = client.get_connection().unwrap();
    let _: String = redis::cmd("XADD")
        .arg("s")
        .arg("*")
        .arg(&b"\xff\xfe"[..])
        .arg("x")
        .query(&mut raw)
        .unwrap();
    let mut sender = open("sender");
    sender.send(&[outgoing(1)]).unwrap();
    // Delivered and not acknowledged, then claimed by another consumer: both reads parse.
    let got = receive_n(&mut receiver, 2, false, Duration::from_secs(10));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, Err(Malformed::MissingField("id")));
    assert!(got[1].body.is_ok());
    let mut other = open("other");
    let claimed = receive_n(&mut other, 2, true, Duration::from_secs(10));
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|r| r.redelivered));
    assert_eq!(other.pending().unwrap(), 0);
}

#[test]
fn pending_entries_trimmed_away_come_back_as_trimmed_and_are_acknowledged_away() {
    let _deadline = deadline("trimmed", LIMIT);
    let server = RedisServer::start();
    let mut sender = connect(&server, "s", "g", "sender");
    let mut first = connect(&server, "s", "g", "w");
    sender
        .send(&(0..5).map(outgoing).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(
        receive_n(&mut first, 5, false, Duration::from_secs(10)).len(),
        5
    );
    drop(first);
    let client = redis::Client::open(server.url("")).unwrap();
    let _: u64 = redis::cmd("XTRIM")
        .arg("s")
        .arg("MAXLEN")
        .arg(2)
        .query(&mut client.get_connection().unwrap())
        .unwrap();
    let mut again = connect(&server, "s", "g", "w");
    let got = receive_n(&mut again, 5, true, Duration::from_secs(10));
    let trimmed = got
        .iter()
        .filter(|r| r.body == Err(Malformed::Trimmed))
        .count();
    assert_eq!((got.len(), trimmed), (5, 3));
    assert_eq!(again.pending().unwrap(), 0);
}

#[test]
fn entries_that_are_not_events_are_moved_aside_to_the_dead_letter_stream() {
    let _deadline = deadline("dead_letter_stream", LIMIT);
    let server = RedisServer::start();
    let options = RedisOptions::new(server.url(""), "s")
        .group("g")
        .consumer("r")
        .max_payload(100)
        .dead_letters("s:dead");
    let mut receiver = RedisStreams::connect(options).unwrap();
    assert!(receiver.receive(1, WAIT).unwrap().is_empty());
    let client = redis::Client::open(server.url("")).unwrap();
    let mut raw = client.get_connection().unwrap();
    let bad: String = redis::cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("id")
        .arg("not-an-id")
        .arg("payload")
        .arg("{}")
        .query(&mut raw)
        .unwrap();
    let mut sender = connect(&server, "s", "g", "sender");
    let big = Outgoing {
        payload: vec![b'x'; 101],
        ..outgoing(0)
    };
    sender.send(&[outgoing(1), big]).unwrap();
    let got = receive_n(&mut receiver, 3, true, Duration::from_secs(10));
    assert_eq!(got.iter().filter(|r| r.body.is_err()).count(), 2);
    let dead: redis::Value = redis::cmd("XRANGE")
        .arg("s:dead")
        .arg("-")
        .arg("+")
        .query(&mut raw)
        .unwrap();
    let text = format!("{dead:?}");
    assert!(text.contains(&bad), "the original entry id: {text}");
    assert!(text.contains("not-an-id"), "the original fields: {text}");
    assert!(text.contains("not an event id"), "the reason: {text}");
    assert!(text.contains("over the limit of 100 bytes"), "{text}");
    let len: u64 = redis::cmd("XLEN").arg("s:dead").query(&mut raw).unwrap();
    assert_eq!(len, 2, "the good event was not moved aside");
}

#[test]
fn a_redis_restart_loses_nothing_acknowledged_and_both_sides_reconnect() {
    let _deadline = deadline("redis_restart", LIMIT);
    let mut server = RedisServer::start();
    let mut sender = connect(&server, "s", "g", "sender");
    let mut receiver = connect(&server, "s", "g", "r");
    let first: Vec<Outgoing> = (0..200).map(outgoing).collect();
    sender.send(&first).unwrap();
    // 100 handled and acknowledged, 100 delivered and not yet acknowledged.
    let acked = receive_n(&mut receiver, 100, false, Duration::from_secs(10));
    let acked = &acked[..100.min(acked.len())];
    let entries: Vec<String> = acked.iter().map(|r| r.entry.clone()).collect();
    receiver.acknowledge(&entries).unwrap();
    server.restart();
    let second: Vec<Outgoing> = (200..300).map(outgoing).collect();
    sender.send(&second).unwrap();
    // The receiver's connection broke too; what was not acknowledged comes again, then the
    // rest, and nothing acknowledged comes back.
    let mut again = connect(&server, "s", "g", "r");
    let rest = receive_n(&mut again, 200, true, Duration::from_secs(20));
    let rest_ids: HashSet<EventId> = rest.iter().map(|r| r.body.as_ref().unwrap().id).collect();
    let acked_ids: HashSet<EventId> = acked.iter().map(|r| r.body.as_ref().unwrap().id).collect();
    let all: HashSet<EventId> = first.iter().chain(&second).map(|o| o.id).collect();
    assert!(rest_ids.is_disjoint(&acked_ids));
    assert_eq!(
        &rest_ids | &acked_ids,
        all,
        "nothing lost across the restart"
    );
    assert_eq!(sender.metrics().snapshot().reconnects, 1);
    // The old receiver reconnects on its next call.
    assert!(receiver.receive(1, WAIT).unwrap().is_empty());
    assert_eq!(receiver.metrics().snapshot().reconnects, 1);
}

#[test]
fn the_length_cap_trims_old_entries() {
    let _deadline = deadline("max_len", LIMIT);
    let server = RedisServer::start();
    let mut sender =
        RedisStreams::connect(RedisOptions::new(server.url(""), "s").max_len(100)).unwrap();
    for chunk in 0..20 {
        sender
            .send(
                &(chunk * 100..(chunk + 1) * 100)
                    .map(outgoing)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
    }
    let client = redis::Client::open(server.url("")).unwrap();
    let len: u64 = redis::cmd("XLEN")
        .arg("s")
        .query(&mut client.get_connection().unwrap())
        .unwrap();
    // `~`: about the cap, trimmed by whole nodes of the stream.
    assert!((100..=300).contains(&len), "{len}");
}

mod forwarding {
    use super::*;
    use ringbus::bridge::{Codec, ForwardOptions, Forwarder, Json};
    use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Ev {
        kind: String,
        n: u64,
    }

    impl Event for Ev {
        type Projection = String;
        fn projection(&self) -> String {
            self.kind.clone()
        }
    }

    fn ev(kind: &str, n: u64) -> Ev {
        Ev {
            kind: kind.into(),
            n,
        }
    }

    /// A store whose "order" and "audit" events are counted by local handlers.
    fn store(policy: OverrunPolicy) -> (EventStore<Ev>, Arc<AtomicU64>) {
        let local = Arc::new(AtomicU64::new(0));
        let mut dispatcher = Dispatcher::<Ev>::new();
        for kind in ["order", "audit"] {
            let local = local.clone();
            dispatcher.on(kind.to_string(), move |_, _| {
                local.fetch_add(1, Ordering::Relaxed);
                Ok(())
            });
        }
        (EventStore::new(dispatcher, 4096, policy).unwrap(), local)
    }

    /// A forwarder of `store`'s "order" events to `backend`, in JSON.
    fn forward_orders(
        store: &EventStore<Ev>,
        backend: impl Backend + 'static,
        options: ForwardOptions,
    ) -> Forwarder {
        Forwarder::start(store, ["order".to_string()], Json, backend, options).unwrap()
    }

    #[test]
    fn chosen_projections_are_appended_after_the_local_handlers_ran() {
        let _deadline = deadline("forward", LIMIT);
        let server = RedisServer::start();
        let (store, local) = store(OverrunPolicy::Block);
        let forwarder = forward_orders(
            &store,
            connect(&server, "events", "g", "sender"),
            ForwardOptions::default(),
        );
        for n in 0..1000 {
            store.enqueue(ev("order", n)).unwrap();
            if n % 100 == 0 {
                store.enqueue(ev("audit", n)).unwrap();
            }
        }
        store.publish();
        assert_eq!(
            local.load(Ordering::Relaxed),
            1010,
            "local handlers still run"
        );
        assert!(wait_until(Duration::from_secs(20), || forwarder
            .metrics()
            .sent
            == 1000));
        let mut receiver = connect(&server, "events", "g", "r");
        let got = receive_n(&mut receiver, 1000, true, Duration::from_secs(20));
        let events: Vec<Ev> = got
            .iter()
            .map(|r| {
                let body = r.body.as_ref().unwrap();
                assert_eq!(body.projection, "\"order\"", "the projection's Debug form");
                Json.decode(&body.payload).unwrap()
            })
            .collect();
        assert_eq!(
            events,
            (0..1000).map(|n| ev("order", n)).collect::<Vec<_>>()
        );
        assert!(
            receiver.receive(10, WAIT).unwrap().is_empty(),
            "no audit event was forwarded"
        );
        let left = forwarder.close(Duration::from_secs(5));
        assert_eq!(left, 0);
    }

    #[test]
    fn events_from_the_producer_lane_are_not_forwarded_again() {
        let _deadline = deadline("echo", LIMIT);
        let server = RedisServer::start();
        let (store, producer) = EventStore::builder(Dispatcher::<Ev>::new())
            .capacity(64)
            .build_with_producer()
            .unwrap();
        let mut producer = producer;
        let forwarder = forward_orders(
            &store,
            connect(&server, "events", "g", "sender"),
            ForwardOptions::default(),
        );
        producer.enqueue(ev("order", 1)).unwrap(); // as a receiver would: from the broker
        store.enqueue(ev("order", 2)).unwrap(); // a local event
        store.publish();
        assert!(wait_until(Duration::from_secs(20), || forwarder
            .metrics()
            .sent
            == 1));
        let m = forwarder.metrics();
        assert_eq!((m.echoes, m.buffered, m.sent), (1, 1, 1));
        let mut receiver = connect(&server, "events", "g", "r");
        let got = receive_n(&mut receiver, 1, true, Duration::from_secs(10));
        let sent: Ev = Json.decode(payload_of(&got[0])).unwrap();
        assert_eq!(sent, ev("order", 2));
    }

    #[test]
    fn while_redis_is_away_the_buffer_holds_and_nothing_is_lost_when_it_returns() {
        let _deadline = deadline("forward_away", LIMIT);
        let mut server = RedisServer::start();
        let (store, _) = store(OverrunPolicy::Block);
        let forwarder = forward_orders(
            &store,
            connect(&server, "events", "g", "sender"),
            ForwardOptions::default().batch(50),
        );
        store.enqueue(ev("order", 0)).unwrap();
        store.publish();
        assert!(wait_until(Duration::from_secs(20), || forwarder
            .metrics()
            .sent
            == 1));
        server.kill();
        for n in 1..300 {
            store.enqueue(ev("order", n)).unwrap();
        }
        store.publish();
        assert!(wait_until(Duration::from_secs(10), || forwarder
            .metrics()
            .send_retries
            > 0));
        assert_eq!(forwarder.metrics().sent, 1);
        server.restart();
        assert!(wait_until(Duration::from_secs(30), || forwarder
            .metrics()
            .sent
            == 300));
        let mut receiver = connect(&server, "events", "g", "r");
        let got = receive_n(&mut receiver, 300, true, Duration::from_secs(20));
        let ns: HashSet<u64> = got
            .iter()
            .map(|r| Json.decode(payload_of(r)).map(|e: Ev| e.n).unwrap())
            .collect();
        assert_eq!(ns, (0..300).collect::<HashSet<u64>>());
        let m = forwarder.metrics();
        assert_eq!((m.evicted, m.unsent, m.abandoned), (0, 0, 0));
    }

    /// A broker that is never there.
    struct Away;

    impl Backend for Away {
        fn send(&mut self, _: &[Outgoing]) -> Result<(), BridgeError> {
            Err(BridgeError::Connection("away".into()))
        }
        fn receive(&mut self, _: usize, _: Duration) -> Result<Vec<Received>, BridgeError> {
            Err(BridgeError::Connection("away".into()))
        }
        fn acknowledge(&mut self, _: &[String]) -> Result<(), BridgeError> {
            Err(BridgeError::Connection("away".into()))
        }
        fn close(&mut self) -> Result<(), BridgeError> {
            Ok(())
        }
    }

    #[test]
    fn a_full_send_buffer_follows_the_stores_overrun_policy_and_counts_every_event() {
        let _deadline = deadline("forward_full", LIMIT);
        for policy in [OverrunPolicy::DropOldest, OverrunPolicy::ReturnError] {
            let (store, _) = store(policy);
            let options = ForwardOptions::default().buffer(4).batch(1);
            let forwarder = forward_orders(&store, Away, options);
            for n in 0..20 {
                store.enqueue(ev("order", n)).unwrap();
            }
            store.publish();
            // The sender holds one event (retrying forever), the buffer up to 4 (3 if the
            // sender took its one after the last push); the rest evicted or refused.
            assert!(wait_until(Duration::from_secs(10), || forwarder
                .metrics()
                .in_sender
                == 1));
            let m = forwarder.metrics();
            let held = m.send_buffer_depth + m.in_sender;
            assert!((4..=5).contains(&held), "{policy:?} {m:?}");
            assert_eq!(m.sent, 0);
            if policy == OverrunPolicy::ReturnError {
                assert_eq!(m.refused, 20 - held, "{m:?}");
                assert_eq!(m.buffered + m.refused, 20, "{m:?}");
                assert_eq!(
                    store.metrics().failed,
                    m.refused,
                    "each refusal fails its event"
                );
            } else {
                assert_eq!(m.buffered, 20, "{m:?}");
                assert_eq!(m.evicted, 20 - held, "{m:?}");
            }
            assert_eq!(
                m.buffered,
                m.sent + m.evicted + m.unsent + m.send_buffer_depth + m.in_sender,
                "{m:?}"
            );
            // Closing with the broker away: the buffer and the sender's batch are lost, counted.
            let lost = forwarder.close(Duration::from_millis(50));
            assert_eq!(lost, held, "{policy:?}");
        }
    }

    #[test]
    fn under_block_a_full_buffer_holds_the_publisher_until_close_gives_up_its_event() {
        let _deadline = deadline("forward_block", LIMIT);
        let (store, local) = store(OverrunPolicy::Block);
        let options = ForwardOptions::default().buffer(2).batch(1);
        let forwarder = forward_orders(&store, Away, options);
        for n in 0..10 {
            store.enqueue(ev("order", n)).unwrap();
        }
        let publisher = {
            let store = store.clone();
            std::thread::spawn(move || store.publish())
        };
        // 2 buffered, 1 in the sender's hands, the 4th waits for room.
        assert!(wait_until(Duration::from_secs(10), || forwarder
            .metrics()
            .buffered
            == 3));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!publisher.is_finished(), "Block waits for room");
        assert_eq!(forwarder.metrics().buffered, 3);
        // Lost: 2 buffered and 1 in the sender's hands (unsent), and the waiting one
        // (abandoned), at least.
        let lost = forwarder.close(Duration::from_millis(50));
        assert!((4..=10).contains(&lost), "{lost}");
        let report = publisher.join().unwrap();
        assert_eq!(report.dispatched, 10);
        assert_eq!(
            local.load(Ordering::Relaxed),
            10,
            "local handlers ran every event"
        );
    }
}

mod receiving {
    use super::*;
    use ringbus::bridge::{Codec, ForwardOptions, Forwarder, Json, ReceiveOptions, Receiver};
    use ringbus::{Dispatcher, EventStore, Producer, WaitStrategy};
    use std::sync::{Arc, Mutex};

    /// A store with a producer lane whose handler records each `n`, failing the first try of
    /// those in `fail_once`; and its consumer thread.
    fn bridged(fail_once: &[u64]) -> (EventStore<Ev>, Producer<Ev>, Arc<Mutex<Vec<u64>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(Mutex::new(fail_once.to_vec()));
        let mut dispatcher = Dispatcher::<Ev>::new();
        let record = seen.clone();
        dispatcher.on("ev", move |_, ev: &Ev| {
            let mut failing = failing.lock().unwrap();
            if let Some(i) = failing.iter().position(|&n| n == ev.n) {
                failing.remove(i);
                return Err("fails once".into());
            }
            record.lock().unwrap().push(ev.n);
            Ok(())
        });
        let (store, producer) = EventStore::builder(dispatcher)
            .capacity(1024)
            .build_with_producer()
            .unwrap();
        (store, producer, seen)
    }

    /// A bridged store receiving from `backend`, run by its consumer thread.
    struct Receiving {
        store: EventStore<Ev>,
        receiver: Receiver,
        consumer: ringbus::ConsumerThread,
        seen: Arc<Mutex<Vec<u64>>>,
    }

    impl Receiving {
        fn start(backend: RedisStreams, fail_once: &[u64], options: ReceiveOptions) -> Self {
            let (store, producer, seen) = bridged(fail_once);
            let consumer = store.spawn_consumer(WaitStrategy::default());
            let receiver = Receiver::start(producer, Json, backend, options).unwrap();
            Receiving {
                store,
                receiver,
                consumer,
                seen,
            }
        }

        fn seen_sorted(&self) -> Vec<u64> {
            let mut seen = self.seen.lock().unwrap().clone();
            seen.sort_unstable();
            seen
        }

        fn finish(self) {
            self.receiver.stop();
            self.store.close(Duration::from_secs(5)).unwrap();
            self.consumer.join();
        }
    }

    fn payload(n: u64) -> Outgoing {
        Outgoing {
            id: EventId::next(),
            projection: "\"ev\"".into(),
            payload: Codec::<Ev>::encode(&Json, &Ev { n }).unwrap(),
        }
    }

    #[test]
    fn events_are_handled_once_and_acknowledged_only_after_their_handlers() {
        let _deadline = deadline("receive", LIMIT);
        let server = RedisServer::start();
        let r = Receiving::start(
            connect(&server, "s", "g", "r"),
            &[],
            ReceiveOptions::default(),
        );
        let mut sender = connect(&server, "s", "g", "sender");
        let sent: Vec<Outgoing> = (0..2000).map(payload).collect();
        sender.send(&sent).unwrap();
        // The same event again (a sender that resent after a lost reply): handled once.
        sender.send(&sent[..10]).unwrap();
        assert!(wait_until(Duration::from_secs(30), || r
            .receiver
            .metrics()
            .acked
            == 2010));
        assert_eq!(
            r.seen_sorted(),
            (0..2000).collect::<Vec<_>>(),
            "each exactly once"
        );
        let m = r.receiver.metrics();
        assert_eq!(
            (m.enqueued, m.duplicates, m.malformed, m.in_flight),
            (2000, 10, 0, 0)
        );
        let mut probe = connect(&server, "s", "g", "probe");
        assert_eq!(probe.pending().unwrap(), 0);
        r.finish();
    }

    #[test]
    fn a_failed_event_stays_pending_and_its_redelivery_is_handled() {
        let _deadline = deadline("receive_failed", LIMIT);
        let server = RedisServer::start();
        let claim = Duration::from_millis(300);
        let r = Receiving::start(
            connect_claiming(&server, "r", claim),
            &[3],
            ReceiveOptions::default().forget_after(Duration::from_millis(100)),
        );
        connect(&server, "s", "g", "sender")
            .send(&(0..5).map(payload).collect::<Vec<_>>())
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || r
            .receiver
            .metrics()
            .acked
            == 4));
        assert!(!r.seen_sorted().contains(&3));
        // Claimed again after the claim timeout (by this same consumer), handled, acked.
        assert!(wait_until(Duration::from_secs(20), || r
            .receiver
            .metrics()
            .acked
            == 5));
        assert_eq!(r.seen_sorted(), [0, 1, 2, 3, 4]);
        assert!(r.receiver.metrics().forgotten >= 1);
        r.finish();
    }

    /// A packed entry is acknowledged once all its events are handled: one failing leaves it
    /// pending, and its redelivery runs that one alone (the others are duplicates).
    #[test]
    fn a_packed_entry_waits_for_all_its_events_and_its_redelivery_runs_only_the_failed() {
        let _deadline = deadline("receive_packed", LIMIT);
        let server = RedisServer::start();
        let claim = Duration::from_millis(300);
        let r = Receiving::start(
            connect_claiming(&server, "r", claim),
            &[3, 17],
            ReceiveOptions::default().forget_after(Duration::from_millis(100)),
        );
        let mut sender = RedisStreams::connect(
            RedisOptions::new(server.url(""), "s")
                .group("g")
                .events_per_entry(8),
        )
        .unwrap();
        // Entries: 0..8 (3 fails once), 8..16, 16..24 (17 fails once), 24..25.
        sender
            .send(&(0..25).map(payload).collect::<Vec<_>>())
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || r
            .receiver
            .metrics()
            .acked
            == 2));
        let first = r.seen_sorted();
        assert!(!first.contains(&3) && !first.contains(&17), "{first:?}");
        assert_eq!(first.len(), 23);
        assert!(wait_until(Duration::from_secs(20), || r
            .receiver
            .metrics()
            .acked
            == 4));
        assert_eq!(r.seen_sorted(), (0..25).collect::<Vec<_>>(), "each once");
        let m = r.receiver.metrics();
        assert_eq!((m.enqueued, m.duplicates, m.in_flight), (27, 14, 0));
        assert_eq!(m.forgotten, 2);
        let mut probe = connect(&server, "s", "g", "probe");
        assert_eq!(probe.pending().unwrap(), 0);
        r.finish();
    }

    /// An event that waits in a slow store longer than the claim timeout keeps its entry:
    /// another consumer of the group does not take it and run it again.
    #[test]
    fn a_slow_but_alive_consumer_keeps_its_entries_from_other_consumers() {
        let _deadline = deadline("keep_alive", LIMIT);
        let server = RedisServer::start();
        let claim = Duration::from_secs(1);
        let ran = Arc::new(Mutex::new(Vec::new()));
        let start = |name: &'static str, slow: bool| {
            let mut dispatcher = Dispatcher::<Ev>::new();
            let record = ran.clone();
            dispatcher.on("ev", move |_, ev: &Ev| {
                if slow {
                    std::thread::sleep(Duration::from_secs(3));
                }
                record.lock().unwrap().push((name, ev.n));
                Ok(())
            });
            let (store, producer) = EventStore::builder(dispatcher)
                .capacity(16)
                .build_with_producer()
                .unwrap();
            let consumer = store.spawn_consumer(WaitStrategy::default());
            let receiver = Receiver::start(
                producer,
                Json,
                connect_claiming(&server, name, claim),
                ReceiveOptions::default(),
            )
            .unwrap();
            (store, consumer, receiver)
        };
        let slow = start("slow", true);
        connect(&server, "s", "g", "sender")
            .send(&[payload(1), payload(2)])
            .unwrap();
        // The slow consumer has both (one running, one queued behind it) before the other
        // starts claiming.
        assert!(wait_until(Duration::from_secs(10), || slow
            .2
            .metrics()
            .enqueued
            == 2));
        let other = start("other", false);
        assert!(wait_until(Duration::from_secs(30), || slow
            .2
            .metrics()
            .acked
            == 2));
        std::thread::sleep(claim * 2);
        let mut ran = ran.lock().unwrap().clone();
        ran.sort_unstable();
        assert_eq!(
            ran,
            [("slow", 1), ("slow", 2)],
            "each once, by its consumer"
        );
        assert_eq!(other.2.metrics().enqueued, 0);
        for (store, consumer, receiver) in [slow, other] {
            receiver.stop();
            store.close(Duration::from_secs(10)).unwrap();
            consumer.join();
        }
    }

    /// A store of `capacity` under `policy` whose handler takes `slow` an event, run by its
    /// consumer thread, receiving from `backend`; and the numbers it handled.
    fn slow_receiving(
        backend: RedisStreams,
        slow: Duration,
        capacity: usize,
        policy: ringbus::OverrunPolicy,
        options: ReceiveOptions,
    ) -> Receiving {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut dispatcher = Dispatcher::<Ev>::new();
        let record = seen.clone();
        dispatcher.on("ev", move |_, ev: &Ev| {
            std::thread::sleep(slow);
            record.lock().unwrap().push(ev.n);
            Ok(())
        });
        let (store, producer) = EventStore::builder(dispatcher)
            .capacity(capacity)
            .policy(policy)
            .build_with_producer()
            .unwrap();
        let consumer = store.spawn_consumer(WaitStrategy::default());
        let receiver = Receiver::start(producer, Json, backend, options).unwrap();
        Receiving {
            store,
            receiver,
            consumer,
            seen,
        }
    }

    /// An event forgotten while its handler still ran, and handled then: its redelivery is a
    /// duplicate, not a second run.
    #[test]
    fn an_event_handled_after_it_was_forgotten_is_not_run_again() {
        let _deadline = deadline("late_settle", LIMIT);
        let server = RedisServer::start();
        let r = slow_receiving(
            connect_claiming(&server, "r", Duration::from_secs(1)),
            Duration::from_millis(700),
            16,
            ringbus::OverrunPolicy::DropOldest,
            ReceiveOptions::default().forget_after(Duration::from_millis(200)),
        );
        connect(&server, "s", "g", "sender")
            .send(&[payload(7)])
            .unwrap();
        assert!(wait_until(Duration::from_secs(20), || r
            .receiver
            .metrics()
            .acked
            == 1));
        let m = r.receiver.metrics();
        assert_eq!((m.enqueued, m.forgotten, m.duplicates), (1, 1, 1));
        assert_eq!(r.seen_sorted(), [7], "run once");
        r.finish();
    }

    /// A tiny, slow store under every policy: the receiver enqueues only into room, so the
    /// store never evicts (`DropOldest`), refuses (`ReturnError`) or blocks on what it
    /// received, and every event is handled at once, not after `forget_after`.
    #[test]
    fn the_receiver_never_makes_its_store_drop_or_refuse() {
        let _deadline = deadline("receive_room", LIMIT);
        let server = RedisServer::start();
        for policy in [
            ringbus::OverrunPolicy::DropOldest,
            ringbus::OverrunPolicy::ReturnError,
            ringbus::OverrunPolicy::Block,
        ] {
            let stream = format!("room-{policy:?}");
            let r = slow_receiving(
                connect(&server, &stream, "g", "r"),
                Duration::from_micros(200),
                2,
                policy,
                ReceiveOptions::default(),
            );
            connect(&server, &stream, "g", "sender")
                .send(&(0..500).map(payload).collect::<Vec<_>>())
                .unwrap();
            let all = wait_until(Duration::from_secs(20), || {
                r.receiver.metrics().acked == 500
            });
            let (handled, m, dropped) = (
                r.seen_sorted(),
                r.receiver.metrics(),
                r.store.metrics().dropped,
            );
            assert!(
                all,
                "{policy:?}: {} handled, store dropped {dropped}, {m:?}",
                handled.len()
            );
            assert_eq!(handled, (0..500).collect::<Vec<_>>(), "{policy:?}");
            assert_eq!((dropped, m.refused), (0, 0), "{policy:?}");
            r.finish();
        }
    }

    #[test]
    fn undecodable_payloads_are_moved_aside_and_counted() {
        let _deadline = deadline("receive_bad", LIMIT);
        let server = RedisServer::start();
        let r = Receiving::start(
            connect(&server, "s", "g", "r"),
            &[],
            ReceiveOptions::default(),
        );
        let bad = Outgoing {
            payload: b"{not json".to_vec(),
            ..payload(0)
        };
        connect(&server, "s", "g", "sender")
            .send(&[bad, payload(1)])
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || r
            .receiver
            .metrics()
            .acked
            == 2));
        assert_eq!(r.receiver.metrics().malformed, 1);
        assert_eq!(r.seen_sorted(), [1]);
        r.finish();
    }

    #[test]
    fn a_store_forwarding_and_receiving_on_one_stream_sends_nothing_back() {
        let _deadline = deadline("no_echo", LIMIT);
        let server = RedisServer::start();
        // Process A's store forwards; process B's store receives and forwards too.
        let (a, _, _) = bridged(&[]);
        let forward_a = Forwarder::start(
            &a,
            ["ev"],
            Json,
            connect(&server, "s", "a", "a-send"),
            ForwardOptions::default(),
        )
        .unwrap();
        let (b, b_producer, b_seen) = bridged(&[]);
        let consumer_b = b.spawn_consumer(WaitStrategy::default());
        let forward_b = Forwarder::start(
            &b,
            ["ev"],
            Json,
            connect(&server, "s", "b", "b-send"),
            ForwardOptions::default(),
        )
        .unwrap();
        let receive_b = Receiver::start(
            b_producer,
            Json,
            connect(&server, "s", "b", "b"),
            ReceiveOptions::default(),
        )
        .unwrap();
        for n in 0..100 {
            a.enqueue(Ev { n }).unwrap();
        }
        a.publish();
        assert!(wait_until(Duration::from_secs(20), || receive_b
            .metrics()
            .acked
            == 100));
        assert_eq!(b_seen.lock().unwrap().len(), 100);
        std::thread::sleep(Duration::from_millis(200));
        let fb = forward_b.metrics();
        assert_eq!(
            (fb.echoes, fb.buffered),
            (100, 0),
            "B sent none of A's events back"
        );
        let client = redis::Client::open(server.url("")).unwrap();
        let len: u64 = redis::cmd("XLEN")
            .arg("s")
            .query(&mut client.get_connection().unwrap())
            .unwrap();
        assert_eq!(len, 100);
        receive_b.stop();
        drop((forward_a, forward_b));
        b.close(Duration::from_secs(5)).unwrap();
        consumer_b.join();
    }
}

mod receiving_edges {
    use super::*;
    use ringbus::bridge::{Codec, Json, ReceiveOptions, Receiver};
    use ringbus::{Dispatcher, EventStore};

    fn send(server: &RedisServer, n: u64) {
        let batch: Vec<Outgoing> = (0..n)
            .map(|n| Outgoing {
                id: EventId::next(),
                projection: "\"ev\"".into(),
                payload: Codec::<Ev>::encode(&Json, &Ev { n }).unwrap(),
            })
            .collect();
        connect(server, "s", "g", "sender").send(&batch).unwrap();
    }

    /// A store under `Block` that nobody publishes.
    fn unpublished_store(capacity: usize) -> (EventStore<Ev>, ringbus::Producer<Ev>) {
        let mut dispatcher = Dispatcher::<Ev>::new();
        dispatcher.on("ev", |_, _| Ok(()));
        EventStore::builder(dispatcher)
            .capacity(capacity)
            .policy(ringbus::OverrunPolicy::Block)
            .build_with_producer()
            .unwrap()
    }

    /// A receiver into an unpublished store of `capacity`, `sent` events sent, once it has
    /// enqueued `enqueued` of them.
    fn receive_unpublished(
        server: &RedisServer,
        capacity: usize,
        sent: u64,
        enqueued: u64,
    ) -> (EventStore<Ev>, Receiver) {
        let (store, producer) = unpublished_store(capacity);
        let backend = connect(server, "s", "g", "r");
        let receiver = Receiver::start(producer, Json, backend, ReceiveOptions::default()).unwrap();
        send(server, sent);
        let reached = || receiver.metrics().enqueued == enqueued;
        assert!(wait_until(Duration::from_secs(10), reached));
        (store, receiver)
    }

    #[test]
    fn stop_returns_while_the_lane_is_full_and_nobody_publishes() {
        let _deadline = deadline("receive_stop_full", LIMIT);
        let server = RedisServer::start();
        let (store, receiver) = receive_unpublished(&server, 4, 20, 4);
        let started = Instant::now();
        receiver.stop();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(store.metrics().pending, 4);
    }

    #[test]
    fn events_the_closing_store_drains_are_acknowledged() {
        let _deadline = deadline("receive_close_drain", LIMIT);
        let server = RedisServer::start();
        let (store, receiver) = receive_unpublished(&server, 64, 10, 10);
        // Nobody published them: the close's drain runs them.
        store.close(Duration::from_secs(5)).unwrap();
        assert!(wait_until(Duration::from_secs(10), || receiver
            .metrics()
            .acked
            == 10));
        receiver.stop();
        assert_eq!(connect(&server, "s", "g", "probe").pending().unwrap(), 0);
    }
}

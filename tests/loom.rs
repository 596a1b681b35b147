//! Loom models of the ring and the store, through the public `EventStore` API.
//!
//! Under `--cfg loom` the crate's atomics, cells, mutex and condvar are loom's (`src/sync.rs`),
//! so these models explore the interleavings of the code that ships. Run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom
//! ```
//!
//! Every model ends by asserting exact accounting: each accepted event ran once or was counted
//! dropped, each refused one came back to its producer, and the metrics balance. Rayon is not
//! loom-aware, so the models use `DispatchMode::Sync` only.
#![cfg(loom)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use loom::thread;
use ringbus::{
    Dispatcher, EnqueueError, EventStore, Metrics, OverrunPolicy, PRODUCER_LANE, Producer,
};

mod support {
    pub mod ev;
    pub mod seen;
}
// Each event is named by its producer and its index in that producer's program order; all of
// them route to key 0.
use support::ev::Ev;

use support::seen::{Seen, logging_dispatcher};

fn store(capacity: usize, policy: OverrunPolicy) -> (EventStore<Ev>, Seen) {
    let (dispatcher, seen) = logging_dispatcher();
    let store = EventStore::new(dispatcher, capacity, policy).unwrap();
    (store, seen)
}

/// Runs `f` under loom with a preemption bound that keeps each model to seconds.
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    // Each store op is dozens of loom operations (counters, stamps, head and tail).
    builder.max_branches = 100_000;
    builder.check(f);
}

/// Far beyond anything a model needs: `close` must never time out in these models.
const FOREVER: Duration = Duration::from_secs(3600);

/// What one producer got back from its enqueues.
#[derive(Debug, Default)]
struct Outcome {
    /// Accepted events with their sequence numbers.
    accepted: Vec<(u64, Ev)>,
    /// Events handed back, with the reason.
    refused: Vec<EnqueueError<Ev>>,
    /// Sum of `Enqueued::dropped`.
    dropped: u64,
}

fn produce(store: &EventStore<Ev>, producer: u64, count: u64) -> Outcome {
    let mut out = Outcome::default();
    for index in 0..count {
        let ev = Ev::new(producer, index);
        match store.enqueue(ev) {
            Ok(e) => {
                out.accepted.push((e.sequence, ev));
                out.dropped += e.dropped;
            }
            Err(err) => {
                assert_eq!(*err.event(), ev, "the refused event must come back");
                out.refused.push(err);
            }
        }
    }
    out
}

/// Checks the accounting once every thread has finished and everything is dispatched.
fn check(seen: &[(u64, Ev)], outcomes: &[Outcome], m: Metrics, total: u64) {
    let accepted: HashMap<u64, Ev> = outcomes
        .iter()
        .flat_map(|o| o.accepted.iter().copied())
        .collect();
    let accepted_n: usize = outcomes.iter().map(|o| o.accepted.len()).sum();
    assert_eq!(
        accepted.len(),
        accepted_n,
        "sequence numbers must be unique"
    );
    let refused: u64 = outcomes.iter().map(|o| o.refused.len() as u64).sum();
    let dropped: u64 = outcomes.iter().map(|o| o.dropped).sum();

    // Each event ran at most once, under the sequence its enqueue returned.
    let mut ran = HashMap::new();
    for &(seq, ev) in seen {
        assert_eq!(
            accepted.get(&seq),
            Some(&ev),
            "ran under a foreign sequence"
        );
        assert!(ran.insert(seq, ev).is_none(), "event {ev:?} ran twice");
    }
    // Each accepted event ran or was dropped; each refused one came back.
    assert_eq!(seen.len() as u64 + dropped, accepted_n as u64);
    assert_eq!(accepted_n as u64 + refused, total);
    assert_eq!(m.published, accepted_n as u64);
    assert_eq!(m.processed, seen.len() as u64);
    assert_eq!(m.dropped, dropped);
    assert_eq!(m.rejected, refused);
    assert_eq!((m.pending, m.in_flight), (0, 0));
    assert!(m.is_balanced(), "{m:?}");

    // One publisher at a time here, so sequences run in order and each producer's events
    // in its program order.
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    for p in 0..outcomes.len() as u64 {
        let mine: Vec<u64> = seen
            .iter()
            .filter(|(_, e)| e.producer == p)
            .map(|(_, e)| e.index)
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    }
}

/// Two producers and one publisher on a small ring, under `policy`.
///
/// `prefill` events go in before the threads start (unexplored, but it puts the race at the
/// ring's wrap-around cheaply); then each producer enqueues `per_producer` events.
fn two_producers_one_publisher(
    capacity: usize,
    prefill: u64,
    per_producer: u64,
    preemptions: usize,
    policy: OverrunPolicy,
) {
    model(preemptions, move || {
        let (store, seen) = store(capacity, policy);
        let total = prefill + 2 * per_producer;
        let prefilled = produce(&store, 0, prefill);
        let producers: Vec<_> = (1..=2)
            .map(|p| {
                let store = store.clone();
                thread::spawn(move || produce(&store, p, per_producer))
            })
            .collect();
        let publisher = {
            let store = store.clone();
            thread::spawn(move || {
                if policy == OverrunPolicy::Block {
                    // Blocked producers wait for this thread, so it must keep going until
                    // everything is through.
                    let mut dispatched = store.publish().dispatched;
                    while dispatched < total {
                        thread::yield_now();
                        dispatched += store.publish().dispatched;
                    }
                } else {
                    store.publish();
                }
            })
        };
        let mut outcomes = vec![prefilled];
        outcomes.extend(producers.into_iter().map(|h| h.join().unwrap()));
        publisher.join().unwrap();
        store.publish();
        let seen = seen.lock().unwrap().clone();
        if policy == OverrunPolicy::Block {
            assert_eq!(seen.len() as u64, total, "Block loses nothing");
        }
        if policy != OverrunPolicy::DropOldest {
            assert!(outcomes.iter().all(|o| o.dropped == 0));
        }
        check(&seen, &outcomes, store.metrics(), total);
    });
}

// Ring of 2: both producers overrun it on their own, at one preemption. Ring of 4: prefilled
// to one free slot, so the two producers race for it and overrun at the wrap-around, at two.

#[test]
fn block_ring_of_2() {
    two_producers_one_publisher(2, 0, 2, 1, OverrunPolicy::Block);
}

#[test]
fn block_ring_of_4() {
    two_producers_one_publisher(4, 3, 1, 2, OverrunPolicy::Block);
}

#[test]
fn drop_oldest_ring_of_2() {
    two_producers_one_publisher(2, 0, 2, 1, OverrunPolicy::DropOldest);
}

#[test]
fn drop_oldest_ring_of_4() {
    two_producers_one_publisher(4, 3, 1, 2, OverrunPolicy::DropOldest);
}

#[test]
fn return_error_ring_of_2() {
    two_producers_one_publisher(2, 0, 2, 1, OverrunPolicy::ReturnError);
}

#[test]
fn return_error_ring_of_4() {
    two_producers_one_publisher(4, 3, 1, 2, OverrunPolicy::ReturnError);
}

/// A producer evicting the oldest event under `DropOldest` while a publisher takes that same
/// event: exactly one of them gets it.
#[test]
fn drop_oldest_eviction_races_publisher_on_the_same_slot() {
    model(3, || {
        let (store, seen) = store(1, OverrunPolicy::DropOldest);
        let first = Ev::new(0, 0);
        let mut prefill = Outcome::default();
        prefill
            .accepted
            .push((store.enqueue(first).unwrap().sequence, first));
        let producer = {
            let store = store.clone();
            thread::spawn(move || produce(&store, 1, 1))
        };
        let publisher = {
            let store = store.clone();
            thread::spawn(move || store.publish().dispatched)
        };
        let outcome = producer.join().unwrap();
        let dispatched = publisher.join().unwrap();
        store.publish();
        let seen = seen.lock().unwrap().clone();
        // Either the publisher took the first event, or the producer evicted it; never both.
        let first_ran = seen.iter().any(|(_, e)| *e == first);
        assert_eq!(first_ran, outcome.dropped == 0, "{seen:?} {outcome:?}");
        assert!(dispatched <= 2);
        check(&seen, &[prefill, outcome], store.metrics(), 2);
    });
}

/// Two threads calling `publish` at once while a producer enqueues: each event runs once.
#[test]
fn concurrent_publishers_dispatch_each_event_once() {
    model(2, || {
        let (store, seen) = store(4, OverrunPolicy::ReturnError);
        let prefill = produce(&store, 0, 2);
        let producer = {
            let store = store.clone();
            thread::spawn(move || produce(&store, 1, 1))
        };
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                thread::spawn(move || store.publish().dispatched)
            })
            .collect();
        let outcome = producer.join().unwrap();
        let dispatched: u64 = publishers.into_iter().map(|h| h.join().unwrap()).sum();
        let last = store.publish().dispatched;
        assert_eq!(dispatched + last, 3);
        let mut seen = seen.lock().unwrap().clone();
        // Two publishers: the handler log interleaves their chunks, so order it by sequence
        // before the single-publisher order checks in `check`.
        seen.sort_by_key(|&(seq, _)| seq);
        assert_eq!(seen.len(), 3);
        check(&seen, &[prefill, outcome], store.metrics(), 3);
    });
}

/// `close` racing a producer blocked on a full ring (`Block`): the producer wakes and gets its
/// event back, and what was accepted stays for the next publish.
#[test]
fn close_wakes_a_blocked_producer() {
    model(3, || {
        let (store, seen) = store(1, OverrunPolicy::Block);
        let prefill = produce(&store, 0, 1);
        let producer = {
            let store = store.clone();
            thread::spawn(move || produce(&store, 1, 1))
        };
        // A zero timeout dispatches nothing, so no take makes room and wakes the producer:
        // only close's own wake-up can.
        let err = store.close(Duration::ZERO).unwrap_err();
        assert_eq!((err.pending, err.in_flight), (1, 0));
        let outcome = producer.join().unwrap();
        assert_eq!(store.publish().dispatched, 1);
        // The ring stays full until close has marked it closed, so the producer can never
        // get in.
        assert!(
            matches!(outcome.refused[..], [EnqueueError::Closed(_)]),
            "{outcome:?}"
        );
        let seen = seen.lock().unwrap().clone();
        check(&seen, &[prefill, outcome], store.metrics(), 2);
    });
}

/// `close` racing a producer and a publisher: once close returns `Ok`, every event accepted
/// before it has run (whoever ran it) and nothing is pending; the rest came back `Closed`.
#[test]
fn close_races_enqueue_and_publish() {
    model(2, || {
        let (store, seen) = store(1, OverrunPolicy::Block);
        let prefill = produce(&store, 0, 1);
        let producer = {
            let store = store.clone();
            thread::spawn(move || produce(&store, 1, 1))
        };
        let publisher = {
            let store = store.clone();
            thread::spawn(move || {
                store.publish();
            })
        };
        store.close(FOREVER).unwrap();
        assert_eq!(store.pending(), 0);
        let ran = seen.lock().unwrap().len() as u64;
        let published = store.metrics().published;
        assert_eq!(
            ran, published,
            "close returned before an accepted event ran"
        );
        let outcome = producer.join().unwrap();
        publisher.join().unwrap();
        assert!(
            outcome
                .refused
                .iter()
                .all(|e| matches!(e, EnqueueError::Closed(_)))
        );
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_by_key(|&(seq, _)| seq);
        check(&seen, &[prefill, outcome], store.metrics(), 2);
    });
}

/// Issue 8, defect 1: a `DropOldest` producer may evict only when the ring is full at the
/// moment of the eviction. Ring of 2 holding e0 and e1; `enqueue(A)`, `publish()` and
/// `enqueue(B)` race. If the publisher took both e0 and e1, the ring had room for A and B
/// afterwards, so nothing may be evicted; and every call's `Enqueued::dropped` is exact.
#[test]
fn drop_oldest_evicts_only_from_a_full_ring() {
    // One preemption is enough for the old bug: A's claim fails on the full ring, A is
    // preempted, the publisher empties the ring and B gets in, then A evicted B.
    model(1, || {
        let (store, seen) = store(2, OverrunPolicy::DropOldest);
        let prefill = produce(&store, 0, 2);
        let producers: Vec<_> = (1..=2)
            .map(|p| {
                let store = store.clone();
                thread::spawn(move || produce(&store, p, 1))
            })
            .collect();
        store.publish();
        let mut outcomes = vec![prefill];
        outcomes.extend(producers.into_iter().map(|h| h.join().unwrap()));
        store.publish();
        let seen = seen.lock().unwrap().clone();
        let prefill_ran = seen.iter().filter(|(_, e)| e.producer == 0).count();
        let dropped: u64 = outcomes.iter().map(|o| o.dropped).sum();
        if prefill_ran == 2 {
            assert_eq!(
                dropped, 0,
                "evicted from a ring with room: {seen:?} {outcomes:?}"
            );
        }
        // Each eviction made room for exactly one event: at most 2 of the 4 can be lost.
        assert!(dropped <= 2, "{outcomes:?}");
        check(&seen, &outcomes, store.metrics(), 4);
    });
}

/// Issue 8, defect 3: a batch becomes visible to publishers all at once. A producer enqueues
/// a batch of 3 while a publisher calls `publish` twice: each call dispatches none of the
/// batch or all of it, never a part.
#[test]
fn a_batch_is_never_half_visible() {
    model(2, || {
        let (store, seen) = store(4, OverrunPolicy::ReturnError);
        let producer = {
            let store = store.clone();
            thread::spawn(move || {
                let mut batch: Vec<Ev> = (0..3).map(|index| Ev::new(1, index)).collect();
                let first = store.enqueue_batch(&mut batch).unwrap().sequence;
                Outcome {
                    accepted: (0..3).map(|i| (first + i, Ev::new(1, i))).collect(),
                    ..Outcome::default()
                }
            })
        };
        let publisher = {
            let store = store.clone();
            thread::spawn(move || [store.publish().dispatched, store.publish().dispatched])
        };
        let outcome = producer.join().unwrap();
        for dispatched in publisher.join().unwrap() {
            assert!(
                dispatched == 0 || dispatched == 3,
                "half a batch: {dispatched}"
            );
        }
        store.publish();
        let seen = seen.lock().unwrap().clone();
        check(&seen, &[outcome], store.metrics(), 3);
    });
}

/// A producer's batch of `len` events, as an `Outcome` (one `accepted` entry per event).
fn produce_batch(store: &EventStore<Ev>, producer: u64, len: u64) -> Outcome {
    let mut batch: Vec<Ev> = (0..len).map(|index| Ev::new(producer, index)).collect();
    let mut out = Outcome::default();
    match store.enqueue_batch(&mut batch) {
        Ok(e) => {
            out.dropped = e.dropped;
            out.accepted = (0..len)
                .map(|i| (e.sequence + i, Ev::new(producer, i)))
                .collect();
        }
        Err(err) => {
            assert_eq!(
                batch.len(),
                len as usize,
                "{err:?}: the batch must come back whole"
            );
            out.refused = batch.into_iter().map(EnqueueError::Closed).collect();
        }
    }
    out
}

/// A batch of 2 that finds a full ring of 2 races a single enqueue and a publisher. Under
/// `DropOldest` the batch raises the gate and evicts; under `Block` it waits for room. Nothing
/// is lost under `Block`, the batch is contiguous, and the accounting is exact.
fn batch_races_a_single(policy: OverrunPolicy) {
    model(1, move || {
        let (store, seen) = store(2, policy);
        let prefill = produce(&store, 0, 2);
        let batcher = {
            let store = store.clone();
            thread::spawn(move || produce_batch(&store, 1, 2))
        };
        let single = {
            let store = store.clone();
            thread::spawn(move || produce(&store, 2, 1))
        };
        let total = 5;
        if policy == OverrunPolicy::Block {
            let mut dispatched = store.publish().dispatched;
            while dispatched < total {
                thread::yield_now();
                dispatched += store.publish().dispatched;
            }
        } else {
            store.publish();
        }
        let outcomes = vec![prefill, batcher.join().unwrap(), single.join().unwrap()];
        store.publish();
        let seen = seen.lock().unwrap().clone();
        if policy == OverrunPolicy::Block {
            assert_eq!(seen.len() as u64, total, "Block loses nothing");
        }
        // The batch is contiguous.
        let batch: Vec<u64> = outcomes[1].accepted.iter().map(|&(s, _)| s).collect();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1], batch[0] + 1);
        check(&seen, &outcomes, store.metrics(), total);
    });
}

#[test]
fn batch_races_a_single_under_block() {
    batch_races_a_single(OverrunPolicy::Block);
}

#[test]
fn gated_batch_races_a_single_under_drop_oldest() {
    batch_races_a_single(OverrunPolicy::DropOldest);
}

/// `close` racing a `Block` batch waiting for room (no publisher makes it): the batch comes
/// back `Closed`, whole, and nobody is left waiting.
#[test]
fn close_releases_a_waiting_batch() {
    model(2, || {
        let (store, seen) = store(2, OverrunPolicy::Block);
        let prefill = produce(&store, 0, 2);
        let batcher = {
            let store = store.clone();
            thread::spawn(move || produce_batch(&store, 1, 2))
        };
        store.close(FOREVER).unwrap();
        let outcome = batcher.join().unwrap();
        assert_eq!(outcome.refused.len(), 2, "{outcome:?}");
        let seen = seen.lock().unwrap().clone();
        check(&seen, &[prefill, outcome], store.metrics(), 4);
    });
}

/// `close` racing a `DropOldest` batch that holds the gate while it evicts: the batch either
/// got in before the close (and the close dispatches it) or comes back `Closed`, whole; the
/// events it evicted are counted dropped either way, and the gate never outlives the close.
#[test]
fn close_races_a_gated_batch() {
    model(2, || {
        let (store, seen) = store(2, OverrunPolicy::DropOldest);
        let prefill = produce(&store, 0, 2);
        let batcher = {
            let store = store.clone();
            thread::spawn(move || produce_batch(&store, 1, 2))
        };
        store.close(FOREVER).unwrap();
        let outcome = batcher.join().unwrap();
        store.publish();
        assert_eq!(store.pending(), 0);
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_by_key(|&(seq, _)| seq);
        let m = store.metrics();
        // Evictions the refused batch made are not in its outcome: count them from the metrics.
        let mut outcomes = vec![prefill, outcome];
        outcomes[1].dropped = m.dropped;
        check(&seen, &outcomes, m, 4);
    });
}

/// `close` racing an outside producer and a publisher whose handler enqueues a follow-up for
/// every first event: the follow-ups of every accepted event get in and run, even those
/// enqueued while `close` runs (a follow-up is refused only once the store is sealed, after
/// everything settled); the outside producer either got in before the close or is refused.
#[test]
fn close_lets_follow_ups_in_until_it_seals() {
    model(2, || {
        let seen: Seen = Arc::default();
        let mut dispatcher = Dispatcher::<Ev>::new();
        let log = seen.clone();
        dispatcher.on(0, move |ctx, ev| {
            log.lock().unwrap().push((ctx.sequence(), *ev));
            if ev.index == 0 {
                ctx.enqueue(Ev::new(ev.producer, 1))
                    .map_err(EnqueueError::kind)?;
            }
            Ok(())
        });
        let store = EventStore::new(dispatcher, 2, OverrunPolicy::ReturnError).unwrap();
        store.enqueue(Ev::new(0, 0)).unwrap();
        let producer = {
            let store = store.clone();
            thread::spawn(move || store.enqueue(Ev::new(1, 0)).is_ok())
        };
        let publisher = {
            let store = store.clone();
            thread::spawn(move || {
                store.publish();
            })
        };
        store.close(FOREVER).unwrap();
        let outside_accepted = producer.join().unwrap();
        publisher.join().unwrap();
        let m = store.metrics();
        let starts = 1 + u64::from(outside_accepted);
        assert_eq!(
            m.published,
            2 * starts,
            "each start and its follow-up: {m:?}"
        );
        assert_eq!((m.processed, m.failed, m.pending), (2 * starts, 0, 0));
        assert_eq!(m.rejected, u64::from(!outside_accepted));
        assert_eq!(m.rejected_closed, m.rejected, "{m:?}");
        let seen = seen.lock().unwrap();
        for p in 0..starts {
            assert!(
                seen.iter().any(|&(_, ev)| ev == Ev::new(p, 1)),
                "follow-up of {p}"
            );
        }
        assert!(store.enqueue(Ev::new(2, 0)).is_err());
    });
}

/// `close` racing a publisher that takes a follow-up whose handler follows up again (a chain
/// two deep): `close` must not judge the store quiet between that take and that handler, so no
/// follow-up is ever refused once `close` returns `Ok`. (A second reader found `close` reading
/// "nothing in flight" and "nothing pending" separately, with a take between them.)
#[test]
fn close_waits_for_a_chain_a_concurrent_publisher_runs() {
    model(2, || {
        let mut dispatcher = Dispatcher::<Ev>::new();
        dispatcher.on(0, move |ctx, ev| {
            if ev.index > 0 {
                ctx.enqueue(Ev::new(ev.producer, ev.index - 1))
                    .map_err(EnqueueError::kind)?;
            }
            Ok(())
        });
        let store = EventStore::new(dispatcher, 2, OverrunPolicy::ReturnError).unwrap();
        store.enqueue(Ev::new(0, 2)).unwrap();
        let publisher = {
            let store = store.clone();
            thread::spawn(move || {
                store.publish();
                store.publish();
            })
        };
        store.close(FOREVER).unwrap();
        publisher.join().unwrap();
        let m = store.metrics();
        assert_eq!((m.published, m.processed, m.failed), (3, 3, 0), "{m:?}");
        assert_eq!((m.rejected, m.pending, m.in_flight), (0, 0, 0), "{m:?}");
    });
}

/// `publish_wait` racing a producer: the consumer goes to sleep on an empty ring while the
/// producer claims and writes; it must be woken (no lost wake-up: under loom a lost one is a
/// deadlock, since loom's waits ignore timeouts) and run the event.
#[test]
fn publish_wait_is_woken_by_a_producer() {
    model(2, || {
        let (store, seen) = store(2, OverrunPolicy::ReturnError);
        let producer = {
            let store = store.clone();
            thread::spawn(move || store.enqueue(Ev::new(0, 0)).is_ok())
        };
        let mut dispatched = 0;
        while dispatched == 0 {
            dispatched += store.publish_wait(FOREVER).dispatched;
        }
        assert!(producer.join().unwrap());
        assert_eq!(dispatched, 1);
        assert_eq!(seen.lock().unwrap().len(), 1);
    });
}

/// A store with a single-producer lane, and its producer.
fn store_with_producer(
    capacity: usize,
    policy: OverrunPolicy,
) -> (EventStore<Ev>, Producer<Ev>, Seen) {
    let (dispatcher, seen) = logging_dispatcher();
    let (store, producer) = EventStore::builder(dispatcher)
        .capacity(capacity)
        .policy(policy)
        .build_with_producer()
        .unwrap();
    assert!(producer.is_single_producer_lane());
    (store, producer, seen)
}

/// `produce` through the single producer.
fn produce_single(producer: &mut Producer<Ev>, id: u64, count: u64) -> Outcome {
    let mut out = Outcome::default();
    for index in 0..count {
        let ev = Ev::new(id, index);
        match producer.enqueue(ev) {
            Ok(e) => {
                assert_ne!(e.sequence & PRODUCER_LANE, 0, "the producer lane's tag");
                out.accepted.push((e.sequence, ev));
                out.dropped += e.dropped;
            }
            Err(err) => {
                assert_eq!(*err.event(), ev, "the refused event must come back");
                out.refused.push(err);
            }
        }
    }
    out
}

/// The single producer's plain-store claim racing `close` (and a publisher): every event the
/// producer got in is dispatched by the close, every other one is refused as `Closed`; no
/// claim lands after the close looked. Fails if the producer's check of the closed mark and
/// its tail store are not ordered against `close` (drop the barrier pair and loom finds an
/// accepted event left pending).
fn single_producer_races_close(policy: OverrunPolicy) {
    model(2, move || {
        let (store, mut producer, seen) = store_with_producer(1, policy);
        let feed = thread::spawn(move || produce_single(&mut producer, 1, 2));
        let publisher = {
            let store = store.clone();
            thread::spawn(move || {
                store.publish();
            })
        };
        store.close(FOREVER).unwrap();
        assert_eq!(store.pending(), 0);
        let ran = seen.lock().unwrap().len() as u64;
        let mut outcome = feed.join().unwrap();
        publisher.join().unwrap();
        // Once every call has returned (an eviction racing the close is counted as dropped
        // when its enqueue returns), everything accepted ran by the close or was dropped.
        assert_eq!(
            ran + store.metrics().dropped,
            store.metrics().published,
            "close returned before an accepted event ran"
        );
        assert!(
            outcome
                .refused
                .iter()
                .all(|e| matches!(e, EnqueueError::Closed(_)))
        );
        // An enqueue that evicted and then found the lane closed reports `Closed`, so its
        // eviction shows only in the metrics (as the crate docs on `close` say).
        assert!(outcome.dropped <= store.metrics().dropped);
        outcome.dropped = store.metrics().dropped;
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_by_key(|&(seq, _)| seq);
        check(&seen, &[outcome], store.metrics(), 2);
    });
}

#[test]
fn single_producer_races_close_under_block() {
    single_producer_races_close(OverrunPolicy::Block);
}

#[test]
fn single_producer_races_close_under_drop_oldest() {
    single_producer_races_close(OverrunPolicy::DropOldest);
}

/// `publish_wait` racing the single producer, whose claim is a plain store: no lost wake-up
/// (a lost one is a deadlock under loom). Fails without the producer's light barrier before its
/// check of the sleepers. (Loom cannot tell the consumer's `membarrier` from the SeqCst fence
/// `Sleepers` already runs after registering: both are fences here.)
#[test]
fn publish_wait_is_woken_by_the_single_producer() {
    model(2, || {
        let (store, mut producer, seen) = store_with_producer(2, OverrunPolicy::ReturnError);
        let feed = thread::spawn(move || producer.enqueue(Ev::new(0, 0)).is_ok());
        let mut dispatched = 0;
        while dispatched == 0 {
            dispatched += store.publish_wait(FOREVER).dispatched;
        }
        assert!(feed.join().unwrap());
        assert_eq!(dispatched, 1);
        assert_eq!(seen.lock().unwrap().len(), 1);
    });
}

/// `Producer::room` racing a publisher that empties the lane: the producer enqueues only
/// while `room` says there is some (as the bridge's receiver does), so under `DropOldest` it
/// never evicts, and every event it put in runs. `room` may understate what a racing publisher
/// freed, never overstate it.
#[test]
fn room_is_never_more_than_the_lane_takes() {
    model(2, || {
        let (store, mut producer, seen) = store_with_producer(2, OverrunPolicy::DropOldest);
        let feed = thread::spawn(move || {
            let mut put = 0;
            let mut tries = 0;
            while put < 3 && tries < 6 {
                tries += 1;
                if producer.room() == 0 {
                    thread::yield_now();
                    continue;
                }
                let enqueued = producer.enqueue(Ev::new(1, put)).unwrap();
                assert_eq!(enqueued.dropped, 0, "room said there was room");
                put += 1;
            }
            put
        });
        let publisher = {
            let store = store.clone();
            thread::spawn(move || {
                store.publish();
            })
        };
        let put = feed.join().unwrap();
        publisher.join().unwrap();
        store.publish();
        assert_eq!(store.metrics().dropped, 0);
        assert_eq!(seen.lock().unwrap().len() as u64, put);
    });
}

/// Both lanes at once: the single producer and an outside producer on the shared ring, one
/// publisher, a ring of 1 each under `Block`. Everything gets through, each lane in order.
#[test]
fn both_lanes_drain_under_block() {
    model(2, || {
        let (store, mut producer, seen) = store_with_producer(1, OverrunPolicy::Block);
        let feed = thread::spawn(move || produce_single(&mut producer, 1, 2));
        let other = {
            let store = store.clone();
            thread::spawn(move || produce(&store, 2, 1))
        };
        let mut dispatched = 0;
        while dispatched < 3 {
            thread::yield_now();
            dispatched += store.publish().dispatched;
        }
        let outcomes = [feed.join().unwrap(), other.join().unwrap()];
        let mut seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3);
        // One publisher: each lane ran in its order (checked on the log as run).
        let lane = |tagged: bool| -> Vec<u64> {
            let seqs = seen.iter().map(|&(seq, _)| seq);
            seqs.filter(|seq| (seq & PRODUCER_LANE != 0) == tagged)
                .collect()
        };
        for tagged in [false, true] {
            assert!(lane(tagged).windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        }
        seen.sort_by_key(|&(seq, _)| seq);
        check(&seen, &outcomes, store.metrics(), 3);
    });
}

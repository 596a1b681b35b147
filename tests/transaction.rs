//! Transactions across threads: atomic commits never interleave, refusals hand everything back,
//! rollback touches nothing, handler failures are reported with their index.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{
    CommitError, Dispatcher, ErrorKind, Event, EventStore, HandlerFailure, Metrics, OverrunPolicy,
};

mod support {
    pub mod deadline;
}
use support::deadline::deadline;

/// Every test here fails the run if it is still going after this (a hang, not a slow machine).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// An event of transaction `tx` of `producer`: the `idx`-th of `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TxPart {
    producer: u32,
    tx: u32,
    idx: u32,
    len: u32,
}

impl Event for TxPart {
    type Projection = u8;
    fn projection(&self) -> u8 {
        0
    }
}

const COMMITTERS: u32 = 4;
const TXS: u32 = if cfg!(miri) { 10 } else { 2_000 };

/// A transaction's events: `1 + (3 tx + producer) % 7` of them, so that commits straddle the
/// ring's wrap.
fn events(producer: u32, tx: u32) -> impl Iterator<Item = TxPart> {
    let len = 1 + (tx * 3 + producer) % 7;
    (0..len).map(move |idx| TxPart {
        producer,
        tx,
        idx,
        len,
    })
}

/// Checks that `seen` (in dispatch order) is whole transactions, each contiguous and in order,
/// each producer's transactions in order, and all of them there.
fn assert_whole_transactions(seen: &[TxPart]) {
    let mut next_tx = vec![0; COMMITTERS as usize];
    let mut i = 0;
    while i < seen.len() {
        let head = seen[i];
        assert_eq!(head.idx, 0, "event {i} starts no transaction: {head:?}");
        assert_eq!(head.tx, next_tx[head.producer as usize], "producer order");
        next_tx[head.producer as usize] += 1;
        let expected: Vec<TxPart> = events(head.producer, head.tx).collect();
        let got = &seen[i..(i + head.len as usize).min(seen.len())];
        assert_eq!(got, expected, "transaction interleaved at event {i}");
        i += head.len as usize;
    }
    assert_eq!(next_tx, vec![TXS; COMMITTERS as usize]);
}

#[test]
fn deferred_commits_from_many_threads_never_interleave() {
    let _deadline = deadline(
        "deferred_commits_from_many_threads_never_interleave",
        DEADLINE,
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut d = Dispatcher::<TxPart>::new();
    let log = seen.clone();
    d.on(0, move |_, ev| {
        log.lock().unwrap().push(*ev);
        Ok(())
    });
    // Small ring under Block: committers wait on each other and on the publisher constantly.
    let store = EventStore::new(d, 16, OverrunPolicy::Block).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (store, done) = (store.clone(), done.clone());
        thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                store.publish();
            }
        })
    };
    let committers: Vec<_> = (0..COMMITTERS)
        .map(|p| {
            let store = store.clone();
            thread::spawn(move || {
                for t in 0..TXS {
                    let mut tx = store.begin_transaction();
                    tx.extend(events(p, t));
                    tx.commit_deferred().unwrap();
                }
            })
        })
        .collect();
    for c in committers {
        c.join().unwrap();
    }
    done.store(true, Ordering::Release);
    publisher.join().unwrap();
    store.publish();
    assert_whole_transactions(&seen.lock().unwrap());
    let m = store.metrics();
    assert_eq!(m.published, m.processed);
    assert!(m.is_balanced());
}

#[test]
fn dispatching_commits_from_many_threads_take_consecutive_sequences() {
    let _deadline = deadline(
        "dispatching_commits_from_many_threads_take_consecutive_sequences",
        DEADLINE,
    );
    // Committers dispatch on their own threads, concurrently, so dispatch order means little;
    // the sequence numbers are the store's total order.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut d = Dispatcher::<TxPart>::new();
    let log = seen.clone();
    d.on(0, move |ctx, ev| {
        log.lock().unwrap().push((ctx.sequence(), *ev));
        Ok(())
    });
    let store = EventStore::new(d, 64, OverrunPolicy::Block).unwrap();
    let committers: Vec<_> = (0..COMMITTERS)
        .map(|p| {
            let store = store.clone();
            thread::spawn(move || {
                let mut elsewhere = 0;
                for t in 0..TXS {
                    let mut tx = store.begin_transaction();
                    tx.extend(events(p, t));
                    let report = tx.commit().unwrap();
                    assert_eq!(report.len, events(p, t).count() as u64);
                    assert!(report.publish.dispatched >= report.len - report.elsewhere);
                    elsewhere += report.elsewhere;
                }
                elsewhere
            })
        })
        .collect();
    let elsewhere: u64 = committers.into_iter().map(|c| c.join().unwrap()).sum();
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    seen.sort_by_key(|&(seq, _)| seq);
    assert!(seen.iter().enumerate().all(|(i, &(s, _))| s == i as u64));
    let ordered: Vec<TxPart> = seen.into_iter().map(|(_, ev)| ev).collect();
    assert_whole_transactions(&ordered);
    let m = store.metrics();
    assert_eq!((m.processed, m.pending), (m.published, 0));
    assert!(m.is_balanced());
    println!("events run by another committer's dispatch: {elsewhere}");
}

#[test]
fn commit_larger_than_the_ring_is_refused_under_every_policy() {
    let _deadline = deadline(
        "commit_larger_than_the_ring_is_refused_under_every_policy",
        DEADLINE,
    );
    for policy in [
        OverrunPolicy::DropOldest,
        OverrunPolicy::Block,
        OverrunPolicy::ReturnError,
    ] {
        let store = EventStore::new(Dispatcher::<TxPart>::new(), 4, policy).unwrap();
        let mut tx = store.begin_transaction();
        tx.extend(events(0, 5).chain(events(1, 5)));
        let len = tx.len();
        assert!(len > 4);
        let started = Instant::now();
        let err = tx.commit().unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{policy:?} hung"
        );
        assert!(
            matches!(err, CommitError::TooLarge { capacity: 4, .. }),
            "{policy:?}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("transaction of {len} events exceeds the ring capacity of 4")
        );
        let back = err.into_transaction().unwrap().into_events();
        assert_eq!(back, events(0, 5).chain(events(1, 5)).collect::<Vec<_>>());
        let m = store.metrics();
        assert_eq!((m.published, m.rejected, m.pending), (0, len as u64, 0));
    }
}

/// Counts its drops, to show rollback drops each event exactly once.
struct Counted(Arc<AtomicUsize>);

impl Event for Counted {
    type Projection = u8;
    fn projection(&self) -> u8 {
        0
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn rollback_and_drop_leave_the_ring_and_the_metrics_untouched() {
    let _deadline = deadline(
        "rollback_and_drop_leave_the_ring_and_the_metrics_untouched",
        DEADLINE,
    );
    let drops = Arc::new(AtomicUsize::new(0));
    let mut d = Dispatcher::<Counted>::new();
    d.on(0, |_, _| Ok(()));
    let store = EventStore::new(d, 8, OverrunPolicy::ReturnError).unwrap();
    store.enqueue(Counted(drops.clone())).unwrap();
    let before: Metrics = store.metrics();

    let mut tx = store.begin_transaction();
    for _ in 0..3 {
        tx.push(Counted(drops.clone()));
    }
    tx.rollback();
    assert_eq!(drops.load(Ordering::Relaxed), 3);

    let mut tx = store.begin_transaction();
    tx.push(Counted(drops.clone())).push(Counted(drops.clone()));
    drop(tx);
    assert_eq!(drops.load(Ordering::Relaxed), 5);

    assert_eq!(store.metrics(), before);
    assert_eq!(store.pending(), 1);
    assert_eq!(store.publish().processed, 1);
    assert_eq!(drops.load(Ordering::Relaxed), 6);
}

#[derive(Debug)]
struct Payment(i64);

impl Event for Payment {
    type Projection = &'static str;
    fn projection(&self) -> &'static str {
        "payment"
    }
}

#[test]
fn failing_handler_mid_commit_is_reported_with_its_index_after_everything_ran() {
    let _deadline = deadline(
        "failing_handler_mid_commit_is_reported_with_its_index_after_everything_ran",
        DEADLINE,
    );
    let ran = Arc::new(Mutex::new(Vec::new()));
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let mut d = Dispatcher::<Payment, String>::new();
    let log = ran.clone();
    d.on("payment", move |_, p| {
        log.lock().unwrap().push(p.0);
        Ok(())
    })
    .on("payment", |_, p| match p.0 {
        i64::MIN..=-100 => panic!("overdraft {}", p.0),
        -99..=-1 => Err(format!("negative {}", p.0)),
        _ => Ok(()),
    });
    let hook = hooked.clone();
    let store = EventStore::builder(d)
        .capacity(16)
        .policy(OverrunPolicy::ReturnError)
        .on_error(move |r| {
            let what = match r.kind {
                ErrorKind::Handler(e) => e.clone(),
                ErrorKind::Panic(m) => format!("panic: {m}"),
                _ => "other".to_string(),
            };
            hook.lock().unwrap().push((r.sequence.unwrap(), what));
        })
        .build()
        .unwrap();
    // An older pending event that fails: dispatched first, but not the transaction's failure.
    store.enqueue(Payment(-1)).unwrap();

    let mut tx = store.begin_transaction();
    for amount in [10, 20, -5, 30, -500] {
        tx.push(Payment(amount));
    }
    let err = tx.commit().unwrap_err();
    match &err {
        CommitError::Handler {
            index,
            sequence,
            error,
            failed,
        } => {
            assert_eq!((*index, *sequence, *failed), (2, 3, 2));
            assert_eq!(*error, HandlerFailure::Error("negative -5".to_string()));
        }
        other => panic!("expected a handler failure, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "event 2 of the transaction (sequence 3) failed: negative -5 (2 of its events failed)"
    );
    assert!(err.into_transaction().is_none(), "the events are committed");
    // Everything ran, in order, the older event first; every failure reached the hook.
    assert_eq!(*ran.lock().unwrap(), [-1, 10, 20, -5, 30, -500]);
    assert_eq!(
        *hooked.lock().unwrap(),
        [
            (0, "negative -1".to_string()),
            (3, "negative -5".to_string()),
            (5, "panic: overdraft -500".to_string()),
        ]
    );
    let m = store.metrics();
    assert_eq!((m.processed, m.failed, m.panics, m.pending), (3, 3, 1, 0));
    assert!(m.is_balanced());

    // A panic is reported the same way, with its message.
    let mut tx = store.begin_transaction();
    tx.push(Payment(1)).push(Payment(-100));
    match tx.commit() {
        Err(CommitError::Handler { index, error, .. }) => {
            assert_eq!(index, 1);
            assert_eq!(error, HandlerFailure::Panic("overdraft -100".to_string()));
        }
        other => panic!("expected a panic report, got {other:?}"),
    }
}

#[test]
fn commit_stops_after_the_transaction() {
    let _deadline = deadline("commit_stops_after_the_transaction", DEADLINE);
    // A handler of the transaction's last event enqueues another: it waits for the next publish.
    let store_slot: Arc<Mutex<Option<EventStore<Payment>>>> = Arc::new(Mutex::new(None));
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut d = Dispatcher::<Payment>::new();
    let (slot, log) = (store_slot.clone(), ran.clone());
    d.on("payment", move |_, p| {
        log.lock().unwrap().push(p.0);
        if p.0 == 3 {
            let store = slot.lock().unwrap().clone().unwrap();
            store.enqueue(Payment(4)).unwrap();
        }
        Ok(())
    });
    let store = EventStore::new(d, 8, OverrunPolicy::ReturnError).unwrap();
    *store_slot.lock().unwrap() = Some(store.clone());
    store.enqueue(Payment(1)).unwrap();
    let mut tx = store.begin_transaction();
    tx.push(Payment(2)).push(Payment(3));
    let report = tx.commit().unwrap();
    assert_eq!((report.sequence, report.len, report.elsewhere), (1, 2, 0));
    assert_eq!(report.publish.dispatched, 3);
    assert_eq!(*ran.lock().unwrap(), [1, 2, 3]);
    assert_eq!(store.pending(), 1);
    store_slot.lock().unwrap().take();
}

#[test]
fn refusals_hand_the_transaction_back_under_each_policy() {
    let _deadline = deadline(
        "refusals_hand_the_transaction_back_under_each_policy",
        DEADLINE,
    );
    // ReturnError: no room for all of it, nothing goes in.
    let store =
        EventStore::new(Dispatcher::<TxPart>::new(), 4, OverrunPolicy::ReturnError).unwrap();
    store.enqueue(events(9, 0).next().unwrap()).unwrap();
    let mut tx = store.begin_transaction();
    tx.extend(events(0, 1)); // 4 events, 3 free slots
    let err = tx.commit_deferred().unwrap_err();
    assert!(matches!(err, CommitError::Full(_)));
    let tx = err.into_transaction().unwrap();
    assert_eq!(tx.events(), events(0, 1).collect::<Vec<_>>());
    assert_eq!(store.pending(), 1);
    store.publish();
    assert_eq!(tx.commit_deferred().unwrap().sequence, 1, "retry succeeds");

    // DropOldest: old pending events make room, counted.
    let store = EventStore::new(Dispatcher::<TxPart>::new(), 4, OverrunPolicy::DropOldest).unwrap();
    store.enqueue_batch(&mut events(2, 0).collect()).unwrap(); // 3 events
    let mut tx = store.begin_transaction();
    tx.extend(events(1, 0)); // 2 events, 1 free slot
    let report = tx.commit().unwrap();
    assert_eq!((report.sequence, report.dropped), (3, 1));
    assert_eq!(report.publish.dispatched, 4);
    assert_eq!(store.metrics().dropped, 1);

    // Block: waits for room, within the deadline or until a publisher makes it.
    let store = EventStore::new(Dispatcher::<TxPart>::new(), 4, OverrunPolicy::Block).unwrap();
    store.enqueue_batch(&mut events(2, 0).collect()).unwrap();
    let mut tx = store.begin_transaction();
    tx.extend(events(1, 0));
    let err = tx.commit_timeout(Duration::from_millis(30)).unwrap_err();
    assert!(matches!(err, CommitError::Timeout(_)), "{err:?}");
    let tx = err.into_transaction().unwrap();
    let publisher = {
        let store = store.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            store.publish()
        })
    };
    let report = tx.commit().unwrap();
    assert_eq!((report.sequence, report.len), (3, 2));
    assert_eq!(publisher.join().unwrap().dispatched, 3);

    // Closed.
    store.close(Duration::from_secs(1)).unwrap();
    let mut tx = store.begin_transaction();
    tx.extend(events(2, 2));
    assert!(matches!(tx.commit(), Err(CommitError::Closed(_))));
}

#[test]
fn a_transaction_built_on_one_thread_commits_on_another() {
    let _deadline = deadline(
        "a_transaction_built_on_one_thread_commits_on_another",
        DEADLINE,
    );
    let mut d = Dispatcher::<TxPart>::new();
    d.on(0, |_, _| Ok(()));
    let store = EventStore::new(d, 8, OverrunPolicy::ReturnError).unwrap();
    let mut tx = store.begin_transaction();
    tx.extend(events(0, 4));
    let report = thread::spawn(move || tx.commit().unwrap()).join().unwrap();
    assert_eq!(report.publish.processed, report.len);
}

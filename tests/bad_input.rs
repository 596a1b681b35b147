//! Bad input and the `Drop` accounting: every path an event can take ends in exactly one drop.
//!
//! `tests/store.rs` already covers capacities 0, 3, 2^63 and an unallocatable ring, and a
//! zero-timeout `close`; this file covers the edges around them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use ringbus::{
    BatchError, BuildError, DispatchMode, Dispatcher, EnqueueError, Event, EventStore,
    OverrunPolicy,
};

mod support {
    pub mod deadline;
}
use support::deadline::deadline;

/// Every test here fails the run if it is still going after this (a hang, not a slow machine).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// An event that counts its own drops (one counter per test, so tests can run in parallel).
#[derive(Debug)]
struct Counted {
    id: u64,
    drops: Arc<AtomicU64>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl Event for Counted {
    type Projection = u8;
    fn projection(&self) -> u8 {
        0
    }
}

struct Maker {
    drops: Arc<AtomicU64>,
    next: u64,
}

impl Maker {
    fn new() -> Self {
        Self {
            drops: Arc::default(),
            next: 0,
        }
    }
    fn make(&mut self) -> Counted {
        self.next += 1;
        Counted {
            id: self.next,
            drops: self.drops.clone(),
        }
    }
    fn drops(&self) -> u64 {
        self.drops.load(Ordering::SeqCst)
    }
}

/// A store whose handler counts runs.
fn counting(capacity: usize, policy: OverrunPolicy) -> (EventStore<Counted>, Arc<AtomicU64>) {
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let mut d = Dispatcher::<Counted>::new();
    d.on(0, move |_, _| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    (EventStore::new(d, capacity, policy).unwrap(), runs)
}

#[test]
fn capacity_edges_are_typed_errors() {
    let _deadline = deadline("capacity_edges_are_typed_errors", DEADLINE);
    let build = |cap| EventStore::new(Dispatcher::<Counted>::new(), cap, OverrunPolicy::Block);
    assert_eq!(
        build((1 << 32) + 1).unwrap_err(),
        BuildError::NotPowerOfTwo((1 << 32) + 1)
    );
    assert_eq!(
        build(1 << 33).unwrap_err(),
        BuildError::TooLarge {
            capacity: 1 << 33,
            max: 1 << 32
        }
    );
    assert_eq!(
        build(usize::MAX).unwrap_err(),
        BuildError::NotPowerOfTwo(usize::MAX)
    );
}

#[test]
fn unallocatable_ring_reports_saturated_bytes() {
    let _deadline = deadline("unallocatable_ring_reports_saturated_bytes", DEADLINE);
    #[allow(dead_code)] // only its size matters
    struct Huge([u8; 1 << 40]);
    impl Event for Huge {
        type Projection = u8;
        fn projection(&self) -> u8 {
            0
        }
    }
    let err =
        EventStore::new(Dispatcher::<Huge>::new(), 1 << 32, OverrunPolicy::Block).unwrap_err();
    assert_eq!(
        err,
        BuildError::AllocationFailed {
            capacity: 1 << 32,
            bytes: usize::MAX
        }
    );
}

#[test]
fn enqueue_after_close_hands_the_event_back() {
    let _deadline = deadline("enqueue_after_close_hands_the_event_back", DEADLINE);
    for policy in [
        OverrunPolicy::Block,
        OverrunPolicy::DropOldest,
        OverrunPolicy::ReturnError,
    ] {
        let mut m = Maker::new();
        let (store, runs) = counting(4, policy);
        store.close(Duration::from_secs(1)).unwrap();
        let first = store.enqueue(m.make()).unwrap_err();
        assert!(matches!(first, EnqueueError::Closed(Counted { id: 1, .. })));
        let second = store
            .enqueue_timeout(m.make(), Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(
            second,
            EnqueueError::Closed(Counted { id: 2, .. })
        ));
        let mut batch = vec![m.make(), m.make()];
        assert_eq!(store.enqueue_batch(&mut batch), Err(BatchError::Closed));
        assert_eq!(batch.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(m.drops(), 0, "nothing was dropped inside the store");
        drop((first, second, batch));
        assert_eq!(m.drops(), 4);
        let metrics = store.metrics();
        assert_eq!((metrics.published, metrics.rejected), (0, 4));
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn zero_timeout_drain_and_close_fail_and_lose_nothing_in_flight() {
    let _deadline = deadline(
        "zero_timeout_drain_and_close_fail_and_lose_nothing_in_flight",
        DEADLINE,
    );
    let gate = Arc::new(Barrier::new(2));
    let runs = Arc::new(AtomicU64::new(0));
    let (g, r) = (gate.clone(), runs.clone());
    let mut d = Dispatcher::<Counted>::new();
    d.on(0, move |_, ev| {
        if ev.id == 1 {
            g.wait();
        }
        r.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let store = EventStore::builder(d)
        .capacity(8)
        .mode(DispatchMode::Async)
        .build()
        .unwrap();
    let mut m = Maker::new();
    store.enqueue(m.make()).unwrap();
    assert_eq!(store.publish().dispatched, 1);
    // The handler is parked on the gate: one event in flight.
    let err = store.drain(Duration::ZERO).unwrap_err();
    assert_eq!((err.pending, err.in_flight), (0, 1));
    store.enqueue(m.make()).unwrap();
    let err = store.close(Duration::ZERO).unwrap_err();
    assert_eq!(err.pending + err.in_flight, 2, "{err:?}");
    gate.wait();
    store.close(Duration::from_secs(10)).unwrap();
    store.drain(Duration::from_secs(10)).unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let metrics = store.metrics();
    assert_eq!(
        (metrics.processed, metrics.pending, metrics.in_flight),
        (2, 0, 0)
    );
    assert_eq!(m.drops(), 2);
}

#[test]
fn processed_events_drop_once() {
    let _deadline = deadline("processed_events_drop_once", DEADLINE);
    let mut m = Maker::new();
    let (store, runs) = counting(4, OverrunPolicy::ReturnError);
    for _ in 0..3 {
        store.enqueue(m.make()).unwrap();
    }
    assert_eq!(store.publish().processed, 3);
    assert_eq!((runs.load(Ordering::SeqCst), m.drops()), (3, 3));
    drop(store);
    assert_eq!(m.drops(), 3);
}

#[test]
fn evicted_events_drop_once() {
    let _deadline = deadline("evicted_events_drop_once", DEADLINE);
    let mut m = Maker::new();
    let (store, runs) = counting(2, OverrunPolicy::DropOldest);
    for _ in 0..5 {
        store.enqueue(m.make()).unwrap();
    }
    assert_eq!(m.drops(), 3, "the three oldest were evicted and dropped");
    let mut batch = vec![m.make(), m.make()];
    assert_eq!(store.enqueue_batch(&mut batch).unwrap().dropped, 2);
    assert_eq!(m.drops(), 5);
    assert_eq!(store.publish().processed, 2);
    assert_eq!((runs.load(Ordering::SeqCst), m.drops()), (2, 7));
    assert_eq!(store.metrics().dropped, 5);
}

#[test]
fn refused_batches_stay_with_the_caller() {
    let _deadline = deadline("refused_batches_stay_with_the_caller", DEADLINE);
    let mut m = Maker::new();
    let (store, _) = counting(2, OverrunPolicy::ReturnError);
    store.enqueue(m.make()).unwrap();
    let mut batch = vec![m.make(), m.make()];
    assert_eq!(
        store.enqueue_batch(&mut batch),
        Err(BatchError::Full { len: 2 })
    );
    let mut too_big = vec![m.make(), m.make(), m.make()];
    assert!(matches!(
        store.enqueue_batch(&mut too_big),
        Err(BatchError::TooLarge {
            len: 3,
            capacity: 2
        })
    ));
    assert_eq!(m.drops(), 0);
    assert_eq!(batch.len() + too_big.len(), 5);
    drop((batch, too_big));
    assert_eq!(m.drops(), 5);

    let (blocking, _) = counting(1, OverrunPolicy::Block);
    blocking.enqueue(m.make()).unwrap();
    let mut batch = vec![m.make()];
    assert_eq!(
        blocking.enqueue_batch_timeout(&mut batch, Duration::ZERO),
        Err(BatchError::Timeout { len: 1 })
    );
    assert_eq!(batch.len(), 1);
    drop(batch);
    assert_eq!(m.drops(), 6);
}

#[test]
fn handed_back_events_drop_once() {
    let _deadline = deadline("handed_back_events_drop_once", DEADLINE);
    let mut m = Maker::new();
    let (full, _) = counting(1, OverrunPolicy::ReturnError);
    full.enqueue(m.make()).unwrap();
    let e = full.enqueue(m.make()).unwrap_err();
    assert!(matches!(e, EnqueueError::Full(_)));
    let (blocking, _) = counting(1, OverrunPolicy::Block);
    blocking.enqueue(m.make()).unwrap();
    let t = blocking
        .enqueue_timeout(m.make(), Duration::ZERO)
        .unwrap_err();
    assert!(matches!(t, EnqueueError::Timeout(_)));
    assert_eq!(m.drops(), 0);
    drop((e, t));
    assert_eq!(m.drops(), 2);
    drop((full, blocking));
    assert_eq!(m.drops(), 4, "the pending events drop with their stores");
}

#[test]
fn pending_events_drop_once_with_the_store() {
    let _deadline = deadline("pending_events_drop_once_with_the_store", DEADLINE);
    let mut m = Maker::new();
    let (store, runs) = counting(8, OverrunPolicy::Block);
    for _ in 0..6 {
        store.enqueue(m.make()).unwrap();
    }
    let handle = store.clone();
    drop(store);
    assert_eq!(m.drops(), 0, "a handle is still alive");
    drop(handle);
    assert_eq!((m.drops(), runs.load(Ordering::SeqCst)), (6, 0));
}

#[test]
fn async_events_drop_once_after_their_handlers() {
    let _deadline = deadline("async_events_drop_once_after_their_handlers", DEADLINE);
    let mut m = Maker::new();
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let mut d = Dispatcher::<Counted>::new();
    d.on(0, move |_, _| {
        r.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let store = EventStore::builder(d)
        .capacity(128)
        .mode(DispatchMode::Async)
        .build()
        .unwrap();
    for _ in 0..100 {
        store.enqueue(m.make()).unwrap();
    }
    store.publish();
    // Dropping our handle while batches may still be in flight: they hold their own.
    drop(store);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.drops() < 100 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!((runs.load(Ordering::SeqCst), m.drops()), (100, 100));
}

//! Zero heap allocations per event in steady state: enqueue (one by one and as a batch of a
//! reused `Vec`) plus a synchronous publish must not touch the allocator once warmed up.
//!
//! A counting global allocator counts only on the thread that armed it, so the test harness's
//! own threads (output capture, other tests) cannot make a test fail or pass by accident.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ringbus::{Dispatcher, Event, EventStore, LocalDispatcher, OverrunPolicy, Settle};

mod support {
    pub mod deadline;
}
use support::deadline::deadline;

/// Every test here fails the run if it is still going after this (a hang, not a slow machine).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

struct Counting;

thread_local! {
    // `const` initialisers with no destructor: reading them never allocates.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only thread-local `Cell`s and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: as above; `ptr` came from this allocator, which is `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (and reallocations) made by this thread while running `f`.
fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|n| n.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    ALLOCS.with(Cell::get)
}

/// The benchmarks' payload and handler: a key over 8 projections, a relaxed add per event.
#[derive(Debug, Clone, Copy)]
struct BenchEv {
    key: u8,
    a: u64,
    b: u64,
    c: u64,
}

impl Event for BenchEv {
    type Projection = u8;
    fn projection(&self) -> u8 {
        self.key
    }
}

fn event(i: u64) -> BenchEv {
    BenchEv {
        key: (i % 8) as u8,
        a: 1,
        b: i,
        c: i,
    }
}

const TICKS: u64 = 100;
const TICK: u64 = 1024;

fn counting_store(counter: &Arc<AtomicU64>) -> EventStore<BenchEv> {
    let mut dispatcher = Dispatcher::<BenchEv>::new();
    for key in 0..8 {
        let counter = Arc::clone(counter);
        dispatcher.on(key, move |_, ev| {
            // The payload arrives whole (and the check's formatting is only built on failure).
            assert_eq!(ev.b, ev.c);
            counter.fetch_add(ev.a, Ordering::Relaxed);
            Ok(())
        });
    }
    EventStore::new(dispatcher, 1 << 16, OverrunPolicy::DropOldest).unwrap()
}

#[test]
fn enqueue_and_sync_publish_allocate_nothing_per_event() {
    let _deadline = deadline(
        "enqueue_and_sync_publish_allocate_nothing_per_event",
        DEADLINE,
    );
    let counter = Arc::new(AtomicU64::new(0));
    let store = counting_store(&counter);
    let mut next = 0;
    let mut tick = |store: &EventStore<BenchEv>| {
        for i in next..next + TICK {
            store.enqueue(event(i)).unwrap();
        }
        next += TICK;
        assert_eq!(store.publish().processed, TICK);
    };
    // Warm-up: the first publish allocates the publisher's buffer, which is then recycled.
    for _ in 0..3 {
        tick(&store);
    }
    let allocs = allocations_in(|| {
        for _ in 0..TICKS {
            tick(&store);
        }
    });
    assert_eq!(
        allocs, 0,
        "{TICKS} ticks x {TICK} events allocated {allocs} times"
    );
    assert_eq!(counter.load(Ordering::Relaxed), (TICKS + 3) * TICK);
}

#[test]
fn enqueue_batch_of_a_reused_vec_allocates_nothing_per_event() {
    let _deadline = deadline(
        "enqueue_batch_of_a_reused_vec_allocates_nothing_per_event",
        DEADLINE,
    );
    let counter = Arc::new(AtomicU64::new(0));
    let store = counting_store(&counter);
    let mut batch = Vec::with_capacity(TICK as usize);
    let mut next = 0;
    let mut tick = |store: &EventStore<BenchEv>, batch: &mut Vec<BenchEv>| {
        batch.extend((next..next + TICK).map(event));
        next += TICK;
        store.enqueue_batch(batch).unwrap();
        assert!(batch.is_empty() && batch.capacity() >= TICK as usize);
        assert_eq!(store.publish().processed, TICK);
    };
    for _ in 0..3 {
        tick(&store, &mut batch);
    }
    let allocs = allocations_in(|| {
        for _ in 0..TICKS {
            tick(&store, &mut batch);
        }
    });
    assert_eq!(
        allocs, 0,
        "{TICKS} batches of {TICK} events allocated {allocs} times"
    );
    assert_eq!(counter.load(Ordering::Relaxed), (TICKS + 3) * TICK);
}

/// The `&mut state` path: local handlers, follow-ups through the context, settled ticks.
#[test]
fn publish_with_local_state_and_settle_allocate_nothing_per_event() {
    let _deadline = deadline(
        "publish_with_local_state_and_settle_allocate_nothing_per_event",
        DEADLINE,
    );
    let store = EventStore::new(
        Dispatcher::<BenchEv>::new(),
        1 << 16,
        OverrunPolicy::DropOldest,
    )
    .unwrap();
    let mut systems = LocalDispatcher::<BenchEv, [u64; 8]>::new();
    for key in 0..8u8 {
        systems.on(key, move |sums, ctx, ev| {
            assert_eq!(ev.b, ev.c);
            sums[usize::from(key)] += ev.a;
            // Every 64th event asks for one follow-up (a == 0: no further one).
            if ev.a == 1 && ev.b % 64 == 0 {
                ctx.enqueue(BenchEv { a: 0, ..*ev })
                    .map_err(ringbus::EnqueueError::kind)?;
            }
            Ok(())
        });
    }
    let mut sums = [0u64; 8];
    let mut next = 0;
    let mut tick = |store: &EventStore<BenchEv>, sums: &mut [u64; 8]| {
        for i in next..next + TICK {
            store.enqueue(event(i)).unwrap();
        }
        next += TICK;
        let report = store.settle_with(&mut systems, sums, Settle::rounds(4));
        assert!(report.settled);
        assert_eq!(report.publish.processed, TICK + TICK / 64);
    };
    for _ in 0..3 {
        tick(&store, &mut sums);
    }
    let allocs = allocations_in(|| {
        for _ in 0..TICKS {
            tick(&store, &mut sums);
        }
    });
    assert_eq!(
        allocs, 0,
        "{TICKS} settled ticks x {TICK} events allocated {allocs} times"
    );
    assert_eq!(sums.iter().sum::<u64>(), (TICKS + 3) * TICK);
}

/// Uneven bursts, tiny rings, parallel mode: a publisher's buffer that `Vec` growth rounded past
/// the ring's capacity is still reused (a second reader found it freed, one allocation per
/// publish).
#[test]
fn uneven_bursts_and_tiny_rings_reuse_the_publishers_buffer() {
    let _deadline = deadline("uneven_bursts_and_tiny_rings", DEADLINE);
    for (capacity, mode, bursts) in [
        (2usize, ringbus::DispatchMode::Sync, [2u64, 2]),
        (1024, ringbus::DispatchMode::Parallel, [600, 1000]),
        (1024, ringbus::DispatchMode::Sync, [100, 1000]),
    ] {
        let counter = Arc::new(AtomicU64::new(0));
        let mut dispatcher = Dispatcher::<BenchEv>::new();
        let c = counter.clone();
        dispatcher.on(0, move |_, ev| {
            c.fetch_add(ev.a, Ordering::Relaxed);
            Ok(())
        });
        // A pool of one thread: a parallel publish never forks. Whether it would is timed (the
        // probe), and a fork allocates its batch and jobs; under a loaded machine the probe
        // sometimes said yes, and the count included them. What is measured here is the
        // publisher's buffer, the same with or without a fork.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let store = EventStore::builder(dispatcher)
            .capacity(capacity)
            .mode(mode)
            .thread_pool(Arc::new(pool))
            .build()
            .unwrap();
        let round = |n: u64| {
            for i in 0..n {
                store.enqueue(BenchEv { key: 0, ..event(i) }).unwrap();
            }
            assert_eq!(store.publish().dispatched, n);
        };
        for &n in bursts.iter().cycle().take(4) {
            round(n);
        }
        let allocs = allocations_in(|| {
            for &n in bursts.iter().cycle().take(100) {
                round(n);
            }
        });
        assert_eq!(allocs, 0, "ring of {capacity}, {mode:?}, bursts {bursts:?}");
        assert_eq!(
            counter.load(Ordering::Relaxed),
            bursts.iter().sum::<u64>() * 52
        );
    }
}

/// The counter itself must see allocations, or the tests above prove nothing.
#[test]
fn the_counter_counts() {
    let _deadline = deadline("the_counter_counts", DEADLINE);
    let allocs = allocations_in(|| {
        std::hint::black_box(Vec::<u64>::with_capacity(16));
    });
    assert_eq!(allocs, 1);
}

/// Projections made from data (an id per user, say) and without a route: once each has been
/// met, their events allocate nothing and take no lock, however many there are (the registry
/// keeps the first `MAX_PROJECTIONS` apart and counts the rest together). Past the registry's
/// lock-free index of `2 * MAX_PROJECTIONS` hashes, each event must not format its
/// projection's name (an allocation) and take the registry's mutex.
#[test]
fn many_unrouted_projections_allocate_nothing_once_met() {
    let _deadline = deadline(
        "many_unrouted_projections_allocate_nothing_once_met",
        DEADLINE,
    );
    struct User(u32);
    impl Event for User {
        type Projection = u32;
        fn projection(&self) -> u32 {
            self.0
        }
    }
    let users = 3 * ringbus::MAX_PROJECTIONS as u32;
    let store = EventStore::new(Dispatcher::<User>::new(), 1 << 14, OverrunPolicy::Block).unwrap();
    let round = || {
        for id in 0..users {
            store.enqueue(User(id)).unwrap();
        }
        assert_eq!(store.publish().unrouted, u64::from(users));
    };
    round();
    round();
    let allocs = allocations_in(|| {
        for _ in 0..4 {
            round();
        }
    });
    assert_eq!(
        allocs, 0,
        "4 rounds of {users} projections met before allocated {allocs} times"
    );
    let m = store.projection_metrics();
    assert_eq!(m.len(), ringbus::MAX_PROJECTIONS + 1);
    assert_eq!(
        m.iter().map(|p| p.unrouted).sum::<u64>(),
        6 * u64::from(users)
    );
}

/// `DropOldest` on a full ring evicts on every enqueue, counting each eviction under its
/// projection: for projections without a route as for routed ones, that must neither
/// allocate nor lock once the projection has been met.
#[test]
fn evictions_of_unrouted_projections_allocate_nothing() {
    let _deadline = deadline(
        "evictions_of_unrouted_projections_allocate_nothing",
        DEADLINE,
    );
    let store =
        EventStore::new(Dispatcher::<BenchEv>::new(), 64, OverrunPolicy::DropOldest).unwrap();
    let flood = |from: u64| {
        for i in from..from + 10 * TICK {
            store.enqueue(event(i)).unwrap();
        }
    };
    flood(0);
    let allocs = allocations_in(|| flood(10 * TICK));
    assert_eq!(
        allocs,
        0,
        "{} evictions allocated {allocs} times",
        10 * TICK
    );
    let m = store.metrics();
    assert_eq!(m.dropped, 20 * TICK - 64);
    let dropped: u64 = store.projection_metrics().iter().map(|p| p.dropped).sum();
    assert_eq!(dropped, m.dropped);
}

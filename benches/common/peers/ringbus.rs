//! ringbus as a [`Peer`]: an `EventStore` routing through its own `Dispatcher`; ringbus-sp,
//! the same fed by its single [`ringbus::Producer`]; ringbus-consumer, consumed by the store's
//! own thread (`spawn_consumer`); plus, in W-tick, ringbus-batch (its
//! `enqueue_batch` variant), ringbus-local (`publish_with` handlers on the caller's `&mut`
//! state), the runtime subscriptions (ringbus-subscribed, -filtered, -retry) and latency
//! sampling (ringbus-sampled-64, -1).

use std::hint::black_box;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;
use ringbus::{
    Builder, ConsumerThread, DispatchMode, Dispatcher, EnqueueError, EventStore, LocalDispatcher,
    Metrics, OverrunPolicy, RetryPolicy, WaitStrategy,
};

use crate::common::handlers::{Sink, Work, dispatcher, subscribe};
use crate::common::payload::{Ev, KEYS, event};
use crate::common::peer::{CAPACITY, Consumer, Peer, Producer};
use crate::common::runner::Tick;

fn builder(work: Work, sink: &Arc<Sink>, policy: OverrunPolicy, mode: DispatchMode) -> Builder<Ev> {
    EventStore::builder(dispatcher(work, sink))
        .capacity(CAPACITY)
        .policy(policy)
        .mode(mode)
}

fn store(
    work: Work,
    sink: &Arc<Sink>,
    policy: OverrunPolicy,
    mode: DispatchMode,
) -> EventStore<Ev> {
    builder(work, sink, policy, mode)
        .build()
        .expect("a power-of-two capacity")
}

/// A sync store and its single producer.
fn with_producer(
    work: Work,
    sink: &Arc<Sink>,
    policy: OverrunPolicy,
) -> (EventStore<Ev>, ringbus::Producer<Ev>) {
    let (store, producer) = builder(work, sink, policy, DispatchMode::Sync)
        .build_with_producer()
        .expect("a power-of-two capacity");
    assert!(
        producer.is_single_producer_lane(),
        "no membarrier here: ringbus-sp would measure the shared ring"
    );
    (store, producer)
}

/// ringbus-sp: a `DropOldest` store fed by its single `Producer` (a plain store of the tail
/// per claim, no CAS), then `publish`.
pub struct RingbusSp {
    store: EventStore<Ev>,
    producer: ringbus::Producer<Ev>,
}

impl Peer for RingbusSp {
    const NAME: &'static str = "ringbus-sp";

    fn new(work: Work, sink: &Arc<Sink>) -> Self {
        let (store, producer) = with_producer(work, sink, OverrunPolicy::DropOldest);
        Self { store, producer }
    }

    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        for i in first..first + n {
            self.producer.enqueue(event(i)).expect("room for a tick");
        }
        self.store.publish();
    }

    #[inline(always)]
    fn push_drop_oldest(&mut self, ev: Ev) {
        black_box(
            self.producer
                .enqueue(ev)
                .expect("DropOldest always accepts"),
        );
    }

    fn metrics(&self) -> Option<Metrics> {
        Some(self.store.metrics())
    }

    /// Not a W-mp system (two producers); the shared-ring ends, for the trait's sake.
    fn mp(sink: &Arc<Sink>) -> (impl Producer + Clone, impl Consumer) {
        Ringbus::mp(sink)
    }

    /// The single producer retries on `Full` (`ReturnError`); the consumer spins on `publish`.
    fn latency(sink: &Arc<Sink>) -> (impl Producer, impl Consumer) {
        let (store, producer) = with_producer(Work::Latency, sink, OverrunPolicy::ReturnError);
        (Single(producer), Shared(Arc::new(store)))
    }
}

/// The single producer's end, moved to its thread.
struct Single(ringbus::Producer<Ev>);

impl Producer for Single {
    fn put_waiting(&mut self, _: Ev, _: &Backoff) {
        unreachable!("ringbus-sp is not a W-mp system")
    }

    #[inline(always)]
    fn put_spinning(&mut self, mut ev: Ev) {
        while let Err(EnqueueError::Full(back)) = self.0.enqueue(ev) {
            ev = back;
        }
    }
}

/// ringbus-consumer: the store's own consumer thread (`spawn_consumer`) in place of the
/// harness's publish loop. Only the two-thread workloads list it (W-mp, W-latency): a
/// one-thread cell has no consumer to hand over, so the type has no values.
#[derive(Debug)]
pub enum RingbusConsumer {}

impl Peer for RingbusConsumer {
    const NAME: &'static str = "ringbus-consumer";

    fn new(_: Work, _: &Arc<Sink>) -> Self {
        unreachable!("ringbus-consumer has no one-thread cells")
    }

    fn tick(&mut self, _: u64, _: u64) {
        match *self {}
    }

    fn push_drop_oldest(&mut self, _: Ev) {
        match *self {}
    }

    /// `Block` producers on the shared ring, as [`Ringbus`]'s; the consumer thread waits
    /// `SpinYield` (a throughput user's pick: it gives the core back to the producers when
    /// the ring runs dry, and never pays a wake-up).
    fn mp(sink: &Arc<Sink>) -> (impl Producer + Clone, impl Consumer) {
        let store = store(Work::Tiny, sink, OverrunPolicy::Block, DispatchMode::Sync);
        let consumer = Dedicated::spawn(&store, WaitStrategy::SpinYield, sink);
        (Shared(Arc::new(store)), consumer)
    }

    /// ringbus-sp's producer; the consumer thread spins (`BusySpin`).
    fn latency(sink: &Arc<Sink>) -> (impl Producer, impl Consumer) {
        let (store, producer) = with_producer(Work::Latency, sink, OverrunPolicy::ReturnError);
        let consumer = Dedicated::spawn(&store, WaitStrategy::BusySpin, sink);
        (Single(producer), consumer)
    }
}

/// How the harness's thread sleeps while a store's own consumer thread works: each time
/// `share` of what the rest should take at the rate so far, within `min..=max`. Each wake-up
/// takes a core from the working threads for a moment (2 vCPUs here), and the last sleep may
/// end up to about `min` after the last event.
struct Looks {
    share: f64,
    min: Duration,
    max: Duration,
}

/// W-mp, where the end is timed: a look every 50 µs cost W-mp up to 1.5x; this, a few dozen
/// wake-ups a run, each at most 2 ms apart.
const MP_LOOKS: Looks = Looks {
    share: 0.5,
    min: Duration::from_micros(50),
    max: Duration::from_millis(2),
};

/// W-latency, where only each event's latency counts, not the end: the fewest wake-ups (each
/// one put p99 from ~2 µs to 7 to 14 µs with `MP_LOOKS`).
const LATENCY_LOOKS: Looks = Looks {
    share: 1.0,
    min: Duration::from_millis(1),
    max: Duration::from_secs(1),
};

/// The harness's handle on a store's own consumer thread: waits until the sink has seen every
/// event, then closes the store and joins the thread.
struct Dedicated {
    store: EventStore<Ev>,
    thread: Option<ConsumerThread>,
    sink: Arc<Sink>,
    seen: u64,
}

impl Dedicated {
    fn spawn(store: &EventStore<Ev>, strategy: WaitStrategy, sink: &Arc<Sink>) -> Self {
        Self {
            store: store.clone(),
            thread: Some(store.spawn_consumer(strategy)),
            sink: Arc::clone(sink),
            seen: 0,
        }
    }

    /// Sleeps as `looks` says until the sink has seen `total`, then closes the store (nothing
    /// left: microseconds) and joins the thread; returns what the store dispatched.
    fn finish(&mut self, total: u64, looks: &Looks) -> u64 {
        let start = Instant::now();
        loop {
            let done = self.sink.total();
            if done >= total {
                break;
            }
            // No rate before the first event: look again soon.
            let rest = match done {
                0 => Duration::ZERO,
                _ => start.elapsed().mul_f64((total - done) as f64 / done as f64),
            };
            thread::sleep(rest.mul_f64(looks.share).clamp(looks.min, looks.max));
        }
        let closing = self
            .store
            .close(Duration::from_secs(10))
            .expect("every event already handled");
        let thread = self.thread.take().expect("one run per store");
        thread.join().dispatched + closing.dispatched
    }
}

impl Consumer for Dedicated {
    /// What the store's thread handled since the last look.
    fn poll(&mut self) -> u64 {
        let seen = self.sink.total();
        let new = seen - self.seen;
        self.seen = seen;
        new
    }

    fn take_all(&mut self, total: u64) -> u64 {
        self.finish(total, &MP_LOOKS)
    }

    /// The store's thread does the spinning.
    fn spin_all(&mut self, total: u64) -> u64 {
        self.finish(total, &LATENCY_LOOKS)
    }

    fn metrics(&self) -> Option<Metrics> {
        Some(self.store.metrics())
    }
}

/// A `DropOldest` store on one thread: per-event `enqueue`, then `publish`.
#[derive(Debug)]
pub struct Ringbus {
    store: EventStore<Ev>,
}

impl Ringbus {
    /// The store dispatching in `mode` (W-parallel compares `Parallel` with `Sync`).
    pub fn with_mode(work: Work, sink: &Arc<Sink>, mode: DispatchMode) -> Self {
        Self {
            store: store(work, sink, OverrunPolicy::DropOldest, mode),
        }
    }
}

impl Peer for Ringbus {
    const NAME: &'static str = "ringbus";

    fn new(work: Work, sink: &Arc<Sink>) -> Self {
        Self::with_mode(work, sink, DispatchMode::Sync)
    }

    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        for i in first..first + n {
            self.store.enqueue(event(i)).expect("room for a tick");
        }
        self.store.publish();
    }

    /// `begin_transaction`, `push` each, `commit` (one claim for all, then the dispatch).
    #[inline(always)]
    fn commit(&mut self, first: u64, n: u64) {
        let mut tx = self.store.begin_transaction();
        for i in first..first + n {
            tx.push(event(i));
        }
        tx.commit().expect("room and no failing handler");
    }

    #[inline(always)]
    fn push_drop_oldest(&mut self, ev: Ev) {
        black_box(self.store.enqueue(ev).expect("DropOldest always accepts"));
    }

    fn metrics(&self) -> Option<Metrics> {
        Some(self.store.metrics())
    }

    /// `Block`: the store itself makes a producer wait for room.
    fn mp(sink: &Arc<Sink>) -> (impl Producer + Clone, impl Consumer) {
        Shared::ends(Work::Tiny, sink, OverrunPolicy::Block)
    }

    /// `ReturnError` and retry, like the ArrayQueue peer's push loop: a consumer preempted for
    /// a whole lap must not lose samples (`DropOldest` would, and the run would never end), and
    /// no producer ever parks, so publishing skips `Block`'s wake-up check.
    fn latency(sink: &Arc<Sink>) -> (impl Producer, impl Consumer) {
        Shared::ends(Work::Latency, sink, OverrunPolicy::ReturnError)
    }
}

/// Either end of a store shared between threads: producers `enqueue`, the consumer loops on
/// `publish`.
#[derive(Debug, Clone)]
struct Shared(Arc<EventStore<Ev>>);

impl Shared {
    /// A producer and a consumer of one sync store.
    fn ends(work: Work, sink: &Arc<Sink>, policy: OverrunPolicy) -> (Self, Self) {
        let shared = Self(Arc::new(store(work, sink, policy, DispatchMode::Sync)));
        (shared.clone(), shared)
    }
}

impl Producer for Shared {
    #[inline(always)]
    fn put_waiting(&mut self, ev: Ev, _: &Backoff) {
        self.0.enqueue(ev).expect("Block waits, the store is open");
    }

    #[inline(always)]
    fn put_spinning(&mut self, mut ev: Ev) {
        while let Err(EnqueueError::Full(back)) = self.0.enqueue(ev) {
            ev = back;
        }
    }
}

impl Consumer for Shared {
    #[inline(always)]
    fn poll(&mut self) -> u64 {
        self.0.publish().dispatched
    }

    fn metrics(&self) -> Option<Metrics> {
        Some(self.0.metrics())
    }
}

/// ringbus-batch: `enqueue_batch` of a reused `Vec`, then `publish` (sync).
#[derive(Debug)]
pub struct RingbusBatch {
    store: EventStore<Ev>,
    batch: Vec<Ev>,
    sink: Arc<Sink>,
}

impl RingbusBatch {
    /// The system's name in criterion, the table and the JSON.
    pub const NAME: &'static str = "ringbus-batch";

    /// A sync `DropOldest` store, as [`Ringbus`]'s.
    pub fn new(work: Work) -> Self {
        let sink = Sink::new(0);
        Self {
            store: store(work, &sink, OverrunPolicy::DropOldest, DispatchMode::Sync),
            batch: Vec::new(),
            sink,
        }
    }
}

impl Tick for RingbusBatch {
    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        self.batch.extend((first..first + n).map(event));
        self.store
            .enqueue_batch(&mut self.batch)
            .expect("room for a tick");
        self.store.publish();
    }

    fn check(&self, made: u64) {
        self.sink.expect_total(made, Self::NAME);
        assert_eq!(self.store.metrics().dropped, 0);
    }
}

/// ringbus-local: per-event `enqueue`, then `publish_with` of local handlers that add into the
/// caller's `&mut [u64; KEYS]`: the `&mut state` path, no atomic and no lock in the handler
/// (the other rows' handlers do a relaxed atomic add into the shared sink).
pub struct RingbusLocal {
    store: EventStore<Ev>,
    handlers: LocalDispatcher<Ev, [u64; KEYS]>,
    sums: [u64; KEYS],
}

impl RingbusLocal {
    /// The system's name in criterion, the table and the JSON.
    pub const NAME: &'static str = "ringbus-local";

    /// A sync `DropOldest` store with no handlers of its own, and one local handler per key.
    pub fn new() -> Self {
        let mut handlers = LocalDispatcher::new();
        for key in 0..KEYS as u8 {
            handlers.on(key, |sums: &mut [u64; KEYS], _, ev: &Ev| {
                sums[ev.key as usize] += ev.a;
                Ok(())
            });
        }
        Self {
            store: EventStore::builder(Dispatcher::new())
                .capacity(CAPACITY)
                .build()
                .expect("a power-of-two capacity"),
            handlers,
            sums: [0; KEYS],
        }
    }
}

impl Tick for RingbusLocal {
    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        for i in first..first + n {
            self.store.enqueue(event(i)).expect("room for a tick");
        }
        self.store.publish_with(&mut self.handlers, &mut self.sums);
    }

    fn check(&self, made: u64) {
        let total: u64 = self.sums.iter().sum();
        assert_eq!(total, made, "{} lost or duplicated events", Self::NAME);
        assert_eq!(self.store.metrics().dropped, 0);
    }
}

/// ringbus-sampled-64 / -1: [`Ringbus`]'s tick on a store that samples latencies
/// (`Builder::sample_latency`) one event in `every`: the cost of the histograms.
#[derive(Debug)]
pub struct RingbusSampled {
    store: EventStore<Ev>,
    sink: Arc<Sink>,
    name: &'static str,
}

impl RingbusSampled {
    /// The cell's name for sampling one in `every`.
    pub const fn name(every: u64) -> &'static str {
        match every {
            1 => "ringbus-sampled-1",
            64 => "ringbus-sampled-64",
            _ => panic!("W-tick samples 1 in 1 or 1 in 64"),
        }
    }

    /// A sync `DropOldest` store sampling one event in `every`.
    pub fn new(every: u64) -> Self {
        let sink = Sink::new(0);
        let store = builder(
            Work::Tiny,
            &sink,
            OverrunPolicy::DropOldest,
            DispatchMode::Sync,
        )
        .sample_latency(every)
        .build()
        .expect("a power-of-two capacity and sampling rate");
        Self {
            store,
            sink,
            name: Self::name(every),
        }
    }
}

impl Tick for RingbusSampled {
    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        for i in first..first + n {
            self.store.enqueue(event(i)).expect("room for a tick");
        }
        self.store.publish();
    }

    fn check(&self, made: u64) {
        self.sink.expect_total(made, self.name);
        let sampled: u64 = self.store.latency().iter().map(|l| l.run.count).sum();
        assert!(sampled > 0, "{} sampled nothing", self.name);
    }
}

/// What the runtime-subscription cells of W-tick set on each subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// Nothing: the subscriptions against the frozen `Dispatcher` table (`ringbus`).
    Plain,
    /// A filter that always passes (`ev.a == 1`, which the compiler cannot know): its cost
    /// per event.
    Filtered,
    /// A retry policy that never fires (the handlers never fail; `Ev` is `Copy`): its cost
    /// per event, the retry layer's look for due retries at each publish included.
    Retry,
}

/// ringbus-subscribed / -filtered / -retry: [`Ringbus`]'s tick (per-event `enqueue`, then
/// `publish`) on a store with no `Dispatcher` handlers and the same tiny handlers subscribed
/// at run time, one per key.
#[derive(Debug)]
pub struct RingbusSubscribed {
    store: EventStore<Ev>,
    sink: Arc<Sink>,
    name: &'static str,
}

impl RingbusSubscribed {
    /// The cell's name for `options`.
    pub const fn name(options: Subscribed) -> &'static str {
        match options {
            Subscribed::Plain => "ringbus-subscribed",
            Subscribed::Filtered => "ringbus-filtered",
            Subscribed::Retry => "ringbus-retry",
        }
    }

    /// A sync `DropOldest` store, as [`Ringbus`]'s, its handlers subscribed with `options`.
    pub fn new(options: Subscribed) -> Self {
        let sink = Sink::new(0);
        let store = EventStore::builder(Dispatcher::new())
            .capacity(CAPACITY)
            .policy(OverrunPolicy::DropOldest)
            .build()
            .expect("a power-of-two capacity");
        subscribe(&store, &sink, |sub| match options {
            Subscribed::Plain => sub,
            Subscribed::Filtered => sub.filter(|ev: &Ev| ev.a == 1),
            Subscribed::Retry => sub.retry(RetryPolicy::new(3)),
        });
        Self {
            store,
            sink,
            name: Self::name(options),
        }
    }
}

impl Tick for RingbusSubscribed {
    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        for i in first..first + n {
            self.store.enqueue(event(i)).expect("room for a tick");
        }
        self.store.publish();
    }

    fn check(&self, made: u64) {
        self.sink.expect_total(made, self.name);
        let m = self.store.metrics();
        assert_eq!((m.dropped, m.filtered, m.retrying, m.retries), (0, 0, 0, 0));
        assert!(m.is_balanced(), "{m:?}");
    }
}

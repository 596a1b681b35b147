//! The workloads shared by `benches/workloads.rs` (criterion) and `examples/bench_report.rs`
//! (the table), so that both measure exactly the same code.
//!
//! Every system runs the same payload ([`Ev`]) through the same handlers: ringbus through its
//! [`Dispatcher`], the direct loop and the peers through a [`Table`] of the same shape (an
//! `AHashMap` from key to boxed handlers), so that between systems only the queue differs.
//! Each runner checks after every run, outside the timed region, that every event reached its
//! handler exactly once: a fast wrong number is worse than a slow right one.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::{Backoff, CachePadded};
use disruptor::{
    BusySpin, EventPoller, Polling, Producer, SingleConsumerBarrier, SingleProducer,
    SingleProducerBarrier,
};
use ringbus::{DispatchMode, Dispatcher, EnqueueError, Event, EventStore, OverrunPolicy};

/// Ring / channel capacity for every workload.
pub const CAPACITY: usize = 1 << 16;
/// Events per tick in W-tick and W-parallel.
pub const TICK: usize = 1024;
/// Events per transaction in W-tx.
pub const TX: usize = 16;
/// Distinct keys (projections); events cycle over them.
pub const KEYS: usize = 8;
/// Producers in W-mp.
pub const MP_PRODUCERS: u64 = 2;
/// Events each W-mp producer enqueues.
pub const MP_PER_PRODUCER: u64 = 1_000_000;
/// Gap between two stamped events in W-latency.
pub const LATENCY_GAP: Duration = Duration::from_micros(1);

/// The payload: a routing key and three words of data.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ev {
    /// Routing key, `0..KEYS`.
    pub key: u8,
    /// Added to the key's counter by every handler.
    pub a: u64,
    /// W-latency: the producer's stamp, in ns since the sink's epoch.
    pub b: u64,
    /// The event's index in its run (W-latency: where its latency sample goes).
    pub c: u64,
}

impl Event for Ev {
    type Projection = u8;
    fn projection(&self) -> u8 {
        self.key
    }
}

/// The `i`-th event of a run. `a` is 1 so that the counters' total is the event count.
#[inline(always)]
pub fn event(i: u64) -> Ev {
    Ev {
        key: (i % KEYS as u64) as u8,
        a: 1,
        b: 0,
        c: i,
    }
}

/// What a handler does besides counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A relaxed `fetch_add` of `a` to the key's counter, nothing else.
    Tiny,
    /// About 1 µs of CPU work (a calibrated loop, see [`calibrate_spin`]), then the count.
    Spin(u64),
    /// The count, then records `now - ev.b` as the event's latency sample.
    Latency,
}

/// Where handlers leave their effects: per-key counters (cache-padded, so that parallel
/// handlers of different keys do not false-share) and latency samples.
#[derive(Debug)]
pub struct Sink {
    counts: [CachePadded<AtomicU64>; KEYS],
    epoch: Instant,
    /// One slot per event of a latency run, written by the handler; preallocated so that
    /// recording costs a store, not an allocation or a lock.
    samples: Box<[AtomicU64]>,
}

impl Sink {
    /// A sink with room for `samples` latency samples.
    pub fn new(samples: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: Default::default(),
            epoch: Instant::now(),
            samples: (0..samples).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The sum of all counters: the number of events handled, since `a == 1`.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    #[inline(always)]
    fn count(&self, ev: &Ev) {
        self.counts[ev.key as usize].fetch_add(ev.a, Ordering::Relaxed);
    }

    /// Nanoseconds since the sink was made: a stamp both threads can compare.
    #[inline(always)]
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The recorded latency samples, sorted, in ns.
    pub fn sorted_samples(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .samples
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect();
        v.sort_unstable();
        v
    }
}

/// Runs a loop of `iters` steps the optimiser cannot remove: the unit of [`Work::Spin`].
#[inline(never)]
pub fn spin(iters: u64) {
    let mut x = 0u64;
    for i in 0..iters {
        x = black_box(x.wrapping_add(i));
    }
    black_box(x);
}

/// Iterations of [`spin`] that take `target` on this machine: the median of 9 timings, so a
/// preemption during calibration does not skew it. A fixed amount of work (not "spin until
/// the clock says 1 µs") so that a preempted handler is not counted as having worked.
pub fn calibrate_spin(target: Duration) -> u64 {
    const PROBE: u64 = 1 << 20;
    let mut per_iter: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            spin(PROBE);
            t.elapsed().as_nanos() as f64 / PROBE as f64
        })
        .collect();
    per_iter.sort_by(f64::total_cmp);
    ((target.as_nanos() as f64 / per_iter[4]) as u64).max(1)
}

/// The key -> handlers table used by the direct loop and by every peer's consumer: the same
/// shape as ringbus's dispatcher (a hash map to a `Vec` of boxed handlers) minus its
/// `Context`, error results and panic isolation.
pub type Table = AHashMap<u8, Vec<Box<dyn Fn(&Ev) + Send + Sync>>>;

/// Calls every handler of `ev`'s key.
#[inline(always)]
pub fn dispatch(table: &Table, ev: &Ev) {
    if let Some(handlers) = table.get(&ev.key) {
        for h in handlers {
            h(ev);
        }
    }
}

/// The handler body for `work`, handed to `register` as one concrete closure type so that
/// ringbus and the table each get a closure they can inline, with no extra indirection.
macro_rules! with_handler {
    ($work:expr, $sink:expr, $register:ident) => {
        match $work {
            Work::Tiny => {
                let s = Arc::clone($sink);
                $register(move |ev: &Ev| s.count(ev))
            }
            Work::Spin(iters) => {
                let s = Arc::clone($sink);
                $register(move |ev: &Ev| {
                    spin(iters);
                    s.count(ev)
                })
            }
            Work::Latency => {
                let s = Arc::clone($sink);
                $register(move |ev: &Ev| {
                    s.count(ev);
                    let lat = s.now_ns().saturating_sub(ev.b);
                    s.samples[ev.c as usize].store(lat, Ordering::Relaxed);
                })
            }
        }
    };
}

/// The peers' and the direct loop's handler table: one handler per key.
pub fn table(work: Work, sink: &Arc<Sink>) -> Table {
    fn build<F: Fn(&Ev) + Clone + Send + Sync + 'static>(f: F) -> Table {
        (0..KEYS as u8)
            .map(|k| {
                let h: Box<dyn Fn(&Ev) + Send + Sync> = Box::new(f.clone());
                (k, vec![h])
            })
            .collect()
    }
    with_handler!(work, sink, build)
}

/// ringbus's dispatcher: the same handlers, one per key.
pub fn dispatcher(work: Work, sink: &Arc<Sink>) -> Dispatcher<Ev> {
    fn build<F: Fn(&Ev) + Clone + Send + Sync + 'static>(f: F) -> Dispatcher<Ev> {
        let mut d = Dispatcher::new();
        for k in 0..KEYS as u8 {
            let f = f.clone();
            d.on(k, move |_, ev| {
                f(ev);
                Ok(())
            });
        }
        d
    }
    with_handler!(work, sink, build)
}

fn store(
    work: Work,
    sink: &Arc<Sink>,
    policy: OverrunPolicy,
    mode: DispatchMode,
) -> EventStore<Ev> {
    EventStore::builder(dispatcher(work, sink))
        .capacity(CAPACITY)
        .policy(policy)
        .mode(mode)
        .build()
        .expect("a power-of-two capacity")
}

/// The systems compared; [`System::name`] is the key used in the table and the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Harness cost alone: makes the events and discards them (W-tick only).
    Base,
    /// No queue: the handlers called over a pre-filled `Vec` (the limit).
    Direct,
    /// ringbus: per-event `enqueue`, then `publish` (sync). In W-tx: a `Transaction` of 16
    /// events, `commit`ted (see [`Workload::runner`]).
    Ringbus,
    /// ringbus: `enqueue_batch` of a reused `Vec`, then `publish` (sync).
    RingbusBatch,
    /// ringbus in `DispatchMode::Parallel` (W-parallel only).
    RingbusParallel,
    /// `crossbeam_queue::ArrayQueue`.
    ArrayQueue,
    /// `crossbeam_channel::bounded`.
    CrossbeamChannel,
    /// `std::sync::mpsc::sync_channel`.
    StdMpsc,
    /// The `disruptor` crate with an `EventPoller` consumer.
    Disruptor,
}

/// The peers, in table order.
pub const PEERS: [System; 4] = [
    System::ArrayQueue,
    System::CrossbeamChannel,
    System::StdMpsc,
    System::Disruptor,
];

impl System {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Base => "base",
            System::Direct => "direct",
            System::Ringbus => "ringbus",
            System::RingbusBatch => "ringbus-batch",
            System::RingbusParallel => "ringbus-parallel",
            System::ArrayQueue => "arrayqueue",
            System::CrossbeamChannel => "crossbeam-channel",
            System::StdMpsc => "std-mpsc",
            System::Disruptor => "disruptor",
        }
    }
}

/// The workloads; [`Workload::name`] is the group name in criterion, the table and the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// 1,024 events per tick into a 65,536-slot ring, then a synchronous drain.
    Tick,
    /// W-tick with `DispatchMode::Parallel` and tiny handlers, against sync.
    ParallelTiny,
    /// W-tick with `DispatchMode::Parallel` and ~1 µs handlers, against sync.
    Parallel1us,
    /// One producer into a full ring, dropping the oldest event each time; no consumer.
    Enqueue,
    /// Two producers (`Block`), one consumer thread, exact count.
    Mp,
    /// 16-event transactions committed one at a time.
    Tx,
}

impl Workload {
    /// Every throughput workload, in report order.
    pub const ALL: [Workload; 6] = [
        Workload::Tick,
        Workload::ParallelTiny,
        Workload::Parallel1us,
        Workload::Enqueue,
        Workload::Mp,
        Workload::Tx,
    ];

    /// Group name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Tick => "W-tick",
            Workload::ParallelTiny => "W-parallel-tiny",
            Workload::Parallel1us => "W-parallel-1us",
            Workload::Enqueue => "W-enqueue",
            Workload::Mp => "W-mp",
            Workload::Tx => "W-tx",
        }
    }

    /// The systems this workload compares.
    pub fn systems(self) -> &'static [System] {
        use System::*;
        match self {
            Workload::Tick => &[
                Base,
                Direct,
                Ringbus,
                RingbusBatch,
                ArrayQueue,
                CrossbeamChannel,
                StdMpsc,
                Disruptor,
            ],
            Workload::ParallelTiny | Workload::Parallel1us => &[Direct, Ringbus, RingbusParallel],
            Workload::Enqueue | Workload::Mp => {
                &[Ringbus, ArrayQueue, CrossbeamChannel, StdMpsc, Disruptor]
            }
            Workload::Tx => &[
                Direct,
                Ringbus,
                ArrayQueue,
                CrossbeamChannel,
                StdMpsc,
                Disruptor,
            ],
        }
    }

    /// A runner for `system` on this workload; `spin_1us` is [`calibrate_spin`]'s answer for
    /// 1 µs.
    pub fn runner(self, system: System, spin_1us: u64) -> Box<dyn Runner> {
        match self {
            Workload::Tick => tick_runner(system, TICK, Work::Tiny),
            Workload::ParallelTiny => tick_runner(system, TICK, Work::Tiny),
            Workload::Parallel1us => tick_runner(system, TICK, Work::Spin(spin_1us)),
            Workload::Tx => match system {
                // A 16-event `Transaction` pushed and committed (enqueue + dispatch) per tick.
                System::Ringbus => ringbus_tick(System::Ringbus, TX, Work::Tiny, Feed::Transaction),
                other => tick_runner(other, TX, Work::Tiny),
            },
            Workload::Enqueue => enqueue_runner(system),
            Workload::Mp => Box::new(MpRunner {
                system,
                per_producer: MP_PER_PRODUCER,
            }),
        }
    }
}

/// One system on one workload, ready to run.
pub trait Runner {
    /// Events one iteration handles (a tick, a transaction, a whole W-mp run).
    fn events_per_iter(&self) -> u64;
    /// Runs `iters` iterations and returns the time they took, setup excluded.
    fn run(&mut self, iters: u64) -> Duration;
}

/// A tick workload: make `events` events, put them in, take them out through the handlers.
fn tick_runner(system: System, events: usize, work: Work) -> Box<dyn Runner> {
    let sink = Sink::new(0);
    match system {
        System::Base => Box::new(BaseTick { events, next: 0 }),
        System::Direct => Box::new(DirectTick {
            table: table(work, &sink),
            events: (0..events as u64).map(event).collect(),
            sink,
            handled: 0,
        }),
        System::RingbusBatch => ringbus_tick(system, events, work, Feed::Batch(Vec::new())),
        System::Ringbus | System::RingbusParallel => {
            ringbus_tick(system, events, work, Feed::PerEvent)
        }
        peer => Box::new(PeerTick {
            queue: PeerQueue::new(peer),
            table: table(work, &sink),
            sink,
            events,
            next: 0,
        }),
    }
}

/// The harness floor: the event-making loop with nothing to put them in.
struct BaseTick {
    events: usize,
    next: u64,
}

impl Runner for BaseTick {
    fn events_per_iter(&self) -> u64 {
        self.events as u64
    }
    fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            for i in self.next..self.next + self.events as u64 {
                black_box(event(i));
            }
            self.next += self.events as u64;
        }
        start.elapsed()
    }
}

struct DirectTick {
    table: Table,
    events: Vec<Ev>,
    sink: Arc<Sink>,
    handled: u64,
}

impl Runner for DirectTick {
    fn events_per_iter(&self) -> u64 {
        self.events.len() as u64
    }
    fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            for ev in &self.events {
                dispatch(&self.table, ev);
            }
        }
        let elapsed = start.elapsed();
        self.handled += iters * self.events.len() as u64;
        assert_eq!(self.sink.total(), self.handled);
        elapsed
    }
}

/// How a ringbus tick gets its events in.
enum Feed {
    /// `enqueue` each, then `publish`.
    PerEvent,
    /// `enqueue_batch` of this reused `Vec`, then `publish`.
    Batch(Vec<Ev>),
    /// `begin_transaction`, `push` each, `commit` (which dispatches).
    Transaction,
}

fn ringbus_tick(system: System, events: usize, work: Work, feed: Feed) -> Box<dyn Runner> {
    let sink = Sink::new(0);
    let mode = if system == System::RingbusParallel {
        DispatchMode::Parallel
    } else {
        DispatchMode::Sync
    };
    Box::new(RingbusTick {
        store: store(work, &sink, OverrunPolicy::DropOldest, mode),
        feed,
        sink,
        events,
        next: 0,
    })
}

struct RingbusTick {
    store: EventStore<Ev>,
    feed: Feed,
    sink: Arc<Sink>,
    events: usize,
    next: u64,
}

impl Runner for RingbusTick {
    fn events_per_iter(&self) -> u64 {
        self.events as u64
    }
    fn run(&mut self, iters: u64) -> Duration {
        let n = self.events as u64;
        let start = Instant::now();
        for _ in 0..iters {
            let first = self.next;
            match &mut self.feed {
                Feed::Batch(batch) => {
                    batch.extend((first..first + n).map(event));
                    self.store.enqueue_batch(batch).expect("room for a tick");
                    self.store.publish();
                }
                Feed::PerEvent => {
                    for i in first..first + n {
                        self.store.enqueue(event(i)).expect("room for a tick");
                    }
                    self.store.publish();
                }
                Feed::Transaction => {
                    let mut tx = self.store.begin_transaction();
                    for i in first..first + n {
                        tx.push(event(i));
                    }
                    tx.commit().expect("room and no failing handler");
                }
            }
            self.next += n;
        }
        let elapsed = start.elapsed();
        assert_eq!(self.sink.total(), self.next);
        assert_eq!(self.store.metrics().dropped, 0);
        elapsed
    }
}

/// A peer's queue, with both ends owned by the one thread that runs a tick (or W-enqueue).
#[allow(
    clippy::large_enum_variant,
    reason = "built once per runner and never moved while measured; boxing the padded \
              queues would add a pointer hop to the peers' hot loops only"
)]
enum PeerQueue {
    ArrayQueue(ArrayQueue<Ev>),
    CrossbeamChannel(
        crossbeam_channel::Sender<Ev>,
        crossbeam_channel::Receiver<Ev>,
    ),
    StdMpsc(std_mpsc::SyncSender<Ev>, std_mpsc::Receiver<Ev>),
    Disruptor(
        Box<SingleProducer<Ev, SingleConsumerBarrier>>,
        EventPoller<Ev, SingleProducerBarrier>,
    ),
}

impl PeerQueue {
    fn new(system: System) -> Self {
        match system {
            System::ArrayQueue => PeerQueue::ArrayQueue(ArrayQueue::new(CAPACITY)),
            System::CrossbeamChannel => {
                let (tx, rx) = crossbeam_channel::bounded(CAPACITY);
                PeerQueue::CrossbeamChannel(tx, rx)
            }
            System::StdMpsc => {
                let (tx, rx) = std_mpsc::sync_channel(CAPACITY);
                PeerQueue::StdMpsc(tx, rx)
            }
            System::Disruptor => {
                let builder = disruptor::build_single_producer(CAPACITY, Ev::default, BusySpin);
                let (poller, builder) = builder.new_event_poller();
                PeerQueue::Disruptor(Box::new(builder.build()), poller)
            }
            other => unreachable!("{other:?} is not a peer"),
        }
    }

    /// Puts events `first..first + n` in, each in the peer's own idiom: the disruptor claims
    /// the whole tick with one `batch_publish` and writes the slots in place.
    #[inline(always)]
    fn push_tick(&mut self, first: u64, n: u64) {
        match self {
            PeerQueue::ArrayQueue(q) => {
                for i in first..first + n {
                    q.push(event(i)).expect("room for a tick");
                }
            }
            PeerQueue::CrossbeamChannel(tx, _) => {
                for i in first..first + n {
                    tx.try_send(event(i)).expect("room for a tick");
                }
            }
            PeerQueue::StdMpsc(tx, _) => {
                for i in first..first + n {
                    tx.try_send(event(i)).expect("room for a tick");
                }
            }
            PeerQueue::Disruptor(producer, _) => {
                producer.batch_publish(n as usize, |slots| {
                    for (slot, i) in slots.zip(first..) {
                        *slot = event(i);
                    }
                });
            }
        }
    }

    /// Takes everything pending out through the handlers.
    #[inline(always)]
    fn drain(&mut self, table: &Table) {
        match self {
            PeerQueue::ArrayQueue(q) => {
                while let Some(ev) = q.pop() {
                    dispatch(table, &ev);
                }
            }
            PeerQueue::CrossbeamChannel(_, rx) => {
                for ev in rx.try_iter() {
                    dispatch(table, &ev);
                }
            }
            PeerQueue::StdMpsc(_, rx) => {
                for ev in rx.try_iter() {
                    dispatch(table, &ev);
                }
            }
            PeerQueue::Disruptor(_, poller) => match poller.poll() {
                Ok(mut events) => {
                    for ev in &mut events {
                        dispatch(table, ev);
                    }
                }
                Err(Polling::NoEvents) => {}
                Err(Polling::Shutdown) => unreachable!("the producer is alive"),
            },
        }
    }

    /// Puts `ev` in, discarding the oldest event if full. Only `ArrayQueue::force_push` does
    /// this natively; the channels and the disruptor have no drop-oldest, so the producer
    /// (which here also owns the receiving end) takes one event out and drops it, the closest
    /// idiom (and what users of those crates are told to do).
    #[inline(always)]
    fn push_drop_oldest(&mut self, ev: Ev) {
        match self {
            PeerQueue::ArrayQueue(q) => {
                black_box(q.force_push(ev));
            }
            PeerQueue::CrossbeamChannel(tx, rx) => {
                if let Err(crossbeam_channel::TrySendError::Full(ev)) = tx.try_send(ev) {
                    black_box(rx.try_recv().ok());
                    tx.try_send(ev).expect("room after taking one out");
                }
            }
            PeerQueue::StdMpsc(tx, rx) => {
                if let Err(std_mpsc::TrySendError::Full(ev)) = tx.try_send(ev) {
                    black_box(rx.try_recv().ok());
                    tx.try_send(ev).expect("room after taking one out");
                }
            }
            PeerQueue::Disruptor(producer, poller) => {
                if producer.try_publish(|slot| *slot = ev).is_err() {
                    // Dropping the guard releases the oldest slot without reading it.
                    drop(poller.take(1));
                    producer
                        .try_publish(|slot| *slot = ev)
                        .expect("room after releasing one slot");
                }
            }
        }
    }
}

struct PeerTick {
    queue: PeerQueue,
    table: Table,
    sink: Arc<Sink>,
    events: usize,
    next: u64,
}

impl Runner for PeerTick {
    fn events_per_iter(&self) -> u64 {
        self.events as u64
    }
    fn run(&mut self, iters: u64) -> Duration {
        let n = self.events as u64;
        let start = Instant::now();
        for _ in 0..iters {
            self.queue.push_tick(self.next, n);
            self.next += n;
            self.queue.drain(&self.table);
        }
        let elapsed = start.elapsed();
        assert_eq!(self.sink.total(), self.next);
        elapsed
    }
}

/// W-enqueue: the ring is filled before the first run, so every timed enqueue evicts one:
/// the steady state of a producer that nobody drains.
fn enqueue_runner(system: System) -> Box<dyn Runner> {
    let mut runner = match system {
        System::Ringbus => {
            let sink = Sink::new(0);
            EnqueueRunner::Ringbus(store(
                Work::Tiny,
                &sink,
                OverrunPolicy::DropOldest,
                DispatchMode::Sync,
            ))
        }
        peer => EnqueueRunner::Peer(PeerQueue::new(peer)),
    };
    runner.run(CAPACITY as u64 / TICK as u64);
    Box::new(runner)
}

#[allow(
    clippy::large_enum_variant,
    reason = "built once per runner and never moved while measured"
)]
enum EnqueueRunner {
    Ringbus(EventStore<Ev>),
    Peer(PeerQueue),
}

impl Runner for EnqueueRunner {
    fn events_per_iter(&self) -> u64 {
        TICK as u64
    }
    fn run(&mut self, iters: u64) -> Duration {
        let n = iters * TICK as u64;
        let start = Instant::now();
        match self {
            EnqueueRunner::Ringbus(store) => {
                for i in 0..n {
                    black_box(store.enqueue(event(i)).expect("DropOldest always accepts"));
                }
            }
            EnqueueRunner::Peer(queue) => {
                for i in 0..n {
                    queue.push_drop_oldest(event(i));
                }
            }
        }
        let elapsed = start.elapsed();
        if let EnqueueRunner::Ringbus(store) = self {
            let m = store.metrics();
            assert_eq!(m.pending, CAPACITY as u64);
            assert_eq!(m.published, m.dropped + m.pending);
        }
        elapsed
    }
}

/// W-mp: `iters` whole runs of [`mp_run`].
struct MpRunner {
    system: System,
    per_producer: u64,
}

impl Runner for MpRunner {
    fn events_per_iter(&self) -> u64 {
        MP_PRODUCERS * self.per_producer
    }
    fn run(&mut self, iters: u64) -> Duration {
        (0..iters)
            .map(|_| mp_run(self.system, self.per_producer))
            .sum()
    }
}

/// How a consumer that found nothing waits: spin briefly, then yield. Three busy threads on a
/// 2-core machine must let each other run; every system's spinning side uses this same
/// backoff (channels block in their own way), so the queues are compared, not wait loops.
fn idle(backoff: &Backoff) {
    backoff.snooze();
}

/// Two producers each put `per_producer` events in (waiting when full) while one consumer
/// thread dispatches them; returns the consumer's time from the start signal to the last event.
/// Asserts that every event was handled exactly once.
pub fn mp_run(system: System, per_producer: u64) -> Duration {
    let total = MP_PRODUCERS * per_producer;
    let sink = Sink::new(0);
    let start = Barrier::new(MP_PRODUCERS as usize + 1);
    let elapsed = match system {
        System::Ringbus => {
            let store = store(Work::Tiny, &sink, OverrunPolicy::Block, DispatchMode::Sync);
            let elapsed = thread::scope(|s| {
                for _ in 0..MP_PRODUCERS {
                    s.spawn(|| {
                        start.wait();
                        for i in 0..per_producer {
                            store
                                .enqueue(event(i))
                                .expect("Block waits, the store is open");
                        }
                    });
                }
                s.spawn(|| {
                    start.wait();
                    let t = Instant::now();
                    let backoff = Backoff::new();
                    let mut done = 0;
                    while done < total {
                        let n = store.publish().dispatched;
                        if n == 0 {
                            idle(&backoff);
                        } else {
                            done += n;
                            backoff.reset();
                        }
                    }
                    assert_eq!(done, total);
                    t.elapsed()
                })
                .join()
                .expect("consumer")
            });
            let m = store.metrics();
            assert!(m.is_balanced() && m.processed == total && m.dropped == 0);
            elapsed
        }
        System::ArrayQueue => {
            let q = ArrayQueue::new(CAPACITY);
            let table = table(Work::Tiny, &sink);
            thread::scope(|s| {
                for _ in 0..MP_PRODUCERS {
                    s.spawn(|| {
                        start.wait();
                        let backoff = Backoff::new();
                        for i in 0..per_producer {
                            let mut ev = event(i);
                            while let Err(back) = q.push(ev) {
                                ev = back;
                                idle(&backoff);
                            }
                            backoff.reset();
                        }
                    });
                }
                s.spawn(|| {
                    start.wait();
                    let t = Instant::now();
                    let backoff = Backoff::new();
                    let mut done = 0;
                    while done < total {
                        match q.pop() {
                            Some(ev) => {
                                dispatch(&table, &ev);
                                done += 1;
                                backoff.reset();
                            }
                            None => idle(&backoff),
                        }
                    }
                    t.elapsed()
                })
                .join()
                .expect("consumer")
            })
        }
        System::CrossbeamChannel => {
            mp_channel::<Crossbeam>(&start, &table(Work::Tiny, &sink), per_producer, total)
        }
        System::StdMpsc => {
            mp_channel::<StdSync>(&start, &table(Work::Tiny, &sink), per_producer, total)
        }
        System::Disruptor => {
            let builder = disruptor::build_multi_producer(CAPACITY, Ev::default, BusySpin);
            let (mut poller, builder) = builder.new_event_poller();
            let producer = builder.build();
            let table = table(Work::Tiny, &sink);
            thread::scope(|s| {
                for _ in 0..MP_PRODUCERS {
                    let mut producer = producer.clone();
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        let backoff = Backoff::new();
                        for i in 0..per_producer {
                            // `publish` would busy-spin with no yield when full; with three
                            // threads on two cores that measures the scheduler, so retry with
                            // the same backoff as the ArrayQueue producers.
                            while producer.try_publish(|slot| *slot = event(i)).is_err() {
                                idle(&backoff);
                            }
                            backoff.reset();
                        }
                    });
                }
                drop(producer);
                s.spawn(|| {
                    start.wait();
                    let t = Instant::now();
                    let backoff = Backoff::new();
                    let mut done = 0;
                    while done < total {
                        match poller.poll() {
                            Ok(mut events) => {
                                for ev in &mut events {
                                    dispatch(&table, ev);
                                    done += 1;
                                }
                                backoff.reset();
                            }
                            Err(Polling::NoEvents) => idle(&backoff),
                            Err(Polling::Shutdown) => break,
                        }
                    }
                    t.elapsed()
                })
                .join()
                .expect("consumer")
            })
        }
        other => unreachable!("{other:?} is not in W-mp"),
    };
    assert_eq!(
        sink.total(),
        total,
        "{} lost or duplicated events",
        system.name()
    );
    elapsed
}

/// The systems W-latency compares.
pub const LATENCY_SYSTEMS: [System; 5] = [
    System::Ringbus,
    System::ArrayQueue,
    System::CrossbeamChannel,
    System::StdMpsc,
    System::Disruptor,
];

/// W-latency: one producer thread stamps `n` events [`LATENCY_GAP`] apart, one consumer thread
/// busy-polls (ringbus: spins on `publish()`); the handler records `now - stamp`. Returns the
/// `n` latencies in ns, sorted. Both sides spin without yielding, as a latency-sensitive
/// deployment would; each system's blocking consumer idiom (`recv`) is not used, since parking
/// and waking would dominate a 1 µs gap.
pub fn latency_run(system: System, n: usize) -> Vec<u64> {
    let sink = Sink::new(n);
    let start = Barrier::new(2);
    let stamped = |i: u64| {
        let mut ev = event(i);
        ev.b = sink.now_ns();
        ev
    };
    // Paces the producer: waits until event `i`'s send time, then makes it.
    let paced = |t0: Instant, i: u64| {
        let due = t0 + LATENCY_GAP * i as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        stamped(i)
    };
    let n64 = n as u64;
    match system {
        System::Ringbus => {
            // ReturnError and retry, like the ArrayQueue peer's push loop: a consumer
            // preempted for a whole lap must not lose samples (DropOldest would, and the run
            // would never end), and no producer ever parks, so publishing skips `Block`'s
            // wake-up check.
            let store = store(
                Work::Latency,
                &sink,
                OverrunPolicy::ReturnError,
                DispatchMode::Sync,
            );
            thread::scope(|s| {
                s.spawn(|| {
                    start.wait();
                    let t0 = Instant::now();
                    for i in 0..n64 {
                        let mut ev = paced(t0, i);
                        while let Err(EnqueueError::Full(back)) = store.enqueue(ev) {
                            ev = back;
                        }
                    }
                });
                start.wait();
                let mut done = 0;
                while done < n64 {
                    done += store.publish().dispatched;
                }
            });
        }
        System::ArrayQueue => {
            let q = ArrayQueue::new(CAPACITY);
            let table = table(Work::Latency, &sink);
            thread::scope(|s| {
                s.spawn(|| {
                    start.wait();
                    let t0 = Instant::now();
                    for i in 0..n64 {
                        let mut ev = paced(t0, i);
                        while let Err(back) = q.push(ev) {
                            ev = back;
                        }
                    }
                });
                start.wait();
                let mut done = 0;
                while done < n64 {
                    if let Some(ev) = q.pop() {
                        dispatch(&table, &ev);
                        done += 1;
                    }
                }
            });
        }
        System::CrossbeamChannel => {
            latency_channel::<Crossbeam>(&start, &table(Work::Latency, &sink), n64, &paced)
        }
        System::StdMpsc => {
            latency_channel::<StdSync>(&start, &table(Work::Latency, &sink), n64, &paced)
        }
        System::Disruptor => {
            let builder = disruptor::build_single_producer(CAPACITY, Ev::default, BusySpin);
            let (mut poller, builder) = builder.new_event_poller();
            let mut producer = builder.build();
            let table = table(Work::Latency, &sink);
            thread::scope(|s| {
                let start = &start;
                let paced = &paced;
                s.spawn(move || {
                    start.wait();
                    let t0 = Instant::now();
                    for i in 0..n64 {
                        let ev = paced(t0, i);
                        producer.publish(|slot| *slot = ev);
                    }
                });
                start.wait();
                let mut done = 0;
                while done < n64 {
                    if let Ok(mut events) = poller.poll() {
                        for ev in &mut events {
                            dispatch(&table, ev);
                            done += 1;
                        }
                    }
                }
            });
        }
        other => unreachable!("{other:?} is not in W-latency"),
    }
    assert_eq!(
        sink.total(),
        n64,
        "{} lost or duplicated events",
        system.name()
    );
    sink.sorted_samples()
}

/// The `q`-quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// The two channel peers behind one face, so that their W-mp and W-latency runners are
/// written once.
trait Channel {
    type Tx: Clone + Send;
    type Rx: Send;
    fn bounded() -> (Self::Tx, Self::Rx);
    fn send(tx: &Self::Tx, ev: Ev);
    /// Blocks for the next event; `None` once every sender is gone.
    fn recv(rx: &Self::Rx) -> Option<Ev>;
    fn try_recv(rx: &Self::Rx) -> Option<Ev>;
}

/// `crossbeam_channel::bounded`.
struct Crossbeam;

impl Channel for Crossbeam {
    type Tx = crossbeam_channel::Sender<Ev>;
    type Rx = crossbeam_channel::Receiver<Ev>;
    fn bounded() -> (Self::Tx, Self::Rx) {
        crossbeam_channel::bounded(CAPACITY)
    }
    fn send(tx: &Self::Tx, ev: Ev) {
        tx.send(ev).expect("receiver alive");
    }
    fn recv(rx: &Self::Rx) -> Option<Ev> {
        rx.recv().ok()
    }
    fn try_recv(rx: &Self::Rx) -> Option<Ev> {
        rx.try_recv().ok()
    }
}

/// `std::sync::mpsc::sync_channel`.
struct StdSync;

impl Channel for StdSync {
    type Tx = std_mpsc::SyncSender<Ev>;
    type Rx = std_mpsc::Receiver<Ev>;
    fn bounded() -> (Self::Tx, Self::Rx) {
        std_mpsc::sync_channel(CAPACITY)
    }
    fn send(tx: &Self::Tx, ev: Ev) {
        tx.send(ev).expect("receiver alive");
    }
    fn recv(rx: &Self::Rx) -> Option<Ev> {
        rx.recv().ok()
    }
    fn try_recv(rx: &Self::Rx) -> Option<Ev> {
        rx.try_recv().ok()
    }
}

/// W-mp on a channel: `MP_PRODUCERS` senders, one receiver thread; returns the receiver's time.
fn mp_channel<C: Channel>(
    start: &Barrier,
    table: &Table,
    per_producer: u64,
    total: u64,
) -> Duration {
    let (tx, rx) = C::bounded();
    thread::scope(|s| {
        for _ in 0..MP_PRODUCERS {
            let tx = tx.clone();
            s.spawn(move || {
                start.wait();
                for i in 0..per_producer {
                    C::send(&tx, event(i));
                }
            });
        }
        drop(tx);
        // `move`: a std `Receiver` is `Send` but not `Sync`.
        s.spawn(move || {
            start.wait();
            let t = Instant::now();
            let mut done = 0;
            while let Some(ev) = C::recv(&rx) {
                dispatch(table, &ev);
                done += 1;
            }
            assert_eq!(done, total);
            t.elapsed()
        })
        .join()
        .expect("consumer")
    })
}

/// W-latency on a channel: one paced sender, the calling thread busy-polls.
fn latency_channel<C: Channel>(
    start: &Barrier,
    table: &Table,
    n: u64,
    paced: &(impl Fn(Instant, u64) -> Ev + Sync),
) {
    let (tx, rx) = C::bounded();
    thread::scope(|s| {
        s.spawn(move || {
            start.wait();
            let t0 = Instant::now();
            for i in 0..n {
                C::send(&tx, paced(t0, i));
            }
        });
        start.wait();
        let mut done = 0;
        while done < n {
            if let Some(ev) = C::try_recv(&rx) {
                dispatch(table, &ev);
                done += 1;
            }
        }
    });
}

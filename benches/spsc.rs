//! SPSC bursts, disruptor style: one producer thread publishes a burst of 1, 10 or 100 events,
//! then spins until the consumer thread has handled all of them (a counter the handler bumps).
//! Reported per event: a burst of 1 is a round trip (latency), a burst of 100 mostly
//! throughput. ringbus: its single `Producer` (`enqueue` each) and a dedicated consumer thread
//! (`spawn_consumer(BusySpin)`); the `disruptor` crate: `build_single_producer` (`publish`
//! each) and a `BusySpin` handler thread.
//!
//! ```text
//! cargo bench --bench spsc -- --quick    # seconds
//! ```

use std::hint::spin_loop;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use crossbeam_utils::CachePadded;
use disruptor::{BusySpin, Producer as _};
use ringbus::{ConsumerThread, Dispatcher, EventStore, OverrunPolicy, WaitStrategy};

/// Events a burst, one bench each.
const BURSTS: [u64; 3] = [1, 10, 100];
/// Ring size of both systems.
const CAPACITY: usize = 1 << 16;

/// The event: its index in the run.
#[derive(Debug, Clone, Copy, Default)]
struct Tick {
    value: u64,
}

impl ringbus::Event for Tick {
    type Projection = ();
    fn projection(&self) {}
}

/// What the consumer's handler saw: written by the consumer thread only, so it counts with a
/// plain store, no read-modify-write.
#[derive(Default)]
struct Seen {
    handled: CachePadded<AtomicU64>,
    out_of_order: AtomicU64,
}

impl Seen {
    /// The handler: event `n` must be the `n`th handled (each exactly once, in order).
    #[inline(always)]
    fn record(&self, ev: &Tick) {
        let n = self.handled.load(Ordering::Relaxed);
        if ev.value != n {
            self.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        self.handled.store(n + 1, Ordering::Release);
    }

    /// The producer's wait for its burst.
    #[inline(always)]
    fn wait_for(&self, n: u64) {
        while self.handled.load(Ordering::Acquire) < n {
            spin_loop();
        }
    }

    /// Outside the timed part: every one of `published` handled once, in order.
    fn check(&self, published: u64, system: &str) {
        assert_eq!(self.handled.load(Ordering::Acquire), published, "{system}");
        assert_eq!(self.out_of_order.load(Ordering::Relaxed), 0, "{system}");
    }
}

/// A producer end with its consumer thread running.
trait Spsc: Sized {
    const NAME: &'static str;
    fn start(seen: &Arc<Seen>) -> Self;
    fn publish(&mut self, value: u64);
    /// Stops the consumer thread once it has handled all `published`.
    fn stop(self, published: u64);
}

struct Ringbus {
    producer: ringbus::Producer<Tick>,
    consumer: ConsumerThread,
}

impl Spsc for Ringbus {
    const NAME: &'static str = "ringbus";

    fn start(seen: &Arc<Seen>) -> Self {
        let mut dispatcher = Dispatcher::new();
        let seen = Arc::clone(seen);
        dispatcher.on((), move |_, ev: &Tick| {
            seen.record(ev);
            Ok(())
        });
        let (store, producer) = EventStore::builder(dispatcher)
            .capacity(CAPACITY)
            .policy(OverrunPolicy::ReturnError)
            .build_with_producer()
            .expect("a power-of-two capacity");
        let consumer = store.spawn_consumer(WaitStrategy::BusySpin);
        Self { producer, consumer }
    }

    #[inline(always)]
    fn publish(&mut self, value: u64) {
        self.producer
            .enqueue(Tick { value })
            .expect("room: the last burst was handled");
    }

    fn stop(self, published: u64) {
        let store = self.producer.store();
        store.close(Duration::from_secs(5)).expect("nothing left");
        self.consumer.join();
        let m = store.metrics();
        assert!(m.is_balanced() && m.processed == published && m.dropped == 0);
    }
}

struct Disruptor(disruptor::SingleProducer<Tick, disruptor::SingleConsumerBarrier>);

impl Spsc for Disruptor {
    const NAME: &'static str = "disruptor";

    fn start(seen: &Arc<Seen>) -> Self {
        let seen = Arc::clone(seen);
        let producer = disruptor::build_single_producer(CAPACITY, Tick::default, BusySpin)
            .handle_events_with(move |ev: &Tick, _, _| seen.record(ev))
            .build();
        Self(producer)
    }

    #[inline(always)]
    fn publish(&mut self, value: u64) {
        self.0.publish(|slot| slot.value = value);
    }

    /// Dropping the producer stops and joins the handler thread.
    fn stop(self, _: u64) {}
}

/// Bursts of `burst` events through `S`, timed from the first publish to the last handled.
fn bench<S: Spsc>(group: &mut BenchmarkGroup<'_, WallTime>, burst: u64) {
    let seen = Arc::new(Seen::default());
    let mut system = S::start(&seen);
    let mut next = 0;
    group.throughput(Throughput::Elements(burst));
    group.bench_function(BenchmarkId::new(S::NAME, burst), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for value in next..next + burst {
                    system.publish(value);
                }
                next += burst;
                seen.wait_for(next);
            }
            let elapsed = start.elapsed();
            seen.check(next, S::NAME);
            elapsed
        })
    });
    system.stop(next);
    seen.check(next, S::NAME);
}

fn spsc(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc-burst");
    for burst in BURSTS {
        bench::<Ringbus>(&mut group, burst);
        bench::<Disruptor>(&mut group, burst);
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = spsc
}
criterion_main!(benches);

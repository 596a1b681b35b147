//! A game-style tick loop: 10,000 entities emit a few kinds of events every tick, and the loop
//! calls `publish()` once per tick. Runs the same simulation in each dispatch mode and prints
//! throughput, tick-time percentiles and the metrics snapshot.
//!
//! ```text
//! cargo run --release --example tick_loop [-- --ticks 1000 --entities 10000]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringbus::{
    DispatchMode, Dispatcher, Event, EventStore, Health, Metrics, OverrunPolicy, ProjectionLatency,
    ProjectionMetrics,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// Every entity, every tick.
    Moved,
    /// One entity in 8: took a hit.
    Damaged,
    /// One entity in 64: its AI plans (the expensive handler, ~2 µs of work).
    Planned,
    /// One entity in 1,000: reached zero health.
    Died,
}

#[derive(Debug, Clone, Copy)]
struct GameEvent {
    kind: Kind,
    entity: u32,
    x: f32,
    y: f32,
}

impl Event for GameEvent {
    type Projection = Kind;
    fn projection(&self) -> Kind {
        self.kind
    }
}

/// Per-entity state the handlers write, as a game's systems would: each event touches its own
/// entity, so parallel handlers do not fight over shared cache lines.
struct World {
    /// Packed position of each entity, written by `Moved`.
    position: Vec<AtomicU64>,
    /// Health of each entity, lowered by `Damaged`.
    health: Vec<AtomicU64>,
    /// Last plan of each entity, written by `Planned`.
    plan: Vec<AtomicU64>,
    deaths: AtomicU64,
}

impl World {
    fn new(entities: u32) -> Self {
        let column = |init: u64| (0..entities).map(|_| AtomicU64::new(init)).collect();
        Self {
            position: column(0),
            health: column(u64::MAX),
            plan: column(0),
            deaths: AtomicU64::new(0),
        }
    }
}

fn dispatcher(world: &Arc<World>) -> Dispatcher<GameEvent> {
    let mut d = Dispatcher::<GameEvent>::new();
    let w = world.clone();
    d.on(Kind::Moved, move |_, ev| {
        let packed = (u64::from(ev.x.to_bits()) << 32) | u64::from(ev.y.to_bits());
        w.position[ev.entity as usize].store(packed, Ordering::Relaxed);
        Ok(())
    });
    let w = world.clone();
    d.on(Kind::Damaged, move |_, ev| {
        w.health[ev.entity as usize].fetch_sub(u64::from(ev.entity % 13), Ordering::Relaxed);
        Ok(())
    });
    let w = world.clone();
    d.on(Kind::Planned, move |_, ev| {
        // A stand-in for path finding: a couple of microseconds of arithmetic.
        let mut h = u64::from(ev.entity);
        for _ in 0..500 {
            h = std::hint::black_box(h.wrapping_mul(6364136223846793005) ^ (h >> 29));
        }
        w.plan[ev.entity as usize].store(h, Ordering::Relaxed);
        Ok(())
    });
    let w = world.clone();
    d.on(Kind::Died, move |_, _| {
        w.deaths.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    d
}

struct Run {
    mode: DispatchMode,
    events: u64,
    total: Duration,
    tick_p50: Duration,
    tick_p99: Duration,
    metrics: Metrics,
    /// Sampled latencies per projection (1 event in [`SAMPLE_EVERY`]).
    latency: Vec<ProjectionLatency>,
    /// Events per projection.
    projections: Vec<ProjectionMetrics>,
    /// The health check after the last tick (before `close`, which would make it unhealthy).
    health: Health,
}

/// One event in this many has its wait in the ring and its handlers' time sampled.
const SAMPLE_EVERY: u64 = 64;

fn simulate(mode: DispatchMode, ticks: u32, entities: u32) -> Run {
    let world = Arc::new(World::new(entities));
    let capacity = (entities as usize * 2).next_power_of_two();
    let store = EventStore::builder(dispatcher(&world))
        .capacity(capacity)
        .policy(OverrunPolicy::Block)
        .mode(mode)
        .sample_latency(SAMPLE_EVERY)
        .build()
        .expect("capacity and sampling rate are powers of two");

    let mut tick_times = Vec::with_capacity(ticks as usize);
    let start = Instant::now();
    for tick in 0..ticks {
        let tick_start = Instant::now();
        for entity in 0..entities {
            let x = (entity % 100) as f32 + tick as f32 * 0.1;
            let y = (entity / 100) as f32;
            let emit = |kind| {
                store
                    .enqueue(GameEvent { kind, entity, x, y })
                    .expect("Block waits for room and the store is open");
            };
            emit(Kind::Moved);
            if (entity + tick) % 8 == 0 {
                emit(Kind::Damaged);
            }
            if (entity + tick) % 64 == 0 {
                emit(Kind::Planned);
            }
            if (entity * 7 + tick) % 1_000 == 0 {
                emit(Kind::Died);
            }
        }
        store.publish();
        tick_times.push(tick_start.elapsed());
    }
    store
        .drain(Duration::from_secs(30))
        .expect("async batches finish within 30 s");
    let health = store.health();
    store
        .close(Duration::from_secs(30))
        .expect("close drains within 30 s");
    let total = start.elapsed();

    tick_times.sort_unstable();
    let pct = |p: f64| tick_times[((tick_times.len() - 1) as f64 * p) as usize];
    let metrics = store.metrics();
    assert!(metrics.is_balanced(), "every event accounted for");
    assert_eq!(metrics.processed, metrics.published, "nothing lost");
    Run {
        mode,
        events: metrics.published,
        total,
        tick_p50: pct(0.50),
        tick_p99: pct(0.99),
        metrics,
        latency: store.latency(),
        projections: store.projection_metrics(),
        health,
    }
}

/// A duration in microseconds, one decimal.
fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// The sampled latencies, the counts per projection and the health of one run.
fn print_observability(r: &Run) {
    println!(
        "\n{:?}: sampled latencies (1 event in {SAMPLE_EVERY}), microseconds",
        r.mode
    );
    println!(
        "  {:<9} {:<5} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "projection", "stage", "samples", "p50", "p90", "p99", "p99.9", "max"
    );
    for l in &r.latency {
        for (stage, s) in [("wait", &l.wait), ("run", &l.run)] {
            println!(
                "  {:<9} {:<5} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}",
                l.projection,
                stage,
                s.count,
                us(s.p50),
                us(s.p90),
                us(s.p99),
                us(s.p999),
                us(s.max)
            );
        }
    }
    let lost: u64 = r.latency.iter().map(|l| l.wait_lost).sum();
    if lost > 0 {
        println!("  ({lost} waits lost: async batches started after their stamps were reused)");
    }
    let counts: Vec<String> = r
        .projections
        .iter()
        .map(|p| format!("{}={}", p.projection, p.processed))
        .collect();
    println!("  processed per projection: {}", counts.join(" "));
    let h = &r.health;
    println!(
        "  health: {} (backlog {:.0}%, error rate {:.1}%{})",
        if h.healthy { "healthy" } else { "UNHEALTHY" },
        h.backlog * 100.0,
        h.error_rate * 100.0,
        if h.reasons.is_empty() {
            String::new()
        } else {
            format!(", {:?}", h.reasons)
        }
    );
}

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn main() {
    let ticks = arg("--ticks", 1_000);
    let entities = arg("--entities", 10_000);
    println!(
        "ringbus tick loop: {entities} entities, {ticks} ticks, {} rayon threads",
        rayon::current_num_threads()
    );
    println!(
        "events per tick: every entity moves; 1/8 take damage; 1/64 plan (~2 µs handler); 1/1000 die\n"
    );
    let runs: Vec<Run> = [
        DispatchMode::Sync,
        DispatchMode::Parallel,
        DispatchMode::Async,
    ]
    .into_iter()
    .map(|mode| simulate(mode, ticks, entities))
    .collect();

    println!(
        "{:<9} {:>12} {:>14} {:>10} {:>12} {:>12}",
        "mode", "events", "events/s", "ns/event", "tick p50", "tick p99"
    );
    for r in &runs {
        let secs = r.total.as_secs_f64();
        println!(
            "{:<9} {:>12} {:>14.0} {:>10.1} {:>12.1?} {:>12.1?}",
            format!("{:?}", r.mode),
            r.events,
            r.events as f64 / secs,
            secs * 1e9 / r.events as f64,
            r.tick_p50,
            r.tick_p99,
        );
    }
    println!("\nmetrics after close:");
    for r in &runs {
        let m = &r.metrics;
        println!(
            "{:<9} published={} processed={} failed={} dropped={} unrouted={} pending={} in_flight={} rejected={}",
            format!("{:?}", r.mode),
            m.published,
            m.processed,
            m.failed,
            m.dropped,
            m.unrouted,
            m.pending,
            m.in_flight,
            m.rejected
        );
    }
    for r in &runs {
        print_observability(r);
    }
    println!(
        "\nAsync's tick time is only the hand-off: its handlers finish on the pool, and events/s \
         counts until close() has drained them."
    );
}

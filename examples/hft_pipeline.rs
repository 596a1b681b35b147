//! A market-data pipeline: one feed thread puts quotes, trades and book updates in through the
//! store's single `Producer` (no CAS per event), and the store's own consumer thread
//! (`spawn_consumer`, busy-spinning) runs the projections: last trade price and VWAP per
//! symbol, counters, and a latency recorder (handler-side now - the feed's stamp).
//!
//! ```text
//! cargo run --release --example hft_pipeline                    # 1.5M events, 1 µs apart
//! cargo run --release --example hft_pipeline -- --gap-ns 0      # unpaced: throughput (latency
//!                                                               # is then a full ring's queue)
//! cargo run --release --example hft_pipeline -- --quick         # 100k events
//! ```
//!
//! Handlers are `Fn + Sync` (the consumer thread takes no `&mut` state), so the projections
//! are atomics: one writer each (the consumer thread), no lock, no contention; the main thread
//! reads them after `close`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ringbus::{Dispatcher, EventStore, OverrunPolicy, PRODUCER_LANE, WaitStrategy};

const SYMBOLS: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Quote {
    symbol: usize,
    bid: u64,
    ask: u64,
    stamp: u64,
}

#[derive(Debug, Clone, Copy)]
struct Trade {
    symbol: usize,
    price: u64,
    qty: u64,
    stamp: u64,
}

#[derive(Debug, Clone, Copy)]
struct BookUpdate {
    symbol: usize,
    price: u64,
    qty: u64,
    stamp: u64,
}

ringbus::event_enum! {
    /// What the feed sends. Prices are in ticks (integers), stamps in ns since the epoch.
    #[derive(Debug, Clone, Copy)]
    enum Market / Kind {
        Quote(Quote),
        Trade(Trade),
        Book(BookUpdate),
    }
}

impl Market {
    fn stamp(&self) -> u64 {
        match self {
            Market::Quote(q) => q.stamp,
            Market::Trade(t) => t.stamp,
            Market::Book(b) => b.stamp,
        }
    }
}

/// One symbol's projections: last trade price, VWAP (notional / volume), last quoted mid,
/// counters.
#[derive(Default)]
struct Symbol {
    last: AtomicU64,
    mid: AtomicU64,
    notional: AtomicU64,
    volume: AtomicU64,
    trades: AtomicU64,
    quotes: AtomicU64,
    book_updates: AtomicU64,
}

/// Handler-side latency, now - the feed's stamp, in a preallocated slot per event (its
/// sequence number): recording is a store.
struct Latencies {
    epoch: Instant,
    samples: Box<[AtomicU64]>,
}

impl Latencies {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

fn dispatcher(symbols: &Arc<[Symbol; SYMBOLS]>, lat: &Arc<Latencies>) -> Dispatcher<Market> {
    let mut d = Dispatcher::new();
    let s = Arc::clone(symbols);
    d.on_variant(move |_, t: &Trade| {
        let sym = &s[t.symbol];
        sym.last.store(t.price, Relaxed);
        sym.notional.fetch_add(t.price * t.qty, Relaxed);
        sym.volume.fetch_add(t.qty, Relaxed);
        sym.trades.fetch_add(1, Relaxed);
        Ok(())
    });
    let s = Arc::clone(symbols);
    d.on_variant(move |_, q: &Quote| {
        s[q.symbol].mid.store((q.bid + q.ask) / 2, Relaxed);
        s[q.symbol].quotes.fetch_add(1, Relaxed);
        Ok(())
    });
    let s = Arc::clone(symbols);
    d.on_variant(move |_, b: &BookUpdate| {
        debug_assert!(b.price > 0 && b.qty > 0);
        s[b.symbol].book_updates.fetch_add(1, Relaxed);
        Ok(())
    });
    // Catch-all handlers run after the event's own: the latency of the whole event.
    let lat = Arc::clone(lat);
    d.on_any(move |ctx, ev: &Market| {
        let slot = &lat.samples[(ctx.sequence() & !PRODUCER_LANE) as usize];
        slot.store(lat.now().saturating_sub(ev.stamp()), Relaxed);
        Ok(())
    });
    d
}

/// Event `i` of the feed: symbols round-robin; of each symbol's events 60% quotes, 25% book
/// updates, 15% trades.
fn market_event(i: u64, stamp: u64) -> Market {
    let symbol = (i % SYMBOLS as u64) as usize;
    let mid = 10_000 + (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58); // 10,000 + 0..63 ticks
    match (i / SYMBOLS as u64) % 20 {
        0..12 => Quote {
            symbol,
            bid: mid - 1,
            ask: mid + 1,
            stamp,
        }
        .into(),
        12..17 => BookUpdate {
            symbol,
            price: mid,
            qty: 100,
            stamp,
        }
        .into(),
        _ => Trade {
            symbol,
            price: mid,
            qty: 1 + i % 7,
            stamp,
        }
        .into(),
    }
}

fn arg(name: &str) -> Option<u64> {
    let mut args = std::env::args().skip_while(|a| a != name).skip(1);
    args.next().map(|v| v.parse().expect("a number"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let events = arg("--events").unwrap_or(if quick { 100_000 } else { 1_500_000 });
    let gap = Duration::from_nanos(arg("--gap-ns").unwrap_or(1_000));

    let symbols: Arc<[Symbol; SYMBOLS]> = Arc::default();
    let lat = Arc::new(Latencies {
        epoch: Instant::now(),
        samples: (0..events).map(|_| AtomicU64::new(0)).collect(),
    });
    let (store, mut producer) = EventStore::builder(dispatcher(&symbols, &lat))
        .capacity(1 << 16)
        .policy(OverrunPolicy::Block)
        .build_with_producer()?;
    let consumer = store.spawn_consumer(WaitStrategy::BusySpin);
    println!(
        "hft pipeline: {events} events {gap:?} apart (0: unpaced), {SYMBOLS} symbols, \
         single-producer lane: {}",
        producer.is_single_producer_lane()
    );

    let start = Instant::now();
    let feed = {
        let lat = Arc::clone(&lat);
        std::thread::spawn(move || {
            for i in 0..events {
                let due = start + gap * i as u32;
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                producer
                    .enqueue(market_event(i, lat.now()))
                    .expect("the store is open");
            }
        })
    };
    feed.join().expect("feed thread");
    // Closing through the consumer thread: it dispatches what is left, this thread only
    // waits, so every handler runs on the consumer thread, in order.
    consumer.close(Duration::from_secs(10))?;
    let report = consumer.join();
    let elapsed = start.elapsed();

    let m = store.metrics();
    assert!(m.is_balanced() && m.processed == events);
    assert_eq!(
        report.dispatched, events,
        "the consumer thread handled every event"
    );
    let mut samples: Vec<u64> = lat.samples.iter().map(|l| l.load(Relaxed)).collect();
    samples.sort_unstable();
    let pct = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{:.0} events/s over {elapsed:.2?}; latency p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        events as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        pct(1.0),
    );
    println!(
        "metrics: published={} processed={} failed={} dropped={} (consumer thread {})",
        m.published, m.processed, m.failed, m.dropped, report.dispatched
    );
    for (i, s) in symbols.iter().enumerate() {
        let get = |a: &AtomicU64| a.load(Relaxed);
        println!(
            "  symbol {i}: last {} mid {} vwap {:.2} trades {} quotes {} book updates {}",
            get(&s.last),
            get(&s.mid),
            get(&s.notional) as f64 / get(&s.volume).max(1) as f64,
            get(&s.trades),
            get(&s.quotes),
            get(&s.book_updates),
        );
    }
    Ok(())
}

//! A payment pipeline in front of a flaky gateway: it fails about 30% of calls (deterministically)
//! and is down for a stretch. The subscription retries with backoff (through `publish`, on the
//! tick loop: nothing sleeps), sends a permanent error straight to the dead letters and an
//! exhausted one after its last attempt, and a circuit breaker opens during the outage and
//! closes after it. Once the gateway is healthy the dead letters are replayed; the metrics close.
//!
//! ```text
//! cargo run --release --example resilient_pipeline [-- --quick]
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringbus::{
    BoxError, BreakerState, CircuitBreaker, Clock, ConsecutiveFailures, Dispatcher, Event,
    EventStore, ManualClock, Permanent, RetryPolicy,
};

/// One simulated tick of the loop: the manual clock moves by this much per `publish`.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Payment {
    id: u64,
    cents: u64,
}

impl Event for Payment {
    type Projection = &'static str;
    fn projection(&self) -> &'static str {
        "payment"
    }
}

/// The gateway: down while `down`, flaky (about 30% of calls) while `flaky`; a card id that is
/// a multiple of 97 is reported stolen, which no retry can fix.
#[derive(Default)]
struct Gateway {
    down: AtomicBool,
    flaky: AtomicBool,
    calls: AtomicU64,
    charged: AtomicU64,
}

impl Gateway {
    fn charge(&self, p: &Payment) -> Result<(), BoxError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        if p.id % 97 == 0 {
            return Err(Permanent::new(format!("card of payment {} reported stolen", p.id)).into());
        }
        if self.down.load(Ordering::Relaxed) {
            return Err("gateway unavailable".into());
        }
        // A fixed scramble of the call number: the same 30% of calls fail on every run.
        if self.flaky.load(Ordering::Relaxed)
            && call.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54 < 307
        {
            return Err("gateway timed out".into());
        }
        self.charged.fetch_add(p.cents, Ordering::Relaxed);
        Ok(())
    }
}

/// A [`ConsecutiveFailures`] breaker that prints its transitions, with the simulated time.
#[derive(Debug)]
struct Logged {
    inner: ConsecutiveFailures,
    last: Mutex<BreakerState>,
    start: Instant,
}

impl Logged {
    fn note(&self, now: Instant) {
        let state = self.inner.state(now);
        let mut last = self.last.lock().unwrap();
        if *last != state {
            let t = now - self.start;
            println!(
                "t={:5.1}s  breaker {:?} -> {state:?}",
                t.as_secs_f64(),
                *last
            );
            *last = state;
        }
    }
}

impl CircuitBreaker for Logged {
    fn allow(&self, now: Instant) -> bool {
        let allow = self.inner.allow(now);
        self.note(now);
        allow
    }
    fn record_success(&self, now: Instant) {
        self.inner.record_success(now);
        self.note(now);
    }
    fn record_failure(&self, now: Instant) {
        self.inner.record_failure(now);
        self.note(now);
    }
    fn state(&self, now: Instant) -> BreakerState {
        self.inner.state(now)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (ticks, per_tick) = if quick { (60, 3) } else { (120, 8) };
    let outage = ticks / 3..ticks / 2;

    let store = EventStore::builder(Dispatcher::<Payment>::new())
        .capacity(1024)
        .build()?;
    // Enabled before the subscription that sends its failures there.
    let letters_seen = Arc::new(Mutex::new(BTreeMap::<u32, u64>::new()));
    let seen = letters_seen.clone();
    store.enable_dead_letters(
        4096,
        Default::default(),
        Some(Box::new(move |letter| {
            *seen.lock().unwrap().entry(letter.attempts).or_default() += 1;
        })),
    )?;

    let clock = Arc::new(ManualClock::new());
    let breaker = Logged {
        inner: ConsecutiveFailures::new(5, Duration::from_secs(1), 2)?,
        last: Mutex::new(BreakerState::Closed),
        start: clock.now(),
    };
    let gateway = Arc::new(Gateway::default());
    gateway.flaky.store(true, Ordering::Relaxed);
    let g = gateway.clone();
    let _payments = store
        .subscribe("payment")
        .retry(
            RetryPolicy::new(4)
                .initial_delay(TICK * 2)
                .max_delay(TICK * 8),
        )
        .dead_letters()
        .breaker(breaker)
        .clock(clock.clone())
        .handle(move |_, p| g.charge(p))?;

    let mut made = 0;
    for tick in 0..ticks {
        gateway
            .down
            .store(outage.contains(&tick), Ordering::Relaxed);
        for _ in 0..per_tick {
            made += 1;
            store.enqueue(Payment {
                id: made,
                cents: 100 + made % 900,
            })?;
        }
        store.publish(); // new payments, and the retries now due
        clock.advance(TICK);
    }
    // The gateway is healthy again: let the last retries finish, then replay the dead letters.
    gateway.flaky.store(false, Ordering::Relaxed);
    while store.metrics().retrying > 0 {
        clock.advance(TICK);
        store.publish();
    }
    println!(
        "dead letters by attempts made: {:?}",
        letters_seen.lock().unwrap()
    );
    let letters = store.dead_letters().expect("enabled above");
    let mut permanent = Vec::new();
    letters.for_each(|l| {
        if l.attempts == 1 {
            permanent.push(l.event.id);
        }
    });
    println!("  permanent failures (first attempt): payments {permanent:?}");
    let replay = letters.replay();
    store.publish();
    println!(
        "replayed {} (refused {}); dead letters left: {} (the stolen cards, again)",
        replay.replayed,
        replay.refused,
        letters.len()
    );

    store.close(Duration::from_secs(5))?;
    let m = store.metrics();
    println!(
        "payments {made}: {} gateway calls charged ${:.2}",
        gateway.calls.load(Ordering::Relaxed),
        gateway.charged.load(Ordering::Relaxed) as f64 / 100.0,
    );
    println!("metrics: {m:?}");
    assert!(m.is_balanced(), "{m:?}");
    assert_eq!(m.retrying, 0);
    // Each payment was charged, skipped by the open breaker (final: no retry, no letter), or
    // is a dead letter: processed counts the skipped ones too.
    assert_eq!(m.processed + m.dead_letters, made);
    Ok(())
}

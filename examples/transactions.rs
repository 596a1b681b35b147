//! A game tick loop with transactions and scheduled events.
//!
//! Each tick, three "systems" run on their own threads and each builds one transaction (a
//! move, then the damage it causes, then a score update) and commits it deferred; the frame
//! then publishes, and the handler checks that every transaction's events came back to back.
//! Then a commit whose handler fails mid-transaction, and a few scheduled events, one of them
//! cancelled and one left pending at close.
//!
//! Run with `cargo run --release --example transactions`.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringbus::{CommitError, Dispatcher, Event, EventStore, OverrunPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Moved,
    Damaged,
    Scored,
    Respawn,
}

#[derive(Debug)]
struct GameEvent {
    kind: Kind,
    system: u32,
    value: i64,
}

impl Event for GameEvent {
    type Projection = Kind;
    fn projection(&self) -> Kind {
        self.kind
    }
}

const SYSTEMS: u32 = 3;
const TICKS: u32 = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // (system, kind) in dispatch order, to show that transactions stay whole.
    let log: Arc<Mutex<Vec<(u32, Kind)>>> = Arc::default();
    let mut dispatcher = Dispatcher::<GameEvent, String>::new();
    for kind in [Kind::Moved, Kind::Damaged, Kind::Scored] {
        let log = log.clone();
        dispatcher.on(kind, move |_, ev| {
            log.lock().unwrap().push((ev.system, ev.kind));
            Ok(())
        });
    }
    dispatcher.on(Kind::Damaged, |_, ev| {
        if ev.value > 100 {
            Err(format!("damage {} exceeds the cap", ev.value))
        } else {
            Ok(())
        }
    });
    let started = Instant::now();
    dispatcher.on(Kind::Respawn, move |ctx, ev| {
        println!(
            "  respawn of entity {} ran at +{} ms (sequence {})",
            ev.value,
            started.elapsed().as_millis(),
            ctx.sequence()
        );
        Ok(())
    });
    let store = EventStore::new(dispatcher, 1 << 8, OverrunPolicy::Block)?;

    println!("== tick loop: {SYSTEMS} systems commit deferred, the frame publishes");
    for tick in 0..TICKS {
        let systems: Vec<_> = (0..SYSTEMS)
            .map(|system| {
                let store = store.clone();
                thread::spawn(move || {
                    let mut tx = store.begin_transaction();
                    for (kind, value) in [(Kind::Moved, 1), (Kind::Damaged, 10), (Kind::Scored, 5)]
                    {
                        tx.push(GameEvent {
                            kind,
                            system,
                            value: value * i64::from(tick + 1),
                        });
                    }
                    tx.commit_deferred().map(|e| e.sequence)
                })
            })
            .collect();
        let firsts: Vec<u64> = systems
            .into_iter()
            .map(|s| s.join().unwrap())
            .collect::<Result<_, _>>()?;
        let report = store.publish();
        let frame = std::mem::take(&mut *log.lock().unwrap());
        let whole = frame.chunks(3).all(|tx| {
            tx.iter().all(|&(system, _)| system == tx[0].0)
                && tx
                    .iter()
                    .map(|&(_, k)| k)
                    .eq([Kind::Moved, Kind::Damaged, Kind::Scored])
        });
        let order: Vec<u32> = frame.chunks(3).map(|tx| tx[0].0).collect();
        println!(
            "tick {tick}: first sequences {firsts:?}, dispatched {}, system order {order:?}, \
             every transaction whole: {whole}",
            report.dispatched
        );
        assert!(whole);
    }

    println!("\n== a commit whose handler fails mid-transaction");
    let mut tx = store.begin_transaction();
    for (kind, value) in [(Kind::Moved, 3), (Kind::Damaged, 250), (Kind::Scored, 7)] {
        tx.push(GameEvent {
            kind,
            system: 9,
            value,
        });
    }
    match tx.commit() {
        Err(err @ CommitError::Handler { .. }) => println!("commit failed: {err}"),
        other => println!("unexpected: {other:?}"),
    }
    println!(
        "  yet all three ran, in order: {:?}",
        std::mem::take(&mut *log.lock().unwrap())
    );

    println!("\n== a transaction too big for the ring is refused, not hung");
    let mut tx = store.begin_transaction();
    tx.extend((0..300).map(|value| GameEvent {
        kind: Kind::Moved,
        system: 0,
        value,
    }));
    match tx.commit() {
        Err(err) => {
            println!("commit refused: {err}");
            let events = err.into_transaction().map_or(0, |tx| tx.len());
            println!("  {events} events handed back, ring untouched");
        }
        Ok(_) => unreachable!("300 events cannot fit in 256 slots"),
    }

    println!("\n== scheduled events");
    let respawn = |value| GameEvent {
        kind: Kind::Respawn,
        system: 0,
        value,
    };
    let slow = store.schedule_after(Duration::from_millis(60), respawn(1))?;
    let fast = store.schedule_after(Duration::from_millis(20), respawn(2))?;
    let cancelled = store.schedule_after(Duration::from_millis(40), respawn(3))?;
    let never = store.schedule_after(Duration::from_secs(3600), respawn(4))?;
    println!(
        "scheduled 4, metrics.scheduled = {}",
        store.metrics().scheduled
    );
    println!("cancel entity 3 before it fires: {}", cancelled.cancel());
    while started.elapsed() < Duration::from_millis(100) + slow.deadline().duration_since(started) {
        store.publish();
        thread::sleep(Duration::from_millis(2));
    }
    println!(
        "cancel entity 2 after it fired: {} (status {:?})",
        fast.cancel(),
        fast.status()
    );

    store.close(Duration::from_secs(1))?;
    let m = store.metrics();
    println!(
        "closed: entity 4 is {:?}; metrics scheduled {}, cancelled {}, published {}, processed \
         {}, failed {}, rejected {}, balanced {}",
        never.status(),
        m.scheduled,
        m.cancelled,
        m.published,
        m.processed,
        m.failed,
        m.rejected,
        m.is_balanced()
    );
    Ok(())
}

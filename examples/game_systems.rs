//! A game's systems on ringbus: typed events, world state without locks, and ticks that settle.
//!
//! Each tick, entities move; moving into lava damages them, and damage can kill. The chain
//! move -> damage -> die runs within the tick (`settle_with`), the world is a plain struct
//! the systems borrow mutably (`LocalDispatcher`: no `Arc`, no `Mutex`, not even `Sync`), each
//! system takes its variant's payload typed (`event_enum!` + `on_variant`), and a stats system
//! sees every event (`on_any`).
//!
//! ```text
//! cargo run --release --example game_systems
//! ```

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringbus::{
    Dispatcher, EnqueueError, Event, EventStore, LocalDispatcher, OverrunPolicy, Settle,
};

#[derive(Debug, Clone, Copy)]
struct Spawn {
    entity: usize,
    x: i32,
}

#[derive(Debug, Clone, Copy)]
struct Move {
    entity: usize,
    dx: i32,
}

#[derive(Debug, Clone, Copy)]
struct Damage {
    entity: usize,
    amount: i32,
}

#[derive(Debug, Clone, Copy)]
struct Die {
    entity: usize,
}

ringbus::event_enum! {
    /// What happens in the world.
    #[derive(Debug, Clone, Copy)]
    enum GameEvent / Kind {
        Spawned(Spawn),
        Moved(Move),
        Damaged(Damage),
        Died(Die),
    }
}

const ENTITIES: usize = 1_000;
const TICKS: u32 = 120;
/// Cells at or past this x are lava.
const LAVA: i32 = 40;

/// The world: plain fields, owned by the game loop and lent to the systems each tick.
/// `RefCell` makes it `!Sync` on purpose: the systems never need it to be.
struct World {
    x: Vec<i32>,
    hp: Vec<i32>,
    alive: Vec<bool>,
    obituaries: RefCell<Vec<(u32, usize)>>,
    tick: u32,
}

fn systems() -> LocalDispatcher<GameEvent, World> {
    let mut systems = LocalDispatcher::new();
    systems
        .on_variant(|world: &mut World, _, s: &Spawn| {
            world.x[s.entity] = s.x;
            world.hp[s.entity] = 100;
            world.alive[s.entity] = true;
            Ok(())
        })
        .on_variant(|world: &mut World, ctx, m: &Move| {
            if !world.alive[m.entity] {
                return Ok(());
            }
            world.x[m.entity] += m.dx;
            if world.x[m.entity] >= LAVA {
                // A follow-up: runs in the next round of this same tick.
                ctx.enqueue(
                    Damage {
                        entity: m.entity,
                        amount: 35,
                    }
                    .into(),
                )
                .map_err(EnqueueError::kind)?;
            }
            Ok(())
        })
        .on_variant(|world: &mut World, ctx, d: &Damage| {
            world.hp[d.entity] -= d.amount;
            if world.hp[d.entity] <= 0 && world.alive[d.entity] {
                world.alive[d.entity] = false;
                ctx.enqueue(Die { entity: d.entity }.into())
                    .map_err(EnqueueError::kind)?;
            }
            Ok(())
        })
        .on_variant(|world: &mut World, _, d: &Die| {
            let tick = world.tick;
            world.obituaries.borrow_mut().push((tick, d.entity));
            Ok(())
        });
    systems
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The stats system sees every event, from any thread: the store's own dispatcher.
    let per_kind: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let mut dispatcher = Dispatcher::<GameEvent>::new();
    let stats = per_kind.clone();
    dispatcher.on_any(move |_, ev| {
        stats[ev.projection() as usize].fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let store = EventStore::builder(dispatcher)
        .capacity(1 << 14)
        .policy(OverrunPolicy::Block)
        .build()?;

    let mut systems = systems();
    let mut world = World {
        x: vec![0; ENTITIES],
        hp: vec![0; ENTITIES],
        alive: vec![false; ENTITIES],
        obituaries: RefCell::new(Vec::new()),
        tick: 0,
    };
    for entity in 0..ENTITIES {
        store.enqueue(
            Spawn {
                entity,
                x: (entity % 20) as i32,
            }
            .into(),
        )?;
    }

    let mut rounds_max = 0;
    let mut tick_times = Vec::with_capacity(TICKS as usize);
    let mut all_settled = true;
    for tick in 0..TICKS {
        world.tick = tick;
        let started = Instant::now();
        for entity in (0..ENTITIES).filter(|&e| world.alive[e]) {
            // Entities drift right, some faster: sooner or later most reach the lava.
            let dx = 1 + (entity % 3) as i32;
            store.enqueue(Move { entity, dx }.into())?;
        }
        let report = store.settle_with(
            &mut systems,
            &mut world,
            Settle::rounds(8).within(Duration::from_millis(50)),
        );
        tick_times.push(started.elapsed());
        rounds_max = rounds_max.max(report.rounds);
        all_settled &= report.settled;
    }

    tick_times.sort();
    let alive = world.alive.iter().filter(|&&a| a).count();
    let deaths = world.obituaries.borrow();
    let kinds = ["spawned", "moved", "damaged", "died"];
    let m = store.metrics();
    println!("game_systems: {ENTITIES} entities, {TICKS} ticks");
    println!(
        "  every tick settled within its round budget: {all_settled} (at most {rounds_max} rounds: move, damage, die)"
    );
    println!("  alive at the end: {alive}, died: {}", deaths.len());
    if let Some((tick, entity)) = deaths.first() {
        println!("  first death: entity {entity} at tick {tick}, in the tick its move was made");
    }
    for (kind, n) in kinds.iter().zip(per_kind.iter()) {
        println!(
            "  stats system (on_any) saw {:>7} {kind}",
            n.load(Ordering::Relaxed)
        );
    }
    println!(
        "  tick p50 {:?}, max {:?}",
        tick_times[tick_times.len() / 2],
        tick_times[tick_times.len() - 1]
    );
    println!(
        "  metrics: published {}, processed {}, failed {}, pending {}, balanced {}",
        m.published,
        m.processed,
        m.failed,
        m.pending,
        m.is_balanced()
    );
    assert!(all_settled && m.is_balanced() && m.pending == 0);
    assert_eq!(deaths.len(), ENTITIES - alive);
    Ok(())
}

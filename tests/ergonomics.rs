//! What a new user fought (issue 10): handlers that reach their store without leaking it, state
//! without locks, typed handlers, ticks that settle, a close that lets follow-ups finish,
//! `rejected` by reason, and `?` on refusals whatever the event.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ringbus::{
    BoxError, DispatchMode, Dispatcher, EnqueueError, EnqueueErrorKind, ErrorKind, Event,
    EventStore, LocalDispatcher, OverrunPolicy, Settle, TypeKey,
};

mod support {
    pub mod deadline;
    pub mod ev;
    pub mod hostile;
    pub mod plan;
    pub mod watchdog;
}
use support::deadline::deadline;
use support::ev::Ev;
use support::hostile::{Hostile, quiet};
use support::plan::{Census, Reported, Tally};
use support::watchdog::watchdog;

const LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq)]
struct Spawn {
    entity: u32,
}
#[derive(Debug, Clone, Copy, PartialEq)]
struct Move {
    entity: u32,
    x: i32,
}
#[derive(Debug, Clone, Copy, PartialEq)]
struct Damage {
    entity: u32,
    amount: i32,
}
#[derive(Debug, Clone, Copy, PartialEq)]
struct Die {
    entity: u32,
}

ringbus::event_enum! {
    /// A game's events: each variant carries its own payload type.
    #[derive(Debug, Clone, Copy)]
    enum Game / GameKind {
        Spawned(Spawn),
        Moved(Move),
        Damaged(Damage),
        Died(Die),
    }
}

/// Sets a flag when dropped: what a handler captured.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_handler_enqueues_follow_ups_through_its_context_and_the_store_still_drops() {
    watchdog("context_no_leak", LIMIT, |_| {
        let dropped = Arc::new(AtomicBool::new(false));
        let discarded = Arc::new(AtomicU64::new(0));
        let captured = DropFlag(dropped.clone());
        let mut dispatcher = Dispatcher::<Game>::new();
        dispatcher.on_variant(move |ctx, hit: &Damage| {
            let _keep = &captured; // the handler's state, freed with the store
            ctx.enqueue(Die { entity: hit.entity }.into())?;
            ctx.store().enqueue(
                Spawn {
                    entity: hit.entity + 100,
                }
                .into(),
            )?;
            Ok(())
        });
        let counted = discarded.clone();
        let store = EventStore::builder(dispatcher)
            .capacity(16)
            .on_error(move |report| {
                if matches!(report.kind, ErrorKind::Discarded) {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build()
            .unwrap();
        store
            .enqueue(
                Damage {
                    entity: 1,
                    amount: 5,
                }
                .into(),
            )
            .unwrap();
        assert_eq!(store.publish().processed, 1);
        assert_eq!(store.pending(), 2, "both follow-ups are in the ring");
        let weak_probe = store.clone();
        drop(weak_probe);
        assert!(!dropped.load(Ordering::SeqCst));
        drop(store); // the user's last handle
        assert!(
            dropped.load(Ordering::SeqCst),
            "the store and its handlers are freed"
        );
        assert_eq!(
            discarded.load(Ordering::SeqCst),
            2,
            "pending follow-ups reported"
        );
    });
}

#[test]
fn typed_handlers_take_their_payload_and_catch_all_sees_everything() {
    watchdog("typed", LIMIT, |_| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let all = Arc::new(AtomicU64::new(0));
        let mut dispatcher = Dispatcher::<Game>::new();
        let log = seen.clone();
        dispatcher.on_variant(move |_, m: &Move| {
            log.lock().unwrap().push(m.x);
            Ok(())
        });
        let count = all.clone();
        dispatcher.on_any(move |ctx, ev| {
            assert_eq!(*ctx.projection(), ev.projection());
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        assert_eq!(dispatcher.handler_count(&GameKind::Moved), 2);
        assert_eq!(dispatcher.handler_count(&GameKind::Died), 1);
        let store = EventStore::new(dispatcher, 16, OverrunPolicy::ReturnError).unwrap();
        store.enqueue(Move { entity: 1, x: 3 }.into()).unwrap();
        store.enqueue(Spawn { entity: 2 }.into()).unwrap();
        store.enqueue(Move { entity: 1, x: -4 }.into()).unwrap();
        let report = store.publish();
        assert_eq!((report.processed, report.unrouted), (3, 0));
        assert_eq!(*seen.lock().unwrap(), [3, -4]);
        assert_eq!(all.load(Ordering::SeqCst), 3);

        // Without a catch-all, an event with no handler stays unrouted.
        let store =
            EventStore::new(Dispatcher::<Game>::new(), 4, OverrunPolicy::ReturnError).unwrap();
        store.enqueue(Die { entity: 9 }.into()).unwrap();
        assert_eq!(store.publish().unrouted, 1);
    });
}

#[test]
fn on_type_takes_one_type_argument() {
    let _deadline = deadline("on_type_takes_one_type_argument", LIMIT);
    struct Created;
    struct Deleted;
    struct Keyed(TypeKey);
    impl Event for Keyed {
        type Projection = TypeKey;
        fn projection(&self) -> TypeKey {
            self.0
        }
    }
    let hits = Arc::new(AtomicU64::new(0));
    let mut dispatcher = Dispatcher::<Keyed>::new();
    let h = hits.clone();
    dispatcher.on_type::<Created>(move |_, _| {
        h.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let store = EventStore::new(dispatcher, 4, OverrunPolicy::ReturnError).unwrap();
    store.enqueue(Keyed(TypeKey::of::<Created>())).unwrap();
    store.enqueue(Keyed(TypeKey::of::<Deleted>())).unwrap();
    let report = store.publish();
    assert_eq!((report.processed, report.unrouted), (1, 1));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// The game tick: move -> damage -> die chains settle in one call, and the world state is a
/// plain struct with `Rc` / `RefCell` / `Cell` fields: neither `Send` nor `Sync`.
#[test]
fn a_tick_settles_follow_up_chains_with_lock_free_local_state() {
    watchdog("settle_local", LIMIT, |_| {
        struct World {
            hp: Vec<i32>,
            x: Vec<i32>,
            log: Rc<RefCell<Vec<String>>>,
            deaths: Cell<u32>,
        }
        let store = EventStore::new(Dispatcher::<Game>::new(), 64, OverrunPolicy::Block).unwrap();
        let mut systems = LocalDispatcher::<Game, World>::new();
        systems
            .on_variant(|world, ctx, m: &Move| {
                world.x[m.entity as usize] += m.x;
                if world.x[m.entity as usize] > 10 {
                    // Walked into lava.
                    ctx.enqueue(
                        Damage {
                            entity: m.entity,
                            amount: 60,
                        }
                        .into(),
                    )
                    .map_err(EnqueueError::kind)?;
                }
                Ok(())
            })
            .on_variant(|world, ctx, d: &Damage| {
                let hp = &mut world.hp[d.entity as usize];
                *hp -= d.amount;
                if *hp <= 0 {
                    ctx.enqueue(Die { entity: d.entity }.into())
                        .map_err(EnqueueError::kind)?;
                }
                Ok(())
            })
            .on_variant(|world, _, d: &Die| {
                world.deaths.set(world.deaths.get() + 1);
                world.log.borrow_mut().push(format!("{} died", d.entity));
                Ok(())
            });
        let mut world = World {
            hp: vec![100, 50, 100],
            x: vec![0; 3],
            log: Rc::default(),
            deaths: Cell::new(0),
        };
        // Tick 1: entity 1 walks into lava and dies, all within the tick.
        store.enqueue(Move { entity: 1, x: 11 }.into()).unwrap();
        store.enqueue(Move { entity: 0, x: 2 }.into()).unwrap();
        let tick = store.settle_with(&mut systems, &mut world, Settle::rounds(8));
        assert!(tick.settled);
        assert_eq!(tick.rounds, 3, "move, then damage, then die");
        assert_eq!(tick.publish.processed, 4);
        assert_eq!((world.hp[1], world.deaths.get()), (-10, 1));
        assert_eq!(*world.log.borrow(), ["1 died"]);

        // A chain longer than the round limit stops there and says so.
        store.enqueue(Move { entity: 2, x: 20 }.into()).unwrap();
        let cut = store.settle_with(&mut systems, &mut world, Settle::rounds(1));
        assert_eq!((cut.rounds, cut.settled, store.pending()), (1, false, 1));
        let rest = store.settle_with(&mut systems, &mut world, Settle::rounds(8));
        assert!(rest.settled);
        assert_eq!(world.hp[2], 40, "damaged once, not dead");
        assert!(store.metrics().is_balanced());
    });
}

#[test]
fn settle_stops_at_its_time_budget_and_works_in_every_mode() {
    watchdog("settle_modes", LIMIT, |_| {
        for mode in [
            DispatchMode::Sync,
            DispatchMode::Parallel,
            DispatchMode::Async,
        ] {
            let mut dispatcher = Dispatcher::<Ev>::new();
            dispatcher.on(0, |ctx, ev| {
                if ev.index > 0 {
                    ctx.enqueue(Ev::new(ev.producer, ev.index - 1))
                        .map_err(EnqueueError::kind)?;
                }
                Ok(())
            });
            let store = EventStore::builder(dispatcher)
                .capacity(64)
                .mode(mode)
                .build()
                .unwrap();
            for producer in 0..10 {
                store.enqueue(Ev::new(producer, 5)).unwrap();
            }
            let report = store.settle(Settle::rounds(100));
            assert!(report.settled, "{mode:?}");
            assert_eq!(report.publish.dispatched, 60, "{mode:?}");
            assert_eq!(store.metrics().processed, 60, "{mode:?}");

            // An endless chain: the time budget ends it.
            store.enqueue(Ev::new(0, u64::MAX)).unwrap();
            let budget = store.settle(Settle::rounds(u32::MAX).within(Duration::from_millis(30)));
            assert!(!budget.settled, "{mode:?}");
            assert!(budget.rounds > 1, "{mode:?}");
            store.close(Duration::from_secs(5)).ok();
        }
    });
}

#[test]
fn local_handlers_run_after_the_stores_and_panics_in_either_are_contained() {
    watchdog("local_panics", LIMIT, |_| {
        let mut dispatcher = Dispatcher::<Ev>::new();
        dispatcher.on(0, |_, ev| {
            if ev.index == 1 {
                panic!("store handler panics on 1");
            }
            Ok(())
        });
        let store = EventStore::new(dispatcher, 8, OverrunPolicy::ReturnError).unwrap();
        let mut locals = LocalDispatcher::<Ev, Vec<(u64, &str)>>::new();
        locals
            .on(0, |seen, _, ev| {
                seen.push((ev.index, "a"));
                if ev.index == 2 {
                    panic!("local handler panics on 2");
                }
                Ok(())
            })
            .on(0, |seen, _, ev| {
                seen.push((ev.index, "b"));
                if ev.index == 3 {
                    return Err(BoxError::from("b refuses 3"));
                }
                Ok(())
            });
        let mut seen = Vec::new();
        for i in 0..4 {
            store.enqueue(Ev::new(0, i)).unwrap();
        }
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let report = store.publish_with(&mut locals, &mut seen);
        std::panic::set_hook(quiet);
        assert_eq!(
            seen,
            [
                (0, "a"),
                (0, "b"),
                (1, "a"),
                (1, "b"),
                (2, "a"),
                (2, "b"),
                (3, "a"),
                (3, "b")
            ],
            "every handler ran, the store's first, after each panic the next one"
        );
        assert_eq!((report.processed, report.failed), (1, 3));
        assert_eq!(report.handler_errors, 3);
        let m = store.metrics();
        assert_eq!((m.panics, m.failed), (2, 3));
        assert!(m.is_balanced());
    });
}

/// The service's shutdown: 22 orders accepted before `close`, each a three-step chain of
/// follow-ups, all complete during the close; outside enqueues during it are refused; after
/// it, even follow-ups are refused, counted by reason.
#[test]
fn close_lets_handlers_follow_ups_finish_then_seals() {
    watchdog("close_follow_ups", LIMIT, |_| {
        for mode in [
            DispatchMode::Sync,
            DispatchMode::Parallel,
            DispatchMode::Async,
        ] {
            for policy in [
                OverrunPolicy::DropOldest,
                OverrunPolicy::Block,
                OverrunPolicy::ReturnError,
            ] {
                let done = Arc::new(AtomicU64::new(0));
                let refused_outside = Arc::new(AtomicU64::new(0));
                let mut dispatcher = Dispatcher::<Ev>::new();
                let finished = done.clone();
                let refused = refused_outside.clone();
                dispatcher.on(0, move |ctx, ev| {
                    // An outside-style enqueue from a handler is refused once close began.
                    if ctx.store().is_closed()
                        && ev.key == 0
                        && ctx.store().enqueue(Ev { key: 9, ..*ev }).is_err()
                    {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    match ev.index {
                        3 => {
                            finished.fetch_add(1, Ordering::SeqCst);
                        }
                        step if step % 2 == 0 => {
                            ctx.enqueue(Ev::new(ev.producer, step + 1))
                                .map_err(EnqueueError::kind)?;
                        }
                        step => {
                            let mut tx = ctx.begin_transaction();
                            tx.push(Ev::new(ev.producer, step + 1));
                            tx.commit_deferred().map_err(|e| e.to_string())?;
                        }
                    }
                    Ok(())
                });
                let store = EventStore::builder(dispatcher)
                    .capacity(64)
                    .mode(mode)
                    .policy(policy)
                    .build()
                    .unwrap();
                for order in 0..22 {
                    store.enqueue(Ev::new(order, 0)).unwrap();
                }
                let report = store.close(Duration::from_secs(10)).unwrap();
                assert_eq!(done.load(Ordering::SeqCst), 22, "{mode:?} {policy:?}");
                assert!(report.dispatched >= 22, "{mode:?} {policy:?}");
                let m = store.metrics();
                assert_eq!((m.published, m.processed), (88, 88), "{mode:?} {policy:?}");
                assert_eq!(
                    m.rejected_closed,
                    refused_outside.load(Ordering::SeqCst),
                    "{mode:?} {policy:?}"
                );
                assert!(m.is_balanced());

                // Sealed: a follow-up from a handler run by a later publish is refused.
                assert!(matches!(
                    store.enqueue(Ev::new(99, 0)),
                    Err(EnqueueError::Closed(_))
                ));
                let before = store.metrics().rejected_closed;
                assert_eq!(before, m.rejected_closed + 1);
            }
        }
    });
}

#[test]
fn a_follow_up_batch_gets_in_during_close() {
    let _deadline = deadline("a_follow_up_batch_gets_in_during_close", LIMIT);
    let mut dispatcher = Dispatcher::<Ev>::new();
    dispatcher.on(0, |ctx, ev| {
        if ev.index == 0 {
            let mut batch: Vec<Ev> = (1..=3).map(|i| Ev::new(ev.producer, i)).collect();
            ctx.enqueue_batch(&mut batch).map_err(|e| e.to_string())?;
            assert!(batch.is_empty());
            // The same batch through the store's outside door is refused while closing.
            let mut outside = vec![Ev::new(ev.producer, 9)];
            assert!(ctx.store().enqueue_batch(&mut outside).is_err());
        }
        Ok(())
    });
    let store = EventStore::new(dispatcher, 8, OverrunPolicy::DropOldest).unwrap();
    store.enqueue(Ev::new(7, 0)).unwrap();
    store.close(Duration::from_secs(5)).unwrap();
    let m = store.metrics();
    assert_eq!((m.published, m.processed, m.rejected_closed), (4, 4, 1));
    let mut late = vec![Ev::new(8, 0)];
    assert!(store.enqueue_batch(&mut late).is_err());
}

/// Found by a second reader: `close` judged "quiet" from two separate reads (nothing in flight,
/// then nothing pending), so another thread's `publish` could take a follow-up between them and
/// run its handler after the seal: its own follow-up refused, though `close` returned `Ok`.
/// Chains of 400 follow-ups, a thread spinning on `publish`, `close` on this one; about 1% of
/// trials lost follow-ups before the fix.
#[test]
fn close_racing_a_spinning_publisher_never_cuts_a_chain() {
    watchdog("close_vs_spinning_publisher", LIMIT, |abort| {
        let started = std::time::Instant::now();
        let mut trials = 0;
        while trials < 3_000 && started.elapsed() < Duration::from_secs(3) {
            trials += 1;
            let refused = Arc::new(AtomicU64::new(0));
            let mut dispatcher = Dispatcher::<Ev>::new();
            let r = refused.clone();
            dispatcher.on(0, move |ctx, ev| {
                if ev.index > 0 && ctx.enqueue(Ev::new(ev.producer, ev.index - 1)).is_err() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            });
            let store = EventStore::new(dispatcher, 64, OverrunPolicy::ReturnError).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let publisher = {
                let (store, stop) = (store.clone(), stop.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        store.publish();
                    }
                })
            };
            for chain in 0..4 {
                store.enqueue(Ev::new(chain, 400)).unwrap();
            }
            let closed = store.close(Duration::from_secs(20));
            stop.store(true, Ordering::Relaxed);
            publisher.join().unwrap();
            assert!(closed.is_ok());
            let m = store.metrics();
            assert_eq!(
                (refused.load(Ordering::Relaxed), m.rejected),
                (0, 0),
                "trial {trials}: close returned Ok but cut a chain: {m:?}"
            );
            assert_eq!(m.processed, 4 * 401);
            if abort.load(Ordering::Relaxed) {
                break;
            }
        }
    });
}

/// Found by a second reader: under `Block`, a handler fanning out more follow-ups than the ring
/// holds made `close(timeout)` and a timed `settle` hang forever (the follow-up waited for room
/// without a deadline, and only the waiting thread could make room). Follow-ups now wait no
/// longer than the context's deadline, and `Context::enqueue_timeout` bounds them elsewhere.
#[test]
fn a_block_fan_out_of_follow_ups_cannot_hold_close_or_settle_past_their_time() {
    watchdog("block_fan_out", LIMIT, |_| {
        let timed_out = Arc::new(AtomicU64::new(0));
        let mut dispatcher = Dispatcher::<Ev>::new();
        let t = timed_out.clone();
        dispatcher.on(0, move |ctx, ev| {
            if ev.index == 0 {
                for i in 1..=8 {
                    if let Err(EnqueueError::Timeout(_)) = ctx.enqueue(Ev::new(ev.producer, i)) {
                        t.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            Ok(())
        });
        let store = EventStore::new(dispatcher, 4, OverrunPolicy::Block).unwrap();
        store.enqueue(Ev::new(0, 0)).unwrap();
        let started = std::time::Instant::now();
        let _ = store.settle(Settle::rounds(100).within(Duration::from_millis(100)));
        assert!(started.elapsed() < Duration::from_secs(5), "settle held");
        assert!(timed_out.load(Ordering::SeqCst) > 0);
        // The follow-ups that fitted are still pending: let them run (they fan out no more).
        assert!(store.settle(Settle::rounds(10)).settled);

        store.enqueue(Ev::new(1, 0)).unwrap();
        let started = std::time::Instant::now();
        let _ = store.close(Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(5), "close held");
        let m = store.metrics();
        assert_eq!(m.rejected_timeout, timed_out.load(Ordering::SeqCst));
        assert!(m.is_balanced(), "{m:?}");

        // Without a deadline, `enqueue_timeout` bounds the wait.
        let mut dispatcher = Dispatcher::<Ev>::new();
        dispatcher.on(0, |ctx, ev| {
            if ev.index == 0 {
                for i in 1..=8 {
                    let _ = ctx.enqueue_timeout(Ev::new(ev.producer, i), Duration::from_millis(5));
                }
            }
            Ok(())
        });
        let store = EventStore::new(dispatcher, 4, OverrunPolicy::Block).unwrap();
        store.enqueue(Ev::new(2, 0)).unwrap();
        assert_eq!(store.publish().processed, 1);
        assert_eq!(store.metrics().rejected_timeout, 4, "4 fit, 4 timed out");
    });
}

#[test]
fn rejected_is_split_by_reason() {
    let _deadline = deadline("rejected_is_split_by_reason", LIMIT);
    let store = EventStore::new(Dispatcher::<Ev>::new(), 2, OverrunPolicy::ReturnError).unwrap();
    store.enqueue(Ev::new(0, 0)).unwrap();
    store.enqueue(Ev::new(0, 1)).unwrap();
    assert_eq!(
        store.enqueue(Ev::new(0, 2)).map_err(EnqueueError::kind),
        Err(EnqueueErrorKind::Full)
    );
    let mut big = vec![Ev::new(1, 0); 3];
    assert!(store.enqueue_batch(&mut big).is_err()); // larger than the ring: counted full
    let blocking = EventStore::new(Dispatcher::<Ev>::new(), 1, OverrunPolicy::Block).unwrap();
    blocking.enqueue(Ev::new(0, 0)).unwrap();
    assert!(matches!(
        blocking.enqueue_timeout(Ev::new(0, 1), Duration::from_millis(5)),
        Err(EnqueueError::Timeout(_))
    ));
    let m = blocking.metrics();
    assert_eq!((m.rejected_timeout, m.rejected), (1, 1));
    store.close(Duration::from_secs(1)).unwrap();
    assert!(store.enqueue(Ev::new(0, 3)).is_err());
    let m = store.metrics();
    assert_eq!(
        (m.rejected_full, m.rejected_closed, m.rejected_timeout),
        (4, 1, 0)
    );
    assert_eq!(m.rejected, 5);
}

/// Producers keep enqueueing from outside while `close` runs and handlers add follow-ups, on
/// tiny rings, with more threads than cores, with hostile events (5 in 16, heads and follow-ups
/// alike: `projection()` panics, the handler panics after its step with a string or with a
/// payload whose `Drop` panics, `Drop` panics): every event is accounted for, every accepted
/// chain ends (finished, cut by an eviction or by its projection's panic, or its follow-up
/// refused for want of room), every planned panic of an accepted event is counted and reported
/// once, and nothing gets in after `close` returns. (Not under `Block`: a handler that blocks on
/// its own full store while every publisher is inside a handler deadlocks, as the crate docs
/// warn; `Block` follow-ups during close are in the test above.)
#[test]
fn close_races_outside_producers_while_follow_ups_finish() {
    quiet();
    watchdog("close_race", LIMIT, |abort| {
        let mut told_in_all = Census::default();
        for capacity in [1usize, 2, 4] {
            for policy in [OverrunPolicy::DropOldest, OverrunPolicy::ReturnError] {
                let chains_done = Arc::new(AtomicU64::new(0));
                let follow_up_refused = Arc::new(AtomicU64::new(0));
                let (ran, follow_ups) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
                let reported = Arc::new(Reported::default());
                let mut dispatcher = Dispatcher::<Hostile>::new();
                let (done, refused) = (chains_done.clone(), follow_up_refused.clone());
                let (r, f) = (ran.clone(), follow_ups.clone());
                dispatcher.on(0, move |ctx, hostile| {
                    let ev = hostile.ev;
                    r.record(&ev);
                    if ev.index < 2 {
                        let next = Ev::new(ev.producer, ev.index + 1);
                        match ctx.enqueue(Hostile::planned(next)) {
                            Ok(_) => f.record(&next),
                            Err(e) => {
                                e.into_inner().defuse();
                                refused.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    } else {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    hostile.act(); // after the chain's step: a panic here does not cut it
                    Ok(())
                });
                let store = EventStore::builder(dispatcher)
                    .capacity(capacity)
                    .policy(policy)
                    .on_error(reported.hook())
                    .build()
                    .unwrap();
                let producers: Vec<_> = (0..4)
                    .map(|p| {
                        let store = store.clone();
                        let abort = abort.clone();
                        thread::spawn(move || {
                            let (mut accepted, mut planned) = (0u64, Census::default());
                            for i in 0..2_000u64 {
                                if abort.load(Ordering::Relaxed) {
                                    break;
                                }
                                let ev = Ev::new(p * 10_000 + i, 0);
                                let r = store.enqueue_timeout(
                                    Hostile::planned(ev),
                                    Duration::from_millis(50),
                                );
                                match r {
                                    Ok(_) => {
                                        accepted += 1;
                                        planned += Census::of(&ev);
                                    }
                                    Err(EnqueueError::Closed(back)) => {
                                        back.defuse();
                                        break;
                                    }
                                    Err(e) => {
                                        e.into_inner().defuse();
                                    }
                                }
                                if i % 64 == 0 {
                                    thread::yield_now();
                                }
                            }
                            (accepted, planned)
                        })
                    })
                    .collect();
                let publishers: Vec<_> = (0..2)
                    .map(|_| {
                        let store = store.clone();
                        thread::spawn(move || {
                            while !store.is_closed() {
                                store.publish();
                                thread::yield_now();
                            }
                        })
                    })
                    .collect();
                thread::sleep(Duration::from_millis(5));
                store.close(Duration::from_secs(20)).unwrap();
                let (mut accepted, mut planned) = (0, Census::default());
                for producer in producers {
                    let (a, p) = producer.join().unwrap();
                    accepted += a;
                    planned += p;
                }
                for p in publishers {
                    p.join().unwrap();
                }
                let m = store.metrics();
                let tag = format!("{capacity} {policy:?}");
                assert!(m.is_balanced(), "{tag}: {m:?}");
                assert_eq!(m.pending + m.in_flight, 0, "{tag}");
                let (ran_events, ran) = ran.get();
                let (follow_ups, planned_follow_ups) = follow_ups.get();
                planned += planned_follow_ups;
                let told = reported.census();
                // Events whose `projection()` panicked never reach the handler.
                let bad_projections = told.projection_panics;
                assert_eq!(ran.projection_panics, 0, "{tag}");
                assert_eq!(m.published, accepted + follow_ups, "{tag}: {m:?}");
                assert_eq!(
                    ran_events + bad_projections + m.dropped,
                    m.published,
                    "{tag}: {m:?}"
                );
                // Each accepted chain ends exactly once: it finished, one of its events was
                // evicted or failed in its projection, or a follow-up was refused (full ring).
                assert_eq!(
                    chains_done.load(Ordering::SeqCst)
                        + follow_up_refused.load(Ordering::SeqCst)
                        + m.dropped
                        + bad_projections,
                    accepted,
                    "{tag}: {m:?}"
                );
                // Each failed event failed once: in its handler, or in its projection.
                let failures = ran.in_handlers() + bad_projections;
                assert_eq!(
                    (m.failed, m.handler_errors, m.panics),
                    (failures, failures, failures),
                    "{tag}: {m:?}"
                );
                // Every accepted event, head or follow-up, is dropped by the store once.
                assert_eq!(m.drop_panics, planned.drop_panics, "{tag}: {m:?}");
                // The hook was told of nothing unplanned, and of each panic once, by kind.
                assert_eq!(reported.unexpected(), Vec::<String>::new(), "{tag}");
                assert_eq!(
                    told,
                    Census {
                        drop_panics: planned.drop_panics,
                        projection_panics: bad_projections,
                        ..ran
                    },
                    "{tag}"
                );
                match policy {
                    // Evicting makes room: no follow-up is refused before the seal. The
                    // planned projection panics that did not happen were evicted.
                    OverrunPolicy::DropOldest => {
                        assert_eq!(follow_up_refused.load(Ordering::SeqCst), 0);
                        let evicted = planned.projection_panics.checked_sub(bad_projections);
                        assert!(evicted.is_some_and(|e| e <= m.dropped), "{tag}: {m:?}");
                    }
                    // Nothing evicted: every accepted event's plan came true.
                    _ => {
                        assert_eq!(m.dropped, 0);
                        assert_eq!(told, planned, "{tag}");
                    }
                }
                assert!(
                    store
                        .enqueue(Hostile::new(Ev::new(0, 0), false, false))
                        .is_err()
                );
                told_in_all += told;
            }
        }
        // Not vacuous: every kind of misbehaviour happened.
        let c = told_in_all;
        assert!(
            [
                c.projection_panics,
                c.handler_panics,
                c.bomb_panics,
                c.drop_panics
            ]
            .iter()
            .all(|&n| n > 0),
            "{c:?}"
        );
    });
}

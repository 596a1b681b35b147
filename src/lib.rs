//! A lock-free, power-of-two ring-buffer event dispatcher for low-latency loops.
//!
//! Any thread [`enqueue`](EventStore::enqueue)s events into a ring of 2^n slots; a
//! [`Dispatcher`] maps each event's *projection* (its routing key) to handlers; and
//! [`publish`](EventStore::publish) takes what is pending out of the ring and runs the handlers,
//! in the caller, fork-join on rayon, or handed off to rayon ([`DispatchMode`]). It is the Rust
//! answer to Go's GoEventBus: same model, stored by value, and every event accounted for.
//!
//! ```
//! use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
//!
//! #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
//! enum Kind { Spawned, Moved }
//! struct GameEvent { kind: Kind, entity: u32 }
//! impl Event for GameEvent {
//!     type Projection = Kind;
//!     fn projection(&self) -> Kind { self.kind }
//! }
//!
//! let mut dispatcher = Dispatcher::<GameEvent>::new();
//! dispatcher.on(Kind::Moved, |ctx, ev| {
//!     println!("entity {} moved (event #{})", ev.entity, ctx.sequence());
//!     Ok(())
//! });
//! let store = EventStore::new(dispatcher, 1 << 10, OverrunPolicy::DropOldest)?;
//! store.enqueue(GameEvent { kind: Kind::Moved, entity: 7 })?;
//! store.enqueue(GameEvent { kind: Kind::Spawned, entity: 8 })?; // no handler: unrouted
//! let report = store.publish();
//! assert_eq!((report.dispatched, report.processed, report.unrouted), (2, 1, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The ring
//! A bounded MPMC ring (Vyukov's algorithm, reshaped for batches; see `src/ring.rs`). Events are
//! stored by value: no `Box`, no `Arc`, no allocation per event. Enqueue is one CAS on the tail
//! counter plus a slot write; a publisher claims up to 256 events with one CAS on the head
//! counter and copies them out before running any handler, so a handler may enqueue (or even
//! publish) without deadlocking on its own slots. Head and tail sit on separate cache lines.
//!
//! # Progress guarantees
//! Per path, what a thread may wait for (tests: `tests/stress.rs`'s oversubscription section
//! runs every policy with more threads than cores on rings of 1, 2 and 4 slots):
//! - **`publish`** never waits for a producer: it takes only events already written. It is
//!   lock-free. In [`DispatchMode::Parallel`] it then waits for its own fork-join: for
//!   chunks that pool threads have started, never for a pool thread to start one.
//! - **`enqueue` with room** is lock-free: one CAS on the tail, then the write. The write may
//!   wait for the previous lap's publisher to finish copying that slot out (a bounded copy of
//!   at most 256 events, no user code), so a publisher descheduled mid-copy delays it by as
//!   long as that thread is off the CPU; nothing else does.
//! - **`DropOldest` on a full ring** evicts only an event already written, and only while the
//!   ring is full: it never claims a slot and then waits for its writer, so no thread holds a
//!   claim while waiting for another (the chains of waits across laps that used to collapse
//!   throughput under oversubscription cannot form). If the oldest event is still being
//!   written, the producer retries (spinning, then yielding) until that write lands.
//! - **A `DropOldest` batch** ([`enqueue_batch`](EventStore::enqueue_batch), transaction
//!   commits) that finds no room raises the ring's *gate*: until the batch has evicted what it
//!   needs and claimed its slots, other enqueues wait for it (spinning, then yielding), so a
//!   stream of single enqueues cannot keep it evicting forever. The gate holder waits only for
//!   events already claimed to be written (never for a publisher or user code: the events it
//!   evicts are dropped after the gate is down), so waiting on it never waits on a publisher.
//!   One batch holds the gate at a time; a batch thread descheduled while holding it delays
//!   the others for as long.
//! - **A `Block` batch** waits for room for all its events, like a single `Block` enqueue for
//!   one. It is not starvation-free: single enqueues may take freed slots first, so a stream
//!   of them that keeps the ring nearly full can hold a batch back for as long as it lasts;
//!   [`enqueue_batch_timeout`](EventStore::enqueue_batch_timeout) bounds the wait. (Holding
//!   singles back for the batch would make them wait for publishers with room in the ring,
//!   which deadlocks a thread, or a handler, that both enqueues and publishes.)
//! - **`Block` on a full ring** parks until a publisher makes room (or the deadline, or
//!   `close`).
//! - **[`Producer::enqueue`] with room** (the single producer's lane) is wait-free: a plain
//!   store of the tail, no read-modify-write and no retry loop; its write waits, as above, only
//!   for a publisher still copying the previous lap's event out of that slot. A full lane goes
//!   to the overrun policy as on the shared ring (an eviction is one CAS on the lane's head).
//! - **`publish_wait`** is `publish`, then, on an empty ring, spins, yields and parks until a
//!   producer's claim wakes it (no lost wake-up: loom `publish_wait_is_woken_by_a_producer`),
//!   its timeout, or the seal.
//! - **`close`, a transaction's `commit`** wait for enqueues already in progress ahead of them
//!   (nanoseconds, unless that producer is descheduled; for the single producer, `close` waits
//!   while it is between its check of the closed mark and its tail store, a few instructions,
//!   after one `membarrier` system call), and `close` / `drain` for in-flight
//!   handlers. On a thread of the store's dispatch pool ([`Builder::thread_pool`]), `drain`
//!   and `close` run the pool's pending jobs while they wait, so they never wait for work
//!   queued behind themselves; without a pool of its own (rayon's global pool), they run the
//!   jobs queued on their own thread, never a job of an unrelated pool.
//! - **Observing** ([`metrics`](EventStore::metrics), [`projection_metrics`](EventStore::projection_metrics),
//!   [`latency`](EventStore::latency), [`health`](EventStore::health)) never makes a
//!   publisher or producer wait: `metrics` is a few atomic loads; the others take short
//!   mutexes (the projection registry, each histogram, the health records) that publishers
//!   take only on rare paths: a projection without a route met for the first time (by a
//!   publisher or an eviction), a sampled event (one in `every`, for one histogram record).
//!   Past `2 * MAX_PROJECTIONS` projections without a route, new ones are counted under
//!   [`OVERFLOW`] without the lock. A sampled event's
//!   publisher may wait for a reader copying that histogram (microseconds).
//!
//! # Consumers
//! A thread that only consumes need not spin on `publish` nor sleep-poll:
//! [`EventStore::publish_wait`] publishes, or sleeps until a producer puts an event in (or its
//! timeout, or the seal of `close`). [`EventStore::spawn_consumer`] runs such a loop on a
//! thread of the store's, with an explicit [`WaitStrategy`] (busy-spin, spin-then-yield, or
//! spin-yield-park, the low-CPU default), until the store is closed;
//! [`ConsumerThread::close`] closes the store leaving the dispatching to that thread, so every
//! handler runs there, in order. The wake-up costs the
//! enqueue path one plain load (x86) of a counter of sleeping consumers: the claim itself is
//! the full barrier the handshake needs (`src/wait.rs`); for the single producer's fence-free
//! claim, the consumer pays one `membarrier` each time it goes to sleep instead.
//!
//! # A single producer
//! [`Builder::build_with_producer`] returns the store and its one [`Producer`]: `Send`, not
//! `Clone`, enqueueing through `&mut self`, so the compiler guarantees it is alone on its
//! *lane*, a second ring its claims write with a plain store instead of the CAS every other
//! producer pays (`lock cmpxchg` on x86: most of an uncontended enqueue's cost). The store's
//! own `enqueue`, handlers' follow-ups, the timer and transactions keep using the shared ring;
//! publishers and consumers take from both lanes, the producer's first. `close` and a consumer
//! going to sleep meet the producer's fence-free claim through an asymmetric barrier: the
//! producer pays a compiler fence, they pay a Linux `membarrier` (`src/barrier.rs`). Where that
//! is unavailable (not Linux, or filtered by a sandbox) the producer claims on the shared ring,
//! with the same semantics ([`Producer::is_single_producer_lane`] says which).
//!
//! # Routing
//! When the store is built, the dispatcher's routes are frozen into a small open-addressed table
//! (at least twice as many slots as projections, hashed with one multiply per word), so routing
//! an event usually costs one multiply and one key comparison rather than a general hash-map
//! probe. Catch-all handlers ([`Dispatcher::on_any`]) are appended to every route and serve
//! projections without one, so they cost a lookup nothing. The table is an atomically swapped
//! snapshot (`arc_swap`): a publisher loads it once per chunk of up to 256 events, lock-free,
//! and [runtime subscriptions](#subscriptions-and-failure-handling) rebuild and swap it.
//!
//! # Subscriptions and failure handling
//! [`EventStore::subscribe`] adds a handler at run time, while other threads enqueue and
//! publish; its [`SubscriptionBuilder`] sets what go-events, gossip and event v3 users rely on:
//! - a [filter](SubscriptionBuilder::filter) per subscription, and a store-wide one
//!   ([`Builder::filter`], counted in [`Metrics::filtered`]);
//! - [`once`](SubscriptionBuilder::once): exactly one event, even under parallel publishers;
//! - [retries](SubscriptionBuilder::retry) by a [`RetryPolicy`] (attempts, exponential
//!   backoff with a cap, optional jitter): the one failed handler runs again later, on a
//!   publishing thread (`publish`, `settle`, `publish_wait` and the consumer thread run the
//!   due ones; `close` runs those still waiting at once), never a sleeping one unless the
//!   policy is inline; an error that is not [`Retryable`] ([`Permanent`]) skips them;
//! - [dead letters](SubscriptionBuilder::dead_letters): a failure given up on goes to the
//!   store's bounded queue ([`EventStore::enable_dead_letters`]) with the event, projection,
//!   subscription, last error, attempts and time; it can be listed, drained and
//!   [replayed](DeadLetters::replay);
//! - a [circuit breaker](SubscriptionBuilder::breaker) ([`CircuitBreaker`],
//!   [`ConsecutiveFailures`]): while open, calls are skipped ([`Metrics::skipped`]);
//! - a [time budget](SubscriptionBuilder::deadline) per call, seen as the context's deadline,
//!   a [`HandlerFailure::Timeout`] when exceeded;
//! - a [`Clock`] to read time from ([`ManualClock`] in tests: no sleeps).
//!
//! Handlers of one projection run in order: the dispatcher's, then subscriptions in
//! subscription order, then the catch-all ones. A subscription made or removed while a publish
//! runs is seen from that publish's next chunk on. [`Subscription::unsubscribe`] returns only
//! once no call of the handler is in progress and none will start (it waits for the chunks
//! that had loaded the old table), except when called from a handler, where it cannot wait for
//! its own run. An event one of whose handlers has a retry pending is counted in
//! [`Metrics::retrying`] until the retry ends, then in `processed`, `failed` or
//! [`dead_lettered`](Metrics::dead_lettered). A store that uses none of this pays one load of
//! the table per chunk, one branch per handler call and one per publish.
//!
//! # Ordering
//! - Every accepted event gets a unique [sequence number](Context::sequence) (0, 1, 2, ...), its
//!   position in the store's single total order. Events of one producer are in its program order;
//!   a [batch](EventStore::enqueue_batch) is contiguous. A store with a [`Producer`] has two
//!   lanes, each with its own order and numbering: the producer's sequences carry the
//!   [`PRODUCER_LANE`] bit, and between the two lanes there is no order (a publish takes the
//!   producer lane's events first, then the shared ring's).
//! - `publish` dispatches the events whose enqueue completed before it was called (its snapshot
//!   of the tail, of each lane), in order, stopping early only at an enqueue that another thread has begun
//!   (claimed its sequence) but not finished: that event and the ones behind it wait for the
//!   next call. A publisher never waits for a producer, so a producer preempted mid-enqueue
//!   cannot stall it. In particular, every event enqueued by threads that have all returned from
//!   `enqueue` before `publish` is called is dispatched by that call.
//! - Events enqueued while `publish` runs, by handlers or other threads, wait for the next call,
//!   so a handler that re-enqueues cannot make one `publish` run forever.
//! - `close` and a transaction's `commit` do wait for in-progress enqueues ahead of them (a few
//!   nanoseconds unless that thread is preempted), since they promise to dispatch everything up
//!   to their point.
//! - [`DispatchMode::Sync`] with one publishing thread runs handlers in sequence order. Several
//!   threads may call `publish` at once: each event is dispatched by exactly one of them, in
//!   chunks of up to 256 consecutive events, each chunk in order. [`DispatchMode::Parallel`] and
//!   [`DispatchMode::Async`] promise no order between events.
//! - The handlers of one event run one after another, in registration order, on one thread.
//!
//! # Overrun
//! When the ring is full, the [`OverrunPolicy`] decides: `DropOldest` (the default) discards the
//! oldest pending event and says so in [`Enqueued::dropped`] and [`Metrics::dropped`]. It
//! evicts only while the ring is full at the moment of the eviction (fewer free slots than the
//! enqueue needs) and only events already written, and `Enqueued::dropped` counts exactly the
//! events that call evicted; `Block`
//! spins, yields, then parks until a publisher makes room ([`EventStore::enqueue_timeout`] bounds
//! the wait); `ReturnError` returns [`EnqueueError::Full`] with the event. Every refusal hands
//! the event back.
//!
//! # Handlers
//! - **By projection**: [`Dispatcher::on`]; by marker type: [`Dispatcher::on_type`]; every
//!   event: [`Dispatcher::on_any`] (after the projection's own handlers).
//! - **Typed payloads**: [`event_enum!`] declares an enum whose variants carry one payload
//!   type each, with its projection enum; [`Dispatcher::on_variant`] then hands a handler the
//!   payload typed (`|ctx, hit: &Damage|`), with no `match`, no `unreachable!()`, no boxing.
//! - **Reaching the store**: a handler's [`Context`] lends it its own store
//!   ([`Context::store`]) and enqueues follow-ups ([`Context::enqueue`], `enqueue_batch`,
//!   `begin_transaction`), so no handler needs to capture a handle (which would keep the store
//!   alive forever: the store owns its handlers).
//! - **State without locks**: a [`LocalDispatcher`] holds `FnMut` handlers that get the
//!   caller's `&mut S` (neither `Send` nor `Sync` needed); [`EventStore::publish_with`] runs
//!   them on the calling thread after the store's own handlers, whatever the mode.
//! - **Settling a tick**: [`EventStore::settle`] (and `settle_with`) publishes round after
//!   round until the follow-ups handlers enqueue have run too, within a round limit and an
//!   optional time budget ([`Settle`]), and says whether the store went quiet.
//!
//! # Handlers, errors and panics
//! A handler gets a [`Context`] (sequence, projection, the publish's deadline, its store) and
//! `&E`, and returns `Result<(), Err>` with the user's error type. Every handler of an event runs even if
//! an earlier one failed. A panic is caught (`catch_unwind`) and counted like an error, and the
//! store keeps working; errors and panics go to the [`Builder::on_error`] hook with the
//! projection, the sequence and the error or panic message. An event whose projection has no
//! handler is counted as unrouted.
//!
//! No user code unwinds out of the store: a panic in an event's `projection()` (the event
//! counts as failed, reported without a projection), in an event's `Drop` (wherever the store
//! drops it: after its handlers, on eviction, when the store or the timer discards it; counted
//! in [`Metrics::drop_panics`] and reported as [`ErrorKind::DropPanic`]), in the `on_error` hook
//! (ignored), or in the `Drop` of a panic payload (the nested payload is leaked) is caught
//! where it happens, and `publish`, `enqueue`, `close`, dropping the store and the timer thread
//! carry on with exact accounting.
//!
//! **What a panic costs.** A caught panic still runs the process's panic hook first, on the
//! dispatching thread, before the store sees it: std's default hook prints the message, and
//! with `RUST_BACKTRACE=1` (or `full`) captures and symbolizes a backtrace, which took 63 ms
//! in one measurement on a 2-vCPU VM, a whole tick stalled. Return `Err` for failures you
//! expect (they cost nothing of the sort); for code that may panic in production, install a
//! hook of your own that stays cheap ([`std::panic::set_hook`]), or run without
//! `RUST_BACKTRACE`.
//!
//! # Parallel dispatch
//! [`DispatchMode::Parallel`] first takes 32 events of the batch, runs 16 of them in the caller
//! and times them. If the rest would take under 50 µs at that rate, it runs in the caller too,
//! exactly as a sync publish runs it (chunks of up to 256): waking rayon's workers costs tens
//! of microseconds, more than tiny handlers save, so a batch too cheap to fork costs the probe
//! (its timing and its own claim) and nothing more. If it would take longer, 16 more events
//! are timed and the cheaper estimate is kept (a preemption during one probe must not fork a
//! cheap batch), and if the rest is still worth it, it is taken in one claim and cut into
//! chunks of about 10 µs each (at least 4 per pool thread), which the caller and up to one
//! fewer helpers than the pool has threads take as they come. The caller starts on them at
//! once and waits only for chunks a helper has already started, never for a pool thread to
//! wake up or become free: with the pool busy, or its threads slow to wake, the caller runs the
//! batch itself, at the cost of the spawn. Batches of 32 events or fewer always run in the
//! caller. The estimate is made afresh for every publish (and every async batch), so it
//! follows the handlers' real cost.
//!
//! # Async dispatch and backpressure
//! [`DispatchMode::Async`] hands batches to the pool and returns; at most
//! [`Builder::max_in_flight`] events (default: the ring's capacity) are handed out and not yet
//! finished. A `publish` at that bound hands out only what fits; the rest of what was pending
//! when it was called stays in the ring, and the pool's jobs hand it out themselves as they
//! finish and free room under the bound. So every event enqueued before an async `publish` is
//! dispatched by it, paced by the pool, without another call, and a thread that both enqueues
//! and publishes is never left waiting for itself. While the pool is behind, the ring fills
//! and producers meet the overrun policy: `Block` waits (for the jobs to make room),
//! `ReturnError` refuses, `DropOldest` evicts. Handlers run by `close` see its deadline
//! ([`Context::deadline`]) in every mode. A handler that `Block`-enqueues follow-ups into its
//! own store can still deadlock: once the ring is full and the bound is held by handlers
//! waiting for room, no job finishes to hand out the events that would make it. As in every
//! mode, a handler should not block on its own store without a deadline
//! ([`Context::enqueue_timeout`], `DropOldest` or `ReturnError`).
//!
//! # Accounting
//! Each event accepted by the store ends up in exactly one of: processed, failed,
//! dead-lettered, filtered (the store-wide filter), dropped, unrouted, or still pending / in
//! flight / held for a retry (`retrying`). So once the store is quiescent, `published ==
//! processed + failed + dead_lettered + filtered + dropped + unrouted + pending + in_flight +
//! retrying` ([`Metrics::is_balanced`]), and `in_flight == 0` after a successful
//! [`drain`](EventStore::drain).
//! Refused events are counted in [`Metrics::rejected`], split by reason
//! (`rejected_full`, `rejected_closed`, `rejected_timeout`), and are not part of `published`. [`Metrics::drop_panics`] counts panics in the `Drop` of events (or
//! of their projections); each such event is also in exactly one of the outcomes above, so it
//! is outside the sum. Scheduled events join the sum when they fire (see [`Metrics`]).
//! Counters are updated once per batch, so metrics cost the hot path nothing.
//!
//! **Per projection** ([`EventStore::projection_metrics`]) an event is counted once its
//! projection is known: when a publisher runs it, or when `DropOldest` evicts it. For each
//! projection, `published == processed + failed + dead_lettered + dropped + unrouted +
//! retrying` ([`ProjectionMetrics::is_balanced`]); over the store, with nothing in flight,
//! `Metrics::published == Σ published + filtered + pending` plus the events whose
//! `projection()` panicked (counted store-wide only, like filtered ones, which never have
//! their projection computed). Publishers count processed events per route in a local array
//! and add the totals once per run; the rare outcomes go straight to the projection's
//! atomics. [`Metrics::depth_high_water`] is the deepest a lane was seen.
//!
//! **Latency** ([`Builder::sample_latency`], off by default): one event in `every` has its
//! wait in the ring (enqueue to handler start) and its handlers' run time recorded in its
//! projection's HdrHistograms ([`EventStore::latency`]); a wait whose enqueue stamp was
//! reused before the run is counted lost, never guessed.
//!
//! **Health** ([`EventStore::health`], go-events' `HealthCheck`): the backlog, the error rate
//! over a window, dead letters, open breakers and a closed store, against
//! [`HealthThresholds`].
//!
//! # Shutdown
//! [`close`](EventStore::close) lets accepted work finish, in three steps, within its timeout:
//! 1. It closes the intake atomically with respect to every outside enqueue: an enqueue either
//!    got in before the close (and is dispatched by it, unless a `DropOldest` producer racing
//!    the close evicted it, which counts it as dropped) or fails with
//!    [`EnqueueError::Closed`], event handed back, including producers blocked under `Block`.
//!    It stops the timer: scheduled events still waiting are cancelled (counted in
//!    [`Metrics::cancelled`]).
//! 2. It dispatches everything pending and waits for in-flight work, over and over while
//!    handlers add follow-ups through their [`Context`] (`ctx.enqueue`, `ctx.enqueue_batch`,
//!    `ctx.begin_transaction`), which the closing store still accepts, until nothing is
//!    pending or in flight.
//! 3. It seals the store: from then on follow-ups are refused too.
//!
//! On timeout what is left stays pending (the store is closed to outside producers, not
//! sealed), and a later `publish` or `close` dispatches it. `publish` and `drain` keep working
//! after close.
//!
//! Dropping the last handle of a store (async batches hold one until they finish) drops the
//! events still pending without running their handlers: each one's destructor runs exactly
//! once, and each is reported to the [`Builder::on_error`] hook as [`ErrorKind::Discarded`]
//! first. Call `close` before dropping to dispatch them instead.
//!
//! # Transactions
//! [`begin_transaction`](EventStore::begin_transaction) returns a [`Transaction`] that buffers
//! events off the ring ([`push`](Transaction::push)); its commit puts them all in the ring with
//! one claim, as [`enqueue_batch`](EventStore::enqueue_batch) does: consecutive sequences, no
//! other producer's event between them, never half visible (a batch is stamped back to front,
//! so a publisher sees none of it or all of it), or nothing at all (the refusal hands
//! the transaction back in a [`CommitError`]; a transaction larger than the ring is refused
//! under every policy).
//! - [`commit`](Transaction::commit) then dispatches in the caller, whatever the mode: the events
//!   pending before the transaction, then the transaction's, then it stops. Every handler runs
//!   even after a failure; the first failing event of the transaction is reported with its index
//!   ([`CommitError::Handler`]), after everything has run. Events of the transaction that a
//!   concurrent publisher took first run there and are counted in [`CommitReport::elsewhere`].
//! - [`commit_deferred`](Transaction::commit_deferred) leaves them for the next `publish`; with
//!   one sync publisher each transaction's events run back to back, in push order.
//! - [`rollback`](Transaction::rollback), or dropping the transaction, touches neither the ring
//!   nor the metrics.
//!
//! ```
//! # use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
//! # struct Ev(u32);
//! # impl Event for Ev { type Projection = u8; fn projection(&self) -> u8 { 0 } }
//! let store = EventStore::new(Dispatcher::<Ev>::new(), 64, OverrunPolicy::Block)?;
//! let systems: Vec<_> = (0..3)
//!     .map(|system| {
//!         let mut tx = store.begin_transaction();
//!         tx.extend((0..4).map(|i| Ev(system * 10 + i)));
//!         std::thread::spawn(move || tx.commit_deferred().map(|e| e.sequence).ok())
//!     })
//!     .collect();
//! let mut firsts: Vec<u64> = systems.into_iter().map(|s| s.join().unwrap().unwrap()).collect();
//! firsts.sort();
//! assert_eq!(firsts, [0, 4, 8]); // three whole blocks of four
//! assert_eq!(store.publish().dispatched, 12);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Scheduled events
//! [`schedule_at`](EventStore::schedule_at) and [`schedule_after`](EventStore::schedule_after)
//! enqueue an event later, through the ordinary enqueue path and overrun policy, and return a
//! [`ScheduleHandle`] whose [`cancel`](ScheduleHandle::cancel) stops it if it has not fired. A
//! time already past enqueues at once, in the call. One timer thread per store, started on the
//! first schedule, sleeps until the earliest deadline (no CPU while idle) and fires events in
//! deadline order, never early. Waiting events are counted in [`Metrics::scheduled`] and are
//! not `published` until they fire. Under `Block` the timer waits for room like any producer;
//! under `ReturnError` a fired event that finds the ring full is counted in
//! [`Metrics::rejected`]. [`close`](EventStore::close) cancels every event still waiting,
//! counting them in [`Metrics::cancelled`] (their handles say
//! [`ScheduleStatus::Cancelled`]), and stops the timer thread; dropping the store does the same
//! (the timer holds only a weak reference, so it never keeps a store alive).
//!
//! # Architecture
//! The core, then the layers built on it; the core never imports a layer.
//!
//! ```text
//! lib.rs            this spec, and the re-exports
//! sync.rs           std's or loom's atomics, cells, locks (loom models test the shipped code)
//! barrier.rs        asymmetric barriers (compiler fence / Linux membarrier)
//! ring.rs           the ring: slots, stamps, claims on head and tail, eviction, the gate
//! wait.rs           waiting: producers blocked on a full ring, drain/close polling
//! event.rs          Event, TypeKey, BoxError; event_enum.rs: the event_enum! macro
//! metrics/          the Metrics snapshot; live counters; in-flight (the one counter that
//!                   orders); projection.rs (counts per projection, the registry, a run's
//!                   local counts); latency.rs (sampling stamps, HdrHistograms)
//! panics.rs         containing panics from user code
//! error.rs          the errors, and HandlerFailure
//! store/            EventStore: options, dispatcher (Dispatcher, Variant), routes (the
//!                   swapped table, its Subscriber seam), held (events held for a retry),
//!                   deferred (the seam for work run later by publishers), settled (the seam
//!                   telling a layer of handled producer-lane events), context, lanes
//!                   (the shared ring and the single
//!                   producer's), producer (Producer), enqueue, publish, run (handlers), local
//!                   (LocalDispatcher, publish_with), settle, shutdown, disposal (drops, the
//!                   on_error hook), buffers, reports, layers (the seam)
//! transaction.rs    layer: Transaction, CommitError (on enqueue_batch and publish_until)
//! schedule/         layer: schedule_at / ScheduleHandle (mod.rs), the timer thread (timer.rs)
//! subscribe/        layer: subscriptions (subscription.rs), retries (retries.rs, retry.rs),
//!                   dead letters, circuit breakers, clocks
//! health.rs         layer: health() and its thresholds (reads metrics, asks the route
//!                   table's subscribers whether a breaker is open)
//! trace.rs          the `tracing` feature's spans and events (nothing without it)
//! bridge/           layer (feature `redis`; TLS: `redis-tls`): Backend and RedisStreams (redis.rs, reply.rs),
//!                   Forwarder (forward.rs), Receiver (receive.rs), EventId, Codec, DedupWindow
//! ```
//!
//! **How an event flows.** [`EventStore::enqueue`] claims a sequence with one CAS on the
//! ring's tail and writes the event into its slot (`store/enqueue.rs`, `ring.rs`); a full ring
//! goes to the overrun policy, out of line. [`EventStore::publish`] counts a chunk in flight,
//! claims the written events at the head with one CAS and copies them out (`store/publish.rs`);
//! the run loop (`store/run.rs`) loads the route table once for the chunk, looks up each
//! event's projection and calls its handlers in order, catching panics, and tallies the
//! outcomes; the publisher then drops the events, adds the tally to the counters and releases
//! the in-flight count.
//!
//! **Seams**, each small and used by today's code:
//! - *The route table* (`store/routes.rs`, `RouteTable::load`): read once per run of events,
//!   swapped by the subscription layer. Its entries are the dispatcher's handlers or
//!   `Subscriber`s: the layer's subscriptions, which decide themselves whether their handler
//!   runs and what becomes of a failure, and tell the run loop in a `Delivery` (and health
//!   whether their breaker is open). Each version of the table carries its routes'
//!   projection counters, so the run loop counts without a lookup of its own.
//! - *Deferred work* (`store/deferred.rs`): work a layer holds for publishing threads to run
//!   later (the subscription layer's retries); `publish` runs what is due, `close` all of it.
//! - *The per-event outcome hook* (`store/run.rs`, `Outcomes`): told of every handler
//!   failure with the event's sequence; retries and dead letters will hang here. Today: the
//!   publish path (counts and reports only) and a transaction's commit (keeps the first
//!   failure of its own events).
//! - *Layers and their shutdown hook* (`store/layers.rs`, `Layer`): per-store state the store
//!   holds without naming it, told when the store closes or is dropped, and filling in its own
//!   metrics. Today: the timer.
//! - *Settled events* (`store/settled.rs`): one layer, registered once, told by sequence of
//!   each event of the producer lane that settled as handled (processed, dead-lettered,
//!   unrouted, filtered); looked up once per run, a branch per event when none is
//!   registered. Today: the bridge's `Receiver`, which acknowledges those events to the
//!   broker. (Not the `Outcomes` hook, which hears of failures, not of successes.)
//! - *The bridge* (`bridge/`, feature `redis`): outgoing events leave through a subscription
//!   per chosen projection (`Forwarder`), incoming ones enter through the producer lane
//!   (`Receiver`), whose tag on their sequences is what keeps them from being forwarded again.
//!   A `Backend` trait is the seam to the broker; `RedisStreams` implements it.
//!
//! **Accounting across the bridge.** The store's own invariant (every accepted event in
//! exactly one place) is untouched: a forwarded event is a copy, and a received one is an
//! ordinary enqueue. The bridge keeps its own: for a `Forwarder`, every event its
//! subscriptions saw is in `echoes` (not sent back), `refused` (its handler failed),
//! `abandoned` (waiting for room at close) or `buffered`, and every buffered one is `sent`,
//! `evicted`, `unsent` (at close), or still in the buffer (`send_buffer_depth`) or the
//! sender's hands (`in_sender`); for a `Receiver`, every event read (an entry holds one, or
//! several a sender packed) is `enqueued`, a `duplicate` (of one handled or still in the
//! store), `malformed`, `refused` (not enqueued: the store closed, the receiver stopped, or no
//! room came within `forget_after`; the receiver never overruns its lane), or `skipped` (its
//! entry is still open here), and every enqueued event is `handled` (settled as handled),
//! `forgotten` after `forget_after`, or still `in_flight`. Entries are counted apart: one is
//! acknowledged (`acked`, or `ack_failed` when the broker did not take it) once every event
//! of it is handled, a duplicate or malformed, and left pending if one of its events was
//! forgotten or refused.
//!
//! # Limits
//! Sequence numbers are 61-bit (the tail word's top bits are the closed, gate and sealed
//! marks): at a billion events a second they last 73 years. The ring
//! holds at most 2^32 slots.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod barrier;
#[cfg(feature = "redis")]
pub mod bridge;
mod error;
mod event;
mod event_enum;
mod health;
mod metrics;
mod panics;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod ring;
mod schedule;
mod store;
mod subscribe;
mod sync;
mod trace;
mod transaction;
mod wait;

pub use error::{
    BatchError, BuildError, EnqueueError, EnqueueErrorKind, HandlerFailure, TimeoutError,
};
pub use event::{BoxError, Event, TypeKey};
pub use health::{Health, HealthThresholds, Unhealthy};
pub use metrics::{
    LatencySummary, MAX_PROJECTIONS, Metrics, OVERFLOW, ProjectionLatency, ProjectionMetrics,
};
pub use schedule::{ScheduleHandle, ScheduleStatus};
pub use store::{
    Builder, ConsumerThread, Context, DispatchMode, Dispatcher, Enqueued, ErrorKind, ErrorReport,
    EventStore, LocalDispatcher, OverrunPolicy, PRODUCER_LANE, Producer, PublishReport, Settle,
    SettleReport, Variant, WaitStrategy,
};
pub use subscribe::{
    AlreadyEnabled, BreakerConfigError, BreakerState, CircuitBreaker, Clock, ConsecutiveFailures,
    DeadLetter, DeadLetterOverrun, DeadLetters, ManualClock, Permanent, ReplayReport, RetryPolicy,
    RetryPolicyError, Retryable, SubscribeError, Subscription, SubscriptionBuilder, SubscriptionId,
    SystemClock,
};
pub use transaction::{CommitError, CommitReport, Transaction};

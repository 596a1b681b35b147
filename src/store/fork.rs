//! The parallel fork: the caller and the pool's helpers share a batch's chunks.
//!
//! A fork-join that hands the whole batch to the pool (`par_chunks` from the caller, or
//! `install`) makes the caller sleep while the pool's parked workers wake up, then makes the
//! pool wake the caller: on a 2-vCPU VM each wake-up cost about 20 µs, and a worker that did
//! not get a core for the whole fork left one thread to do everything, after both wake-ups. So
//! here the caller starts on the chunks at once, the helpers it spawns take chunks as they
//! arrive, and the caller waits only for chunks a helper has already started: a helper that
//! arrives after the last chunk was taken (or never gets a core while the batch runs) finds the
//! fork closed and touches nothing. At worst the fork costs the spawn; at best it runs as wide
//! as the pool.
//!
//! The chunks borrow the caller's buffer, and a helper is a `'static` pool job that may run
//! after the caller returned: so the helpers reach the buffer through a pointer, and only
//! between a successful [`Gate::enter`] and its [`Gate::leave`]; the caller closes the gate
//! and waits for every helper inside to leave before it returns (or unwinds).

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::EventStore;
use super::local::NoLocal;
use super::run::Discard;
use crate::event::Event;
use crate::metrics::Tally;
// `crate::sync`'s atomics, so that a loom model can check the gate (`tests` below); no loom
// model runs a fork itself (rayon's threads are not loom's).
use crate::sync::{AtomicUsize, Backoff, Ordering};
use std::sync::Mutex;

/// How a forked batch is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    /// Events per chunk (at least 1).
    pub(super) per_task: usize,
    /// Pool jobs spawned to take chunks beside the caller.
    pub(super) helpers: usize,
}

impl Plan {
    /// Chunks of about `task_work` each at `per_event`, but at least `MIN_CHUNKS_PER_THREAD`
    /// per thread taking part (the caller and `threads - 1` helpers), so that the last chunk
    /// to finish does not keep the others waiting long; at most one helper per chunk beyond
    /// the caller's first.
    pub(super) fn new(per_event: Duration, n: usize, threads: usize, task_work: Duration) -> Self {
        /// Chunks per taking-part thread, at least: the caller waits for at most one chunk
        /// that a helper started, so more, smaller chunks bound that wait.
        const MIN_CHUNKS_PER_THREAD: usize = 4;
        let by_work = (task_work.as_nanos() / per_event.as_nanos().max(1)).max(1);
        let by_width = n.div_ceil(threads.max(1) * MIN_CHUNKS_PER_THREAD).max(1);
        let per_task = usize::try_from(by_work).unwrap_or(usize::MAX).min(by_width);
        let chunks = n.div_ceil(per_task);
        Self {
            per_task,
            helpers: threads.saturating_sub(1).min(chunks.saturating_sub(1)),
        }
    }
}

/// Who may still read the batch: a count of helpers inside, and a closed bit.
#[derive(Debug, Default)]
struct Gate(AtomicUsize);

impl Gate {
    const CLOSED: usize = 1 << (usize::BITS - 1);

    /// Enters unless the gate is closed; true if entered.
    fn enter(&self) -> bool {
        let mut state = self.0.load(Ordering::Relaxed);
        loop {
            if state & Self::CLOSED != 0 {
                return false;
            }
            // The batch was written before the spawn that runs this job, which orders it
            // already; what matters here is only the modification order against the caller's
            // `fetch_or`: an enter either comes before the close (and the caller waits for its
            // leave) or after it (and fails).
            match self.0.compare_exchange_weak(
                state,
                state + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }

    /// Leaves; the Release orders this helper's reads of the batch (and its tally) before the
    /// caller's return.
    fn leave(&self) {
        self.0.fetch_sub(1, Ordering::Release);
    }

    /// Closes the gate and waits until every helper that entered has left.
    fn close_and_wait(&self) {
        let mut state = self.0.fetch_or(Self::CLOSED, Ordering::Acquire);
        let backoff = Backoff::new();
        while state & !Self::CLOSED != 0 {
            backoff.snooze();
            state = self.0.load(Ordering::Acquire);
        }
    }
}

/// What the caller and its helpers share: the chunks, the next one to take, and the tally.
struct Batch<E: Event, Err> {
    gate: Gate,
    /// Index of the next chunk to take.
    next: AtomicUsize,
    /// The helpers' tallies, added as each leaves.
    tally: Mutex<Tally>,
    /// The store running the batch, and the batch: valid while the gate is open and for
    /// whoever is inside it (see the module docs).
    store: NonNull<EventStore<E, Err>>,
    events: NonNull<E>,
    len: usize,
    first: u64,
    per_task: usize,
    deadline: Option<Instant>,
}

// SAFETY: the pointers are dereferenced only inside the gate, while the caller that owns what
// they point to waits (see `fork`); each chunk goes to exactly one thread (one `fetch_add` per
// take), so the events move between threads but are never shared (`E: Send`), and the store
// is shared by reference as every parallel run already does (`EventStore: Sync`).
unsafe impl<E: Event + Send, Err> Send for Batch<E, Err> where EventStore<E, Err>: Sync {}
// SAFETY: as above: everything else in it is atomics and a mutex.
unsafe impl<E: Event + Send, Err> Sync for Batch<E, Err> where EventStore<E, Err>: Sync {}

impl<E, Err> Batch<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Takes chunks until none is left, running each; returns their tally.
    ///
    /// # Safety
    /// The caller is the thread that owns the batch, before it closes the gate, or a helper
    /// inside the gate.
    unsafe fn take_chunks(&self) -> Tally {
        let mut tally = Tally::default();
        // SAFETY: the store outlives the gate (the caller's contract).
        let store = unsafe { self.store.as_ref() };
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            let start = index.saturating_mul(self.per_task);
            if start >= self.len {
                return tally;
            }
            let len = self.per_task.min(self.len - start);
            // SAFETY: `start..start + len` is inside the batch, which is live (the caller's
            // contract), and this thread is the only one given chunk `index`.
            let chunk = unsafe { std::slice::from_raw_parts(self.events.as_ptr().add(start), len) };
            store.run_events(
                self.first + start as u64,
                chunk,
                self.deadline,
                &mut tally,
                &mut Discard,
                &mut NoLocal,
            );
        }
    }

    /// A helper's job: enters the gate if it is still open, takes chunks, leaves.
    fn help(&self) {
        if !self.gate.enter() {
            return;
        }
        /// Leaves the gate even if a chunk unwinds (run_events contains handler panics, so
        /// this is the belt to its braces).
        struct Leave<'a>(&'a Gate);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.leave();
            }
        }
        let _leave = Leave(&self.gate);
        // SAFETY: inside the gate.
        let tally = unsafe { self.take_chunks() };
        *self.tally.lock().unwrap_or_else(|p| p.into_inner()) += tally;
    }
}

/// Closes the gate when the caller is done with the batch, however it leaves.
struct CloseOnDrop<'a>(&'a Gate);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close_and_wait();
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Runs `events` (sequences from `first`) in chunks of `plan.per_task`, in the caller and
    /// on `plan.helpers` pool jobs, and returns when every chunk has run.
    pub(super) fn fork(
        &self,
        first: u64,
        events: &mut [E],
        deadline: Option<Instant>,
        plan: Plan,
    ) -> Tally {
        let batch = Arc::new(Batch {
            gate: Gate::default(),
            next: AtomicUsize::new(0),
            tally: Mutex::new(Tally::default()),
            store: NonNull::from(self),
            events: NonNull::from(&mut *events).cast::<E>(),
            len: events.len(),
            first,
            per_task: plan.per_task.max(1),
            deadline,
        });
        let close = CloseOnDrop(&batch.gate);
        for _ in 0..plan.helpers {
            let helper = Arc::clone(&batch);
            let job = move || helper.help();
            match &self.shared.pool {
                Some(pool) => pool.spawn(job),
                None => rayon::spawn(job),
            }
        }
        // SAFETY: this thread owns the batch (`events` is borrowed for the call) and the gate
        // is still open.
        let mut tally = unsafe { batch.take_chunks() };
        // Every chunk is taken: wait for the helpers still running one.
        drop(close);
        tally += *batch.tally.lock().unwrap_or_else(|p| p.into_inner());
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: Duration = Duration::from_micros(10);

    #[test]
    fn chunks_follow_the_estimate_when_the_batch_is_wide() {
        // 10 ns an event, 100,000 events, 2 threads: 1,000-event chunks (10 µs each).
        let plan = Plan::new(Duration::from_nanos(10), 100_000, 2, TASK);
        assert_eq!(
            plan,
            Plan {
                per_task: 1_000,
                helpers: 1
            }
        );
    }

    #[test]
    fn a_low_estimate_still_gives_every_thread_several_chunks() {
        // The probe said 1 ns an event (it missed the expensive ones): the work-sized chunk
        // would be the whole batch; it is cut to 4 chunks per thread instead.
        let plan = Plan::new(Duration::from_nanos(1), 8_000, 2, TASK);
        assert_eq!(
            plan,
            Plan {
                per_task: 1_000,
                helpers: 1
            }
        );
    }

    #[test]
    fn the_caller_counts_as_one_of_the_pool_s_threads() {
        // The caller takes chunks too: a pool of 4 gets 3 helpers, not 4 (the old fork handed
        // everything to the pool and left the caller asleep).
        let plan = Plan::new(Duration::from_micros(1), 10_000, 4, TASK);
        assert_eq!(plan.helpers, 3);
    }

    #[test]
    fn no_more_helpers_than_chunks_beyond_the_caller_s() {
        // 3 events of 20 µs on 16 threads: 3 chunks of one event, 2 helpers.
        let plan = Plan::new(Duration::from_micros(20), 3, 16, TASK);
        assert_eq!(
            plan,
            Plan {
                per_task: 1,
                helpers: 2
            }
        );
        let one = Plan::new(Duration::from_micros(20), 1, 16, TASK);
        assert_eq!(one.helpers, 0);
    }

    #[test]
    fn a_closed_gate_lets_nobody_in_and_waits_for_those_inside() {
        let gate = Gate::default();
        assert!(gate.enter());
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(5));
                gate.leave();
            });
            gate.close_and_wait();
            assert_eq!(gate.0.load(Ordering::Acquire), Gate::CLOSED);
        });
        assert!(!gate.enter());
    }
}

/// The gate under loom: a helper that got in reads the batch only before it leaves, and the
/// caller writes it again only after `close_and_wait`; loom checks the two never overlap (it
/// tracks the cell's accesses), and that a helper after the close stays out.
/// `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_` (CI runs it).
#[cfg(all(test, loom))]
mod loom_gate {
    use super::Gate;
    use crate::sync::UnsafeCell;
    use loom::sync::Arc;

    #[test]
    fn loom_gate_keeps_helpers_inside_the_batch_s_lifetime() {
        loom::model(|| {
            let gate = Arc::new(Gate::default());
            let batch = Arc::new(UnsafeCell::new(1u64));
            let helper = {
                let (gate, batch) = (gate.clone(), batch.clone());
                loom::thread::spawn(move || {
                    if gate.enter() {
                        // SAFETY: inside the gate, the caller does not touch the batch.
                        let seen = batch.with_mut(|p| unsafe { *p });
                        assert_eq!(seen, 1);
                        gate.leave();
                    }
                })
            };
            gate.close_and_wait();
            // SAFETY: the gate is closed and empty: no helper reads the batch any more.
            batch.with_mut(|p| unsafe { *p = 2 });
            helper.join().unwrap();
            assert!(!gate.enter());
        });
    }
}

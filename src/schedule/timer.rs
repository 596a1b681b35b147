//! The timer: a heap of scheduled events and the thread that fires them, one per store,
//! attached to the store as a [`Layer`].

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::collections::binary_heap::PeekMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{CANCELLED, FIRED, FIRING, PENDING, REJECTED, ScheduleHandle, SharedStatus};
use crate::error::EnqueueError;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::panics;
use crate::store::{EventStore, Layer, WeakStore};

/// Under `Block`, how long the timer waits for room before it lets go of its strong handle to
/// the store (so the store can be dropped) and waits again.
const BLOCK_SLICE: Duration = Duration::from_millis(20);
/// Due events the timer takes per lock, so that schedulers are not shut out for long.
const FIRE_BATCH: usize = 256;
/// Heaps smaller than this are never purged of cancelled entries (not worth the pass).
const PURGE_MIN: usize = 64;

/// A store's scheduled events and the thread that fires them; the thread shares it.
pub(super) struct Timers<E> {
    state: Mutex<State<E>>,
    /// Wakes the timer: a new earliest deadline, or shutdown.
    wake: Condvar,
    counts: Arc<Counts>,
}

struct State<E> {
    /// Pending events, earliest `(deadline, id)` on top; may hold cancelled ones.
    heap: BinaryHeap<Entry<E>>,
    /// The next entry's id: ties on the deadline fire in call order.
    next_id: u64,
    /// The timer thread, once started (taken by `close` to join it).
    thread: Option<JoinHandle<()>>,
    /// Set by `close` or by dropping the store: nothing more is scheduled and the thread exits.
    closed: bool,
}

/// The timer's counters, read into [`Metrics`].
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Events in `PENDING` or `FIRING`.
    scheduled: AtomicU64,
    /// Events that went `PENDING -> CANCELLED`.
    cancelled: AtomicU64,
}

impl Counts {
    pub(super) fn cancel(&self, n: u64) {
        // Relaxed: counters order nothing (as in `metrics/counters.rs`).
        self.scheduled.fetch_sub(n, Ordering::Relaxed);
        self.cancelled.fetch_add(n, Ordering::Relaxed);
    }
}

/// A heap entry: the event by value, and its status shared with its handle.
struct Entry<E> {
    deadline: Instant,
    id: u64,
    status: SharedStatus,
    event: E,
}

impl<E> Entry<E> {
    fn key(&self) -> (Instant, u64) {
        (self.deadline, self.id)
    }
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    /// Reversed, so that `BinaryHeap` (a max-heap) keeps the earliest on top.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.key().cmp(&self.key())
    }
}

impl<E> State<E> {
    /// Removes the cancelled entries when they are more than half the heap; returns them, to
    /// be dropped outside the lock.
    fn purge_if_stale(&mut self, live: u64) -> Vec<Entry<E>> {
        let len = self.heap.len();
        if len < PURGE_MIN || (len as u64) <= 2 * live {
            return Vec::new();
        }
        let (live, dead) = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .partition(|e| e.status.get() == PENDING);
        self.heap = BinaryHeap::from(live);
        dead
    }
}

impl<E> Timers<E> {
    /// No events, no thread yet.
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                next_id: 0,
                thread: None,
                closed: false,
            }),
            wake: Condvar::new(),
            counts: Arc::default(),
        }
    }

    /// Marks the timers closed, cancels everything pending and wakes the thread; returns the
    /// events that were in the heap and the thread to join.
    fn stop(&self) -> (Vec<E>, Option<JoinHandle<()>>) {
        let (heap, thread) = {
            let mut state = lock(&self.state);
            state.closed = true;
            (std::mem::take(&mut state.heap), state.thread.take())
        };
        self.wake.notify_all();
        let cancelled = heap
            .iter()
            .filter(|e| e.status.advance(PENDING, CANCELLED))
            .count();
        self.counts.cancel(cancelled as u64);
        let events = heap.into_vec().into_iter().map(|e| e.event).collect();
        (events, thread)
    }
}

impl<E: Event + Send + 'static> Timers<E> {
    /// Puts `event` in the heap for `at` (in the future), starting the thread on first use;
    /// hands the event back if the timers are closed.
    ///
    /// # Panics
    /// If the OS cannot start the timer thread, as [`std::thread::spawn`] does.
    pub(super) fn add<Err: 'static>(
        self: &Arc<Self>,
        store: &EventStore<E, Err>,
        at: Instant,
        event: E,
    ) -> Result<ScheduleHandle, E> {
        let status = SharedStatus::new(PENDING);
        let mut state = lock(&self.state);
        if state.closed {
            return Err(event);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.heap.push(Entry {
            deadline: at,
            id,
            status: status.clone(),
            event,
        });
        self.counts.scheduled.fetch_add(1, Ordering::Relaxed);
        let earliest = state.heap.peek().is_some_and(|top| top.id == id);
        if state.thread.is_none() {
            let (timers, store) = (Arc::clone(self), store.downgrade());
            let thread = thread::Builder::new()
                .name("ringbus-timer".into())
                .spawn(move || timers.run(store))
                .expect("failed to spawn the ringbus timer thread");
            state.thread = Some(thread);
        }
        let dead = state.purge_if_stale(self.counts.scheduled.load(Ordering::Relaxed));
        drop(state);
        if earliest {
            self.wake.notify_one();
        }
        // Cancelled events are dropped outside the lock: their `Drop` is user code.
        for entry in dead {
            store.discard_unsequenced(entry.event);
        }
        Ok(ScheduleHandle {
            status,
            counts: Some(self.counts.clone()),
            deadline: at,
        })
    }

    /// The timer thread: sleeps until the earliest deadline, fires what is due, until closed.
    fn run<Err: 'static>(&self, store: WeakStore<E, Err>) {
        let mut due = Vec::new();
        let mut dead = Vec::new();
        loop {
            let mut state = lock(&self.state);
            loop {
                if state.closed {
                    return;
                }
                let now = Instant::now();
                while due.len() < FIRE_BATCH {
                    let Some(top) = state.heap.peek_mut() else {
                        break;
                    };
                    if top.deadline > now {
                        break;
                    }
                    let entry = PeekMut::pop(top);
                    // Claim it against `cancel`: whoever moves it out of PENDING decides.
                    if entry.status.advance(PENDING, FIRING) {
                        due.push(entry);
                    } else {
                        dead.push(entry);
                    }
                }
                if !due.is_empty() || !dead.is_empty() {
                    break;
                }
                state = match state.heap.peek().map(|top| top.deadline - now) {
                    None => self.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
                    Some(timeout) => {
                        let waited = self.wake.wait_timeout(state, timeout);
                        waited.unwrap_or_else(|e| e.into_inner()).0
                    }
                };
            }
            drop(state);
            if !dead.is_empty() {
                let alive = store.upgrade();
                for entry in dead.drain(..) {
                    discard(alive.as_ref(), entry.event);
                }
            }
            for entry in due.drain(..) {
                self.fire(&store, entry);
            }
        }
    }

    /// Enqueues one due event under the store's policy and records how it went.
    fn fire<Err: 'static>(&self, store: &WeakStore<E, Err>, entry: Entry<E>) {
        let Entry {
            status, mut event, ..
        } = entry;
        let outcome = loop {
            let Some(store) = store.upgrade() else {
                // The store is gone: nothing to fire into.
                discard::<E, Err>(None, event);
                break CANCELLED;
            };
            match store.enqueue_or_wait(event, Instant::now() + BLOCK_SLICE) {
                Ok(_) => break FIRED,
                // `Block` and still full: let go of the store for a moment, then wait again.
                Err(EnqueueError::Timeout(back)) => event = back,
                // Refused and counted in `rejected` by the store; the event is dropped here.
                Err(refused) => {
                    discard(Some(&store), refused.into_inner());
                    break REJECTED;
                }
            }
        };
        status.finish(outcome);
        if outcome == CANCELLED {
            self.counts.cancel(1);
        } else {
            self.counts.scheduled.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<E: Send + 'static> Layer<E> for Timers<E> {
    /// Cancels every pending event, counting them, and stops the timer thread, waiting for it
    /// to finish the event it may be firing (which the closed ring accepts or refuses at
    /// once). Returns the events taken out of the heap.
    fn shut_down(&self) -> Vec<E> {
        let (events, thread) = self.stop();
        if let Some(thread) = thread {
            // A user `Drop` running on the timer thread could call `close`: don't join oneself.
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
        events
    }

    fn add_metrics(&self, metrics: &mut Metrics) {
        metrics.scheduled = self.counts.scheduled.load(Ordering::Relaxed);
        metrics.cancelled = self.counts.cancelled.load(Ordering::Relaxed);
    }
}

/// Locks `mutex`, ignoring poison: no user code runs under the timer's lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops an event the timer is done with on the timer thread, which a panicking `Drop` must
/// not kill: counted and reported by the store if it is still there, contained either way.
fn discard<E, Err>(store: Option<&EventStore<E, Err>>, event: E)
where
    E: Event + Send + 'static,
    Err: 'static,
{
    match store {
        Some(store) => store.discard_unsequenced(event),
        None => panics::drop_contained(event),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn heap_pops_earliest_then_call_order() {
        let t0 = Instant::now();
        let mut heap = BinaryHeap::new();
        for (ms, id) in [(30, 0), (10, 1), (10, 2), (20, 3)] {
            heap.push(Entry {
                deadline: t0 + Duration::from_millis(ms),
                id,
                status: SharedStatus::new(PENDING),
                event: (),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|e| e.id)).collect();
        assert_eq!(order, [1, 2, 3, 0]);
    }

    #[test]
    fn purge_drops_only_cancelled_entries_once_they_dominate() {
        let t0 = Instant::now();
        let mut state = State {
            heap: BinaryHeap::new(),
            next_id: 0,
            thread: None,
            closed: false,
        };
        for id in 0..100 {
            let state_byte = if id % 4 == 0 { PENDING } else { CANCELLED };
            state.heap.push(Entry {
                deadline: t0,
                id,
                status: SharedStatus::new(state_byte),
                event: (),
            });
        }
        assert!(state.purge_if_stale(60).is_empty(), "not stale enough yet");
        assert_eq!(state.purge_if_stale(25).len(), 75);
        assert_eq!(state.heap.len(), 25);
    }
}

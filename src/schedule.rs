//! Scheduled events: [`EventStore::schedule_at`] and [`EventStore::schedule_after`]
//! (GoEventBus's `Schedule` and `ScheduleAfter`), fired by one timer thread per store.
//!
//! # Design
//! Pending events sit by value in a binary heap ordered by `(deadline, id)`, behind a mutex; a
//! single timer thread, started on the first schedule, sleeps on a condvar until the earliest
//! deadline (or a new earlier one), pops what is due and enqueues it through the store's
//! ordinary [`enqueue`](EventStore::enqueue) path and overrun policy. Idle, it sleeps without
//! a timeout: no CPU. A pending event costs its heap entry plus one shared 1-byte state
//! (`Arc<AtomicU8>`) that its [`ScheduleHandle`] uses to cancel it: no thread, no timer, no
//! other allocation.
//!
//! Each event's state moves `PENDING -> CANCELLED` (the handle or `close` won) or
//! `PENDING -> FIRING -> FIRED | REJECTED` (the timer won), by compare-and-swap, so cancel and
//! fire cannot both happen. A cancelled event stays in the heap until its deadline, or until a
//! later schedule finds more than half of the heap cancelled and purges it.
//!
//! The timer holds only a weak reference to the store, upgraded while it enqueues, so it never
//! keeps a store alive: dropping the last handle stops the thread, cancelling what is left.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::collections::binary_heap::PeekMut;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::dispatcher::Event;
use crate::error::EnqueueError;
use crate::panics::{dispose, drop_caught};
use crate::store::{EventStore, WeakStore};

const PENDING: u8 = 0;
const FIRING: u8 = 1;
const FIRED: u8 = 2;
const CANCELLED: u8 = 3;
const REJECTED: u8 = 4;

/// Under `Block`, how long the timer waits for room before it lets go of its strong handle to
/// the store (so the store can be dropped) and waits again.
const BLOCK_SLICE: Duration = Duration::from_millis(20);
/// Due events the timer takes per lock, so that schedulers are not shut out for long.
const FIRE_BATCH: usize = 256;
/// Heaps smaller than this are never purged of cancelled entries (not worth the pass).
const PURGE_MIN: usize = 64;

/// Where a scheduled event stands, from [`ScheduleHandle::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScheduleStatus {
    /// Waiting for its time; [`cancel`](ScheduleHandle::cancel) would stop it.
    Pending,
    /// Its time came and the timer is enqueueing it (under `Block` it may wait for room).
    Firing,
    /// It was enqueued: it is (or was) an ordinary pending event, with a sequence number.
    Fired,
    /// It was cancelled before firing, by its handle or by [`EventStore::close`], or because
    /// the store was dropped. It never reached the ring.
    Cancelled,
    /// Its time came but the store refused it (ring full under `ReturnError`, or closed while
    /// it was firing); counted in [`Metrics::rejected`](crate::Metrics::rejected). The event
    /// was dropped: the timer has nobody to hand it back to.
    Rejected,
}

/// A scheduled event's handle, from [`EventStore::schedule_at`] or
/// [`EventStore::schedule_after`]: cancel it, or ask where it stands.
///
/// Dropping the handle does not cancel the event. Clones share the event. The handle does not
/// keep the store alive.
///
/// ```
/// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy, ScheduleStatus};
/// use std::time::Duration;
///
/// struct Reminder;
/// impl Event for Reminder {
///     type Projection = u8;
///     fn projection(&self) -> u8 { 0 }
/// }
/// let store = EventStore::new(Dispatcher::<Reminder>::new(), 8, OverrunPolicy::ReturnError)?;
///
/// let handle = store.schedule_after(Duration::from_secs(60), Reminder)?;
/// assert_eq!(handle.status(), ScheduleStatus::Pending);
/// assert!(handle.cancel()); // stopped it
/// assert!(!handle.cancel()); // nothing left to stop
/// assert_eq!(handle.status(), ScheduleStatus::Cancelled);
///
/// let now = store.schedule_after(Duration::ZERO, Reminder)?; // enqueued in the call
/// assert_eq!((now.status(), now.cancel(), store.pending()), (ScheduleStatus::Fired, false, 1));
/// let m = store.metrics();
/// assert_eq!((m.scheduled, m.cancelled, m.published), (0, 1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ScheduleHandle {
    /// The event's state (`PENDING` ... `REJECTED`), shared with its heap entry.
    ticket: Arc<AtomicU8>,
    /// The store's timer counters, for a successful cancel to update.
    counts: Arc<Counts>,
    /// When the event is (or was) due.
    deadline: Instant,
}

impl ScheduleHandle {
    /// Stops the event if it has not fired: returns true if this call cancelled it (it will
    /// never reach the ring, and is counted in [`Metrics::cancelled`](crate::Metrics::cancelled)),
    /// false if it had already fired, was firing, or was cancelled before.
    pub fn cancel(&self) -> bool {
        // AcqRel: the timer's claim of the event and this cancel are ordered on the ticket.
        let won = self
            .ticket
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.counts.cancel(1);
        }
        won
    }

    /// Where the event stands now.
    pub fn status(&self) -> ScheduleStatus {
        match self.ticket.load(Ordering::Acquire) {
            PENDING => ScheduleStatus::Pending,
            FIRING => ScheduleStatus::Firing,
            FIRED => ScheduleStatus::Fired,
            CANCELLED => ScheduleStatus::Cancelled,
            _ => ScheduleStatus::Rejected,
        }
    }

    /// When the event is due (for a past deadline, the time asked for).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl fmt::Debug for ScheduleHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduleHandle")
            .field("deadline", &self.deadline)
            .field("status", &self.status())
            .finish()
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Enqueues `event` at `at` (GoEventBus's `Schedule`), through the ordinary enqueue path
    /// and overrun policy; the next [`publish`](Self::publish) after that dispatches it.
    ///
    /// A time already past (or now) enqueues the event at once, in this call, and the handle
    /// says [`ScheduleStatus::Fired`] (GoEventBus runs it at once, bypassing the queue; here it
    /// keeps its place in the store's order like any enqueue). Otherwise the event waits in the
    /// store's timer: counted in [`Metrics::scheduled`](crate::Metrics::scheduled), not yet
    /// `published`. Events fire in `(deadline, call order)` order, never before their time;
    /// how long after depends on the OS waking the timer thread (typically well under a
    /// millisecond on an idle machine).
    ///
    /// When a fired event finds the ring full: `DropOldest` evicts as usual; `ReturnError`
    /// refuses it (counted in [`Metrics::rejected`](crate::Metrics::rejected), status
    /// [`ScheduleStatus::Rejected`]); `Block` makes the timer wait for room like any producer,
    /// holding back later scheduled events (they would find the ring full too) but never the
    /// store's shutdown. See [`close`](Self::close) for what happens to pending scheduled
    /// events: they are cancelled and counted.
    ///
    /// ```
    /// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    /// use std::time::{Duration, Instant};
    ///
    /// struct Tick(u32);
    /// impl Event for Tick {
    ///     type Projection = u8;
    ///     fn projection(&self) -> u8 { 0 }
    /// }
    /// let store = EventStore::new(Dispatcher::<Tick>::new(), 8, OverrunPolicy::ReturnError)?;
    /// let at = Instant::now() + Duration::from_millis(20);
    /// let handle = store.schedule_at(at, Tick(1))?;
    /// assert_eq!(store.metrics().scheduled, 1);
    /// while store.pending() == 0 {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert!(Instant::now() >= at);
    /// assert!(!handle.cancel()); // too late: it fired
    /// assert_eq!(store.publish().dispatched, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// After [`close`](Self::close), [`EnqueueError::Closed`] with the event. For a past time,
    /// whatever [`enqueue`](Self::enqueue) returns.
    ///
    /// # Panics
    /// If the OS cannot start the timer thread (on the first future schedule), as
    /// [`std::thread::spawn`] does.
    pub fn schedule_at(&self, at: Instant, event: E) -> Result<ScheduleHandle, EnqueueError<E>> {
        let timers = self.timers();
        let counts = &timers.inner.counts;
        if at <= Instant::now() {
            self.enqueue(event)?;
            return Ok(ScheduleHandle::fired(counts, at));
        }
        let ticket = Arc::new(AtomicU8::new(PENDING));
        let mut state = lock(&timers.inner.state);
        if state.closed {
            drop(state);
            // `close` closed the ring before the timers, so this refuses (and counts) it.
            self.enqueue(event)?;
            return Ok(ScheduleHandle::fired(counts, at));
        }
        let id = state.next_id;
        state.next_id += 1;
        state.heap.push(Entry {
            deadline: at,
            id,
            ticket: ticket.clone(),
            event,
        });
        counts.scheduled.fetch_add(1, Ordering::Relaxed);
        let earliest = state.heap.peek().is_some_and(|top| top.id == id);
        if state.thread.is_none() {
            let (inner, store) = (timers.inner.clone(), self.downgrade());
            let thread = thread::Builder::new()
                .name("ringbus-timer".into())
                .spawn(move || run(inner, store))
                .expect("failed to spawn the ringbus timer thread");
            state.thread = Some(thread);
        }
        let dead = state.purge_if_stale(counts.scheduled.load(Ordering::Relaxed));
        drop(state);
        if earliest {
            timers.inner.wake.notify_one();
        }
        // Cancelled events are dropped outside the lock: their `Drop` is user code.
        for entry in dead {
            self.discard_unsequenced(entry.event);
        }
        Ok(ScheduleHandle {
            ticket,
            counts: counts.clone(),
            deadline: at,
        })
    }

    /// Enqueues `event` after `delay` (GoEventBus's `ScheduleAfter`): [`schedule_at`] with
    /// `now + delay`. A zero delay enqueues at once, in this call. A delay too long for
    /// [`Instant`] is shortened to the farthest time it can represent.
    ///
    /// [`schedule_at`]: Self::schedule_at
    ///
    /// # Errors
    /// As [`schedule_at`](Self::schedule_at).
    pub fn schedule_after(
        &self,
        delay: Duration,
        event: E,
    ) -> Result<ScheduleHandle, EnqueueError<E>> {
        let now = Instant::now();
        let mut delay = delay;
        let at = loop {
            match now.checked_add(delay) {
                Some(at) => break at,
                None => delay /= 2,
            }
        };
        self.schedule_at(at, event)
    }
}

impl ScheduleHandle {
    /// The handle of an event enqueued in the scheduling call.
    fn fired(counts: &Arc<Counts>, deadline: Instant) -> Self {
        Self {
            ticket: Arc::new(AtomicU8::new(FIRED)),
            counts: counts.clone(),
            deadline,
        }
    }
}

/// A store's scheduled events and timer thread (a field of the store's shared state).
pub(crate) struct Timers<E> {
    inner: Arc<Inner<E>>,
}

/// What the timer thread shares with the store.
struct Inner<E> {
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

/// The timer's counters, read into [`Metrics`](crate::Metrics).
#[derive(Debug, Default)]
struct Counts {
    /// Events in `PENDING` or `FIRING`.
    scheduled: AtomicU64,
    /// Events that went `PENDING -> CANCELLED`.
    cancelled: AtomicU64,
}

impl Counts {
    fn cancel(&self, n: u64) {
        // Relaxed: counters order nothing (as in `metrics.rs`).
        self.scheduled.fetch_sub(n, Ordering::Relaxed);
        self.cancelled.fetch_add(n, Ordering::Relaxed);
    }
}

/// A heap entry: the event by value, and its state shared with its handle.
struct Entry<E> {
    deadline: Instant,
    id: u64,
    ticket: Arc<AtomicU8>,
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
            .partition(|e| e.ticket.load(Ordering::Acquire) == PENDING);
        self.heap = BinaryHeap::from(live);
        dead
    }
}

impl<E> Timers<E> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    heap: BinaryHeap::new(),
                    next_id: 0,
                    thread: None,
                    closed: false,
                }),
                wake: Condvar::new(),
                counts: Arc::default(),
            }),
        }
    }

    /// `(scheduled, cancelled)`, for [`Metrics`](crate::Metrics).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let c = &self.inner.counts;
        (
            c.scheduled.load(Ordering::Relaxed),
            c.cancelled.load(Ordering::Relaxed),
        )
    }

    /// The store is closing (its ring is already closed) or being dropped: cancels every
    /// pending event, counting them, and stops the timer thread, waiting for it to finish the
    /// event it may be firing (which the closed ring accepts or refuses at once). Returns the
    /// events taken out of the heap, for the store to drop (their `Drop` is user code).
    pub(crate) fn close(&self) -> Vec<E> {
        let (events, thread) = self.shut_down();
        if let Some(thread) = thread {
            // A user `Drop` running on the timer thread could call `close`: don't join oneself.
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
        events
    }

    /// Marks the timers closed, cancels everything pending and wakes the thread; returns the
    /// events that were in the heap and the thread to join.
    fn shut_down(&self) -> (Vec<E>, Option<JoinHandle<()>>) {
        let (heap, thread) = {
            let mut state = lock(&self.inner.state);
            state.closed = true;
            (std::mem::take(&mut state.heap), state.thread.take())
        };
        self.inner.wake.notify_all();
        let cancelled = heap
            .iter()
            .filter(|e| {
                e.ticket
                    .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .count();
        self.inner.counts.cancel(cancelled as u64);
        let events = heap.into_vec().into_iter().map(|e| e.event).collect();
        (events, thread)
    }
}

/// Locks `mutex`, ignoring poison: no user code runs under the timer's lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The timer thread: sleeps until the earliest deadline, fires what is due, until closed.
fn run<E, Err>(inner: Arc<Inner<E>>, store: WeakStore<E, Err>)
where
    E: Event + Send + 'static,
    Err: 'static,
{
    let mut due = Vec::new();
    let mut dead = Vec::new();
    loop {
        let mut state = lock(&inner.state);
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
                let claimed = entry
                    .ticket
                    .compare_exchange(PENDING, FIRING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if claimed {
                    due.push(entry);
                } else {
                    dead.push(entry);
                }
            }
            if !due.is_empty() || !dead.is_empty() {
                break;
            }
            state = match state.heap.peek().map(|top| top.deadline - now) {
                None => inner.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(timeout) => {
                    let waited = inner.wake.wait_timeout(state, timeout);
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
            fire(&inner.counts, &store, entry);
        }
    }
}

/// Enqueues one due event under the store's policy and records how it went.
fn fire<E, Err>(counts: &Counts, store: &WeakStore<E, Err>, entry: Entry<E>)
where
    E: Event + Send + 'static,
    Err: 'static,
{
    let Entry {
        ticket, mut event, ..
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
    ticket.store(outcome, Ordering::Release);
    if outcome == CANCELLED {
        counts.cancel(1);
    } else {
        counts.scheduled.fetch_sub(1, Ordering::Relaxed);
    }
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
        None => {
            if let Err(payload) = drop_caught(event) {
                dispose(payload);
            }
        }
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
                ticket: Arc::new(AtomicU8::new(PENDING)),
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
                ticket: Arc::new(AtomicU8::new(state_byte)),
                event: (),
            });
        }
        assert!(state.purge_if_stale(60).is_empty(), "not stale enough yet");
        assert_eq!(state.purge_if_stale(25).len(), 75);
        assert_eq!(state.heap.len(), 25);
    }
}

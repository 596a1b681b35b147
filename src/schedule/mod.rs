//! Scheduled events: [`EventStore::schedule_at`] and [`EventStore::schedule_after`]
//! (GoEventBus's `Schedule` and `ScheduleAfter`), fired by one timer thread per store.
//!
//! # Design
//! Pending events sit by value in a binary heap ordered by `(deadline, id)`, behind a mutex; a
//! single timer thread, started on the first schedule, sleeps on a condvar until the earliest
//! deadline (or a new earlier one), pops what is due and enqueues it through the store's
//! ordinary [`enqueue`](EventStore::enqueue) path and overrun policy. Idle, it sleeps without
//! a timeout: no CPU. A pending event costs its heap entry plus one shared 1-byte state
//! ([`SharedStatus`]) that its [`ScheduleHandle`] uses to cancel it: no thread, no timer, no
//! other allocation.
//!
//! The timer lives in `timer.rs` and is a [`Layer`](crate::store::Layer) of the store: the store
//! holds it without naming it, and shuts it down on `close` or drop.
//!
//! Each event's state moves `PENDING -> CANCELLED` (the handle or `close` won) or
//! `PENDING -> FIRING -> FIRED | REJECTED` (the timer won), by compare-and-swap, so cancel and
//! fire cannot both happen. A cancelled event stays in the heap until its deadline, or until a
//! later schedule finds more than half of the heap cancelled and purges it.
//!
//! The timer holds only a weak reference to the store, upgraded while it enqueues, so it never
//! keeps a store alive: dropping the last handle stops the thread, cancelling what is left.

mod timer;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::error::EnqueueError;
use crate::event::Event;
use crate::store::EventStore;
use timer::{Counts, Timers};

/// [`SharedStatus`] values: an event moves `PENDING -> CANCELLED` or
/// `PENDING -> FIRING -> FIRED | REJECTED`.
const PENDING: u8 = 0;
const FIRING: u8 = 1;
const FIRED: u8 = 2;
const CANCELLED: u8 = 3;
const REJECTED: u8 = 4;

/// A scheduled event's state (`PENDING` ... `REJECTED`), shared by its handle and its heap
/// entry.
///
/// Orderings: moves out of `PENDING` are compare-and-swaps (AcqRel), so the timer's claim and
/// a cancel are ordered on this one byte and exactly one wins; the final `FIRED` / `REJECTED`
/// is a Release store that a handle's Acquire read pairs with.
#[derive(Debug, Clone)]
struct SharedStatus(Arc<AtomicU8>);

impl SharedStatus {
    fn new(status: u8) -> Self {
        Self(Arc::new(AtomicU8::new(status)))
    }

    /// Moves the status from `from` to `to`; false if it was not `from`.
    fn advance(&self, from: u8, to: u8) -> bool {
        self.0
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Sets the final status of an event the timer claimed.
    fn finish(&self, status: u8) {
        self.0.store(status, Ordering::Release);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

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
    /// The event's state, shared with its heap entry.
    status: SharedStatus,
    /// The store's timer counters, for a successful cancel to update; `None` for an event
    /// enqueued in the scheduling call, which can never be cancelled.
    counts: Option<Arc<Counts>>,
    /// When the event is (or was) due.
    deadline: Instant,
}

impl ScheduleHandle {
    /// Stops the event if it has not fired: returns true if this call cancelled it (it will
    /// never reach the ring, and is counted in [`Metrics::cancelled`](crate::Metrics::cancelled)),
    /// false if it had already fired, was firing, or was cancelled before.
    pub fn cancel(&self) -> bool {
        let won = self.status.advance(PENDING, CANCELLED);
        if won {
            if let Some(counts) = &self.counts {
                counts.cancel(1);
            }
        }
        won
    }

    /// Where the event stands now.
    pub fn status(&self) -> ScheduleStatus {
        match self.status.get() {
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
        if at <= Instant::now() {
            self.enqueue(event)?;
            return Ok(ScheduleHandle::fired(at));
        }
        match self.layer(Timers::new).add(self, at, event) {
            Ok(handle) => Ok(handle),
            Err(event) => {
                // `close` closed the ring before the timers, so this refuses (and counts) it.
                self.enqueue(event)?;
                Ok(ScheduleHandle::fired(at))
            }
        }
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
    fn fired(deadline: Instant) -> Self {
        Self {
            status: SharedStatus::new(FIRED),
            counts: None,
            deadline,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{Dispatcher, OverrunPolicy};

    struct Ev;
    impl Event for Ev {
        type Projection = u8;
        fn projection(&self) -> u8 {
            0
        }
    }

    /// The timer is registered on the first schedule; on a store closed before that, the new
    /// timer starts shut down and the event is refused, not left waiting forever.
    #[test]
    fn scheduling_first_after_close_is_refused() {
        let store = EventStore::new(Dispatcher::<Ev>::new(), 4, OverrunPolicy::Block).unwrap();
        store.close(Duration::from_secs(1)).unwrap();
        let refused = store.schedule_after(Duration::from_secs(60), Ev);
        assert!(matches!(refused, Err(EnqueueError::Closed(_))));
        let m = store.metrics();
        assert_eq!((m.scheduled, m.rejected, m.published), (0, 1, 0));
    }
}

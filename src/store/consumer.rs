//! Consuming without a hand-written loop: [`EventStore::publish_wait`] (sleep until events
//! arrive), and a dedicated consumer thread the store runs ([`EventStore::spawn_consumer`])
//! with an explicit [`WaitStrategy`].

use std::fmt;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::shutdown::Closer;
use super::{EventStore, PublishReport};
use crate::error::TimeoutError;
use crate::event::Event;
use crate::ring::Intake;
use crate::sync::Backoff;
use crate::wait::{earlier, expired};

/// How a consumer waits when the ring is empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Call `publish` in a tight loop: the lowest latency, and a whole core busy while idle.
    BusySpin,
    /// Spin briefly, then yield the thread between looks: low latency, a core mostly busy.
    SpinYield,
    /// Spin, yield, then sleep until a producer claims a slot ([`EventStore::publish_wait`]):
    /// no CPU while idle; a wake-up costs a few microseconds. The default.
    #[default]
    SpinYieldPark,
}

/// How long a parked dedicated consumer sleeps before it looks again on its own (it is woken
/// by producers long before, unless nothing comes).
const PARK_SLICE: Duration = Duration::from_millis(100);

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// [`publish`](Self::publish), or, when nothing is pending, sleep until a producer puts an
    /// event in (or `timeout` passes, or the store is sealed by [`close`](Self::close)), then
    /// publish. For a consumer thread that wants neither a spinning core nor a sleep-poll loop.
    ///
    /// It spins briefly, yields, then parks; a producer wakes it right after its claim. Costs
    /// the enqueue path one plain load (x86) of a counter of sleeping consumers when nobody
    /// sleeps: a CAS claim is already the full barrier the handshake needs; against a
    /// [`Producer`](crate::Producer)'s plain-store claim, the consumer runs one `membarrier`
    /// per sleep instead.
    ///
    /// ```
    /// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    /// use std::time::Duration;
    ///
    /// struct Tick;
    /// impl Event for Tick {
    ///     type Projection = ();
    ///     fn projection(&self) {}
    /// }
    /// let store = EventStore::new(Dispatcher::<Tick>::new(), 8, OverrunPolicy::ReturnError)?;
    /// let producer = {
    ///     let store = store.clone();
    ///     std::thread::spawn(move || {
    ///         std::thread::sleep(Duration::from_millis(20));
    ///         store.enqueue(Tick).map(drop).map_err(|e| e.kind())
    ///     })
    /// };
    /// let report = store.publish_wait(Duration::from_secs(10)); // sleeps, then runs it
    /// assert_eq!(report.dispatched, 1);
    /// producer.join().unwrap()?;
    /// assert_eq!(store.publish_wait(Duration::from_millis(5)).dispatched, 0); // timed out
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn publish_wait(&self, timeout: Duration) -> PublishReport {
        let deadline = Instant::now().checked_add(timeout);
        let shared = &*self.shared;
        let sealed = || shared.ring.refuses(Intake::FollowUp);
        let backoff = Backoff::new();
        loop {
            let report = self.publish();
            if report.dispatched > 0 || expired(deadline) {
                return report;
            }
            // Something claimed: a producer is writing it; look again shortly.
            if shared.has_pending() {
                backoff.snooze();
                continue;
            }
            if sealed() {
                return report; // sealed and empty: nothing will ever come
            }
            // A retry due before the deadline ends the sleep early: the loop's `publish` runs it.
            let retry_due = self.deferred_next_due();
            let woken = shared.idle_consumers.wait_registered(
                earlier(deadline, retry_due),
                || {
                    // The producer lane's claim is a plain store: make the registration and
                    // that store meet (see `ProducerLane::sleeper_barrier`). Once, after
                    // registering: not on every spin before it.
                    if let Some(lane) = &shared.producer_lane {
                        lane.sleeper_barrier();
                    }
                },
                || shared.has_pending() || sealed(),
            );
            if !woken && (retry_due.is_none() || expired(deadline)) {
                return report;
            }
        }
    }

    /// Starts a consumer thread that publishes this store's events as they come, waiting as
    /// `strategy` says when the ring is empty, until the store is closed and sealed and
    /// nothing is pending. It dispatches in the store's mode; it holds a handle to the store
    /// until it stops, so [`close`](Self::close) the store to stop it (its work during the
    /// close counts in [`ConsumerThread::join`]'s report).
    ///
    /// # Panics
    /// If the OS cannot start the thread, as [`std::thread::spawn`] does.
    pub fn spawn_consumer(&self, strategy: WaitStrategy) -> ConsumerThread {
        let store = self.clone();
        let thread = thread::Builder::new()
            .name("ringbus-consumer".into())
            .spawn(move || store.consume(strategy))
            .expect("failed to spawn the ringbus consumer thread");
        let store = self.clone();
        ConsumerThread {
            thread,
            close: Box::new(move |timeout| store.close_by(timeout, Closer::Consumer).map(drop)),
        }
    }

    fn consume(&self, strategy: WaitStrategy) -> PublishReport {
        let shared = &*self.shared;
        let mut total = PublishReport::default();
        let mut backoff = Backoff::new();
        loop {
            let report = match strategy {
                WaitStrategy::SpinYieldPark => self.publish_wait(PARK_SLICE),
                _ => self.publish(),
            };
            total += report;
            if report.dispatched > 0 {
                backoff = Backoff::new();
                continue;
            }
            if shared.ring.refuses(Intake::FollowUp) && !shared.has_pending() {
                return total;
            }
            match strategy {
                WaitStrategy::BusySpin => std::hint::spin_loop(),
                WaitStrategy::SpinYield => backoff.snooze(),
                WaitStrategy::SpinYieldPark => {}
            }
        }
    }
}

/// A dedicated consumer thread, from [`EventStore::spawn_consumer`]. Dropping the handle
/// detaches the thread (it still stops when the store is closed).
pub struct ConsumerThread {
    thread: JoinHandle<PublishReport>,
    /// Closes the store, leaving the dispatching to the thread.
    close: Box<dyn Fn(Duration) -> Result<(), TimeoutError> + Send + Sync>,
}

impl ConsumerThread {
    /// Closes the store ([`EventStore::close`]'s three steps and timeout), but leaves the
    /// dispatching to this thread: the caller only waits until what was accepted (and the
    /// follow-ups) has run, so every handler runs on the consumer thread, in order, never on
    /// the caller's beside it. [`join`](Self::join) then returns everything the thread
    /// dispatched. (`store.close` works too, but then the caller publishes alongside the
    /// consumer thread while it waits.)
    ///
    /// # Errors
    /// [`TimeoutError`] as [`EventStore::close`]: the store stays closed to outside
    /// producers, and the thread keeps dispatching.
    pub fn close(&self, timeout: Duration) -> Result<(), TimeoutError> {
        (self.close)(timeout)
    }

    /// Waits for the thread to stop (after the store's `close`) and returns everything it
    /// dispatched. A handler panic never reaches it (handlers' panics are caught), so the
    /// thread itself does not panic.
    pub fn join(self) -> PublishReport {
        self.thread.join().unwrap_or_default()
    }

    /// True once the thread has stopped.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

impl fmt::Debug for ConsumerThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerThread")
            .field("finished", &self.is_finished())
            .finish()
    }
}

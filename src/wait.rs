//! Waiting: threads asleep until another makes progress ([`Sleepers`], a Dekker handshake:
//! producers blocked on a full ring, consumers in `publish_wait` on an empty one), and the
//! polling wait of `drain` and `close` ([`IdleWait`]).
//!
//! Every wait in the store that can last longer than a few nanoseconds is one of these two, so
//! the spin / yield / park choices and the fences that make wake-ups safe live here.

use std::time::{Duration, Instant};

use crate::sync::{self, AtomicUsize, Backoff, Condvar, Mutex, Ordering, fence};

/// The longest `drain` / `close` sleeps between two looks at the in-flight count.
const IDLE_POLL_MAX: Duration = Duration::from_millis(1);

/// Threads asleep until another makes progress: producers blocked on a full ring under
/// `Block` (woken by publishers making room), or consumers in `publish_wait` (woken by
/// producers claiming).
///
/// The waker checks `count` after making progress and only takes the lock when someone waits;
/// the waiter registers in `count` before re-checking the condition. A SeqCst fence sits between
/// the write and the read on both sides (a Dekker pattern), so either the waker sees the waiter
/// or the waiter sees the progress.
///
/// The fences are what make this hold under loom too: loom models SeqCst *accesses* as AcqRel
/// only (see its README), so with SeqCst loads and RMWs alone it reports lost wake-ups that the
/// C++ memory model rules out. The fences cost one barrier per wake check (per chunk of events,
/// not per event, and only under `Block`), right after an RMW that is already a full barrier on
/// x86. A waker whose progress *is* a SeqCst RMW (a producer's claim) needs no fence of its own
/// in the C++ model, and pays none: see [`wake_after_claim`](Self::wake_after_claim).
#[derive(Debug)]
pub(crate) struct Sleepers {
    count: AtomicUsize,
    lock: Mutex<()>,
    condvar: Condvar,
}

impl Sleepers {
    pub(crate) fn new() -> Self {
        Self {
            count: AtomicUsize::new(0),
            lock: Mutex::new(()),
            condvar: Condvar::new(),
        }
    }

    /// Wakes all waiters if there are any.
    #[inline]
    pub(crate) fn wake(&self) {
        // Orders the caller's progress (head CAS, `in_flight` decrement) before the read of
        // `count`; pairs with the fence in `wait`.
        fence(Ordering::SeqCst);
        if self.count.load(Ordering::SeqCst) > 0 {
            self.wake_all();
        }
    }

    /// Wakes all sleepers if there are any, right after the caller's progress was a SeqCst
    /// read-modify-write (a producer's claim on the tail). That RMW and the SeqCst load below,
    /// against the sleeper's SeqCst registration and fence, are ordered in the single total
    /// order, so no fence is needed: the producer's fast path pays one plain load (x86) of a
    /// line that changes only when a consumer goes to sleep. Under loom, which models SeqCst
    /// accesses as AcqRel only, the fence the C++ model does not need is added.
    #[inline(always)]
    pub(crate) fn wake_after_claim(&self) {
        #[cfg(loom)]
        fence(Ordering::SeqCst);
        if self.count.load(Ordering::SeqCst) > 0 {
            self.wake_all();
        }
    }

    /// Wakes all sleepers if there are any, with no fence of its own, under loom either: for a
    /// waker whose progress was a plain store followed by an asymmetric barrier
    /// (`barrier::light`; the sleeper runs the heavy one after registering).
    #[inline(always)]
    pub(crate) fn wake_if_any(&self) {
        if self.count.load(Ordering::SeqCst) > 0 {
            self.wake_all();
        }
    }

    #[cold]
    pub(crate) fn wake_all(&self) {
        drop(sync::lock(&self.lock));
        self.condvar.notify_all();
    }

    /// Blocks until `ready()` or `deadline`; returns `ready()`'s last answer.
    pub(crate) fn wait(&self, deadline: Option<Instant>, ready: impl Fn() -> bool) -> bool {
        self.wait_registered(deadline, || {}, ready)
    }

    /// [`wait`](Self::wait), running `registered` once, right after this thread registers
    /// as a sleeper and before its first check under the lock: where a waker's progress is a
    /// plain store, the asymmetric barrier goes here, once, not in `ready()` (which also runs
    /// on every spin before registering, where a barrier orders nothing).
    pub(crate) fn wait_registered(
        &self,
        deadline: Option<Instant>,
        registered: impl FnOnce(),
        ready: impl Fn() -> bool,
    ) -> bool {
        let backoff = Backoff::new();
        while !backoff.is_completed() {
            if ready() {
                return true;
            }
            backoff.snooze();
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        // Orders our registration before `ready()` reads the condition; pairs with `wake`.
        fence(Ordering::SeqCst);
        // Once is enough: a waker whose store this barrier did not make visible sees our
        // registration, which stands until we leave below, and wakes us under the lock.
        registered();
        let mut guard = sync::lock(&self.lock);
        let outcome = loop {
            if ready() {
                break true;
            }
            let (g, timed_out) = sync::wait_until(&self.condvar, guard, deadline);
            guard = g;
            if timed_out {
                break ready();
            }
        };
        drop(guard);
        self.count.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

/// The waiting of `drain` and `close`: spin, then yield, then sleep in naps growing to
/// [`IDLE_POLL_MAX`], never past the deadline. Polling rather than being woken keeps the
/// publish path free of a wake-up check.
pub(crate) struct IdleWait {
    backoff: Backoff,
    nap: Duration,
    deadline: Option<Instant>,
}

impl IdleWait {
    pub(crate) fn new(deadline: Option<Instant>) -> Self {
        Self {
            backoff: Backoff::new(),
            nap: Duration::from_micros(10),
            deadline,
        }
    }

    pub(crate) fn step(&mut self) {
        if !self.backoff.is_completed() {
            return self.backoff.snooze();
        }
        let left = self
            .deadline
            .map_or(self.nap, |d| d.saturating_duration_since(Instant::now()));
        sync::sleep(self.nap.min(left));
        self.nap = (self.nap * 2).min(IDLE_POLL_MAX);
    }
}

/// The earlier of two optional deadlines (`None` is no deadline).
pub(crate) fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// True once `deadline` has passed (never, without one).
pub(crate) fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

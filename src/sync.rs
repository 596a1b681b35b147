//! The synchronisation primitives the ring is built from: std's, or loom's under `cfg(loom)`.
//!
//! Everything the ring and the store share between threads comes from here, so a loom model
//! (`RUSTFLAGS="--cfg loom" cargo test --release --test loom`) explores exactly the code that ships.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

use std::time::Instant;

/// An `UnsafeCell` whose accesses loom can track.
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(
    #[cfg(not(loom))] std::cell::UnsafeCell<T>,
    #[cfg(loom)] loom::cell::UnsafeCell<T>,
);

impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        #[cfg(not(loom))]
        return Self(std::cell::UnsafeCell::new(value));
        #[cfg(loom)]
        return Self(loom::cell::UnsafeCell::new(value));
    }

    /// A pointer to the contents of `*this`, without going through a reference: lets the ring
    /// copy a run of adjacent cells with one `memcpy`. Not under loom, whose cells are not
    /// plain memory.
    #[cfg(not(loom))]
    #[inline(always)]
    pub(crate) fn raw_get(this: *const Self) -> *mut T {
        std::cell::UnsafeCell::raw_get(this.cast::<std::cell::UnsafeCell<T>>())
    }

    /// Runs `f` with a raw pointer to the contents; the caller upholds exclusive access.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(loom))]
        return f(self.0.get());
        #[cfg(loom)]
        return self.0.with_mut(f);
    }
}

/// Exponential backoff for the short waits inside the ring (a slot being written or copied out).
///
/// Under loom every step yields to the model's scheduler, which is what lets loom explore a
/// spin loop at all.
pub(crate) struct Backoff(#[cfg(not(loom))] crossbeam_utils::Backoff);

impl Backoff {
    #[inline]
    pub(crate) fn new() -> Self {
        #[cfg(not(loom))]
        return Self(crossbeam_utils::Backoff::new());
        #[cfg(loom)]
        return Self();
    }

    /// Spins, then yields the thread once spinning stops paying.
    #[inline]
    pub(crate) fn snooze(&self) {
        #[cfg(not(loom))]
        self.0.snooze();
        #[cfg(loom)]
        loom::thread::yield_now();
    }

    /// True once spinning and yielding have run their course and the caller should park.
    #[inline]
    pub(crate) fn is_completed(&self) -> bool {
        #[cfg(not(loom))]
        return self.0.is_completed();
        #[cfg(loom)]
        return true;
    }
}

/// Waits on `condvar` until notified or `deadline` passes (loom: until notified).
///
/// Returns the guard and whether the deadline has passed.
pub(crate) fn wait_until<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> (MutexGuard<'a, T>, bool) {
    #[cfg(loom)]
    {
        let _ = deadline;
        (
            condvar.wait(guard).unwrap_or_else(|e| e.into_inner()),
            false,
        )
    }
    #[cfg(not(loom))]
    match deadline {
        None => (
            condvar.wait(guard).unwrap_or_else(|e| e.into_inner()),
            false,
        ),
        Some(deadline) => {
            let now = Instant::now();
            if now >= deadline {
                return (guard, true);
            }
            let (guard, _) = condvar
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner());
            (guard, Instant::now() >= deadline)
        }
    }
}

/// Sleeps for `duration` (loom: yields, as loom has no clock).
pub(crate) fn sleep(duration: std::time::Duration) {
    #[cfg(not(loom))]
    std::thread::sleep(duration);
    #[cfg(loom)]
    {
        let _ = duration;
        loom::thread::yield_now();
    }
}

/// Locks `mutex`, ignoring poison: the data behind our mutexes is `()`, or data whose every
/// update is a single step no panic can interrupt halfway (each user says why).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

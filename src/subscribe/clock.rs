//! Where the subscription layer reads the time: [`Clock`], the real [`SystemClock`], and a
//! [`ManualClock`] that tests move by hand.
//!
//! Retry deadlines, breaker cooldowns and dead letters' timestamps all come from one `Clock`,
//! so a test can walk a breaker from open to half-open, or a retry past its backoff, by
//! advancing a `ManualClock` instead of sleeping.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A source of the current time.
///
/// # Examples
/// ```
/// use ringbus::{Clock, SystemClock};
/// let clock: &dyn Clock = &SystemClock;
/// let before = std::time::Instant::now();
/// assert!(clock.now() >= before);
/// ```
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time. Successive calls on one clock never go backwards unless a test sets
    /// it back ([`ManualClock::set`]).
    fn now(&self) -> Instant;
}

/// The real clock: [`Instant::now`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests that drive time without sleeping.
///
/// Clones share one time: hand a clone to the store and keep one to
/// [`advance`](Self::advance).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use ringbus::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// let shared = clock.clone();
/// let start = clock.now();
/// shared.advance(Duration::from_secs(5));
/// assert_eq!(clock.now() - start, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// The time every clone reads. A std mutex (not `crate::sync`'s, which is loom's under
    /// `cfg(loom)`): time is not something a loom model explores, and no user code runs under
    /// it, so it is never held across a panic.
    now: Arc<Mutex<Instant>>,
}

impl ManualClock {
    /// A clock that reads [`Instant::now`] at creation and stays there until moved.
    pub fn new() -> Self {
        Self {
            now: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Moves the time of this clock and all its clones forward by `by`.
    ///
    /// # Panics
    /// If the new time does not fit in an [`Instant`], as `Instant + Duration` does.
    ///
    /// # Examples
    /// ```
    /// # use std::time::Duration;
    /// # use ringbus::{Clock, ManualClock};
    /// let clock = ManualClock::new();
    /// let start = clock.now();
    /// clock.advance(Duration::from_millis(10));
    /// clock.advance(Duration::from_millis(5));
    /// assert_eq!(clock.now() - start, Duration::from_millis(15));
    /// ```
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        let next = now
            .checked_add(by)
            .expect("ManualClock::advance: the time overflows Instant");
        *now = next;
    }

    /// Sets the time of this clock and all its clones, forward or back.
    ///
    /// # Examples
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use ringbus::{Clock, ManualClock};
    /// let clock = ManualClock::new();
    /// let then = Instant::now() + Duration::from_secs(60);
    /// clock.set(then);
    /// assert_eq!(clock.now(), then);
    /// ```
    pub fn set(&self, to: Instant) {
        *self.lock() = to;
    }

    /// The time, ignoring poison: an `Instant` cannot be torn, and the only panic under the
    /// lock (`advance`'s overflow) happens before the write.
    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for ManualClock {
    /// [`ManualClock::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.lock()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn system_clock_moves_forward() {
        let a = SystemClock.now();
        let b = SystemClock.now();
        assert!(b >= a);
    }

    #[test]
    fn manual_clock_clones_share_one_time() {
        let clock = ManualClock::new();
        let other = clock.clone();
        let start = clock.now();
        assert_eq!(other.now(), start, "a clone reads the same time");
        clock.advance(Duration::from_millis(250));
        assert_eq!(other.now() - start, Duration::from_millis(250));
        other.set(start);
        assert_eq!(clock.now(), start, "set moves every clone, backwards too");
        let boxed: Arc<dyn Clock> = Arc::new(other);
        clock.advance(Duration::from_secs(1));
        assert_eq!(boxed.now() - start, Duration::from_secs(1));
    }

    #[test]
    fn manual_clock_survives_an_overflowing_advance() {
        let clock = ManualClock::default();
        let start = clock.now();
        let overflow = std::panic::catch_unwind(|| clock.advance(Duration::MAX));
        assert!(overflow.is_err());
        assert_eq!(clock.now(), start, "the failed advance left the time alone");
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now() - start, Duration::from_secs(1));
    }
}

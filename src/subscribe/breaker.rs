//! Circuit breakers: stop calling a handler that keeps failing, and try it again later.
//!
//! [`CircuitBreaker`] is the trait a subscription's breaker implements (go-events' per-
//! subscription `CircuitBreaker` interface); [`ConsecutiveFailures`] is the classic one
//! (Nygard, *Release It!*):
//!
//! ```text
//!            N consecutive failures               cooldown passed
//!   Closed ─────────────────────────▶ Open ──────────────────────────▶ HalfOpen
//!     ▲                                ▲                                 │  │
//!     │                                └───────── any failure ───────────┘  │
//!     └──────────────────────── M consecutive successes ────────────────────┘
//! ```
//!
//! Every method takes the time from the caller (the store's [`Clock`](crate::Clock)), so tests
//! drive each transition with explicit instants instead of sleeping.

use std::fmt;
use std::time::{Duration, Instant};

use crate::sync::{self, Mutex};

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; failures are being counted.
    Closed,
    /// Calls are refused until the cooldown has passed.
    Open,
    /// The cooldown has passed: calls go through on trial; a failure opens the breaker again,
    /// enough successes close it.
    HalfOpen,
}

/// A circuit breaker guarding one subscription's handler.
///
/// The store asks [`allow`](Self::allow) before each call and reports its outcome with
/// [`record_success`](Self::record_success) or [`record_failure`](Self::record_failure); while
/// `allow` says no, the handler is not called. Several threads may call these at once (parallel
/// publish), and outcomes may arrive after the breaker has moved on (a call allowed just before
/// it opened); an implementation must stay consistent under both.
///
/// # Examples
/// A breaker that never opens:
/// ```
/// use std::time::Instant;
/// use ringbus::{BreakerState, CircuitBreaker};
///
/// #[derive(Debug)]
/// struct Never;
/// impl CircuitBreaker for Never {
///     fn allow(&self, _: Instant) -> bool { true }
///     fn record_success(&self, _: Instant) {}
///     fn record_failure(&self, _: Instant) {}
///     fn state(&self, _: Instant) -> BreakerState { BreakerState::Closed }
/// }
/// let breaker: Box<dyn CircuitBreaker> = Box::new(Never);
/// assert!(breaker.allow(Instant::now()));
/// ```
pub trait CircuitBreaker: Send + Sync + fmt::Debug {
    /// Whether a call may go through at `now`.
    fn allow(&self, now: Instant) -> bool;
    /// A call went through and succeeded, at `now`.
    fn record_success(&self, now: Instant);
    /// A call went through and failed, at `now`.
    fn record_failure(&self, now: Instant);
    /// Where the breaker stands at `now`.
    fn state(&self, now: Instant) -> BreakerState;
}

/// A shared breaker (keep an `Arc` to read its state while a subscription uses it).
impl<B: CircuitBreaker + ?Sized> CircuitBreaker for std::sync::Arc<B> {
    fn allow(&self, now: Instant) -> bool {
        (**self).allow(now)
    }
    fn record_success(&self, now: Instant) {
        (**self).record_success(now);
    }
    fn record_failure(&self, now: Instant) {
        (**self).record_failure(now);
    }
    fn state(&self, now: Instant) -> BreakerState {
        (**self).state(now)
    }
}

/// Why [`ConsecutiveFailures::new`] refused its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerConfigError {
    /// `failures_to_open` is 0: the breaker would open before anything failed.
    #[error("a circuit breaker needs at least one failure to open")]
    ZeroFailuresToOpen,
    /// `successes_to_close` is 0: the breaker would close without a trial.
    #[error("a circuit breaker needs at least one success to close")]
    ZeroSuccessesToClose,
}

/// The classic breaker: opens after `failures_to_open` consecutive failures, lets calls through
/// on trial once `cooldown` has passed since it opened, and closes after `successes_to_close`
/// consecutive successes on trial; a failure on trial opens it again for another cooldown.
///
/// - **Closed**: a success resets the failure count.
/// - **Open**: `allow` is false. Outcomes of calls allowed before it opened change nothing
///   (in particular, a late failure does not restart the cooldown).
/// - **Half-open**: `allow` is true for every call (there is no limit on trial calls at once);
///   a failure opens the breaker again with the cooldown restarted from then.
///
/// A time earlier than the opening (a clock set back) counts as no time passed.
///
/// Its state sits behind a small mutex, held for a few comparisons and never across user code.
/// Only subscriptions that configure a breaker pay for it (one lock around each call of the
/// handler); the dispatch path of the others never touches it.
///
/// # Examples
/// ```
/// use std::time::{Duration, Instant};
/// use ringbus::{BreakerState, CircuitBreaker, ConsecutiveFailures};
///
/// let breaker = ConsecutiveFailures::new(2, Duration::from_secs(5), 1)?;
/// let t0 = Instant::now();
/// breaker.record_failure(t0);
/// breaker.record_failure(t0);
/// assert!(!breaker.allow(t0 + Duration::from_secs(1)));
/// assert_eq!(breaker.state(t0 + Duration::from_secs(5)), BreakerState::HalfOpen);
/// breaker.record_success(t0 + Duration::from_secs(6));
/// assert_eq!(breaker.state(t0 + Duration::from_secs(6)), BreakerState::Closed);
/// # Ok::<(), ringbus::BreakerConfigError>(())
/// ```
#[derive(Debug)]
pub struct ConsecutiveFailures {
    /// Consecutive failures that open a closed breaker; at least 1.
    failures_to_open: u32,
    /// How long the breaker stays open before letting trial calls through.
    cooldown: Duration,
    /// Consecutive trial successes that close a half-open breaker; at least 1.
    successes_to_close: u32,
    /// The state. Held only for the transition itself; no user code runs under it, so it is
    /// never poisoned (and `sync::lock` would ignore poison anyway: every write leaves a whole
    /// `Phase`).
    phase: Mutex<Phase>,
}

/// [`ConsecutiveFailures`]'s state, with what each state counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Failures in a row so far, below `failures_to_open`.
    Closed { failures: u32 },
    /// Opened at `since`; half-open once `cooldown` has passed since then.
    Open { since: Instant },
    /// Trial successes in a row so far, below `successes_to_close`.
    HalfOpen { successes: u32 },
}

impl ConsecutiveFailures {
    /// A closed breaker that opens after `failures_to_open` consecutive failures, goes
    /// half-open `cooldown` after opening, and closes after `successes_to_close` consecutive
    /// successes while half-open. Both thresholds must be at least 1.
    ///
    /// # Examples
    /// ```
    /// # use std::time::Duration;
    /// use ringbus::{BreakerConfigError, ConsecutiveFailures};
    /// assert!(ConsecutiveFailures::new(5, Duration::from_secs(30), 2).is_ok());
    /// assert_eq!(
    ///     ConsecutiveFailures::new(0, Duration::from_secs(30), 2).unwrap_err(),
    ///     BreakerConfigError::ZeroFailuresToOpen
    /// );
    /// ```
    pub fn new(
        failures_to_open: u32,
        cooldown: Duration,
        successes_to_close: u32,
    ) -> Result<Self, BreakerConfigError> {
        if failures_to_open == 0 {
            return Err(BreakerConfigError::ZeroFailuresToOpen);
        }
        if successes_to_close == 0 {
            return Err(BreakerConfigError::ZeroSuccessesToClose);
        }
        Ok(Self {
            failures_to_open,
            cooldown,
            successes_to_close,
            phase: Mutex::new(Phase::Closed { failures: 0 }),
        })
    }

    /// Runs `f` on the state as of `now`: an open breaker whose cooldown has passed is
    /// half-open first.
    fn at<R>(&self, now: Instant, f: impl FnOnce(&mut Phase) -> R) -> R {
        let mut phase = sync::lock(&self.phase);
        if let Phase::Open { since } = *phase {
            if now.saturating_duration_since(since) >= self.cooldown {
                *phase = Phase::HalfOpen { successes: 0 };
            }
        }
        f(&mut phase)
    }
}

impl CircuitBreaker for ConsecutiveFailures {
    fn allow(&self, now: Instant) -> bool {
        self.at(now, |phase| !matches!(phase, Phase::Open { .. }))
    }

    fn record_success(&self, now: Instant) {
        self.at(now, |phase| match *phase {
            Phase::Closed { .. } => *phase = Phase::Closed { failures: 0 },
            Phase::Open { .. } => {}
            Phase::HalfOpen { successes } => {
                // `successes < successes_to_close`, so this cannot overflow.
                let successes = successes + 1;
                *phase = if successes >= self.successes_to_close {
                    Phase::Closed { failures: 0 }
                } else {
                    Phase::HalfOpen { successes }
                };
            }
        });
    }

    fn record_failure(&self, now: Instant) {
        self.at(now, |phase| match *phase {
            Phase::Closed { failures } => {
                // `failures < failures_to_open`, so this cannot overflow.
                let failures = failures + 1;
                *phase = if failures >= self.failures_to_open {
                    Phase::Open { since: now }
                } else {
                    Phase::Closed { failures }
                };
            }
            Phase::Open { .. } => {}
            Phase::HalfOpen { .. } => *phase = Phase::Open { since: now },
        });
    }

    fn state(&self, now: Instant) -> BreakerState {
        self.at(now, |phase| match phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn breaker(failures: u32, cooldown: Duration, successes: u32) -> ConsecutiveFailures {
        ConsecutiveFailures::new(failures, cooldown, successes).unwrap()
    }

    #[test]
    fn zero_thresholds_are_refused() {
        assert_eq!(
            ConsecutiveFailures::new(0, SEC, 1).unwrap_err(),
            BreakerConfigError::ZeroFailuresToOpen
        );
        assert_eq!(
            ConsecutiveFailures::new(1, SEC, 0).unwrap_err(),
            BreakerConfigError::ZeroSuccessesToClose
        );
        assert_eq!(
            BreakerConfigError::ZeroSuccessesToClose.to_string(),
            "a circuit breaker needs at least one success to close"
        );
        assert!(ConsecutiveFailures::new(1, Duration::ZERO, 1).is_ok());
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3, SEC, 1);
        let t = Instant::now();
        assert_eq!(b.state(t), BreakerState::Closed);
        b.record_failure(t);
        b.record_failure(t);
        b.record_success(t); // resets the count
        b.record_failure(t);
        b.record_failure(t);
        assert_eq!(b.state(t), BreakerState::Closed);
        assert!(b.allow(t));
        b.record_failure(t);
        assert_eq!(b.state(t), BreakerState::Open);
        assert!(!b.allow(t));
    }

    #[test]
    fn half_opens_when_the_cooldown_has_passed() {
        let b = breaker(1, 10 * SEC, 1);
        let t = Instant::now();
        b.record_failure(t);
        assert!(!b.allow(t + 10 * SEC - Duration::from_nanos(1)));
        assert_eq!(b.state(t + 9 * SEC), BreakerState::Open);
        assert_eq!(b.state(t + 10 * SEC), BreakerState::HalfOpen);
        assert!(b.allow(t + 10 * SEC));
        assert!(b.allow(t + 10 * SEC), "half-open lets every call through");
    }

    #[test]
    fn allow_alone_moves_open_to_half_open() {
        let b = breaker(1, SEC, 1);
        let t = Instant::now();
        b.record_failure(t);
        assert!(b.allow(t + 2 * SEC));
        // Even asked about an earlier time now, it stays half-open: the cooldown is over.
        assert_eq!(b.state(t), BreakerState::HalfOpen);
    }

    #[test]
    fn a_trial_failure_reopens_and_restarts_the_cooldown() {
        let b = breaker(2, 10 * SEC, 2);
        let t = Instant::now();
        b.record_failure(t);
        b.record_failure(t);
        assert_eq!(b.state(t + 10 * SEC), BreakerState::HalfOpen);
        b.record_success(t + 11 * SEC);
        b.record_failure(t + 12 * SEC); // one failure suffices while half-open
        assert_eq!(b.state(t + 12 * SEC), BreakerState::Open);
        assert!(
            !b.allow(t + 21 * SEC),
            "the cooldown counts from the reopening"
        );
        assert_eq!(b.state(t + 22 * SEC), BreakerState::HalfOpen);
    }

    #[test]
    fn closes_after_consecutive_trial_successes() {
        let b = breaker(1, SEC, 3);
        let t = Instant::now();
        b.record_failure(t);
        let later = t + SEC;
        b.record_success(later);
        b.record_success(later);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        b.record_success(later);
        assert_eq!(b.state(later), BreakerState::Closed);
        // Closed again with a fresh count: one failure (the threshold) opens it.
        b.record_failure(later);
        assert_eq!(b.state(later), BreakerState::Open);
    }

    #[test]
    fn late_outcomes_while_open_change_nothing() {
        let b = breaker(1, 10 * SEC, 1);
        let t = Instant::now();
        b.record_failure(t);
        b.record_success(t + SEC); // a call allowed before it opened
        assert_eq!(b.state(t + SEC), BreakerState::Open);
        b.record_failure(t + 5 * SEC); // does not push the cooldown back
        assert_eq!(b.state(t + 10 * SEC), BreakerState::HalfOpen);
    }

    #[test]
    fn a_clock_set_back_counts_as_no_time_passed() {
        let b = breaker(1, SEC, 1);
        let t = Instant::now() + 100 * SEC;
        b.record_failure(t);
        assert_eq!(b.state(t - 50 * SEC), BreakerState::Open);
        assert_eq!(b.state(t + SEC), BreakerState::HalfOpen);
    }

    #[test]
    fn zero_cooldown_is_half_open_at_once() {
        let b = breaker(1, Duration::ZERO, 1);
        let t = Instant::now();
        b.record_failure(t);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
    }

    #[test]
    fn shared_across_threads() {
        let b = std::sync::Arc::new(breaker(1_000, SEC, 1));
        let t = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..250).for_each(|_| b.record_failure(t)))
            })
            .collect();
        threads.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(b.state(t), BreakerState::Open, "no failure was lost");
    }
}

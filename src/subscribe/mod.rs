//! Subscriptions' failure handling: the building blocks of retries, dead letters and circuit
//! breakers (issue 12).
//!
//! Each concept lives in its own file and stands alone, with its own tests:
//! - `clock.rs`: [`Clock`], where the layer reads the time; [`SystemClock`], and
//!   [`ManualClock`] for tests that move time by hand instead of sleeping.
//! - `retry.rs`: [`RetryPolicy`], attempts and exponential backoff with a cap and optional
//!   jitter.
//! - `breaker.rs`: the [`CircuitBreaker`] trait and [`ConsecutiveFailures`], the classic
//!   closed / open / half-open breaker.
//! - `dead_letters.rs`: [`DeadLetter`], and the bounded queue that holds them under a
//!   [`DeadLetterOverrun`] policy, counting what it drops.
//!
//! None of them touches the ring or the dispatch path. Wiring them in (runtime subscriptions
//! on the route-table seam, retries through the timer, dead letters and breakers on the
//! per-event outcome hook) is the subscription layer's integration, built on these.

mod breaker;
mod clock;
mod dead_letters;
mod retry;

use std::fmt;

pub use breaker::{BreakerConfigError, BreakerState, CircuitBreaker, ConsecutiveFailures};
pub use clock::{Clock, ManualClock, SystemClock};
pub use dead_letters::{DeadLetter, DeadLetterOverrun};
pub use retry::{RetryPolicy, RetryPolicyError};

/// Names one subscription of a store; unique within it, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

impl SubscriptionId {
    /// The id numbered `id`.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the dispatch integration is its first caller")
    )]
    pub(crate) fn new(id: u64) -> Self {
        Self(id)
    }

    /// The number behind the id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subscription #{}", self.0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn subscription_id_shows_its_number() {
        let id = SubscriptionId::new(42);
        assert_eq!(id.get(), 42);
        assert_eq!(id.to_string(), "subscription #42");
        assert_eq!(id, SubscriptionId::new(42));
        assert_ne!(id, SubscriptionId::new(43));
    }
}

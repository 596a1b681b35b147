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
mod retries;
mod retry;
mod subscription;

use std::fmt;

pub use breaker::{BreakerConfigError, BreakerState, CircuitBreaker, ConsecutiveFailures};
pub use clock::{Clock, ManualClock, SystemClock};
pub use dead_letters::{AlreadyEnabled, DeadLetter, DeadLetterOverrun, DeadLetters, ReplayReport};
pub use retry::{RetryPolicy, RetryPolicyError};
pub use subscription::{SubscribeError, Subscription, SubscriptionBuilder};

use crate::event::BoxError;

/// Whether a handler's error may be retried: gossip's retryable / fatal errors, event v3's
/// nack / reject. [`SubscriptionBuilder::retry`] needs the handlers' error type to say.
/// [`BoxError`] (the default) is retryable unless it is a [`Permanent`]; `String` and
/// `&'static str` always are. Implement it for your own error type (one method).
pub trait Retryable {
    /// True if the failed call may be tried again; false for a permanent failure, which skips
    /// the remaining attempts.
    fn is_retryable(&self) -> bool;
}

impl Retryable for BoxError {
    fn is_retryable(&self) -> bool {
        !self.is::<Permanent>()
    }
}

impl Retryable for String {
    fn is_retryable(&self) -> bool {
        true
    }
}

impl Retryable for &'static str {
    fn is_retryable(&self) -> bool {
        true
    }
}

/// An error no retry can fix: a handler returning `Err(Permanent::new(e).into())` (as a
/// [`BoxError`]) skips its remaining attempts and goes straight to the dead-letter queue (or
/// stands as a failure).
#[derive(Debug)]
pub struct Permanent(BoxError);

impl Permanent {
    /// Marks `error` permanent.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(error.into())
    }

    /// The error inside.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "permanent: {}", self.0)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Names one subscription of a store; unique within it, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

impl SubscriptionId {
    /// The id numbered `id`.
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

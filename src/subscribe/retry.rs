//! How often, and how far apart, a failed handler is tried again: [`RetryPolicy`].
//!
//! Delays grow exponentially (go-events' `RetryDelay` with `EnableExponentialBackoff`):
//! the first retry waits the initial delay, each later one the previous delay times the
//! multiplier, never more than the cap. With jitter on, each delay is drawn uniformly from
//! `[d/2, d]` ("equal jitter", from AWS's *Exponential Backoff And Jitter*): never less than
//! half the backoff, so retries still back off, while handlers that failed together spread out
//! instead of retrying in lockstep.
//!
//! A retry is rescheduled through the store's timer by default, so a tick loop never sleeps
//! on one; [`RetryPolicy::inline`] asks for the handler to be tried again on the spot instead.

use std::time::Duration;

/// How a subscription's failed handler is retried: attempts, exponential backoff with a cap,
/// optional jitter, inline or through the timer.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use ringbus::RetryPolicy;
/// let policy = RetryPolicy::new(4) // the first attempt and up to three retries
///     .initial_delay(Duration::from_millis(50))
///     .multiplier(3.0)
///     .max_delay(Duration::from_secs(2))
///     .jitter(true);
/// assert_eq!(policy.validate(), Ok(()));
/// assert_eq!(policy.max_attempts(), 4);
/// assert!(!policy.is_inline());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included; at least 1 for a valid policy.
    max_attempts: u32,
    /// The delay before the first retry (the second attempt).
    initial_delay: Duration,
    /// What each delay is multiplied by to give the next; finite and at least 1 for a valid
    /// policy.
    multiplier: f64,
    /// The cap on every delay; at least `initial_delay` for a valid policy.
    max_delay: Duration,
    /// Whether each delay is drawn from `[d/2, d]` instead of being `d`.
    jitter: bool,
    /// Whether retries run on the spot, in the dispatching thread, instead of through the timer.
    inline: bool,
}

/// Why a [`RetryPolicy`] is invalid: [`RetryPolicy::validate`].
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryPolicyError {
    /// `max_attempts` is 0: not even the first attempt would run.
    #[error("a retry policy needs at least one attempt")]
    ZeroAttempts,
    /// The multiplier is below 1 (delays would shrink) or not finite.
    #[error("retry multiplier {0} is not a finite number of at least 1")]
    Multiplier(f64),
    /// The cap is below the initial delay.
    #[error("max retry delay {max:?} is below the initial delay {initial:?}")]
    MaxDelayBelowInitial {
        /// The initial delay.
        initial: Duration,
        /// The cap.
        max: Duration,
    },
}

impl RetryPolicy {
    /// A policy of `max_attempts` attempts in all, the first one included (so `1` never
    /// retries), with the defaults: initial delay 10 ms, multiplier 2, max delay 1 s, no
    /// jitter, retries through the timer (not inline).
    ///
    /// # Examples
    /// ```
    /// # use ringbus::RetryPolicy;
    /// assert_eq!(RetryPolicy::new(3).max_attempts(), 3);
    /// ```
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            initial_delay: Duration::from_millis(10),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
            jitter: false,
            inline: false,
        }
    }

    /// The delay before the first retry. Default 10 ms. Zero retries at once, every time.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// What each delay is multiplied by to give the next: finite, at least 1 (1 keeps the
    /// delay constant). Default 2.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The cap on every delay, at least the initial delay. Default 1 s.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Whether each delay is drawn uniformly from `[d/2, d]` rather than being the backoff `d`
    /// itself, so that handlers failing together do not retry together. Default off.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Whether to retry on the spot, in the dispatching thread, sleeping out the delay there.
    /// Default off: a retry goes through the store's timer and the dispatching thread moves on.
    /// An inline retry holds up everything behind the event in that thread, delays included.
    pub fn inline(mut self, inline: bool) -> Self {
        self.inline = inline;
        self
    }

    /// Attempts in all, the first one included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether retries run on the spot ([`inline`](Self::inline)).
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// Checks the policy: at least one attempt, a finite multiplier of at least 1, and a cap
    /// no lower than the initial delay.
    ///
    /// # Examples
    /// ```
    /// # use std::time::Duration;
    /// use ringbus::{RetryPolicy, RetryPolicyError};
    /// assert_eq!(RetryPolicy::new(0).validate(), Err(RetryPolicyError::ZeroAttempts));
    /// assert_eq!(
    ///     RetryPolicy::new(3).multiplier(0.5).validate(),
    ///     Err(RetryPolicyError::Multiplier(0.5))
    /// );
    /// let inverted = RetryPolicy::new(3).initial_delay(Duration::from_secs(2));
    /// assert!(matches!(
    ///     inverted.validate(),
    ///     Err(RetryPolicyError::MaxDelayBelowInitial { .. })
    /// ));
    /// ```
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if self.max_attempts == 0 {
            return Err(RetryPolicyError::ZeroAttempts);
        }
        // Written so that NaN fails too.
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(RetryPolicyError::Multiplier(self.multiplier));
        }
        if self.max_delay < self.initial_delay {
            return Err(RetryPolicyError::MaxDelayBelowInitial {
                initial: self.initial_delay,
                max: self.max_delay,
            });
        }
        Ok(())
    }

    /// The delay before attempt number `attempt` (1 is the first attempt: no delay; 2, the
    /// first retry: the initial delay; each later one the multiplier times the one before,
    /// capped at the max delay). With jitter, a point of `[d/2, d]` chosen by `random` (any
    /// `u64`, such as [`next_random`]'s).
    ///
    /// Total for every input: a huge `attempt` gives the cap (the exponent saturates and the
    /// product is capped before it becomes a `Duration`), and an invalid policy gives some
    /// delay between zero and the cap rather than a panic.
    pub(crate) fn delay_before(&self, attempt: u32, random: u64) -> Duration {
        if attempt <= 1 || self.initial_delay.is_zero() {
            // Zero times any growth is zero; checked first because 0 × ∞ is NaN.
            return Duration::ZERO;
        }
        let exponent = i32::try_from(attempt - 2).unwrap_or(i32::MAX);
        // In nanoseconds, where doubling is exact up to 2^53 ns (104 days), so the default
        // policy gives exactly 10, 20, 40 ms ...
        let nanos = self.initial_delay.as_nanos() as f64 * self.multiplier.powi(exponent);
        // Infinity (an overflow) is at least the cap; NaN (a NaN multiplier) is taken as it.
        let backoff = if nanos.is_nan() || nanos >= self.max_delay.as_nanos() as f64 {
            self.max_delay
        } else {
            // Below the cap, non-negative unless the multiplier is (a float-to-int cast
            // saturates: negative to 0, beyond u64 to u64::MAX ns, 584 years).
            Duration::from_nanos(nanos as u64)
        };
        if !self.jitter {
            return backoff;
        }
        let half = backoff / 2;
        let span = (backoff - half).as_nanos();
        // The remainder is below `random`, so it fits in a u64. The modulo bias is below
        // span / 2^64: nothing, for delays of any practical length.
        let offset = (u128::from(random) % (span + 1)) as u64;
        half + Duration::from_nanos(offset)
    }
}

/// Advances `state` and returns the next pseudo-random number: SplitMix64 (Steele, Lea and
/// Flood, 2014). Any seed works, zero included; good enough to spread retries, not for
/// anything that must be unpredictable.
pub(crate) fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn defaults() {
        let policy = RetryPolicy::new(3);
        assert_eq!(policy.max_attempts(), 3);
        assert!(!policy.is_inline());
        assert_eq!(policy.validate(), Ok(()));
        assert_eq!(
            policy,
            RetryPolicy::new(3)
                .initial_delay(10 * MS)
                .multiplier(2.0)
                .max_delay(Duration::from_secs(1))
                .jitter(false)
                .inline(false)
        );
        assert!(RetryPolicy::new(3).inline(true).is_inline());
    }

    #[test]
    fn validate_names_each_mistake() {
        assert_eq!(
            RetryPolicy::new(0).validate(),
            Err(RetryPolicyError::ZeroAttempts)
        );
        assert_eq!(RetryPolicy::new(1).validate(), Ok(()));
        for bad in [0.99, 0.0, -2.0, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                RetryPolicy::new(2).multiplier(bad).validate(),
                Err(RetryPolicyError::Multiplier(bad)),
                "{bad}"
            );
        }
        assert!(matches!(
            RetryPolicy::new(2).multiplier(f64::NAN).validate(),
            Err(RetryPolicyError::Multiplier(m)) if m.is_nan()
        ));
        assert_eq!(RetryPolicy::new(2).multiplier(1.0).validate(), Ok(()));
        let inverted = RetryPolicy::new(2).initial_delay(2 * MS).max_delay(MS);
        assert_eq!(
            inverted.validate(),
            Err(RetryPolicyError::MaxDelayBelowInitial {
                initial: 2 * MS,
                max: MS
            })
        );
        assert_eq!(
            inverted.validate().unwrap_err().to_string(),
            "max retry delay 1ms is below the initial delay 2ms"
        );
        let equal = RetryPolicy::new(2).initial_delay(MS).max_delay(MS);
        assert_eq!(equal.validate(), Ok(()));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::new(10);
        let delays: Vec<_> = (1..=10).map(|a| policy.delay_before(a, 0)).collect();
        let expected: Vec<_> = [0, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]
            .into_iter()
            .map(|ms| ms * MS)
            .collect();
        assert_eq!(delays, expected);
        assert_eq!(policy.delay_before(0, 0), Duration::ZERO);
    }

    #[test]
    fn other_multipliers() {
        let constant = RetryPolicy::new(5).multiplier(1.0);
        assert!((2..50).all(|a| constant.delay_before(a, 7) == 10 * MS));
        let half_again = RetryPolicy::new(5)
            .initial_delay(Duration::from_micros(100))
            .multiplier(1.5);
        assert_eq!(half_again.delay_before(2, 0), Duration::from_micros(100));
        assert_eq!(half_again.delay_before(3, 0), Duration::from_micros(150));
        assert_eq!(half_again.delay_before(4, 0), Duration::from_micros(225));
    }

    #[test]
    fn huge_attempts_give_the_cap_without_overflow() {
        let policy = RetryPolicy::new(u32::MAX).max_delay(Duration::from_secs(30));
        for attempt in [64, 1_100, 1 << 31, u32::MAX - 1, u32::MAX] {
            assert_eq!(policy.delay_before(attempt, 0), Duration::from_secs(30));
            assert_eq!(
                policy.delay_before(attempt, u64::MAX),
                Duration::from_secs(30)
            );
        }
        let unbounded = RetryPolicy::new(u32::MAX)
            .initial_delay(Duration::MAX)
            .max_delay(Duration::MAX);
        assert_eq!(unbounded.delay_before(u32::MAX, 0), Duration::MAX);
        let jittered = unbounded.clone().jitter(true);
        assert!(jittered.delay_before(u32::MAX, u64::MAX) >= Duration::MAX / 2);
    }

    #[test]
    fn zero_initial_delay_retries_at_once() {
        let policy = RetryPolicy::new(u32::MAX).initial_delay(Duration::ZERO);
        // 0 × 2^huge would be 0 × ∞ = NaN in floating point.
        assert_eq!(policy.delay_before(u32::MAX, 1), Duration::ZERO);
        assert_eq!(policy.jitter(true).delay_before(3, 99), Duration::ZERO);
    }

    #[test]
    fn invalid_policies_still_give_a_delay_within_the_cap() {
        let nan = RetryPolicy::new(4).multiplier(f64::NAN);
        assert_eq!(nan.delay_before(3, 0), Duration::from_secs(1));
        let negative = RetryPolicy::new(4).multiplier(-2.0);
        assert_eq!(negative.delay_before(3, 0), Duration::ZERO);
        assert_eq!(negative.delay_before(4, 0), 40 * MS);
        let inverted = RetryPolicy::new(4).initial_delay(5 * MS).max_delay(MS);
        assert_eq!(inverted.delay_before(2, 0), MS);
    }

    #[test]
    fn jitter_stays_within_half_to_whole() {
        let policy = RetryPolicy::new(12).jitter(true);
        let mut state = 42;
        for attempt in 2..=12 {
            let whole = policy.clone().jitter(false).delay_before(attempt, 0);
            let (mut low, mut high) = (Duration::MAX, Duration::ZERO);
            for _ in 0..2_000 {
                let d = policy.delay_before(attempt, next_random(&mut state));
                assert!(
                    d >= whole / 2 && d <= whole,
                    "{d:?} outside [{whole:?}/2, {whole:?}]"
                );
                low = low.min(d);
                high = high.max(d);
            }
            // 2,000 draws over the interval cover it to within a few percent at both ends.
            let slack = whole / 20;
            assert!(
                low <= whole / 2 + slack && high >= whole - slack,
                "{low:?}..{high:?}"
            );
        }
        // The extremes of `random` reach the ends exactly.
        assert_eq!(policy.delay_before(2, 0), 5 * MS);
        let span = (10 * MS - 5 * MS).as_nanos() as u64;
        assert_eq!(policy.delay_before(2, span), 10 * MS);
    }

    #[test]
    fn next_random_is_splitmix64() {
        // The first outputs of SplitMix64 seeded with 0, as in the reference implementation.
        let mut state = 0;
        assert_eq!(next_random(&mut state), 0xE220_A839_7B1D_CDAF);
        assert_eq!(next_random(&mut state), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(next_random(&mut state), 0x06C4_5D18_8009_454F);
    }
}

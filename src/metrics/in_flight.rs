//! [`InFlight`]: events taken out of the ring whose handlers have not finished, the one counter
//! whose memory ordering matters.

use crate::sync::{AtomicU64, Ordering};

/// Events a publisher has taken (or is about to take) out of the ring whose handlers have not
/// finished. `drain` and `close` wait for it to reach 0, so it must never read 0 while an
/// event is between the ring and its handlers' outcome.
///
/// Every access is SeqCst, for two reasons, both here rather than at the call sites:
/// - **Count before the claim.** A publisher adds its events ([`count`](Self::count) or
///   [`reserve`](Self::reserve)) *before* it moves the ring's head, and gives back what it did
///   not claim after. Otherwise `close` could see the ring empty (our claim done) and nothing
///   in flight (our count not yet made), and return before our handlers ran. With the count
///   first, the increment happens-before the head CAS, so a `close` that sees the head moved
///   (Acquire, in the ring) also sees the count.
/// - **Release after the outcome.** [`release`](Self::release) comes after the outcome
///   counters are recorded, so a waiter that reads 0 ([`is_idle`](Self::is_idle)) sees every
///   outcome.
///
/// It is touched once per chunk of events, never per event.
#[derive(Debug, Default)]
pub(crate) struct InFlight(AtomicU64);

impl InFlight {
    /// Counts `n` events about to be claimed.
    #[inline]
    pub(crate) fn count(&self, n: u64) {
        self.0.fetch_add(n, Ordering::SeqCst);
    }

    /// Counts up to `want` events about to be claimed, as many as keep the count at or below
    /// `bound`; returns how many (`None` when the count is already at the bound).
    #[inline]
    pub(crate) fn reserve(&self, want: u64, bound: u64) -> Option<u64> {
        let mut current = self.0.load(Ordering::SeqCst);
        loop {
            let room = want.min(bound.checked_sub(current).filter(|&r| r > 0)?);
            match self.0.compare_exchange_weak(
                current,
                current + room,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(room),
                Err(now) => current = now,
            }
        }
    }

    /// Takes `n` off: events whose outcome is recorded, or counted but not claimed. Nobody is
    /// woken: `drain` and `close` poll, so that publishing never pays for a wake-up check.
    #[inline]
    pub(crate) fn release(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::SeqCst);
    }

    /// The count now.
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// True when no event is in flight; every outcome recorded before is visible.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.get() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reserve_stops_at_the_bound() {
        let f = InFlight::default();
        f.count(3);
        assert_eq!(f.reserve(10, 8), Some(5));
        assert_eq!(f.reserve(1, 8), None);
        f.release(8);
        assert!(f.is_idle());
        assert_eq!(f.reserve(2, 8), Some(2));
        assert_eq!(f.get(), 2);
    }
}

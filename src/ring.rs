//! The ring: 2^n slots holding events by value, claimed through two counters.
//!
//! The algorithm is Dmitry Vyukov's bounded MPMC queue (as in `crossbeam_queue::ArrayQueue`),
//! reshaped for batches: producers claim a *range* of sequences on `tail` with one CAS, and
//! consumers claim a range on `head` with one CAS, so a batch of events costs one atomic
//! read-modify-write however long it is.
//!
//! # Sequences and stamps
//! Every event gets a sequence number `s` (0, 1, 2, ...) and lives in slot `s & mask`. Each slot
//! has a `stamp` saying whose turn it is:
//! - `2s`: the slot is empty and waits for the producer of sequence `s`;
//! - `2s + 1`: the slot holds the event of sequence `s`, for the consumer of `s`.
//!
//! After a consumer moves the event of `s` out it stores `2(s + cap)`, handing the slot to the
//! producer one lap later. Doubling keeps the two states apart even for a ring of one slot.
//!
//! # Claiming
//! `tail` is the next sequence to hand a producer, `head` the next to hand a consumer, and
//! `head <= tail <= head + cap` always holds. A producer claims `[t, t + n)` when
//! `t + n <= head + cap`, then waits (briefly: a consumer is copying the previous lap's event
//! out) for each slot's stamp to say `2s`, writes, and stamps `2s + 1`. A consumer claims
//! `[h, h + k)` for `k <= tail - h`, waits for each stamp to say `2s + 1` (briefly: the producer
//! is writing), moves the event out and stamps `2(s + cap)`.
//!
//! Between a claim and its stamp nothing runs but a bounded copy, never user code, so the short
//! waits always end: a producer's wait depends only on an older sequence's copy-out, which
//! depends only on older sequences still, and so on down to a finished write.
//!
//! # Closing
//! Bit 63 of `tail` is the closed mark. Producers claim by CAS on the whole word, so a claim and
//! `close` are ordered by the one atomic variable: every claim that succeeded is below the
//! sequence `close` read, and none succeeds after it.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Backoff, Ordering, UnsafeCell};

/// Bit of `tail` set once the ring is closed.
const CLOSED: u64 = 1 << 63;

/// The largest capacity a ring accepts: stamps (`2s + 1`) must not overflow for 2^62 sequences.
pub(crate) const MAX_CAPACITY: usize = 1 << 32;

/// Why a producer could not claim sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// Fewer than the requested number of slots are free.
    Full,
    /// The ring is closed.
    Closed,
}

/// One slot: the event and the stamp that says whose turn it is.
struct Slot<T> {
    /// `2s` when empty and waiting for the producer of `s`; `2s + 1` when holding the event of `s`.
    stamp: AtomicU64,
    /// Initialised exactly when `stamp` is odd.
    value: UnsafeCell<MaybeUninit<T>>,
}

/// A bounded MPMC ring of `2^n` events.
pub(crate) struct Ring<T> {
    /// Next sequence handed to a producer, with the closed mark in bit 63.
    tail: CachePadded<AtomicU64>,
    /// Next sequence handed to a consumer. Never passes `tail`'s sequence.
    head: CachePadded<AtomicU64>,
    /// `capacity` slots; sequence `s` lives in `slots[s & mask]`.
    slots: Box<[Slot<T>]>,
    /// `capacity - 1`.
    mask: u64,
}

// SAFETY: the ring moves `T` values between threads (so `T: Send`) and never shares a `&T`
// between threads: each value is accessed by exactly one producer and then one consumer, whose
// turns are ordered by the slot's stamp (Release on hand-off, Acquire on take-over).
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above; `&Ring` only lets a thread move values in or out, never borrow one shared.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// Allocates a ring of `capacity` slots.
    ///
    /// `capacity` must be a power of two no larger than [`MAX_CAPACITY`]; the caller checks.
    /// Returns `None` when the memory cannot be allocated.
    pub(crate) fn try_new(capacity: usize) -> Option<Self> {
        debug_assert!(capacity.is_power_of_two() && capacity <= MAX_CAPACITY);
        let mut slots = Vec::new();
        slots.try_reserve_exact(capacity).ok()?;
        slots.extend((0..capacity as u64).map(|s| Slot {
            stamp: AtomicU64::new(2 * s),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }));
        Some(Self {
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            slots: slots.into_boxed_slice(),
            mask: capacity as u64 - 1,
        })
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    #[inline(always)]
    fn slot(&self, seq: u64) -> &Slot<T> {
        // `seq & mask` is below `slots.len()`, so the bounds check folds away in practice;
        // indexing keeps this safe code.
        &self.slots[(seq & self.mask) as usize]
    }

    /// The sequence the next claim would get (the count of events ever claimed), without the
    /// closed mark.
    #[inline]
    pub(crate) fn tail(&self) -> u64 {
        // Relaxed: coherence alone guarantees that a claim which happened-before this load is
        // seen; the events themselves are synchronised through their stamps.
        self.tail.load(Ordering::Relaxed) & !CLOSED
    }

    /// The next sequence a consumer will claim (the count of events ever taken out).
    #[inline]
    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::SeqCst)
    }

    /// True once [`close`](Self::close) has run.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.tail.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Marks the ring closed and returns the tail it closed at: every sequence below it was
    /// claimed (and will be written), none at or above it ever will be.
    pub(crate) fn close(&self) -> u64 {
        self.tail.fetch_or(CLOSED, Ordering::SeqCst) & !CLOSED
    }

    /// Claims `n` consecutive sequences for writing and returns the first.
    ///
    /// Every claimed sequence must then be written with [`write`](Self::write), with no user
    /// code in between (see the module docs for why).
    #[inline]
    pub(crate) fn claim(&self, n: u64) -> Result<u64, ClaimError> {
        debug_assert!(n >= 1 && n <= self.capacity());
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            if tail & CLOSED != 0 {
                return Err(ClaimError::Closed);
            }
            // SeqCst pairs with the SeqCst head CAS and waiter counter in `store.rs`: a
            // producer that registers as blocked and then finds no room is guaranteed to be
            // seen by the consumer that makes room (a Dekker pattern). On x86 a SeqCst load
            // is a plain load.
            let head = self.head.load(Ordering::SeqCst);
            if tail < head {
                // `tail` is stale: consumers have already passed it.
                tail = self.tail.load(Ordering::Relaxed);
                continue;
            }
            if tail + n > head + self.capacity() {
                return Err(ClaimError::Full);
            }
            // Relaxed suffices for the claim itself: it hands out numbers, and the data are
            // synchronised slot by slot through the stamps.
            match self.tail.compare_exchange_weak(
                tail,
                tail + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(tail),
                Err(current) => tail = current,
            }
        }
    }

    /// Writes the event of a claimed sequence and hands it to consumers.
    ///
    /// # Safety
    /// `seq` must have been returned by [`claim`](Self::claim) (or be inside a claimed range)
    /// and not written before.
    #[inline]
    pub(crate) unsafe fn write(&self, seq: u64, value: T) {
        let slot = self.slot(seq);
        // Acquire pairs with the Release with which the consumer of `seq - cap` handed the slot
        // back, so its move-out happens-before our write.
        if slot.stamp.load(Ordering::Acquire) != 2 * seq {
            let backoff = Backoff::new();
            while slot.stamp.load(Ordering::Acquire) != 2 * seq {
                backoff.snooze();
            }
        }
        // SAFETY: the stamp is `2 * seq`, so the slot is empty and, `seq` being ours, no other
        // thread touches it until we publish the stamp below.
        slot.value.with_mut(|p| unsafe { (*p).write(value) });
        // Release publishes the write to the consumer that Acquires stamp `2 * seq + 1`.
        slot.stamp.store(2 * seq + 1, Ordering::Release);
    }

    /// Claims up to `max` of the sequences below `limit` for consuming, and moves their events
    /// into `out` in sequence order. Returns the first sequence claimed and how many, or `None`
    /// when nothing below `limit` is left.
    ///
    /// Room for `max` events is reserved in `out` before claiming, so that nothing can panic
    /// or allocate while slots are claimed but not yet handed back.
    #[inline]
    pub(crate) fn take(&self, limit: u64, max: u64, out: &mut Vec<T>) -> Option<(u64, u64)> {
        out.reserve(max as usize);
        let (first, n) = self.claim_for_consumer(limit, max)?;
        for seq in first..first + n {
            // SAFETY: `seq` was claimed for consuming just above, by us alone, and `out` has
            // room reserved, so `push` neither reallocates nor panics.
            out.push(unsafe { self.move_out(seq) });
        }
        Some((first, n))
    }

    /// Claims the oldest event and returns it with its sequence, or `None` if the ring is
    /// empty. Used by producers evicting under `DropOldest`.
    pub(crate) fn take_oldest(&self) -> Option<(u64, T)> {
        let (seq, _) = self.claim_for_consumer(self.tail(), 1)?;
        // SAFETY: `seq` was claimed for consuming just above, by us alone.
        Some((seq, unsafe { self.move_out(seq) }))
    }

    #[inline]
    fn claim_for_consumer(&self, limit: u64, max: u64) -> Option<(u64, u64)> {
        // Acquire (here and on a failed CAS): a consumer that finds nothing left below `limit`
        // synchronises with the claims that took it, so what their thread did before claiming
        // is visible (the store's `close` relies on this; see `Shared::take`). Free on x86.
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            if head >= limit || max == 0 {
                return None;
            }
            let n = max.min(limit - head);
            // SeqCst: see `claim`. A consumer's claim is what makes room for producers.
            match self.head.compare_exchange_weak(
                head,
                head + n,
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((head, n)),
                Err(current) => head = current,
            }
        }
    }

    /// Moves the event of `seq` out and hands its slot to the producer one lap later.
    ///
    /// # Safety
    /// `seq` must have been claimed for consuming by the caller and not moved out before.
    #[inline]
    unsafe fn move_out(&self, seq: u64) -> T {
        let slot = self.slot(seq);
        // Acquire pairs with the producer's Release of `2 * seq + 1`: its write is visible.
        if slot.stamp.load(Ordering::Acquire) != 2 * seq + 1 {
            let backoff = Backoff::new();
            while slot.stamp.load(Ordering::Acquire) != 2 * seq + 1 {
                backoff.snooze();
            }
        }
        // SAFETY: the odd stamp says the slot holds the initialised event of `seq`, which we
        // claimed alone; reading it moves ownership out, and the stamp below marks it empty.
        let value = slot.value.with_mut(|p| unsafe { (*p).assume_init_read() });
        // Release: our read happens-before the next lap's producer overwrites the slot.
        slot.stamp
            .store(2 * (seq + self.capacity()), Ordering::Release);
        value
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // `&mut self`: no other thread is left. Every claimed sequence was written (claim and
        // write have nothing between them that can fail), so the slots in [head, tail) hold
        // exactly the events still pending, and their stamps are odd.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed) & !CLOSED;
        for seq in head..tail {
            let slot = self.slot(seq);
            debug_assert_eq!(slot.stamp.load(Ordering::Relaxed), 2 * seq + 1);
            // SAFETY: the slot holds the initialised, never-consumed event of `seq`.
            slot.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
        }
    }
}

impl<T> std::fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity())
            .field("head", &self.head())
            .field("tail", &self.tail())
            .field("closed", &self.is_closed())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn claims_until_full_then_reports_full() {
        let ring = Ring::<u32>::try_new(4).unwrap();
        for i in 0..4 {
            let seq = ring.claim(1).unwrap();
            assert_eq!(seq, i);
            // SAFETY: just claimed.
            unsafe { ring.write(seq, i as u32) };
        }
        assert_eq!(ring.claim(1), Err(ClaimError::Full));
        let mut out = Vec::with_capacity(4);
        assert_eq!(ring.take(ring.tail(), 4, &mut out), Some((0, 4)));
        assert_eq!(out, [0, 1, 2, 3]);
        assert_eq!(ring.take(ring.tail(), 4, &mut out), None);
    }

    #[test]
    fn one_slot_ring_alternates() {
        let ring = Ring::<String>::try_new(1).unwrap();
        let mut out = Vec::with_capacity(1);
        for i in 0..5u64 {
            let seq = ring.claim(1).unwrap();
            assert_eq!(seq, i);
            // SAFETY: just claimed.
            unsafe { ring.write(seq, i.to_string()) };
            assert_eq!(ring.claim(1), Err(ClaimError::Full));
            assert_eq!(ring.take(ring.tail(), 1, &mut out), Some((i, 1)));
        }
        assert_eq!(out, ["0", "1", "2", "3", "4"]);
    }

    #[test]
    fn batch_claims_are_contiguous_and_respect_room() {
        let ring = Ring::<u8>::try_new(8).unwrap();
        assert_eq!(ring.claim(5), Ok(0));
        for s in 0..5 {
            // SAFETY: claimed above.
            unsafe { ring.write(s, s as u8) };
        }
        assert_eq!(ring.claim(4), Err(ClaimError::Full));
        assert_eq!(ring.claim(3), Ok(5));
        for s in 5..8 {
            // SAFETY: claimed above.
            unsafe { ring.write(s, s as u8) };
        }
        assert_eq!(ring.take_oldest(), Some((0, 0)));
        assert_eq!(ring.claim(1), Ok(8));
        // SAFETY: claimed above.
        unsafe { ring.write(8, 8) };
        let mut out = Vec::with_capacity(8);
        assert_eq!(ring.take(ring.tail(), 8, &mut out), Some((1, 8)));
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn take_stops_at_limit() {
        let ring = Ring::<u8>::try_new(4).unwrap();
        for s in 0..3 {
            ring.claim(1).unwrap();
            // SAFETY: claimed above.
            unsafe { ring.write(s, s as u8) };
        }
        let mut out = Vec::with_capacity(4);
        assert_eq!(ring.take(2, 4, &mut out), Some((0, 2)));
        assert_eq!(ring.take(2, 4, &mut out), None);
        assert_eq!(ring.take(3, 4, &mut out), Some((2, 1)));
    }

    #[test]
    fn close_refuses_claims_and_reports_the_tail() {
        let ring = Ring::<u8>::try_new(4).unwrap();
        ring.claim(2).unwrap();
        // SAFETY: claimed above.
        unsafe {
            ring.write(0, 0);
            ring.write(1, 1);
        }
        assert_eq!(ring.close(), 2);
        assert!(ring.is_closed());
        assert_eq!(ring.claim(1), Err(ClaimError::Closed));
        assert_eq!(ring.tail(), 2);
    }

    #[test]
    fn drop_releases_pending_values_once() {
        use std::sync::Arc;
        let token = Arc::new(());
        {
            let ring = Ring::<Arc<()>>::try_new(4).unwrap();
            for s in 0..3 {
                ring.claim(1).unwrap();
                // SAFETY: claimed above.
                unsafe { ring.write(s, token.clone()) };
            }
            drop(ring.take_oldest());
            assert_eq!(Arc::strong_count(&token), 3);
        }
        assert_eq!(Arc::strong_count(&token), 1);
    }

    /// Laps the ring many times with heap values, mixing batch claims, partial takes and
    /// evictions, so that Miri sees every slot written, moved out and rewritten, and a leak or
    /// double drop shows in the final count.
    #[test]
    fn many_laps_move_each_value_exactly_once() {
        use std::sync::Arc;
        let laps = if cfg!(miri) { 3 } else { 200 };
        let token = Arc::new(());
        for cap in [1u64, 2, 4] {
            let ring = Ring::<(u64, Arc<()>)>::try_new(cap as usize).unwrap();
            let mut out = Vec::with_capacity(cap as usize);
            let mut expect = 0;
            for lap in 0..laps * cap {
                let n = 1 + lap % cap;
                let first = ring.claim(n).unwrap();
                for s in first..first + n {
                    // SAFETY: claimed above, written once.
                    unsafe { ring.write(s, (s, token.clone())) };
                }
                if lap % 3 == 0 && n > 1 {
                    let (seq, (v, _)) = ring.take_oldest().unwrap();
                    assert_eq!((seq, v), (expect, expect));
                    expect += 1;
                }
                let (from, k) = ring.take(ring.tail(), cap, &mut out).unwrap();
                assert_eq!(from, expect);
                for (i, (v, _)) in out.drain(..).enumerate() {
                    assert_eq!(v, from + i as u64);
                }
                expect += k;
                assert_eq!(ring.head(), ring.tail());
            }
            assert_eq!(Arc::strong_count(&token), 1);
        }
    }

    /// A consumer waiting on a slot whose producer has claimed but not yet written it, and a
    /// producer waiting on a slot the previous lap's consumer has not handed back: two real
    /// threads, no sleeps, so Miri checks the stamps' happens-before edges.
    #[test]
    fn stamps_order_producer_and_consumer_threads() {
        use std::sync::Arc;
        let n: u64 = if cfg!(miri) { 50 } else { 100_000 };
        let ring = Arc::new(Ring::<Box<u64>>::try_new(2).unwrap());
        let producer = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    let seq = loop {
                        match ring.claim(1) {
                            Ok(seq) => break seq,
                            Err(ClaimError::Full) => std::thread::yield_now(),
                            Err(ClaimError::Closed) => unreachable!(),
                        }
                    };
                    assert_eq!(seq, i);
                    // SAFETY: claimed just above, written once.
                    unsafe { ring.write(seq, Box::new(i)) };
                }
            })
        };
        let mut out = Vec::with_capacity(2);
        let mut next = 0;
        while next < n {
            // Claiming up to the producer's tail may reach a slot it has not written yet:
            // `take` must wait for the stamp, not read early.
            if let Some((first, k)) = ring.take(ring.tail(), 2, &mut out) {
                assert_eq!(first, next);
                for (i, v) in out.drain(..).enumerate() {
                    assert_eq!(*v, first + i as u64);
                }
                next += k;
            } else {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
    }
}

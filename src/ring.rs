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
//! out) for each slot's stamp to say `2s`, writes, and stamps `2s + 1`. A publisher claims
//! `[h, h + k)`, the longest run of slots from `h` whose stamps already say `2s + 1`, moves the
//! events out and stamps `2(s + cap)`: it never waits for a producer, and an event still being
//! written (with everything behind it) is left for the next publish. A producer evicting the
//! oldest event under `DropOldest` ([`Ring::evict_oldest`]) likewise claims `h` only if its event
//! is written and the ring is full at that moment; otherwise it claims nothing and retries.
//!
//! So no consumer-side claim ever waits for a producer, and between a claim and its stamp
//! nothing runs but a bounded copy, never user code. The only wait left is a producer's for the
//! previous lap's consumer to finish copying its slot out (one publisher's chunk at most,
//! unless that consumer's thread is descheduled mid-copy): one hop, never a chain across laps.
//!
//! # Batches become visible at once
//! A batch is stamped back to front: the stamps of `first + 1 ..` are stored before the stamp of
//! `first`. A publisher claims only a written prefix, so it stops at `first` until the whole
//! batch is written, and a publisher that sees `first` written (Acquire) sees the rest too.
//!
//! # Flags in the tail word
//! Bit 63 of `tail` is the closed mark, bit 61 the sealed mark. Producers claim by CAS on the
//! whole word, so a claim and a mark are ordered by the one atomic variable: every claim that
//! succeeded is below the sequence the mark was set at, and none that the mark refuses
//! succeeds after it. Closed refuses [`Intake::Outside`] claims (the store's `close` sets it
//! first); sealed refuses every claim, [`Intake::FollowUp`] ones (handlers' follow-ups, the
//! timer) too (`close` sets it once everything has settled). A follow-up claim keeps the closed
//! mark in the word it writes.
//!
//! Bit 62 is the gate: a batch that found no room for all its events under `DropOldest` sets it
//! ([`Ring::try_gate`]) while it evicts, and while it is set every other claim fails with
//! [`ClaimError::Gated`]. Only the gate holder claims next ([`Ring::claim_gated`], which clears
//! it), so single enqueues cannot keep taking the slots the batch frees. The holder waits for
//! nothing but the writes of events already claimed (never for a publisher), so nothing waiting
//! on the gate waits on a publisher either. The check costs the fast path nothing: the claim
//! already tests the word for the closed mark.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Backoff, Ordering, UnsafeCell};

/// Bit of `tail` set once the ring is closed to outside producers.
const CLOSED: u64 = 1 << 63;
/// Bit of `tail` set while a batch holds the gate (see the module docs).
const GATED: u64 = 1 << 62;
/// Bit of `tail` set once the ring is sealed: no claim at all (set with `CLOSED`).
const SEALED: u64 = 1 << 61;
/// The flag bits of `tail`; the rest is the sequence.
const FLAGS: u64 = CLOSED | GATED | SEALED;

/// The largest capacity a ring accepts: stamps (`2s + 1`) must not overflow for 2^61 sequences.
pub(crate) const MAX_CAPACITY: usize = 1 << 32;

/// Who claims: decides which mark refuses the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intake {
    /// A producer outside the store: refused once the ring is closed.
    Outside,
    /// A follow-up from inside (a handler through its `Context`, the timer): refused only once
    /// the ring is sealed, so work accepted before a close can finish during it.
    FollowUp,
}

impl Intake {
    /// The mark that refuses this intake.
    #[inline(always)]
    fn closed_mark(self) -> u64 {
        match self {
            Intake::Outside => CLOSED,
            Intake::FollowUp => SEALED,
        }
    }

    /// Why a claim by this intake fails on a tail word with `flags` set, if it does.
    #[inline]
    fn refusal(self, word: u64) -> Option<ClaimError> {
        if word & self.closed_mark() != 0 {
            Some(ClaimError::Closed)
        } else if word & GATED != 0 {
            Some(ClaimError::Gated)
        } else {
            None
        }
    }
}

/// Why a producer could not claim sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// Fewer than the requested number of slots are free.
    Full,
    /// The ring is closed.
    Closed,
    /// A batch holds the gate: only it may claim next.
    Gated,
}

/// What [`Ring::evict_oldest`] did.
#[derive(Debug)]
pub(crate) enum Eviction<T> {
    /// The oldest event, with its sequence, was taken out to make room.
    Evicted(u64, T),
    /// Nothing was evicted: the ring had room, or another thread moved the head, or the ring
    /// is closed. The caller claims again.
    NotNeeded,
    /// The ring is full but its oldest event is still being written: nothing was claimed, and
    /// the caller waits a moment and tries again.
    Unwritten,
}

/// A bounded MPMC ring of `2^n` events.
///
/// Stamps and events live in two parallel arrays rather than side by side, so that a batch of
/// events is one contiguous run of memory that moves in and out with a single `memcpy`, between
/// a scan of its stamps and a store of its new stamps.
pub(crate) struct Ring<T> {
    /// Next sequence handed to a producer, with the closed mark in bit 63 and the gate in
    /// bit 62.
    tail: CachePadded<AtomicU64>,
    /// Next sequence handed to a consumer. Never passes `tail`'s sequence.
    head: CachePadded<AtomicU64>,
    /// `stamps[s & mask]`: `2s` when the slot is empty and waits for the producer of `s`;
    /// `2s + 1` when it holds the event of `s`.
    stamps: Box<[AtomicU64]>,
    /// `values[s & mask]` is initialised exactly when its stamp is odd.
    values: Box<[UnsafeCell<MaybeUninit<T>>]>,
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
        let mut values = Vec::new();
        values.try_reserve_exact(capacity).ok()?;
        values.extend((0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())));
        let mut stamps = Vec::new();
        stamps.try_reserve_exact(capacity).ok()?;
        stamps.extend((0..capacity as u64).map(|s| AtomicU64::new(2 * s)));
        Some(Self {
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            stamps: stamps.into_boxed_slice(),
            values: values.into_boxed_slice(),
            mask: capacity as u64 - 1,
        })
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    #[inline(always)]
    fn index(&self, seq: u64) -> usize {
        (seq & self.mask) as usize
    }

    #[inline(always)]
    fn stamp(&self, seq: u64) -> &AtomicU64 {
        let index = self.index(seq);
        debug_assert!(index < self.stamps.len());
        // SAFETY: `stamps.len() == mask + 1`, so `seq & mask` is in bounds. Unchecked because
        // this is on every enqueue and every take.
        unsafe { self.stamps.get_unchecked(index) }
    }

    #[inline(always)]
    fn value(&self, seq: u64) -> &UnsafeCell<MaybeUninit<T>> {
        let index = self.index(seq);
        debug_assert!(index < self.values.len());
        // SAFETY: `values.len() == mask + 1`, so `seq & mask` is in bounds.
        unsafe { self.values.get_unchecked(index) }
    }

    /// Waits (briefly: see the module docs) until the stamp of `seq` reads `expected`.
    ///
    /// Acquire: whatever the thread that stored `expected` did to the slot before (a producer's
    /// write, a consumer's move-out) happens-before what the caller does next.
    #[inline(always)]
    fn wait_for(&self, seq: u64, expected: u64) {
        let stamp = self.stamp(seq);
        if stamp.load(Ordering::Acquire) != expected {
            let backoff = Backoff::new();
            while stamp.load(Ordering::Acquire) != expected {
                backoff.snooze();
            }
        }
    }

    /// The sequence the next claim would get (the count of events ever claimed), without the
    /// closed mark.
    #[inline]
    pub(crate) fn tail(&self) -> u64 {
        // Relaxed: coherence alone guarantees that a claim which happened-before this load is
        // seen; the events themselves are synchronised through their stamps.
        self.tail.load(Ordering::Relaxed) & !FLAGS
    }

    /// The next sequence a consumer will claim (the count of events ever taken out).
    #[inline]
    pub(crate) fn head(&self) -> u64 {
        self.head.load(Ordering::SeqCst)
    }

    /// True once [`close`](Self::close) has run: closed to outside producers.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.refuses(Intake::Outside)
    }

    /// True once claims by `intake` are refused for good.
    #[inline]
    pub(crate) fn refuses(&self, intake: Intake) -> bool {
        self.tail.load(Ordering::Acquire) & intake.closed_mark() != 0
    }

    /// Closes the ring to outside producers; follow-ups still get in until [`seal`](Self::seal).
    pub(crate) fn close(&self) {
        self.tail.fetch_or(CLOSED, Ordering::SeqCst);
    }

    /// Seals the ring and returns the tail it sealed at: every sequence below it was claimed
    /// (and will be written), none at or above it ever will be.
    pub(crate) fn seal(&self) -> u64 {
        self.tail.fetch_or(CLOSED | SEALED, Ordering::SeqCst) & !FLAGS
    }

    /// True while a batch holds the gate.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn is_gated(&self) -> bool {
        self.tail.load(Ordering::Acquire) & GATED != 0
    }

    /// True when `n` slots are free (as far as the counters show; the gate is not looked at).
    #[inline]
    pub(crate) fn has_room(&self, n: u64) -> bool {
        // Head first: `tail - head` can only be overstated, never understated.
        let head = self.head();
        self.tail() + n <= head + self.capacity()
    }

    /// Claims `n` consecutive sequences for writing and returns the first.
    ///
    /// Every claimed sequence must then be written with [`write`](Self::write) or
    /// [`write_batch`](Self::write_batch), with no user code in between (see the module docs).
    #[inline]
    pub(crate) fn claim(&self, n: u64, intake: Intake) -> Result<u64, ClaimError> {
        debug_assert!(n >= 1 && n <= self.capacity());
        // Orderings: `Full` must mean full, not a stale view of the head. A producer that
        // reads the tail some other producer wrote must also see every head move that
        // producer had seen when it claimed (a handler's follow-up claims right after its
        // publisher moved the head; a producer may claim on a stamp a consumer wrote after
        // its head move). So the tail is read with Acquire and claimed with Release, and the
        // room check's stamp is read with Acquire: head move -> stamp (Release) -> claim
        // (Release) -> the next producer's tail read (Acquire) -> its head read. All plain
        // loads and the same `lock cmpxchg` on x86. (loom found the false `Full` without
        // them: a follow-up's tail seen, its publisher's head move not.)
        let mut word = self.tail.load(Ordering::Acquire);
        loop {
            if word & FLAGS != 0 {
                if let Some(refusal) = intake.refusal(word) {
                    return Err(refusal);
                }
            }
            // A follow-up's claim during close keeps the closed mark: the CAS below adds `n`
            // to the whole word, and the sequence never reaches the flag bits.
            let tail = word & !FLAGS;
            // Room for `[tail, tail + n)` is first judged by the stamp of its last slot: if
            // the previous lap's event there has been moved out, consumers have claimed
            // every sequence up to it, so `tail + n <= head + cap`. Only when that slot is not
            // free yet is `head` read, to tell a full ring from a consumer still copying out.
            // The common path so never touches the head's cache line, which the publisher
            // writes on every take: producer and publisher do not bounce it between cores.
            let last = tail + n - 1;
            if self.stamp(last).load(Ordering::Acquire) != 2 * last {
                // SeqCst, like every read of the head that decides room (see `wait.rs`'s
                // `Sleepers`); a plain load on x86.
                let head = self.head.load(Ordering::SeqCst);
                if tail < head {
                    // `tail` is stale: consumers have already passed it.
                    word = self.tail.load(Ordering::Acquire);
                    continue;
                }
                if tail + n > head + self.capacity() {
                    return Err(ClaimError::Full);
                }
            }
            // The events themselves are synchronised slot by slot through the stamps; the
            // orderings here are for the room check (see above), and SeqCst on success for a
            // sleeping consumer's handshake (`Sleepers::wake_after_claim`): the same
            // `lock cmpxchg` on x86.
            match self.tail.compare_exchange_weak(
                word,
                word + n,
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(tail),
                Err(current) => word = current,
            }
        }
    }

    /// The claim of a ring with one producer: [`claim`](Self::claim) with a plain store of
    /// the tail in place of the CAS. The room check is `claim`'s. The tail carries no flags
    /// here: the single-producer lane keeps its closed mark apart (`store/lanes.rs`), since a
    /// plain store would erase a mark set meanwhile.
    ///
    /// # Safety
    /// No other thread ever claims on this ring: every claim is made by one thread at a time,
    /// each one ordered after the previous (the lane's owner is a `&mut` handle).
    #[inline]
    pub(crate) unsafe fn claim_single(&self, n: u64) -> Result<u64, ClaimError> {
        debug_assert!(n >= 1 && n <= self.capacity());
        // Relaxed: only we write the tail.
        let tail = self.tail.load(Ordering::Relaxed);
        debug_assert_eq!(tail & FLAGS, 0, "a single-producer ring carries no flags");
        let last = tail + n - 1;
        // Room, judged as in `claim` (the stamp first; the head, SeqCst, only when that slot
        // is not free yet). The head never passes a tail we have not stored yet.
        if self.stamp(last).load(Ordering::Acquire) != 2 * last
            && tail + n > self.head.load(Ordering::SeqCst) + self.capacity()
        {
            return Err(ClaimError::Full);
        }
        // Release: free on x86, and a consumer that reads this tail and then the stamps needs
        // nothing more (the events are synchronised through their stamps). What `close` and a
        // sleeping consumer need from this store, the lane's asymmetric barrier provides.
        self.tail.store(tail + n, Ordering::Release);
        Ok(tail)
    }

    /// Writes the event of a claimed sequence and hands it to consumers.
    ///
    /// # Safety
    /// `seq` must have been claimed with [`claim`](Self::claim) by the caller and not written
    /// before.
    #[inline]
    pub(crate) unsafe fn write(&self, seq: u64, value: T) {
        // The consumer of `seq - cap` has moved its event out.
        self.wait_for(seq, 2 * seq);
        // SAFETY: the stamp is `2 * seq`, so the slot is empty and, `seq` being ours, no other
        // thread touches it until we publish the stamp below.
        self.value(seq).with_mut(|p| unsafe { (*p).write(value) });
        // Release publishes the write to the consumer that Acquires stamp `2 * seq + 1`.
        self.stamp(seq).store(2 * seq + 1, Ordering::Release);
    }

    /// Moves every event out of `batch` into the claimed sequences `[first, first + len)`,
    /// leaving `batch` empty.
    ///
    /// # Safety
    /// `[first, first + batch.len())` must have been claimed with one [`claim`](Self::claim)
    /// by the caller and not written before.
    pub(crate) unsafe fn write_batch(&self, first: u64, batch: &mut Vec<T>) {
        let n = batch.len() as u64;
        for seq in first..first + n {
            self.wait_for(seq, 2 * seq);
        }
        // SAFETY: the `n` slots are ours and empty (stamps `2 * seq` seen above); `batch`
        // holds `n` initialised values, whose ownership moves into the ring: `set_len(0)`
        // below keeps `batch` from dropping them.
        unsafe {
            self.copy_in(first, batch.as_ptr(), n);
            batch.set_len(0);
        }
        // Back to front, `first` last: a publisher claims only a written prefix, so it sees
        // none of the batch until `first`'s stamp, and then all of it (see the module docs).
        // Release publishes the copy above, and the later stamps, to whoever Acquires a stamp.
        for seq in (first..first + n).rev() {
            self.stamp(seq).store(2 * seq + 1, Ordering::Release);
        }
    }

    /// Claims up to `max` of the sequences below `limit` whose events are already written, and
    /// moves those events to the end of `out` in sequence order. Returns the first sequence
    /// claimed and how many, or `None` when nothing below `limit` is ready.
    ///
    /// Only the written prefix is claimed: an event whose producer has claimed its slot but not
    /// yet written it stops the claim there, and it and everything behind it wait for the next
    /// call. A publisher therefore never waits on a producer (which, preempted between claim
    /// and write, could stall it for a whole scheduler time slice).
    ///
    /// Room for `max` events is reserved in `out` before claiming, so that nothing can panic
    /// or allocate while slots are claimed but not yet handed back.
    #[inline]
    pub(crate) fn take_batch(&self, limit: u64, max: u64, out: &mut Vec<T>) -> Option<(u64, u64)> {
        out.reserve(max as usize);
        let (first, n) = self.claim_written(limit, max)?;
        let len = out.len();
        // SAFETY: the `n` slots are ours and hold initialised events (odd stamps seen by
        // `claim_written`, and only their claimer, us, changes them now); `out` has room for
        // `n` more (reserved above). The events' ownership moves to `out`, and the stamps below
        // mark the slots empty so the ring will not drop them again.
        unsafe {
            self.copy_out(first, out.as_mut_ptr().add(len), n);
            out.set_len(len + n as usize);
        }
        for seq in first..first + n {
            // Release: our copy happens-before the next lap's producer overwrites the slot.
            self.stamp(seq)
                .store(2 * (seq + self.capacity()), Ordering::Release);
        }
        Some((first, n))
    }

    /// Claims the longest run of written events starting at `head`, at most `max` and below
    /// `limit`.
    #[inline]
    fn claim_written(&self, limit: u64, max: u64) -> Option<(u64, u64)> {
        // Acquire on the head (here and on a failed CAS): a consumer that finds nothing left
        // below `limit` synchronises with the claims that took it, so what their thread did
        // before claiming is visible (the store's `close` relies on this; see `InFlight` in `metrics/in_flight.rs`).
        // Free on x86.
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let want = max.min(limit.saturating_sub(head));
            // Acquire: each producer's write happens-before our copy-out. A stamp read here
            // cannot go stale before our CAS succeeds: only the claimer of a sequence changes
            // its stamp, and the CAS fails if anyone else claimed it meanwhile.
            let mut n = 0;
            while n < want && self.stamp(head + n).load(Ordering::Acquire) == 2 * (head + n) + 1 {
                n += 1;
            }
            if n == 0 {
                return None;
            }
            match self.advance_head(head, n) {
                Ok(()) => return Some((head, n)),
                Err(current) => head = current,
            }
        }
    }

    /// Under `DropOldest`: takes the oldest event out to make room for `n` new ones, but only
    /// if fewer than `n` slots are free at that moment and the oldest event is written.
    ///
    /// Never waits and never claims an unwritten slot, so an evicting producer holds nothing
    /// while another thread is descheduled. Full *at the moment of the eviction*: the head is
    /// read first and the eviction is a CAS from that same head, so the head did not move in
    /// between; the tail, read in between, only grows while the head stands still; so the
    /// slots free at the CAS are at most those free when the tail was read, fewer than `n`.
    pub(crate) fn evict_oldest(&self, n: u64, intake: Intake) -> Eviction<T> {
        // SeqCst, like every read of the head or tail that decides room (see `claim`).
        let head = self.head.load(Ordering::SeqCst);
        let tail = self.tail.load(Ordering::SeqCst);
        if tail & intake.closed_mark() != 0 || (tail & !FLAGS) + n <= head + self.capacity() {
            return Eviction::NotNeeded;
        }
        // Acquire: the producer's write happens-before our move-out.
        if self.stamp(head).load(Ordering::Acquire) != 2 * head + 1 {
            return Eviction::Unwritten;
        }
        if self.advance_head(head, 1).is_err() {
            return Eviction::NotNeeded;
        }
        // SAFETY: `head` is ours (the CAS above), and its event is written (odd stamp seen
        // above; only its claimer, us, changes it now).
        Eviction::Evicted(head, unsafe { self.move_out(head) })
    }

    /// Reserves the ring for a batch: sets the gate unless the ring is closed or another batch
    /// holds it. Returns true if this call set it; the caller must then end with
    /// [`claim_gated`](Self::claim_gated) succeeding or [`ungate`](Self::ungate).
    pub(crate) fn try_gate(&self, intake: Intake) -> Result<bool, ClaimError> {
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            match intake.refusal(tail) {
                Some(ClaimError::Gated) => return Ok(false),
                Some(closed) => return Err(closed),
                None => {}
            }
            // Relaxed, as a claim: the gate hands out the right to claim, not data.
            match self.tail.compare_exchange_weak(
                tail,
                tail | GATED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(true),
                Err(current) => tail = current,
            }
        }
    }

    /// The gate holder's claim of `n` sequences: succeeds, clearing the gate, once `n` slots
    /// are free; [`ClaimError::Full`] until then (the caller keeps the gate and evicts);
    /// [`ClaimError::Closed`] once closed to `intake` (the gate is cleared).
    pub(crate) fn claim_gated(&self, n: u64, intake: Intake) -> Result<u64, ClaimError> {
        debug_assert!(n >= 1 && n <= self.capacity());
        loop {
            // While the gate is up no other producer changes the tail; only `close` may.
            let word = self.tail.load(Ordering::Relaxed);
            debug_assert!(word & GATED != 0, "claim_gated without the gate");
            if word & intake.closed_mark() != 0 {
                self.ungate();
                return Err(ClaimError::Closed);
            }
            let tail = word & !FLAGS;
            // SeqCst: see `claim`.
            if tail + n > self.head.load(Ordering::SeqCst) + self.capacity() {
                return Err(ClaimError::Full);
            }
            // Clears the gate, keeps a closed mark (a follow-up's batch during close). SeqCst
            // for a sleeping consumer's handshake, as in `claim`.
            match self.tail.compare_exchange_weak(
                word,
                (tail + n) | (word & CLOSED),
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(tail),
                Err(_) => continue,
            }
        }
    }

    /// Lowers the gate without claiming (the holder gave up: timeout or close).
    pub(crate) fn ungate(&self) {
        self.tail.fetch_and(!GATED, Ordering::Relaxed);
    }

    /// [`take_batch`](Self::take_batch) of one event, returned by value: the oldest event
    /// below `limit` if it is written.
    #[inline]
    pub(crate) fn take_one(&self, limit: u64) -> Option<(u64, T)> {
        let (seq, _) = self.claim_written(limit, 1)?;
        // SAFETY: `seq` is ours, and its event is written (odd stamp seen by the claim).
        Some((seq, unsafe { self.move_out(seq) }))
    }

    /// Moves the event of `seq` out and hands its slot to the producer one lap later.
    ///
    /// # Safety
    /// The caller claimed `seq` for consuming, has seen its stamp odd (written), and has not
    /// moved it out before.
    #[inline]
    unsafe fn move_out(&self, seq: u64) -> T {
        // SAFETY: per the contract, the slot holds the initialised event of `seq` and only we
        // touch it; reading moves ownership out, and the stamp below marks the slot empty.
        let value = self
            .value(seq)
            .with_mut(|p| unsafe { (*p).assume_init_read() });
        // Release: our read happens-before the next lap's producer overwrites the slot.
        self.stamp(seq)
            .store(2 * (seq + self.capacity()), Ordering::Release);
        value
    }

    /// A consumer's claim of `[head, head + n)`: fails with the current head if another
    /// consumer moved it first.
    #[inline(always)]
    fn advance_head(&self, head: u64, n: u64) -> Result<(), u64> {
        // SeqCst: see `claim`; a consumer's claim is what makes room for producers. Acquire on
        // failure: see `claim_written`.
        self.head
            .compare_exchange_weak(head, head + n, Ordering::SeqCst, Ordering::Acquire)
            .map(drop)
    }

    /// Copies `n` values from `src` into the slots of `[first, first + n)`, wrapping around
    /// the end of the ring.
    ///
    /// # Safety
    /// The caller owns those slots, they are empty, and `src` points to `n` initialised
    /// values whose ownership the caller gives up.
    #[inline]
    unsafe fn copy_in(&self, first: u64, src: *const T, n: u64) {
        let (index, n) = (self.index(first), n as usize);
        let before_wrap = n.min(self.values.len() - index);
        // SAFETY: forwarded from the caller; the two runs are in bounds and do not overlap.
        unsafe {
            self.copy_cells(index, src, before_wrap, true);
            self.copy_cells(0, src.add(before_wrap), n - before_wrap, true);
        }
    }

    /// Copies the values of `[first, first + n)` out to `dst`, wrapping around the end.
    ///
    /// # Safety
    /// The caller owns those slots, they hold initialised values whose ownership moves to
    /// `dst`, and `dst` has room for `n` values.
    #[inline]
    unsafe fn copy_out(&self, first: u64, dst: *mut T, n: u64) {
        let (index, n) = (self.index(first), n as usize);
        let before_wrap = n.min(self.values.len() - index);
        // SAFETY: forwarded from the caller; the two runs are in bounds and do not overlap.
        unsafe {
            self.copy_cells(index, dst, before_wrap, false);
            self.copy_cells(0, dst.add(before_wrap), n - before_wrap, false);
        }
    }

    /// Copies `n` values between `values[index..index + n]` and `other`: into the cells when
    /// `into_ring`, out of them otherwise.
    ///
    /// # Safety
    /// `index + n <= capacity`; the caller owns those cells; `other` is valid for `n` values
    /// in the direction of the copy and does not overlap the ring.
    #[inline(always)]
    unsafe fn copy_cells(&self, index: usize, other: *const T, n: usize, into_ring: bool) {
        debug_assert!(index + n <= self.values.len());
        #[cfg(not(loom))]
        {
            // `UnsafeCell<MaybeUninit<T>>` has `T`'s layout, so the run is plain `[T]` memory.
            let cells = UnsafeCell::raw_get(self.values.as_ptr().wrapping_add(index)).cast::<T>();
            // SAFETY: in bounds and owned by the caller (see above); non-overlapping.
            unsafe {
                if into_ring {
                    std::ptr::copy_nonoverlapping(other, cells, n);
                } else {
                    std::ptr::copy_nonoverlapping(cells, other.cast_mut(), n);
                }
            }
        }
        #[cfg(loom)]
        for i in 0..n {
            // One cell at a time, so that loom tracks each access.
            self.values[index + i].with_mut(|cell| {
                // SAFETY: as above, element by element.
                unsafe {
                    if into_ring {
                        (*cell).write(other.add(i).read());
                    } else {
                        other.cast_mut().add(i).write((*cell).assume_init_read());
                    }
                }
            });
        }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // `&mut self`: no other thread is left. Every claimed sequence was written (claim and
        // write have nothing between them that can fail), so the slots in [head, tail) hold
        // exactly the events still pending, and their stamps are odd.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed) & !FLAGS;
        for seq in head..tail {
            debug_assert_eq!(self.stamp(seq).load(Ordering::Relaxed), 2 * seq + 1);
            // SAFETY: the slot holds the initialised, never-consumed event of `seq`.
            self.value(seq)
                .with_mut(|p| unsafe { (*p).assume_init_drop() });
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
            .field("sealed", &self.refuses(Intake::FollowUp))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

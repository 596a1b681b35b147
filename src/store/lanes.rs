//! Lanes: where an enqueue claims its slots.
//!
//! Every store has the *shared lane*, its MPMC ring, claimed with a CAS by any thread (outside
//! producers, handlers' follow-ups, the timer, commits). A store built with
//! [`Builder::build_with_producer`](super::Builder::build_with_producer) also has a *producer
//! lane*: a second ring of the same capacity whose only producer is the one [`Producer`]
//! handle, so its claim is a plain store of the tail (see [`ProducerLane::claim`]). Publishers
//! take from both; the producer lane's sequences carry [`PRODUCER_LANE`].
//!
//! The enqueue paths (`enqueue.rs`) are written once, over the [`Lane`] trait.
//!
//! [`Producer`]: super::Producer

use crossbeam_utils::CachePadded;

use crate::barrier;
use crate::metrics::Counters;
use crate::ring::{ClaimError, Eviction, Intake, Ring};
use crate::sync::{AtomicBool, AtomicU64, Backoff, Ordering};
use crate::wait::Sleepers;

/// The bit that marks a sequence number as the producer lane's (its own count, from 0); the
/// shared lane's never reach it.
pub const PRODUCER_LANE: u64 = 1 << 62;

/// A ring and how to claim on it: what the enqueue paths need to know of a lane.
pub(crate) trait Lane<E> {
    /// The lane's ring.
    fn ring(&self) -> &Ring<E>;
    /// Claims `n` sequences (see [`Ring::claim`]).
    fn claim(&self, n: u64) -> Result<u64, ClaimError>;
    /// True once this lane refuses claims for good.
    fn refuses(&self) -> bool;
    /// Takes the oldest event out to make room for `n` (see [`Ring::evict_oldest`]).
    fn evict_oldest(&self, n: u64) -> Eviction<E>;
    /// Reserves the lane for a batch that must evict (see [`Ring::try_gate`]).
    fn try_gate(&self) -> Result<bool, ClaimError>;
    /// The gate holder's claim (see [`Ring::claim_gated`]).
    fn claim_gated(&self, n: u64) -> Result<u64, ClaimError>;
    /// What the lane ORs into its sequences (0 or [`PRODUCER_LANE`]).
    fn tag(&self) -> u64;
    /// Wakes consumers asleep in `publish_wait`, right after a claim on this lane.
    fn wake_consumers(&self, sleepers: &Sleepers);
    /// Counts `n` events this lane's producer evicted.
    fn count_dropped(&self, counters: &Counters, n: u64);
}

/// The shared lane, claimed by `intake`.
pub(crate) struct SharedLane<'a, E> {
    pub(crate) ring: &'a Ring<E>,
    pub(crate) intake: Intake,
}

impl<E> Lane<E> for SharedLane<'_, E> {
    #[inline(always)]
    fn ring(&self) -> &Ring<E> {
        self.ring
    }
    #[inline(always)]
    fn claim(&self, n: u64) -> Result<u64, ClaimError> {
        self.ring.claim(n, self.intake)
    }
    fn refuses(&self) -> bool {
        self.ring.refuses(self.intake)
    }
    fn evict_oldest(&self, n: u64) -> Eviction<E> {
        self.ring.evict_oldest(n, self.intake)
    }
    fn try_gate(&self) -> Result<bool, ClaimError> {
        self.ring.try_gate(self.intake)
    }
    fn claim_gated(&self, n: u64) -> Result<u64, ClaimError> {
        self.ring.claim_gated(n, self.intake)
    }
    #[inline(always)]
    fn tag(&self) -> u64 {
        0
    }
    #[inline(always)]
    fn wake_consumers(&self, sleepers: &Sleepers) {
        sleepers.wake_after_claim();
    }
    fn count_dropped(&self, counters: &Counters, n: u64) {
        counters.add_dropped(n);
    }
}

/// The single producer's lane: a ring whose tail only the [`Producer`](super::Producer)
/// writes, and a closed mark kept apart from the tail (a plain store of the tail would erase
/// a mark set in the same word).
///
/// `close` must be sure that every claim either happened before it, so that it dispatches the
/// event, or sees the mark and is refused. That is a Dekker handshake (the producer stores
/// `producing`, then loads `closed`; `close` stores `closed`, then loads `producing`), made
/// asymmetric ([`barrier`]): the producer pays a compiler fence, `close` a `membarrier`.
/// `close` then waits while the producer is between its check and its tail store (a few
/// instructions, unless that thread is descheduled there).
pub(crate) struct ProducerLane<E> {
    ring: Ring<E>,
    /// True while the producer is between its store of `true` here and its tail store.
    producing: CachePadded<AtomicBool>,
    /// Set once by `close`.
    closed: AtomicBool,
    /// Events the producer evicted from this lane (only it writes; `metrics` adds it to the
    /// store's count).
    dropped: CachePadded<AtomicU64>,
}

impl<E> ProducerLane<E> {
    /// A lane of `capacity` slots, or `None` when its ring cannot be allocated or the
    /// process cannot use asymmetric barriers (then the producer uses the shared lane).
    pub(crate) fn try_new(capacity: usize) -> Option<Option<Self>> {
        if !barrier::register() {
            return Some(None);
        }
        let ring = Ring::try_new(capacity)?;
        Some(Some(Self {
            ring,
            producing: CachePadded::new(AtomicBool::new(false)),
            closed: AtomicBool::new(false),
            dropped: CachePadded::new(AtomicU64::new(0)),
        }))
    }

    /// The lane's ring.
    #[inline(always)]
    pub(crate) fn ring(&self) -> &Ring<E> {
        &self.ring
    }

    /// Events the producer evicted from this lane.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// True once [`close`](Self::close) has begun.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the lane: once this returns, every claim either completed its tail store
    /// before (and is counted in the ring's tail) or is refused.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Pairs with the producer's `light` barrier: either its store of `producing` is
        // visible below, or its load of `closed` sees the store above.
        barrier::heavy();
        let backoff = Backoff::new();
        // Acquire: the claim the producer finished (its tail store) is visible afterwards.
        while self.producing.load(Ordering::Acquire) {
            backoff.snooze();
        }
    }

    /// A consumer about to sleep, after registering as a sleeper: either the producer's next
    /// wake check sees the registration, or the consumer's check after this sees the
    /// producer's tail (see `consumer.rs`).
    pub(crate) fn sleeper_barrier(&self) {
        barrier::heavy();
    }

    /// The producer's claim of `n` sequences.
    ///
    /// # Safety
    /// Only the lane's one producer calls it, never two at once.
    #[inline(always)]
    unsafe fn claim(&self, n: u64) -> Result<u64, ClaimError> {
        // Relaxed: ordered against `close` by the barrier pair, not by the access itself.
        self.producing.store(true, Ordering::Relaxed);
        barrier::light();
        let claimed = if self.closed.load(Ordering::Relaxed) {
            Err(ClaimError::Closed)
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { self.ring.claim_single(n) }
        };
        // Release: `close` reads `false` only after the tail store above is visible.
        self.producing.store(false, Ordering::Release);
        claimed
    }
}

/// The producer lane as its one producer sees it: the only way to claim on it.
pub(crate) struct ExclusiveLane<'a, E>(&'a ProducerLane<E>);

impl<'a, E> ExclusiveLane<'a, E> {
    /// # Safety
    /// The caller is the lane's one producer (it holds the `&mut Producer`), and the value
    /// lives no longer than that borrow.
    pub(crate) unsafe fn new(lane: &'a ProducerLane<E>) -> Self {
        Self(lane)
    }
}

impl<E> Lane<E> for ExclusiveLane<'_, E> {
    #[inline(always)]
    fn ring(&self) -> &Ring<E> {
        &self.0.ring
    }
    #[inline(always)]
    fn claim(&self, n: u64) -> Result<u64, ClaimError> {
        // SAFETY: an `ExclusiveLane` is only made by the lane's one producer (see `new`).
        unsafe { self.0.claim(n) }
    }
    fn refuses(&self) -> bool {
        self.0.is_closed()
    }
    fn evict_oldest(&self, n: u64) -> Eviction<E> {
        if self.0.is_closed() {
            return Eviction::NotNeeded;
        }
        // The tail carries no marks here, so `Outside` only names the (absent) closed mark.
        self.0.ring.evict_oldest(n, Intake::Outside)
    }
    fn try_gate(&self) -> Result<bool, ClaimError> {
        // No other producer can take the room a batch makes: the gate is ours already.
        if self.0.is_closed() {
            Err(ClaimError::Closed)
        } else {
            Ok(true)
        }
    }
    fn claim_gated(&self, n: u64) -> Result<u64, ClaimError> {
        self.claim(n)
    }
    #[inline(always)]
    fn tag(&self) -> u64 {
        PRODUCER_LANE
    }
    #[inline(always)]
    fn wake_consumers(&self, sleepers: &Sleepers) {
        // Between the claim's tail store and the load of the sleepers' count: pairs with the
        // sleeping consumer's `sleeper_barrier`.
        barrier::light();
        sleepers.wake_if_any();
    }
    #[inline]
    fn count_dropped(&self, _: &Counters, n: u64) {
        // One writer: a load and a store, no `lock` prefix (a full lane under `DropOldest`
        // evicts on every enqueue).
        let dropped = &self.0.dropped;
        dropped.store(dropped.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// A lane as publishers see it: its ring, the tag of its sequences, and its index (0 for the
/// shared lane, 1 for the producer lane).
pub(crate) struct Source<'a, E> {
    pub(crate) ring: &'a Ring<E>,
    pub(crate) tag: u64,
    pub(crate) index: usize,
}

impl<E> Clone for Source<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Source<'_, E> {}

impl<'a, E> Source<'a, E> {
    /// The shared lane.
    pub(crate) fn shared(ring: &'a Ring<E>) -> Self {
        Self {
            ring,
            tag: 0,
            index: 0,
        }
    }

    /// The producer lane.
    pub(crate) fn producer(lane: &'a ProducerLane<E>) -> Self {
        Self {
            ring: &lane.ring,
            tag: PRODUCER_LANE,
            index: 1,
        }
    }

    /// The events waiting in the lane now, as an observer sees them: the head is read before
    /// the tail (so that the depth is never understated), and the two reads are not one
    /// instant: publishers and producers may move both between them (by far more than the
    /// ring holds, if this thread is preempted there). A lane never holds more than its
    /// capacity, so the depth is capped there.
    pub(crate) fn depth(&self) -> u64 {
        let head = self.ring.head();
        self.ring
            .tail()
            .saturating_sub(head)
            .min(self.ring.capacity())
    }
}

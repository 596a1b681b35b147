//! Putting events in the ring: single enqueues (the lock-free fast path, then the overrun
//! policies out of line) and all-or-nothing batches.

use std::time::{Duration, Instant};

use super::lanes::{Lane, SharedLane};
use super::{Enqueued, EventStore, OverrunPolicy, Shared};
use crate::error::{BatchError, EnqueueError};
use crate::event::Event;
use crate::metrics::Rejection;
use crate::ring::{ClaimError, Eviction, Intake};
use crate::sync::Backoff;
use crate::trace;

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Puts an event in the ring for the next [`publish`](Self::publish) (GoEventBus's
    /// `Subscribe`). Lock-free unless the ring is full under [`OverrunPolicy::Block`].
    ///
    /// # Errors
    /// [`EnqueueError::Closed`] after [`close`](Self::close); [`EnqueueError::Full`] when the
    /// ring is full under [`OverrunPolicy::ReturnError`]. The event comes back in the error.
    #[inline]
    pub fn enqueue(&self, event: E) -> Result<Enqueued, EnqueueError<E>> {
        self.enqueue_as(event, None, Intake::Outside)
    }

    /// [`enqueue`](Self::enqueue) for `intake` (a handler's follow-up gets in during `close`),
    /// waiting for room under `Block` until `deadline`.
    #[inline]
    pub(crate) fn enqueue_as(
        &self,
        event: E,
        deadline: Option<Instant>,
        intake: Intake,
    ) -> Result<Enqueued, EnqueueError<E>> {
        let lane = self.shared.lane(intake);
        self.shared
            .try_enqueue(event, &lane)
            .or_else(|(event, refusal)| self.shared.enqueue_slow(event, refusal, deadline, &lane))
    }

    /// Like [`enqueue`](Self::enqueue), but under [`OverrunPolicy::Block`] waits at most
    /// `timeout` for room, then returns [`EnqueueError::Timeout`] with the event. Under the
    /// other policies it is `enqueue`.
    pub fn enqueue_timeout(
        &self,
        event: E,
        timeout: Duration,
    ) -> Result<Enqueued, EnqueueError<E>> {
        self.shared
            .enqueue_timeout(event, timeout, &self.shared.lane(Intake::Outside))
    }

    /// Enqueues a whole batch, all or nothing: the events take consecutive sequence numbers
    /// with no other producer's event between them, and a publisher never sees part of the
    /// batch without the rest becoming visible right behind it. One atomic claim for the whole
    /// batch makes this the fastest way in.
    ///
    /// On success `batch` is left empty (its allocation kept, for reuse next tick). On error it
    /// is left untouched: every event is handed back. A batch the ring can never hold fails
    /// with [`BatchError::TooLarge`] under every policy. Full ring: `DropOldest` discards as
    /// many old events as needed; `Block` waits for room for the whole batch; `ReturnError`
    /// fails with [`BatchError::Full`].
    ///
    /// ```
    /// # use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    /// # struct Ev(u32);
    /// # impl Event for Ev { type Projection = u8; fn projection(&self) -> u8 { 0 } }
    /// let store = EventStore::new(Dispatcher::<Ev>::new(), 8, OverrunPolicy::ReturnError)?;
    /// let mut batch: Vec<Ev> = (0..6).map(Ev).collect();
    /// let first = store.enqueue_batch(&mut batch)?;
    /// assert_eq!((first.sequence, batch.len()), (0, 0));
    ///
    /// batch.extend((0..6).map(Ev));
    /// assert!(store.enqueue_batch(&mut batch).is_err()); // only 2 free slots
    /// assert_eq!(batch.len(), 6); // handed back
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn enqueue_batch(&self, batch: &mut Vec<E>) -> Result<Enqueued, BatchError> {
        self.shared
            .enqueue_batch(batch, None, &self.shared.lane(Intake::Outside))
    }

    /// [`enqueue_batch`](Self::enqueue_batch) that waits at most `timeout` for room under
    /// [`OverrunPolicy::Block`].
    pub fn enqueue_batch_timeout(
        &self,
        batch: &mut Vec<E>,
        timeout: Duration,
    ) -> Result<Enqueued, BatchError> {
        let deadline = Instant::now().checked_add(timeout);
        self.shared
            .enqueue_batch(batch, deadline, &self.shared.lane(Intake::Outside))
    }

    /// [`enqueue_batch`](Self::enqueue_batch) for `intake`, waiting until `deadline` under `Block`.
    pub(crate) fn enqueue_batch_as(
        &self,
        batch: &mut Vec<E>,
        deadline: Option<Instant>,
        intake: Intake,
    ) -> Result<Enqueued, BatchError> {
        self.shared
            .enqueue_batch(batch, deadline, &self.shared.lane(intake))
    }

    /// The timer thread's enqueue (`schedule/timer.rs`): [`enqueue`](Self::enqueue) (an outside
    /// producer: `close` stops the timer first, so a firing it races is refused), except that under
    /// [`OverrunPolicy::Block`] it waits for room only until `deadline`, then hands the event
    /// back as [`EnqueueError::Timeout`] *without* counting it as rejected, so that the timer
    /// can drop its strong handle and try again.
    pub(crate) fn enqueue_or_wait(
        &self,
        mut event: E,
        deadline: Instant,
    ) -> Result<Enqueued, EnqueueError<E>> {
        let shared = &*self.shared;
        if shared.policy == OverrunPolicy::Block {
            let lane = shared.lane(Intake::Outside);
            loop {
                match shared.try_enqueue(event, &lane) {
                    Ok(enqueued) => return Ok(enqueued),
                    // `enqueue` below counts the refusal and hands the event back.
                    Err((back, ClaimError::Closed)) => {
                        event = back;
                        break;
                    }
                    Err((back, ClaimError::Full | ClaimError::Gated)) => {
                        event = back;
                        if !shared.wait_for_room(1, Some(deadline), &lane) {
                            return Err(EnqueueError::Timeout(event));
                        }
                    }
                }
            }
        }
        self.enqueue(event)
    }
}

impl<E, Err> Shared<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// The shared lane, claimed by `intake`.
    #[inline(always)]
    pub(crate) fn lane(&self, intake: Intake) -> SharedLane<'_, E> {
        SharedLane {
            ring: &self.ring,
            intake,
        }
    }

    /// The fast path of every single enqueue: claim one slot of `lane` and write it, or give
    /// the event back with the reason.
    #[inline(always)]
    pub(crate) fn try_enqueue(
        &self,
        event: E,
        lane: &impl Lane<E>,
    ) -> Result<Enqueued, (E, ClaimError)> {
        match lane.claim(1) {
            Ok(sequence) => {
                if self.sampling.is_some() {
                    self.stamp_enqueued(sequence, 1, lane.tag());
                }
                // SAFETY: `sequence` was claimed just above, and is written once.
                unsafe { lane.ring().write(sequence, event) };
                lane.wake_consumers(&self.idle_consumers);
                Ok(Enqueued {
                    sequence: sequence | lane.tag(),
                    dropped: 0,
                })
            }
            Err(refusal) => Err((event, refusal)),
        }
    }

    /// [`EventStore::enqueue_timeout`] on `lane`: the deadline is only worked out if there is
    /// no room at once.
    pub(crate) fn enqueue_timeout(
        &self,
        event: E,
        timeout: Duration,
        lane: &impl Lane<E>,
    ) -> Result<Enqueued, EnqueueError<E>> {
        self.try_enqueue(event, lane).or_else(|(event, refusal)| {
            let deadline = Instant::now().checked_add(timeout);
            self.enqueue_slow(event, refusal, deadline, lane)
        })
    }

    /// The full-ring and closed paths of `enqueue`, out of line to keep the fast path small.
    #[cold]
    #[inline(never)]
    pub(crate) fn enqueue_slow(
        &self,
        mut event: E,
        mut refusal: ClaimError,
        deadline: Option<Instant>,
        lane: &impl Lane<E>,
    ) -> Result<Enqueued, EnqueueError<E>> {
        let mut dropped = 0;
        // The evicted event is dropped once our own is in: its `Drop` is user code, which
        // may enqueue too, and must not take the slot we made room in.
        let mut evicted = None;
        let backoff = Backoff::new();
        let outcome = loop {
            match (refusal, self.policy) {
                (ClaimError::Closed, _) => {
                    self.counters.add_rejected(Rejection::Closed, 1);
                    break Err(EnqueueError::Closed(event));
                }
                (ClaimError::Full | ClaimError::Gated, OverrunPolicy::ReturnError) => {
                    self.counters.add_rejected(Rejection::Full, 1);
                    break Err(EnqueueError::Full(event));
                }
                (ClaimError::Full, OverrunPolicy::DropOldest) => {
                    match lane.evict_oldest(1) {
                        Eviction::Evicted(sequence, old) => {
                            lane.count_dropped(&self.counters, 1);
                            dropped += 1;
                            let sequence = sequence | lane.tag();
                            trace::dropped(sequence);
                            // An earlier eviction of this call (another enqueue took its room).
                            if let Some((seq, previous)) = evicted.replace((sequence, old)) {
                                self.drop_evicted(seq, previous);
                            }
                        }
                        // Another producer's event at the head is being written: it will be
                        // evictable in a moment. We hold no claim meanwhile.
                        Eviction::Unwritten => backoff.snooze(),
                        Eviction::NotNeeded => {}
                    }
                }
                // A batch holds the gate and makes room for itself; wait for it to claim.
                (ClaimError::Gated, OverrunPolicy::DropOldest) => backoff.snooze(),
                // (`Gated` only happens under `DropOldest`.)
                (ClaimError::Full | ClaimError::Gated, OverrunPolicy::Block) => {
                    if !self.wait_for_room(1, deadline, lane) {
                        self.counters.add_rejected(Rejection::Timeout, 1);
                        break Err(EnqueueError::Timeout(event));
                    }
                }
            }
            match self.try_enqueue(event, lane) {
                Ok(enqueued) => {
                    break Ok(Enqueued {
                        dropped,
                        ..enqueued
                    });
                }
                Err((back, r)) => (event, refusal) = (back, r),
            }
        };
        if let Some((sequence, old)) = evicted {
            self.drop_evicted(sequence, old);
        }
        outcome
    }

    /// An all-or-nothing batch into `lane` (see [`EventStore::enqueue_batch`]).
    pub(crate) fn enqueue_batch(
        &self,
        batch: &mut Vec<E>,
        deadline: Option<Instant>,
        lane: &impl Lane<E>,
    ) -> Result<Enqueued, BatchError> {
        let ring = lane.ring();
        let len = batch.len();
        if len == 0 {
            return Ok(Enqueued {
                sequence: ring.tail() | lane.tag(),
                dropped: 0,
            });
        }
        let n = len as u64;
        if n > ring.capacity() {
            let capacity = ring.capacity() as usize;
            return Err(self.refuse_batch(
                n,
                Rejection::Full,
                BatchError::TooLarge { len, capacity },
            ));
        }
        match lane.claim(n) {
            // SAFETY: `[first, first + n)` was claimed just above, for this batch.
            Ok(first) => Ok(unsafe { self.write_claimed_batch(lane, first, batch, 0) }),
            Err(ClaimError::Closed) => {
                Err(self.refuse_batch(n, Rejection::Closed, BatchError::Closed))
            }
            Err(ClaimError::Full | ClaimError::Gated) => match self.policy {
                OverrunPolicy::ReturnError => {
                    Err(self.refuse_batch(n, Rejection::Full, BatchError::Full { len }))
                }
                OverrunPolicy::DropOldest => self.enqueue_batch_evicting(batch, lane),
                OverrunPolicy::Block => self.enqueue_batch_waiting(batch, deadline, lane),
            },
        }
    }

    /// A batch that found no room under `Block`: waits for room for all of it, then claims.
    ///
    /// Not starvation-free: a single enqueue may take a freed slot before the batch claims, so
    /// a steady stream of single enqueues that keeps the ring nearly full can hold a batch back
    /// for as long as it lasts. `enqueue_batch_timeout` bounds that. (A gate that held single
    /// enqueues back for the batch would make them wait for publishers even with room in the
    /// ring, which deadlocks a thread that both enqueues and publishes, or a handler that
    /// enqueues, against another thread's batch.)
    #[cold]
    #[inline(never)]
    fn enqueue_batch_waiting(
        &self,
        batch: &mut Vec<E>,
        deadline: Option<Instant>,
        lane: &impl Lane<E>,
    ) -> Result<Enqueued, BatchError> {
        let (len, n) = (batch.len(), batch.len() as u64);
        loop {
            if !self.wait_for_room(n, deadline, lane) {
                return Err(self.refuse_batch(n, Rejection::Timeout, BatchError::Timeout { len }));
            }
            match lane.claim(n) {
                // SAFETY: `[first, first + n)` was claimed just above, for this batch.
                Ok(first) => return Ok(unsafe { self.write_claimed_batch(lane, first, batch, 0) }),
                Err(ClaimError::Closed) => {
                    return Err(self.refuse_batch(n, Rejection::Closed, BatchError::Closed));
                }
                Err(ClaimError::Full | ClaimError::Gated) => {}
            }
        }
    }

    /// A batch that found no room under `DropOldest`: takes the ring's gate, so that no other
    /// enqueue can claim the slots it makes, evicts the oldest written events until the batch
    /// fits, and claims. Without the gate, single enqueues could take each slot it freed and
    /// keep it evicting forever. While it holds the gate, other enqueues wait for it; it waits
    /// only for the events at the head to be written (no publisher, no user code): the evicted
    /// events are dropped (their `Drop` and the `on_error` hook are user code, which may
    /// enqueue) only once the gate is down.
    #[cold]
    #[inline(never)]
    fn enqueue_batch_evicting(
        &self,
        batch: &mut Vec<E>,
        lane: &impl Lane<E>,
    ) -> Result<Enqueued, BatchError> {
        let n = batch.len() as u64;
        let backoff = Backoff::new();
        // Take the gate, or claim outright if room appeared meanwhile.
        loop {
            match lane.try_gate() {
                Ok(true) => break,
                Err(_) => return Err(self.refuse_batch(n, Rejection::Closed, BatchError::Closed)),
                // Another batch holds the gate: wait for it like any other enqueue.
                Ok(false) => backoff.snooze(),
            }
            match lane.claim(n) {
                // SAFETY: `[first, first + n)` was claimed just above, for this batch.
                Ok(first) => return Ok(unsafe { self.write_claimed_batch(lane, first, batch, 0) }),
                Err(ClaimError::Closed) => {
                    return Err(self.refuse_batch(n, Rejection::Closed, BatchError::Closed));
                }
                Err(ClaimError::Full | ClaimError::Gated) => {}
            }
        }
        // We hold the gate: the tail stands still, and only publishers and our evictions move
        // the head. At most `n` evictions are needed, so `evicted` stays within `n`.
        let mut evicted = Vec::new();
        let outcome = loop {
            match lane.claim_gated(n) {
                Ok(first) => {
                    let dropped = evicted.len() as u64;
                    // SAFETY: `[first, first + n)` was claimed just above, for this batch.
                    break Ok(unsafe { self.write_claimed_batch(lane, first, batch, dropped) });
                }
                Err(ClaimError::Full) => match lane.evict_oldest(n) {
                    Eviction::Evicted(sequence, old) => {
                        lane.count_dropped(&self.counters, 1);
                        trace::dropped(sequence | lane.tag());
                        evicted.push((sequence | lane.tag(), old));
                    }
                    Eviction::Unwritten => backoff.snooze(),
                    Eviction::NotNeeded => {}
                },
                // `claim_gated` lowered the gate. The events evicted stay dropped: they were
                // discarded while the ring was full, before the close.
                Err(_) => break Err(self.refuse_batch(n, Rejection::Closed, BatchError::Closed)),
            }
        };
        for (sequence, old) in evicted {
            self.drop_evicted(sequence, old);
        }
        outcome
    }

    /// Blocks until `n` slots of `lane` are free or it closes (true), or `deadline` passes
    /// (false).
    fn wait_for_room(&self, n: u64, deadline: Option<Instant>, lane: &impl Lane<E>) -> bool {
        self.blocked
            .wait(deadline, || lane.refuses() || lane.ring().has_room(n))
    }

    /// Writes `batch` into `[first, first + batch.len())`, emptying it.
    ///
    /// # Safety
    /// The caller claimed that range of `lane`, for this batch, and has not written it.
    #[inline]
    unsafe fn write_claimed_batch(
        &self,
        lane: &impl Lane<E>,
        first: u64,
        batch: &mut Vec<E>,
        dropped: u64,
    ) -> Enqueued {
        if self.sampling.is_some() {
            self.stamp_enqueued(first, batch.len() as u64, lane.tag());
        }
        // SAFETY: per the contract.
        unsafe { lane.ring().write_batch(first, batch) };
        lane.wake_consumers(&self.idle_consumers);
        Enqueued {
            sequence: first | lane.tag(),
            dropped,
        }
    }

    /// Stamps the sampled events among `count` enqueued from `first` on the lane tagged `tag`
    /// (latency sampling is on). Out of line and cold, so that a store without sampling pays
    /// one predictable branch on its enqueue path and that path stays small enough to be
    /// inlined into the caller's loop (inlined, the stamping grew it past LLVM's threshold and
    /// cost W-tick a function call per event).
    #[cold]
    #[inline(never)]
    fn stamp_enqueued(&self, first: u64, count: u64, tag: u64) {
        if let Some(sampling) = &self.sampling {
            sampling.stamp_range(first, count, tag);
        }
    }

    /// Counts a refused batch of `n` events and returns why.
    #[cold]
    fn refuse_batch(&self, n: u64, reason: Rejection, why: BatchError) -> BatchError {
        self.counters.add_rejected(reason, n);
        why
    }
}

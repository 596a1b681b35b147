//! Dead letters: events a subscription's handler gave up on, kept for listing, draining and
//! replay.
//!
//! A [`DeadLetter`] holds the event (shared: the other handlers of the event may still be
//! running), its projection, the subscription, the last failure, the attempts made and when it
//! gave up. The queue is bounded; when it is full, a [`DeadLetterOverrun`] policy decides which
//! letter goes, and every letter that goes is counted.
//!
//! The queue is a mutex around a `VecDeque`: dead letters are off the hot path (an event gets
//! here only after its handler has failed for good), so a lock costs nothing that matters and
//! keeps push, drain and listing simple and exact.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::SubscriptionId;
use crate::error::HandlerFailure;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::panics;
use crate::store::{EventStore, Layer};
use crate::sync::{self, AtomicU64, Mutex, Ordering};

/// An event a subscription's handler gave up on.
#[derive(Debug)]
pub struct DeadLetter<E, K, Err> {
    /// The event, shared with whatever else still holds it.
    pub event: Arc<E>,
    /// The event's projection (its routing key).
    pub projection: K,
    /// The subscription whose handler failed.
    pub subscription: SubscriptionId,
    /// The last failure: an error the handler returned, or its panic.
    pub error: HandlerFailure<Err>,
    /// Attempts made, the first one included.
    pub attempts: u32,
    /// When the handler was given up on.
    pub at: Instant,
}

/// What a full dead-letter queue does with one more letter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DeadLetterOverrun {
    /// Drop the oldest letter to make room: the queue keeps the most recent failures.
    #[default]
    DropOldest,
    /// Drop the new letter: the queue keeps the first failures.
    DropNewest,
}

/// A bounded queue of dead letters.
///
/// Every letter pushed ends up in exactly one place: still queued, returned by
/// [`drain`](Self::drain), or dropped (counted in [`dropped`](Self::dropped)). So at
/// quiescence, letters pushed = `len()` + letters drained + `dropped()`.
pub(crate) struct DeadLetterQueue<E, K, Err> {
    /// The letters, oldest first; never more than `capacity`.
    letters: Mutex<VecDeque<DeadLetter<E, K, Err>>>,
    /// The most letters held at once; 0 refuses every letter.
    capacity: usize,
    /// Which letter goes when the queue is full.
    overrun: DeadLetterOverrun,
    /// Letters taken into the queue (some may have been dropped since, under `DropOldest`).
    accepted: AtomicU64,
    /// Letters dropped: refused (`DropNewest`, capacity 0) or evicted (`DropOldest`).
    dropped: AtomicU64,
}

impl<E, K, Err> DeadLetterQueue<E, K, Err> {
    /// An empty queue holding at most `capacity` letters (0: every letter is refused and
    /// counted as dropped). Allocates as letters arrive, not up front.
    pub(crate) fn new(capacity: usize, overrun: DeadLetterOverrun) -> Self {
        Self {
            letters: Mutex::new(VecDeque::new()),
            capacity,
            overrun,
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Adds `letter`; if the queue is full, returns the letter the overrun policy dropped (the
    /// oldest, or `letter` itself), already counted. The caller drops it outside the lock:
    /// its `Drop` (the event's, the error's) is user code.
    pub(crate) fn push(&self, letter: DeadLetter<E, K, Err>) -> Option<DeadLetter<E, K, Err>> {
        let mut letters = self.lock();
        let (accepted, dropped) = if letters.len() < self.capacity {
            letters.push_back(letter);
            (true, None)
        } else if self.capacity == 0 || self.overrun == DeadLetterOverrun::DropNewest {
            (false, Some(letter))
        } else {
            let oldest = letters.pop_front();
            letters.push_back(letter);
            (true, oldest)
        };
        // Under the lock, so the counters move with the queue: whoever takes the lock next sees
        // both (the unlock orders them, whatever the counters' own ordering).
        if accepted {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        if dropped.is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        dropped
    }

    /// Letters queued now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no letter is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Takes every queued letter out, oldest first.
    pub(crate) fn drain(&self) -> Vec<DeadLetter<E, K, Err>> {
        Vec::from(std::mem::take(&mut *self.lock()))
    }

    /// Calls `f` on each queued letter, oldest first, under the queue's lock: `f` must not
    /// touch this queue (it would deadlock), and pushes wait while it runs. A panic in `f`
    /// leaves the queue as it was and usable.
    pub(crate) fn for_each(&self, f: impl FnMut(&DeadLetter<E, K, Err>)) {
        self.lock().iter().for_each(f);
    }

    /// Letters taken into the queue, ever (including those dropped since, to make room).
    ///
    /// Relaxed, like the other counters: a statistic, read on its own, that publishes no other
    /// memory; it is written under the lock, so it is exact against the queue for a reader that
    /// takes the lock (`len`, `drain`) first.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Letters dropped by the overrun policy, ever: refused when new, or evicted when oldest.
    /// Relaxed, as [`accepted`](Self::accepted).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The letters, ignoring poison: a panic under the lock can only come from `for_each`'s
    /// closure, which sees the letters by shared reference, so the queue is whole.
    fn lock(&self) -> sync::MutexGuard<'_, VecDeque<DeadLetter<E, K, Err>>> {
        sync::lock(&self.letters)
    }
}

impl<E, K, Err> fmt::Debug for DeadLetterQueue<E, K, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("overrun", &self.overrun)
            .field("accepted", &self.accepted())
            .field("dropped", &self.dropped())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    type Letter = DeadLetter<String, u8, &'static str>;
    type Queue = DeadLetterQueue<String, u8, &'static str>;

    fn letter(n: u32) -> Letter {
        DeadLetter {
            event: Arc::new(format!("event {n}")),
            projection: 7,
            subscription: SubscriptionId::new(3),
            error: HandlerFailure::Error("down"),
            attempts: n,
            at: Instant::now(),
        }
    }

    fn attempts(letters: &[Letter]) -> Vec<u32> {
        letters.iter().map(|l| l.attempts).collect()
    }

    #[test]
    fn keeps_letters_in_order_until_drained() {
        let q = Queue::new(4, DeadLetterOverrun::DropOldest);
        assert!(q.is_empty());
        for n in 1..=3 {
            assert!(q.push(letter(n)).is_none());
        }
        assert_eq!((q.len(), q.accepted(), q.dropped()), (3, 3, 0));
        let mut seen = Vec::new();
        q.for_each(|l| seen.push(l.attempts));
        assert_eq!(seen, [1, 2, 3], "for_each lists without taking");
        assert_eq!(q.len(), 3);
        let drained = q.drain();
        assert_eq!(attempts(&drained), [1, 2, 3]);
        assert_eq!(*drained[0].event, "event 1");
        assert_eq!(drained[0].subscription.get(), 3);
        assert!(q.is_empty() && q.drain().is_empty());
        assert!(q.push(letter(4)).is_none(), "usable after a drain");
        assert_eq!((q.len(), q.accepted(), q.dropped()), (1, 4, 0));
    }

    #[test]
    fn drop_oldest_evicts_and_counts() {
        let q = Queue::new(2, DeadLetterOverrun::default());
        assert!(q.push(letter(1)).is_none());
        assert!(q.push(letter(2)).is_none());
        assert_eq!(q.push(letter(3)).map(|l| l.attempts), Some(1));
        assert_eq!(q.push(letter(4)).map(|l| l.attempts), Some(2));
        assert_eq!((q.len(), q.accepted(), q.dropped()), (2, 4, 2));
        let drained = q.drain();
        assert_eq!(attempts(&drained), [3, 4]);
        // pushed = queued + drained + dropped
        assert_eq!(4, q.len() + drained.len() + q.dropped() as usize);
    }

    #[test]
    fn drop_newest_refuses_and_counts() {
        let q = Queue::new(2, DeadLetterOverrun::DropNewest);
        assert!(q.push(letter(1)).is_none());
        assert!(q.push(letter(2)).is_none());
        assert_eq!(q.push(letter(3)).map(|l| l.attempts), Some(3));
        assert_eq!(q.push(letter(4)).map(|l| l.attempts), Some(4));
        assert_eq!((q.len(), q.accepted(), q.dropped()), (2, 2, 2));
        let drained = q.drain();
        assert_eq!(attempts(&drained), [1, 2]);
        assert_eq!(4, q.len() + drained.len() + q.dropped() as usize);
    }

    #[test]
    fn capacity_zero_refuses_everything() {
        for overrun in [DeadLetterOverrun::DropOldest, DeadLetterOverrun::DropNewest] {
            let q = Queue::new(0, overrun);
            assert_eq!(q.push(letter(1)).map(|l| l.attempts), Some(1));
            assert_eq!(q.push(letter(2)).map(|l| l.attempts), Some(2));
            assert_eq!(
                (q.len(), q.accepted(), q.dropped()),
                (0, 0, 2),
                "{overrun:?}"
            );
        }
    }

    #[test]
    fn a_panic_in_for_each_leaves_the_queue_usable() {
        let q = Queue::new(3, DeadLetterOverrun::DropOldest);
        q.push(letter(1));
        q.push(letter(2));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            q.for_each(|l| {
                if l.attempts == 2 {
                    panic!("listing failed");
                }
            })
        }));
        assert!(caught.is_err());
        assert!(q.letters.is_poisoned(), "the panic did poison the mutex");
        assert_eq!(q.len(), 2);
        assert!(q.push(letter(3)).is_none());
        let mut seen = 0;
        q.for_each(|_| seen += 1);
        assert_eq!(seen, 3);
        assert_eq!(attempts(&q.drain()), [1, 2, 3]);
    }

    #[test]
    fn dropped_letters_are_handed_back_not_dropped_inside() {
        // The caller gets the evicted letter, so its event's `Drop` runs outside the lock.
        let q = Queue::new(1, DeadLetterOverrun::DropOldest);
        let first = letter(1);
        let event = Arc::clone(&first.event);
        q.push(first);
        let evicted = q.push(letter(2)).unwrap();
        assert!(Arc::ptr_eq(&evicted.event, &event));
        assert_eq!(Arc::strong_count(&event), 2, "the queue kept no copy");
        drop(evicted);
        assert_eq!(Arc::strong_count(&event), 1);
    }

    #[test]
    fn debug_needs_no_debug_parts() {
        struct Opaque;
        let q = DeadLetterQueue::<Opaque, Opaque, Opaque>::new(8, DeadLetterOverrun::DropNewest);
        assert_eq!(
            format!("{q:?}"),
            "DeadLetterQueue { len: 0, capacity: 8, overrun: DropNewest, accepted: 0, dropped: 0 }"
        );
        let l = letter(5);
        assert!(format!("{l:?}").contains("attempts: 5"));
    }

    #[test]
    fn concurrent_pushes_are_all_accounted_for() {
        let q = Arc::new(Queue::new(16, DeadLetterOverrun::DropOldest));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || (0..100).filter_map(|n| q.push(letter(n))).count())
            })
            .collect();
        let handed_back: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(handed_back as u64, q.dropped());
        assert_eq!((q.len(), q.accepted(), q.dropped()), (16, 400, 384));
    }
}

/// The store's dead-letter queue, a [`Layer`](crate::store::Layer) made by
/// [`EventStore::enable_dead_letters`].
pub(crate) struct DeadLetterLayer<E: Event, Err> {
    queue: DeadLetterQueue<E, E::Projection, Err>,
    /// Told of each letter as it arrives, on the thread that gave up on it.
    on_letter: Option<LetterHook<E, Err>>,
}

/// The [`EventStore::enable_dead_letters`] callback.
type LetterHook<E, Err> = Box<dyn Fn(&DeadLetter<E, <E as Event>::Projection, Err>) + Send + Sync>;

impl<E: Event, Err> DeadLetterLayer<E, Err> {
    /// Queues `letter`, after showing it to the callback; drops what the queue dropped.
    pub(crate) fn push(&self, letter: DeadLetter<E, E::Projection, Err>) {
        if let Some(hook) = &self.on_letter {
            if let Err(payload) = panics::catch(|| hook(&letter)) {
                panics::dispose(payload);
            }
        }
        panics::drop_contained(self.queue.push(letter));
    }
}

impl<E, Err> Layer<E> for DeadLetterLayer<E, Err>
where
    E: Event + Send + Sync + 'static,
    E::Projection: Send + Sync,
    Err: Send + 'static,
{
    /// The letters stay: they can still be drained (or replayed, until the store seals).
    fn shut_down(&self) -> Vec<E> {
        Vec::new()
    }

    fn add_metrics(&self, metrics: &mut Metrics) {
        metrics.dead_letters = self.queue.len() as u64;
        metrics.dead_letters_dropped = self.queue.dropped();
    }
}

/// The store's dead letters ([`EventStore::dead_letters`]): list, drain, replay.
pub struct DeadLetters<'s, E: Event, Err> {
    store: &'s EventStore<E, Err>,
    layer: Arc<DeadLetterLayer<E, Err>>,
}

/// What [`DeadLetters::replay`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Letters whose event went back into the store.
    pub replayed: u64,
    /// Letters whose event the store refused (full under `ReturnError`, closed); they are back
    /// in the queue.
    pub refused: u64,
}

impl<E, Err> DeadLetters<'_, E, Err>
where
    E: Event + Clone + Send + Sync + 'static,
    E::Projection: Send + Sync,
    Err: Send + 'static,
{
    /// Letters in the queue.
    pub fn len(&self) -> usize {
        self.layer.queue.len()
    }

    /// True when the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.layer.queue.is_empty()
    }

    /// Shows each letter to `f`, oldest first (the queue is locked meanwhile: keep `f` short).
    pub fn for_each(&self, f: impl FnMut(&DeadLetter<E, E::Projection, Err>)) {
        self.layer.queue.for_each(f);
    }

    /// Takes every letter out.
    pub fn drain(&self) -> Vec<DeadLetter<E, E::Projection, Err>> {
        self.layer.queue.drain()
    }

    /// Takes every letter out and enqueues its event into the store again (every handler of
    /// it runs again at the next publish: a replay is a new event, with a new sequence
    /// number, counted in `published` again). It never waits for room, whatever the policy
    /// (a replay from the only publishing thread could otherwise wait for itself): letters the
    /// store refuses (full, closed) go back in the queue, without the callback seeing them
    /// again.
    pub fn replay(&self) -> ReplayReport {
        let mut report = ReplayReport::default();
        for letter in self.drain() {
            // A copy: whatever else holds the letter's `Arc` keeps its own.
            let event = (*letter.event).clone();
            match self.store.enqueue_timeout(event, Duration::ZERO) {
                Ok(_) => {
                    report.replayed += 1;
                    panics::drop_contained(letter);
                }
                Err(refused) => {
                    report.refused += 1;
                    panics::drop_contained(refused.into_inner());
                    panics::drop_contained(self.layer.queue.push(letter));
                }
            }
        }
        report
    }
}

impl<E: Event, Err> fmt::Debug for DeadLetters<'_, E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("len", &self.layer.queue.len())
            .finish_non_exhaustive()
    }
}

/// Why [`EventStore::enable_dead_letters`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store's dead-letter queue is already enabled")]
pub struct AlreadyEnabled;

impl<E, Err> EventStore<E, Err>
where
    E: Event + Clone + Send + Sync + 'static,
    E::Projection: Send + Sync,
    Err: Send + 'static,
{
    /// Gives the store a dead-letter queue of `capacity` letters (a full queue drops as
    /// `overrun` says, counted in [`Metrics::dead_letters_dropped`](crate::Metrics)), with an
    /// optional callback told of each letter. Subscriptions built with
    /// [`dead_letters`](crate::SubscriptionBuilder::dead_letters) send the failures they give
    /// up on there; enable it before subscribing them.
    ///
    /// # Errors
    /// [`AlreadyEnabled`] if the store has one already (its settings stay).
    pub fn enable_dead_letters(
        &self,
        capacity: usize,
        overrun: DeadLetterOverrun,
        on_letter: Option<LetterHook<E, Err>>,
    ) -> Result<(), AlreadyEnabled> {
        let mut made = false;
        self.layer(|| {
            made = true;
            DeadLetterLayer {
                queue: DeadLetterQueue::new(capacity, overrun),
                on_letter,
            }
        });
        if made { Ok(()) } else { Err(AlreadyEnabled) }
    }

    /// The store's dead letters, if [`enable_dead_letters`](Self::enable_dead_letters) gave
    /// it a queue.
    pub fn dead_letters(&self) -> Option<DeadLetters<'_, E, Err>> {
        let layer = self.find_layer::<DeadLetterLayer<E, Err>>()?;
        Some(DeadLetters { store: self, layer })
    }
}

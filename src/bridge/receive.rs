//! The receiving half of a bridged store: entries of a backend's stream decoded and enqueued
//! into the store through its producer lane, and acknowledged once their handlers are done.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use super::envelope::{EventId, Received};
use super::{Backend, BridgeError, Codec, DedupWindow};
use crate::{EnqueueError, Event, Producer};

/// How a [`Receiver`] reads and remembers.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    batch: usize,
    wait: Duration,
    dedup: usize,
    max_in_flight: usize,
    forget_after: Duration,
}

impl Default for ReceiveOptions {
    /// Batches of up to 256 entries, reads blocking up to 100 ms, a dedup window of 100,000
    /// ids, up to 65,536 events in the store at once, unsettled events forgotten after 60 s.
    fn default() -> Self {
        ReceiveOptions {
            batch: 256,
            wait: Duration::from_millis(100),
            dedup: 100_000,
            max_in_flight: 1 << 16,
            forget_after: Duration::from_secs(60),
        }
    }
}

impl ReceiveOptions {
    /// The most entries read at once (at least one).
    pub fn batch(mut self, entries: usize) -> Self {
        self.batch = entries.max(1);
        self
    }

    /// How long a read waits for entries when there are none.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How many handled event ids are remembered to drop repeats ([`DedupWindow`]).
    pub fn dedup(mut self, ids: usize) -> Self {
        self.dedup = ids;
        self
    }

    /// The most received events in the store, not yet settled, at once: past it the receiver
    /// stops reading until some settle (at least one).
    pub fn max_in_flight(mut self, events: usize) -> Self {
        self.max_in_flight = events.max(1);
        self
    }

    /// How long an event that has not settled as handled (it failed, was dropped, or is held
    /// for a retry) is waited for before it is forgotten here, unacknowledged: the broker
    /// delivers it again after its claim timeout. Keep it above the store's longest
    /// handling time.
    pub fn forget_after(mut self, after: Duration) -> Self {
        self.forget_after = after;
        self
    }
}

/// What a [`Receiver`] did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiveMetrics {
    /// Events enqueued into the store.
    pub enqueued: u64,
    /// Entries acknowledged: events settled as handled, duplicates, and malformed entries.
    pub acked: u64,
    /// Repeats of an event already handled, acknowledged without running it again.
    pub duplicates: u64,
    /// Entries moved aside (acknowledged, not run): malformed, or a payload the codec could
    /// not decode.
    pub malformed: u64,
    /// Events the store refused (full under `ReturnError`): left unacknowledged, delivered
    /// again.
    pub refused: u64,
    /// Events forgotten unsettled after `forget_after`: left unacknowledged, delivered again.
    pub forgotten: u64,
    /// Entries delivered again while their event was still in the store: not enqueued twice
    /// (the first delivery's acknowledgement covers them).
    pub skipped: u64,
    /// Settled events whose acknowledgement failed: delivered again, then acknowledged as
    /// duplicates.
    pub ack_failed: u64,
    /// Reads or acknowledgements that failed (the backend reconnects on the next call).
    pub backend_errors: u64,
    /// Received events in the store, not yet settled.
    pub in_flight: u64,
}

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    acked: AtomicU64,
    duplicates: AtomicU64,
    malformed: AtomicU64,
    refused: AtomicU64,
    forgotten: AtomicU64,
    skipped: AtomicU64,
    ack_failed: AtomicU64,
    backend_errors: AtomicU64,
    in_flight: AtomicU64,
}

/// A counter bump: relaxed, each counter being a tally read on its own.
fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Receives a backend's entries into a store: a thread reads them, drops repeats of events
/// already handled ([`DedupWindow`]), decodes the payloads with the codec and enqueues the
/// events through the store's [`Producer`] lane. An entry is acknowledged only once its event
/// settled as handled in the store (every handler succeeded, or a subscription dead-lettered
/// it, or no handler takes its projection, or the store filter turned it away): at least
/// once. An event that failed, was dropped by the overrun policy, or was refused is left
/// unacknowledged and the broker delivers it again (to this consumer or another) after its
/// claim timeout; so is an event held for a subscription's retry.
///
/// The receiver only enqueues: the store's events are run by whoever publishes it (the
/// application's loop, or [`spawn_consumer`](crate::EventStore::spawn_consumer)). Events that
/// came in this way carry the producer lane's tag in their sequence, which is how a
/// [`Forwarder`](super::Forwarder) on the same store knows not to send them back.
pub struct Receiver {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Starts receiving from `backend` into the store of `producer` (built with
    /// [`build_with_producer`](crate::Builder::build_with_producer)).
    ///
    /// # Errors
    /// [`BridgeError::Config`] if the store has no producer lane of its own (the `Producer`
    /// fell back to the shared ring: see
    /// [`is_single_producer_lane`](Producer::is_single_producer_lane)), so that received
    /// events could be neither acknowledged nor told from local ones; if the store already
    /// has a receiver; or if the thread cannot start.
    pub fn start<E, Err, C, B>(
        producer: Producer<E, Err>,
        codec: C,
        backend: B,
        options: ReceiveOptions,
    ) -> Result<Receiver, BridgeError>
    where
        E: Event + Send + 'static,
        Err: Send + 'static,
        C: Codec<E> + 'static,
        B: Backend + 'static,
    {
        if !producer.is_single_producer_lane() {
            return Err(BridgeError::Config(
                "the store has no producer lane of its own (build_with_producer fell back to \
                 the shared ring): received events could not be acknowledged"
                    .into(),
            ));
        }
        let settled = Arc::new(SegQueue::new());
        let told = Arc::clone(&settled);
        if !producer
            .store()
            .on_producer_lane_settled(Arc::new(move |sequence| told.push(sequence)))
        {
            return Err(BridgeError::Config(
                "the store already has a receiver".into(),
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut run = Run {
            producer,
            codec,
            backend,
            dedup: DedupWindow::new(options.dedup),
            in_flight: HashMap::new(),
            in_flight_entries: HashSet::new(),
            settled,
            counters: Arc::clone(&counters),
            options,
        };
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ringbus-receive".into())
                .spawn(move || run.until(&stop))
                .map_err(|e| BridgeError::Config(format!("cannot start the receiver: {e}")))?
        };
        Ok(Receiver {
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// The counters now.
    pub fn metrics(&self) -> ReceiveMetrics {
        let c = &self.counters;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReceiveMetrics {
            enqueued: read(&c.enqueued),
            acked: read(&c.acked),
            duplicates: read(&c.duplicates),
            malformed: read(&c.malformed),
            refused: read(&c.refused),
            forgotten: read(&c.forgotten),
            skipped: read(&c.skipped),
            ack_failed: read(&c.ack_failed),
            backend_errors: read(&c.backend_errors),
            in_flight: read(&c.in_flight),
        }
    }

    /// Stops reading, acknowledges what settled meanwhile, and stops the thread (within the
    /// read's wait, or 50 ms if it waits for room in a full lane). Events still unsettled stay
    /// unacknowledged: delivered again. (When the store closes instead, the receiver keeps
    /// acknowledging what the close's drain settles, for up to 5 s.)
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Receiver {
    /// [`stop`](Receiver::stop).
    fn drop(&mut self) {
        self.halt();
    }
}

/// An event in the store, not yet settled: its entry, its id, when it was enqueued.
struct InFlight {
    entry: String,
    id: EventId,
    since: Instant,
}

/// The receiver thread's state.
struct Run<E: Event + Send + 'static, Err: 'static, C, B> {
    producer: Producer<E, Err>,
    codec: C,
    backend: B,
    dedup: DedupWindow,
    /// By sequence (with the lane's tag).
    in_flight: HashMap<u64, InFlight>,
    /// The entries of `in_flight`: a redelivery of one of them is not enqueued again.
    in_flight_entries: HashSet<String>,
    /// Sequences of settled events, told by the store's run loops.
    settled: Arc<SegQueue<u64>>,
    counters: Arc<Counters>,
    options: ReceiveOptions,
}

impl<E, Err, C, B> Run<E, Err, C, B>
where
    E: Event + Send + 'static,
    Err: 'static,
    C: Codec<E>,
    B: Backend,
{
    fn until(&mut self, stop: &AtomicBool) {
        let mut backoff = Duration::from_millis(10);
        let mut last_forget = Instant::now();
        while !stop.load(Ordering::Acquire) && !self.producer.store().is_closed() {
            self.acknowledge_settled();
            if last_forget.elapsed() >= Duration::from_secs(1).min(self.options.forget_after) {
                self.forget_stale();
                last_forget = Instant::now();
            }
            if self.in_flight.len() >= self.options.max_in_flight {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let room = self.options.max_in_flight - self.in_flight.len();
            match self
                .backend
                .receive(self.options.batch.min(room), self.options.wait)
            {
                Ok(batch) => {
                    backoff = Duration::from_millis(10);
                    self.take(batch, stop);
                }
                Err(_) => {
                    bump(&self.counters.backend_errors, 1);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        // A closing store drains its lanes after refusing new events: keep acknowledging what
        // settles, until nothing is in flight or a few seconds passed (what is left is
        // delivered again). Stopped, acknowledge what settled and leave.
        let drained = Instant::now() + Duration::from_secs(5);
        loop {
            self.acknowledge_settled();
            let closing = self.producer.store().is_closed() && !stop.load(Ordering::Acquire);
            if !closing || self.in_flight.is_empty() || Instant::now() >= drained {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = self.backend.close();
    }

    /// Enqueues the events of `batch`; acknowledges at once what is not to be run.
    fn take(&mut self, batch: Vec<Received>, stop: &AtomicBool) {
        let mut ack_now = Vec::new();
        for received in batch {
            if self.in_flight_entries.contains(&received.entry) {
                // Delivered again while still in the store: its acknowledgement comes.
                bump(&self.counters.skipped, 1);
                continue;
            }
            let incoming = match received.body {
                Ok(incoming) => incoming,
                Err(_) => {
                    bump(&self.counters.malformed, 1);
                    ack_now.push(received.entry);
                    continue;
                }
            };
            if self.dedup.contains(&incoming.id) {
                bump(&self.counters.duplicates, 1);
                ack_now.push(received.entry);
                continue;
            }
            // A codec is user code: a panic in it is a payload it cannot read.
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.codec.decode(&incoming.payload)
            }));
            let Ok(Ok(event)) = decoded else {
                bump(&self.counters.malformed, 1);
                ack_now.push(received.entry);
                continue;
            };
            match self.enqueue(event, stop) {
                Ok(enqueued) => {
                    bump(&self.counters.enqueued, 1);
                    self.in_flight_entries.insert(received.entry.clone());
                    self.in_flight.insert(
                        enqueued.sequence,
                        InFlight {
                            entry: received.entry,
                            id: incoming.id,
                            since: Instant::now(),
                        },
                    );
                }
                // Left pending: delivered again after the claim timeout.
                Err(EnqueueError::Full(_) | EnqueueError::Timeout(_)) => {
                    bump(&self.counters.refused, 1);
                }
                Err(EnqueueError::Closed(_)) => break,
            }
        }
        self.counters
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        self.acknowledge(ack_now);
    }

    /// Enqueues `event`; under `Block` with a full lane, waits for room in steps, so that
    /// [`Receiver::stop`] is heard (a stopped receiver leaves the event unacknowledged).
    fn enqueue(
        &mut self,
        mut event: E,
        stop: &AtomicBool,
    ) -> Result<crate::Enqueued, EnqueueError<E>> {
        loop {
            match self
                .producer
                .enqueue_timeout(event, Duration::from_millis(50))
            {
                Err(EnqueueError::Timeout(back)) if !stop.load(Ordering::Acquire) => {
                    // Settled events free room in `in_flight` meanwhile.
                    self.acknowledge_settled();
                    event = back;
                }
                other => return other,
            }
        }
    }

    /// Acknowledges the events the store settled since the last call, and remembers their
    /// ids as handled.
    fn acknowledge_settled(&mut self) {
        let mut entries = Vec::new();
        while let Some(sequence) = self.settled.pop() {
            if let Some(done) = self.in_flight.remove(&sequence) {
                self.in_flight_entries.remove(&done.entry);
                self.dedup.first_time(done.id);
                entries.push(done.entry);
            }
        }
        self.counters
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        self.acknowledge(entries);
    }

    fn acknowledge(&mut self, entries: Vec<String>) {
        if entries.is_empty() {
            return;
        }
        // A failed acknowledgement leaves the entries pending: delivered again, they are
        // repeats of handled events (their ids are in the window) and acknowledged then.
        match self.backend.acknowledge(&entries) {
            Ok(()) => bump(&self.counters.acked, entries.len() as u64),
            Err(_) => {
                bump(&self.counters.backend_errors, 1);
                bump(&self.counters.ack_failed, entries.len() as u64);
            }
        }
    }

    /// Forgets events unsettled for longer than `forget_after` (failed, dropped, held).
    fn forget_stale(&mut self) {
        let limit = self.options.forget_after;
        let before = self.in_flight.len();
        let entries = &mut self.in_flight_entries;
        self.in_flight.retain(|_, f| {
            let keep = f.since.elapsed() < limit;
            if !keep {
                entries.remove(&f.entry);
            }
            keep
        });
        bump(
            &self.counters.forgotten,
            (before - self.in_flight.len()) as u64,
        );
    }
}

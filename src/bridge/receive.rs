//! The receiving half of a bridged store: entries of a backend's stream decoded and enqueued
//! into the store through its producer lane, and acknowledged once their handlers are done.

use ahash::AHashMap as HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;

use super::backend::contained;
use super::envelope::{EventId, Received};
use super::{Backend, BridgeError, Codec, DedupWindow};
use crate::{EnqueueError, Event, Producer, panics};

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

    /// How many event ids are remembered to drop repeats ([`DedupWindow`]): those of the
    /// events enqueued most recently, in the store or handled (one forgotten unsettled is
    /// taken out, to run when it comes again).
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
    /// Enqueued events that settled as handled while still in flight (`enqueued` = `handled`
    /// + `forgotten` + `in_flight`).
    pub handled: u64,
    /// Entries acknowledged: each once all its events (one, or several when the sender
    /// packs them: [`RedisOptions::events_per_entry`](super::RedisOptions::events_per_entry))
    /// settled as handled, were duplicates, or were not events.
    pub acked: u64,
    /// Repeats of an event already handled or still in the store (a resend read with its
    /// original, an id twice in one entry), acknowledged without running it again.
    pub duplicates: u64,
    /// Entries moved aside (acknowledged, not run): malformed, or a payload the codec could
    /// not decode.
    pub malformed: u64,
    /// Events not enqueued: the store closed, the receiver stopped, or no room came within
    /// `forget_after` (a store that stopped running); with one, the rest of its read. Left
    /// pending at the broker, delivered again.
    pub refused: u64,
    /// Events forgotten unsettled after `forget_after`: left unacknowledged, delivered again.
    /// One that settles as handled later (a slow handler) is remembered, and its redelivery
    /// dropped as a duplicate.
    pub forgotten: u64,
    /// Events delivered again while their entry was still open here (in the store, or being
    /// enqueued): not enqueued twice; that entry's first delivery settles it (acknowledged,
    /// or left pending and delivered again if one of its events failed).
    pub skipped: u64,
    /// Entries whose acknowledgement failed: delivered again, their events then dropped as
    /// duplicates and the entries acknowledged.
    pub ack_failed: u64,
    /// Reads or acknowledgements that failed (the backend reconnects on the next call).
    pub backend_errors: u64,
    /// Received events in the store, not yet settled.
    pub in_flight: u64,
}

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    handled: AtomicU64,
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
/// once. An event that failed is left unacknowledged and the broker delivers it again (to
/// this consumer or another) after its claim timeout; so is an event held for a
/// subscription's retry. The receiver enqueues only into room in its lane (reading from the
/// broker no faster than the store runs): whatever the store's overrun policy, it never makes
/// the store evict or refuse what it received.
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
        let keep_alive_every = panics::catch(|| backend.keep_alive_every()).unwrap_or_else(|p| {
            panics::dispose(p);
            None
        });
        let mut run = Run {
            producer,
            codec,
            backend,
            dedup: DedupWindow::new(options.dedup),
            in_flight: HashMap::new(),
            entries: HashMap::new(),
            ack: Vec::new(),
            last_forget: Instant::now(),
            keep_alive_every,
            last_keep_alive: Instant::now(),
            forgotten: HashMap::new(),
            forgotten_order: std::collections::VecDeque::new(),
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
            handled: read(&c.handled),
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

/// An entry some of whose events are in the store: acknowledged once the last of them
/// settled as handled, unless one of them will not be (refused, forgotten).
struct OpenEntry {
    /// When it was taken, or last kept alive at the broker.
    since: Instant,
    /// Its events in the store.
    in_store: usize,
    /// Its events are still being taken: it cannot be finished yet.
    taking: bool,
    /// One of its events will not settle as handled: the entry is left pending.
    failed: bool,
}

/// What became of one received event.
enum Taken {
    /// Nothing is left to do for it (a duplicate, or not an event).
    Done,
    /// Enqueued: in the store as this sequence.
    InStore(u64, EventId),
    /// Not enqueued (the store closed, the receiver stopped, or no room came): left for a
    /// redelivery.
    Refused,
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
    entries: HashMap<String, OpenEntry>,
    /// Entries to acknowledge, gathered for one round trip.
    ack: Vec<String>,
    /// When stale events were last forgotten.
    last_forget: Instant,
    /// The backend's keep-alive period, asked once.
    keep_alive_every: Option<Duration>,
    /// When the open entries were last scanned for a keep-alive.
    last_keep_alive: Instant,
    /// Events forgotten while still in the store, by sequence, the oldest first (at most
    /// `max_in_flight`): one that settles later is remembered as handled, so its redelivery
    /// is dropped as a duplicate instead of run again.
    forgotten: HashMap<u64, EventId>,
    forgotten_order: std::collections::VecDeque<u64>,
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
        while !stop.load(Ordering::Acquire) && !self.producer.store().is_closed() {
            self.housekeeping();
            if self.in_flight.len() >= self.options.max_in_flight {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let room = self.options.max_in_flight - self.in_flight.len();
            let (max, wait) = (self.options.batch.min(room), self.options.wait);
            match contained(&mut self.backend, |b| b.receive(max, wait)) {
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
        let _ = contained(&mut self.backend, |b| b.close());
    }

    /// What the receiver does between reads, and while it waits for room: acknowledges what
    /// settled, forgets what is stale (once a second at most), keeps its entries alive.
    fn housekeeping(&mut self) {
        self.acknowledge_settled();
        if self.last_forget.elapsed() >= Duration::from_secs(1).min(self.options.forget_after) {
            self.forget_stale();
            self.last_forget = Instant::now();
        }
        self.keep_alive();
    }

    /// Enqueues the events of `batch` (an entry's events come together); acknowledges at
    /// once the entries with nothing left to run. Every entry of the batch is open (kept
    /// alive at the broker) from the start, not only once its turn comes: in a slow store
    /// the last of a batch may wait long for room. Once one event cannot be enqueued (the
    /// store closed, the receiver stopped, or no room came within `forget_after`), the rest
    /// of the batch is left pending too.
    fn take(&mut self, batch: Vec<Received>, stop: &AtomicBool) {
        let now = Instant::now();
        let mut open = Vec::new();
        let mut batch = batch.into_iter().peekable();
        while let Some(first) = batch.next() {
            let entry = first.entry.clone();
            let mut events = vec![first];
            while let Some(next) = batch.next_if(|r| r.entry == entry) {
                events.push(next);
            }
            if self.entries.contains_key(&entry) {
                // Delivered again while still open here: its own delivery settles it.
                bump(&self.counters.skipped, events.len() as u64);
                continue;
            }
            self.entries.insert(
                entry.clone(),
                OpenEntry {
                    since: now,
                    in_store: 0,
                    taking: true,
                    failed: false,
                },
            );
            open.push((entry, events));
        }
        let mut give_up = false;
        for (entry, events) in open {
            for received in events {
                let taken = if give_up {
                    bump(&self.counters.refused, 1);
                    Taken::Refused
                } else {
                    self.take_one(received.body, stop)
                };
                let open = self.entries.get_mut(&entry).expect("taking");
                match taken {
                    Taken::Done => {}
                    Taken::InStore(sequence, id) => {
                        open.in_store += 1;
                        // In the window from now: a repeat read while it is in the store is a
                        // duplicate too (taken out again if it is forgotten).
                        self.dedup.first_time(id);
                        self.in_flight.insert(
                            sequence,
                            InFlight {
                                entry: entry.clone(),
                                id,
                                since: Instant::now(),
                            },
                        );
                    }
                    Taken::Refused => {
                        open.failed = true;
                        give_up = true;
                    }
                }
            }
            if let Some(open) = self.entries.get_mut(&entry) {
                open.taking = false;
            }
            self.finish_if_done(&entry);
        }
        self.counters
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        self.acknowledge();
    }

    /// Deals with one received event: drops a duplicate or a malformed one, or decodes and
    /// enqueues it.
    fn take_one(
        &mut self,
        body: Result<super::Incoming, super::Malformed>,
        stop: &AtomicBool,
    ) -> Taken {
        let Ok(incoming) = body else {
            bump(&self.counters.malformed, 1);
            return Taken::Done;
        };
        // A repeat of an event handled, or still in the store (a resend read with its
        // original, or an id twice in one entry): the original's entry carries it.
        if self.dedup.contains(&incoming.id) {
            bump(&self.counters.duplicates, 1);
            return Taken::Done;
        }
        // A codec is user code: a panic in it is a payload it cannot read (and the panic's
        // payload is disposed of as the store does a handler's: its own `Drop` may panic).
        let event = match panics::catch(|| self.codec.decode(&incoming.payload)) {
            Ok(Ok(event)) => event,
            Ok(Err(_)) => {
                bump(&self.counters.malformed, 1);
                return Taken::Done;
            }
            Err(payload) => {
                panics::dispose(payload);
                bump(&self.counters.malformed, 1);
                return Taken::Done;
            }
        };
        // An event handed back is the user's to drop: its `Drop` may panic.
        match self.enqueue(event, stop) {
            Ok(enqueued) => {
                bump(&self.counters.enqueued, 1);
                Taken::InStore(enqueued.sequence, incoming.id)
            }
            // Left pending: delivered again after the claim timeout.
            Err(
                EnqueueError::Full(back) | EnqueueError::Timeout(back) | EnqueueError::Closed(back),
            ) => {
                panics::drop_contained(back);
                bump(&self.counters.refused, 1);
                Taken::Refused
            }
        }
    }

    /// One of `entry`'s events left the store: settled as handled if `handled`, else
    /// forgotten.
    fn left_store(&mut self, entry: &str, handled: bool) {
        if let Some(open) = self.entries.get_mut(entry) {
            open.in_store -= 1;
            open.failed |= !handled;
        }
        self.finish_if_done(entry);
    }

    /// Closes `entry` if nothing of it is in the store or still being taken: to be
    /// acknowledged, unless one of its events failed (then it is left pending).
    fn finish_if_done(&mut self, entry: &str) {
        let Some(open) = self.entries.get(entry) else {
            return;
        };
        if open.taking || open.in_store > 0 {
            return;
        }
        let failed = open.failed;
        if let Some((entry, _)) = self.entries.remove_entry(entry)
            && !failed
        {
            self.ack.push(entry);
        }
    }

    /// Enqueues `event` once the lane has room and fewer than `max_in_flight` received events
    /// are in the store, waiting in steps (with [`housekeeping`](Self::housekeeping)) so that
    /// [`Receiver::stop`] and the store's close are heard. The receiver never makes its store
    /// evict (under `DropOldest`), refuse (`ReturnError`) or block (`Block`) what it received:
    /// the broker holds the backlog. Gives up (the event stays pending at the broker) when
    /// stopped, or after `forget_after` without room: a store that stopped running.
    fn enqueue(&mut self, event: E, stop: &AtomicBool) -> Result<crate::Enqueued, EnqueueError<E>> {
        let started = Instant::now();
        let mut pause = Duration::from_micros(20);
        while (self.producer.room() == 0 || self.in_flight.len() >= self.options.max_in_flight)
            && !self.producer.store().is_closed()
        {
            if stop.load(Ordering::Acquire) || started.elapsed() >= self.options.forget_after {
                return Err(EnqueueError::Timeout(event));
            }
            self.housekeeping();
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        // With room, this neither waits nor evicts; a closed store hands the event back.
        self.producer.enqueue(event)
    }

    /// Acknowledges the entries whose events the store settled since the last call (their ids
    /// are in the window since they were enqueued).
    fn acknowledge_settled(&mut self) {
        while let Some(sequence) = self.settled.pop() {
            if let Some(done) = self.in_flight.remove(&sequence) {
                bump(&self.counters.handled, 1);
                self.left_store(&done.entry, true);
            } else if let Some(id) = self.forgotten.remove(&sequence) {
                // Settled after it was forgotten: its entry stays pending, and comes back.
                self.dedup.first_time(id);
            }
        }
        self.counters
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        self.acknowledge();
    }

    /// Tells the backend that the entries open longer than its keep-alive period are still
    /// being worked on (a slow store's events are not handed to another consumer).
    fn keep_alive(&mut self) {
        let Some(every) = self.keep_alive_every else {
            return;
        };
        // Scanned every half period: an entry is refreshed at most 1.5 periods after the last.
        let now = Instant::now();
        if now.duration_since(self.last_keep_alive) < every / 2 {
            return;
        }
        self.last_keep_alive = now;
        let due: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, open)| now.duration_since(open.since) >= every)
            .map(|(entry, _)| entry.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        // Refreshed only once the broker took it: a failed call is tried at the next scan.
        match contained(&mut self.backend, |b| b.keep_alive(&due)) {
            Ok(()) => {
                for entry in &due {
                    if let Some(open) = self.entries.get_mut(entry) {
                        open.since = now;
                    }
                }
            }
            Err(_) => bump(&self.counters.backend_errors, 1),
        }
    }

    /// Acknowledges the entries gathered in `ack`.
    fn acknowledge(&mut self) {
        if self.ack.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut self.ack);
        // A failed acknowledgement leaves the entries pending: delivered again, their events
        // are repeats of handled ones (their ids are in the window) and acknowledged then.
        match contained(&mut self.backend, |b| b.acknowledge(&entries)) {
            Ok(()) => bump(&self.counters.acked, entries.len() as u64),
            Err(_) => {
                bump(&self.counters.backend_errors, 1);
                bump(&self.counters.ack_failed, entries.len() as u64);
            }
        }
        self.ack = entries;
        self.ack.clear();
    }

    /// Forgets events unsettled for longer than `forget_after` (failed, dropped, held).
    fn forget_stale(&mut self) {
        let limit = self.options.forget_after;
        let stale: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.since.elapsed() >= limit)
            .map(|(&sequence, _)| sequence)
            .collect();
        bump(&self.counters.forgotten, stale.len() as u64);
        for sequence in stale {
            if let Some(gone) = self.in_flight.remove(&sequence) {
                self.dedup.forget(&gone.id);
                self.left_store(&gone.entry, false);
                self.forgotten.insert(sequence, gone.id);
                self.forgotten_order.push_back(sequence);
            }
        }
        while self.forgotten_order.len() > self.options.max_in_flight {
            if let Some(oldest) = self.forgotten_order.pop_front() {
                self.forgotten.remove(&oldest);
            }
        }
    }
}

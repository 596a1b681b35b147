//! The sending half of a bridged store: its events of chosen projections appended to a
//! backend's stream, after (not instead of) its local handlers.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::backend::contained;
use super::envelope::{EventId, Outgoing};
use super::{Backend, BridgeError, Codec};
use crate::{Event, EventStore, OverrunPolicy, PRODUCER_LANE, Subscription};

/// How a [`Forwarder`] buffers and sends.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    buffer: usize,
    batch: usize,
    max_payload: usize,
}

impl Default for ForwardOptions {
    /// A buffer of 65,536 events, sent in pipelined batches of up to 512, payloads up to
    /// 1 MiB.
    fn default() -> Self {
        ForwardOptions {
            buffer: 1 << 16,
            batch: 512,
            max_payload: 1 << 20,
        }
    }
}

impl ForwardOptions {
    /// Events held while the broker is slow or away (at least one). When it is full the
    /// store's [`OverrunPolicy`] decides: `Block` waits for room (the handler's thread sleeps
    /// until the sender frees some, or until the forwarder closes, which drops the event,
    /// counted as abandoned), `DropOldest` drops the oldest buffered event (counted in
    /// [`ForwardMetrics::evicted`]), `ReturnError` fails the forwarding handler (counted by
    /// the store as a handler failure, reported to its `on_error` hook).
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events.max(1);
        self
    }

    /// The most events sent in one pipelined round trip (at least one).
    pub fn batch(mut self, events: usize) -> Self {
        self.batch = events.max(1);
        self
    }

    /// The largest encoded payload forwarded; a larger one fails its handler with
    /// [`BridgeError::PayloadTooLarge`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
}

/// What a [`Forwarder`] did, counted. Every event its subscriptions saw is in `echoes`,
/// `refused`, `abandoned` or `buffered`; every buffered one is in `sent`, `evicted`, `unsent`,
/// `send_buffer_depth` or `in_sender` (exact once the forwarder is closed; a reading while it
/// runs takes each counter at a slightly different moment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForwardMetrics {
    /// Events put in the send buffer.
    pub buffered: u64,
    /// Buffered events the backend appended to the stream.
    pub sent: u64,
    /// Buffered events evicted by a newer one (`DropOldest`, the buffer full).
    pub evicted: u64,
    /// Buffered events not sent when the forwarder closed (the broker away past the timeout).
    pub unsent: u64,
    /// Events never buffered: their handler waited for room (`Block`) until the forwarder
    /// closed.
    pub abandoned: u64,
    /// Events skipped because they came from the broker (no echo).
    pub echoes: u64,
    /// Events refused: over the payload limit, unencodable, or the buffer full under
    /// `ReturnError` (their handler failed).
    pub refused: u64,
    /// Sends that failed and were tried again.
    pub send_retries: u64,
    /// Buffered events in the send buffer now.
    pub send_buffer_depth: u64,
    /// Buffered events taken by the sender thread, not yet sent (one batch at most).
    pub in_sender: u64,
}

/// The state the subscriptions and the sender thread share.
struct Shared {
    buffer: ArrayQueue<Outgoing>,
    closed: AtomicBool,
    policy: OverrunPolicy,
    max_payload: usize,
    /// While closing: when a handler waiting for room (`Block`) gives up.
    closing: std::sync::Mutex<Option<Instant>>,
    buffered: AtomicU64,
    sent: AtomicU64,
    evicted: AtomicU64,
    unsent: AtomicU64,
    abandoned: AtomicU64,
    echoes: AtomicU64,
    refused: AtomicU64,
    send_retries: AtomicU64,
    in_sender: AtomicU64,
}

/// A counter bump: relaxed, each counter being a tally read on its own.
fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Forwards a store's events of chosen projections to a [`Backend`]. Each projection gets a
/// subscription (after the store's own handlers) that encodes the event on the thread that
/// runs handlers and puts it in a bounded send buffer; a sender thread appends the buffer to
/// the stream in pipelined batches, and when a send fails (the broker is away) tries the same
/// batch again with backoff, from 10 ms doubling to 1 s, until it is sent or the forwarder
/// closes.
///
/// Events whose sequence carries [`PRODUCER_LANE`] are not forwarded: a bridged store's
/// receiving side enqueues what came from the broker through the store's [`Producer`]
/// lane, so those events never go back (no echo loops). Such a store's `Producer` belongs to
/// the bridge's receiver.
///
/// [`Producer`]: crate::Producer
pub struct Forwarder {
    shared: Arc<Shared>,
    subscriptions: Vec<Subscription>,
    sender: Option<JoinHandle<()>>,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Subscribes to each of `projections` on `store` and starts the sender thread on
    /// `backend`. The event's projection travels as its `Debug` form (the name
    /// [`projection_metrics`](EventStore::projection_metrics) uses).
    ///
    /// # Errors
    /// [`BridgeError::Config`] if the store is closed (nothing was subscribed then).
    pub fn start<E, Err, C, B>(
        store: &EventStore<E, Err>,
        projections: impl IntoIterator<Item = E::Projection>,
        codec: C,
        backend: B,
        options: ForwardOptions,
    ) -> Result<Forwarder, BridgeError>
    where
        E: Event + Send + Sync + 'static,
        E::Projection: Clone,
        Err: From<BridgeError> + Send + 'static,
        C: Codec<E> + 'static,
        B: Backend + 'static,
    {
        let shared = Arc::new(Shared {
            buffer: ArrayQueue::new(options.buffer),
            closed: AtomicBool::new(false),
            policy: store.policy(),
            max_payload: options.max_payload,
            closing: std::sync::Mutex::new(None),
            buffered: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            echoes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            send_retries: AtomicU64::new(0),
            in_sender: AtomicU64::new(0),
        });
        let codec = Arc::new(codec);
        let mut subscriptions = Vec::new();
        for projection in projections {
            let name = format!("{projection:?}");
            let (shared, codec) = (Arc::clone(&shared), Arc::clone(&codec));
            let subscription = store
                .subscribe(projection)
                .unsubscribe_on_drop()
                .handle(move |ctx, event: &E| {
                    if ctx.sequence() & PRODUCER_LANE != 0 {
                        bump(&shared.echoes, 1);
                        return Ok(());
                    }
                    shared.forward(&name, &*codec, event).map_err(Err::from)
                })
                .map_err(|e| BridgeError::Config(format!("cannot subscribe: {e}")))?;
            subscriptions.push(subscription);
        }
        let sender = {
            let shared = Arc::clone(&shared);
            let batch = options.batch;
            std::thread::Builder::new()
                .name("ringbus-forward".into())
                .spawn(move || shared.send_until_closed(backend, batch))
                .map_err(|e| BridgeError::Config(format!("cannot start the sender: {e}")))?
        };
        Ok(Forwarder {
            shared,
            subscriptions,
            sender: Some(sender),
        })
    }

    /// The counters now.
    pub fn metrics(&self) -> ForwardMetrics {
        let s = &self.shared;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ForwardMetrics {
            buffered: read(&s.buffered),
            sent: read(&s.sent),
            evicted: read(&s.evicted),
            unsent: read(&s.unsent),
            abandoned: read(&s.abandoned),
            echoes: read(&s.echoes),
            refused: read(&s.refused),
            send_retries: read(&s.send_retries),
            send_buffer_depth: s.buffer.len() as u64,
            in_sender: read(&s.in_sender),
        }
    }

    /// Stops forwarding (unsubscribes), sends what is buffered, and stops the sender, within
    /// `timeout` (plus, if a send is under way then, that send's own time: a connect or reply
    /// timeout at most). Returns how many events this close lost: buffered ones the broker
    /// did not take in time (`unsent`), and ones whose handler was still waiting for room
    /// under `Block` (`abandoned`). Called from a handler of the same store, the unsubscribing
    /// does not wait for that store's handler calls under way: one finishing after the sender
    /// stopped leaves its event in the buffer, uncounted.
    pub fn close(mut self, timeout: Duration) -> u64 {
        self.stop(timeout)
    }

    fn stop(&mut self, timeout: Duration) -> u64 {
        let s = &self.shared;
        let lost_before = s.unsent.load(Ordering::Relaxed) + s.abandoned.load(Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        // Handlers waiting for room give up at the deadline; unsubscribing waits for the
        // calls under way, so that none pushes after the flush below.
        *s.closing.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        self.subscriptions.clear();
        while (!s.buffer.is_empty() || s.in_sender.load(Ordering::Acquire) != 0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        s.closed.store(true, Ordering::Release);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
        let mut left = 0;
        while s.buffer.pop().is_some() {
            left += 1;
        }
        bump(&s.unsent, left);
        s.unsent.load(Ordering::Relaxed) + s.abandoned.load(Ordering::Relaxed) - lost_before
    }
}

impl Drop for Forwarder {
    /// [`close`](Forwarder::close) with a timeout of 5 s.
    fn drop(&mut self) {
        if self.sender.is_some() {
            self.stop(Duration::from_secs(5));
        }
    }
}

impl Shared {
    /// Encodes `event` and buffers it, by the overrun policy when the buffer is full.
    fn forward<E>(
        &self,
        projection: &str,
        codec: &dyn Codec<E>,
        event: &E,
    ) -> Result<(), BridgeError> {
        let payload = codec
            .encode(event)
            .inspect_err(|_| bump(&self.refused, 1))?;
        if payload.len() > self.max_payload {
            bump(&self.refused, 1);
            return Err(BridgeError::PayloadTooLarge {
                size: payload.len(),
                limit: self.max_payload,
            });
        }
        let mut outgoing = Outgoing {
            id: EventId::next(),
            projection: projection.to_owned(),
            payload,
        };
        let mut pause = Duration::from_micros(10);
        loop {
            match self.buffer.push(outgoing) {
                Ok(()) => {
                    bump(&self.buffered, 1);
                    return Ok(());
                }
                Err(back) => outgoing = back,
            }
            match self.policy {
                OverrunPolicy::Block if !self.gives_up() => {
                    // Waits on the sender thread, which frees room as the broker takes
                    // batches: as long as the broker is away, at most until close's deadline.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(1));
                }
                OverrunPolicy::DropOldest => {
                    if self.buffer.force_push(outgoing).is_some() {
                        bump(&self.evicted, 1);
                    }
                    bump(&self.buffered, 1);
                    return Ok(());
                }
                OverrunPolicy::ReturnError => {
                    bump(&self.refused, 1);
                    return Err(BridgeError::Connection(
                        "the send buffer is full (the broker is slow or away)".into(),
                    ));
                }
                // Block, past close's deadline.
                OverrunPolicy::Block => {
                    bump(&self.abandoned, 1);
                    return Ok(());
                }
            }
        }
    }

    /// True once a handler waiting for room should give up: closed, or past the deadline of
    /// a close under way.
    fn gives_up(&self) -> bool {
        self.closed.load(Ordering::Acquire)
            || self
                .closing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// The sender thread: batches from the buffer to `backend` until closed. Once closed, it
    /// sends nothing more: what it holds is counted unsent.
    fn send_until_closed(&self, mut backend: impl Backend, batch: usize) {
        let mut pending: Vec<Outgoing> = Vec::with_capacity(batch);
        let mut idle = Duration::from_micros(50);
        while !self.closed.load(Ordering::Acquire) {
            while pending.len() < batch {
                match self.buffer.pop() {
                    Some(outgoing) => pending.push(outgoing),
                    None => break,
                }
            }
            if pending.is_empty() {
                std::thread::sleep(idle);
                idle = (idle * 2).min(Duration::from_millis(1));
                continue;
            }
            self.in_sender
                .store(pending.len() as u64, Ordering::Release);
            idle = Duration::from_micros(50);
            let mut backoff = Duration::from_millis(10);
            loop {
                // A backend is user code too: a panic in it is a failed send.
                if contained(&mut backend, |b| b.send(&pending)).is_ok() {
                    bump(&self.sent, pending.len() as u64);
                    pending.clear();
                    break;
                }
                if self.closed.load(Ordering::Acquire) {
                    break;
                }
                bump(&self.send_retries, 1);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            self.in_sender
                .store(pending.len() as u64, Ordering::Release);
        }
        bump(&self.unsent, pending.len() as u64);
        self.in_sender.store(0, Ordering::Release);
        let _ = contained(&mut backend, |b| b.close());
    }
}

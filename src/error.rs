//! The errors ringbus returns, and [`HandlerFailure`]. Every error that refuses an event hands
//! it back. (A transaction's [`CommitError`](crate::CommitError) lives with the transaction.)

use std::fmt;

/// Why a store could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The capacity was 0.
    #[error("ring capacity must be at least 1")]
    ZeroCapacity,
    /// The capacity was not a power of two (slots are indexed with `seq & (capacity - 1)`).
    #[error("ring capacity {0} is not a power of two")]
    NotPowerOfTwo(usize),
    /// The capacity is above the largest the ring supports.
    #[error("ring capacity {capacity} exceeds the maximum of {max} slots")]
    TooLarge {
        /// The capacity asked for.
        capacity: usize,
        /// The largest capacity accepted.
        max: usize,
    },
    /// The slots could not be allocated.
    #[error("could not allocate {bytes} bytes for a ring of {capacity} slots")]
    AllocationFailed {
        /// The capacity asked for.
        capacity: usize,
        /// The bytes the slots need (saturating).
        bytes: usize,
    },
    /// [`Builder::max_in_flight`](crate::Builder::max_in_flight) was 0: async work could
    /// never be handed out.
    #[error("max_in_flight must be at least 1")]
    ZeroMaxInFlight,
    /// [`Builder::sample_latency`](crate::Builder::sample_latency) was not a power of two
    /// (sampled sequences are picked with a mask).
    #[error("latency sampling rate {0} is not a power of two (1, 2, 4, ..., 64, ...)")]
    SampleRate(u64),
}

/// Why [`EventStore::enqueue`](crate::EventStore::enqueue) refused an event. Every variant
/// hands the event back.
#[derive(PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError<E> {
    /// The ring was full under [`OverrunPolicy::ReturnError`](crate::OverrunPolicy::ReturnError).
    #[error("ring is full")]
    Full(E),
    /// The store is closed.
    #[error("store is closed")]
    Closed(E),
    /// Under [`OverrunPolicy::Block`](crate::OverrunPolicy::Block), no room came before the
    /// deadline.
    #[error("timed out waiting for room in the ring")]
    Timeout(E),
}

impl<E> EnqueueError<E> {
    /// Why, without the event: `Copy`, and `Send + Sync + 'static` whatever `E` is, so `?`
    /// turns it into any error (a `Box<dyn Error + Send + Sync>` needs the event to be `Sync`
    /// otherwise).
    ///
    /// ```
    /// use ringbus::{Dispatcher, EnqueueError, Event, EventStore, OverrunPolicy};
    /// use std::cell::Cell;
    ///
    /// struct Ev(Cell<u32>); // not `Sync`
    /// impl Event for Ev {
    ///     type Projection = u8;
    ///     fn projection(&self) -> u8 { 0 }
    /// }
    /// fn produce(store: &EventStore<Ev>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    ///     store.enqueue(Ev(Cell::new(1))).map_err(EnqueueError::kind)?;
    ///     Ok(())
    /// }
    /// let store = EventStore::new(Dispatcher::new(), 1, OverrunPolicy::ReturnError)?;
    /// produce(&store)?;
    /// let full = produce(&store).unwrap_err();
    /// assert_eq!(full.to_string(), "ring is full");
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn kind(self) -> EnqueueErrorKind {
        match self {
            Self::Full(_) => EnqueueErrorKind::Full,
            Self::Closed(_) => EnqueueErrorKind::Closed,
            Self::Timeout(_) => EnqueueErrorKind::Timeout,
        }
    }

    /// The refused event.
    pub fn into_inner(self) -> E {
        match self {
            Self::Full(e) | Self::Closed(e) | Self::Timeout(e) => e,
        }
    }

    /// A reference to the refused event.
    pub fn event(&self) -> &E {
        match self {
            Self::Full(e) | Self::Closed(e) | Self::Timeout(e) => e,
        }
    }
}

impl<E> fmt::Debug for EnqueueError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "Full(..)",
            Self::Closed(_) => "Closed(..)",
            Self::Timeout(_) => "Timeout(..)",
        })
    }
}

/// Why an enqueue was refused, without the event: [`EnqueueError::kind`], and
/// `From<EnqueueError<E>>`. Its messages are [`EnqueueError`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueErrorKind {
    /// [`EnqueueError::Full`].
    #[error("ring is full")]
    Full,
    /// [`EnqueueError::Closed`].
    #[error("store is closed")]
    Closed,
    /// [`EnqueueError::Timeout`].
    #[error("timed out waiting for room in the ring")]
    Timeout,
}

impl<E> From<EnqueueError<E>> for EnqueueErrorKind {
    fn from(error: EnqueueError<E>) -> Self {
        error.kind()
    }
}

/// Why [`EventStore::enqueue_batch`](crate::EventStore::enqueue_batch) refused a batch. The
/// events stay in the caller's `Vec`, untouched and in order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Not enough room under [`OverrunPolicy::ReturnError`](crate::OverrunPolicy::ReturnError).
    #[error("not enough room in the ring for {len} events")]
    Full {
        /// Events in the batch.
        len: usize,
    },
    /// The store is closed.
    #[error("store is closed")]
    Closed,
    /// Under [`OverrunPolicy::Block`](crate::OverrunPolicy::Block), no room came before the
    /// deadline.
    #[error("timed out waiting for room for {len} events")]
    Timeout {
        /// Events in the batch.
        len: usize,
    },
    /// The batch is larger than the ring, so it could never fit at once.
    #[error("batch of {len} events exceeds the ring capacity of {capacity}")]
    TooLarge {
        /// Events in the batch.
        len: usize,
        /// The ring's capacity.
        capacity: usize,
    },
}

/// What a failing handler did: returned an error, or panicked. The one failure type: a run of
/// handlers hands it to its caller (a transaction's commit puts the first one in
/// [`CommitError::Handler`](crate::CommitError::Handler)).
#[derive(Debug, PartialEq, Eq)]
pub enum HandlerFailure<Err> {
    /// The handler returned this error.
    Error(Err),
    /// The handler panicked with this message (`"<non-string panic>"` when the payload was not
    /// a string).
    Panic(String),
    /// A subscription's handler returned after its time budget had passed (its result, even
    /// `Ok`, is disregarded).
    Timeout {
        /// How long the handler ran.
        elapsed: std::time::Duration,
        /// Its budget.
        budget: std::time::Duration,
    },
    /// A subscription's circuit breaker was open: the handler did not run (a dead letter of a
    /// skipped event, or a retry that found the breaker open, says so).
    CircuitOpen,
    /// The handler's failure was given up on and went to the store's dead-letter queue (the
    /// letter holds the failure itself): what a transaction's commit is told of it.
    DeadLettered,
}

impl<Err: fmt::Display> fmt::Display for HandlerFailure<Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(e) => e.fmt(f),
            Self::Panic(msg) => write!(f, "handler panicked: {msg}"),
            Self::Timeout { elapsed, budget } => {
                write!(f, "handler ran {elapsed:?}, past its budget of {budget:?}")
            }
            Self::CircuitOpen => f.write_str("the subscription's circuit breaker was open"),
            Self::DeadLettered => f.write_str("failed, sent to the dead-letter queue"),
        }
    }
}

/// [`drain`](crate::EventStore::drain) or [`close`](crate::EventStore::close) ran out of time.
/// Nothing is lost: what is left stays pending or keeps running, and a later `publish`,
/// `drain` or `close` picks it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out with {pending} events pending and {in_flight} in flight")]
pub struct TimeoutError {
    /// Events still in the ring.
    pub pending: u64,
    /// Events taken out whose handlers had not finished.
    pub in_flight: u64,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn enqueue_error_hands_the_event_back() {
        let e = EnqueueError::Full(String::from("x"));
        assert_eq!(e.event(), "x");
        assert_eq!(e.to_string(), "ring is full");
        assert_eq!(format!("{e:?}"), "Full(..)");
        assert_eq!(e.into_inner(), "x");
        assert_eq!(EnqueueError::Closed(1).into_inner(), 1);
        assert_eq!(EnqueueError::Timeout(2).into_inner(), 2);
        for (e, kind) in [
            (EnqueueError::Full(()), EnqueueErrorKind::Full),
            (EnqueueError::Closed(()), EnqueueErrorKind::Closed),
            (EnqueueError::Timeout(()), EnqueueErrorKind::Timeout),
        ] {
            let message = e.to_string();
            let k = EnqueueErrorKind::from(e);
            assert_eq!((k, k.to_string()), (kind, message));
        }
    }

    #[test]
    fn messages_name_the_numbers() {
        assert_eq!(
            BuildError::NotPowerOfTwo(3).to_string(),
            "ring capacity 3 is not a power of two"
        );
        let t = TimeoutError {
            pending: 4,
            in_flight: 2,
        };
        assert_eq!(
            t.to_string(),
            "timed out with 4 events pending and 2 in flight"
        );
    }
}

//! The seam between the bridge and a broker.

use std::time::Duration;

use super::envelope::{Outgoing, Received};

/// What a broker does for the bridge. One value serves one stream and, when receiving, one
/// consumer of one group; it is used from one thread at a time (`&mut self`).
pub trait Backend: Send {
    /// Appends `batch` to the stream, in order, in as few round trips as the broker allows.
    /// Either every entry was appended or an error says the batch may be partly appended
    /// (the receiver's [`DedupWindow`](super::DedupWindow) absorbs a resend).
    ///
    /// # Errors
    /// [`BridgeError::PayloadTooLarge`] before anything is sent when an entry is over the
    /// backend's limit; a connection or broker error otherwise.
    fn send(&mut self, batch: &[Outgoing]) -> Result<(), BridgeError>;

    /// The events of up to `max` entries for this consumer (an entry holds one event, or
    /// several; an entry's events come together, in order, in one call), waiting at most
    /// `wait` when there are none:
    /// first any this consumer left pending (an earlier run of it, killed), then any left
    /// pending by a consumer of the group quiet for longer than the claim timeout, then new
    /// ones. An empty vector when `wait` passed.
    ///
    /// # Errors
    /// A connection or broker error.
    fn receive(&mut self, max: usize, wait: Duration) -> Result<Vec<Received>, BridgeError>;

    /// Acknowledges entries (by [`Received::entry`]): the group will not deliver them again.
    ///
    /// # Errors
    /// A connection or broker error; the entries stay pending and come again.
    fn acknowledge(&mut self, entries: &[String]) -> Result<(), BridgeError>;

    /// Tells the broker that `entries`, delivered to this consumer, are still being worked
    /// on, so that they are not handed to another consumer as abandoned. Called every
    /// [`keep_alive_every`](Backend::keep_alive_every) for entries unsettled that long. The
    /// default does nothing.
    ///
    /// # Errors
    /// A connection or broker error.
    fn keep_alive(&mut self, entries: &[String]) -> Result<(), BridgeError> {
        let _ = entries;
        Ok(())
    }

    /// How often [`keep_alive`](Backend::keep_alive) is wanted: well within the time after
    /// which the broker takes an entry for abandoned. `None` (the default): never.
    fn keep_alive_every(&self) -> Option<Duration> {
        None
    }

    /// Ends the session with the broker. Pending entries stay pending.
    ///
    /// # Errors
    /// A connection or broker error.
    fn close(&mut self) -> Result<(), BridgeError>;
}

/// Why the bridge or its backend failed. Messages never carry credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The broker refused the credentials of the URL (wrong user or password, or an ACL that
    /// forbids a command the bridge needs).
    #[error("the broker refused the credentials: {0}")]
    Auth(String),
    /// The broker could not be reached, or the connection broke.
    #[error("cannot reach the broker: {0}")]
    Connection(String),
    /// The broker answered a command with an error.
    #[error("the broker refused a command: {0}")]
    Broker(String),
    /// An encoded payload is over the configured maximum (go-events' `MaxPayloadSize`).
    #[error("an encoded payload of {size} bytes is over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The codec could not encode an event.
    #[error("cannot encode the event: {0}")]
    Encode(String),
    /// The codec could not decode a payload.
    #[error("cannot decode a payload: {0}")]
    Decode(String),
    /// An option is unusable (an empty stream name, a URL that does not parse).
    #[error("bad bridge option: {0}")]
    Config(String),
}

/// How long a receive waits at most when nothing is there, as the broker takes it: whole
/// milliseconds, at least one (zero would mean "forever" to Redis).
pub(crate) fn wait_millis(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Runs `call` on `backend`, user code: a panic in it is a failed call (its payload disposed
/// of, as the store does a handler's, since its own `Drop` may panic).
pub(crate) fn contained<B: ?Sized, T>(
    backend: &mut B,
    call: impl FnOnce(&mut B) -> Result<T, BridgeError>,
) -> Result<T, BridgeError> {
    crate::panics::catch(|| call(backend)).unwrap_or_else(|payload| {
        crate::panics::dispose(payload);
        Err(BridgeError::Connection("the backend panicked".into()))
    })
}

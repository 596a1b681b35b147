//! What travels on a stream: an event's id, its projection's name and its encoded payload.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// An event's id, unique across processes: the sending process's random `origin` and the
/// event's number among that process's sends. Written `oooooooooooooooo-s` (16 hex digits,
/// then hex) in the stream's `id` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    /// The sending process's origin: random, drawn once per process.
    pub origin: u64,
    /// The event's number among the origin's sends, from 0.
    pub sequence: u64,
}

impl EventId {
    /// The next id of this process: its origin, and a sequence unique within it.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        EventId {
            origin: process_origin(),
            // Relaxed: only uniqueness is needed, which the read-modify-write gives.
            sequence: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// This process's origin: 64 random bits (the standard library's per-process random keys,
/// mixed with the process id and the time), the same for every call in the process.
fn process_origin() -> u64 {
    static ORIGIN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(since.as_nanos());
        }
        hasher.finish()
    })
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{:x}", self.origin, self.sequence)
    }
}

impl FromStr for EventId {
    type Err = Malformed;

    fn from_str(s: &str) -> Result<Self, Malformed> {
        let (origin, sequence) = s.split_once('-').ok_or(Malformed::BadId)?;
        if origin.len() != 16 || sequence.is_empty() || sequence.len() > 16 {
            return Err(Malformed::BadId);
        }
        let hex = |part: &str| {
            // `from_str_radix` takes a leading `+`; an id never has one.
            if part.starts_with('+') {
                return Err(Malformed::BadId);
            }
            u64::from_str_radix(part, 16).map_err(|_| Malformed::BadId)
        };
        Ok(EventId {
            origin: hex(origin)?,
            sequence: hex(sequence)?,
        })
    }
}

/// An event on its way out: its id, its projection's name (the receiver routes by it) and
/// its encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The event's id.
    pub id: EventId,
    /// The event's projection, as the receiving side names it.
    pub projection: String,
    /// The encoded event.
    pub payload: Vec<u8>,
}

/// An event that arrived: what [`Outgoing`] sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The event's id.
    pub id: EventId,
    /// The event's projection's name.
    pub projection: String,
    /// The encoded event.
    pub payload: Vec<u8>,
}

/// One event of an entry a backend delivered (an entry holds one, or several the sender
/// packed, which share `entry`): well-formed or not, its entry must be acknowledged once all
/// its events were dealt with (a malformed one after it was moved aside), or it comes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The broker's id of the entry (a Redis stream id), for [`Backend::acknowledge`].
    ///
    /// [`Backend::acknowledge`]: super::Backend::acknowledge
    pub entry: String,
    /// The event, or why it is not one.
    pub body: Result<Incoming, Malformed>,
    /// The entry was delivered before (to this consumer in an earlier run, or to another
    /// consumer that went quiet).
    pub redelivered: bool,
}

/// Why an entry of the stream is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// A field the bridge writes is missing.
    #[error("the entry has no `{0}` field")]
    MissingField(&'static str),
    /// A field is not what the bridge writes (the projection not UTF-8, say).
    #[error("the entry's `{0}` field is not valid")]
    BadField(&'static str),
    /// The `id` field is not an [`EventId`].
    #[error("the entry's id is not an event id")]
    BadId,
    /// The payload is over the receiver's limit.
    #[error("the payload of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The entry was trimmed from the stream (its length cap) while it was pending.
    #[error("the entry was trimmed from the stream while pending")]
    Trimmed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_in_a_process_and_read_back_from_their_text() {
        let (a, b) = (EventId::next(), EventId::next());
        assert_eq!(a.origin, b.origin);
        assert_ne!(a, b);
        for id in [
            a,
            b,
            EventId {
                origin: 0,
                sequence: 0,
            },
            EventId {
                origin: u64::MAX,
                sequence: u64::MAX,
            },
        ] {
            assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        }
    }

    #[test]
    fn text_that_is_not_an_id_is_refused() {
        for bad in [
            "",
            "-",
            "12-3",
            "0123456789abcdef-",
            "0123456789abcdef-+1",
            "0123456789abcdeg-1",
            "0123456789abcdef-11111111111111111",
            "0123456789abcdef",
        ] {
            assert_eq!(bad.parse::<EventId>(), Err(Malformed::BadId), "{bad:?}");
        }
    }
}

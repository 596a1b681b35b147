//! The cross-process bridge (feature `redis`): events of a store carried between processes
//! and machines through a broker.
//!
//! This module holds the seam and the parts every broker shares; the core never imports it.
//!
//! - [`Backend`]: what a broker does for the bridge: append a batch, receive, acknowledge,
//!   close. [`RedisStreams`] implements it on Redis Streams with consumer groups.
//! - [`EventId`]: an event's id, unique across processes (a random origin per process and a
//!   sequence), carried with it so that a receiver can drop duplicates ([`DedupWindow`]).
//! - [`Codec`]: how a payload becomes bytes; [`Json`] by default (readable in `redis-cli`),
//!   [`Postcard`] for a compact binary form.
//! - [`BridgeMetrics`]: what crossed, counted.
//! - [`Forwarder`]: the sending half of a bridged store: its events of chosen projections
//!   appended to the stream after its local handlers, through a bounded send buffer.
//! - [`Receiver`]: the receiving half: entries enqueued into the store through its producer
//!   lane, acknowledged once their handlers are done.
//!
//! # Delivery
//!
//! At least once: an entry stays pending in its consumer group until it is acknowledged, and
//! a pending entry whose consumer went quiet for longer than the claim timeout is delivered to
//! another consumer of the group. So an entry can arrive twice (its consumer died after
//! handling it, before acknowledging it); [`DedupWindow`] drops a repeat of any of the last
//! `n` ids it saw. Order is the stream's order for one consumer, except for redelivered
//! entries, which come again after newer ones. A consumer that is alive keeps the entries
//! whose events are still in its store from being claimed ([`Backend::keep_alive`]), and
//! reads only as fast as its store runs (it never overruns its lane). A sender may pack
//! several events into one entry ([`RedisOptions::events_per_entry`]): the entry is then
//! acknowledged, claimed and trimmed as a whole.

mod backend;
mod codec;
mod dedup;
mod envelope;
mod forward;
mod metrics;
mod receive;
mod redis;
mod reply;

pub use backend::{Backend, BridgeError};
pub use codec::{Codec, Json, Postcard};
pub use dedup::DedupWindow;
pub use envelope::{EventId, Incoming, Malformed, Outgoing, Received};
pub use forward::{ForwardMetrics, ForwardOptions, Forwarder};
pub use metrics::{BridgeMetrics, BridgeMetricsSnapshot};
pub use receive::{ReceiveMetrics, ReceiveOptions, Receiver};
pub use redis::{RedisOptions, RedisStreams};

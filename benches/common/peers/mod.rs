//! The systems that implement [`Peer`](super::peer::Peer), one file each: ringbus and the four
//! queues it is compared against (listed once, in `registry::peers!`).

pub mod array_queue;
pub mod channel;
pub mod disruptor;
pub mod ringbus;

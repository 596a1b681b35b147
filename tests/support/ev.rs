//! The plain test event, shared by the test files whose events are just a routing key and a
//! name. Included as `mod support { pub mod ev; }` by the test files that use it.

use ringbus::Event;

/// An event routed by `key`, named by its `producer` and that producer's running `index`.
/// `Copy` and comparable, so a test can keep what it enqueued and check what comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ev {
    pub key: u8,
    pub producer: u64,
    pub index: u64,
}

impl Ev {
    /// `producer`'s `index`-th event, routed to key 0.
    pub fn new(producer: u64, index: u64) -> Self {
        Self {
            key: 0,
            producer,
            index,
        }
    }
}

impl Event for Ev {
    type Projection = u8;
    fn projection(&self) -> u8 {
        self.key
    }
}

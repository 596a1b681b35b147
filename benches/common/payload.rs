//! The payload every system carries ([`Ev`]) and how a run makes its events ([`event`]).

use ringbus::Event;

/// Distinct keys (projections); events cycle over them.
pub const KEYS: usize = 8;

/// The payload: a routing key and three words of data.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ev {
    /// Routing key, `0..KEYS`.
    pub key: u8,
    /// Added to the key's counter by every handler.
    pub a: u64,
    /// W-latency: the producer's stamp, in ns since the sink's epoch.
    pub b: u64,
    /// The event's index in its run (W-latency: where its latency sample goes).
    pub c: u64,
}

impl Event for Ev {
    type Projection = u8;
    fn projection(&self) -> u8 {
        self.key
    }
}

/// The `i`-th event of a run. `a` is 1 so that the counters' total is the event count.
#[inline(always)]
pub fn event(i: u64) -> Ev {
    Ev {
        key: (i % KEYS as u64) as u8,
        a: 1,
        b: 0,
        c: i,
    }
}

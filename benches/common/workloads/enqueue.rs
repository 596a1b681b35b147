//! W-enqueue: one producer into a full ring, dropping the oldest event each time; nobody
//! consumes.

use std::time::{Duration, Instant};

use super::tick::TICK;
use crate::common::handlers::{Sink, Work};
use crate::common::payload::event;
use crate::common::peer::{CAPACITY, Peer};
use crate::common::registry::{Throughput, Workload, ringbus_and_peers};
use crate::common::runner::Runner;

/// W-enqueue.
pub const WORKLOAD: Workload = Workload {
    name: "W-enqueue",
    whole_run: false,
    cells,
};

fn cells() -> Vec<Throughput> {
    ringbus_and_peers!(cell; Ringbus, RingbusSp)
}

fn cell<P: Peer>() -> Throughput {
    Throughput::new(P::NAME, |_| Box::new(Enqueue::<P>::new()))
}

/// A peer filled before its first timed run, so that every timed enqueue evicts one: the
/// steady state of a producer that nobody drains. An iteration is [`TICK`] enqueues.
struct Enqueue<P> {
    peer: P,
}

impl<P: Peer> Enqueue<P> {
    fn new() -> Self {
        let mut runner = Self {
            peer: P::new(Work::Tiny, &Sink::new(0)),
        };
        runner.run(CAPACITY as u64 / TICK as u64);
        runner
    }
}

impl<P: Peer> Runner for Enqueue<P> {
    fn events_per_iter(&self) -> u64 {
        TICK as u64
    }
    fn run(&mut self, iters: u64) -> Duration {
        let n = iters * TICK as u64;
        let start = Instant::now();
        for i in 0..n {
            self.peer.push_drop_oldest(event(i));
        }
        let elapsed = start.elapsed();
        if let Some(m) = self.peer.metrics() {
            assert_eq!(m.pending, CAPACITY as u64);
            assert_eq!(m.published, m.dropped + m.pending);
        }
        elapsed
    }
}

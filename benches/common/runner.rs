//! How a cell is timed: the [`Runner`] trait, and the one runner of the tick-shaped workloads
//! (W-tick, W-parallel, W-tx) over anything that does a [`Tick`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handlers::{Sink, Work};
use super::peer::Peer;

/// One system on one workload, ready to run.
pub trait Runner {
    /// Events one iteration handles (a tick, a transaction, a whole W-mp run).
    fn events_per_iter(&self) -> u64;
    /// Runs `iters` iterations and returns the time they took, setup excluded.
    fn run(&mut self, iters: u64) -> Duration;
}

/// One system's tick, all on the calling thread.
pub trait Tick {
    /// Makes events `first..first + n`, puts them in, and takes them out through the handlers.
    fn tick(&mut self, first: u64, n: u64);
    /// Outside the timed region, once ticks have made `made` events in all: asserts that each
    /// reached its handler exactly once.
    fn check(&self, made: u64);
}

/// Times `events`-event ticks of `T`, one after another.
pub struct TickRunner<T> {
    tick: T,
    events: u64,
    next: u64,
}

impl<T: Tick + 'static> TickRunner<T> {
    /// A runner of `events`-event ticks.
    pub fn boxed(tick: T, events: usize) -> Box<dyn Runner> {
        Box::new(Self {
            tick,
            events: events as u64,
            next: 0,
        })
    }
}

impl<T: Tick> Runner for TickRunner<T> {
    fn events_per_iter(&self) -> u64 {
        self.events
    }
    fn run(&mut self, iters: u64) -> Duration {
        let n = self.events;
        let start = Instant::now();
        for _ in 0..iters {
            self.tick.tick(self.next, n);
            self.next += n;
        }
        let elapsed = start.elapsed();
        self.tick.check(self.next);
        elapsed
    }
}

/// A [`Peer`]'s tick ([`Peer::tick`]) and the sink its handlers count into.
pub struct PeerTick<P> {
    /// The system.
    pub peer: P,
    sink: Arc<Sink>,
}

impl<P: Peer> PeerTick<P> {
    /// `P` with `work` handlers.
    pub fn new(work: Work) -> Self {
        Self::with(|sink| P::new(work, sink))
    }

    /// The peer `build` makes for a fresh sink.
    pub fn with(build: impl FnOnce(&Arc<Sink>) -> P) -> Self {
        let sink = Sink::new(0);
        Self {
            peer: build(&sink),
            sink,
        }
    }
}

impl<P: Peer> Tick for PeerTick<P> {
    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        self.peer.tick(first, n);
    }

    fn check(&self, made: u64) {
        self.sink.expect_total(made, P::NAME);
        if let Some(m) = self.peer.metrics() {
            assert_eq!(m.dropped, 0);
        }
    }
}

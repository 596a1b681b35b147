//! W-mp: two producer threads (waiting when full) into one consumer thread; the time from the
//! start signal to the last event handled, with an exact count.

use std::marker::PhantomData;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use crate::common::handlers::Sink;
use crate::common::payload::event;
use crate::common::peer::{Consumer, Peer, Producer};
use crate::common::registry::{Throughput, Workload, ringbus_and_peers};
use crate::common::runner::Runner;

/// Producer threads.
pub const PRODUCERS: u64 = 2;
/// Events each producer puts in.
pub const PER_PRODUCER: u64 = 1_000_000;

/// W-mp. One iteration is a whole 2,000,000-event run with fresh threads and queue.
pub const WORKLOAD: Workload = Workload {
    name: "W-mp",
    whole_run: true,
    cells,
};

fn cells() -> Vec<Throughput> {
    ringbus_and_peers!(cell; Ringbus, RingbusConsumer)
}

fn cell<P: Peer>() -> Throughput {
    Throughput::new(P::NAME, |_| Box::new(Mp::<P>(PhantomData)))
}

/// `iters` whole runs of [`run`].
struct Mp<P>(PhantomData<fn() -> P>);

impl<P: Peer> Runner for Mp<P> {
    fn events_per_iter(&self) -> u64 {
        PRODUCERS * PER_PRODUCER
    }
    fn run(&mut self, iters: u64) -> Duration {
        (0..iters).map(|_| run::<P>()).sum()
    }
}

/// The producers each put [`PER_PRODUCER`] events in (waiting when full) while one consumer
/// thread dispatches them; returns the consumer's time from the start signal to the last event.
/// Asserts that every event was handled exactly once.
fn run<P: Peer>() -> Duration {
    let total = PRODUCERS * PER_PRODUCER;
    let sink = Sink::new(0);
    let start = Barrier::new(PRODUCERS as usize + 1);
    let (producer, mut consumer) = P::mp(&sink);
    let elapsed = thread::scope(|s| {
        for _ in 0..PRODUCERS {
            let mut producer = producer.clone();
            let start = &start;
            s.spawn(move || {
                start.wait();
                let backoff = Backoff::new();
                for i in 0..PER_PRODUCER {
                    producer.put_waiting(event(i), &backoff);
                }
            });
        }
        // The consumers that wait for every sender to be gone (channels) stop on this.
        drop(producer);
        let consumer = &mut consumer;
        let start = &start;
        s.spawn(move || {
            start.wait();
            let t = Instant::now();
            let done = consumer.take_all(total);
            let elapsed = t.elapsed();
            assert_eq!(done, total);
            elapsed
        })
        .join()
        .expect("consumer")
    });
    if let Some(m) = consumer.metrics() {
        assert!(m.is_balanced() && m.processed == total && m.dropped == 0);
    }
    sink.expect_total(total, P::NAME);
    elapsed
}

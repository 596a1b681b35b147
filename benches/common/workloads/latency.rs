//! W-latency: one producer thread stamps events 1 µs apart, one consumer thread busy-polls;
//! the handler records now - stamp. Reported as percentiles (the report) or the mean
//! (criterion).

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::handlers::Sink;
use crate::common::payload::event;
use crate::common::peer::{Consumer, Peer, Producer};
use crate::common::registry::{LatencyCell, RunLatency, Workload, ringbus_and_peers};

/// Gap between two stamped events.
pub const GAP: Duration = Duration::from_micros(1);

/// W-latency. A run is paced in real time, so criterion samples it flat.
pub const WORKLOAD: Workload<RunLatency> = Workload {
    name: "W-latency",
    whole_run: true,
    cells,
};

fn cells() -> Vec<LatencyCell> {
    ringbus_and_peers!(cell; Ringbus, RingbusSp, RingbusConsumer)
}

fn cell<P: Peer>() -> LatencyCell {
    LatencyCell::new(P::NAME, run::<P>)
}

/// One producer thread stamps `n` events [`GAP`] apart, one consumer thread busy-polls
/// (ringbus: spins on `publish()`; ringbus-consumer: the store's own thread, `BusySpin`,
/// while this one sleeps between looks at the sink); the handler records `now - stamp`. Returns the `n`
/// latencies in ns, sorted. Both sides spin without yielding, as a latency-sensitive deployment
/// would; each system's blocking consumer idiom (`recv`) is not used, since parking and waking
/// would dominate a 1 µs gap.
fn run<P: Peer>(n: usize) -> Vec<u64> {
    let sink = Sink::new(n);
    let start = Barrier::new(2);
    let stamped = |i: u64| {
        let mut ev = event(i);
        ev.b = sink.now_ns();
        ev
    };
    // Paces the producer: waits until event `i`'s send time, then makes it.
    let paced = |t0: Instant, i: u64| {
        let due = t0 + GAP * i as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        stamped(i)
    };
    let n64 = n as u64;
    let (mut producer, mut consumer) = P::latency(&sink);
    thread::scope(|s| {
        let start = &start;
        let paced = &paced;
        s.spawn(move || {
            start.wait();
            let t0 = Instant::now();
            for i in 0..n64 {
                producer.put_spinning(paced(t0, i));
            }
        });
        start.wait();
        assert_eq!(consumer.spin_all(n64), n64);
    });
    sink.expect_total(n64, P::NAME);
    sink.sorted_samples()
}

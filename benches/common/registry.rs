//! What runs: every workload in report order, each as a list of cells (a system and how to
//! build its runner), and the one list of the peers ringbus is compared against.

use super::calibrate::Calibration;
use super::runner::Runner;
use super::workloads::{enqueue, latency, mp, parallel, tick, tx};

/// Builds a throughput cell's runner.
pub type MakeRunner = fn(&Calibration) -> Box<dyn Runner>;
/// Runs a W-latency cell for `n` events and returns their latencies in ns, sorted.
pub type RunLatency = fn(usize) -> Vec<u64>;

/// One system on one workload.
pub struct Cell<M> {
    /// The system's name in criterion, the table and the JSON.
    pub system: &'static str,
    /// How to run it: a [`MakeRunner`] or a [`RunLatency`].
    pub make: M,
}

impl<M> Cell<M> {
    /// A cell named `system`.
    pub const fn new(system: &'static str, make: M) -> Self {
        Self { system, make }
    }
}

/// A throughput cell: ns per event.
pub type Throughput = Cell<MakeRunner>;
/// A latency cell: percentiles.
pub type LatencyCell = Cell<RunLatency>;

/// A workload: a group in criterion, rows in the table.
pub struct Workload<M = MakeRunner> {
    /// Group name in criterion, the table and the JSON.
    pub name: &'static str,
    /// One iteration is a whole run with fresh threads and queues: criterion samples it flat
    /// (not linearly), and the report runs one iteration a repetition, with no warm-up.
    pub whole_run: bool,
    /// The systems, in table order.
    pub cells: fn() -> Vec<Cell<M>>,
}

/// Every throughput workload, in report order.
pub const THROUGHPUT: [Workload; 6] = [
    tick::WORKLOAD,
    parallel::TINY,
    parallel::ONE_US,
    enqueue::WORKLOAD,
    mp::WORKLOAD,
    tx::WORKLOAD,
];

/// W-latency, reported as percentiles after the throughput workloads.
pub const LATENCY: Workload<RunLatency> = latency::WORKLOAD;

/// `[f::<P>(), ...]` for every peer `P` ringbus is compared against, in table order (the
/// "best peer" of a row is the fastest of these). Adding a peer: its file in `peers/`, and a
/// line here.
macro_rules! peers {
    ($f:ident) => {
        [
            $f::<$crate::common::peers::array_queue::ArrayQueuePeer>(),
            $f::<
                $crate::common::peers::channel::ChannelPeer<
                    $crate::common::peers::channel::Crossbeam,
                >,
            >(),
            $f::<
                $crate::common::peers::channel::ChannelPeer<
                    $crate::common::peers::channel::StdMpsc,
                >,
            >(),
            $f::<$crate::common::peers::disruptor::DisruptorPeer>(),
        ]
    };
}
pub(crate) use peers;

/// `vec![f::<Ringbus>(), ...]` for the named ringbus systems of `peers::ringbus`, then
/// [`peers!`]: `ringbus_and_peers!(cell; Ringbus, RingbusSp)`.
macro_rules! ringbus_and_peers {
    ($f:ident; $($system:ident),+) => {{
        let mut cells = vec![$($f::<$crate::common::peers::ringbus::$system>()),+];
        cells.extend($crate::common::registry::peers!($f));
        cells
    }};
}
pub(crate) use ringbus_and_peers;

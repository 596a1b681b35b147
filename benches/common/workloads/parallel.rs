//! W-parallel-tiny and W-parallel-1us: W-tick's ringbus with `DispatchMode::Parallel`
//! (ringbus-parallel) against the same store in sync and against a bare `rayon` `par_iter` over
//! the same events and handlers with no ring (rayon), with tiny and with ~1 µs handlers.

use ringbus::DispatchMode;

use super::tick::TICK;
use crate::common::baselines::{Direct, Rayon};
use crate::common::calibrate::Calibration;
use crate::common::handlers::Work;
use crate::common::peer::Peer;
use crate::common::peers::ringbus::Ringbus;
use crate::common::registry::{Throughput, Workload};
use crate::common::runner::{PeerTick, TickRunner};

/// W-parallel with tiny handlers.
pub const TINY: Workload = Workload {
    name: "W-parallel-tiny",
    whole_run: false,
    cells: cells::<false>,
};

/// W-parallel with ~1 µs handlers.
pub const ONE_US: Workload = Workload {
    name: "W-parallel-1us",
    whole_run: false,
    cells: cells::<true>,
};

fn work<const SPIN_1US: bool>(calibration: &Calibration) -> Work {
    if SPIN_1US {
        Work::Spin(calibration.spin_1us)
    } else {
        Work::Tiny
    }
}

fn cells<const SPIN_1US: bool>() -> Vec<Throughput> {
    vec![
        Throughput::new(Direct::NAME, |cal| {
            TickRunner::boxed(Direct::new(work::<SPIN_1US>(cal), TICK), TICK)
        }),
        Throughput::new(Rayon::NAME, |cal| {
            TickRunner::boxed(Rayon::new(work::<SPIN_1US>(cal), TICK), TICK)
        }),
        Throughput::new(Ringbus::NAME, |cal| {
            TickRunner::boxed(PeerTick::<Ringbus>::new(work::<SPIN_1US>(cal)), TICK)
        }),
        Throughput::new("ringbus-parallel", |cal| {
            let parallel = PeerTick::with(|sink| {
                Ringbus::with_mode(work::<SPIN_1US>(cal), sink, DispatchMode::Parallel)
            });
            TickRunner::boxed(parallel, TICK)
        }),
    ]
}

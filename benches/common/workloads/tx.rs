//! W-tx: 16-event transactions committed one at a time: ringbus's `Transaction` (one claim for
//! all 16, then a sync dispatch in the caller) against 16 pushes and a drain.

use crate::common::baselines::Direct;
use crate::common::handlers::Work;
use crate::common::peer::Peer;
use crate::common::registry::{Throughput, Workload, ringbus_and_peers};
use crate::common::runner::{PeerTick, Tick, TickRunner};

/// Events per transaction.
pub const TX: usize = 16;

/// W-tx.
pub const WORKLOAD: Workload = Workload {
    name: "W-tx",
    whole_run: false,
    cells,
};

fn cells() -> Vec<Throughput> {
    let mut cells = vec![Throughput::new(Direct::NAME, |_| {
        TickRunner::boxed(Direct::new(Work::Tiny, TX), TX)
    })];
    cells.extend(ringbus_and_peers!(cell; Ringbus));
    cells
}

fn cell<P: Peer>() -> Throughput {
    Throughput::new(P::NAME, |_| {
        TickRunner::boxed(Commit(PeerTick::<P>::new(Work::Tiny)), TX)
    })
}

/// A peer's tick as one unit: [`Peer::commit`].
struct Commit<P>(PeerTick<P>);

impl<P: Peer> Tick for Commit<P> {
    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        self.0.peer.commit(first, n);
    }

    fn check(&self, made: u64) {
        self.0.check(made);
    }
}

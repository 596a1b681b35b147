//! W-tick: 1,024 events per tick into a 65,536-slot ring, then a synchronous drain, all on one
//! thread; with `base` (the harness alone) and `direct` (no queue) below the systems.

use crate::common::baselines::{Base, Direct};
use crate::common::handlers::Work;
use crate::common::peer::Peer;
use crate::common::peers::ringbus::{
    Ringbus, RingbusBatch, RingbusLocal, RingbusSampled, RingbusSp, RingbusSubscribed, Subscribed,
};
use crate::common::registry::{Throughput, Workload, peers};
use crate::common::runner::{PeerTick, TickRunner};

/// Events per tick (W-tick, W-parallel; W-enqueue counts its iterations in ticks too).
pub const TICK: usize = 1024;

/// W-tick.
pub const WORKLOAD: Workload = Workload {
    name: "W-tick",
    whole_run: false,
    cells,
};

fn cells() -> Vec<Throughput> {
    let mut cells = vec![
        Throughput::new(Base::NAME, |_| TickRunner::boxed(Base, TICK)),
        Throughput::new(Direct::NAME, |_| {
            TickRunner::boxed(Direct::new(Work::Tiny, TICK), TICK)
        }),
        cell::<Ringbus>(),
        cell::<RingbusSp>(),
        Throughput::new(RingbusBatch::NAME, |_| {
            TickRunner::boxed(RingbusBatch::new(Work::Tiny), TICK)
        }),
        Throughput::new(RingbusLocal::NAME, |_| {
            TickRunner::boxed(RingbusLocal::new(), TICK)
        }),
        subscribed(Subscribed::Plain),
        subscribed(Subscribed::Filtered),
        subscribed(Subscribed::Retry),
        Throughput::new(RingbusSampled::name(64), |_| {
            TickRunner::boxed(RingbusSampled::new(64), TICK)
        }),
        Throughput::new(RingbusSampled::name(1), |_| {
            TickRunner::boxed(RingbusSampled::new(1), TICK)
        }),
    ];
    cells.extend(peers!(cell));
    cells
}

fn cell<P: Peer>() -> Throughput {
    Throughput::new(P::NAME, |_| {
        TickRunner::boxed(PeerTick::<P>::new(Work::Tiny), TICK)
    })
}

/// A runtime-subscription cell: the name and the runner's options must agree, and a
/// `MakeRunner` is a plain `fn`, so one arm per option.
fn subscribed(options: Subscribed) -> Throughput {
    let name = RingbusSubscribed::name(options);
    match options {
        Subscribed::Plain => Throughput::new(name, |_| {
            TickRunner::boxed(RingbusSubscribed::new(Subscribed::Plain), TICK)
        }),
        Subscribed::Filtered => Throughput::new(name, |_| {
            TickRunner::boxed(RingbusSubscribed::new(Subscribed::Filtered), TICK)
        }),
        Subscribed::Retry => Throughput::new(name, |_| {
            TickRunner::boxed(RingbusSubscribed::new(Subscribed::Retry), TICK)
        }),
    }
}

//! The two rows with no queue: `base` (the harness alone) and `direct` (the handlers called
//! over a pre-filled `Vec`, the limit any queue is measured against).

use std::hint::black_box;
use std::sync::Arc;

use super::handlers::{Sink, Table, Work, dispatch, table};
use super::payload::{Ev, event};
use super::runner::Tick;

/// The harness floor: the event-making loop with nothing to put the events in.
pub struct Base;

impl Base {
    /// The row's name in criterion, the table and the JSON.
    pub const NAME: &'static str = "base";
}

impl Tick for Base {
    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        for i in first..first + n {
            black_box(event(i));
        }
    }

    /// Nothing is handled, so nothing to check.
    fn check(&self, _made: u64) {}
}

/// No queue: the handlers over the same events, made once before the run.
pub struct Direct {
    table: Table,
    events: Vec<Ev>,
    sink: Arc<Sink>,
}

impl Direct {
    /// The row's name in criterion, the table and the JSON.
    pub const NAME: &'static str = "direct";

    /// `events` events through `work` handlers.
    pub fn new(work: Work, events: usize) -> Self {
        let sink = Sink::new(0);
        Self {
            table: table(work, &sink),
            events: (0..events as u64).map(event).collect(),
            sink,
        }
    }
}

impl Tick for Direct {
    /// The same events every tick: `first` and `n` only count them.
    #[inline(always)]
    fn tick(&mut self, _first: u64, _n: u64) {
        for ev in &self.events {
            dispatch(&self.table, ev);
        }
    }

    fn check(&self, made: u64) {
        self.sink.expect_total(made, Self::NAME);
    }
}

/// No queue, in parallel: the direct loop's handlers over the same events, made once, with a
/// bare `rayon` `par_iter` on the global pool. The mark W-parallel's `ringbus-parallel` is held
/// to where the work is large enough to split.
pub struct Rayon(Direct);

impl Rayon {
    /// The row's name in criterion, the table and the JSON.
    pub const NAME: &'static str = "rayon";

    /// `events` events through `work` handlers.
    pub fn new(work: Work, events: usize) -> Self {
        Self(Direct::new(work, events))
    }
}

impl Tick for Rayon {
    /// The same events every tick: `first` and `n` only count them.
    #[inline(always)]
    fn tick(&mut self, _first: u64, _n: u64) {
        use rayon::prelude::*;
        let table = &self.0.table;
        self.0.events.par_iter().for_each(|ev| dispatch(table, ev));
    }

    fn check(&self, made: u64) {
        self.0.sink.expect_total(made, Self::NAME);
    }
}

//! Calibration: the fixed amount of loop work that takes about 1 µs on this machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// What the runners need to know about this machine, measured once per process.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// Iterations of [`spin`] that take about 1 µs: the unit of `Work::Spin`.
    pub spin_1us: u64,
}

impl Calibration {
    /// Measures this machine.
    pub fn measure() -> Self {
        Self {
            spin_1us: calibrate_spin(Duration::from_micros(1)),
        }
    }
}

/// Runs a loop of `iters` steps the optimiser cannot remove: the unit of `Work::Spin`.
#[inline(never)]
pub fn spin(iters: u64) {
    let mut x = 0u64;
    for i in 0..iters {
        x = black_box(x.wrapping_add(i));
    }
    black_box(x);
}

/// Iterations of [`spin`] that take `target` on this machine: the median of 9 timings, so a
/// preemption during calibration does not skew it. A fixed amount of work (not "spin until
/// the clock says 1 µs") so that a preempted handler is not counted as having worked.
fn calibrate_spin(target: Duration) -> u64 {
    const PROBE: u64 = 1 << 20;
    let mut per_iter: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            spin(PROBE);
            t.elapsed().as_nanos() as f64 / PROBE as f64
        })
        .collect();
    per_iter.sort_by(f64::total_cmp);
    ((target.as_nanos() as f64 / per_iter[4]) as u64).max(1)
}

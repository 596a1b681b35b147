//! ringbus against its peers, one criterion group per workload, every system of a workload in
//! the same group. The workloads themselves live in `common/workloads/`, one file each, shared
//! with `examples/bench_report.rs`; see `BENCHMARKS.md` for what each one measures.
//!
//! Runs are short (10 samples, about a second each) so that `cargo bench` finishes in a few
//! minutes on two cores; use `examples/bench_report.rs` for the summary table.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};

mod common;

use common::calibrate::Calibration;
use common::registry::{LATENCY, THROUGHPUT, Workload};

/// Latency runs, in events: long enough for a stable mean, short enough for criterion's loop.
const LATENCY_EVENTS_MAX: u64 = 200_000;

/// The workload's group; a whole run an iteration is sampled flat, not linearly.
fn group<'c, M>(c: &'c mut Criterion, workload: &Workload<M>) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(workload.name);
    if workload.whole_run {
        group.sampling_mode(SamplingMode::Flat);
    }
    group
}

fn throughput(c: &mut Criterion) {
    let calibration = Calibration::measure();
    for workload in THROUGHPUT {
        let mut group = group(c, &workload);
        for cell in (workload.cells)() {
            let mut runner = (cell.make)(&calibration);
            group.throughput(Throughput::Elements(runner.events_per_iter()));
            group.bench_function(BenchmarkId::from_parameter(cell.system), |b| {
                b.iter_custom(|iters| runner.run(iters))
            });
        }
        group.finish();
    }
}

/// W-latency: each sample's "time" is the sum of the stamp-to-handler latencies of `iters`
/// events, so criterion reports the mean latency per event. Percentiles (p50 / p99 / p99.9)
/// come from the report example, which keeps the samples.
fn latency(c: &mut Criterion) {
    let mut group = group(c, &LATENCY);
    // Criterion sizes samples from the reported time (the latency, ~100s of ns), but every
    // event also costs its 1 µs pacing gap in real time: a short budget keeps a group of five
    // systems to seconds instead of minutes.
    group.warm_up_time(Duration::from_millis(100));
    group.measurement_time(Duration::from_millis(300));
    group.throughput(Throughput::Elements(1));
    for cell in (LATENCY.cells)() {
        group.bench_function(BenchmarkId::from_parameter(cell.system), |b| {
            b.iter_custom(|iters| {
                let mut left = iters;
                let mut total = Duration::ZERO;
                while left > 0 {
                    let n = left.min(LATENCY_EVENTS_MAX);
                    total += Duration::from_nanos((cell.make)(n as usize).iter().sum());
                    left -= n;
                }
                total
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = throughput, latency
}
criterion_main!(benches);

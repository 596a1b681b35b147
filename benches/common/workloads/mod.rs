//! The workloads, one file each; `registry` lists them in report order. See `BENCHMARKS.md`
//! for what each one measures.

pub mod enqueue;
pub mod latency;
pub mod mp;
pub mod parallel;
pub mod tick;
pub mod tx;

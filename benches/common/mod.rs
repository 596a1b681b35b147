//! The harness shared by `benches/workloads.rs` (criterion) and `examples/bench_report.rs`
//! (the table), so that both measure exactly the same code.
//!
//! Every system runs the same payload ([`payload::Ev`]) through the same handlers
//! ([`handlers`]): ringbus through its `Dispatcher`, the direct loop and the peers through a
//! `Table` of the same shape (an `AHashMap` from key to boxed handlers), so that between
//! systems only the queue differs. Each system is a [`peer::Peer`] (in `peers/`), each
//! workload a file in `workloads/` generic over it, and [`registry`] lists both. Each runner
//! checks after every run, outside the timed region, that every event reached its handler
//! exactly once: a fast wrong number is worse than a slow right one.

pub mod baselines;
pub mod calibrate;
pub mod handlers;
pub mod payload;
pub mod peer;
pub mod peers;
pub mod registry;
pub mod runner;
pub mod workloads;

//! The bridge tests' event, a number on the projection "ev" (encoded by the JSON codec), and
//! a poll with a time bound. Included as `mod support { pub mod bridge_ev; }`.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ev {
    pub n: u64,
}

impl ringbus::Event for Ev {
    type Projection = &'static str;
    fn projection(&self) -> &'static str {
        "ev"
    }
}

/// Polls `done` until it holds (true) or `limit` passes (false).
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

//! The subscription tests' event: a routing key and an id, `Clone` (retries and dead letters
//! keep a copy), with the helpers both subscription test files use. Included as
//! `mod support { pub mod keyed; }`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ringbus::{BoxError, Context, Event, Metrics};

/// An event routed by `key`, named by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ev {
    pub key: u8,
    pub id: u64,
}

impl Event for Ev {
    type Projection = u8;
    fn projection(&self) -> u8 {
        self.key
    }
}

/// Event `id` for `key`.
pub fn ev(key: u8, id: u64) -> Ev {
    Ev { key, id }
}

/// Nothing pending, in flight or held for a retry, and every event accounted for.
pub fn quiet_balanced(m: Metrics) {
    assert_eq!((m.pending, m.in_flight, m.retrying), (0, 0, 0), "{m:?}");
    assert!(m.is_balanced(), "{m:?}");
}

/// A handler that fails its first `fails` calls (counted in `calls`), then succeeds.
pub fn flaky(
    fails: u32,
    calls: &Arc<AtomicU32>,
) -> impl Fn(&Context<'_, Ev>, &Ev) -> Result<(), BoxError> + Send + Sync + 'static {
    let calls = calls.clone();
    move |_, _| {
        if calls.fetch_add(1, Ordering::Relaxed) < fails {
            Err("not yet".into())
        } else {
            Ok(())
        }
    }
}

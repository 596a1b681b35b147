//! A dispatcher that logs what its handler saw, for the test files that check exactly which
//! events ran, under which sequence, in which order. Included as
//! `mod support { pub mod ev; pub mod seen; }`.

use std::sync::{Arc, Mutex};

use ringbus::Dispatcher;

use super::ev::Ev;

/// `(sequence, event)` in the order the handler saw them. A std mutex is fine under loom too:
/// its critical section has no loom operation in it, so loom never switches threads inside it.
pub type Seen = Arc<Mutex<Vec<(u64, Ev)>>>;

/// A dispatcher whose one handler (key 0) logs each event with its sequence into the
/// returned [`Seen`].
pub fn logging_dispatcher() -> (Dispatcher<Ev>, Seen) {
    let seen: Seen = Arc::default();
    let mut dispatcher = Dispatcher::<Ev>::new();
    let log = seen.clone();
    dispatcher.on(0, move |ctx, ev| {
        log.lock().unwrap().push((ctx.sequence(), *ev));
        Ok(())
    });
    (dispatcher, seen)
}

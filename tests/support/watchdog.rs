//! The watchdog every concurrent test runs under: a hang fails the test instead of stalling CI.
//! Included as `mod support { pub mod watchdog; }` by the test files that use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

/// Runs `run` on its own thread and waits at most `limit` for it. Past the limit it sets the
/// abort flag handed to `run` (so that a run which polls it can wind its threads down instead
/// of burning the CPU the other tests need) and panics with `name`; a panic inside `run` is
/// re-raised as is.
pub fn watchdog<R: Send + 'static>(
    name: &str,
    limit: Duration,
    run: impl FnOnce(Arc<AtomicBool>) -> R + Send + 'static,
) -> R {
    let abort = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let a = abort.clone();
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(run(a));
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(r) => {
            handle.join().unwrap();
            r
        }
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("{name}: finished without a result"),
        },
        Err(RecvTimeoutError::Timeout) => {
            abort.store(true, Ordering::SeqCst);
            panic!("{name}: watchdog fired, not finished after {limit:?} (hung or livelocked)");
        }
    }
}

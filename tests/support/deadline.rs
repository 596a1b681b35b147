//! The deadline every single-threaded test runs under: a hang fails the run instead of stalling
//! CI. Included as `mod support { pub mod deadline; }` by the test files that use it.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

/// A deadline for a test that runs on the test's own thread: if the guard is still alive after
/// `limit`, the whole test binary exits with a failure naming `name` (a hang fails, it does not
/// stall CI). Dropping the guard (at the end of the test, or while a panic unwinds) disarms it.
#[must_use = "the deadline is disarmed when the guard is dropped"]
pub fn deadline(name: &str, limit: Duration) -> Deadline {
    let (tx, rx) = mpsc::channel::<()>();
    let name = name.to_owned();
    thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("{name}: deadline of {limit:?} passed (hung or livelocked); failing the run");
            std::process::exit(101);
        }
    });
    Deadline(tx)
}

/// Disarms its [`deadline`] when dropped.
pub struct Deadline(#[allow(dead_code)] mpsc::Sender<()>);

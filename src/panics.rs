//! Containing panics from user code: handlers, `projection()`, hooks, an event's `Drop`, and
//! the `Drop` of a panic payload itself.
//!
//! Nothing a user's code does may unwind out of the store's own machinery (`publish`, `close`,
//! dropping the store, the timer thread): each panic is caught where it happens, counted and
//! reported. The one thing that cannot be reported is a panic payload whose own `Drop` panics
//! again: that second payload is leaked (a few bytes, once per such panic) rather than risk an
//! abort or an endless chain.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// A caught panic's payload.
pub(crate) type Payload = Box<dyn Any + Send>;

/// Runs `f`, catching a panic. The closure is asserted unwind-safe: callers only run user
/// code whose effects they account for themselves.
#[inline]
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Payload> {
    catch_unwind(AssertUnwindSafe(f))
}

/// Drops a caught panic's payload. If the payload's own `Drop` panics, that second payload is
/// leaked: dropping it could panic again.
#[cold]
pub(crate) fn dispose(payload: Payload) {
    if let Err(nested) = catch(move || drop(payload)) {
        std::mem::forget(nested);
    }
}

/// Drops `value`, returning the payload if its `Drop` panicked.
#[inline]
pub(crate) fn drop_caught<T>(value: T) -> Result<(), Payload> {
    if std::mem::needs_drop::<T>() {
        catch(move || drop(value))
    } else {
        Ok(())
    }
}

/// Drops `value`, containing (and disposing of) a panic in its `Drop`: for values whose
/// `Drop` panic is not counted anywhere (a hook, a handler's error, the route table).
#[inline]
pub(crate) fn drop_contained<T>(value: T) {
    if let Err(payload) = drop_caught(value) {
        dispose(payload);
    }
}

/// The payload's message, owned, with the payload disposed of.
#[cold]
pub(crate) fn into_message(payload: Payload) -> String {
    let message = panic_message(&*payload).to_owned();
    dispose(payload);
    message
}

/// The message of a panic payload, as `std` prints it.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "<non-string panic>"
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A panic payload whose `Drop` panics.
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("bomb went off");
        }
    }

    #[test]
    fn a_payload_whose_drop_panics_is_contained() {
        let payload = catch(|| std::panic::panic_any(Bomb)).unwrap_err();
        assert_eq!(panic_message(&*payload), "<non-string panic>");
        dispose(payload); // must not unwind
    }

    #[test]
    fn a_panicking_drop_hands_back_its_payload() {
        let err = drop_caught(Bomb).unwrap_err();
        assert_eq!(panic_message(&*err), "bomb went off");
        assert!(drop_caught(5u32).is_ok());
    }
}

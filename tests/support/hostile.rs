//! Hostile user code, for the tests that check the store contains it: [`Hostile`], an event
//! whose `projection()` or `Drop` panics on demand; [`Bomb`], a panic payload whose own `Drop`
//! panics; and [`quiet`], which keeps those planned panics out of the output. Included as
//! `mod support { pub mod ev; pub mod hostile; }` by the test files that use it.

use std::thread;

use ringbus::Event;

use super::ev::Ev;

/// An [`Ev`] that misbehaves on demand; routed by `ev.key`.
pub struct Hostile {
    pub ev: Ev,
    /// `projection()` panics ("projection exploded").
    pub bad_projection: bool,
    /// `Drop` panics ("drop exploded"), unless the thread is already panicking.
    pub bad_drop: bool,
}

impl Hostile {
    pub fn new(ev: Ev, bad_projection: bool, bad_drop: bool) -> Self {
        Self {
            ev,
            bad_projection,
            bad_drop,
        }
    }
}

impl Event for Hostile {
    type Projection = u8;
    fn projection(&self) -> u8 {
        if self.bad_projection {
            panic!("projection exploded");
        }
        self.ev.key
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if self.bad_drop && !thread::panicking() {
            panic!("drop exploded");
        }
    }
}

/// A panic payload whose own `Drop` panics ("the payload's drop exploded").
pub struct Bomb;
impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("the payload's drop exploded");
    }
}

/// Keeps the default panic hook from printing the planned panics: `panic!` with a literal
/// message containing "exploded" or "planned", and [`Bomb`] payloads. A formatted message (a
/// failed assertion, even one quoting a planned panic) is printed as usual. Installed once per
/// test binary, never restored (the tests run in parallel).
pub fn quiet() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let planned = match payload.downcast_ref::<&str>() {
                Some(text) => text.contains("exploded") || text.contains("planned"),
                None => payload.is::<Bomb>(),
            };
            if !planned {
                default(info);
            }
        }));
    });
}

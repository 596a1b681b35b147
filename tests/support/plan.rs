//! Hostile events by plan, for concurrent tests that count what the store made of them: each
//! [`Ev`] gets a fate from its producer and index, [`Census`] counts the misbehaviour planned
//! for (or seen among) a set of events, and [`Reported`] is an `on_error` hook that counts what
//! it is told, by kind. Included as `mod support { pub mod ev; pub mod hostile; pub mod plan; }`.

use std::ops::AddAssign;
use std::panic::panic_any;
use std::sync::{Arc, Mutex};

use ringbus::{BoxError, ErrorKind, ErrorReport};

use super::ev::Ev;
use super::hostile::{Bomb, Hostile};

/// What an event does, by `(producer + index) % 16`: 11 in 16 are fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Fine,
    /// Its `projection()` panics: no handler runs, the event fails.
    BadProjection,
    /// Its handler panics with a string.
    HandlerPanics,
    /// Its handler panics with a [`Bomb`].
    HandlerBombs,
    /// Its `Drop` panics.
    BadDrop,
    /// Its handler panics, then its `Drop` does.
    HandlerPanicsAndBadDrop,
}

fn fate(ev: &Ev) -> Fate {
    match (ev.producer + ev.index) % 16 {
        1 => Fate::BadProjection,
        4 => Fate::HandlerPanics,
        7 => Fate::HandlerBombs,
        10 => Fate::BadDrop,
        13 => Fate::HandlerPanicsAndBadDrop,
        _ => Fate::Fine,
    }
}

impl Hostile {
    /// `ev`, hostile as its fate says.
    pub fn planned(ev: Ev) -> Self {
        let f = fate(&ev);
        Self::new(
            ev,
            f == Fate::BadProjection,
            matches!(f, Fate::BadDrop | Fate::HandlerPanicsAndBadDrop),
        )
    }

    /// What a handler does with it: panics if its fate says so (after whatever the handler did
    /// before calling this).
    pub fn act(&self) {
        match fate(&self.ev) {
            Fate::HandlerPanics | Fate::HandlerPanicsAndBadDrop => {
                panic!("handler exploded (planned)")
            }
            Fate::HandlerBombs => panic_any(Bomb),
            _ => {}
        }
    }

    /// An event the store handed back (refused), made harmless to drop: the store never
    /// owned it, so its hostile `Drop` is not the store's to count.
    pub fn defuse(mut self) -> Ev {
        self.bad_drop = false;
        self.ev
    }
}

/// Misbehaviour by kind: planned for a set of events ([`Census::of`] summed), or reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub projection_panics: u64,
    /// Handler panics with a string payload.
    pub handler_panics: u64,
    /// Handler panics with a [`Bomb`] payload (reported as "<non-string panic>").
    pub bomb_panics: u64,
    pub drop_panics: u64,
}

impl Census {
    /// What `ev`'s fate plans.
    pub fn of(ev: &Ev) -> Self {
        let f = fate(ev);
        Self {
            projection_panics: u64::from(f == Fate::BadProjection),
            handler_panics: u64::from(matches!(
                f,
                Fate::HandlerPanics | Fate::HandlerPanicsAndBadDrop
            )),
            bomb_panics: u64::from(f == Fate::HandlerBombs),
            drop_panics: u64::from(matches!(f, Fate::BadDrop | Fate::HandlerPanicsAndBadDrop)),
        }
    }

    /// The panics in handlers, string or [`Bomb`].
    pub fn in_handlers(&self) -> u64 {
        self.handler_panics + self.bomb_panics
    }
}

impl AddAssign for Census {
    fn add_assign(&mut self, o: Self) {
        self.projection_panics += o.projection_panics;
        self.handler_panics += o.handler_panics;
        self.bomb_panics += o.bomb_panics;
        self.drop_panics += o.drop_panics;
    }
}

/// What an `on_error` hook was told, by kind; anything not planned goes to `unexpected`.
#[derive(Debug, Default)]
pub struct Reported {
    census: Mutex<Census>,
    unexpected: Mutex<Vec<String>>,
}

impl Reported {
    /// A hook for [`Builder::on_error`](ringbus::Builder::on_error) that counts into `self`.
    pub fn hook(
        self: &Arc<Self>,
    ) -> impl Fn(&ErrorReport<'_, u8, BoxError>) + Send + Sync + 'static {
        let me = self.clone();
        move |report| {
            let mut c = me.census.lock().unwrap();
            match (&report.kind, report.projection) {
                (ErrorKind::Panic("projection exploded"), None) => c.projection_panics += 1,
                (ErrorKind::Panic("handler exploded (planned)"), Some(_)) => c.handler_panics += 1,
                (ErrorKind::Panic("<non-string panic>"), Some(_)) => c.bomb_panics += 1,
                (ErrorKind::DropPanic("drop exploded"), None) => c.drop_panics += 1,
                (other, projection) => {
                    let mut unexpected = me.unexpected.lock().unwrap();
                    if unexpected.len() < 8 {
                        unexpected.push(format!("{other:?} for {projection:?}"));
                    }
                }
            }
        }
    }

    pub fn census(&self) -> Census {
        *self.census.lock().unwrap()
    }

    /// Reports of anything not planned (handler errors, discarded events, other messages): the
    /// first 8.
    pub fn unexpected(&self) -> Vec<String> {
        self.unexpected.lock().unwrap().clone()
    }
}

/// Events and what their plans hold, counted from several threads (a handler's runs, its
/// accepted follow-ups).
#[derive(Debug, Default)]
pub struct Tally(Mutex<(u64, Census)>);

impl Tally {
    pub fn record(&self, ev: &Ev) {
        let mut t = self.0.lock().unwrap();
        t.0 += 1;
        t.1 += Census::of(ev);
    }

    /// (events, what their plans hold)
    pub fn get(&self) -> (u64, Census) {
        *self.0.lock().unwrap()
    }
}

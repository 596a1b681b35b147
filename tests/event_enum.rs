//! `event_enum!` in a user crate that forbids what a careless expansion would trip: unreachable
//! patterns (a one-variant enum's `_` arm) and undocumented public items. A second reader found
//! the macro's own `#[allow(unreachable_patterns)]` made every use fail to compile under
//! `#![forbid(unreachable_patterns)]`. Compiling this file is most of the test.
#![forbid(unreachable_patterns)]
#![deny(missing_docs)]

use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy, Variant};

/// The only payload of a one-variant enum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick(pub u64);

/// A payload that borrows nothing but is generic.
#[derive(Debug, Clone, PartialEq)]
pub struct Named<T>(pub T);

ringbus::event_enum! {
    /// An enum of one variant.
    #[derive(Debug, Clone, Copy)]
    pub enum Clock / ClockKind {
        /// A tick.
        Ticked(Tick),
    }
}

ringbus::event_enum! {
    /// An enum of several, with a generic payload type and a foreign one.
    #[derive(Debug, Clone)]
    pub enum Mixed / MixedKind {
        /// A named number.
        Number(Named<u32>),
        /// Some text.
        Text(String),
    }
}

#[test]
fn one_and_many_variants_route_and_extract_their_payloads() {
    assert_eq!(Clock::from(Tick(3)).projection(), ClockKind::Ticked);
    assert_eq!(
        <Tick as Variant<Clock>>::payload(&Tick(4).into()),
        Some(&Tick(4))
    );
    let text = Mixed::from(String::from("hi"));
    assert_eq!(text.projection(), MixedKind::Text);
    assert_eq!(<Named<u32> as Variant<Mixed>>::payload(&text), None);
    assert_eq!(
        <String as Variant<Mixed>>::payload(&text).map(String::as_str),
        Some("hi")
    );

    let mut dispatcher = Dispatcher::<Mixed>::new();
    dispatcher.on_variant(|_, n: &Named<u32>| {
        assert_eq!(n.0, 7);
        Ok(())
    });
    let store = EventStore::new(dispatcher, 4, OverrunPolicy::ReturnError).unwrap();
    store.enqueue(Named(7).into()).unwrap();
    store.enqueue(text).unwrap();
    let report = store.publish();
    assert_eq!((report.processed, report.unrouted), (1, 1));
}

//! The settled-events seam: a layer told, by sequence, of each event of the producer lane
//! that settled as handled, so that it can acknowledge the event where it came from (the
//! bridge's receiver, which enqueues what arrives from a broker through that lane). The core
//! never names the layer.
//!
//! Handled means nothing is left to do for the event: every handler succeeded (processed),
//! a subscription gave up on it into its dead letters (dead-lettered), no handler runs for
//! its projection (unrouted), or the store filter turned it away (filtered). An event that
//! failed, was dropped, or is still held for a retry is not told: its source keeps it and
//! delivers it again. An event held for a retry is not told when its hold ends either (the
//! hold does not keep its sequence): its source delivers it again after its own timeout.

use std::sync::Arc;

use super::EventStore;
use crate::event::Event;

/// What a layer is told: the sequence (with the lane's tag) of a settled event.
pub(crate) type Settled = Arc<dyn Fn(u64) + Send + Sync>;

impl<E: Event, Err> EventStore<E, Err> {
    /// Registers the layer told of settled producer-lane events, once: false if one was
    /// registered before (and `settled` is not).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // the bridge's receiver is its one user
    pub(crate) fn on_producer_lane_settled(&self, settled: Settled) -> bool {
        self.shared.settled.set(settled).is_ok()
    }
}

impl<E: Event, Err> EventStore<E, Err> {
    /// Tells the registered layer that the event `sequence` settled as handled. Out of line:
    /// the run loop calls it only for producer-lane events of a store with a layer.
    #[cold]
    #[inline(never)]
    pub(super) fn tell_settled(&self, sequence: u64) {
        if let Some(settled) = self.shared.settled.get() {
            settled(sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::{Dispatcher, Event, EventStore, PRODUCER_LANE};

    #[derive(Clone)]
    struct Ev(&'static str);

    impl Event for Ev {
        type Projection = &'static str;
        fn projection(&self) -> &'static str {
            self.0
        }
    }

    #[test]
    fn producer_lane_events_are_told_once_handled_and_failures_are_not() {
        let mut dispatcher = Dispatcher::<Ev>::new();
        dispatcher.on("ok", |_, _| Ok(()));
        dispatcher.on("fails", |_, _| Err("no".into()));
        let (store, mut producer) = EventStore::builder(dispatcher)
            .capacity(16)
            .filter(|e: &Ev| e.0 != "filtered")
            .build_with_producer()
            .unwrap();
        let told = Arc::new(Mutex::new(Vec::new()));
        let sink = told.clone();
        assert!(store.on_producer_lane_settled(Arc::new(move |s| sink.lock().unwrap().push(s))));
        assert!(!store.on_producer_lane_settled(Arc::new(|_| {})), "once");
        let mut sequences = Vec::new();
        for kind in ["ok", "fails", "unrouted", "filtered"] {
            sequences.push(producer.enqueue(Ev(kind)).unwrap().sequence);
        }
        store.enqueue(Ev("ok")).unwrap(); // the shared lane: never told
        store.publish();
        assert!(sequences.iter().all(|s| s & PRODUCER_LANE != 0));
        let (ok, unrouted, filtered) = (sequences[0], sequences[2], sequences[3]);
        assert_eq!(*told.lock().unwrap(), [ok, unrouted, filtered]);
    }

    /// A subscription's dead letters settle the event, unless another handler's failure stands.
    #[test]
    fn a_dead_lettered_event_is_told_only_when_no_other_failure_stands() {
        let mut dispatcher = Dispatcher::<Ev>::new();
        dispatcher.on("both", |_, _| Err("a plain handler fails".into()));
        let (store, mut producer) = EventStore::builder(dispatcher)
            .capacity(16)
            .build_with_producer()
            .unwrap();
        store
            .enable_dead_letters(8, crate::DeadLetterOverrun::DropNewest, None)
            .unwrap();
        let mut subscriptions = Vec::new();
        for kind in ["poison", "both"] {
            let subscription = store
                .subscribe(kind)
                .dead_letters()
                .handle(|_, _| Err("poison".into()))
                .unwrap();
            subscriptions.push(subscription);
        }
        let told = Arc::new(Mutex::new(Vec::new()));
        let sink = told.clone();
        store.on_producer_lane_settled(Arc::new(move |s| sink.lock().unwrap().push(s)));
        let poison = producer.enqueue(Ev("poison")).unwrap().sequence;
        producer.enqueue(Ev("both")).unwrap();
        store.publish();
        // The store counts both as dead-lettered; only the first is handled.
        assert_eq!(store.metrics().dead_lettered, 2);
        assert_eq!(*told.lock().unwrap(), [poison]);
    }
}

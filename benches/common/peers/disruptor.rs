//! The `disruptor` crate as a [`Peer`], consumed through an `EventPoller`.

use std::sync::Arc;

use crossbeam_utils::Backoff;
use disruptor::{
    BusySpin, EventPoller, MultiProducerBarrier, Polling, Producer as _, SingleConsumerBarrier,
    SingleProducer, SingleProducerBarrier,
};

use crate::common::handlers::{Sink, Table, Work, dispatch, table};
use crate::common::payload::{Ev, event};
use crate::common::peer::{CAPACITY, Consumer, Peer, Producer, idle};

/// A single producer and a poller with the consumer's handlers, on one thread.
pub struct DisruptorPeer {
    /// Boxed, as it has been measured all along: it is large, and the box is one pointer hop
    /// on the producer's side of every cell.
    producer: Box<SingleProducer<Ev, SingleConsumerBarrier>>,
    rx: Rx<SingleProducerBarrier>,
}

impl Peer for DisruptorPeer {
    const NAME: &'static str = "disruptor";

    fn new(work: Work, sink: &Arc<Sink>) -> Self {
        let builder = disruptor::build_single_producer(CAPACITY, Ev::default, BusySpin);
        let (poller, builder) = builder.new_event_poller();
        Self {
            producer: Box::new(builder.build()),
            rx: Rx::new(poller, work, sink),
        }
    }

    /// One `batch_publish` claims the whole tick and writes the slots in place, then one
    /// `poll`.
    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        self.producer.batch_publish(n as usize, |slots| {
            for (slot, i) in slots.zip(first..) {
                *slot = event(i);
            }
        });
        self.rx.poll();
    }

    /// The disruptor has no drop-oldest: when full, the producer (which here also owns the
    /// poller) releases the oldest slot and publishes again.
    #[inline(always)]
    fn push_drop_oldest(&mut self, ev: Ev) {
        if self.producer.try_publish(|slot| *slot = ev).is_err() {
            // Dropping the guard releases the oldest slot without reading it.
            drop(self.rx.poller.take(1));
            self.producer
                .try_publish(|slot| *slot = ev)
                .expect("room after releasing one slot");
        }
    }

    /// `build_multi_producer`; a producer retries `try_publish` with the shared backoff.
    fn mp(sink: &Arc<Sink>) -> (impl Producer + Clone, impl Consumer) {
        let builder = disruptor::build_multi_producer(CAPACITY, Ev::default, BusySpin);
        let (poller, builder) = builder.new_event_poller();
        (Tx(builder.build()), Rx::new(poller, Work::Tiny, sink))
    }

    /// `build_single_producer`; the producer's `publish` busy-spins while full.
    fn latency(sink: &Arc<Sink>) -> (impl Producer, impl Consumer) {
        let builder = disruptor::build_single_producer(CAPACITY, Ev::default, BusySpin);
        let (poller, builder) = builder.new_event_poller();
        (Tx(builder.build()), Rx::new(poller, Work::Latency, sink))
    }
}

/// A producer of either kind.
#[derive(Clone)]
struct Tx<P>(P);

impl<P: disruptor::Producer<Ev> + Send> Producer for Tx<P> {
    /// `try_publish` and the same backoff as the ArrayQueue producers: `publish` would
    /// busy-spin with no yield when full, and with three threads on two cores that measures
    /// the scheduler.
    #[inline(always)]
    fn put_waiting(&mut self, ev: Ev, backoff: &Backoff) {
        while self.0.try_publish(|slot| *slot = ev).is_err() {
            idle(backoff);
        }
        backoff.reset();
    }

    #[inline(always)]
    fn put_spinning(&mut self, ev: Ev) {
        self.0.publish(|slot| *slot = ev);
    }
}

/// The poller and its handlers.
struct Rx<B> {
    poller: EventPoller<Ev, B>,
    table: Table,
}

impl<B> Rx<B> {
    fn new(poller: EventPoller<Ev, B>, work: Work, sink: &Arc<Sink>) -> Self {
        Self {
            poller,
            table: table(work, sink),
        }
    }
}

/// `Consumer` for the poller of each producer kind (the crate does not export the bound a
/// generic impl would need).
macro_rules! consumer {
    ($($barrier:ty),*) => {$(
        impl Consumer for Rx<$barrier> {
            #[inline(always)]
            fn poll(&mut self) -> u64 {
                match self.poller.poll() {
                    Ok(mut events) => {
                        let mut n = 0;
                        for ev in &mut events {
                            dispatch(&self.table, ev);
                            n += 1;
                        }
                        n
                    }
                    Err(Polling::NoEvents) => 0,
                    // Only once every event is taken, and no run polls after its last.
                    Err(Polling::Shutdown) => unreachable!("the producers are gone before the end"),
                }
            }
        }
    )*};
}

consumer!(SingleProducerBarrier, MultiProducerBarrier);

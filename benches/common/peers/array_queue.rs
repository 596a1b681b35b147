//! `crossbeam_queue::ArrayQueue` as a [`Peer`].

use std::hint::black_box;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::Backoff;

use crate::common::handlers::{Sink, Table, Work, dispatch, table};
use crate::common::payload::{Ev, event};
use crate::common::peer::{CAPACITY, Consumer, Peer, Producer, idle};

/// The queue and the consumer's handlers, both on one thread.
pub struct ArrayQueuePeer {
    queue: ArrayQueue<Ev>,
    table: Table,
}

impl ArrayQueuePeer {
    fn ends(work: Work, sink: &Arc<Sink>) -> (Tx, Rx) {
        let queue = Arc::new(ArrayQueue::new(CAPACITY));
        let rx = Rx {
            queue: Arc::clone(&queue),
            table: table(work, sink),
        };
        (Tx(queue), rx)
    }
}

impl Peer for ArrayQueuePeer {
    const NAME: &'static str = "arrayqueue";

    fn new(work: Work, sink: &Arc<Sink>) -> Self {
        Self {
            queue: ArrayQueue::new(CAPACITY),
            table: table(work, sink),
        }
    }

    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        for i in first..first + n {
            self.queue.push(event(i)).expect("room for a tick");
        }
        while let Some(ev) = self.queue.pop() {
            dispatch(&self.table, &ev);
        }
    }

    /// `force_push`: the only peer with a native drop-oldest.
    #[inline(always)]
    fn push_drop_oldest(&mut self, ev: Ev) {
        black_box(self.queue.force_push(ev));
    }

    fn mp(sink: &Arc<Sink>) -> (impl Producer + Clone, impl Consumer) {
        Self::ends(Work::Tiny, sink)
    }

    fn latency(sink: &Arc<Sink>) -> (impl Producer, impl Consumer) {
        Self::ends(Work::Latency, sink)
    }
}

/// A producer: `push`, retried while full.
#[derive(Clone)]
struct Tx(Arc<ArrayQueue<Ev>>);

impl Producer for Tx {
    #[inline(always)]
    fn put_waiting(&mut self, mut ev: Ev, backoff: &Backoff) {
        while let Err(back) = self.0.push(ev) {
            ev = back;
            idle(backoff);
        }
        backoff.reset();
    }

    #[inline(always)]
    fn put_spinning(&mut self, mut ev: Ev) {
        while let Err(back) = self.0.push(ev) {
            ev = back;
        }
    }
}

/// The consumer: `pop`, then the handlers.
struct Rx {
    queue: Arc<ArrayQueue<Ev>>,
    table: Table,
}

impl Consumer for Rx {
    #[inline(always)]
    fn poll(&mut self) -> u64 {
        match self.queue.pop() {
            Some(ev) => {
                dispatch(&self.table, &ev);
                1
            }
            None => 0,
        }
    }
}

//! [`BufferPool`]: emptied event buffers kept for reuse, so that publishing (and a transaction
//! per tick) allocates nothing in steady state.

use crossbeam_queue::ArrayQueue;

use super::EventStore;
use crate::event::Event;

/// Spare buffers kept.
const SPARE_BUFFERS: usize = 8;

/// Emptied `Vec<E>`s for publishers and transactions to reuse.
#[derive(Debug)]
pub(crate) struct BufferPool<E> {
    spare: ArrayQueue<Vec<E>>,
    /// The ring's capacity: a transaction's buffer that grew larger (a refused oversized
    /// transaction) is freed rather than kept.
    ring_capacity: u64,
}

impl<E> BufferPool<E> {
    /// An empty pool for a ring of `ring_capacity` slots.
    pub(crate) fn new(ring_capacity: u64) -> Self {
        Self {
            spare: ArrayQueue::new(SPARE_BUFFERS),
            ring_capacity,
        }
    }

    /// A spare buffer, or a new (unallocated) one.
    #[inline]
    pub(crate) fn get(&self) -> Vec<E> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps a publisher's emptied buffer for reuse, unless the pool is full. A publisher
    /// never takes more than the ring holds, but `Vec`'s growth may round a buffer past the
    /// ring's capacity (doubling, a minimum of 4 or 8): it is kept all the same, or every
    /// publish of an uneven burst would allocate anew.
    #[inline]
    pub(crate) fn put(&self, buf: Vec<E>) {
        debug_assert!(buf.is_empty());
        let _ = self.spare.push(buf);
    }

    /// Keeps a transaction's emptied buffer for reuse, unless the pool is full or the buffer
    /// grew larger than the ring (a refused oversized transaction: its memory is freed).
    pub(crate) fn put_unless_oversized(&self, buf: Vec<E>) {
        if buf.capacity() as u64 <= self.ring_capacity {
            self.put(buf);
        }
    }
}

impl<E: Event, Err> EventStore<E, Err> {
    /// The store's spare buffers, for a transaction to take its buffer from and give it back.
    pub(crate) fn buffers(&self) -> &BufferPool<E> {
        &self.shared.buffers
    }
}

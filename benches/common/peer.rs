//! The [`Peer`] trait every compared system implements (ringbus and the queues it is measured
//! against), and the [`Producer`] / [`Consumer`] ends it hands to threads.
//!
//! Each method is one of the system's own idioms (a burst, a drop-oldest push, a poll ...);
//! the workloads around them are written once, generic over `P: Peer`, so the trait costs no
//! dynamic call in a timed loop.

use std::sync::Arc;

use crossbeam_utils::Backoff;
use ringbus::Metrics;

use super::handlers::{Sink, Work};
use super::payload::Ev;

/// Ring / channel capacity of every system in every workload.
pub const CAPACITY: usize = 1 << 16;

/// A queue compared in the benchmarks, with its consumer's handlers (ringbus: its
/// `Dispatcher`; the others: a `Table` of the same handlers).
///
/// A value of the type owns both ends on one thread (W-tick, W-tx, W-enqueue); [`Peer::mp`] and
/// [`Peer::latency`] build fresh ends for the two-thread workloads.
pub trait Peer: Sized + 'static {
    /// The system's name in criterion, the table and the JSON.
    const NAME: &'static str;

    /// Both ends on one thread, of [`CAPACITY`], calling `work` handlers that count into `sink`.
    fn new(work: Work, sink: &Arc<Sink>) -> Self;

    /// Puts events `first..first + n` in, in the system's idiom for a burst, then takes
    /// everything pending out through the handlers.
    fn tick(&mut self, first: u64, n: u64);

    /// W-tx: events `first..first + n` in as one unit, then out through the handlers. Only
    /// ringbus has a unit (a `Transaction`); the others do a [`Peer::tick`].
    #[inline(always)]
    fn commit(&mut self, first: u64, n: u64) {
        self.tick(first, n);
    }

    /// Puts `ev` in, discarding the oldest event if full.
    fn push_drop_oldest(&mut self, ev: Ev);

    /// The system's own counters, where it keeps any (ringbus), for the checks after a run.
    fn metrics(&self) -> Option<Metrics> {
        None
    }

    /// W-mp's ends: producers that wait when full (cloned, one per thread) and a consumer,
    /// with [`Work::Tiny`] handlers counting into `sink`.
    fn mp(sink: &Arc<Sink>) -> (impl Producer + Clone, impl Consumer);

    /// W-latency's ends: one producer that spins when full, and a consumer, with
    /// [`Work::Latency`] handlers recording into `sink`.
    fn latency(sink: &Arc<Sink>) -> (impl Producer, impl Consumer);
}

/// A producer end, moved to its own thread.
pub trait Producer: Send {
    /// W-mp: puts `ev` in, waiting while full: with `backoff` ([`idle`]) where the system has
    /// no waiting of its own.
    fn put_waiting(&mut self, ev: Ev, backoff: &Backoff);

    /// W-latency: puts `ev` in, spinning without yielding while full.
    fn put_spinning(&mut self, ev: Ev);
}

/// A consumer end, lent to its own thread (or, for a system that runs its own consumer
/// thread, the harness's handle on it: it waits while that thread works).
pub trait Consumer: Send {
    /// Takes whatever is there out through the handlers without waiting; returns how many.
    fn poll(&mut self) -> u64;

    /// W-mp: handles `total` events, waiting the system's way when there are none; returns how
    /// many it handled. By default [`Consumer::poll`] in a loop, with [`idle`] when empty.
    fn take_all(&mut self, total: u64) -> u64 {
        let backoff = Backoff::new();
        let mut done = 0;
        while done < total {
            let n = self.poll();
            if n == 0 {
                idle(&backoff);
            } else {
                done += n;
                backoff.reset();
            }
        }
        done
    }

    /// W-latency: handles `total` events, busy-polling without yielding; returns how many.
    /// By default [`Consumer::poll`] in a tight loop.
    fn spin_all(&mut self, total: u64) -> u64 {
        let mut done = 0;
        while done < total {
            done += self.poll();
        }
        done
    }

    /// The system's own counters, where it keeps any (ringbus), for the checks after a run.
    fn metrics(&self) -> Option<Metrics> {
        None
    }
}

/// How a W-mp thread that found nothing (or no room) waits: spin briefly, then yield. Three
/// busy threads on a 2-core machine must let each other run; every system's spinning side uses
/// this same backoff (channels block in their own way), so the queues are compared, not wait
/// loops.
pub fn idle(backoff: &Backoff) {
    backoff.snooze();
}

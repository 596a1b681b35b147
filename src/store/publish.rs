//! Taking events out of the ring and handing them to the handlers: `publish` in its three
//! modes, and a commit's in-caller dispatch up to its last event.
//!
//! Every path counts the events it takes in flight *before* it claims them (see
//! [`InFlight`](crate::metrics::InFlight)), runs them (`run.rs`), records the outcome, then
//! releases the count.

use std::ops::Range;
use std::time::{Duration, Instant};

use super::lanes::Source;
use super::local::{LocalHandlers, NoLocal};
use super::run::{Discard, Outcomes, PROBE_EVENTS};
use super::{DispatchMode, EventStore, OverrunPolicy, PublishReport};
use crate::event::Event;
use crate::metrics::Tally;
use crate::sync::{Backoff, Ordering, fence};
use crate::trace;
use crate::wait::expired;

/// Events a sync publisher takes out of the ring per claim: a few KiB, so the chunk stays in
/// L1 between the copy-out and the handlers, and producers get the slots back early.
pub(crate) const SYNC_CHUNK: u64 = 256;

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Dispatches the events enqueued before the call (GoEventBus's `Publish`), according to
    /// the store's [`DispatchMode`]. Events enqueued while it runs, by handlers or other
    /// threads, wait for the next call; so does an event another thread is still in the middle
    /// of enqueueing, with those behind it (see the crate docs on ordering): `publish` never
    /// waits for a producer.
    ///
    /// Safe to call from several threads at once: each event is dispatched by exactly one of
    /// them.
    pub fn publish(&self) -> PublishReport {
        let span = trace::publish();
        // Retries that are due run first (a load and a branch when none waits).
        self.run_deferred(false);
        let report = self.publish_by_mode(None);
        span.finish(&report);
        report
    }

    /// A commit's dispatch: runs, in the caller and in sequence order, every event still
    /// pending below `range.end` (a sync publish that stops there, whatever the store's
    /// mode), after the producer lane's events pending when it starts, and tells `outcomes` of
    /// each handler failure. Returns what it did and how many of the events in `range` (the
    /// shared ring's) it ran itself: the others were taken out of the ring by another thread
    /// first.
    pub(crate) fn publish_until(
        &self,
        range: Range<u64>,
        outcomes: &mut impl Outcomes<Err>,
    ) -> (PublishReport, u64) {
        let mut buf = self.shared.buffers.get();
        let (mut dispatched, mut mine) = (0, 0);
        let mut tally = Tally::default();
        // The producer lane's events accepted before the commit run first, as everything
        // pending before a transaction does (the lane has no order against the shared ring,
        // but "before the commit" is an order in time). Its tail is read after the commit's
        // claim.
        let lanes = [
            self.shared
                .producer_lane
                .as_ref()
                .map(|lane| (Source::producer(lane), lane.ring().tail())),
            Some((Source::shared(&self.shared.ring), range.end)),
        ];
        for (lane, limit) in lanes.into_iter().flatten() {
            let backoff = Backoff::new();
            // Until another thread's in-progress enqueue ahead of the limit is written and
            // taken, the take stops short of it: wait for it, as `close` does.
            while lane.ring.head() < limit {
                let Some((first, n)) = self.take_in_flight(lane, limit, SYNC_CHUNK, &mut buf)
                else {
                    backoff.snooze();
                    continue;
                };
                tally += self.run_taken(first, n, &mut buf, None, outcomes, &mut NoLocal);
                dispatched += n;
                if lane.tag == 0 {
                    mine += (first + n)
                        .min(range.end)
                        .saturating_sub(first.max(range.start));
                }
            }
        }
        self.shared.buffers.put(buf);
        (PublishReport::from_tally(dispatched, tally), mine)
    }

    /// A sync publish in the caller, whatever the store's mode, of the events of `lane` below
    /// `limit`, in chunks of [`SYNC_CHUNK`], each copied out then run in order, with `locals`
    /// run after the store's handlers (`publish_with`; [`NoLocal`] for a plain sync publish).
    pub(super) fn publish_in_caller(
        &self,
        lane: Source<'_, E>,
        limit: u64,
        deadline: Option<Instant>,
        locals: &mut impl LocalHandlers<E, Err>,
    ) -> PublishReport {
        let mut buf = self.shared.buffers.get();
        let (mut dispatched, mut tally) = (0, Tally::default());
        while !expired(deadline) {
            // Sized to what is pending, so that the in-flight count is usually exact.
            let max = limit.saturating_sub(lane.ring.head()).min(SYNC_CHUNK);
            if max == 0 {
                break;
            }
            let Some((first, n)) = self.take_in_flight(lane, limit, max, &mut buf) else {
                break;
            };
            tally += self.run_taken(first, n, &mut buf, deadline, &mut Discard, locals);
            dispatched += n;
        }
        self.shared.buffers.put(buf);
        PublishReport::from_tally(dispatched, tally)
    }

    /// Runs the `n` events of `buf` (sequences from `first`) in the caller, empties `buf`,
    /// and records their outcome.
    fn run_taken(
        &self,
        first: u64,
        n: u64,
        buf: &mut Vec<E>,
        deadline: Option<Instant>,
        outcomes: &mut impl Outcomes<Err>,
        locals: &mut impl LocalHandlers<E, Err>,
    ) -> Tally {
        let mut tally = Tally::default();
        self.run_events(first, buf, deadline, &mut tally, outcomes, locals);
        self.shared.drop_events(first, buf);
        self.finished(n, tally);
        tally
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    #[inline]
    pub(super) fn publish_by_mode(&self, deadline: Option<Instant>) -> PublishReport {
        // Nothing pending: return before touching the buffer pool, so that a thread spinning
        // on `publish` (the lowest-latency way to run a bus) costs two loads per spin.
        if !self.shared.has_pending() {
            return PublishReport::default();
        }
        match self.shared.mode {
            DispatchMode::Sync => self.publish_sync(deadline),
            DispatchMode::Parallel => self.publish_parallel(deadline),
            DispatchMode::Async => self.publish_async(deadline),
        }
    }

    /// Sync publish: each lane's events below its tail at the call, in chunks of
    /// [`SYNC_CHUNK`] events, copied out, then run in order.
    fn publish_sync(&self, deadline: Option<Instant>) -> PublishReport {
        let mut report = PublishReport::default();
        for (lane, limit) in self.shared.tails() {
            let depth = limit.saturating_sub(lane.ring.head());
            self.shared.counters.note_depth(depth);
            report += match depth {
                0 => continue,
                1 => self.publish_one(lane, limit, deadline),
                _ => self.publish_in_caller(lane, limit, deadline, &mut NoLocal),
            };
        }
        report
    }

    /// Sync publish of the one pending event of `lane`: straight from the ring to the stack,
    /// without a pooled buffer. The common case for a thread spinning on `publish`.
    fn publish_one(
        &self,
        lane: Source<'_, E>,
        limit: u64,
        deadline: Option<Instant>,
    ) -> PublishReport {
        if expired(deadline) {
            return PublishReport::default();
        }
        self.shared.counters.in_flight.count(1);
        let Some((sequence, event)) = lane.ring.take_one(limit) else {
            self.shared.counters.in_flight.release(1);
            return PublishReport::default();
        };
        let sequence = sequence | lane.tag;
        self.made_room();
        let mut tally = Tally::default();
        let events = std::slice::from_ref(&event);
        self.run_events(
            sequence,
            events,
            deadline,
            &mut tally,
            &mut Discard,
            &mut NoLocal,
        );
        self.shared.drop_event(Some(sequence), event);
        self.finished(1, tally);
        PublishReport::from_tally(1, tally)
    }

    /// Parallel publish: each lane's events below its tail at the call (see
    /// [`publish_lane_parallel`](Self::publish_lane_parallel)).
    fn publish_parallel(&self, deadline: Option<Instant>) -> PublishReport {
        let mut report = PublishReport::default();
        for (lane, limit) in self.shared.tails() {
            report += self.publish_lane_parallel(lane, limit, deadline);
        }
        report
    }

    /// Parallel publish of `lane`'s events below `limit`: takes the probe's events, times them
    /// (see [`probe`](Self::probe)), then either forks the rest, taken in one claim (see
    /// [`run_rest`](Self::run_rest)), or runs it as a sync publish does, in [`SYNC_CHUNK`]s: a
    /// batch too cheap to fork costs the probe's timing and one more claim, and then what a
    /// sync publish costs (the chunks stay in L1 between copy-out and handlers, where one claim
    /// of the whole batch would not).
    fn publish_lane_parallel(
        &self,
        lane: Source<'_, E>,
        limit: u64,
        deadline: Option<Instant>,
    ) -> PublishReport {
        let pending = limit.saturating_sub(lane.ring.head());
        self.shared.counters.note_depth(pending);
        let threads = self.pool_threads();
        let probe = 2 * PROBE_EVENTS as u64;
        if pending == 0 {
            return PublishReport::default();
        }
        if threads < 2 || pending <= probe || expired(deadline) {
            return self.publish_in_caller(lane, limit, deadline, &mut NoLocal);
        }
        let mut buf = self.shared.buffers.get();
        let Some((first, n)) = self.take_in_flight(lane, limit, probe, &mut buf) else {
            self.shared.buffers.put(buf);
            return PublishReport::default();
        };
        let mut tally = Tally::default();
        // A short take (a producer still writing the next event) is not probed: the publish
        // stops at that event anyway, as a sync one would.
        let (per_event, probed) = if n == probe {
            self.probe(first, &buf, pending as usize, deadline, &mut tally)
        } else {
            (Duration::ZERO, 0)
        };
        // The rest of the probe's take, when one probe said the batch is too cheap to fork.
        self.run_events(
            first + probed as u64,
            &buf[probed..],
            deadline,
            &mut tally,
            &mut Discard,
            &mut NoLocal,
        );
        self.shared.drop_events(first, &mut buf);
        self.finished(n, tally);
        let mut report = PublishReport::from_tally(n, tally);
        let left = limit.saturating_sub(lane.ring.head()) as usize;
        if !self.worth_forking(per_event, left) {
            self.shared.buffers.put(buf);
            report += self.publish_in_caller(lane, limit, deadline, &mut NoLocal);
            return report;
        }
        while !expired(deadline) {
            let want = limit.saturating_sub(lane.ring.head());
            if want == 0 {
                break;
            }
            let Some((first, n)) = self.take_in_flight(lane, limit, want, &mut buf) else {
                break;
            };
            let t = self.run_rest(first, &mut buf, deadline, per_event, threads);
            self.shared.drop_events(first, &mut buf);
            self.finished(n, t);
            report += PublishReport::from_tally(n, t);
        }
        self.shared.buffers.put(buf);
        report
    }

    /// Async publish: asks for every event pending now to be handed to the pool, and hands
    /// out as many as [`Builder::max_in_flight`](super::Builder::max_in_flight) allows; the
    /// pool's jobs hand out the rest as they finish (see [`Self::hand_out`]).
    fn publish_async(&self, deadline: Option<Instant>) -> PublishReport {
        for (lane, limit) in self.shared.tails() {
            // SeqCst, with a fence: either this publish's `reserve` below sees the room a
            // finishing job released, or that job, reading the limit after its release, sees
            // this one (a Dekker pair; the fence keeps it so under loom too).
            self.shared.async_limits[lane.index].fetch_max(limit, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        PublishReport {
            dispatched: self.hand_out(deadline),
            ..PublishReport::default()
        }
    }

    /// Hands the events below the highest limit an async `publish` asked for to the pool, in
    /// batches, as long as the in-flight bound has room; returns how many it handed out. Each
    /// job, once its handlers have run and its count is released, calls this again: so an
    /// async `publish` dispatches every event enqueued before it, paced by the bound (a
    /// publish that found the bound full leaves its events to the jobs running), and a
    /// producer waiting for room under `Block` gets it without another `publish` (a single
    /// thread that both enqueues and publishes would otherwise wait forever).
    fn hand_out(&self, deadline: Option<Instant>) -> u64 {
        self.shared
            .sources()
            .map(|lane| self.hand_out_lane(lane, deadline))
            .sum()
    }

    /// [`hand_out`](Self::hand_out) for one lane.
    fn hand_out_lane(&self, lane: Source<'_, E>, deadline: Option<Instant>) -> u64 {
        let mut dispatched = 0;
        while !expired(deadline) {
            let limit = self.shared.async_limits[lane.index].load(Ordering::SeqCst);
            let want = limit.saturating_sub(lane.ring.head());
            if want == 0 {
                break;
            }
            self.shared.counters.note_depth(want);
            // Reserved under the bound before the claim, so that concurrent publishers cannot
            // overshoot the bound together.
            let Some(room) = self
                .shared
                .counters
                .in_flight
                .reserve(want, self.shared.max_in_flight)
            else {
                break;
            };
            let mut buf = self.shared.buffers.get();
            let Some((first, n)) = self.take_reserved(lane, limit, room, &mut buf) else {
                self.shared.buffers.put(buf);
                break;
            };
            dispatched += n;
            let store = self.clone();
            let job = move || {
                let t = store.run_parallel(first, &mut buf, deadline);
                store.finished(n, t);
                store.shared.buffers.put(buf);
                // Pairs with the fence in `publish_async`.
                fence(Ordering::SeqCst);
                store.hand_out(deadline);
            };
            match &self.shared.pool {
                Some(pool) => pool.spawn(job),
                None => rayon::spawn(job),
            }
        }
        dispatched
    }

    /// Counts up to `max` events in flight, then takes them (those of `lane` below `limit`,
    /// written) out of its ring into `buf`: see [`take_reserved`](Self::take_reserved).
    #[inline]
    fn take_in_flight(
        &self,
        lane: Source<'_, E>,
        limit: u64,
        max: u64,
        buf: &mut Vec<E>,
    ) -> Option<(u64, u64)> {
        self.shared.counters.in_flight.count(max);
        self.take_reserved(lane, limit, max, buf)
    }

    /// Takes up to `max` events of `lane` below `limit`, already counted in flight by the
    /// caller, out of its ring into `buf`; releases the count of those it did not get, and
    /// makes the room known to blocked producers. Returns the first sequence, with the lane's
    /// tag, and how many.
    #[inline]
    fn take_reserved(
        &self,
        lane: Source<'_, E>,
        limit: u64,
        max: u64,
        buf: &mut Vec<E>,
    ) -> Option<(u64, u64)> {
        let taken = lane.ring.take_batch(limit, max, buf);
        let n = taken.map_or(0, |(_, n)| n);
        if n < max {
            self.shared.counters.in_flight.release(max - n);
        }
        if n > 0 {
            self.made_room();
        }
        taken.map(|(first, n)| (first | lane.tag, n))
    }

    /// Wakes producers blocked on a full ring, after a take made room (only `Block` has any).
    #[inline]
    fn made_room(&self) {
        if self.shared.policy == OverrunPolicy::Block {
            self.shared.blocked.wake();
        }
    }

    /// Records the outcome of `n` in-flight events, then releases their count.
    #[inline]
    fn finished(&self, n: u64, tally: Tally) {
        self.shared.counters.record(tally);
        self.shared.counters.in_flight.release(n);
    }
}

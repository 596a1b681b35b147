//! Sampled latencies: one event in `every` (a power of two, chosen with
//! [`Builder::sample_latency`](crate::Builder::sample_latency)) has the time it waited in the
//! ring (enqueue to dispatch) and the time its handlers ran recorded in its projection's
//! HdrHistograms (the `hdrhistogram` crate). Off by default; off, the enqueue path and the run
//! loop each test one `Option` per call.
//!
//! An event is sampled when its sequence is a multiple of `every`: the producer stamps the
//! time into a side array ([`Stamps`], with room for the ring's events and those a publisher
//! may hold taken but not yet run); the publisher that runs it reads the stamp back. A stamp
//! packs the time with the lap of the array it was written in, so a stamp that a later lap
//! overwrote before the run read it is recognised and counted as a lost wait sample
//! ([`ProjectionLatency::wait_lost`]) rather than read as a wrong wait. The array outlives the
//! ring by `max_in_flight` events, so a sync or parallel publish, which runs what it takes at
//! once, loses one only when `DropOldest` evictions race a whole array's worth past an event
//! between its take and its run (a tiny ring under heavy overrun); an async batch loses them
//! when rayon starts it late (its workers run the jobs they spawned newest first, so an old
//! batch may start after many newer ones).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::sync::{AtomicU64, Ordering};

/// Significant figures the histograms keep: 1% precision at every magnitude.
const SIGNIFICANT_FIGURES: u8 = 2;

/// How often the store samples latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SamplingConfig {
    /// `every - 1`: a sequence `s` is sampled when `s & mask == 0`.
    mask: u64,
}

impl SamplingConfig {
    /// One in `every` events; `every` is a power of two (the builder checks).
    pub(crate) fn one_in(every: u64) -> Self {
        debug_assert!(every.is_power_of_two());
        Self { mask: every - 1 }
    }

    /// True for a sampled sequence (the lane's tag bit is above any mask).
    #[inline(always)]
    pub(crate) fn samples(&self, sequence: u64) -> bool {
        sequence & self.mask == 0
    }
}

/// Per-slot enqueue times of one lane, for sampled sequences.
#[derive(Debug)]
pub(crate) struct Stamps {
    /// `(nanoseconds since epoch) << LAP_BITS | lap`, one per sequence modulo its length.
    slots: Box<[AtomicU64]>,
    /// `log2(capacity)`: a sequence's lap is `sequence >> slot_bits`.
    slot_bits: u32,
}

/// Low bits of a stamp that name the lap it was written in.
const LAP_BITS: u32 = 16;
const LAP_MASK: u64 = (1 << LAP_BITS) - 1;
/// The bits of a time, in nanoseconds since the sampling's epoch, that a stamp keeps.
const TIME_MASK: u64 = u64::MAX >> LAP_BITS;

impl Stamps {
    /// Room for `capacity` stamps (a power of two), or `None` if they cannot be allocated.
    pub(crate) fn try_new(capacity: usize) -> Option<Self> {
        debug_assert!(capacity.is_power_of_two());
        let mut slots = Vec::new();
        slots.try_reserve_exact(capacity).ok()?;
        slots.extend((0..capacity).map(|_| AtomicU64::new(u64::MAX)));
        Some(Self {
            slots: slots.into_boxed_slice(),
            slot_bits: capacity.trailing_zeros(),
        })
    }

    fn index(&self, sequence: u64) -> usize {
        (sequence & ((1 << self.slot_bits) - 1)) as usize
    }

    fn lap(&self, sequence: u64) -> u64 {
        (sequence >> self.slot_bits) & LAP_MASK
    }

    /// Records that `sequence` was enqueued `at` (nanoseconds since the epoch). Called before
    /// the event is written to its slot: the slot's release store publishes the stamp to the
    /// publisher that takes the event.
    #[inline]
    pub(crate) fn stamp(&self, sequence: u64, at: u64) {
        // Relaxed: ordered before the dispatch by the ring slot's release/acquire.
        self.slots[self.index(sequence)]
            .store(at << LAP_BITS | self.lap(sequence), Ordering::Relaxed);
    }

    /// When `sequence` was enqueued (nanoseconds since the epoch), unless its stamp was
    /// overwritten by a later lap meanwhile.
    #[inline]
    pub(crate) fn read(&self, sequence: u64) -> Option<u64> {
        let stamp = self.slots[self.index(sequence)].load(Ordering::Relaxed);
        (stamp != u64::MAX && stamp & LAP_MASK == self.lap(sequence)).then_some(stamp >> LAP_BITS)
    }
}

/// The store's latency sampling: the config, the clock's epoch, and each lane's stamps.
#[derive(Debug)]
pub(crate) struct Sampling {
    pub(crate) config: SamplingConfig,
    epoch: Instant,
    /// The shared lane's stamps, then the producer lane's (if any).
    lanes: [Option<Stamps>; 2],
}

impl Sampling {
    /// Sampling for a ring of `ring` slots (a power of two) whose publishers may hold up to
    /// `in_flight` events taken but not yet run: each lane's stamps have room for the ring's
    /// events and that many more, up to the ring's capacity more (a larger bound would cost
    /// memory for nothing but fewer lost waits). `None` if they cannot be allocated.
    pub(crate) fn try_new(
        config: SamplingConfig,
        ring: usize,
        in_flight: usize,
        producer_lane: bool,
    ) -> Option<Self> {
        let capacity = ring.saturating_add(in_flight.min(ring)).next_power_of_two();
        Some(Self {
            config,
            epoch: Instant::now(),
            lanes: [
                Some(Stamps::try_new(capacity)?),
                match producer_lane {
                    true => Some(Stamps::try_new(capacity)?),
                    false => None,
                },
            ],
        })
    }

    /// Nanoseconds since the epoch, as stamps hold them (wraps after 2^48 ns, about 78 hours;
    /// a wait or a run time is computed modulo that, see [`between`](Self::between)).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64) & TIME_MASK
    }

    /// The time from `then` to `now` (both from [`now`](Self::now)), modulo the 48 bits they
    /// are kept in, so that a span across the clock's wrap is still its length.
    #[inline]
    pub(crate) fn between(then: u64, now: u64) -> u64 {
        now.wrapping_sub(then) & TIME_MASK
    }

    /// A sampled event's handlers start: the time now, and how long it waited in the ring
    /// (`None`: its stamp is gone). The stamp is read first, then the clock, so that the
    /// stamp read is never one written after the time returned; and read when the handlers
    /// start, not after they ran, when the handlers themselves may have cycled the ring
    /// (a handler enqueueing into its own tiny `DropOldest` ring) past the event's stamp.
    #[inline]
    pub(crate) fn start(&self, tagged: u64) -> (u64, Option<u64>) {
        let then = self.stamp_of(tagged);
        let now = self.now();
        (now, then.and_then(|then| Self::wait(then, now)))
    }

    /// The stamps of the lane `tagged` (a sequence with its lane's tag) is on.
    #[inline]
    fn lane(&self, tagged: u64) -> Option<&Stamps> {
        let producer = tagged & crate::store::PRODUCER_LANE != 0;
        self.lanes[usize::from(producer)].as_ref()
    }

    /// Stamps every sampled sequence among `count` from `first` (untagged) of lane `tag`.
    #[inline]
    pub(crate) fn stamp_range(&self, first: u64, count: u64, tag: u64) {
        let Some(stamps) = self.lane(tag) else {
            return;
        };
        let mask = self.config.mask;
        // The first multiple of `every` at or after `first`.
        let mut sequence = (first + mask) & !mask;
        let end = first + count;
        if sequence >= end {
            return;
        }
        let now = self.now();
        while sequence < end {
            stamps.stamp(sequence, now);
            sequence += mask + 1;
        }
    }

    /// The enqueue time of the sampled event `tagged`, unless its stamp was overwritten.
    #[inline]
    fn stamp_of(&self, tagged: u64) -> Option<u64> {
        let untagged = tagged & !crate::store::PRODUCER_LANE;
        self.lane(tagged)?.read(untagged)
    }

    /// How long the sampled event `tagged` waited, from its stamp to `now`.
    #[cfg(test)]
    fn waited(&self, tagged: u64, now: u64) -> Option<u64> {
        Self::wait(self.stamp_of(tagged)?, now)
    }

    /// The wait from a stamp written `then` to `now`, or `None` for a stamp that reads as
    /// written after `now`: a later lap's, which the 16 lap bits cannot tell from the event's
    /// own once every 65536 laps. (Such a stamp would make a wait that wrapped, to about
    /// 2^48 ns; a real wait of more than half that, 39 hours, is counted lost with them.)
    #[inline]
    fn wait(then: u64, now: u64) -> Option<u64> {
        let waited = Self::between(then, now);
        (waited <= TIME_MASK / 2).then_some(waited)
    }
}

/// One projection's sampled latencies, in nanoseconds.
#[derive(Debug)]
pub(crate) struct LatencyHistograms {
    /// Both histograms under one lock: a sampled event records into both at once.
    both: Mutex<Pair>,
    /// Sampled events whose wait could not be measured (their stamp was overwritten).
    wait_lost: AtomicU64,
}

#[derive(Debug)]
struct Pair {
    wait: Histogram<u64>,
    run: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // Grows as larger values arrive; starts sized for up to 1 ms.
    let mut h = Histogram::new_with_max(1_000_000, SIGNIFICANT_FIGURES)
        .expect("1 ms and 2 significant figures are valid bounds");
    h.auto(true);
    h
}

impl LatencyHistograms {
    pub(crate) fn new() -> Self {
        Self {
            both: Mutex::new(Pair {
                wait: histogram(),
                run: histogram(),
            }),
            wait_lost: AtomicU64::new(0),
        }
    }

    fn both(&self) -> std::sync::MutexGuard<'_, Pair> {
        self.both.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a wait in the ring and a run of the handlers (nanoseconds). One lock, held for
    /// the two records: no user code runs under it.
    pub(crate) fn record(&self, waited: Option<u64>, ran: u64) {
        if waited.is_none() {
            self.wait_lost.fetch_add(1, Ordering::Relaxed);
        }
        let mut both = self.both();
        if let Some(waited) = waited {
            record(&mut both.wait, waited);
        }
        record(&mut both.run, ran);
    }

    /// Copies of the two histograms (wait, run), for an exporter.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn histograms(&self) -> (Histogram<u64>, Histogram<u64>) {
        let both = self.both();
        (both.wait.clone(), both.run.clone())
    }

    /// Sampled events whose wait was lost.
    pub(crate) fn wait_lost(&self) -> u64 {
        self.wait_lost.load(Ordering::Relaxed)
    }

    pub(crate) fn wait_summary(&self) -> LatencySummary {
        LatencySummary::of(&self.both().wait)
    }

    pub(crate) fn run_summary(&self) -> LatencySummary {
        LatencySummary::of(&self.both().run)
    }
}

fn record(h: &mut Histogram<u64>, nanos: u64) {
    // `record` grows the histogram (auto-resize) for a value past its range; should growing
    // fail, the value is clamped to the largest it holds rather than lost.
    if h.record(nanos).is_err() {
        h.saturating_record(nanos);
    }
}

/// Percentiles of one sampled latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// The smallest sample.
    pub min: Duration,
    /// The mean.
    pub mean: Duration,
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The 99.9th percentile.
    pub p999: Duration,
    /// The largest sample.
    pub max: Duration,
}

impl LatencySummary {
    /// The summary of `h` (nanoseconds). Values are HdrHistogram's: each within 1% of a
    /// recorded sample (two significant figures).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let at = |q: f64| Duration::from_nanos(h.value_at_quantile(q));
        Self {
            count: h.len(),
            min: Duration::from_nanos(h.min()),
            mean: Duration::from_nanos(h.mean() as u64),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_nanos(h.max()),
        }
    }
}

/// The sampled latencies of one projection, from
/// [`EventStore::latency`](crate::EventStore::latency).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionLatency {
    /// The projection, in its `Debug` form.
    pub projection: String,
    /// Time from enqueue to dispatch (the ring's wait).
    pub wait: LatencySummary,
    /// Time the event's handlers ran, all of them together.
    pub run: LatencySummary,
    /// Sampled events whose wait could not be measured because their enqueue stamp was
    /// reused before their handlers started: an async batch started late, or evictions raced
    /// past them (see [`Builder::sample_latency`](crate::Builder::sample_latency)).
    /// `run.count` counts them, `wait.count` does not.
    pub wait_lost: u64,
}

impl ProjectionLatency {
    pub(crate) fn new(
        projection: String,
        wait: LatencySummary,
        run: LatencySummary,
        wait_lost: u64,
    ) -> Self {
        Self {
            projection,
            wait,
            run,
            wait_lost,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_durations() {
        let h = LatencyHistograms::new();
        // 1..=1000 microseconds, once each: the q-quantile is about q * 1000 us.
        for us in 1..=1000u64 {
            h.record(Some(us * 1000), us * 1000);
        }
        let s = h.run_summary();
        assert_eq!(s.count, 1000);
        let near = |d: Duration, us: u64| {
            let want = us as f64 * 1000.0;
            (d.as_nanos() as f64 - want).abs() <= want * 0.01
        };
        assert!(near(s.p50, 500), "{s:?}");
        assert!(near(s.p90, 900), "{s:?}");
        assert!(near(s.p99, 990), "{s:?}");
        assert!(near(s.p999, 999), "{s:?}");
        assert!(near(s.max, 1000), "{s:?}");
        assert!(near(s.min, 1), "{s:?}");
        assert!(near(s.mean, 500), "{s:?}");
        assert_eq!(h.wait_summary(), s);
        assert_eq!(LatencySummary::of(&histogram()), LatencySummary::default());
    }

    #[test]
    fn a_tail_far_above_the_start_range_is_kept() {
        let h = LatencyHistograms::new();
        for _ in 0..999 {
            h.record(None, 100);
        }
        h.record(None, 5_000_000_000); // 5 s, past the 1 ms the histogram starts with
        let s = h.run_summary();
        assert_eq!(s.p99, Duration::from_nanos(100));
        let max = s.max.as_secs_f64();
        assert!((4.95..=5.05).contains(&max), "{s:?}");
        assert_eq!(h.wait_summary().count, 0, "no wait was recorded");
        assert_eq!(h.wait_lost(), 1000);
    }

    #[test]
    fn stamps_sample_one_in_every_and_forget_overwritten_laps() {
        let sampling = Sampling::try_new(SamplingConfig::one_in(4), 4, 4, false).unwrap();
        sampling.stamp_range(1, 10, 0); // 1..=10: samples 4 and 8
        let now = sampling.now() + 1000;
        assert!(sampling.waited(4, now).is_some_and(|w| w >= 1000));
        assert!(sampling.waited(8, now).is_some());
        assert!(sampling.waited(12, now).is_none(), "never stamped");
        assert!(
            sampling.waited(0, now).is_none(),
            "slot 0 holds lap 1's stamp"
        );
        assert!(!sampling.config.samples(5));
        assert!(
            sampling
                .waited(crate::store::PRODUCER_LANE | 4, now)
                .is_none()
        );
        // A stamp that reads as written after `now` (a later lap's, with the lap bits wrapped)
        // is lost, not a wait of 2^48 ns less a little.
        assert!(
            sampling
                .waited(4, sampling.now().wrapping_sub(1000))
                .is_none()
        );
    }

    #[test]
    fn stamps_are_sized_within_bounds_and_allocated_fallibly() {
        let config = SamplingConfig::one_in(1);
        let sized = |ring, in_flight| {
            Sampling::try_new(config, ring, in_flight, false)
                .map(|s| s.lanes[0].as_ref().unwrap().slots.len())
        };
        assert_eq!(sized(8, 8), Some(16));
        assert_eq!(sized(8, 3), Some(16));
        assert_eq!(
            sized(8, usize::MAX),
            Some(16),
            "at most the ring's capacity more"
        );
        assert_eq!(sized(8, (1 << 63) + 1), Some(16));
        assert!(
            Sampling::try_new(config, 1 << 60, 1, true).is_none(),
            "refused, not aborted"
        );
    }

    #[test]
    fn spans_across_the_clocks_wrap_keep_their_length() {
        // Stamps keep 48 bits of nanoseconds: a run that starts before the wrap and ends after
        // it lasted `end + 2^48 - start`, not 2^64 less something.
        let before_wrap = TIME_MASK - 500;
        assert_eq!(Sampling::between(before_wrap, 700), 1201);
        assert_eq!(Sampling::wait(before_wrap, 700), Some(1201));
        assert_eq!(Sampling::between(5, 5), 0);
        assert_eq!(
            Sampling::wait(700, before_wrap),
            None,
            "written after `now`"
        );
    }
}

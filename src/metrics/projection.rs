//! Counts per projection: the live [`ProjectionCounters`] of each projection, the store's
//! [`ProjectionRegistry`] of them, a run's local [`RunCounts`], and the
//! [`ProjectionMetrics`] snapshot users read.
//!
//! An event's projection is computed when a publisher dispatches it (or when `DropOldest`
//! evicts it), never on the enqueue path, so the counts per projection are of events that have
//! left the ring. The hot path adds nothing shared per event: a run counts its processed
//! events per route in a local array ([`RunCounts`]) and adds the totals once, at its end; the
//! rarer outcomes (failures, dead letters, drops) go straight to the projection's atomics.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;

use super::latency::{LatencyHistograms, ProjectionLatency};
use crate::panics;
use crate::sync::{AtomicU64, Ordering};

/// A snapshot of one projection's counters, from
/// [`EventStore::projection_metrics`](crate::EventStore::projection_metrics).
///
/// Counted once the event's projection is known: when a publisher dispatches the event, or
/// when `DropOldest` evicts it. Events still pending, in a run, filtered by the store-wide
/// filter, or whose `projection()` panicked are in the store-wide [`Metrics`](crate::Metrics)
/// only. So for each projection, once the store is quiescent:
///
/// `published == processed + failed + dead_lettered + dropped + unrouted + retrying`
///
/// and over the store (with no event in flight):
/// `Metrics::published == Σ published + filtered + pending + (events whose projection()
/// panicked)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProjectionMetrics {
    /// The projection, as its `Debug` form writes it (projections with the same `Debug` form
    /// share one entry; so, rarely, may two multi-word projections without a route whose
    /// route-table hashes collide: they are counted under the first one met).
    pub projection: String,
    /// Events of this projection that left the ring: the sum of the six outcomes below.
    pub published: u64,
    /// Events whose handlers all returned `Ok`.
    pub processed: u64,
    /// Events for which at least one handler failed for good.
    pub failed: u64,
    /// Events with a failure that went to the dead-letter queue.
    pub dead_lettered: u64,
    /// Events `DropOldest` evicted.
    pub dropped: u64,
    /// Events with no handler to run.
    pub unrouted: u64,
    /// Events held for a pending retry (a gauge).
    pub retrying: u64,
    /// Handler calls that failed (an event with two failing handlers counts twice).
    pub handler_errors: u64,
    /// Retry attempts run.
    pub retries: u64,
    /// Handler calls an open circuit breaker skipped.
    pub skipped: u64,
}

impl ProjectionMetrics {
    /// True when `published` is the sum of the outcomes (see the type's docs).
    pub fn is_balanced(&self) -> bool {
        self.published
            == self.processed
                + self.failed
                + self.dead_lettered
                + self.dropped
                + self.unrouted
                + self.retrying
    }
}

/// Which outcome an event of a projection had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Processed,
    Failed,
    DeadLettered,
    Dropped,
    Unrouted,
}

/// The live counters of one projection. Relaxed throughout: they order nothing.
#[derive(Debug)]
pub(crate) struct ProjectionCounters {
    processed: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
    unrouted: AtomicU64,
    retrying: AtomicU64,
    handler_errors: AtomicU64,
    retries: AtomicU64,
    skipped: AtomicU64,
    /// Sampled latencies, when the store samples them.
    latency: Option<LatencyHistograms>,
}

impl ProjectionCounters {
    fn new(latency: Option<LatencyHistograms>) -> Self {
        Self {
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            retrying: AtomicU64::new(0),
            handler_errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            latency,
        }
    }

    /// Counters of no projection, never reported: what the route table keeps at its slots
    /// without a route.
    pub(crate) fn unlisted() -> Arc<Self> {
        Arc::new(Self::new(None))
    }

    /// Adds `n` events with `outcome`.
    #[inline]
    pub(crate) fn add(&self, outcome: Outcome, n: u64) {
        let counter = match outcome {
            Outcome::Processed => &self.processed,
            Outcome::Failed => &self.failed,
            Outcome::DeadLettered => &self.dead_lettered,
            Outcome::Dropped => &self.dropped,
            Outcome::Unrouted => &self.unrouted,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` handler calls failed.
    pub(crate) fn add_handler_errors(&self, n: u64) {
        self.handler_errors.fetch_add(n, Ordering::Relaxed);
    }

    /// A retry attempt ran.
    pub(crate) fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// An open breaker skipped a call.
    pub(crate) fn add_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// An event is held for a retry.
    pub(crate) fn hold(&self) {
        self.retrying.fetch_add(1, Ordering::Relaxed);
    }

    /// A held event ends with `outcome` (counted before it leaves `retrying`, so that a
    /// snapshot never sees it in neither).
    pub(crate) fn release(&self, outcome: Outcome) {
        self.add(outcome, 1);
        // Release: a snapshot that sees the event gone from `retrying` (Acquire) sees its
        // outcome counted.
        self.retrying.fetch_sub(1, Ordering::Release);
    }

    /// The projection's latency histograms, when the store samples latencies.
    #[inline]
    pub(crate) fn latency(&self) -> Option<&LatencyHistograms> {
        self.latency.as_ref()
    }

    fn snapshot(&self, projection: String) -> ProjectionMetrics {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // `retrying` first, Acquire: an event leaving it was counted in its outcome before
        // (see `release`), so reading the outcomes after never misses it (it may be seen in
        // both, for a moment).
        let retrying = self.retrying.load(Ordering::Acquire);
        let mut m = ProjectionMetrics {
            projection,
            published: 0,
            processed: load(&self.processed),
            failed: load(&self.failed),
            dead_lettered: load(&self.dead_lettered),
            dropped: load(&self.dropped),
            unrouted: load(&self.unrouted),
            retrying,
            handler_errors: load(&self.handler_errors),
            retries: load(&self.retries),
            skipped: load(&self.skipped),
        };
        m.published =
            m.processed + m.failed + m.dead_lettered + m.dropped + m.unrouted + m.retrying;
        m
    }
}

/// The most distinct projections a store counts apart; the events of any further ones are
/// counted together under [`OVERFLOW`], so that keys made from data (user ids, say) cannot
/// grow the registry without bound. So are those of projections without a route met after
/// `2 * MAX_PROJECTIONS` distinct ones without a route (keys whose `Debug` forms coincide),
/// so that counting them never formats a name or takes a lock per event.
pub const MAX_PROJECTIONS: usize = 1024;

/// The name the projections past [`MAX_PROJECTIONS`] are counted under.
pub const OVERFLOW: &str = "(other projections)";

/// Every projection's counters in a store, by `Debug` name. Taken under a mutex, but only off
/// the per-event path: when the route table is rebuilt, on the first meeting with a projection
/// without a route, and for a snapshot.
pub(crate) struct ProjectionRegistry {
    by_name: Mutex<HashMap<String, Arc<ProjectionCounters>>>,
    /// The counters of projections met without a route, by the route table's hash of the
    /// projection: read lock-free by runs and evictions, so that a steady state of events
    /// without a route allocates and locks nothing. Copied and swapped on a new entry, under
    /// `by_name`'s lock. Holds at most [`INDEXED`] hashes; a projection without a route met
    /// once it is full is counted under [`OVERFLOW`], lock-free too.
    by_hash: ArcSwap<HashMap<u64, Arc<ProjectionCounters>>>,
    /// The [`OVERFLOW`] entry's counters, once it is in `by_name`.
    overflow: OnceLock<Arc<ProjectionCounters>>,
    /// Whether each projection gets latency histograms (the store samples latencies).
    sampling: Option<super::latency::SamplingConfig>,
}

/// The most hashes of projections without a route the registry indexes: twice the names, so
/// that keys whose `Debug` forms coincide do not fill it before the names are.
const INDEXED: usize = 2 * MAX_PROJECTIONS;

impl ProjectionRegistry {
    pub(crate) fn new(sampling: Option<super::latency::SamplingConfig>) -> Self {
        Self {
            by_name: Mutex::new(HashMap::new()),
            by_hash: ArcSwap::default(),
            overflow: OnceLock::new(),
            sampling,
        }
    }

    /// The counters of `projection`, a projection without a route whose route-table hash is
    /// `hash`: lock-free and without allocating once the projection has been met. Two
    /// projections with one hash (never for single-word keys, for which the hash is
    /// one-to-one) share the first one's counters. Once [`INDEXED`] hashes are indexed, a
    /// projection not among them is counted under [`OVERFLOW`] without a name: that its
    /// `Debug` form might be one already listed is not worth formatting (an allocation) and
    /// a lock per event.
    pub(crate) fn by_hash<P: fmt::Debug>(
        &self,
        hash: u64,
        projection: &P,
    ) -> Arc<ProjectionCounters> {
        {
            let index = self.by_hash.load();
            if let Some(counters) = index.get(&hash) {
                return Arc::clone(counters);
            }
            if index.len() >= INDEXED {
                return self.overflow();
            }
        }
        // User code: formatted before the lock is taken.
        let name = name_of(projection);
        let mut map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.by_hash.load_full();
        if let Some(counters) = old.get(&hash) {
            return Arc::clone(counters);
        }
        if old.len() >= INDEXED {
            return self.overflow_locked(&mut map);
        }
        let counters = self.named_locked(&mut map, name);
        let mut new = HashMap::clone(&old);
        new.insert(hash, Arc::clone(&counters));
        self.by_hash.store(Arc::new(new));
        counters
    }

    /// The counters of `projection`, made on first use.
    pub(crate) fn get<P: fmt::Debug>(&self, projection: &P) -> Arc<ProjectionCounters> {
        let name = name_of(projection);
        let mut map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        self.named_locked(&mut map, name)
    }

    /// The counters of the projection named `name` in `map` (`by_name`, locked), made on
    /// first use: under [`OVERFLOW`] once [`MAX_PROJECTIONS`] names are listed.
    fn named_locked(
        &self,
        map: &mut HashMap<String, Arc<ProjectionCounters>>,
        name: String,
    ) -> Arc<ProjectionCounters> {
        if let Some(counters) = map.get(&name) {
            return Arc::clone(counters);
        }
        if map.len() >= MAX_PROJECTIONS {
            return self.overflow_locked(map);
        }
        let counters = self.new_counters();
        map.insert(name, Arc::clone(&counters));
        counters
    }

    /// The [`OVERFLOW`] entry's counters, lock-free once it exists.
    fn overflow(&self) -> Arc<ProjectionCounters> {
        match self.overflow.get() {
            Some(counters) => Arc::clone(counters),
            None => {
                let mut map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
                self.overflow_locked(&mut map)
            }
        }
    }

    /// The [`OVERFLOW`] entry's counters, listed in `map` (`by_name`, locked) on first use.
    fn overflow_locked(
        &self,
        map: &mut HashMap<String, Arc<ProjectionCounters>>,
    ) -> Arc<ProjectionCounters> {
        if let Some(counters) = self.overflow.get() {
            return Arc::clone(counters);
        }
        let counters = Arc::clone(
            map.entry(OVERFLOW.to_owned())
                .or_insert_with(|| self.new_counters()),
        );
        let _ = self.overflow.set(Arc::clone(&counters));
        counters
    }

    fn new_counters(&self) -> Arc<ProjectionCounters> {
        Arc::new(ProjectionCounters::new(
            self.sampling.map(|_| LatencyHistograms::new()),
        ))
    }

    /// Every projection's counts, sorted by name.
    pub(crate) fn snapshot(&self) -> Vec<ProjectionMetrics> {
        let map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = map
            .iter()
            .map(|(name, counters)| counters.snapshot(name.clone()))
            .collect();
        drop(map);
        all.sort_by(|a, b| a.projection.cmp(&b.projection));
        all
    }

    /// Every projection's latency summaries (empty unless the store samples), sorted by name.
    pub(crate) fn latency(&self) -> Vec<ProjectionLatency> {
        let map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = map
            .iter()
            .filter_map(|(name, c)| {
                let l = c.latency()?;
                Some(ProjectionLatency::new(
                    name.clone(),
                    l.wait_summary(),
                    l.run_summary(),
                    l.wait_lost(),
                ))
            })
            .collect();
        drop(map);
        all.sort_by(|a, b| a.projection.cmp(&b.projection));
        all
    }
}

impl ProjectionRegistry {
    /// Every sampled projection's name and copies of its histograms (wait, run), sorted by
    /// name, for an exporter.
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) fn histograms(&self) -> Vec<(String, Histogram<u64>, Histogram<u64>)> {
        let map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = map
            .iter()
            .filter_map(|(name, c)| {
                let (wait, run) = c.latency()?.histograms();
                Some((name.clone(), wait, run))
            })
            .collect();
        drop(map);
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

impl fmt::Debug for ProjectionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ProjectionRegistry")
            .field("projections", &map.len())
            .finish_non_exhaustive()
    }
}

/// A projection's `Debug` form; user code, so a panic in it is contained (and named so).
pub(crate) fn name_of<P: fmt::Debug + ?Sized>(projection: &P) -> String {
    panics::catch(|| format!("{projection:?}")).unwrap_or_else(|payload| {
        panics::dispose(payload);
        "(Debug panicked)".to_owned()
    })
}

/// Routes a run counts apart locally: a route table of up to this many slots (up to half as
/// many projections) has every route counted locally; larger tables count the routes at
/// higher slots straight into their atomics.
pub(crate) const LOCAL_ROUTES: usize = 32;

/// Projections without a route whose counters a run keeps at hand (and counts locally, at
/// `LOCAL_ROUTES + i`).
const UNLISTED_CACHE: usize = 16; // a power of two: a hash's top bits are its home

// `RunCounts::touched` has a bit per local count.
const _: () = assert!(LOCAL_ROUTES + UNLISTED_CACHE <= u64::BITS as usize);

/// What one run of events processed per projection, summed locally and added to each
/// projection's counters once, at the end of the run. Indexed by route slot (below
/// [`LOCAL_ROUTES`]), then by [`UnlistedCache`] entry.
pub(crate) struct RunCounts {
    /// Bit `i`: `processed[i]` may hold a count (the flush reads only these).
    touched: u64,
    processed: [u64; LOCAL_ROUTES + UNLISTED_CACHE],
}

impl RunCounts {
    pub(crate) fn new() -> Self {
        Self {
            touched: 0,
            processed: [0; LOCAL_ROUTES + UNLISTED_CACHE],
        }
    }

    /// An event counted at `index` was processed; `counters` are that projection's.
    /// Branch-free on the local path: the bit is set every time.
    #[inline(always)]
    pub(crate) fn processed(&mut self, index: usize, counters: &ProjectionCounters) {
        match self.processed.get_mut(index) {
            Some(count) => {
                *count += 1;
                self.touched |= 1 << index;
            }
            None => counters.add(Outcome::Processed, 1),
        }
    }

    /// Adds the counts to the projections' counters (`counters_at(index)`) and clears them.
    #[inline]
    pub(crate) fn flush<'a>(&mut self, counters_at: impl Fn(usize) -> &'a ProjectionCounters) {
        while self.touched != 0 {
            let index = self.touched.trailing_zeros() as usize;
            self.touched &= self.touched - 1;
            counters_at(index).add(
                Outcome::Processed,
                std::mem::take(&mut self.processed[index]),
            );
        }
    }
}

/// The counters of the projections without a route a run met, by the projection's 64-bit
/// hash (the route table's, one-to-one on single-word keys), so that the run takes the
/// registry's lock once per projection rather than per event. Holds at most
/// [`UNLISTED_CACHE`]; a run meeting more looks the rest up each time.
pub(crate) struct UnlistedCache {
    entries: [Option<(u64, Arc<ProjectionCounters>)>; UNLISTED_CACHE],
    /// The counters of the last projection the full cache turned away.
    overflow: Option<Arc<ProjectionCounters>>,
}

/// Where a projection without a route is counted: a cache entry's index for [`RunCounts`],
/// or counters of its own (the cache was full).
enum Unlisted {
    Cached(usize),
    Uncached(Arc<ProjectionCounters>),
}

impl UnlistedCache {
    pub(crate) fn new() -> Self {
        Self {
            entries: Default::default(),
            overflow: None,
        }
    }

    /// The entry of the projection of `hash`, probing from `home`; `lookup` finds its
    /// counters in the registry on the run's first meeting.
    #[inline]
    fn find(
        &mut self,
        hash: u64,
        home: usize,
        lookup: impl FnOnce(u64) -> Arc<ProjectionCounters>,
    ) -> Unlisted {
        for i in (home..UNLISTED_CACHE).chain(0..home) {
            match &mut self.entries[i] {
                Some((h, _)) if *h == hash => return Unlisted::Cached(LOCAL_ROUTES + i),
                Some(_) => {}
                entry @ None => {
                    *entry = Some((hash, lookup(hash)));
                    return Unlisted::Cached(LOCAL_ROUTES + i);
                }
            }
        }
        Unlisted::Uncached(lookup(hash))
    }

    /// Where the run counts the projection of `hash` (a [`RunCounts`] index, or `usize::MAX`:
    /// straight into its counters, the cache being full) and its counters. The entry at the
    /// hash's home (its top bits) is checked inline; anything else is out of line, so that
    /// the run loop stays short.
    #[inline(always)]
    pub(crate) fn counters(
        &mut self,
        hash: u64,
        lookup: impl FnOnce(u64) -> Arc<ProjectionCounters>,
    ) -> (usize, &Arc<ProjectionCounters>) {
        let home = (hash >> (64 - UNLISTED_CACHE.trailing_zeros())) as usize;
        if matches!(&self.entries[home], Some((h, _)) if *h == hash) {
            return (LOCAL_ROUTES + home, self.at(LOCAL_ROUTES + home));
        }
        self.counters_away(hash, home, lookup)
    }

    /// [`counters`](Self::counters) for a projection not at its home: the first free or
    /// matching entry from there on.
    #[inline(never)]
    fn counters_away(
        &mut self,
        hash: u64,
        home: usize,
        lookup: impl FnOnce(u64) -> Arc<ProjectionCounters>,
    ) -> (usize, &Arc<ProjectionCounters>) {
        match self.find(hash, home, lookup) {
            Unlisted::Cached(index) => (index, self.at(index)),
            Unlisted::Uncached(counters) => (usize::MAX, self.overflow.insert(counters)),
        }
    }

    /// The counters at `index` (from [`find`](Self::find)).
    #[inline]
    pub(crate) fn at(&self, index: usize) -> &Arc<ProjectionCounters> {
        match &self.entries[index - LOCAL_ROUTES] {
            Some((_, counters)) => counters,
            None => unreachable!("an index `find` returned holds an entry"),
        }
    }
}

/// A held event ends while a snapshot reads its projection: the snapshot sees it held, or in
/// its outcome, never in neither. `RUSTFLAGS="--cfg loom" cargo test --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_projection {
    use super::{Outcome, ProjectionCounters};
    use loom::sync::Arc;

    #[test]
    fn loom_a_released_event_is_never_in_neither() {
        loom::model(|| {
            let counters = Arc::new(ProjectionCounters::new(None));
            counters.hold();
            let releaser = {
                let counters = counters.clone();
                loom::thread::spawn(move || counters.release(Outcome::Failed))
            };
            let m = counters.snapshot(String::new());
            assert!(m.retrying + m.failed >= 1, "{m:?}");
            releaser.join().unwrap();
            let m = counters.snapshot(String::new());
            assert_eq!((m.retrying, m.failed, m.published), (0, 1, 1), "{m:?}");
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn run_counts_add_up_per_route_once_flushed() {
        let registry = ProjectionRegistry::new(None);
        let routes: Vec<_> = (0..41).map(|n| registry.get(&n)).collect();
        let mut run = RunCounts::new();
        for slot in [0, 3, 3, 31, 39, 35, 3, 0, 40] {
            run.processed(slot, &routes[slot]);
        }
        run.flush(|slot| &routes[slot]);
        run.flush(|slot| &routes[slot]); // cleared: adds nothing twice
        let counts: HashMap<_, _> = registry
            .snapshot()
            .into_iter()
            .map(|m| (m.projection, m.processed))
            .collect();
        assert_eq!(counts["0"], 2);
        assert_eq!(counts["3"], 3);
        assert_eq!(counts["31"], 1);
        assert_eq!(counts["35"], 1);
        assert_eq!(counts["39"], 1);
        assert_eq!(counts["40"], 1, "past the local slots: counted at once");
        assert_eq!(counts["1"], 0);
    }

    /// A hash whose home in the unlisted cache is `home`, made distinct by `n`.
    fn at_home(home: u64, n: u64) -> u64 {
        home << (64 - UNLISTED_CACHE.trailing_zeros()) | n
    }

    /// The cache's index for `hash`, counting the registry lookups it made in `lookups`.
    fn index(
        cache: &mut UnlistedCache,
        registry: &ProjectionRegistry,
        lookups: &mut usize,
        hash: u64,
    ) -> usize {
        let lookup = |hash| {
            *lookups += 1;
            registry.by_hash(hash, &hash)
        };
        cache.counters(hash, lookup).0
    }

    #[test]
    fn the_unlisted_cache_finds_each_hash_once_then_overflows() {
        let registry = ProjectionRegistry::new(None);
        let mut cache = UnlistedCache::new();
        let mut lookups = 0;
        let mut index_of =
            |cache: &mut UnlistedCache, hash| index(cache, &registry, &mut lookups, hash);
        for home in 0..UNLISTED_CACHE as u64 {
            assert_eq!(
                index_of(&mut cache, at_home(home, 0)),
                LOCAL_ROUTES + home as usize
            );
        }
        assert_eq!(index_of(&mut cache, at_home(3, 0)), LOCAL_ROUTES + 3);
        // Full: a new projection is counted straight into its counters, looked up each time.
        assert_eq!(index_of(&mut cache, at_home(3, 1)), usize::MAX);
        assert_eq!(index_of(&mut cache, at_home(3, 1)), usize::MAX);
        assert_eq!(lookups, UNLISTED_CACHE + 2);
        cache.at(LOCAL_ROUTES + 3).add(Outcome::Unrouted, 1);
        let name = at_home(3, 0).to_string();
        let all = registry.snapshot();
        assert_eq!(
            all.iter().find(|m| m.projection == name).unwrap().unrouted,
            1
        );
    }

    #[test]
    fn unlisted_projections_sharing_a_home_take_the_next_free_entries() {
        let registry = ProjectionRegistry::new(None);
        let mut cache = UnlistedCache::new();
        let mut lookups = 0;
        let mut index_of =
            |cache: &mut UnlistedCache, hash| index(cache, &registry, &mut lookups, hash);
        let last = UNLISTED_CACHE as u64 - 1;
        assert_eq!(
            index_of(&mut cache, at_home(last, 0)),
            LOCAL_ROUTES + last as usize
        );
        // The probe wraps round to the first entry, then on.
        assert_eq!(index_of(&mut cache, at_home(last, 1)), LOCAL_ROUTES);
        assert_eq!(index_of(&mut cache, at_home(last, 2)), LOCAL_ROUTES + 1);
        // Met again: found where they went, not looked up again.
        assert_eq!(index_of(&mut cache, at_home(last, 2)), LOCAL_ROUTES + 1);
        assert_eq!(index_of(&mut cache, at_home(last, 1)), LOCAL_ROUTES);
        // A projection at home 1, taken: the next free entry.
        assert_eq!(index_of(&mut cache, at_home(1, 0)), LOCAL_ROUTES + 2);
        assert_eq!(lookups, 4);
    }

    #[test]
    fn projections_past_the_cap_share_one_entry() {
        let registry = ProjectionRegistry::new(None);
        for n in 0..MAX_PROJECTIONS + 10 {
            registry.get(&n).add(Outcome::Unrouted, 1);
        }
        let all = registry.snapshot();
        assert_eq!(all.len(), MAX_PROJECTIONS + 1);
        let other = all.iter().find(|m| m.projection == OVERFLOW).unwrap();
        assert_eq!((other.unrouted, other.published), (10, 10));
        assert!(all.iter().all(ProjectionMetrics::is_balanced));
    }

    #[test]
    fn hashes_past_the_index_count_under_overflow_without_a_name() {
        // Keys whose `Debug` forms coincide: the index fills before the names do.
        struct Same(u64);
        impl fmt::Debug for Same {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "same-{}", self.0 % 4)
            }
        }
        let registry = ProjectionRegistry::new(None);
        for n in 0..INDEXED as u64 + 100 {
            registry.by_hash(n, &Same(n)).add(Outcome::Unrouted, 1);
        }
        // Met again: the indexed ones under their names, the rest under the overflow.
        for n in 0..INDEXED as u64 + 100 {
            registry.by_hash(n, &Same(n)).add(Outcome::Unrouted, 1);
        }
        let all = registry.snapshot();
        assert_eq!(all.len(), 5, "{all:?}");
        let other = all.iter().find(|m| m.projection == OVERFLOW).unwrap();
        assert_eq!(other.unrouted, 200);
        assert_eq!(
            all.iter().map(|m| m.unrouted).sum::<u64>(),
            2 * (INDEXED as u64 + 100)
        );
    }

    #[test]
    fn a_panicking_debug_is_named_not_unwound() {
        struct Bad;
        impl fmt::Debug for Bad {
            fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
                panic!("debug")
            }
        }
        assert_eq!(name_of(&Bad), "(Debug panicked)");
    }
}

//! The route table a store dispatches through: a [`Dispatcher`] frozen for fast lookups.
//! Catch-all handlers are appended to every route when frozen, and are the table's fallback
//! for projections without routes, so they cost a lookup nothing.
//!
//! A dispatcher's projections are fixed once the store is built, and there are few of them (a
//! handful to a few hundred), so the store resolves each event's projection with a small
//! open-addressed table instead of a general hash map: one multiply to hash, then usually one
//! key comparison. It is sized to at least twice the projections, so most lookups hit their
//! slot first and a miss (an unrouted event) ends at the first empty slot nearby.
//!
//! The hash is a multiplicative one (as in rustc's FxHash), not a keyed one: the keys are the
//! application's own projections, not attacker-chosen input, and only lookups run on events,
//! never inserts.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Guard};

use super::Context;
use super::dispatcher::{Dispatcher, Handler};
use crate::error::HandlerFailure;
use crate::event::Event;
use crate::metrics::{ProjectionCounters, ProjectionRegistry};
use crate::panics;

/// One multiply per word: fast for the small keys projections are (integers, enums, short
/// strings, type ids).
#[derive(Default)]
struct MulHasher(u64);

/// An odd constant with well-spread bits (rustc's FxHash seed).
const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for MulHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            // A last, partial chunk carries its length in its top byte, so that zero padding
            // cannot make `b"a"` and `b"a\0"` one word: the counts of projections without a
            // route are kept by this hash alone. (Multi-word keys can still collide, e.g. a
            // 7-byte chunk with a full one ending in byte 7; none this natural.)
            if chunk.len() < 8 {
                word[7] = chunk.len() as u8;
            }
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SEED);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What the run loop calls for an event: a handler registered on the [`Dispatcher`], or a
/// runtime subscription, which has a life of its own behind the [`Subscriber`] seam (the
/// subscription layer, `src/subscribe/`).
pub(crate) enum Entry<E: Event, Err> {
    Handler(Handler<E, Err>),
    /// A subscription with nothing to decide (no filter, `once`, retry, dead letters, breaker
    /// or budget): its handler, called like a dispatcher handler, and its id.
    Direct(u64, Handler<E, Err>),
    Subscriber(Arc<dyn Subscriber<E, Err>>),
}

impl<E: Event, Err> Clone for Entry<E, Err> {
    fn clone(&self) -> Self {
        match self {
            Self::Handler(h) => Self::Handler(Arc::clone(h)),
            Self::Direct(id, h) => Self::Direct(*id, Arc::clone(h)),
            Self::Subscriber(s) => Self::Subscriber(Arc::clone(s)),
        }
    }
}

impl<E: Event, Err> Entry<E, Err> {
    /// The id of this entry's subscription if its circuit breaker is open now. The breaker
    /// and its clock are user code: one that panics is contained and not reported open
    /// (its state is unknown).
    pub(crate) fn open_breaker(&self) -> Option<u64> {
        match self {
            Self::Subscriber(s) => match panics::catch(|| s.breaker_open()) {
                Ok(true) => Some(s.id()),
                Ok(false) => None,
                Err(payload) => {
                    panics::dispose(payload);
                    None
                }
            },
            _ => None,
        }
    }

    fn is_subscription(&self, id: u64) -> bool {
        match self {
            Self::Handler(_) => false,
            Self::Direct(own, _) => *own == id,
            Self::Subscriber(s) => s.id() == id,
        }
    }
}

/// A runtime subscription as the run loop sees it: it decides itself whether its handler runs
/// (its filter, `once`, its circuit breaker) and what becomes of a failure (a retry, a dead
/// letter), and says which in its [`Delivery`].
pub(crate) trait Subscriber<E: Event, Err>: Send + Sync {
    /// The subscription's id, unique in its store.
    fn id(&self) -> u64;

    /// Delivers `event` to the subscription. A panic of its handler is the subscriber's to
    /// contain (it may retry it); one that escapes counts as the handler's panic.
    fn deliver(&self, ctx: &Context<'_, E, Err>, event: &E) -> Delivery<Err>;

    /// True while the subscription's circuit breaker is open (calls refused), for
    /// [`EventStore::health`](crate::EventStore::health).
    fn breaker_open(&self) -> bool {
        false
    }
}

/// What a [`Subscriber`] did with an event.
pub(crate) enum Delivery<Err> {
    /// Its handler succeeded, or did not run (filtered out, `once` already used, breaker
    /// open): no effect on the event's outcome.
    Done,
    /// Its handler failed, for good: reported and counted like a dispatcher handler's failure.
    Failed(HandlerFailure<Err>),
    /// The subscriber reported the failure and sent it to the dead-letter queue: the event
    /// ends dead-lettered. `handler_failed`: the handler ran and failed (a panic, if
    /// `panicked`); false for a call an open breaker skipped.
    DeadLettered {
        handler_failed: bool,
        panicked: bool,
    },
    /// Its handler failed and a retry is scheduled: reported, and the event's outcome waits on
    /// the hold the subscriber took ([`Context::hold`]).
    Deferred(HandlerFailure<Err>),
}

/// Routes as built: each projection with its entries.
type RouteList<E, Err> = Vec<(<E as Event>::Projection, Vec<Entry<E, Err>>)>;

/// What [`Table::lookup`] finds: the route's slot, and the handlers to run.
pub(crate) type Lookup<'a, E, Err> = (Option<usize>, Option<&'a [Entry<E, Err>]>);

/// One version of the route table, as the run loop uses it: the routes, and each route's
/// projection counters (looked up in the store's [`ProjectionRegistry`] when the version is
/// built, so that the run loop never takes its lock for a routed projection).
pub(crate) struct Table<E: Event, Err> {
    routes: Routes<E::Projection, Entry<E, Err>>,
    /// `counters[slot]`: the counters of the route at `slot` of `routes`; a slot without a
    /// route holds counters nothing reads (so that the run loop's read has no `None` arm).
    counters: Box<[Arc<ProjectionCounters>]>,
}

impl<E: Event, Err> Table<E, Err> {
    fn new(routes: Routes<E::Projection, Entry<E, Err>>, registry: &ProjectionRegistry) -> Self {
        let unused = ProjectionCounters::unlisted();
        let counters = routes
            .slots
            .iter()
            .map(|slot| match slot {
                Some(route) => registry.get(&route.projection),
                None => Arc::clone(&unused),
            })
            .collect();
        Self { routes, counters }
    }

    /// The slot of `projection`'s route, and its handlers; `None` for a projection without a
    /// route, with the catch-all handlers if there are any.
    #[inline(always)]
    pub(crate) fn lookup(&self, projection: &E::Projection) -> Lookup<'_, E, Err> {
        match self.routes.find_route(projection) {
            // A route whose subscriptions are all gone (catch-alls are in every route).
            Some((i, handlers)) => (Some(i), (!handlers.is_empty()).then_some(handlers)),
            None if self.routes.fallback.is_empty() => (None, None),
            None => (None, Some(&self.routes.fallback)),
        }
    }

    /// The counters of the route at `slot` (from [`lookup`](Self::lookup)).
    #[inline(always)]
    pub(crate) fn counters_at(&self, slot: usize) -> &Arc<ProjectionCounters> {
        &self.counters[slot]
    }

    /// The counters of `projection`'s route, if it has one.
    pub(crate) fn counters_of(
        &self,
        projection: &E::Projection,
    ) -> Option<&Arc<ProjectionCounters>> {
        self.routes
            .find(projection)
            .map(|slot| self.counters_at(slot))
    }
}

impl<E: Event, Err> Deref for Table<E, Err> {
    type Target = Routes<E::Projection, Entry<E, Err>>;
    #[inline(always)]
    fn deref(&self) -> &Self::Target {
        &self.routes
    }
}

impl<E: Event, Err> fmt::Debug for Table<E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.routes.fmt(f)
    }
}

/// The route table a store dispatches through: an atomically swapped snapshot
/// (`arc_swap::ArcSwap`), built from the dispatcher's routes when the store is built, and
/// rebuilt by each runtime subscribe and unsubscribe.
///
/// The run loop [`load`](Self::load)s the table once per run of events (a sync chunk of at
/// most 256, a parallel task, or a batch that parallel mode keeps in the caller), never per
/// event, and holds what it loaded for the run: a table swapped meanwhile is seen from the
/// next run on. Loading is lock-free (a thread-local debt slot, no shared write) and the
/// lookups are the frozen table's. Writers rebuild the table under a mutex readers never take.
pub(crate) struct RouteTable<E: Event, Err> {
    current: ArcSwap<Table<E, Err>>,
    /// Serialises rebuilds.
    writer: Mutex<()>,
    /// Every projection's counters: those of the routes, and of projections seen without one.
    projections: ProjectionRegistry,
}

/// A loaded version of the table, valid for one run.
pub(crate) struct Loaded<E: Event, Err>(Guard<Arc<Table<E, Err>>>);

impl<E: Event, Err> Deref for Loaded<E, Err> {
    type Target = Table<E, Err>;
    #[inline(always)]
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<E: Event, Err> RouteTable<E, Err> {
    /// The table of `dispatcher`'s routes.
    pub(crate) fn new(dispatcher: Dispatcher<E, Err>, projections: ProjectionRegistry) -> Self {
        let (routes, catch_all) = dispatcher.into_routes();
        let entries = |handlers: Vec<Handler<E, Err>>| -> Vec<Entry<E, Err>> {
            handlers.into_iter().map(Entry::Handler).collect()
        };
        let routes = routes
            .map(|(key, handlers)| (key, entries(handlers)))
            .collect();
        let table = Table::new(Routes::new(routes, entries(catch_all)), &projections);
        Self {
            current: ArcSwap::from_pointee(table),
            writer: Mutex::new(()),
            projections,
        }
    }

    /// Every projection's counters.
    pub(crate) fn projections(&self) -> &ProjectionRegistry {
        &self.projections
    }

    /// The routes for one run of events.
    #[inline(always)]
    pub(crate) fn load(&self) -> Loaded<E, Err> {
        Loaded(self.current.load())
    }

    /// Adds `entry` after every handler `projection` has (before the catch-all ones).
    pub(crate) fn add(&self, projection: E::Projection, entry: Entry<E, Err>)
    where
        E::Projection: Clone,
    {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.current.load_full();
        let catch_all = old.fallback();
        let mut found = false;
        let mut routes: RouteList<E, Err> = old
            .iter()
            .map(|(key, entries)| {
                let mut entries = entries.to_vec();
                if *key == projection {
                    found = true;
                    let at = entries.len() - catch_all.len();
                    entries.insert(at, entry.clone());
                }
                (key.clone(), entries)
            })
            .collect();
        if !found {
            let mut entries = vec![entry];
            entries.extend(catch_all.iter().cloned());
            routes.push((projection, entries));
        }
        let table = Table::new(Routes::new(routes, catch_all.to_vec()), &self.projections);
        self.current.store(Arc::new(table));
    }

    /// Removes the subscription `id`; returns the table it was in, which the caller may wait
    /// on (`Arc::strong_count`: every run still using it holds a count, since a swap turns
    /// the readers' debts into counts), or `None` if it was not there.
    pub(crate) fn remove(&self, id: u64) -> Option<Arc<Table<E, Err>>>
    where
        E::Projection: Clone,
    {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.current.load_full();
        if !old
            .iter()
            .any(|(_, e)| e.iter().any(|e| e.is_subscription(id)))
        {
            return None;
        }
        let routes = old
            .iter()
            .map(|(key, entries)| {
                let kept = entries.iter().filter(|e| !e.is_subscription(id)).cloned();
                (key.clone(), kept.collect())
            })
            .collect();
        let new = Table::new(
            Routes::new(routes, old.fallback().to_vec()),
            &self.projections,
        );
        drop(old);
        Some(self.current.swap(Arc::new(new)))
    }
}

impl<E: Event, Err> fmt::Debug for RouteTable<E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.current.load().fmt(f)
    }
}

/// Handlers of type `H` by key `K`, frozen.
pub(crate) struct Routes<K, H> {
    /// `slots.len()` is a power of two; a key lives at the first free slot from its home slot.
    slots: Box<[Option<Route<K, H>>]>,
    /// `64 - log2(slots.len())`: the home slot is the hash's top bits, the best-mixed ones.
    shift: u32,
    /// The handlers of a key without a route (catch-all handlers); a miss when empty.
    fallback: Box<[H]>,
}

struct Route<K, H> {
    projection: K,
    handlers: Vec<H>,
}

impl<K: Eq + Hash, H> Routes<K, H> {
    /// Freezes `routes` (keys are distinct); `fallback` runs for the keys not among them.
    pub(crate) fn new(routes: Vec<(K, Vec<H>)>, fallback: Vec<H>) -> Self {
        let len = (routes.len() * 2).next_power_of_two().max(8);
        let mut slots: Box<[Option<Route<K, H>>]> = (0..len).map(|_| None).collect();
        let shift = 64 - len.trailing_zeros();
        let mask = len - 1;
        for (projection, handlers) in routes {
            let mut i = home(&projection, shift);
            while slots[i].is_some() {
                i = (i + 1) & mask;
            }
            slots[i] = Some(Route {
                projection,
                handlers,
            });
        }
        Self {
            slots,
            shift,
            fallback: fallback.into_boxed_slice(),
        }
    }

    /// Adds `handler` after the others of `projection`, growing the table to keep it at most
    /// half full.
    pub(crate) fn push(&mut self, projection: K, handler: H) {
        if let Some(i) = self.find(&projection) {
            if let Some(route) = &mut self.slots[i] {
                route.handlers.push(handler);
            }
            return;
        }
        let routes = self.slots.iter().flatten().count() + 1;
        if routes * 2 > self.slots.len() {
            let mut all: Vec<(K, Vec<H>)> = self
                .slots
                .iter_mut()
                .filter_map(Option::take)
                .map(|r| (r.projection, r.handlers))
                .collect();
            all.push((projection, vec![handler]));
            let fallback = std::mem::take(&mut self.fallback).into_vec();
            *self = Self::new(all, fallback);
            return;
        }
        let mask = self.slots.len() - 1;
        let mut i = home(&projection, self.shift);
        while self.slots[i].is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Some(Route {
            projection,
            handlers: vec![handler],
        });
    }

    /// The slot of `projection`'s route.
    #[inline]
    fn find(&self, projection: &K) -> Option<usize> {
        self.find_route(projection).map(|(slot, _)| slot)
    }

    /// The slot of `projection`'s route and its handlers, read in the one probe.
    #[inline(always)]
    fn find_route(&self, projection: &K) -> Option<(usize, &[H])> {
        let mask = self.slots.len() - 1;
        let mut i = home(projection, self.shift);
        loop {
            // The table is never full (at least twice the routes), so the probe ends.
            match &self.slots[i] {
                Some(route) if route.projection == *projection => {
                    return Some((i, &route.handlers));
                }
                Some(_) => i = (i + 1) & mask,
                None => return None,
            }
        }
    }

    /// The handlers for `projection`, mutably (no fallback); empty if none.
    #[inline]
    pub(crate) fn get_mut(&mut self, projection: &K) -> &mut [H] {
        match self.find(projection) {
            Some(i) => self.slots[i]
                .as_mut()
                .map_or(&mut [][..], |r| &mut r.handlers[..]),
            None => &mut [],
        }
    }

    /// The handlers for `projection`, if any (the fallback when it has no route).
    #[inline]
    pub(crate) fn get(&self, projection: &K) -> Option<&[H]> {
        match self.find_route(projection) {
            Some((_, handlers)) => Some(handlers),
            None if self.fallback.is_empty() => None,
            None => Some(&self.fallback),
        }
    }

    /// How many handlers `projection` has (the fallback's when it has no route).
    pub(crate) fn count(&self, projection: &K) -> usize {
        self.get(projection).map_or(0, <[H]>::len)
    }

    /// Every route: its key and handlers.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &[H])> {
        self.slots
            .iter()
            .flatten()
            .map(|r| (&r.projection, &r.handlers[..]))
    }

    /// The handlers of keys without a route (the catch-all ones).
    pub(crate) fn fallback(&self) -> &[H] {
        &self.fallback
    }
}

#[inline]
fn home<K: Hash>(key: &K, shift: u32) -> usize {
    (hash_of(key) >> shift) as usize
}

/// The table's hash of `key`.
#[inline]
pub(crate) fn hash_of<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = MulHasher::default();
    key.hash(&mut hasher);
    hasher.finish()
}

impl<K, H> Drop for Routes<K, H> {
    /// Keys and handlers (with whatever the handlers captured) are user values: a panic in
    /// their `Drop` is contained here, so that dropping a store never unwinds.
    fn drop(&mut self) {
        for slot in self.slots.iter_mut() {
            panics::drop_contained(slot.take());
        }
        panics::drop_contained(std::mem::take(&mut self.fallback));
    }
}

impl<K: fmt::Debug, H> fmt::Debug for Routes<K, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        map.entries(
            self.slots
                .iter()
                .flatten()
                .map(|r| (&r.projection, r.handlers.len())),
        );
        if !self.fallback.is_empty() {
            // The catch-all handlers (also counted in every route).
            map.entry(&"*", &self.fallback.len());
        }
        map.finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::event::TypeKey;

    /// A table whose "handlers" are numbers: key `n`-th gets `n % 3 + 1` of them, in order.
    fn routes<K: Eq + Hash + Clone>(keys: &[K], fallback: Vec<usize>) -> Routes<K, usize> {
        let routes = keys
            .iter()
            .enumerate()
            .map(|(n, k)| (k.clone(), (0..=n % 3).collect()))
            .collect();
        Routes::new(routes, fallback)
    }

    #[test]
    fn finds_every_route_and_misses_the_rest() {
        let keys: Vec<u32> = (0..500).map(|k| k * 7919).collect();
        let r = routes(&keys, Vec::new());
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(r.get(k).map(<[_]>::len), Some(n % 3 + 1), "key {k}");
        }
        for k in [1u32, 2, 7918, u32::MAX] {
            assert!(r.get(&k).is_none());
        }
        let empty = routes::<u8>(&[], Vec::new());
        assert!(empty.get(&0).is_none());
    }

    #[test]
    fn strings_and_type_keys_route() {
        let r = routes(
            &[
                "order_placed",
                "order_shipped",
                "a-much-longer-projection-name",
            ],
            Vec::new(),
        );
        assert!(r.get(&"order_shipped").is_some());
        assert!(r.get(&"order").is_none());
        struct A;
        struct B;
        let t = routes(&[TypeKey::of::<A>()], Vec::new());
        assert!(t.get(&TypeKey::of::<A>()).is_some());
        assert!(t.get(&TypeKey::of::<B>()).is_none());
    }

    #[test]
    fn push_adds_in_order_and_grows() {
        let mut r = Routes::<u32, u32>::new(Vec::new(), Vec::new());
        for k in 0..100u32 {
            r.push(k, k);
            r.push(k, k + 1000);
        }
        for k in 0..100u32 {
            assert_eq!(r.get(&k), Some(&[k, k + 1000][..]));
            r.get_mut(&k)[0] += 1;
            assert_eq!(r.count(&k), 2);
        }
        assert_eq!(r.get(&7), Some(&[8, 1007][..]));
        assert!(r.get_mut(&100).is_empty());
    }

    #[test]
    fn handlers_keep_their_order_and_a_miss_gets_the_fallback() {
        let r = routes(&[10u8, 20, 30], vec![7, 8]);
        assert_eq!(r.get(&30), Some(&[0, 1, 2][..]));
        assert_eq!(r.get(&99), Some(&[7, 8][..]));
        let debug = format!("{r:?}");
        for entry in ["10: 1", "20: 2", "30: 3"] {
            assert!(debug.contains(entry), "{debug}");
        }
        assert!(
            debug.ends_with(r#""*": 2}"#),
            "the catch-alls last: {debug}"
        );
    }
}

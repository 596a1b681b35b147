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

use super::dispatcher::{Dispatcher, Handler};
use crate::event::Event;
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

/// The route table a store dispatches through: the seam where the subscription layer will
/// swap in a new table at run time (an atomically replaced snapshot). Today it holds the
/// dispatcher's routes, frozen when the store is built.
///
/// The run loop [`load`](Self::load)s the table once per run of events (a sync chunk of at
/// most 256, a parallel task, or a batch that parallel mode keeps in the caller), never per
/// event, and holds what it loaded for the run: a table swapped meanwhile is seen from the
/// next run on.
pub(crate) struct RouteTable<E: Event, Err> {
    frozen: Routes<E::Projection, Handler<E, Err>>,
}

impl<E: Event, Err> RouteTable<E, Err> {
    /// The table of `dispatcher`'s routes.
    pub(crate) fn new(dispatcher: Dispatcher<E, Err>) -> Self {
        let (routes, catch_all) = dispatcher.into_routes();
        Self {
            frozen: Routes::new(routes.collect(), catch_all),
        }
    }

    /// The routes for one run of events: a guard, so that a swappable table can hand out a
    /// snapshot that stays valid for the run (today, a plain reference to the frozen table).
    #[inline(always)]
    pub(crate) fn load(&self) -> impl Deref<Target = Routes<E::Projection, Handler<E, Err>>> + '_ {
        &self.frozen
    }
}

impl<E: Event, Err> fmt::Debug for RouteTable<E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.frozen.fmt(f)
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
        let mask = self.slots.len() - 1;
        let mut i = home(projection, self.shift);
        loop {
            // The table is never full (at least twice the routes), so the probe ends.
            match &self.slots[i] {
                Some(route) if route.projection == *projection => return Some(i),
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
        match self.find(projection) {
            Some(i) => self.slots[i].as_ref().map(|r| &r.handlers[..]),
            None if self.fallback.is_empty() => None,
            None => Some(&self.fallback),
        }
    }

    /// How many handlers `projection` has (the fallback's when it has no route).
    pub(crate) fn count(&self, projection: &K) -> usize {
        self.get(projection).map_or(0, <[H]>::len)
    }
}

#[inline]
fn home<K: Hash>(key: &K, shift: u32) -> usize {
    let mut hasher = MulHasher::default();
    key.hash(&mut hasher);
    (hasher.finish() >> shift) as usize
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

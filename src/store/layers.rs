//! The seam through which layers built on the core attach to a store: per-store state that the
//! store holds without naming its type, and that hears about shutdown.
//!
//! The core never imports a layer. A layer (the timer of `schedule/` today) implements
//! [`Layer`] and registers itself on first use with [`EventStore::layer`]; the store keeps it
//! until it is dropped, tells it when it closes ([`Layer::shut_down`], so `close` names no
//! layer), and lets it fill in its own fields of a [`Metrics`] snapshot. A layer reaches back
//! into the store through a [`WeakStore`], which never keeps the store alive.

use std::any::Any;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use super::{EventStore, Shared};
use crate::event::Event;
use crate::metrics::Metrics;

/// A part of the store built on top of the core, registered with [`EventStore::layer`].
pub(crate) trait Layer<E>: Send + Sync + 'static {
    /// The store is closing (its ring is closed already, so nothing more gets in) or being
    /// dropped: stop, and hand back the events held that never reached the ring, for the store
    /// to drop (their `Drop` is user code, contained and counted there). Called again by a
    /// second `close`; must be idempotent.
    fn shut_down(&self) -> Vec<E>;

    /// Fills in the layer's own fields of a metrics snapshot.
    fn add_metrics(&self, metrics: &mut Metrics);
}

/// The most layers a store holds: one per layer type of this crate (the timer today; the
/// subscription, observability and bridge layers to come), with room to spare.
const MAX_LAYERS: usize = 8;

/// A store's layers, in registration order.
///
/// Lookups and metrics read the slots without a lock (each a set-once cell), so scheduling
/// and `metrics()` stay lock-free once a layer is registered; registering and shutting down
/// take `register`, a std mutex (also under loom: no user code and no loom operation runs
/// under it).
pub(super) struct Layers<E> {
    slots: [OnceLock<Registered<E>>; MAX_LAYERS],
    /// Held to register or to shut down; `true` once shut down, so that a layer registered
    /// later starts shut down.
    register: Mutex<bool>,
}

/// A registered layer, type-erased. Its [`Layer`] methods are kept as function pointers
/// rather than a `dyn Layer<E>`, which would need `E: 'static` wherever the store is named
/// (its `Drop` included).
struct Registered<E> {
    layer: Arc<dyn Any + Send + Sync>,
    shut_down: fn(&(dyn Any + Send + Sync)) -> Vec<E>,
    add_metrics: fn(&(dyn Any + Send + Sync), &mut Metrics),
}

impl<E> Registered<E> {
    fn new<L: Layer<E>>(layer: Arc<L>) -> Self {
        Self {
            layer,
            shut_down: |layer| {
                layer
                    .downcast_ref::<L>()
                    .map_or_else(Vec::new, L::shut_down)
            },
            add_metrics: |layer, metrics| {
                if let Some(layer) = layer.downcast_ref::<L>() {
                    layer.add_metrics(metrics);
                }
            },
        }
    }
}

impl<E> Default for Layers<E> {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| OnceLock::new()),
            register: Mutex::new(false),
        }
    }
}

impl<E> Layers<E> {
    /// The registered layers, in order.
    fn registered(&self) -> impl Iterator<Item = &Registered<E>> {
        self.slots.iter().map_while(OnceLock::get)
    }

    /// The layer of type `L`, if registered. Lock-free.
    pub(super) fn find<L: Layer<E>>(&self) -> Option<Arc<L>> {
        self.registered()
            .find_map(|r| r.layer.clone().downcast::<L>().ok())
    }

    /// The layer of type `L`, made with `make` and registered if it is not there yet; and
    /// whether the store is already shut down (the caller then shuts the new layer down, out
    /// of the lock).
    fn get_or_register<L: Layer<E>>(&self, make: impl FnOnce() -> L) -> (Arc<L>, bool) {
        if let Some(layer) = self.find::<L>() {
            return (layer, false);
        }
        let shut = self.register.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(layer) = self.find::<L>() {
            return (layer, false);
        }
        let layer = Arc::new(make());
        let registered = self.registered().count();
        assert!(
            registered < MAX_LAYERS,
            "ringbus: more layers than MAX_LAYERS"
        );
        let _ = self.slots[registered].set(Registered::new(layer.clone()));
        (layer, *shut)
    }

    /// Shuts every layer down, and any registered later; returns what they held.
    pub(super) fn shut_down(&self) -> Vec<E> {
        {
            let mut shut = self.register.lock().unwrap_or_else(PoisonError::into_inner);
            *shut = true;
        }
        // Outside the lock: a layer may wait for its own thread, which may register. A layer
        // registered from here on sees the flag and is shut down by its registrar.
        self.registered()
            .flat_map(|r| (r.shut_down)(&*r.layer))
            .collect()
    }

    /// Lets every layer fill in its fields of `metrics`. Lock-free.
    pub(super) fn add_metrics(&self, metrics: &mut Metrics) {
        for registered in self.registered() {
            (registered.add_metrics)(&*registered.layer, metrics);
        }
    }
}

/// A handle that does not keep the store alive (a layer's thread holds one).
pub(crate) struct WeakStore<E: Event, Err>(Weak<Shared<E, Err>>);

impl<E: Event, Err> WeakStore<E, Err> {
    /// The store, unless every handle to it has been dropped.
    pub(crate) fn upgrade(&self) -> Option<EventStore<E, Err>> {
        self.0.upgrade().map(|shared| EventStore { shared })
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// The store's layer of type `L`, made with `make` and registered on first use. A layer
    /// registered after `close` starts shut down.
    pub(crate) fn layer<L: Layer<E>>(&self, make: impl FnOnce() -> L) -> Arc<L> {
        let (layer, shut) = self.shared.layers.get_or_register(make);
        if shut {
            for event in layer.shut_down() {
                self.shared.drop_event(None, event);
            }
        }
        layer
    }

    /// The layer of type `L`, if one was registered.
    pub(crate) fn find_layer<L: Layer<E>>(&self) -> Option<Arc<L>> {
        self.shared.layers.find::<L>()
    }

    /// A handle that does not keep the store alive.
    pub(crate) fn downgrade(&self) -> WeakStore<E, Err> {
        WeakStore(Arc::downgrade(&self.shared))
    }

    /// Drops an event a layer held that never reached the ring (a scheduled one), containing
    /// a panic in its `Drop`.
    pub(crate) fn discard_unsequenced(&self, event: E) {
        self.shared.drop_event(None, event);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A layer holding events until it is shut down.
    #[derive(Default)]
    struct Holder {
        held: Mutex<Vec<u32>>,
        shut_downs: AtomicU64,
    }

    impl Layer<u32> for Holder {
        fn shut_down(&self) -> Vec<u32> {
            self.shut_downs.fetch_add(1, Ordering::Relaxed);
            std::mem::take(&mut *self.held.lock().unwrap())
        }

        fn add_metrics(&self, metrics: &mut Metrics) {
            metrics.scheduled = self.held.lock().unwrap().len() as u64;
        }
    }

    #[test]
    fn one_layer_per_type_and_shutdown_returns_what_it_held() {
        let layers = Layers::<u32>::default();
        let (a, shut) = layers.get_or_register(Holder::default);
        assert!(!shut);
        a.held.lock().unwrap().extend([1, 2, 3]);
        let (again, _) = layers.get_or_register(|| -> Holder { panic!("made twice") });
        assert!(Arc::ptr_eq(&a, &again));
        let mut metrics = Metrics::default();
        layers.add_metrics(&mut metrics);
        assert_eq!(metrics.scheduled, 3);
        assert_eq!(layers.shut_down(), [1, 2, 3]);
        assert_eq!(layers.shut_down(), [] as [u32; 0]);
        assert_eq!(a.shut_downs.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_layer_registered_after_shutdown_starts_shut_down() {
        let layers = Layers::<u32>::default();
        assert!(layers.shut_down().is_empty());
        let (late, shut) = layers.get_or_register(Holder::default);
        assert!(shut, "the registrar is told to shut the late layer down");
        assert_eq!(
            late.shut_downs.load(Ordering::Relaxed),
            0,
            "not under the lock"
        );
    }
}

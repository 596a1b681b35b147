//! The seam through which layers built on the core attach to a store: per-store state that the
//! store holds without naming its type, and that hears about shutdown.
//!
//! The core never imports a layer. A layer (the timer of `schedule/` today) implements
//! [`Layer`] and registers itself on first use with [`EventStore::layer`]; the store keeps it
//! until it is dropped, tells it when it closes ([`Layer::shut_down`], so `close` names no
//! layer), and lets it fill in its own fields of a [`Metrics`] snapshot. A layer reaches back
//! into the store through a [`WeakStore`], which never keeps the store alive.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError, Weak};

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

/// A store's layers, in registration order.
///
/// Behind a std mutex, also under loom: registering, closing and reading metrics are rare,
/// and no user code runs under the lock.
pub(super) struct Layers<E> {
    state: Mutex<State<E>>,
}

struct State<E> {
    layers: Vec<Registered<E>>,
    /// Set by the first shutdown: a layer registered later is shut down at once.
    shut: bool,
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

impl<E> Clone for Registered<E> {
    fn clone(&self) -> Self {
        Self {
            layer: Arc::clone(&self.layer),
            shut_down: self.shut_down,
            add_metrics: self.add_metrics,
        }
    }
}

impl<E> Default for Layers<E> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                layers: Vec::new(),
                shut: false,
            }),
        }
    }
}

impl<E> Layers<E> {
    /// The layer of type `L`, made with `make` and registered if it is not there yet.
    fn get_or_register<L: Layer<E>>(&self, make: impl FnOnce() -> L) -> (Arc<L>, Vec<E>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let found = state
            .layers
            .iter()
            .find_map(|r| r.layer.clone().downcast::<L>().ok());
        if let Some(layer) = found {
            return (layer, Vec::new());
        }
        let layer = Arc::new(make());
        // After a shutdown a new layer starts shut down (it holds nothing yet to hand back).
        let held = if state.shut {
            layer.shut_down()
        } else {
            Vec::new()
        };
        state.layers.push(Registered::new(layer.clone()));
        (layer, held)
    }

    /// Shuts every layer down, and any registered later; returns what they held.
    pub(super) fn shut_down(&self) -> Vec<E> {
        let layers: Vec<_> = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.shut = true;
            state.layers.clone()
        };
        // Outside the lock: a layer may wait for its own thread, which may register.
        layers
            .iter()
            .flat_map(|r| (r.shut_down)(&*r.layer))
            .collect()
    }

    /// Lets every layer fill in its fields of `metrics`.
    pub(super) fn add_metrics(&self, metrics: &mut Metrics) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for registered in &state.layers {
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
        let (layer, held) = self.shared.layers.get_or_register(make);
        for event in held {
            self.shared.drop_event(None, event);
        }
        layer
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
        let (a, held) = layers.get_or_register(Holder::default);
        assert!(held.is_empty());
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
        let (late, held) = layers.get_or_register(Holder::default);
        assert!(held.is_empty());
        assert_eq!(late.shut_downs.load(Ordering::Relaxed), 1);
    }
}

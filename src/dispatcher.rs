//! The dispatcher: which handlers run for which projection.
//!
//! Every event names its *projection* (GoEventBus's word for the routing key) through the
//! [`Event`] trait; a [`Dispatcher`] maps each projection to the handlers registered for it, in
//! registration order. Keys are any `Eq + Hash` type: a `&'static str`, an enum, an integer, or
//! a [`TypeKey`] naming a marker type, as GoEventBus lets a struct be a key.

use std::any::TypeId;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::Instant;

use ahash::AHashMap;

/// The error type handlers return unless the dispatcher names another.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An event that can be routed: it names its projection.
///
/// The projection is returned by value once per dispatch, so make it cheap to produce: a
/// `&'static str`, a `Copy` enum or integer, or a [`TypeKey`].
///
/// ```
/// #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// enum Kind { Moved, Died }
///
/// struct GameEvent { kind: Kind, entity: u32 }
///
/// impl ringbus::Event for GameEvent {
///     type Projection = Kind;
///     fn projection(&self) -> Kind { self.kind }
/// }
/// ```
pub trait Event {
    /// The routing key.
    type Projection: Eq + Hash + fmt::Debug + Send + Sync + 'static;

    /// This event's routing key.
    fn projection(&self) -> Self::Projection;
}

/// A projection named by a Rust type, for keying handlers by marker structs.
///
/// ```
/// use ringbus::TypeKey;
/// struct OrderPlaced;
/// struct OrderShipped;
/// assert_eq!(TypeKey::of::<OrderPlaced>(), TypeKey::of::<OrderPlaced>());
/// assert_ne!(TypeKey::of::<OrderPlaced>(), TypeKey::of::<OrderShipped>());
/// assert!(format!("{:?}", TypeKey::of::<OrderPlaced>()).ends_with("OrderPlaced"));
/// ```
#[derive(Clone, Copy)]
pub struct TypeKey {
    id: TypeId,
    name: &'static str,
}

impl TypeKey {
    /// The key of type `T`.
    pub fn of<T: ?Sized + 'static>() -> Self {
        Self {
            id: TypeId::of::<T>(),
            name: std::any::type_name::<T>(),
        }
    }

    /// The type's name, as `std::any::type_name` gives it.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl PartialEq for TypeKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for TypeKey {}

impl Hash for TypeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl fmt::Debug for TypeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// What a handler knows about the event it is handling besides the event itself.
#[derive(Debug)]
pub struct Context<'a, K> {
    pub(crate) sequence: u64,
    pub(crate) projection: &'a K,
    pub(crate) deadline: Option<Instant>,
}

impl<K> Context<'_, K> {
    /// The event's sequence number: its position in the store's total order of enqueues,
    /// starting at 0. Unique per store.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The projection the event was routed by.
    pub fn projection(&self) -> &K {
        self.projection
    }

    /// The deadline of the publish running this handler, if it has one
    /// ([`EventStore::close`](crate::EventStore::close) sets one). A long handler should check
    /// [`is_expired`](Self::is_expired) and wrap up.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// True once the deadline has passed. Reads the clock; without a deadline, always false.
    pub fn is_expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// A registered handler.
pub(crate) type Handler<E, Err> = Box<
    dyn Fn(&Context<'_, <E as Event>::Projection>, &E) -> Result<(), Err> + Send + Sync + 'static,
>;

/// Maps projections to handlers. Build one, then give it to an
/// [`EventStore`](crate::EventStore).
///
/// `Err` is the error type handlers return; it defaults to [`BoxError`].
///
/// ```
/// use ringbus::{Dispatcher, Event};
///
/// struct Ping(u32);
/// impl Event for Ping {
///     type Projection = &'static str;
///     fn projection(&self) -> &'static str { "ping" }
/// }
///
/// let mut dispatcher = Dispatcher::<Ping>::new();
/// dispatcher
///     .on("ping", |_ctx, ping| { assert!(ping.0 < 10); Ok(()) })
///     .on("ping", |ctx, _| { println!("ping #{}", ctx.sequence()); Ok(()) });
/// assert_eq!(dispatcher.handler_count(&"ping"), 2);
/// assert_eq!(dispatcher.handler_count(&"pong"), 0);
/// ```
pub struct Dispatcher<E: Event, Err = BoxError> {
    routes: AHashMap<E::Projection, Vec<Handler<E, Err>>>,
}

impl<E: Event, Err> Dispatcher<E, Err> {
    /// An empty dispatcher.
    pub fn new() -> Self {
        Self {
            routes: AHashMap::new(),
        }
    }

    /// Registers `handler` for `projection`. Handlers of one projection run in registration
    /// order; every one runs even if an earlier one fails.
    pub fn on<F>(&mut self, projection: E::Projection, handler: F) -> &mut Self
    where
        F: Fn(&Context<'_, E::Projection>, &E) -> Result<(), Err> + Send + Sync + 'static,
    {
        self.routes
            .entry(projection)
            .or_default()
            .push(Box::new(handler));
        self
    }

    /// How many handlers `projection` has.
    pub fn handler_count(&self, projection: &E::Projection) -> usize {
        self.routes.get(projection).map_or(0, Vec::len)
    }

    /// The projections that have at least one handler.
    pub fn projections(&self) -> impl Iterator<Item = &E::Projection> {
        self.routes.keys()
    }

    /// The routes, for the store to freeze.
    pub(crate) fn into_routes(self) -> AHashMap<E::Projection, Vec<Handler<E, Err>>> {
        self.routes
    }
}

impl<E: Event<Projection = TypeKey>, Err> Dispatcher<E, Err> {
    /// Registers `handler` for the projection named by the marker type `M`
    /// (`on(TypeKey::of::<M>(), handler)`).
    ///
    /// ```
    /// use ringbus::{Dispatcher, Event, TypeKey};
    ///
    /// struct UserCreated;
    /// struct Ev { kind: TypeKey, id: u64 }
    /// impl Event for Ev {
    ///     type Projection = TypeKey;
    ///     fn projection(&self) -> TypeKey { self.kind }
    /// }
    ///
    /// let mut dispatcher = Dispatcher::<Ev>::new();
    /// dispatcher.on_type::<UserCreated, _>(|_, ev| { assert!(ev.id > 0); Ok(()) });
    /// assert_eq!(dispatcher.handler_count(&TypeKey::of::<UserCreated>()), 1);
    /// ```
    pub fn on_type<M: ?Sized + 'static, F>(&mut self, handler: F) -> &mut Self
    where
        F: Fn(&Context<'_, TypeKey>, &E) -> Result<(), Err> + Send + Sync + 'static,
    {
        self.on(TypeKey::of::<M>(), handler)
    }
}

impl<E: Event, Err> Default for Dispatcher<E, Err> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Event, Err> fmt::Debug for Dispatcher<E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.routes.iter().map(|(k, v)| (k, v.len())))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Ev(&'static str);
    impl Event for Ev {
        type Projection = &'static str;
        fn projection(&self) -> &'static str {
            self.0
        }
    }

    #[test]
    fn routes_in_registration_order() {
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut d = Dispatcher::<Ev>::new();
        for i in 0..3 {
            let seen = seen.clone();
            d.on("a", move |_, _| {
                seen.lock().unwrap().push(i);
                Ok(())
            });
        }
        let ctx = Context {
            sequence: 0,
            projection: &"a",
            deadline: None,
        };
        assert_eq!(format!("{d:?}"), r#"{"a": 3}"#);
        for h in &d.into_routes()[&"a"] {
            h(&ctx, &Ev("a")).unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), [0, 1, 2]);
    }

    #[test]
    fn context_expiry_follows_deadline() {
        let past = Context {
            sequence: 7,
            projection: &1u8,
            deadline: Some(Instant::now()),
        };
        assert!(past.is_expired());
        assert_eq!(past.sequence(), 7);
        let none = Context {
            sequence: 0,
            projection: &1u8,
            deadline: None,
        };
        assert!(!none.is_expired());
    }
}

//! The [`Dispatcher`]: which handlers run for which projection, registered before the store is
//! built; and [`Variant`], for handlers that take one variant's payload, typed.

use std::fmt;
use std::sync::Arc;

use ahash::AHashMap;

use super::Context;
use crate::event::{BoxError, Event, TypeKey};

/// A registered handler. Shared (`Arc`) so that a catch-all handler can sit in every route of
/// the frozen table.
pub(crate) type Handler<E, Err> =
    Arc<dyn Fn(&Context<'_, E, Err>, &E) -> Result<(), Err> + Send + Sync + 'static>;

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
    /// Handlers for every event, after the projection's own.
    catch_all: Vec<Handler<E, Err>>,
}

impl<E: Event, Err> Dispatcher<E, Err> {
    /// An empty dispatcher.
    pub fn new() -> Self {
        Self {
            routes: AHashMap::new(),
            catch_all: Vec::new(),
        }
    }

    /// Registers `handler` for `projection`. Handlers of one projection run in registration
    /// order; every one runs even if an earlier one fails.
    pub fn on<F>(&mut self, projection: E::Projection, handler: F) -> &mut Self
    where
        F: Fn(&Context<'_, E, Err>, &E) -> Result<(), Err> + Send + Sync + 'static,
    {
        self.routes
            .entry(projection)
            .or_default()
            .push(Arc::new(handler));
        self
    }

    /// Registers `handler` for every event, whatever its projection (a stats or audit
    /// system). Catch-all handlers run after the projection's own handlers, in registration
    /// order among themselves; an event with no handler but a catch-all is not unrouted.
    ///
    /// ```
    /// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// struct Ev(u8);
    /// impl Event for Ev {
    ///     type Projection = u8;
    ///     fn projection(&self) -> u8 { self.0 }
    /// }
    /// let seen = Arc::new(AtomicU64::new(0));
    /// let mut dispatcher = Dispatcher::<Ev>::new();
    /// let count = seen.clone();
    /// dispatcher.on(1, |_, _| Ok(())).on_any(move |_, _| {
    ///     count.fetch_add(1, Ordering::Relaxed);
    ///     Ok(())
    /// });
    /// assert_eq!(dispatcher.handler_count(&1), 2);
    /// let store = EventStore::new(dispatcher, 8, OverrunPolicy::ReturnError)?;
    /// for key in [1, 2, 3] {
    ///     store.enqueue(Ev(key))?;
    /// }
    /// let report = store.publish();
    /// assert_eq!((report.processed, report.unrouted), (3, 0));
    /// assert_eq!(seen.load(Ordering::Relaxed), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_any<F>(&mut self, handler: F) -> &mut Self
    where
        F: Fn(&Context<'_, E, Err>, &E) -> Result<(), Err> + Send + Sync + 'static,
    {
        self.catch_all.push(Arc::new(handler));
        self
    }

    /// Registers `handler` for the events of one variant, `V`, taking its payload typed: see
    /// [`Variant`] and [`event_enum!`](crate::event_enum). The handler is registered for
    /// `V::projection()`; an event routed to it that is not a `V` (a hand-written `Variant`
    /// whose `projection` and `payload` disagree) does not run it.
    pub fn on_variant<V, F>(&mut self, handler: F) -> &mut Self
    where
        V: Variant<E>,
        F: Fn(&Context<'_, E, Err>, &V) -> Result<(), Err> + Send + Sync + 'static,
    {
        self.on(V::projection(), move |ctx, event| match V::payload(event) {
            Some(payload) => handler(ctx, payload),
            None => Ok(()),
        })
    }

    /// How many handlers run for `projection`, catch-all handlers included.
    pub fn handler_count(&self, projection: &E::Projection) -> usize {
        self.routes.get(projection).map_or(0, Vec::len) + self.catch_all.len()
    }

    /// The projections that have at least one handler of their own.
    pub fn projections(&self) -> impl Iterator<Item = &E::Projection> {
        self.routes.keys()
    }

    /// The routes with the catch-all handlers appended to each, and the catch-all handlers
    /// (for projections without routes of their own), for the store to freeze.
    #[allow(clippy::type_complexity)] // two plain parts, named in the doc line
    pub(crate) fn into_routes(
        self,
    ) -> (
        impl Iterator<Item = (E::Projection, Vec<Handler<E, Err>>)>,
        Vec<Handler<E, Err>>,
    ) {
        let catch_all = self.catch_all;
        let every = catch_all.clone();
        let routes = self.routes.into_iter().map(move |(key, mut handlers)| {
            handlers.extend(every.iter().cloned());
            (key, handlers)
        });
        (routes, catch_all)
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
    /// dispatcher.on_type::<UserCreated>(|_, ev| { assert!(ev.id > 0); Ok(()) });
    /// assert_eq!(dispatcher.handler_count(&TypeKey::of::<UserCreated>()), 1);
    /// ```
    pub fn on_type<M: ?Sized + 'static>(
        &mut self,
        handler: impl Fn(&Context<'_, E, Err>, &E) -> Result<(), Err> + Send + Sync + 'static,
    ) -> &mut Self {
        self.on(TypeKey::of::<M>(), handler)
    }
}

impl<E: Event, Err> Default for Dispatcher<E, Err> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Event, Err> fmt::Debug for Dispatcher<E, Err> {
    /// Each projection with its handler count; catch-all handlers under `"*"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        map.entries(self.routes.iter().map(|(k, v)| (k, v.len())));
        if !self.catch_all.is_empty() {
            map.entry(&"*", &self.catch_all.len());
        }
        map.finish()
    }
}

/// One variant of an event enum, implemented by the variant's payload type: lets a handler
/// take the payload typed ([`Dispatcher::on_variant`]), without matching the whole enum and
/// without boxing. [`event_enum!`](crate::event_enum) writes these impls.
pub trait Variant<E: Event>: Sized + 'static {
    /// The projection of every event of this variant.
    fn projection() -> E::Projection;

    /// The payload, if `event` is this variant.
    fn payload(event: &E) -> Option<&Self>;
}

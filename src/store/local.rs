//! [`LocalDispatcher`]: handlers that borrow the caller's state mutably, run by
//! [`EventStore::publish_with`] on the calling thread, so the state needs no `Send`, no `Sync`
//! and no lock.

use std::fmt;
use std::time::Instant;

use super::dispatcher::Variant;
use super::routes::Routes;
use super::{Context, EventStore, PublishReport};
use crate::event::{BoxError, Event};

/// A local handler: `FnMut`, neither `Send` nor `Sync`, given the caller's state.
pub(crate) type LocalHandler<E, S, Err> =
    Box<dyn FnMut(&mut S, &Context<'_, E, Err>, &E) -> Result<(), Err>>;

/// An event's local handlers, with the state to give them.
pub(crate) type LocalRun<'a, E, S, Err> = (&'a mut [LocalHandler<E, S, Err>], &'a mut S);

/// Handlers run after the store's own for each event, with the caller's state: those of
/// [`EventStore::publish_with`]. Every other path passes [`NoLocal`], which has none, so the
/// run loop compiles to what it was without them.
pub(crate) trait LocalHandlers<E: Event, Err> {
    /// The state the handlers borrow.
    type State;

    /// The handlers for `projection` (empty if none), and the state to give them.
    fn get(&mut self, projection: &E::Projection) -> LocalRun<'_, E, Self::State, Err>;
}

/// No local handlers.
pub(crate) struct NoLocal;

impl<E: Event, Err> LocalHandlers<E, Err> for NoLocal {
    type State = NoLocal;

    #[inline(always)]
    fn get(&mut self, _: &E::Projection) -> LocalRun<'_, E, NoLocal, Err> {
        (&mut [], self)
    }
}

/// A [`LocalDispatcher`]'s handlers with the state of one `publish_with` call.
struct WithState<'a, E: Event, S, Err> {
    routes: &'a mut Routes<E::Projection, LocalHandler<E, S, Err>>,
    state: &'a mut S,
}

impl<E: Event, S, Err> LocalHandlers<E, Err> for WithState<'_, E, S, Err> {
    type State = S;

    #[inline(always)]
    fn get(&mut self, projection: &E::Projection) -> LocalRun<'_, E, S, Err> {
        (self.routes.get_mut(projection), self.state)
    }
}

/// Handlers keyed by projection, like a [`Dispatcher`](crate::Dispatcher)'s, that get the
/// caller's state as `&mut S`: run by [`EventStore::publish_with`] on the calling thread, they
/// need neither `Send` nor `Sync` (a game's world, an order book), take no lock, and may be
/// `FnMut`. Kept by the caller, not the store, so they can change between calls.
///
/// ```
/// use ringbus::{Dispatcher, Event, EventStore, LocalDispatcher, OverrunPolicy};
/// use std::cell::Cell;
///
/// struct Deposit(u64);
/// impl Event for Deposit {
///     type Projection = ();
///     fn projection(&self) {}
/// }
///
/// struct Ledger { total: u64, audit: Cell<u32> } // not `Sync`
///
/// let store = EventStore::new(Dispatcher::<Deposit>::new(), 64, OverrunPolicy::ReturnError)?;
/// let mut handlers = LocalDispatcher::<Deposit, Ledger>::new();
/// handlers.on((), |ledger, _ctx, d| {
///     ledger.total += d.0;
///     ledger.audit.set(ledger.audit.get() + 1);
///     Ok(())
/// });
/// let mut ledger = Ledger { total: 0, audit: Cell::new(0) };
/// for amount in 1..=10 {
///     store.enqueue(Deposit(amount))?;
/// }
/// let report = store.publish_with(&mut handlers, &mut ledger);
/// assert_eq!((report.processed, ledger.total, ledger.audit.get()), (10, 55, 10));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LocalDispatcher<E: Event, S, Err = BoxError> {
    routes: Routes<E::Projection, LocalHandler<E, S, Err>>,
}

impl<E: Event, S, Err> LocalDispatcher<E, S, Err> {
    /// No handlers.
    pub fn new() -> Self {
        Self {
            routes: Routes::new(Vec::new(), Vec::new()),
        }
    }

    /// Registers `handler` for `projection`, after its others. For each event, the store's
    /// own handlers run first, then these, in registration order; every one runs even if an
    /// earlier one fails.
    pub fn on<F>(&mut self, projection: E::Projection, handler: F) -> &mut Self
    where
        F: FnMut(&mut S, &Context<'_, E, Err>, &E) -> Result<(), Err> + 'static,
    {
        self.routes.push(projection, Box::new(handler));
        self
    }

    /// Registers `handler` for the events of one variant, `V`, taking its payload typed (as
    /// [`Dispatcher::on_variant`](crate::Dispatcher::on_variant)).
    pub fn on_variant<V, F>(&mut self, mut handler: F) -> &mut Self
    where
        V: Variant<E>,
        F: FnMut(&mut S, &Context<'_, E, Err>, &V) -> Result<(), Err> + 'static,
    {
        self.on(V::projection(), move |state, ctx, event| {
            match V::payload(event) {
                Some(payload) => handler(state, ctx, payload),
                None => Ok(()),
            }
        })
    }

    /// How many handlers `projection` has here.
    pub fn handler_count(&self, projection: &E::Projection) -> usize {
        self.routes.count(projection)
    }
}

impl<E: Event, S, Err> Default for LocalDispatcher<E, S, Err> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Event, S, Err> fmt::Debug for LocalDispatcher<E, S, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.routes.fmt(f)
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Dispatches the events enqueued before the call, as a [`DispatchMode::Sync`] publish
    /// does whatever the store's mode (in the caller, in sequence order), running for each
    /// event the store's handlers and then `handlers`' with `state`. Failures, panics,
    /// accounting and the `on_error` hook are as for [`publish`](Self::publish).
    ///
    /// [`DispatchMode::Sync`]: crate::DispatchMode::Sync
    pub fn publish_with<S>(
        &self,
        handlers: &mut LocalDispatcher<E, S, Err>,
        state: &mut S,
    ) -> PublishReport {
        self.publish_with_deadline(handlers, state, None)
    }

    /// [`publish_with`](Self::publish_with), stopping between chunks once `deadline` passes
    /// (which the handlers see in their context).
    pub(super) fn publish_with_deadline<S>(
        &self,
        handlers: &mut LocalDispatcher<E, S, Err>,
        state: &mut S,
        deadline: Option<Instant>,
    ) -> PublishReport {
        let mut locals = WithState {
            routes: &mut handlers.routes,
            state,
        };
        let mut report = PublishReport::default();
        for (lane, limit) in self.shared.tails() {
            let depth = limit.saturating_sub(lane.ring.head());
            self.shared.counters.note_depth(depth);
            report += self.publish_in_caller(lane, limit, deadline, &mut locals);
        }
        report
    }
}

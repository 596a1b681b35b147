//! What an event is: the [`Event`] trait and its *projection* (GoEventBus's word for the
//! routing key), [`TypeKey`] for keys named by a Rust type, and the default handler error
//! [`BoxError`]. Keys are any `Eq + Hash` type: a `&'static str`, an enum, an integer, or a
//! [`TypeKey`] naming a marker type, as GoEventBus lets a struct be a key.

use std::any::TypeId;
use std::fmt;
use std::hash::{Hash, Hasher};

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

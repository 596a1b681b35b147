//! [`event_enum!`]: an event enum whose variants carry typed payloads, with its projection
//! enum, its [`Event`](crate::Event) impl and one [`Variant`](crate::Variant) impl per payload.

/// Declares an event enum whose variants each carry one payload type, and writes what routing
/// needs: a projection enum with one unit variant per event variant (`Copy`, `Eq`, `Hash`,
/// `Debug`), the [`Event`](crate::Event) impl, a [`Variant`](crate::Variant) impl per payload
/// type (so [`Dispatcher::on_variant`](crate::Dispatcher::on_variant) hands handlers the
/// payload typed), and `From<Payload>` for the enum. Events stay plain values: no boxing, no
/// `dyn Any`. Each payload type may appear in one variant only.
///
/// ```
/// use ringbus::{Dispatcher, EventStore, OverrunPolicy};
///
/// #[derive(Debug)]
/// pub struct Damage { pub entity: u32, pub amount: i32 }
/// #[derive(Debug)]
/// pub struct Died { pub entity: u32 }
///
/// ringbus::event_enum! {
///     /// What happens in the game.
///     #[derive(Debug)]
///     pub enum GameEvent / GameKind {
///         Damaged(Damage),
///         Died(Died),
///     }
/// }
///
/// let mut dispatcher = Dispatcher::<GameEvent>::new();
/// dispatcher.on_variant(|ctx, hit: &Damage| {
///     if hit.amount > 10 {
///         ctx.store().enqueue(Died { entity: hit.entity }.into())?;
///     }
///     Ok(())
/// });
/// dispatcher.on_variant(|_, died: &Died| {
///     println!("entity {} died", died.entity);
///     Ok(())
/// });
/// let store = EventStore::new(dispatcher, 64, OverrunPolicy::ReturnError)?;
/// store.enqueue(Damage { entity: 7, amount: 50 }.into())?;
/// assert_eq!(store.publish().processed, 1);
/// assert_eq!(store.publish().processed, 1); // the follow-up `Died`
/// assert_eq!(ringbus::Event::projection(&GameEvent::from(Died { entity: 1 })), GameKind::Died);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[macro_export]
macro_rules! event_enum {
    // One variant: its payload is always there (no `_` arm, which would be unreachable).
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident / $kind:ident {
            $(#[$vmeta:meta])* $variant:ident($payload:ty) $(,)?
        }
    ) => {
        $crate::event_enum!(@enum [$(#[$meta])*] $vis $name $kind { $(#[$vmeta])* $variant($payload) });
        $crate::event_enum!(@variant $name $kind $variant $payload, event => {
            match event {
                $name::$variant(payload) => ::core::option::Option::Some(payload),
            }
        });
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident / $kind:ident {
            $( $(#[$vmeta:meta])* $variant:ident($payload:ty) ),+ $(,)?
        }
    ) => {
        $crate::event_enum!(@enum [$(#[$meta])*] $vis $name $kind { $( $(#[$vmeta])* $variant($payload) ),+ });
        $(
            $crate::event_enum!(@variant $name $kind $variant $payload, event => {
                match event {
                    $name::$variant(payload) => ::core::option::Option::Some(payload),
                    _ => ::core::option::Option::None,
                }
            });
        )+
    };
    (@enum [$($meta:tt)*] $vis:vis $name:ident $kind:ident {
        $( $(#[$vmeta:meta])* $variant:ident($payload:ty) ),+
    }) => {
        $($meta)*
        $vis enum $name {
            $( $(#[$vmeta])* $variant($payload), )+
        }

        #[doc = concat!("The projection of a [`", stringify!($name), "`]: which variant it is.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $kind {
            $(
                #[doc = concat!("[`", stringify!($name), "::", stringify!($variant), "`].")]
                $variant,
            )+
        }

        impl $crate::Event for $name {
            type Projection = $kind;
            #[inline]
            fn projection(&self) -> $kind {
                match self {
                    $( $name::$variant(_) => $kind::$variant, )+
                }
            }
        }
    };
    // `$event` is named by the caller, so that the body it passes can use it (hygiene).
    (@variant $name:ident $kind:ident $variant:ident $payload:ty, $event:ident => { $($payload_of:tt)* }) => {
        impl $crate::Variant<$name> for $payload {
            #[inline]
            fn projection() -> $kind {
                $kind::$variant
            }
            #[inline]
            fn payload($event: &$name) -> ::core::option::Option<&Self> {
                $($payload_of)*
            }
        }

        impl ::core::convert::From<$payload> for $name {
            #[inline]
            fn from(payload: $payload) -> Self {
                $name::$variant(payload)
            }
        }
    };
}

//! The two channel peers, `crossbeam_channel::bounded` and `std::sync::mpsc::sync_channel`:
//! one [`Peer`] implementation over a [`Channel`], which both implement.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use crossbeam_utils::Backoff;

use crate::common::handlers::{Sink, Table, Work, dispatch, table};
use crate::common::payload::{Ev, event};
use crate::common::peer::{CAPACITY, Consumer, Peer, Producer};

/// What the channel peer needs of a bounded channel of [`Ev`].
pub trait Channel: 'static {
    /// The system's name in criterion, the table and the JSON.
    const NAME: &'static str;
    /// The sending end.
    type Tx: Clone + Send;
    /// The receiving end.
    type Rx: Send;
    /// A channel of [`CAPACITY`].
    fn bounded() -> (Self::Tx, Self::Rx);
    /// Sends, blocking while full.
    fn send(tx: &Self::Tx, ev: Ev);
    /// Sends if there is room, else hands `ev` back.
    fn try_send(tx: &Self::Tx, ev: Ev) -> Result<(), Ev>;
    /// Blocks for the next event; `None` once every sender is gone.
    fn recv(rx: &Self::Rx) -> Option<Ev>;
    /// The next event if there is one.
    fn try_recv(rx: &Self::Rx) -> Option<Ev>;
    /// Every event there is now.
    fn try_iter(rx: &Self::Rx) -> impl Iterator<Item = Ev> + '_;
}

/// The same `Channel` impl for two crates whose channels have the same methods.
macro_rules! channel {
    ($(#[$doc:meta])* $name:ident, $system:literal, $module:ident, $bounded:ident, $tx:ident) => {
        $(#[$doc])*
        pub struct $name;

        impl Channel for $name {
            const NAME: &'static str = $system;
            type Tx = $module::$tx<Ev>;
            type Rx = $module::Receiver<Ev>;
            fn bounded() -> (Self::Tx, Self::Rx) {
                $module::$bounded(CAPACITY)
            }
            #[inline(always)]
            fn send(tx: &Self::Tx, ev: Ev) {
                tx.send(ev).expect("receiver alive");
            }
            #[inline(always)]
            fn try_send(tx: &Self::Tx, ev: Ev) -> Result<(), Ev> {
                use $module::TrySendError::{Disconnected, Full};
                tx.try_send(ev).map_err(|(Full(ev) | Disconnected(ev))| ev)
            }
            #[inline(always)]
            fn recv(rx: &Self::Rx) -> Option<Ev> {
                rx.recv().ok()
            }
            #[inline(always)]
            fn try_recv(rx: &Self::Rx) -> Option<Ev> {
                rx.try_recv().ok()
            }
            #[inline(always)]
            fn try_iter(rx: &Self::Rx) -> impl Iterator<Item = Ev> + '_ {
                rx.try_iter()
            }
        }
    };
}

channel!(
    /// `crossbeam_channel::bounded`.
    Crossbeam,
    "crossbeam-channel",
    crossbeam_channel,
    bounded,
    Sender
);
channel!(
    /// `std::sync::mpsc::sync_channel`.
    StdMpsc,
    "std-mpsc",
    std_mpsc,
    sync_channel,
    SyncSender
);

/// Both ends of a channel and the consumer's handlers, on one thread.
pub struct ChannelPeer<C: Channel> {
    tx: C::Tx,
    rx: C::Rx,
    table: Table,
}

impl<C: Channel> ChannelPeer<C> {
    fn ends(work: Work, sink: &Arc<Sink>) -> (Tx<C>, Rx<C>) {
        let (tx, rx) = C::bounded();
        let rx = Rx {
            rx,
            table: table(work, sink),
        };
        (Tx(tx), rx)
    }
}

impl<C: Channel> Peer for ChannelPeer<C> {
    const NAME: &'static str = C::NAME;

    fn new(work: Work, sink: &Arc<Sink>) -> Self {
        let (tx, rx) = C::bounded();
        Self {
            tx,
            rx,
            table: table(work, sink),
        }
    }

    /// `try_send` each, then `try_iter`.
    #[inline(always)]
    fn tick(&mut self, first: u64, n: u64) {
        for i in first..first + n {
            C::try_send(&self.tx, event(i)).expect("room for a tick");
        }
        for ev in C::try_iter(&self.rx) {
            dispatch(&self.table, &ev);
        }
    }

    /// A channel has no drop-oldest, so the producer (which here also owns the receiving end)
    /// takes one event out and drops it: the closest idiom, and what users are told to do.
    #[inline(always)]
    fn push_drop_oldest(&mut self, ev: Ev) {
        if let Err(ev) = C::try_send(&self.tx, ev) {
            black_box(C::try_recv(&self.rx));
            C::try_send(&self.tx, ev).expect("room after taking one out");
        }
    }

    fn mp(sink: &Arc<Sink>) -> (impl Producer + Clone, impl Consumer) {
        Self::ends(Work::Tiny, sink)
    }

    fn latency(sink: &Arc<Sink>) -> (impl Producer, impl Consumer) {
        Self::ends(Work::Latency, sink)
    }
}

/// A sender: `send` blocks in the channel's own way when full.
struct Tx<C: Channel>(C::Tx);

impl<C: Channel> Clone for Tx<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<C: Channel> Producer for Tx<C> {
    #[inline(always)]
    fn put_waiting(&mut self, ev: Ev, _: &Backoff) {
        C::send(&self.0, ev);
    }

    #[inline(always)]
    fn put_spinning(&mut self, ev: Ev) {
        C::send(&self.0, ev);
    }
}

/// The receiver and its handlers.
struct Rx<C: Channel> {
    rx: C::Rx,
    table: Table,
}

impl<C: Channel> Consumer for Rx<C> {
    #[inline(always)]
    fn poll(&mut self) -> u64 {
        match C::try_recv(&self.rx) {
            Some(ev) => {
                dispatch(&self.table, &ev);
                1
            }
            None => 0,
        }
    }

    /// `recv` (blocking) until every sender is gone.
    fn take_all(&mut self, _total: u64) -> u64 {
        let mut done = 0;
        while let Some(ev) = C::recv(&self.rx) {
            dispatch(&self.table, &ev);
            done += 1;
        }
        done
    }
}

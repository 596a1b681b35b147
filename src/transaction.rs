//! [`Transaction`]: events buffered off the ring, then committed together or not at all
//! (GoEventBus's `BeginTransaction` / `Publish` / `Commit` / `Rollback`).
//!
//! A transaction is a `Vec` of events owned by the caller until the commit, which hands them
//! to [`EventStore::enqueue_batch`]: one claim on the ring's tail for all of them, so they take
//! consecutive sequence numbers with no other producer's event between them, and a publisher
//! never sees some without the rest. The buffer comes from, and goes back to, the store's pool
//! of publisher buffers, so a transaction per tick allocates nothing in steady state.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::error::{BatchError, HandlerFailure};
use crate::event::{BoxError, Event};
use crate::panics;
use crate::ring::Intake;
use crate::store::{Context, Enqueued, EventStore, Outcomes, PublishReport};
use crate::wait::earlier;

/// Events buffered for one atomic commit. From [`EventStore::begin_transaction`].
///
/// [`push`](Self::push) touches nothing but the transaction's own buffer. Then:
/// - [`commit`](Self::commit) puts every event in the ring at once and dispatches them (and
///   the events pending before them) in the calling thread;
/// - [`commit_deferred`](Self::commit_deferred) puts every event in the ring at once and leaves
///   them for the next [`publish`](EventStore::publish);
/// - [`rollback`](Self::rollback), or dropping the transaction, discards the events: the ring
///   and the metrics never see them.
///
/// A refused commit (ring full under `ReturnError`, store closed, `Block` deadline passed,
/// more events than slots) puts nothing in the ring and hands the transaction back in the
/// [`CommitError`]. A transaction is `Send`: build it on one thread, commit it on another.
///
/// ```
/// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
/// use std::sync::{Arc, Mutex};
///
/// struct Ev(&'static str);
/// impl Event for Ev {
///     type Projection = u8;
///     fn projection(&self) -> u8 { 0 }
/// }
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let mut dispatcher = Dispatcher::<Ev>::new();
/// let log = seen.clone();
/// dispatcher.on(0, move |_, ev| { log.lock().unwrap().push(ev.0); Ok(()) });
/// let store = EventStore::new(dispatcher, 8, OverrunPolicy::ReturnError)?;
///
/// let mut tx = store.begin_transaction();
/// tx.push(Ev("debit"));
/// tx.push(Ev("credit"));
/// assert_eq!(store.pending(), 0); // nothing in the ring yet
/// let report = tx.commit()?;
/// assert_eq!((report.sequence, report.len), (0, 2));
/// assert_eq!(*seen.lock().unwrap(), ["debit", "credit"]);
///
/// let mut tx = store.begin_transaction();
/// tx.push(Ev("never"));
/// tx.rollback();
/// assert_eq!(store.metrics().published, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Transaction<E: Event, Err = BoxError> {
    /// The store the commit goes to.
    store: EventStore<E, Err>,
    /// The events pushed so far, in order; the buffer is the store's until dropped.
    events: Vec<E>,
    /// Outside, or a handler's follow-up (from [`Context::begin_transaction`]), which still
    /// commits during a close.
    intake: Intake,
    /// A follow-up's context deadline: its commit waits for room (`Block`) no longer.
    deadline: Option<Instant>,
}

/// What a successful [`Transaction::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitReport {
    /// Sequence number of the transaction's first event; its events hold
    /// `sequence..sequence + len`.
    pub sequence: u64,
    /// Events committed.
    pub len: u64,
    /// Older pending events `DropOldest` discarded to make room for the transaction.
    pub dropped: u64,
    /// What the commit's dispatch did, counting the older pending events it ran before the
    /// transaction's.
    pub publish: PublishReport,
    /// The transaction's events that another thread took out of the ring before this commit
    /// reached them: run by a concurrent `publish`, or discarded by a concurrent `DropOldest`
    /// enqueue. Their outcomes are in the [metrics](EventStore::metrics) and the
    /// [`on_error`](crate::Builder::on_error) hook, not in this report; 0 without concurrent
    /// publishers or evictions.
    pub elsewhere: u64,
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Starts a [`Transaction`] on this store (GoEventBus's `BeginTransaction`).
    pub fn begin_transaction(&self) -> Transaction<E, Err> {
        Transaction::new(self, Intake::Outside, None)
    }
}

impl<E, Err> Context<'_, E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Starts a [`Transaction`] of follow-ups: [`EventStore::begin_transaction`], except that
    /// its commit is still accepted while the store closes, and waits for room no longer than
    /// this context's deadline, as [`Context::enqueue`] does.
    pub fn begin_transaction(&self) -> Transaction<E, Err> {
        Transaction::new(self.store(), Intake::FollowUp, self.deadline())
    }
}

impl<E: Event, Err> Transaction<E, Err> {
    fn new(store: &EventStore<E, Err>, intake: Intake, deadline: Option<Instant>) -> Self {
        Self {
            store: store.clone(),
            events: store.buffers().get(),
            intake,
            deadline,
        }
    }

    /// Buffers an event (GoEventBus's `Publish`). Nothing reaches the ring until a commit.
    pub fn push(&mut self, event: E) -> &mut Self {
        self.events.push(event);
        self
    }

    /// Events buffered.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when no event is buffered.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The buffered events, in order.
    pub fn events(&self) -> &[E] {
        &self.events
    }

    /// Discards the buffered events (GoEventBus's `Rollback`); dropping the transaction does
    /// the same. The ring and the metrics are untouched.
    pub fn rollback(self) {}

    /// Takes the buffered events out, discarding the transaction. Useful on a refused commit.
    pub fn into_events(mut self) -> Vec<E> {
        std::mem::take(&mut self.events)
    }
}

impl<E, Err> Transaction<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Puts every event in the ring at once and dispatches them in the calling thread
    /// (GoEventBus's `Commit`: "atomically enqueue and process all buffered events").
    ///
    /// **Enqueue.** All or nothing, in one claim: the events take consecutive sequence numbers
    /// with no other producer's event between them. When the ring is full, `DropOldest`
    /// discards old pending events (counted in [`CommitReport::dropped`] and the metrics),
    /// `Block` waits for room for all of them (see [`commit_timeout`](Self::commit_timeout)),
    /// `ReturnError` refuses.
    ///
    /// **Dispatch.** Then, whatever the store's [`DispatchMode`](crate::DispatchMode), the
    /// calling thread runs a sync publish that stops after the transaction's last event: the
    /// events pending before the transaction run first (FIFO), then the transaction's, in
    /// order. Events enqueued after the transaction wait for the next publish. Every handler
    /// of every event runs, even after a failure, as in any publish; failures and panics also
    /// go to the [`on_error`](crate::Builder::on_error) hook and the metrics as usual.
    ///
    /// **Concurrent publishers.** Another thread's `publish` may take some of the
    /// transaction's events out of the ring before this commit reaches them (or a concurrent
    /// `DropOldest` enqueue may evict them). Those run (or are dropped) on the other thread;
    /// this call does not wait for them, cannot see their failures, and counts them in
    /// [`CommitReport::elsewhere`]. With no other publisher, `elsewhere` is 0 and every
    /// failure of the transaction's events is reported here.
    ///
    /// An empty transaction commits nothing and dispatches nothing.
    ///
    /// # Errors
    /// - Refusals, with nothing put in the ring and the transaction handed back:
    ///   [`CommitError::TooLarge`] (more events than the ring's capacity, under every policy),
    ///   [`CommitError::Full`], [`CommitError::Closed`].
    /// - [`CommitError::Handler`] when a handler of at least one of the transaction's events
    ///   returned an error or panicked. By then **everything has run**: all of the
    ///   transaction's events (before and after the failing one) and the older pending
    ///   events, with all their handlers. Nothing is undone, since handlers' effects cannot be.
    ///   The error names the first failing event's index in the transaction and its sequence,
    ///   carries its first failing handler's error (or panic message), and counts the
    ///   transaction's failed events. Failures of older pending events are not the
    ///   transaction's and do not make the commit fail.
    ///
    /// ```
    /// use ringbus::{CommitError, Dispatcher, Event, EventStore, HandlerFailure, OverrunPolicy};
    ///
    /// struct Transfer(i64);
    /// impl Event for Transfer {
    ///     type Projection = u8;
    ///     fn projection(&self) -> u8 { 0 }
    /// }
    /// let mut dispatcher = Dispatcher::<Transfer, String>::new();
    /// dispatcher.on(0, |_, t| if t.0 < 0 { Err(format!("negative {}", t.0)) } else { Ok(()) });
    /// let store = EventStore::new(dispatcher, 16, OverrunPolicy::ReturnError)?;
    ///
    /// let mut tx = store.begin_transaction();
    /// tx.push(Transfer(5)).push(Transfer(-3)).push(Transfer(7));
    /// match tx.commit() {
    ///     Err(CommitError::Handler { index, sequence, error, failed }) => {
    ///         assert_eq!((index, sequence, failed), (1, 1, 1));
    ///         assert_eq!(error, HandlerFailure::Error("negative -3".to_string()));
    ///     }
    ///     other => panic!("expected a handler failure, got {other:?}"),
    /// }
    /// let m = store.metrics();
    /// assert_eq!((m.processed, m.failed, m.pending), (2, 1, 0)); // all three ran
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn commit(self) -> Result<CommitReport, CommitError<E, Err>> {
        self.commit_inner(None)
    }

    /// [`commit`](Self::commit) that waits at most `timeout` for room under
    /// [`OverrunPolicy::Block`](crate::OverrunPolicy::Block), then fails with
    /// [`CommitError::Timeout`], handing the transaction back. The timeout bounds only that
    /// wait, not the dispatch.
    pub fn commit_timeout(self, timeout: Duration) -> Result<CommitReport, CommitError<E, Err>> {
        self.commit_inner(Some(timeout))
    }

    /// Puts every event in the ring at once, as [`commit`](Self::commit) does, and leaves them
    /// for the next [`publish`](EventStore::publish): the events become visible to publishers
    /// together, and with one sync publisher each transaction's events are handled one after
    /// another, in push order, with no other event between them. Returns the first event's
    /// sequence and what `DropOldest` discarded.
    ///
    /// ```
    /// # use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
    /// # struct Ev(u32);
    /// # impl Event for Ev { type Projection = u8; fn projection(&self) -> u8 { 0 } }
    /// let store = EventStore::new(Dispatcher::<Ev>::new(), 8, OverrunPolicy::ReturnError)?;
    /// let mut tx = store.begin_transaction();
    /// tx.extend((0..3).map(Ev));
    /// let enqueued = tx.commit_deferred()?;
    /// assert_eq!((enqueued.sequence, store.pending()), (0, 3));
    /// assert_eq!(store.publish().dispatched, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The refusals of [`commit`](Self::commit), transaction handed back; never
    /// [`CommitError::Handler`].
    pub fn commit_deferred(self) -> Result<Enqueued, CommitError<E, Err>> {
        self.enqueue(None)
    }

    /// [`commit_deferred`](Self::commit_deferred) that waits at most `timeout` for room under
    /// [`OverrunPolicy::Block`](crate::OverrunPolicy::Block).
    pub fn commit_deferred_timeout(
        self,
        timeout: Duration,
    ) -> Result<Enqueued, CommitError<E, Err>> {
        self.enqueue(Some(timeout))
    }

    /// Moves the events into the ring in one batch, or hands the transaction back.
    fn enqueue(mut self, timeout: Option<Duration>) -> Result<Enqueued, CommitError<E, Err>> {
        self.batch(timeout)
            .map_err(|why| CommitError::refused(why, self))
    }

    /// `enqueue_batch` of the buffer: emptied on success, untouched on error.
    fn batch(&mut self, timeout: Option<Duration>) -> Result<Enqueued, BatchError> {
        let mine = timeout.and_then(|t| Instant::now().checked_add(t));
        let deadline = earlier(mine, self.deadline);
        self.store
            .enqueue_batch_as(&mut self.events, deadline, self.intake)
    }

    fn commit_inner(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<CommitReport, CommitError<E, Err>> {
        let len = self.events.len() as u64;
        let enqueued = match self.batch(timeout) {
            Ok(enqueued) => enqueued,
            Err(why) => return Err(CommitError::refused(why, self)),
        };
        let mut report = CommitReport {
            sequence: enqueued.sequence,
            len,
            dropped: enqueued.dropped,
            publish: PublishReport::default(),
            elsewhere: 0,
        };
        if len == 0 {
            return Ok(report);
        }
        let mut outcomes = FirstFailure {
            range: enqueued.sequence..enqueued.sequence + len,
            first: None,
            failed: 0,
            last_failed: None,
        };
        let (publish, mine) = self
            .store
            .publish_until(outcomes.range.clone(), &mut outcomes);
        report.publish = publish;
        report.elsewhere = len - mine;
        match outcomes.first {
            None => Ok(report),
            Some((sequence, error)) => Err(CommitError::Handler {
                index: (sequence - report.sequence) as usize,
                sequence,
                error,
                failed: outcomes.failed,
            }),
        }
    }
}

/// A commit's [`Outcomes`]: the first failure among the transaction's own events, and how many
/// of them failed. Failures of older events the commit ran first are only counted and reported
/// (as by any publish).
struct FirstFailure<Err> {
    /// The transaction's sequences.
    range: Range<u64>,
    first: Option<(u64, HandlerFailure<Err>)>,
    /// The transaction's events with at least one failure.
    failed: u64,
    /// The last of them seen, so an event with two failing handlers counts once.
    last_failed: Option<u64>,
}

impl<Err> Outcomes<Err> for FirstFailure<Err> {
    fn failed(&mut self, sequence: u64, failure: HandlerFailure<Err>) {
        if !self.range.contains(&sequence) {
            return panics::drop_contained(failure);
        }
        if self.last_failed != Some(sequence) {
            self.last_failed = Some(sequence);
            self.failed += 1;
        }
        match self.first {
            Some(_) => panics::drop_contained(failure),
            None => self.first = Some((sequence, failure)),
        }
    }
}

/// Why a [`Transaction`] commit failed.
///
/// The refusals ([`Full`](Self::Full), [`Closed`](Self::Closed), [`Timeout`](Self::Timeout),
/// [`TooLarge`](Self::TooLarge)) hand the whole transaction back, events untouched and in
/// order, with nothing put in the ring: commit it again, or take the events out with
/// [`Transaction::into_events`]. [`Handler`](Self::Handler) comes only from
/// [`Transaction::commit`], after every event was put in the ring and dispatched: see there for
/// what has run.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum CommitError<E: Event, Err = BoxError> {
    /// Not enough room under [`OverrunPolicy::ReturnError`](crate::OverrunPolicy::ReturnError).
    #[error("not enough room in the ring for the transaction's {} events", .0.len())]
    Full(Transaction<E, Err>),
    /// The store is closed.
    #[error("store is closed")]
    Closed(Transaction<E, Err>),
    /// Under [`OverrunPolicy::Block`](crate::OverrunPolicy::Block), no room came before the
    /// deadline.
    #[error("timed out waiting for room for the transaction's {} events", .0.len())]
    Timeout(Transaction<E, Err>),
    /// The transaction has more events than the ring has slots, so it could never go in at
    /// once (under every policy).
    #[error("transaction of {} events exceeds the ring capacity of {capacity}", .transaction.len())]
    TooLarge {
        /// The transaction, handed back.
        transaction: Transaction<E, Err>,
        /// The ring's capacity.
        capacity: usize,
    },
    /// Every event was committed and dispatched, and a handler of at least one of the
    /// transaction's events failed. Nothing is rolled back: see [`Transaction::commit`].
    #[error(
        "event {index} of the transaction (sequence {sequence}) failed: {error} \
         ({failed} of its events failed)"
    )]
    Handler {
        /// Position in the transaction (0 for the first event pushed) of the first event
        /// whose handler failed.
        index: usize,
        /// That event's sequence number.
        sequence: u64,
        /// Its first failing handler's error or panic (later failures went to the
        /// [`on_error`](crate::Builder::on_error) hook and the metrics).
        error: HandlerFailure<Err>,
        /// How many of the transaction's events had a failing handler (at least 1).
        failed: u64,
    },
}

impl<E: Event, Err> CommitError<E, Err> {
    /// The transaction a refusal hands back; `None` for [`Handler`](Self::Handler), whose
    /// events are committed.
    pub fn into_transaction(self) -> Option<Transaction<E, Err>> {
        match self {
            Self::Full(tx) | Self::Closed(tx) | Self::Timeout(tx) => Some(tx),
            Self::TooLarge { transaction, .. } => Some(transaction),
            Self::Handler { .. } => None,
        }
    }

    /// Converts a refused batch, handing back `tx` (whose buffer the batch was).
    fn refused(why: BatchError, tx: Transaction<E, Err>) -> Self {
        match why {
            BatchError::Full { .. } => Self::Full(tx),
            BatchError::Closed => Self::Closed(tx),
            BatchError::Timeout { .. } => Self::Timeout(tx),
            BatchError::TooLarge { capacity, .. } => Self::TooLarge {
                transaction: tx,
                capacity,
            },
        }
    }
}

impl<E: Event, Err: fmt::Debug> fmt::Debug for CommitError<E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(tx) => f.debug_tuple("Full").field(tx).finish(),
            Self::Closed(tx) => f.debug_tuple("Closed").field(tx).finish(),
            Self::Timeout(tx) => f.debug_tuple("Timeout").field(tx).finish(),
            Self::TooLarge {
                transaction,
                capacity,
            } => f
                .debug_struct("TooLarge")
                .field("transaction", transaction)
                .field("capacity", capacity)
                .finish(),
            Self::Handler {
                index,
                sequence,
                error,
                failed,
            } => f
                .debug_struct("Handler")
                .field("index", index)
                .field("sequence", sequence)
                .field("error", error)
                .field("failed", failed)
                .finish(),
        }
    }
}

impl<E: Event, Err> Extend<E> for Transaction<E, Err> {
    fn extend<I: IntoIterator<Item = E>>(&mut self, iter: I) {
        self.events.extend(iter);
    }
}

impl<E: Event, Err> Drop for Transaction<E, Err> {
    /// A rollback: the events are dropped here, and the emptied buffer goes back to the store.
    fn drop(&mut self) {
        self.events.clear();
        let buf = std::mem::take(&mut self.events);
        if buf.capacity() > 0 {
            self.store.buffers().put_unless_oversized(buf);
        }
    }
}

impl<E: Event, Err> fmt::Debug for Transaction<E, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("len", &self.events.len())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{Dispatcher, OverrunPolicy};

    struct Ev(u32);
    impl Event for Ev {
        type Projection = u8;
        fn projection(&self) -> u8 {
            0
        }
    }

    #[test]
    fn transaction_is_send_and_debug() {
        fn assert_send<T: Send>() {}
        assert_send::<Transaction<Ev>>();
        let store =
            EventStore::new(Dispatcher::<Ev>::new(), 4, OverrunPolicy::ReturnError).unwrap();
        let mut tx = store.begin_transaction();
        tx.push(Ev(1));
        assert_eq!(format!("{tx:?}"), "Transaction { len: 1, .. }");
    }

    #[test]
    fn refused_commit_hands_the_transaction_back_in_order() {
        let store =
            EventStore::new(Dispatcher::<Ev>::new(), 4, OverrunPolicy::ReturnError).unwrap();
        store.enqueue(Ev(99)).unwrap();
        let mut tx = store.begin_transaction();
        tx.extend((0..4).map(Ev));
        let err = tx.commit().unwrap_err();
        assert!(matches!(err, CommitError::Full(_)));
        assert_eq!(
            err.to_string(),
            "not enough room in the ring for the transaction's 4 events"
        );
        let back = err.into_transaction().unwrap().into_events();
        assert_eq!(back.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(store.pending(), 1);
    }

    #[test]
    fn empty_commit_does_nothing() {
        let store =
            EventStore::new(Dispatcher::<Ev>::new(), 4, OverrunPolicy::ReturnError).unwrap();
        store.enqueue(Ev(1)).unwrap();
        let report = store.begin_transaction().commit().unwrap();
        assert_eq!((report.sequence, report.len), (1, 0));
        assert_eq!(report.publish.dispatched, 0);
        assert_eq!(store.pending(), 1);
    }
}

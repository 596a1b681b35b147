//! Model test: random single-threaded operation sequences against a `VecDeque` model of the
//! documented semantics, compared step by step (returned values, handler log, every metric).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;

mod support {
    pub mod deadline;
}
use ringbus::{
    BatchError, CommitError, Dispatcher, EnqueueError, Enqueued, Event, EventStore, HandlerFailure,
    Metrics, OverrunPolicy, PublishReport,
};
use support::deadline::deadline;

/// An event whose id scripts its fate (routed or not, failing or not), so the model can
/// predict every handler's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScriptedEv(u32);

/// Ids `7k + 6` have no handler (unrouted); ids `5k` make the handler fail.
impl Event for ScriptedEv {
    type Projection = bool;
    fn projection(&self) -> bool {
        self.0 % 7 != 6
    }
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue,
    Batch(usize),
    /// A transaction of n events, committed (enqueued at once, then dispatched).
    TxCommit(usize),
    /// A transaction of n events, committed for the next publish.
    TxDeferred(usize),
    /// A transaction of n events, rolled back.
    TxRollback(usize),
    Publish,
    Close,
    CloseNow,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Enqueue),
        2 => (0usize..10).prop_map(Op::Batch),
        1 => (0usize..10).prop_map(Op::TxCommit),
        1 => (0usize..10).prop_map(Op::TxDeferred),
        1 => (0usize..6).prop_map(Op::TxRollback),
        3 => Just(Op::Publish),
        1 => Just(Op::CloseNow),
        1 => Just(Op::Close),
    ]
}

/// The documented semantics, written as plainly as possible.
#[derive(Debug, Default)]
struct Model {
    capacity: usize,
    policy: OverrunPolicy,
    pending: VecDeque<(u64, ScriptedEv)>,
    next_seq: u64,
    closed: bool,
    processed: u64,
    failed: u64,
    unrouted: u64,
    dropped: u64,
    rejected: u64,
}

impl Model {
    /// Room for `n` events, evicting under `DropOldest`; returns the evictions, or `None` when
    /// the policy refuses.
    fn make_room(&mut self, n: usize) -> Option<u64> {
        let free = self.capacity - self.pending.len();
        if n <= free {
            return Some(0);
        }
        match self.policy {
            OverrunPolicy::DropOldest => {
                let evict = n - free;
                self.pending.drain(..evict);
                self.dropped += evict as u64;
                Some(evict as u64)
            }
            OverrunPolicy::Block | OverrunPolicy::ReturnError => None,
        }
    }

    fn accept(&mut self, ev: ScriptedEv) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back((seq, ev));
        seq
    }

    fn enqueue(&mut self, ev: ScriptedEv) -> Result<Enqueued, EnqueueError<ScriptedEv>> {
        if self.closed {
            self.rejected += 1;
            return Err(EnqueueError::Closed(ev));
        }
        match self.make_room(1) {
            Some(dropped) => Ok(Enqueued {
                sequence: self.accept(ev),
                dropped,
            }),
            None => {
                self.rejected += 1;
                Err(match self.policy {
                    OverrunPolicy::Block => EnqueueError::Timeout(ev),
                    _ => EnqueueError::Full(ev),
                })
            }
        }
    }

    fn batch(&mut self, evs: &[ScriptedEv]) -> Result<Enqueued, BatchError> {
        let len = evs.len();
        if len == 0 {
            return Ok(Enqueued {
                sequence: self.next_seq,
                dropped: 0,
            });
        }
        let refuse = |m: &mut Self, e| {
            m.rejected += len as u64;
            Err(e)
        };
        if len > self.capacity {
            return refuse(
                self,
                BatchError::TooLarge {
                    len,
                    capacity: self.capacity,
                },
            );
        }
        if self.closed {
            return refuse(self, BatchError::Closed);
        }
        match self.make_room(len) {
            Some(dropped) => {
                let sequence = self.next_seq;
                for &ev in evs {
                    self.accept(ev);
                }
                Ok(Enqueued { sequence, dropped })
            }
            None => refuse(
                self,
                match self.policy {
                    OverrunPolicy::Block => BatchError::Timeout { len },
                    _ => BatchError::Full { len },
                },
            ),
        }
    }

    /// Dispatches everything pending; returns what ran, for the handler log.
    fn publish(&mut self) -> (Vec<(u64, ScriptedEv)>, [u64; 4]) {
        let mut ran = Vec::new();
        let mut report = [0; 4]; // dispatched, processed, failed, unrouted
        for (seq, ev) in self.pending.drain(..) {
            report[0] += 1;
            if !ev.projection() {
                report[3] += 1;
                continue;
            }
            ran.push((seq, ev));
            if ev.0 % 5 == 0 {
                report[2] += 1;
            } else {
                report[1] += 1;
            }
        }
        self.processed += report[1];
        self.failed += report[2];
        self.unrouted += report[3];
        (ran, report)
    }

    fn check_metrics(&self, m: &Metrics) {
        assert_eq!(m.published, self.next_seq, "published");
        assert_eq!(m.processed, self.processed, "processed");
        assert_eq!(m.failed, self.failed, "failed");
        assert_eq!(m.handler_errors, self.failed, "handler_errors");
        assert_eq!(m.panics, 0, "panics");
        assert_eq!(m.dropped, self.dropped, "dropped");
        assert_eq!(m.rejected, self.rejected, "rejected");
        assert_eq!(m.unrouted, self.unrouted, "unrouted");
        assert_eq!(m.pending, self.pending.len() as u64, "pending");
        assert_eq!(m.in_flight, 0, "in_flight");
        assert!(m.is_balanced());
    }
}

/// The handler fails for ids `5k`.
fn fails(ev: ScriptedEv) -> bool {
    ev.0 % 5 == 0
}

/// Ids `7k + 6` have no handler.
fn routed(ev: ScriptedEv) -> bool {
    ev.0 % 7 != 6
}

/// A refused commit matches the model's refusal and hands every event back, in order.
fn assert_refusal(got: CommitError<ScriptedEv, String>, want: &BatchError, evs: &[ScriptedEv]) {
    let same = matches!(
        (&got, want),
        (CommitError::Full(_), BatchError::Full { .. })
            | (CommitError::Closed(_), BatchError::Closed)
            | (CommitError::Timeout(_), BatchError::Timeout { .. })
            | (CommitError::TooLarge { .. }, BatchError::TooLarge { .. })
    );
    assert!(same, "got {got:?}, model says {want:?}");
    let back = got
        .into_transaction()
        .expect("a refusal hands the transaction back");
    assert_eq!(back.events(), evs);
}

fn report_fields(r: &PublishReport) -> [u64; 4] {
    [r.dispatched, r.processed, r.failed, r.unrouted]
}

fn run(capacity: usize, policy: OverrunPolicy, ops: &[Op]) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut d = Dispatcher::<ScriptedEv, String>::new();
    let l = log.clone();
    d.on(true, move |ctx, ev| {
        l.lock().unwrap().push((ctx.sequence(), *ev));
        if ev.0 % 5 == 0 {
            Err(format!("{} fails", ev.0))
        } else {
            Ok(())
        }
    });
    let store = EventStore::new(d, capacity, policy).unwrap();
    let mut model = Model {
        capacity,
        policy,
        ..Model::default()
    };
    let mut next_id = 0u32;
    let mut fresh = || {
        next_id += 1;
        ScriptedEv(next_id)
    };
    for op in ops {
        match *op {
            Op::Enqueue => {
                let ev = fresh();
                let got = store.enqueue_timeout(ev, Duration::ZERO);
                let want = model.enqueue(ev);
                match (&got, &want) {
                    (Ok(g), Ok(w)) => assert_eq!(g, w),
                    (Err(g), Err(w)) => {
                        assert_eq!(
                            std::mem::discriminant(g),
                            std::mem::discriminant(w),
                            "{g:?} vs {w:?}"
                        );
                        assert_eq!(g.event(), &ev, "the event comes back");
                    }
                    _ => panic!("{op:?}: got {got:?}, model says {want:?}"),
                }
            }
            Op::Batch(n) => {
                let evs: Vec<ScriptedEv> = (0..n).map(|_| fresh()).collect();
                let mut batch = evs.clone();
                let got = store.enqueue_batch_timeout(&mut batch, Duration::ZERO);
                let want = model.batch(&evs);
                assert_eq!(got, want, "{op:?}");
                if got.is_ok() {
                    assert!(batch.is_empty());
                } else {
                    assert_eq!(batch, evs, "a refused batch stays with the caller");
                }
            }
            Op::TxDeferred(n) => {
                let evs: Vec<ScriptedEv> = (0..n).map(|_| fresh()).collect();
                let mut tx = store.begin_transaction();
                tx.extend(evs.iter().copied());
                let got = tx.commit_deferred_timeout(Duration::ZERO);
                let want = model.batch(&evs);
                match (got, want) {
                    (Ok(g), Ok(w)) => assert_eq!(g, w),
                    (Err(g), Err(w)) => assert_refusal(g, &w, &evs),
                    (got, want) => panic!("{op:?}: got {got:?}, model says {want:?}"),
                }
            }
            Op::TxRollback(n) => {
                let mut tx = store.begin_transaction();
                tx.extend((0..n).map(|_| fresh()));
                tx.rollback();
            }
            Op::TxCommit(n) => {
                let evs: Vec<ScriptedEv> = (0..n).map(|_| fresh()).collect();
                let mut tx = store.begin_transaction();
                tx.extend(evs.iter().copied());
                let got = tx.commit_timeout(Duration::ZERO);
                match model.batch(&evs) {
                    Err(w) => assert_refusal(got.unwrap_err(), &w, &evs),
                    Ok(_) if n == 0 => assert_eq!(got.unwrap().len, 0),
                    Ok(w) => {
                        // The commit dispatched everything pending: older events first, then
                        // the transaction's, in order.
                        let (ran, report) = model.publish();
                        assert_eq!(std::mem::take(&mut *log.lock().unwrap()), ran);
                        let failing: Vec<usize> = (0..n)
                            .filter(|&i| fails(evs[i]) && routed(evs[i]))
                            .collect();
                        match (got, failing.first()) {
                            (Ok(r), None) => {
                                assert_eq!(
                                    (r.sequence, r.dropped, r.elsewhere),
                                    (w.sequence, w.dropped, 0)
                                );
                                assert_eq!(report_fields(&r.publish), report);
                            }
                            (
                                Err(CommitError::Handler {
                                    index,
                                    sequence,
                                    error,
                                    failed,
                                }),
                                Some(&first),
                            ) => {
                                assert_eq!(index, first);
                                assert_eq!(sequence, w.sequence + first as u64);
                                assert_eq!(failed, failing.len() as u64);
                                assert_eq!(
                                    error,
                                    HandlerFailure::Error(format!("{} fails", evs[first].0))
                                );
                            }
                            (got, first) => {
                                panic!("{op:?}: got {got:?}, first failing index {first:?}")
                            }
                        }
                    }
                }
            }
            Op::Publish => {
                let got = store.publish();
                let (ran, want) = model.publish();
                assert_eq!(report_fields(&got), want);
                assert_eq!(got.handler_errors, want[2]);
                assert_eq!(std::mem::take(&mut *log.lock().unwrap()), ran);
            }
            Op::Close => {
                let got = store.close(Duration::from_secs(10)).unwrap();
                model.closed = true;
                let (ran, want) = model.publish();
                assert_eq!(report_fields(&got), want);
                assert_eq!(std::mem::take(&mut *log.lock().unwrap()), ran);
                assert!(store.is_closed());
            }
            Op::CloseNow => {
                // A zero timeout closes, dispatches nothing, and fails if anything is pending.
                let got = store.close(Duration::ZERO);
                model.closed = true;
                match got {
                    Ok(r) => {
                        assert!(model.pending.is_empty());
                        assert_eq!(r.dispatched, 0);
                    }
                    Err(e) => {
                        assert_eq!(e.pending, model.pending.len() as u64);
                        assert_eq!(e.in_flight, 0);
                        assert!(!model.pending.is_empty());
                    }
                }
                assert!(log.lock().unwrap().is_empty());
            }
        }
        model.check_metrics(&store.metrics());
        assert_eq!(store.pending(), model.pending.len() as u64);
    }
}

fn policy() -> impl Strategy<Value = OverrunPolicy> {
    prop_oneof![
        Just(OverrunPolicy::Block),
        Just(OverrunPolicy::DropOldest),
        Just(OverrunPolicy::ReturnError),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 8 } else { 512 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_the_model(
        capacity in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        policy in policy(),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        // Per case: a hang fails the run instead of stalling CI.
        let _deadline = deadline("store_matches_the_model", Duration::from_secs(60));
        run(capacity, policy, &ops);
    }
}

//! Committing 16 events as a transaction against 16 plain enqueues, each followed by the
//! dispatch (one trivial handler), in ns per event.
//!
//! `cargo bench --bench transaction`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};

const EVENTS: u64 = 16;

struct Ev(u64);

impl Event for Ev {
    type Projection = u8;
    fn projection(&self) -> u8 {
        0
    }
}

fn store() -> EventStore<Ev> {
    let sum = Arc::new(AtomicU64::new(0));
    let mut d = Dispatcher::<Ev>::new();
    d.on(0, move |_, ev| {
        sum.fetch_add(ev.0, Ordering::Relaxed);
        Ok(())
    });
    EventStore::new(d, 1 << 10, OverrunPolicy::ReturnError).unwrap()
}

fn commit_16(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit_16");
    group.throughput(Throughput::Elements(EVENTS));

    let s = store();
    group.bench_function("16 enqueue + publish", |b| {
        b.iter(|| {
            for i in 0..EVENTS {
                s.enqueue(Ev(black_box(i))).unwrap();
            }
            black_box(s.publish())
        })
    });

    let s = store();
    let mut batch = Vec::with_capacity(EVENTS as usize);
    group.bench_function("enqueue_batch(16) + publish", |b| {
        b.iter(|| {
            batch.extend((0..EVENTS).map(|i| Ev(black_box(i))));
            s.enqueue_batch(&mut batch).unwrap();
            black_box(s.publish())
        })
    });

    let s = store();
    group.bench_function("transaction commit_deferred + publish", |b| {
        b.iter(|| {
            let mut tx = s.begin_transaction();
            for i in 0..EVENTS {
                tx.push(Ev(black_box(i)));
            }
            tx.commit_deferred().unwrap();
            black_box(s.publish())
        })
    });

    let s = store();
    group.bench_function("transaction commit", |b| {
        b.iter(|| {
            let mut tx = s.begin_transaction();
            for i in 0..EVENTS {
                tx.push(Ev(black_box(i)));
            }
            black_box(tx.commit().unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, commit_16);
criterion_main!(benches);

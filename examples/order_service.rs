//! An order service on ringbus: typed events, follow-ups from handlers through their context,
//! a transaction, a cancellable timeout, and a shutdown that lets accepted orders finish.
//!
//! An order goes placed -> stock reserved -> (payment taken + shipped, one transaction). Each
//! placed order also gets a payment timeout, cancelled when it ships. Orders keep arriving
//! from two client threads; then the service closes while the last 22 are mid-flight: they
//! all finish, because `close` keeps accepting handlers' follow-ups until it has dispatched
//! everything, while it refuses new orders from outside.
//!
//! ```text
//! cargo run --release --example order_service
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ringbus::{
    CommitError, DispatchMode, Dispatcher, EnqueueError, EventStore, OverrunPolicy, ScheduleHandle,
};

#[derive(Debug, Clone)]
struct Placed {
    order: u64,
    amount_cents: u64,
}

#[derive(Debug, Clone)]
struct Reserved {
    order: u64,
    amount_cents: u64,
}

#[derive(Debug, Clone)]
struct Paid {
    order: u64,
}

#[derive(Debug, Clone)]
struct Shipped {
    order: u64,
}

#[derive(Debug, Clone)]
struct PaymentTimedOut {
    order: u64,
}

ringbus::event_enum! {
    /// The order service's events.
    #[derive(Debug, Clone)]
    enum OrderEvent / Step {
        Placed(Placed),
        Reserved(Reserved),
        Paid(Paid),
        Shipped(Shipped),
        TimedOut(PaymentTimedOut),
    }
}

/// What the service keeps between events; shared by handlers on the pool's threads.
#[derive(Default)]
struct Orders {
    timeouts: Mutex<HashMap<u64, ScheduleHandle>>,
    placed: AtomicU64,
    paid: Mutex<Vec<u64>>,
    shipped: AtomicU64,
    revenue_cents: AtomicU64,
    timeouts_cancelled: AtomicU64,
    timeouts_fired: AtomicU64,
    no_timeout_in_shutdown: AtomicU64,
}

fn dispatcher(orders: &Arc<Orders>) -> Dispatcher<OrderEvent> {
    let mut dispatcher = Dispatcher::<OrderEvent>::new();
    let o = orders.clone();
    dispatcher.on_variant(move |ctx, p: &Placed| {
        o.placed.fetch_add(1, Ordering::Relaxed);
        // A cancellable timeout. During shutdown the timer is stopped, so the schedule is
        // refused (counted in `rejected_closed`): the order still completes, it just has no
        // timeout to cancel.
        match ctx.store().schedule_after(
            Duration::from_secs(30),
            PaymentTimedOut { order: p.order }.into(),
        ) {
            Ok(handle) => {
                o.timeouts.lock().unwrap().insert(p.order, handle);
            }
            Err(EnqueueError::Closed(_)) => {
                o.no_timeout_in_shutdown.fetch_add(1, Ordering::Relaxed);
            }
            Err(other) => return Err(other.kind().into()),
        }
        ctx.enqueue(
            Reserved {
                order: p.order,
                amount_cents: p.amount_cents,
            }
            .into(),
        )?;
        Ok(())
    });
    let o = orders.clone();
    dispatcher.on_variant(move |ctx, r: &Reserved| {
        // Payment and shipment go in together or not at all.
        let mut tx = ctx.begin_transaction();
        tx.push(Paid { order: r.order }.into());
        tx.push(Shipped { order: r.order }.into());
        tx.commit_deferred()
            .map_err(|e: CommitError<_>| e.to_string())?;
        o.revenue_cents.fetch_add(r.amount_cents, Ordering::Relaxed);
        Ok(())
    });
    let o = orders.clone();
    dispatcher.on_variant(move |_, p: &Paid| {
        o.paid.lock().unwrap().push(p.order);
        Ok(())
    });
    let o = orders.clone();
    dispatcher.on_variant(move |_, s: &Shipped| {
        o.shipped.fetch_add(1, Ordering::Relaxed);
        if let Some(timeout) = o.timeouts.lock().unwrap().remove(&s.order) {
            if timeout.cancel() {
                o.timeouts_cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    });
    let o = orders.clone();
    dispatcher.on_variant(move |_, t: &PaymentTimedOut| {
        o.timeouts_fired.fetch_add(1, Ordering::Relaxed);
        eprintln!("order {} timed out waiting for payment", t.order);
        Ok(())
    });
    dispatcher
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orders = Arc::new(Orders::default());
    let store = EventStore::builder(dispatcher(&orders))
        .capacity(1 << 12)
        .policy(OverrunPolicy::Block)
        .mode(DispatchMode::Async)
        .build()?;

    // The service's dispatch loop: a thread publishing until the store closes.
    let publisher = {
        let store = store.clone();
        thread::spawn(move || {
            while !store.is_closed() {
                if store.publish().dispatched == 0 {
                    thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    // Two clients placing orders.
    let clients: Vec<_> = (0..2u64)
        .map(|client| {
            let store = store.clone();
            thread::spawn(move || -> Result<u64, EnqueueError<OrderEvent>> {
                for i in 0..500u64 {
                    let order = client * 1_000_000 + i;
                    store.enqueue(
                        Placed {
                            order,
                            amount_cents: 1_000 + i,
                        }
                        .into(),
                    )?;
                    if i % 50 == 0 {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                Ok(500)
            })
        })
        .collect();
    let mut placed_by_clients = 0;
    for client in clients {
        placed_by_clients += client.join().expect("client thread")?;
    }

    // The last 22 orders arrive just before shutdown: nothing has dispatched them yet.
    for order in 0..22 {
        store.enqueue(
            Placed {
                order: 9_000_000 + order,
                amount_cents: 5_000,
            }
            .into(),
        )?;
    }
    let report = store.close(Duration::from_secs(10))?;
    publisher.join().expect("publisher thread");
    let late = store.enqueue(
        Placed {
            order: 1,
            amount_cents: 1,
        }
        .into(),
    );

    let m = store.metrics();
    let placed = orders.placed.load(Ordering::Relaxed);
    let shipped = orders.shipped.load(Ordering::Relaxed);
    println!(
        "order_service: {placed_by_clients} orders from two clients, then 22 right before close"
    );
    println!(
        "  close dispatched {} events (the follow-ups of orders mid-flight included)",
        report.dispatched
    );
    println!(
        "  placed {placed}, shipped {shipped}, awaiting {}",
        placed - shipped
    );
    println!(
        "  revenue {}.{:02}",
        orders.revenue_cents.load(Ordering::Relaxed) / 100,
        orders.revenue_cents.load(Ordering::Relaxed) % 100
    );
    println!(
        "  payment timeouts: cancelled on shipping {}, fired {}, refused during shutdown {} (the timer stops first)",
        orders.timeouts_cancelled.load(Ordering::Relaxed),
        orders.timeouts_fired.load(Ordering::Relaxed),
        orders.no_timeout_in_shutdown.load(Ordering::Relaxed)
    );
    println!(
        "  an order placed after close: {:?}",
        late.map_err(EnqueueError::kind)
    );
    println!(
        "  metrics: published {}, processed {}, failed {}, rejected {} (full {}, closed {}, timeout {}), scheduled {}, cancelled {}, balanced {}",
        m.published,
        m.processed,
        m.failed,
        m.rejected,
        m.rejected_full,
        m.rejected_closed,
        m.rejected_timeout,
        m.scheduled,
        m.cancelled,
        m.is_balanced()
    );
    assert_eq!(placed, shipped, "every accepted order shipped");
    assert_eq!(
        orders.paid.lock().unwrap().len() as u64,
        shipped,
        "paid with its shipment"
    );
    assert_eq!(placed, placed_by_clients + 22);
    assert_eq!(m.failed, 0);
    assert!(m.is_balanced());
    Ok(())
}

//! Serves a store's metrics to Prometheus while a loop publishes (feature `prometheus`).
//!
//! ```text
//! cargo run --release --features prometheus --example prometheus
//! curl http://127.0.0.1:9898/metrics
//! cargo run --release --features prometheus --example prometheus -- --addr 127.0.0.1:0 --seconds 5
//! ```
//!
//! The first line on stdout is `listening on http://ADDR/metrics`, with the bound address
//! (`--addr 127.0.0.1:0` picks a free port), so a script or test can find it. An order
//! service's events: placed and shipped orders are handled, one payment in ten fails, and
//! refunds have no handler (unrouted); one event in 16 has its latencies sampled.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};
use tiny_http::{Header, Response, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Placed,
    Paid,
    Shipped,
    Refunded,
}

struct OrderEvent {
    kind: Kind,
    order: u64,
}

impl Event for OrderEvent {
    type Projection = Kind;
    fn projection(&self) -> Kind {
        self.kind
    }
}

fn store() -> EventStore<OrderEvent> {
    let mut d = Dispatcher::<OrderEvent>::new();
    d.on(Kind::Placed, |_, _| Ok(()));
    d.on(Kind::Paid, |_, e| {
        if e.order % 10 == 7 {
            Err(format!("card declined for order {}", e.order).into())
        } else {
            Ok(())
        }
    });
    d.on(Kind::Shipped, |_, _| {
        thread::sleep(Duration::from_micros(20));
        Ok(())
    });
    EventStore::builder(d)
        .capacity(4096)
        .policy(OverrunPolicy::DropOldest)
        .sample_latency(16)
        .build()
        .expect("a power-of-two capacity and sampling rate")
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).cloned()
}

fn main() {
    let addr = arg("--addr").unwrap_or_else(|| "127.0.0.1:9898".to_owned());
    let seconds: Option<u64> =
        arg("--seconds").map(|s| s.parse().expect("--seconds takes a number"));
    let store = store();
    let mut registry = Registry::default();
    ringbus::prometheus::Exporter::register(&mut registry).add("orders", &store);

    let server = Server::http(&addr).unwrap_or_else(|e| {
        eprintln!("cannot listen on {addr}: {e}");
        std::process::exit(1);
    });
    let bound = server.server_addr().to_ip().expect("an IP listener");
    println!("listening on http://{bound}/metrics");
    std::io::stdout().flush().expect("stdout");

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (store, stop) = (store.clone(), stop.clone());
        thread::spawn(move || {
            let mut order = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    order += 1;
                    for kind in [Kind::Placed, Kind::Paid, Kind::Shipped] {
                        let _ = store.enqueue(OrderEvent { kind, order });
                    }
                    if order % 25 == 0 {
                        let _ = store.enqueue(OrderEvent {
                            kind: Kind::Refunded,
                            order,
                        });
                    }
                }
                store.publish();
                thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let until = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let content_type = Header::from_bytes(
        "Content-Type",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    .expect("a valid header");
    while until.is_none_or(|u| Instant::now() < u) {
        let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let response = if request.url() == "/metrics" {
            let mut body = String::new();
            match encode(&mut body, &registry) {
                Ok(()) => Response::from_string(body).with_header(content_type.clone()),
                Err(_) => Response::from_string("encoding failed").with_status_code(500),
            }
        } else {
            Response::from_string("try /metrics").with_status_code(404)
        };
        if let Err(e) = request.respond(response) {
            eprintln!("responding: {e}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("the publisher does not panic");
    store.close(Duration::from_secs(5)).expect("close drains");
    let m = store.metrics();
    println!(
        "served; published {} processed {} failed {} unrouted {}",
        m.published, m.processed, m.failed, m.unrouted
    );
}

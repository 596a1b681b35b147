//! One event bus across processes, through Redis Streams (feature `redis`): run it as a
//! publisher in one process and as receivers in others.
//!
//! ```text
//! redis-server --port 6379 &
//! cargo run --release --features redis --example cross_process -- receive --consumer b1 --expect 100000
//! cargo run --release --features redis --example cross_process -- publish --events 100000
//! ```
//!
//! Options (all roles): `--url URL` (default `redis://127.0.0.1:6379/`), `--stream KEY`
//! (default `ringbus-demo`). `publish`: `--events N`, `--from N` (the first event's number),
//! `--pack N` (events a stream entry, default 1: `RedisOptions::events_per_entry`).
//! `receive`: `--group NAME` (default `orders`), `--consumer NAME` (stable across restarts:
//! it takes back its pending entries), `--expect N` (exit once N distinct events were handled,
//! counting those already in `--out`), `--out FILE` (append each handled event's number, one
//! line each, before it is acknowledged), `--idle-exit SECONDS` (exit after that long with
//! nothing new), `--claim-ms MS` (the claim timeout).
//!
//! The publisher's store handles its orders locally and forwards them; each receiver's store
//! handles what arrives. Two receivers in one group share the events; receivers in two groups
//! each get all of them. A receiver killed and restarted under the same consumer name
//! handles what it left unacknowledged again (at least once).

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringbus::bridge::{
    ForwardOptions, Forwarder, Json, ReceiveOptions, Receiver, RedisOptions, RedisStreams,
};
use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy, WaitStrategy};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    number: u64,
    amount_cents: u64,
}

impl Event for Order {
    type Projection = &'static str;
    fn projection(&self) -> &'static str {
        "order"
    }
}

/// `--name value` pairs after the role.
struct Args(Vec<String>);

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        let at = self.0.iter().position(|a| a == name)?;
        self.0.get(at + 1).map(String::as_str)
    }

    fn number(&self, name: &str, default: u64) -> u64 {
        self.get(name)
            .map_or(default, |v| v.parse().expect("a number"))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let role = argv.next().unwrap_or_default();
    let args = Args(argv.collect());
    let url = args
        .get("--url")
        .unwrap_or("redis://127.0.0.1:6379/")
        .to_owned();
    let stream = args.get("--stream").unwrap_or("ringbus-demo").to_owned();
    match role.as_str() {
        "publish" => publish(&args, &url, &stream),
        "receive" => receive(&args, &url, &stream),
        _ => {
            eprintln!("usage: cross_process publish|receive [options] (see the file's docs)");
            std::process::exit(2);
        }
    }
}

fn publish(args: &Args, url: &str, stream: &str) -> Result<(), Box<dyn std::error::Error>> {
    let events = args.number("--events", 10_000);
    let from = args.number("--from", 0);
    let handled = Arc::new(AtomicU64::new(0));
    let mut dispatcher = Dispatcher::<Order>::new();
    let local = handled.clone();
    dispatcher.on("order", move |_, _| {
        local.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let store = EventStore::new(dispatcher, 4096, OverrunPolicy::Block)?;
    let pack = usize::try_from(args.number("--pack", 1))?;
    let backend = RedisStreams::connect(RedisOptions::new(url, stream).events_per_entry(pack))?;
    let forwarder = Forwarder::start(&store, ["order"], Json, backend, ForwardOptions::default())?;
    let started = Instant::now();
    for number in from..from + events {
        store.enqueue(Order {
            number,
            amount_cents: 100 + number % 900,
        })?;
        if number % 1024 == 1023 {
            store.publish();
        }
    }
    store.publish();
    let unsent = forwarder.close(Duration::from_secs(60));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {events} orders in {secs:.2} s ({:.0}/s), handled locally {}, unsent {unsent}",
        events as f64 / secs,
        handled.load(Ordering::Relaxed)
    );
    if unsent > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn receive(args: &Args, url: &str, stream: &str) -> Result<(), Box<dyn std::error::Error>> {
    let group = args.get("--group").unwrap_or("orders");
    let consumer = args.get("--consumer").unwrap_or("receiver");
    let expect = args.number("--expect", u64::MAX);
    let idle_exit = Duration::from_secs(args.number("--idle-exit", 30));
    let claim = Duration::from_millis(args.number("--claim-ms", 5_000));
    // What earlier runs under this output handled, so that `--expect` counts across restarts.
    let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let out = match args.get("--out") {
        Some(path) => {
            if let Ok(file) = std::fs::File::open(path) {
                let mut seen = seen.lock().unwrap();
                for line in BufReader::new(file).lines() {
                    if let Ok(n) = line?.trim().parse() {
                        seen.insert(n);
                    }
                }
            }
            Some(OpenOptions::new().create(true).append(true).open(path)?)
        }
        None => None,
    };
    let out = Arc::new(Mutex::new(out));
    let mut dispatcher = Dispatcher::<Order>::new();
    let (record, file) = (seen.clone(), out.clone());
    dispatcher.on("order", move |_, order: &Order| {
        // Written (not buffered) before the handler returns, so before the acknowledgement.
        // One write a line: a receiver killed mid-line must not leave half a number.
        if let Some(file) = file.lock().unwrap().as_mut() {
            file.write_all(format!("{}\n", order.number).as_bytes())?;
        }
        record.lock().unwrap().insert(order.number);
        Ok(())
    });
    let (store, producer) = EventStore::builder(dispatcher)
        .capacity(4096)
        .build_with_producer()?;
    let consumer_thread = store.spawn_consumer(WaitStrategy::default());
    let backend = RedisStreams::connect(
        RedisOptions::new(url, stream)
            .group(group)
            .consumer(consumer)
            .claim_idle(claim),
    )?;
    let receiver = Receiver::start(producer, Json, backend, ReceiveOptions::default())?;
    println!("receiving as {consumer} in group {group}");
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let now = seen.lock().unwrap().len() as u64;
        if now >= expect || last_change.elapsed() >= idle_exit {
            break;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the last events' acknowledgements go out before stopping.
    let settle = Instant::now();
    while receiver.metrics().in_flight > 0 && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let metrics = receiver.metrics();
    receiver.stop();
    let dropped = store.metrics().dropped;
    store.close(Duration::from_secs(10))?;
    consumer_thread.join();
    println!(
        "handled {} distinct orders; enqueued {}, acked {}, duplicates {}, malformed {}, \
         dropped by the store {}",
        seen.lock().unwrap().len(),
        metrics.enqueued,
        metrics.acked,
        metrics.duplicates,
        metrics.malformed,
        dropped
    );
    Ok(())
}

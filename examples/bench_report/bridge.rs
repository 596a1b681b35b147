//! W-bridge (feature `redis`): one store's events to another's through Redis Streams on
//! loopback, beside `redis-benchmark`'s own XADD figures from the same run. Starts its own
//! `redis-server` (from PATH, a free port, a temp dir, persistence off: the broker's speed,
//! not the disk's) and runs `redis-benchmark` against it.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ringbus::bridge::{
    ForwardOptions, Forwarder, Json, ReceiveOptions, Receiver, RedisOptions, RedisStreams,
};
use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy, WaitStrategy};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Tick {
    n: u64,
    /// When it was enqueued at A, in ns since `epoch()` (A and B share the process's clock).
    sent_ns: u64,
}

impl Event for Tick {
    type Projection = &'static str;
    fn projection(&self) -> &'static str {
        "tick"
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

struct Server(Child, u16, std::path::PathBuf);

impl Server {
    fn start() -> Result<Server, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir = std::env::temp_dir().join(format!("ringbus-bench-redis-{port}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dir", dir.to_str().unwrap_or(".")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server not on PATH? {e}"))?;
        let server = Server(child, port, dir);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.2);
    }
}

/// `redis-benchmark`'s XADD rate, pipelined `pipeline` deep.
fn redis_benchmark(port: u16, requests: u64, pipeline: u32) -> Result<f64, String> {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-n", &requests.to_string()])
        .args(["-P", &pipeline.to_string(), "-q"])
        .args(["XADD", "redis-benchmark", "*", "f", "v"])
        .output()
        .map_err(|e| format!("redis-benchmark not on PATH? {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "XADD redis-benchmark * f v: 123456.79 requests per second, p50=..."
    // Progress lines end in `\r`; the result is the last piece.
    let result = text
        .split(['\r', '\n'])
        .rfind(|piece| piece.contains("requests per second"))
        .unwrap_or_default();
    result
        .rsplit(": ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("cannot read redis-benchmark's output: {text}"))
}

/// A bridged pair on `stream`: A forwards, B receives and records each event's delay.
struct Pair {
    a: EventStore<Tick>,
    forwarder: Forwarder,
    b: EventStore<Tick>,
    receiver: Receiver,
    consumer: ringbus::ConsumerThread,
    handled: Arc<AtomicU64>,
    delays: Arc<Mutex<Vec<u64>>>,
}

impl Pair {
    /// `packed`: events per stream entry on the way out.
    fn start(url: &str, stream: &str, packed: usize) -> Result<Pair, String> {
        let a = EventStore::new(Dispatcher::<Tick>::new(), 1 << 16, OverrunPolicy::Block)
            .map_err(|e| e.to_string())?;
        let connect = |consumer: &str| {
            let options = RedisOptions::new(url, stream)
                .consumer(consumer)
                .events_per_entry(packed);
            RedisStreams::connect(options).map_err(|e| e.to_string())
        };
        let forwarder = Forwarder::start(
            &a,
            ["tick"],
            Json,
            connect("a")?,
            ForwardOptions::default().batch(1024),
        )
        .map_err(|e| e.to_string())?;
        let handled = Arc::new(AtomicU64::new(0));
        let delays = Arc::new(Mutex::new(Vec::new()));
        let mut dispatcher = Dispatcher::<Tick>::new();
        let (count, record) = (handled.clone(), delays.clone());
        dispatcher.on("tick", move |_, tick: &Tick| {
            record
                .lock()
                .unwrap()
                .push(now_ns().saturating_sub(tick.sent_ns));
            count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        let (b, producer) = EventStore::builder(dispatcher)
            .capacity(1 << 16)
            .build_with_producer()
            .map_err(|e| e.to_string())?;
        let consumer = b.spawn_consumer(WaitStrategy::default());
        let receiver = Receiver::start(
            producer,
            Json,
            connect("b")?,
            ReceiveOptions::default()
                .batch(1024)
                .wait(Duration::from_millis(10)),
        )
        .map_err(|e| e.to_string())?;
        Ok(Pair {
            a,
            forwarder,
            b,
            receiver,
            consumer,
            handled,
            delays,
        })
    }

    /// Sends `n` events, at `rate` a second if given (else as fast as A takes them); returns
    /// the time until B handled them all.
    fn run(&self, n: u64, rate: Option<u64>) -> Result<Duration, String> {
        let start_count = self.handled.load(Ordering::Relaxed);
        let started = Instant::now();
        for i in 0..n {
            if let Some(rate) = rate {
                // Sleep, not spin: on two cores a spinning publisher would starve the bridge's
                // threads and Redis, and measure that.
                let due = started + Duration::from_nanos(i * 1_000_000_000 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            self.a
                .enqueue(Tick {
                    n: i,
                    sent_ns: now_ns(),
                })
                .map_err(|e| e.to_string())?;
            if rate.is_some() || i % 256 == 255 {
                self.a.publish();
            }
        }
        self.a.publish();
        while self.handled.load(Ordering::Relaxed) < start_count + n {
            if started.elapsed() > Duration::from_secs(120) {
                return Err("B did not get every event within 120 s".into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(started.elapsed())
    }

    fn finish(self) {
        self.forwarder.close(Duration::from_secs(5));
        self.receiver.stop();
        let _ = self.b.close(Duration::from_secs(5));
        self.consumer.join();
    }
}

/// The W-bridge section of the report.
pub fn report(quick: bool) -> String {
    match measure(quick) {
        Ok(text) => text,
        Err(e) => format!("\nW-bridge: not measured: {e}\n"),
    }
}

/// Events per stream entry of the packed cell (`RedisOptions::events_per_entry`).
const PACKED: usize = 16;

/// Runs of the throughput measurement of each pair, alternated: this VM's speed drifts by
/// tens of percent between seconds, so one run says little.
const RUNS: usize = 5;

/// One pair's figures: events/s one way per run, sorted; latency at 10,000 events/s (p50,
/// p99, max, in microseconds).
struct Figures {
    rates: Vec<f64>,
    latency: (f64, f64, f64),
}

impl Figures {
    fn median(&self) -> f64 {
        self.rates[self.rates.len() / 2]
    }

    fn range(&self) -> String {
        format!(
            "{:.0}-{:.0}",
            self.rates[0],
            self.rates[self.rates.len() - 1]
        )
    }
}

/// The latency at 10,000 events/s of `pair`: p50, p99, max in microseconds.
fn paced(pair: &Pair, events: u64) -> Result<(f64, f64, f64), String> {
    pair.delays.lock().unwrap().clear();
    pair.run(events, Some(10_000))?;
    let mut delays = std::mem::take(&mut *pair.delays.lock().unwrap());
    delays.sort_unstable();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    Ok((at(0.5), at(0.99), at(1.0)))
}

fn measure(quick: bool) -> Result<String, String> {
    let server = Server::start()?;
    let requests = if quick { 100_000 } else { 500_000 };
    let pipelined = redis_benchmark(server.1, requests, 16)?;
    let unpipelined = redis_benchmark(server.1, requests / 10, 1)?;
    let (throughput_events, paced_events, runs) = if quick {
        (50_000, 10_000, 1)
    } else {
        (200_000, 30_000, RUNS)
    };
    let pairs = [
        Pair::start(&server.url(), "w-bridge-1", 1)?,
        Pair::start(&server.url(), "w-bridge-packed", PACKED)?,
    ];
    let mut rates = [Vec::new(), Vec::new()];
    for pair in &pairs {
        pair.run(10_000, None)?; // warm-up
    }
    for _ in 0..runs {
        for (pair, rates) in pairs.iter().zip(&mut rates) {
            let took = pair.run(throughput_events, None)?;
            rates.push(throughput_events as f64 / took.as_secs_f64());
        }
    }
    let mut figures = Vec::new();
    for (pair, mut rates) in pairs.iter().zip(rates) {
        rates.sort_by(f64::total_cmp);
        figures.push(Figures {
            rates,
            latency: paced(pair, paced_events)?,
        });
    }
    for pair in pairs {
        pair.finish();
    }
    let (single, packed) = (&figures[0], &figures[1]);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nW-bridge: A's store to B's store through Redis Streams on loopback (JSON, sends of up to 1024 events; {runs} runs of {throughput_events} events each, alternated)"
    );
    let _ = writeln!(
        out,
        "  redis-benchmark XADD, same server: {pipelined:.0}/s pipelined 16 deep, {unpipelined:.0}/s unpipelined"
    );
    for (label, f) in [
        ("an event an entry (default)".to_string(), single),
        (format!("{PACKED} events an entry"), packed),
    ] {
        let (p50, p99, max) = f.latency;
        let _ = writeln!(
            out,
            "  {label}: median {:.0} events/s one way (runs {}; {:.2}x of redis-benchmark's pipelined XADD); at 10,000 events/s p50 {p50:.0} us, p99 {p99:.0} us, max {max:.0} us",
            f.median(),
            f.range(),
            f.median() / pipelined
        );
    }
    let mark = |met: bool| if met { "met   " } else { "MISSED" };
    let _ = writeln!(
        out,
        "  [{}] at least 200,000 events/s one way (median): {:.0} packed {PACKED} an entry ({:.0} an event an entry)",
        mark(packed.median() >= 200_000.0),
        packed.median(),
        single.median()
    );
    let _ = writeln!(
        out,
        "  [{}] p99 under 2 ms at 10,000 events/s: {:.0} us ({:.0} us packed)",
        mark(single.latency.1 < 2_000.0 && packed.latency.1 < 2_000.0),
        single.latency.1,
        packed.latency.1
    );
    Ok(out)
}

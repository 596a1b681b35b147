//! Feature `prometheus`: the exposition parsed with an OpenMetrics parser, exact values for a
//! store with known counts, and the example served over HTTP, scraped with an HTTP client.
#![cfg(feature = "prometheus")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use openmetrics_parser::{MetricFamily, MetricsExposition, OpenMetricsType, OpenMetricsValue};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy};

mod support {
    pub mod deadline;
}
use support::deadline::deadline;

const LIMIT: Duration = Duration::from_secs(60);

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;
type Family = MetricFamily<OpenMetricsType, OpenMetricsValue>;

fn parse(text: &str) -> Exposition {
    openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics: {e:?}\n{text}"))
}

fn family<'a>(expo: &'a Exposition, name: &str) -> &'a Family {
    expo.families
        .get(name)
        .unwrap_or_else(|| panic!("no family {name}; have {:?}", expo.families.keys()))
}

/// The sample of `name` with exactly these labels (any order).
fn sample<'a>(expo: &'a Exposition, name: &str, labels: &[(&str, &str)]) -> &'a OpenMetricsValue {
    let family = family(expo, name);
    let names = family.get_label_names();
    assert_eq!(names.len(), labels.len(), "{name}: labels {names:?}");
    let values: Vec<String> = names
        .iter()
        .map(|n| {
            let (_, v) = labels
                .iter()
                .find(|(k, _)| k == n)
                .unwrap_or_else(|| panic!("{name} has label {n} the test did not name"));
            (*v).to_owned()
        })
        .collect();
    &family
        .get_sample_by_label_values(&values)
        .unwrap_or_else(|| panic!("{name}{labels:?}: no such series"))
        .value
}

fn number(value: &OpenMetricsValue) -> f64 {
    match value {
        OpenMetricsValue::Counter(c) => c.value.as_f64(),
        OpenMetricsValue::Gauge(g) | OpenMetricsValue::Unknown(g) => g.as_f64(),
        other => panic!("not a number: {other:?}"),
    }
}

fn counter(expo: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    assert_eq!(
        family(expo, name).family_type,
        OpenMetricsType::Counter,
        "{name}"
    );
    number(sample(expo, name, labels))
}

fn gauge(expo: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    assert_eq!(
        family(expo, name).family_type,
        OpenMetricsType::Gauge,
        "{name}"
    );
    number(sample(expo, name, labels))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    A,
    B,
    C,
}

struct Ev(Kind);

impl Event for Ev {
    type Projection = Kind;
    fn projection(&self) -> Kind {
        self.0
    }
}

/// A store with known counts: 10 processed of `A`, 3 failed of `B`, 2 unrouted of `C`, and on
/// a second store (a ring of 4 under `DropOldest`) 6 of 10 `A`s dropped.
#[test]
fn the_exposition_carries_exact_values_per_store_and_projection() {
    let _deadline = deadline("the_exposition_carries_exact_values", LIMIT);
    let mut d = Dispatcher::<Ev>::new();
    d.on(Kind::A, |_, _| Ok(()));
    d.on(Kind::B, |_, _| Err("no".into()));
    let store = EventStore::builder(d)
        .capacity(64)
        .sample_latency(1)
        .build()
        .unwrap();
    let mut small_d = Dispatcher::<Ev>::new();
    small_d.on(Kind::A, |_, _| Ok(()));
    let small = EventStore::new(small_d, 4, OverrunPolicy::DropOldest).unwrap();
    let mut registry = Registry::default();
    let exporter = ringbus::prometheus::Exporter::register(&mut registry);
    exporter.add("main", &store);
    exporter.add("small", &small);
    for (kind, n) in [(Kind::A, 10), (Kind::B, 3), (Kind::C, 2)] {
        for _ in 0..n {
            store.enqueue(Ev(kind)).unwrap();
        }
    }
    store.publish();
    for _ in 0..10 {
        small.enqueue(Ev(Kind::A)).unwrap();
    }
    store.enqueue(Ev(Kind::A)).unwrap(); // one pending
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    let expo = parse(&text);

    let main = ("store", "main");
    assert_eq!(counter(&expo, "ringbus_published", &[main]), 16.0);
    for (outcome, n) in [
        ("processed", 10.0),
        ("failed", 3.0),
        ("unrouted", 2.0),
        ("dropped", 0.0),
        ("dead_lettered", 0.0),
        ("filtered", 0.0),
    ] {
        assert_eq!(
            counter(&expo, "ringbus_events", &[main, ("outcome", outcome)]),
            n,
            "{outcome}"
        );
    }
    assert_eq!(counter(&expo, "ringbus_handler_errors", &[main]), 3.0);
    assert_eq!(
        counter(&expo, "ringbus_rejected", &[main, ("reason", "full")]),
        0.0
    );
    assert_eq!(gauge(&expo, "ringbus_pending", &[main]), 1.0);
    assert_eq!(gauge(&expo, "ringbus_capacity", &[main]), 64.0);
    assert_eq!(gauge(&expo, "ringbus_depth_high_water", &[main]), 15.0);
    // 3 of 13 failed, but 13 events are under `min_events`: no error-rate verdict yet.
    assert_eq!(gauge(&expo, "ringbus_healthy", &[main]), 1.0);
    for (kind, outcome, n) in [
        ("A", "processed", 10.0),
        ("B", "failed", 3.0),
        ("C", "unrouted", 2.0),
        ("A", "failed", 0.0),
    ] {
        let labels = [main, ("projection", kind), ("outcome", outcome)];
        assert_eq!(
            counter(&expo, "ringbus_projection_events", &labels),
            n,
            "{kind} {outcome}"
        );
    }
    assert_eq!(
        counter(
            &expo,
            "ringbus_projection_handler_errors",
            &[main, ("projection", "B")]
        ),
        3.0
    );
    // Every handled event sampled: A's histogram holds 10 runs, with cumulative buckets.
    for name in ["ringbus_wait_seconds", "ringbus_handler_seconds"] {
        assert_eq!(family(&expo, name).family_type, OpenMetricsType::Histogram);
        match sample(&expo, name, &[main, ("projection", "A")]) {
            OpenMetricsValue::Histogram(h) => {
                assert_eq!(h.count, Some(10), "{name}");
                let counts: Vec<f64> = h.buckets.iter().map(|b| b.count.as_f64()).collect();
                assert!(
                    counts.windows(2).all(|w| w[0] <= w[1]),
                    "{name}: {counts:?}"
                );
                let inf = h.buckets.last().unwrap();
                assert!(inf.upper_bound.is_infinite());
                assert_eq!(inf.count.as_f64(), 10.0, "{name}: +Inf holds every sample");
                assert!(h.sum.unwrap().as_f64() > 0.0);
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    let small = ("store", "small");
    assert_eq!(
        counter(&expo, "ringbus_events", &[small, ("outcome", "dropped")]),
        6.0
    );
    assert_eq!(
        counter(
            &expo,
            "ringbus_projection_events",
            &[small, ("projection", "A"), ("outcome", "dropped")]
        ),
        6.0
    );
    assert_eq!(gauge(&expo, "ringbus_backlog_ratio", &[small]), 1.0);
    assert!(
        family(&expo, "ringbus_wait_seconds")
            .get_sample_by_label_values(&["small".into(), "A".into()])
            .is_none(),
        "a store that does not sample exports no histogram"
    );
}

/// A dropped store exports nothing: the collector holds it weakly.
#[test]
fn a_dropped_store_is_not_kept_alive_by_its_collector() {
    let _deadline = deadline("a_dropped_store_is_not_kept_alive", LIMIT);
    let store = EventStore::new(Dispatcher::<Ev>::new(), 8, OverrunPolicy::Block).unwrap();
    let mut registry = Registry::default();
    let exporter = ringbus::prometheus::Exporter::register(&mut registry);
    exporter.add("gone", &store);
    drop(store);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert_eq!(text, "# EOF\n", "nothing but the end marker");
}

/// Kills the child when the test ends, passing or failing.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The example, built by `cargo test` next to this test's binary.
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = profile_dir
        .join("examples")
        .join(format!("prometheus{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the whole suite with `cargo test --features prometheus` (a test \
         filter such as `--test prometheus` does not build the examples)",
        binary.display()
    );
    binary
}

#[test]
fn the_example_serves_every_family_over_http() {
    let _deadline = deadline("the_example_serves_every_family_over_http", LIMIT);
    let child = Command::new(example_binary())
        .args(["--addr", "127.0.0.1:0", "--seconds", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let mut child = Kill(child);
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let scrape = || -> (String, String) {
        let mut response = ureq::get(&url).call().expect("the scrape succeeds");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (content_type, response.body_mut().read_to_string().unwrap())
    };
    std::thread::sleep(Duration::from_millis(300));
    let (content_type, body) = scrape();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let before = parse(&body);
    std::thread::sleep(Duration::from_millis(300));
    let after = parse(&scrape().1);

    let store = ("store", "orders");
    let published = |e: &Exposition| counter(e, "ringbus_published", &[store]);
    assert!(published(&before) > 0.0);
    assert!(
        published(&after) > published(&before),
        "the loop keeps publishing"
    );
    for name in [
        "ringbus_handler_errors",
        "ringbus_panics",
        "ringbus_retries",
        "ringbus_skipped",
        "ringbus_drop_panics",
        "ringbus_cancelled",
    ] {
        counter(&after, name, &[store]);
    }
    for name in [
        "ringbus_pending",
        "ringbus_in_flight",
        "ringbus_retrying",
        "ringbus_scheduled",
        "ringbus_dead_letters",
        "ringbus_depth_high_water",
        "ringbus_capacity",
        "ringbus_healthy",
        "ringbus_backlog_ratio",
    ] {
        gauge(&after, name, &[store]);
    }
    let outcome = |o: &str| counter(&after, "ringbus_events", &[store, ("outcome", o)]);
    let finished = outcome("processed") + outcome("failed") + outcome("unrouted");
    assert!(finished <= published(&after));
    assert!(outcome("failed") > 0.0 && outcome("unrouted") > 0.0);
    for kind in ["Placed", "Paid", "Shipped", "Refunded"] {
        let events = |o: &str| {
            counter(
                &after,
                "ringbus_projection_events",
                &[store, ("projection", kind), ("outcome", o)],
            )
        };
        assert!(
            events("processed") + events("failed") + events("unrouted") > 0.0,
            "{kind}"
        );
        counter(
            &after,
            "ringbus_projection_retries",
            &[store, ("projection", kind)],
        );
        gauge(
            &after,
            "ringbus_projection_retrying",
            &[store, ("projection", kind)],
        );
    }
    // Only payments fail. (The projections are read after the store's counters while the
    // loop runs on, so theirs may be a little ahead.)
    let failed = |kind: &str| {
        counter(
            &after,
            "ringbus_projection_events",
            &[store, ("projection", kind), ("outcome", "failed")],
        )
    };
    assert!(failed("Paid") >= outcome("failed") && failed("Paid") > 0.0);
    for kind in ["Placed", "Shipped", "Refunded"] {
        assert_eq!(failed(kind), 0.0, "{kind}");
    }
    for name in ["ringbus_wait_seconds", "ringbus_handler_seconds"] {
        match sample(&after, name, &[store, ("projection", "Shipped")]) {
            OpenMetricsValue::Histogram(h) => {
                let inf = h.buckets.last().unwrap().count.as_f64();
                assert_eq!(Some(inf as u64), h.count, "{name}: +Inf is the count");
                assert!(inf > 0.0, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // Shipping sleeps 20 us: no sampled run is faster.
    if let OpenMetricsValue::Histogram(h) = sample(
        &after,
        "ringbus_handler_seconds",
        &[store, ("projection", "Shipped")],
    ) {
        let under_10us = h.buckets.iter().find(|b| b.upper_bound == 1e-5).unwrap();
        assert_eq!(under_10us.count.as_f64(), 0.0);
    }
}

//! The `tracing` feature: a test subscriber sees the spans (`publish`, `run`, `handler`) and
//! the events (drop, rejection, handler error, panic) with their fields.
#![cfg(feature = "tracing")]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringbus::{Dispatcher, EnqueueError, Event, EventStore, OverrunPolicy};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug)]
struct Ev {
    key: &'static str,
}

impl Event for Ev {
    type Projection = &'static str;
    fn projection(&self) -> &'static str {
        self.key
    }
}

/// What the subscriber saw: a span (with the names of its ancestors, nearest first) or an event.
#[derive(Debug, Clone)]
struct Seen {
    span: bool,
    name: String,
    level: tracing::Level,
    parents: Vec<String>,
    fields: BTreeMap<String, String>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Records spans (fields as they are recorded, so `publish`'s totals too) and events.
#[derive(Clone, Default)]
struct Collector {
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Where a span's entry in `seen` is, kept in the span's extensions.
struct Index(usize);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collector {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("a new span is in the registry");
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parents = span.scope().skip(1).map(|s| s.name().to_owned()).collect();
        let mut seen = self.seen.lock().unwrap();
        span.extensions_mut().insert(Index(seen.len()));
        seen.push(Seen {
            span: true,
            name: attrs.metadata().name().to_owned(),
            level: *attrs.metadata().level(),
            parents,
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("a recorded span is in the registry");
        let index = span.extensions().get::<Index>().expect("indexed").0;
        values.record(&mut Fields(&mut self.seen.lock().unwrap()[index].fields));
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let parents = ctx
            .event_scope(event)
            .map(|scope| scope.map(|s| s.name().to_owned()).collect())
            .unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            span: false,
            name: fields.get("message").cloned().unwrap_or_default(),
            level: *event.metadata().level(),
            parents,
            fields,
        });
    }
}

/// Runs `f` with the collector as this thread's subscriber (at every level) and returns what
/// it saw.
fn collect(f: impl FnOnce()) -> Vec<Seen> {
    let collector = Collector::default();
    let subscriber = tracing_subscriber::registry().with(collector.clone());
    tracing::subscriber::with_default(subscriber, f);
    collector.seen.lock().unwrap().clone()
}

fn spans<'a>(seen: &'a [Seen], name: &str) -> Vec<&'a Seen> {
    seen.iter().filter(|s| s.span && s.name == name).collect()
}

fn events<'a>(seen: &'a [Seen], message: &str) -> Vec<&'a Seen> {
    seen.iter()
        .filter(|s| !s.span && s.name == message)
        .collect()
}

#[test]
fn publish_run_and_handler_spans_carry_their_fields() {
    let mut dispatcher = Dispatcher::<Ev>::new();
    dispatcher.on("ok", |_, _| Ok(()));
    dispatcher.on("ok", |_, _| Ok(()));
    dispatcher.on("fails", |_, _| Err("no funds".into()));
    let store = EventStore::new(dispatcher, 8, OverrunPolicy::ReturnError).unwrap();
    let seen = collect(|| {
        for key in ["ok", "fails", "unrouted"] {
            store.enqueue(Ev { key }).unwrap();
        }
        let report = store.publish();
        assert_eq!((report.dispatched, report.processed), (3, 1));
    });

    let publish = spans(&seen, "publish");
    assert_eq!(publish.len(), 1, "{seen:#?}");
    let publish = publish[0];
    assert_eq!(publish.level, tracing::Level::DEBUG);
    assert_eq!(publish.field("dispatched"), Some("3"));
    assert_eq!(publish.field("processed"), Some("1"));
    assert_eq!(publish.field("failed"), Some("1"));
    assert_eq!(publish.field("unrouted"), Some("1"));
    assert_eq!(publish.field("handler_errors"), Some("1"));

    let run = spans(&seen, "run");
    assert_eq!(run.len(), 1, "{seen:#?}");
    assert_eq!(run[0].field("first"), Some("0"));
    assert_eq!(run[0].field("events"), Some("3"));
    assert_eq!(run[0].parents, ["publish"]);

    // Two handlers of "ok" (sequence 0), one of "fails" (sequence 1), none for "unrouted".
    let handlers: Vec<_> = spans(&seen, "handler")
        .into_iter()
        .map(|s| {
            assert_eq!(s.level, tracing::Level::TRACE);
            assert_eq!(s.parents, ["run", "publish"]);
            (
                s.field("projection").unwrap(),
                s.field("sequence").unwrap(),
                s.field("handler").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        handlers,
        [
            ("\"ok\"", "0", "0"),
            ("\"ok\"", "0", "1"),
            ("\"fails\"", "1", "0")
        ]
    );

    // The failure's event sits inside the failing handler's span.
    let failed = events(&seen, "handler failed");
    assert_eq!(failed.len(), 1, "{seen:#?}");
    assert_eq!(failed[0].level, tracing::Level::WARN);
    assert_eq!(failed[0].field("kind"), Some("handler"));
    assert_eq!(failed[0].field("projection"), Some("\"fails\""));
    assert_eq!(failed[0].field("sequence"), Some("1"));
    assert_eq!(failed[0].parents, ["handler", "run", "publish"]);
}

#[test]
fn a_panic_is_an_error_event_with_its_message() {
    let mut dispatcher = Dispatcher::<Ev>::new();
    dispatcher.on("boom", |_, _| panic!("handler blew up"));
    let store = EventStore::new(dispatcher, 8, OverrunPolicy::ReturnError).unwrap();
    let seen = collect(|| {
        store.enqueue(Ev { key: "ok" }).unwrap();
        store.enqueue(Ev { key: "boom" }).unwrap();
        assert_eq!(store.publish().failed, 1);
    });
    let panicked = events(&seen, "handler panicked");
    assert_eq!(panicked.len(), 1, "{seen:#?}");
    let panicked = panicked[0];
    assert_eq!(panicked.level, tracing::Level::ERROR);
    assert_eq!(panicked.field("kind"), Some("panic"));
    assert_eq!(panicked.field("projection"), Some("\"boom\""));
    assert_eq!(panicked.field("sequence"), Some("1"));
    assert_eq!(panicked.field("panic"), Some("handler blew up"));
    // Reported after the unwind, outside the handler's span but inside the run's.
    assert_eq!(panicked.parents, ["run", "publish"]);
}

#[test]
fn drop_oldest_evictions_are_warn_events_with_the_evicted_sequence() {
    let store = EventStore::new(Dispatcher::<Ev>::new(), 4, OverrunPolicy::DropOldest).unwrap();
    let seen = collect(|| {
        for _ in 0..6 {
            store.enqueue(Ev { key: "x" }).unwrap();
        }
        let mut batch: Vec<_> = (0..2).map(|_| Ev { key: "x" }).collect();
        assert_eq!(store.enqueue_batch(&mut batch).unwrap().dropped, 2);
    });
    let dropped: Vec<_> = events(&seen, "event dropped")
        .into_iter()
        .map(|s| {
            assert_eq!(s.level, tracing::Level::WARN);
            s.field("sequence").unwrap().to_owned()
        })
        .collect();
    // Sequences 0 and 1 made room for 4 and 5 (one at a time), 2 and 3 for the batch.
    assert_eq!(dropped, ["0", "1", "2", "3"]);
    assert_eq!(store.metrics().dropped, 4);
}

#[test]
fn rejections_are_debug_events_with_reason_and_count() {
    let store = EventStore::new(Dispatcher::<Ev>::new(), 4, OverrunPolicy::ReturnError).unwrap();
    let seen = collect(|| {
        for _ in 0..4 {
            store.enqueue(Ev { key: "x" }).unwrap();
        }
        assert!(matches!(
            store.enqueue(Ev { key: "x" }),
            Err(EnqueueError::Full(_))
        ));
        store.close(Duration::from_secs(10)).unwrap();
        let mut batch: Vec<_> = (0..3).map(|_| Ev { key: "x" }).collect();
        assert!(store.enqueue_batch(&mut batch).is_err());
    });
    let rejected: Vec<_> = events(&seen, "event rejected")
        .into_iter()
        .map(|s| {
            assert_eq!(s.level, tracing::Level::DEBUG);
            (s.field("reason").unwrap(), s.field("count").unwrap())
        })
        .collect();
    assert_eq!(rejected, [("full", "1"), ("closed", "3")]);
}

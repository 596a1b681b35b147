//! Health: whether a store is keeping up, and if not, why (go-events' `HealthCheck`).
//!
//! [`EventStore::health`] judges the store against [`HealthThresholds`]: the backlog (the
//! fullest lane's depth over its capacity), the error rate over a recent window, the dead
//! letters waiting, and circuit breakers that are open. It reads counters that exist anyway;
//! nothing on the publish path changes. The error rate's window is kept by the health checks
//! themselves: each call records the store's totals, and the rate is the failures among the
//! events that finished since the oldest record inside the window. The first check judges
//! everything since the store was built.
//!
//! The monitor is a layer (`store/layers.rs`), made on the first check.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::metrics::Metrics;
use crate::store::{EventStore, Layer};
use crate::subscribe::SubscriptionId;

/// What makes a store unhealthy. `Default` gives the values in each field's docs.
///
/// ```
/// use std::time::Duration;
/// use ringbus::HealthThresholds;
/// let strict = HealthThresholds {
///     max_backlog_ratio: 0.5,
///     max_error_rate: 0.01,
///     window: Duration::from_secs(10),
///     ..HealthThresholds::default()
/// };
/// assert_eq!(strict.max_dead_letters, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthThresholds {
    /// Unhealthy when the fullest lane holds more than this fraction of its capacity.
    /// Default 0.8.
    pub max_backlog_ratio: f64,
    /// Unhealthy when more than this fraction of the events that finished in the window
    /// failed or were dead-lettered. Default 0.05.
    pub max_error_rate: f64,
    /// How far back the error rate looks. Default 60 s.
    pub window: Duration,
    /// The error rate is judged only over at least this many finished events (so that one
    /// failure among two events is not a 50% rate). Default 20.
    pub min_events: u64,
    /// Unhealthy when more dead letters than this wait in the queue. Default 0.
    pub max_dead_letters: u64,
    /// Unhealthy while a subscription's circuit breaker is open. Default true.
    pub open_breakers: bool,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            max_backlog_ratio: 0.8,
            max_error_rate: 0.05,
            window: Duration::from_secs(60),
            min_events: 20,
            max_dead_letters: 0,
            open_breakers: true,
        }
    }
}

/// Why a store is unhealthy.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Unhealthy {
    /// The fullest lane is past [`HealthThresholds::max_backlog_ratio`].
    Backlog {
        /// Events waiting in that lane.
        depth: u64,
        /// Its capacity.
        capacity: u64,
    },
    /// Too many of the events that finished in the window failed.
    ErrorRate {
        /// Events failed or dead-lettered in the window.
        failures: u64,
        /// Events that finished in the window (processed, failed or dead-lettered).
        finished: u64,
        /// The span the figures cover (up to the window; less while the store is young).
        over: Duration,
    },
    /// Dead letters wait in the queue.
    DeadLetters {
        /// How many.
        waiting: u64,
    },
    /// A subscription's circuit breaker is open.
    BreakerOpen {
        /// Its projection, in `Debug` form.
        projection: String,
        /// The subscription.
        subscription: SubscriptionId,
    },
    /// The store is closed.
    Closed,
}

/// The verdict of [`EventStore::health`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Health {
    /// True when nothing below is past its threshold.
    pub healthy: bool,
    /// Every threshold passed, in the order of [`HealthThresholds`]' fields.
    pub reasons: Vec<Unhealthy>,
    /// The fullest lane's depth over its capacity (go-events' `QueueBacklog`).
    pub backlog: f64,
    /// Failures among the events that finished in the window, 0 with none.
    pub error_rate: f64,
    /// Failures per second over the window (go-events' `ErrorRate`).
    pub errors_per_second: f64,
    /// The counters the verdict was drawn from.
    pub metrics: Metrics,
}

/// What a health check records: when, and the store's totals then.
#[derive(Debug, Clone, Copy)]
struct Record {
    at: Instant,
    finished: u64,
    failures: u64,
}

/// The store's health monitor: its thresholds and the records of recent checks.
pub(crate) struct HealthMonitor {
    state: Mutex<State>,
}

struct State {
    thresholds: HealthThresholds,
    /// Oldest first; at most one record older than the window is kept, as the baseline.
    records: VecDeque<Record>,
}

/// About the most records kept within the window: a check less than `window / MAX_RECORDS`
/// after the last record it keeps for good replaces the newest record rather than adding one.
const MAX_RECORDS: u32 = 64;

impl<E> Layer<E> for HealthMonitor {
    fn shut_down(&self) -> Vec<E> {
        Vec::new()
    }

    fn add_metrics(&self, _: &mut Metrics) {}
}

impl HealthMonitor {
    fn new(thresholds: HealthThresholds) -> Self {
        Self {
            state: Mutex::new(State {
                thresholds,
                records: VecDeque::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Records the totals at `now` and returns the baseline to measure from: the oldest
    /// record within the window (or the last one before it), or the store's start.
    fn record(&mut self, now: Instant, finished: u64, failures: u64) -> Record {
        let window = self.thresholds.window;
        let start = now.checked_sub(window);
        if self.records.is_empty() {
            // The first check: the store's life so far counts as if it began at the
            // window's start.
            self.records.push_back(Record {
                at: start.unwrap_or(now),
                finished: 0,
                failures: 0,
            });
        }
        // Keep one record at or before the window's start, as the baseline.
        while self.records.len() >= 2 && start.is_some_and(|s| self.records[1].at <= s) {
            self.records.pop_front();
        }
        let baseline = self.records[0];
        let record = Record {
            at: now,
            finished,
            failures,
        };
        let step = window / MAX_RECORDS;
        // The newest record is replaced while it is less than a step after the one before
        // it, so that kept records are at least a step apart. (Measured from the newest
        // record itself, the replacement would move it forward with every check: checks
        // closer together than a step would keep it forever within a step of now, no record
        // would ever pass the window's start, and the baseline would never move.) The
        // baseline (the first record) is never replaced.
        let len = self.records.len();
        let provisional = len > 1
            && self.records[len - 1]
                .at
                .saturating_duration_since(self.records[len - 2].at)
                < step;
        match self.records.back_mut() {
            Some(last) if provisional => *last = record,
            _ => self.records.push_back(record),
        }
        baseline
    }
}

impl<E, Err> EventStore<E, Err>
where
    E: Event + Send + 'static,
    Err: 'static,
{
    /// Sets the thresholds [`health`](Self::health) judges by (default
    /// [`HealthThresholds::default`]). Keeps the records of earlier checks.
    pub fn set_health_thresholds(&self, thresholds: HealthThresholds) {
        self.monitor().state().thresholds = thresholds;
    }

    /// Whether the store is healthy, and if not, why: the backlog (the fullest lane's depth
    /// over its capacity), the error rate over a recent window, the dead letters waiting,
    /// circuit breakers that are open, and whether the store is closed, judged against its
    /// [`HealthThresholds`] (go-events' `HealthCheck`). Reads the counters and the route
    /// table; never blocks publishers.
    ///
    /// The error rate's window is kept by the checks themselves: each records the store's
    /// totals, and the rate is the failures among the events that finished since the oldest
    /// record inside the window. The first check judges everything since the store was built.
    ///
    /// ```
    /// use ringbus::{Dispatcher, Event, EventStore, OverrunPolicy, Unhealthy};
    /// struct Ev;
    /// impl Event for Ev {
    ///     type Projection = ();
    ///     fn projection(&self) {}
    /// }
    /// let store = EventStore::new(Dispatcher::<Ev>::new(), 4, OverrunPolicy::ReturnError)?;
    /// assert!(store.health().healthy);
    /// for _ in 0..4 {
    ///     store.enqueue(Ev)?;
    /// }
    /// let health = store.health();
    /// assert!(!health.healthy);
    /// assert_eq!(health.reasons, [Unhealthy::Backlog { depth: 4, capacity: 4 }]);
    /// store.publish();
    /// assert!(store.health().healthy);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn health(&self) -> Health {
        self.health_at(Instant::now())
    }

    /// [`health`](Self::health) as of `now`, for callers (and tests) that keep their own
    /// clock. Checks should come with non-decreasing times.
    pub fn health_at(&self, now: Instant) -> Health {
        let metrics = self.metrics();
        let depth = self.deepest_lane();
        let capacity = self.capacity() as u64;
        let finished = metrics.processed + metrics.failed + metrics.dead_lettered;
        let failures = metrics.failed + metrics.dead_lettered;
        let monitor = self.monitor();
        let (thresholds, baseline) = {
            let mut state = monitor.state();
            let baseline = state.record(now, finished, failures);
            (state.thresholds, baseline)
        };
        let mut reasons = Vec::new();
        let backlog = depth as f64 / capacity as f64;
        if backlog > thresholds.max_backlog_ratio {
            reasons.push(Unhealthy::Backlog { depth, capacity });
        }
        let window_finished = finished.saturating_sub(baseline.finished);
        let window_failures = failures.saturating_sub(baseline.failures);
        let over = now.saturating_duration_since(baseline.at);
        let error_rate = match window_finished {
            0 => 0.0,
            n => window_failures as f64 / n as f64,
        };
        if window_finished >= thresholds.min_events && error_rate > thresholds.max_error_rate {
            reasons.push(Unhealthy::ErrorRate {
                failures: window_failures,
                finished: window_finished,
                over,
            });
        }
        if metrics.dead_letters > thresholds.max_dead_letters {
            reasons.push(Unhealthy::DeadLetters {
                waiting: metrics.dead_letters,
            });
        }
        if thresholds.open_breakers {
            for (projection, id) in self.open_breakers() {
                reasons.push(Unhealthy::BreakerOpen {
                    projection,
                    subscription: SubscriptionId::new(id),
                });
            }
        }
        if self.is_closed() {
            reasons.push(Unhealthy::Closed);
        }
        let errors_per_second = match over.as_secs_f64() {
            secs if secs > 0.0 => window_failures as f64 / secs,
            _ => 0.0,
        };
        Health {
            healthy: reasons.is_empty(),
            reasons,
            backlog,
            error_rate,
            errors_per_second,
            metrics,
        }
    }

    fn monitor(&self) -> std::sync::Arc<HealthMonitor> {
        self.layer(|| HealthMonitor::new(HealthThresholds::default()))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// However often (and however irregularly) checks come, the records stay bounded and the
    /// baseline stays within a step of the window's start.
    #[test]
    fn records_stay_bounded_and_the_baseline_follows_the_window() {
        let window = Duration::from_secs(10);
        let mut state = State {
            thresholds: HealthThresholds {
                window,
                ..HealthThresholds::default()
            },
            records: VecDeque::new(),
        };
        let t0 = Instant::now();
        let step = window / MAX_RECORDS;
        for ms in 0..100_000u64 {
            // Every millisecond, with a pause of a second now and then.
            let now = t0 + Duration::from_millis(ms + ms / 7919 * 1000);
            let baseline = state.record(now, ms, 0);
            assert!(state.records.len() <= MAX_RECORDS as usize + 3, "{ms}");
            if let Some(start) = now.checked_sub(window) {
                if ms > 20_000 {
                    assert!(
                        baseline.at <= start,
                        "{ms}: the baseline is inside the window"
                    );
                    // A step, or the pause the checks made across the start.
                    assert!(
                        start.saturating_duration_since(baseline.at)
                            <= 2 * step + Duration::from_secs(1),
                        "{ms}: the baseline lags the window's start by more than a step"
                    );
                }
            }
        }
    }
}

//! Prometheus metrics. One `circle_` prefix, base units, bounded labels only: route
//! templates, command names and outcomes, never an id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::store::{Append, AppendResult};

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    commands: IntCounterVec,
    events_appended: IntCounter,
    append_duration: Histogram,
    batch_size: Histogram,
    projection_position: IntGaugeVec,
    projection_lag: IntGaugeVec,
    projection_age: GaugeVec,
    projection_failures: IntCounterVec,
    command_duration: HistogramVec,
    appender_queue: IntGauge,
    leader: IntGauge,
    task_up: IntGaugeVec,
    checkpoint_age: GaugeVec,
    /// When each checkpoint last caught up with its projection, on the leader.
    checkpoints_saved: Mutex<BTreeMap<&'static str, Instant>>,
    aggregate_cache: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        Self::build().expect("metric definitions are static and valid")
    }

    fn build() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("circle_http_requests_total", "HTTP requests answered"),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "circle_http_request_duration_seconds",
                "Time to answer an HTTP request",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        let commands = IntCounterVec::new(
            Opts::new("circle_commands_total", "Commands handled, by outcome"),
            &["command", "outcome"],
        )?;
        let events_appended = IntCounter::new(
            "circle_events_appended_total",
            "Events committed to the log",
        )?;
        let append_duration = Histogram::with_opts(
            HistogramOpts::new(
                "circle_store_append_duration_seconds",
                "Time to commit one batch of appends",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "circle_store_append_batch_size",
                "Commands committed together in one transaction",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        let projection_position = IntGaugeVec::new(
            Opts::new(
                "circle_projection_position",
                "Last log position a projection has applied",
            ),
            &["projection"],
        )?;
        let projection_lag = IntGaugeVec::new(
            Opts::new(
                "circle_projection_lag_events",
                "Events in the log not yet applied",
            ),
            &["projection"],
        )?;
        let projection_age = GaugeVec::new(
            Opts::new(
                "circle_projection_last_event_age_seconds",
                "Age of the last event the projection applied, when last checked",
            ),
            &["projection"],
        )?;
        let projection_failures = IntCounterVec::new(
            Opts::new(
                "circle_projection_failures_total",
                "Projection steps that failed",
            ),
            &["projection"],
        )?;
        let command_duration = HistogramVec::new(
            HistogramOpts::new(
                "circle_command_duration_seconds",
                "Time to decide and commit a command",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["command"],
        )?;
        let appender_queue = IntGauge::new(
            "circle_appender_queue_depth",
            "Changes waiting for the next group commit (a command's append, or an import's chain of them)",
        )?;
        let leader = IntGauge::new(
            "circle_leader",
            "1 while this instance holds the leader lease (checkpoints, NATS publisher)",
        )?;
        let task_up = IntGaugeVec::new(
            Opts::new(
                "circle_task_up",
                "1 while a supervised background task runs",
            ),
            &["task"],
        )?;
        let checkpoint_age = GaugeVec::new(
            Opts::new(
                "circle_projection_checkpoint_age_seconds",
                "Seconds since the leader's saved checkpoint last matched the projection",
            ),
            &["projection"],
        )?;
        let aggregate_cache = IntCounterVec::new(
            Opts::new(
                "circle_aggregate_cache_total",
                "Aggregate lookups by whether the state was still in memory",
            ),
            &["aggregate", "result"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("circle_build_info", "Build information; always 1"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(commands.clone()))?;
        registry.register(Box::new(events_appended.clone()))?;
        registry.register(Box::new(append_duration.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(projection_position.clone()))?;
        registry.register(Box::new(projection_lag.clone()))?;
        registry.register(Box::new(projection_age.clone()))?;
        registry.register(Box::new(projection_failures.clone()))?;
        registry.register(Box::new(command_duration.clone()))?;
        registry.register(Box::new(appender_queue.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(task_up.clone()))?;
        registry.register(Box::new(checkpoint_age.clone()))?;
        registry.register(Box::new(aggregate_cache.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "circle",
            ),
        ))?;
        Ok(Metrics(Arc::new(Inner {
            registry,
            http_requests,
            http_duration,
            commands,
            events_appended,
            append_duration,
            batch_size,
            projection_position,
            projection_lag,
            projection_age,
            projection_failures,
            command_duration,
            appender_queue,
            leader,
            task_up,
            checkpoint_age,
            checkpoints_saved: Mutex::default(),
            aggregate_cache,
        })))
    }

    /// `route` must be a route template (or a fixed word), never a concrete path.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        self.0
            .http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.0
            .http_duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_command(&self, command: &str, outcome: &str, elapsed: Duration) {
        self.0.commands.with_label_values(&[command, outcome]).inc();
        self.0
            .command_duration
            .with_label_values(&[command])
            .observe(elapsed.as_secs_f64());
    }

    pub fn appender_queue_depth(&self, depth: usize) {
        self.0.appender_queue.set(depth as i64);
    }

    pub fn set_leader(&self, leading: bool) {
        self.0.leader.set(i64::from(leading));
        if !leading {
            let mut saved = self
                .0
                .checkpoints_saved
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for name in std::mem::take(&mut *saved).into_keys() {
                let _ = self.0.checkpoint_age.remove_label_values(&[name]);
            }
        }
    }

    pub fn task_up(&self, task: &str, up: bool) {
        self.0.task_up.with_label_values(&[task]).set(i64::from(up));
    }

    /// The checkpoint `name` now matches its projection (saved, or nothing to save).
    pub fn checkpoint_saved(&self, name: &'static str) {
        let mut saved = self
            .0
            .checkpoints_saved
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        saved.insert(name, Instant::now());
    }

    pub fn observe_batch(
        &self,
        appends: &[Append],
        results: Option<&Vec<AppendResult>>,
        elapsed: Duration,
    ) {
        self.0.append_duration.observe(elapsed.as_secs_f64());
        self.0.batch_size.observe(appends.len() as f64);
        let committed: usize = results
            .into_iter()
            .flatten()
            .zip(appends)
            .filter(|(result, _)| matches!(result, AppendResult::Committed { .. }))
            .map(|(_, append)| append.events.len())
            .sum();
        self.0.events_appended.inc_by(committed as u64);
    }

    pub fn observe_projection(
        &self,
        name: &str,
        position: i64,
        head: i64,
        last_recorded_at: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        self.0
            .projection_position
            .with_label_values(&[name])
            .set(position);
        self.0
            .projection_lag
            .with_label_values(&[name])
            .set((head - position).max(0));
        if let Some(at) = last_recorded_at {
            let age = (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1e3;
            self.0.projection_age.with_label_values(&[name]).set(age);
        }
    }

    /// `aggregate` is the aggregate type (`group`, `client`), never an id.
    pub fn observe_aggregate_cache(&self, aggregate: &str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.0
            .aggregate_cache
            .with_label_values(&[aggregate, result])
            .inc();
    }

    pub fn projection_failed(&self, name: &str) {
        self.0.projection_failures.with_label_values(&[name]).inc();
    }

    /// The text exposition format (`text/plain; version=0.0.4`).
    pub fn render(&self) -> String {
        {
            let saved = self
                .0
                .checkpoints_saved
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (name, at) in saved.iter() {
                self.0
                    .checkpoint_age
                    .with_label_values(&[name])
                    .set(at.elapsed().as_secs_f64());
            }
        }
        let mut buffer = Vec::new();
        let families = self.0.registry.gather();
        if TextEncoder::new().encode(&families, &mut buffer).is_err() {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// The method as a label: one of the standard methods (RFC 9110, plus PATCH), or
/// `other`, so that callers cannot mint label values (and series) at will.
pub fn method_label(method: &str) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD
        .into_iter()
        .find(|standard| *standard == method)
        .unwrap_or("other")
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

//! The bare engine: Circle's command path in process, with no HTTP, no projector
//! and no commit-time check of a caller's token. The `commands` benchmark's direct
//! path, set beside stock cqrs-es there, and beside each point of the HTTP
//! benchmark, which the goal compares with it.
#![allow(dead_code)] // each benchmark uses part of it

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, NaiveDate};
use circle_events::group::{Focus, Format, Group, GroupCommand, GroupEvent, Measure};
use circle_events::instruments::Score;
use circle_services::appender::Appender;
use circle_services::auth::Principal;
use circle_services::commands::{CommandContext, CommandService, Repository};
use circle_services::metrics::Metrics;
use circle_services::store::{Append, EventMetadata, NewEvent, Store};

pub const POOL_OF_GROUPS: usize = 64;
pub const MEMBERS: usize = 10;

pub fn session_start() -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2026-01-13T18:00:00+01:00").expect("fixed timestamp")
}

pub fn setup_commands(group: &str) -> Vec<GroupCommand> {
    let mut commands = vec![GroupCommand::CreateGroup {
        group_id: group.into(),
        name: "Bench group".into(),
        focus: Focus::Anxiety,
        format: Format::Open,
        capacity: MEMBERS as u32,
        facilitators: vec!["dr_bench".into()],
        starts_on: None,
    }];
    let joined_on = NaiveDate::from_ymd_opt(2026, 1, 6).expect("fixed date");
    commands.extend((0..MEMBERS).map(|m| GroupCommand::JoinGroup {
        client_id: format!("c{m}"),
        joined_on,
    }));
    commands.push(GroupCommand::ScheduleSession {
        session_id: "s1".into(),
        starts_at: session_start(),
        duration_minutes: 90,
    });
    commands
}

pub fn feedback(n: usize) -> GroupCommand {
    GroupCommand::RecordFeedback {
        client_id: format!("c{}", n % MEMBERS),
        session_id: Some("s1".into()),
        instrument: "SRS".into(),
        items: vec![Score::from_tenths(90 + (n % 10) as i64); 4],
        administered_at: None,
    }
}

pub fn feedback_event(n: usize) -> GroupEvent {
    let items = vec![Score::from_tenths(90 + (n % 10) as i64); 4];
    GroupEvent::FeedbackRecorded {
        client_id: format!("c{}", n % MEMBERS),
        session_id: Some("s1".into()),
        measure: Measure {
            instrument: "SRS".into(),
            reference_version: "2024.1".into(),
            total: Score::from_tenths(items.iter().map(|s| s.tenths()).sum()),
            items,
            administered_at: session_start(),
        },
    }
}

/// Circle's command path, in process, exactly as the HTTP handlers use it.
pub struct Circle {
    _stop: tokio_util::sync::DropGuard,
    pub url: String,
    metrics: Metrics,
    pub store: Store,
    commands: CommandService,
    groups: Repository<Group>,
}

impl Circle {
    pub async fn open(url: &str) -> Circle {
        let store = Store::postgres(url, 16).await.expect("open Circle store");
        let metrics = Metrics::new();
        let (appender, mut worker) = Appender::new(
            store.clone(),
            metrics.clone(),
            256,
            tokio::sync::watch::channel(0).0,
        );
        // Its worker ends when it is told to (not when its queue's senders are gone):
        // dropping the Circle tells it, so the store's connections go with it.
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move { worker.run(stop).await }
        });
        Circle {
            _stop: stop.drop_guard(),
            metrics: metrics.clone(),
            url: url.to_string(),
            // Every group the benchmark touches stays cached, as with the default.
            groups: Repository::new(store.clone(), 10_000, metrics.clone()),
            commands: CommandService::new(store.clone(), appender, metrics, 5),
            store,
        }
    }

    /// Appends, group commits and seconds spent committing so far, from Circle's own
    /// metrics.
    pub fn commit_totals(&self) -> [f64; 3] {
        super::commit_totals(&self.metrics.render())
    }

    pub async fn execute(&self, group: &str, command: GroupCommand) -> bool {
        let ctx = CommandContext::new(Principal::system("bench"));
        self.commands
            .execute(&self.groups, group, command, &ctx, |_| true)
            .await
            .is_ok()
    }

    /// Appends `count` feedback events straight to the log (prefill, not measured).
    pub async fn prefill(&self, group: &str, from_version: u64, count: usize) {
        for chunk_start in (0..count).step_by(500) {
            let chunk = (chunk_start..count.min(chunk_start + 500))
                .map(|n| {
                    NewEvent::encode(&feedback_event(n), EventMetadata::system("bench", "admin"))
                })
                .collect::<Vec<_>>();
            self.store
                .commit_batch(&[Append {
                    aggregate_type: "group",
                    aggregate_id: group.into(),
                    expected_version: from_version + chunk_start as u64,
                    events: chunk,
                    idempotency: None,
                    key_action: None,
                    chained: false,
                    token_hash: None,
                }])
                .await
                .expect("prefill");
        }
    }
}

/// A command path the benchmarks drive: Circle's, or stock cqrs-es's.
pub trait System: Send + Sync + 'static {
    fn run(
        &self,
        group: String,
        command: GroupCommand,
    ) -> impl std::future::Future<Output = bool> + Send;
}

impl System for Circle {
    async fn run(&self, group: String, command: GroupCommand) -> bool {
        self.execute(&group, command).await
    }
}

/// Creates the pool's groups (`{prefix}0` …), each with its members and a session.
pub async fn setup_pool<S: System>(system: &S, prefix: &str) {
    for g in 0..POOL_OF_GROUPS {
        for command in setup_commands(&format!("{prefix}{g}")) {
            assert!(
                system.run(format!("{prefix}{g}"), command).await,
                "setup failed"
            );
        }
    }
}

pub struct Throughput {
    pub ok: u64,
    pub failed: u64,
    pub per_second: f64,
}

/// `writers` at once, each recording feedback on the pool's groups in turn, for
/// `run_for`.
pub async fn throughput<S: System>(
    system: Arc<S>,
    prefix: &str,
    writers: usize,
    run_for: Duration,
) -> Throughput {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + run_for;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (system, ok, failed, prefix) = (
                system.clone(),
                ok.clone(),
                failed.clone(),
                prefix.to_string(),
            );
            tokio::spawn(async move {
                let mut k = 0;
                while Instant::now() < deadline {
                    let group = format!("{prefix}{}", (w + k * writers) % POOL_OF_GROUPS);
                    if system.run(group, feedback(k)).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    k += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    Throughput {
        ok,
        failed: failed.load(Ordering::Relaxed),
        per_second: ok as f64 / elapsed,
    }
}

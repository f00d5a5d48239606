//! Report benchmarks on PostgreSQL and NATS:
//!
//! 1. Rebuilding the reports projection from 1,000,000 events in the log.
//! 2. Commit → report on NATS latency at 1,000 commands/s.
//!
//! Run: `scripts/bench` (or `cargo bench -p circle-services --bench reports` with
//! CIRCLE_BENCH_DATABASE_URL and CIRCLE_BENCH_NATS_URL set).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, NaiveDate};
use circle_events::group::{Focus, Format, GroupCommand, GroupEvent, Measure};
use circle_events::instruments::Score;
use circle_projections::practice::{AlertRules, Practice};
use circle_services::app::Application;
use circle_services::auth::Principal;
use circle_services::commands::CommandContext;
use circle_services::config::{Overrides, Settings};
use circle_services::crypto::Vault;
use circle_services::projector;
use circle_services::store::{Append, EventMetadata, NewEvent, Store};
use futures_util::StreamExt;
use uuid::Uuid;

mod support;

const REBUILD_EVENTS: usize = 1_000_000;
const REBUILD_GROUPS: usize = 100;
const RATE: u64 = 1_000;
const LATENCY_RUN: Duration = Duration::from_secs(10);
const LATENCY_GROUPS: usize = 20;

fn start() -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2026-01-06T18:00:00+01:00").expect("fixed time")
}

fn group_events(group_id: &str, count: usize) -> Vec<GroupEvent> {
    let mut events = vec![GroupEvent::GroupCreated {
        group_id: group_id.into(),
        name: "bench".into(),
        focus: Focus::Anxiety,
        format: Format::Open,
        capacity: 10,
        facilitators: vec!["dr".into()],
        starts_on: None,
    }];
    for m in 0..10 {
        events.push(GroupEvent::MemberJoined {
            client_id: format!("{group_id}-c{m}"),
            joined_on: start().date_naive(),
        });
    }
    while events.len() < count {
        let n = events.len();
        let items: Vec<Score> = (0..4)
            .map(|i| Score::from_tenths(80 + ((n + i) % 20) as i64))
            .collect();
        events.push(GroupEvent::FeedbackRecorded {
            client_id: format!("{group_id}-c{}", n % 10),
            session_id: None,
            measure: Measure {
                instrument: "ORS".into(),
                reference_version: "2024.1".into(),
                total: Score::from_tenths(items.iter().map(|s| s.tenths()).sum()),
                items,
                administered_at: start() + chrono::Duration::minutes(n as i64),
            },
        });
    }
    events
}

async fn rebuild(base: &str) {
    let (url, schema) = support::fresh_schema(base, "bench_reports").await;
    let store = Store::postgres(&url, 4).await.expect("store");
    let per_group = REBUILD_EVENTS / REBUILD_GROUPS;
    let loading = Instant::now();
    for g in 0..REBUILD_GROUPS {
        let group_id = format!("g{g}");
        let events = group_events(&group_id, per_group);
        for (i, chunk) in events.chunks(5_000).enumerate() {
            store
                .commit_batch(&[Append {
                    aggregate_type: "group",
                    aggregate_id: group_id.clone(),
                    expected_version: (i * 5_000) as u64,
                    events: chunk
                        .iter()
                        .map(|e| NewEvent::encode(e, EventMetadata::system("bench", "admin")))
                        .collect(),
                    idempotency: None,
                    key_action: None,
                    chained: false,
                    token_hash: None,
                }])
                .await
                .expect("load");
        }
    }
    let head = store.head_position().await.expect("head");
    println!(
        "loaded {head} events in {:.1}s",
        loading.elapsed().as_secs_f64()
    );
    for run in 1..=2 {
        let started = Instant::now();
        let mut practice = Practice::new(AlertRules::default());
        projector::fold(&store, &mut practice, None, |_, _| {})
            .await
            .expect("fold");
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "rebuild run {run}: {} events in {elapsed:.2}s = {:.0} events/s",
            practice.position,
            practice.position as f64 / elapsed
        );
    }
    support::drop_schema(base, &schema).await;
}

/// Per group: commands waiting for a report, as (position, committed at).
type Waiting = BTreeMap<String, VecDeque<(i64, Instant)>>;

fn context() -> CommandContext {
    CommandContext::new(Principal::system("bench"))
}

async fn latency(base: &str, nats: &str) {
    let (url, schema) = support::fresh_schema(base, "bench_reports").await;
    let namespace = format!("bench{}", Uuid::new_v4().simple());
    let mut settings = Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(url),
            nats_url: Some(nats.into()),
            admin_token: Some(Uuid::new_v4().to_string()),
            master_key: Some(Vault::generate_master_key()),
            ..Overrides::default()
        },
    )
    .expect("settings");
    settings.nats_namespace = namespace.clone();
    settings.log = "warn".into();
    let app = Application::build(&settings).await.expect("app");
    let state = app.state();
    tokio::spawn(app.run(std::future::pending()));
    let joined_on = NaiveDate::from_ymd_opt(2026, 1, 6).expect("date");
    for g in 0..LATENCY_GROUPS {
        let id = format!("g{g}");
        let mut setup = vec![GroupCommand::CreateGroup {
            group_id: id.clone(),
            name: "latency".into(),
            focus: Focus::Grief,
            format: Format::Open,
            capacity: 10,
            facilitators: vec!["dr".into()],
            starts_on: None,
        }];
        setup.extend((0..10).map(|m| GroupCommand::JoinGroup {
            client_id: format!("c{m}"),
            joined_on,
        }));
        setup.push(GroupCommand::ScheduleSession {
            session_id: "s1".into(),
            starts_at: start(),
            duration_minutes: 90,
        });
        for command in setup {
            state
                .commands
                .execute(&state.groups, &id, command, &context(), |_| true)
                .await
                .expect("setup");
        }
    }

    let waiting: Arc<Mutex<Waiting>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let client = async_nats::connect(nats).await.expect("nats");
    let mut reports = client
        .subscribe(format!("{namespace}.reports.attendance.group.*"))
        .await
        .expect("subscribe");
    {
        let (waiting, latencies) = (waiting.clone(), latencies.clone());
        tokio::spawn(async move {
            while let Some(message) = reports.next().await {
                let arrived = Instant::now();
                let group = message
                    .subject
                    .as_str()
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let position: i64 = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Circle-Position"))
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0);
                let mut waiting = waiting.lock().expect("lock");
                let queue = waiting.entry(group).or_default();
                while queue.front().is_some_and(|(p, _)| *p <= position) {
                    if let Some((_, committed)) = queue.pop_front() {
                        latencies.lock().expect("lock").push(arrived - committed);
                    }
                }
            }
        });
    }
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let started = Instant::now();
    let mut issued = 0usize;
    let mut tasks = Vec::new();
    while started.elapsed() < LATENCY_RUN {
        ticker.tick().await;
        let (state, waiting) = (state.clone(), waiting.clone());
        let n = issued;
        issued += 1;
        tasks.push(tokio::spawn(async move {
            let group = format!("g{}", n % LATENCY_GROUPS);
            let command = GroupCommand::RecordFeedback {
                client_id: format!("c{}", n % 10),
                session_id: Some("s1".into()),
                instrument: "SRS".into(),
                items: vec![Score::from_tenths(95); 4],
                administered_at: None,
            };
            let receipt = state
                .commands
                .execute(&state.groups, &group, command, &context(), |_| true)
                .await
                .expect("command");
            let committed = Instant::now();
            let position = receipt.body["position"].as_i64().unwrap_or(0);
            let mut waiting = waiting.lock().expect("lock");
            let queue = waiting.entry(group).or_default();
            // Keep each queue in position order (commands on one group are serialized).
            let at = queue
                .iter()
                .position(|(p, _)| *p > position)
                .unwrap_or(queue.len());
            queue.insert(at, (position, committed));
        }));
    }
    for task in tasks {
        task.await.expect("command task");
    }
    let achieved = issued as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut all = latencies.lock().expect("lock").clone();
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "commit → report on NATS at {achieved:.0} commands/s: {} measured, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        all.len(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    support::drop_schema(base, &schema).await;
}

fn main() {
    support::run(bench());
}

async fn bench() {
    let (Ok(base), Ok(nats)) = (
        std::env::var("CIRCLE_BENCH_DATABASE_URL"),
        std::env::var("CIRCLE_BENCH_NATS_URL"),
    ) else {
        eprintln!("set CIRCLE_BENCH_DATABASE_URL and CIRCLE_BENCH_NATS_URL (scripts/bench does)");
        return;
    };
    println!("\n3. rebuilding reports from {REBUILD_EVENTS} events in PostgreSQL");
    rebuild(&base).await;
    println!("\n4. commit → report on NATS, {RATE} commands/s for {LATENCY_RUN:?}");
    latency(&base, &nats).await;
}

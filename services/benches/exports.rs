//! Exports at 100,000 rows: `circle serve` over 1,000 groups of 100 members, each
//! with two ORS scores and one held session; the full-form outcomes and attendance
//! exports (one row per member: 100,000 rows each) as CSV and NDJSON over HTTP. It
//! prints the time to the first byte and to the last, the body's size, and the
//! server's resident memory before and after (and its peak), so that a body held
//! whole would show as growth of its size.
//!
//! Run: `scripts/bench --bench exports`, or `cargo bench -p circle-services --bench
//! exports` with CIRCLE_BENCH_DATABASE_URL set.

use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use circle_events::group::{AttendanceStatus, Focus, Format, GroupEvent, Measure};
use circle_events::instruments::Score;
use circle_services::store::{Append, Store};

#[path = "support/process.rs"]
mod process;
mod support;
use process::{resident_kb, serve};

const GROUPS: usize = 1_000;
const MEMBERS: usize = 100;
const LOAD_BATCH: usize = 10;

fn at(week: i64) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2026-01-06T10:00:00+01:00").expect("fixed time")
        + chrono::Duration::weeks(week)
}

fn group_events(g: usize) -> Vec<GroupEvent> {
    let member = |m: usize| format!("cli-{g}-{m}");
    let mut events = vec![GroupEvent::GroupCreated {
        group_id: format!("grp-{g}"),
        name: "bench".into(),
        focus: Focus::Anxiety,
        format: Format::Open,
        capacity: MEMBERS as u32,
        facilitators: vec![format!("dr-{}", g % 200)],
        starts_on: None,
    }];
    events.extend((0..MEMBERS).map(|m| GroupEvent::MemberJoined {
        client_id: member(m),
        joined_on: at(0).date_naive(),
    }));
    events.push(GroupEvent::SessionScheduled {
        session_id: "s1".into(),
        starts_at: at(1),
        duration_minutes: 90,
    });
    for m in 0..MEMBERS {
        let status = if m % 4 == 0 {
            AttendanceStatus::NoShow
        } else {
            AttendanceStatus::Present
        };
        events.push(GroupEvent::AttendanceRecorded {
            session_id: "s1".into(),
            client_id: member(m),
            status,
        });
        for week in [0, 6] {
            let items: Vec<Score> = (0..4)
                .map(|i| Score::from_tenths(20 + ((g + m + i) % 50) as i64 + week * 5))
                .collect();
            events.push(GroupEvent::FeedbackRecorded {
                client_id: member(m),
                session_id: None,
                measure: Measure {
                    instrument: "ORS".into(),
                    reference_version: "2024.1".into(),
                    total: Score::from_tenths(items.iter().map(|s| s.tenths()).sum()),
                    items,
                    administered_at: at(week),
                },
            });
        }
    }
    events
}

fn main() {
    support::run(bench());
}

async fn bench() {
    let base = std::env::var("CIRCLE_BENCH_DATABASE_URL")
        .expect("CIRCLE_BENCH_DATABASE_URL (scripts/bench sets it)");
    let (url, schema) = support::fresh_schema(&base, "bench_exports").await;
    let store = Store::postgres(&url, 4).await.expect("store");
    let loading = Instant::now();
    for first in (0..GROUPS).step_by(LOAD_BATCH) {
        let batch: Vec<Append> = (first..first + LOAD_BATCH)
            .map(|g| support::append("group", format!("grp-{g}"), &group_events(g)))
            .collect();
        store.commit_batch(&batch).await.expect("load groups");
    }
    let head = store.head_position().await.expect("head");
    println!(
        "loaded {head} events ({} members in {GROUPS} groups) in {:.1}s",
        GROUPS * MEMBERS,
        loading.elapsed().as_secs_f64()
    );

    let admin = uuid::Uuid::new_v4().to_string();
    let http = reqwest::Client::new();
    let circle = serve(&url, &admin);
    let caught_up = format!(
        "{}/api/v1/reports/retention?min_position={head}",
        circle.base
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let answer = http.get(&caught_up).bearer_auth(&admin).send().await;
        if answer.is_ok_and(|a| a.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the reports never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = circle.child.id();
    let (rss, peak) = resident_kb(pid);
    println!(
        "circle serve caught up: resident {} MB (peak {} MB)",
        rss / 1024,
        peak / 1024
    );
    for (round, path) in [
        "outcomes.csv",
        "outcomes.ndjson",
        "attendance.csv",
        "outcomes.csv",
        "outcomes.csv",
    ]
    .into_iter()
    .enumerate()
    {
        let (rss_before, _) = resident_kb(pid);
        let asked = Instant::now();
        let response = http
            .get(format!("{}/api/v1/exports/{path}", circle.base))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("export");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let first_byte = asked.elapsed();
        let mut response = response;
        let (mut bytes, mut lines) = (0usize, 0usize);
        while let Some(chunk) = response.chunk().await.expect("body") {
            bytes += chunk.len();
            lines += chunk.iter().filter(|b| **b == b'\n').count();
        }
        let done = asked.elapsed();
        let (rss_after, peak) = resident_kb(pid);
        println!(
            "{round}: {path}: {} lines, {:.1} MB in {:.0} ms (first byte {:.0} ms); \
             resident {} → {} MB, peak {} MB",
            lines,
            bytes as f64 / 1e6,
            done.as_secs_f64() * 1e3,
            first_byte.as_secs_f64() * 1e3,
            rss_before / 1024,
            rss_after / 1024,
            peak / 1024
        );
    }
    drop(circle);
    support::drop_schema(&base, &schema).await;
}

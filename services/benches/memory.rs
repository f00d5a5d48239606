//! Circle at scale, as a process: `circle serve` over 1,000,000 events of 10,000
//! clients in 1,000 groups. It prints the start (a full rebuild of the reports from
//! position 0), the resident memory after it, and `as_of` report latency once the
//! leader has written its snapshots.
//!
//! Run: `scripts/bench`, or `cargo bench -p circle-services --bench memory` with
//! CIRCLE_BENCH_DATABASE_URL set. It runs the `circle` binary cargo builds for the
//! benchmark (release).

use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use circle_events::client::{ClientEvent, SealedPersonalData};
use circle_events::group::{Focus, Format, GroupEvent};
use circle_events::instruments::Score;
use circle_services::store::{Append, Store};
use support::append;

#[path = "support/process.rs"]
mod process;
mod support;
use process::{resident_kb, serve};

const EVENTS: usize = 1_000_000;
const GROUPS: usize = 1_000;
const MEMBERS: usize = 10;
/// Groups committed per transaction while loading.
const LOAD_BATCH: usize = 25;

fn week(n: usize) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2024-01-02T18:00:00+01:00").expect("fixed time")
        + chrono::Duration::weeks(n as i64)
}

fn client_id(g: usize, m: usize) -> String {
    format!("cli-{g}-{m}")
}

/// A group's history: created, ten members, then weekly sessions with everyone's
/// attendance and five ORS each week, until it has `count` events.
fn group_events(g: usize, count: usize) -> Vec<GroupEvent> {
    let created = GroupEvent::GroupCreated {
        group_id: format!("grp-{g}"),
        name: "bench".into(),
        focus: Focus::Anxiety,
        format: Format::Open,
        capacity: MEMBERS as u32,
        facilitators: vec![format!("dr-{}", g % 200)],
        starts_on: None,
    };
    support::weekly_group(created, g, MEMBERS, count, week, "ORS", |m, session| {
        (0..4)
            .map(|i| Score::from_tenths(40 + ((g + m + session + i) % 60) as i64))
            .collect()
    })
}

/// Loads the practice; returns the time after each quarter of it was committed.
async fn load(store: &Store) -> Vec<DateTime<Utc>> {
    // Sealed fields are opaque to every projection; their size is a real one's.
    let sealed = SealedPersonalData {
        sealed: "x".repeat(120),
    };
    let registrations: Vec<Append> = (0..GROUPS)
        .flat_map(|g| (0..MEMBERS).map(move |m| (g, m)))
        .map(|(g, m)| {
            let registered = ClientEvent::ClientRegistered {
                client_id: client_id(g, m),
                personal: Some(sealed.clone()),
            };
            append("client", client_id(g, m), &[registered])
        })
        .collect();
    for chunk in registrations.chunks(1_000) {
        store.commit_batch(chunk).await.expect("load clients");
    }
    let per_group = (EVENTS - registrations.len()) / GROUPS;
    let mut quarters = Vec::new();
    for first in (0..GROUPS).step_by(LOAD_BATCH) {
        let batch: Vec<Append> = (first..first + LOAD_BATCH)
            .map(|g| append("group", format!("grp-{g}"), &group_events(g, per_group)))
            .collect();
        store.commit_batch(&batch).await.expect("load groups");
        if (first + LOAD_BATCH).is_multiple_of(GROUPS / 4) {
            quarters.push(Utc::now());
        }
    }
    quarters
}

/// GETs `path` until it answers 200; the time the last attempt took.
async fn get_ok(http: &reqwest::Client, admin: &str, url: &str, within: Duration) -> Duration {
    let deadline = Instant::now() + within;
    loop {
        let asked = Instant::now();
        let answer = http.get(url).bearer_auth(admin).send().await;
        if answer.is_ok_and(|a| a.status().is_success()) {
            return asked.elapsed();
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    support::run(bench());
}

async fn bench() {
    let base = std::env::var("CIRCLE_BENCH_DATABASE_URL")
        .expect("CIRCLE_BENCH_DATABASE_URL (scripts/bench sets it)");
    let (url, schema) = support::fresh_schema(&base, "bench_memory").await;
    let store = Store::postgres(&url, 4).await.expect("store");
    let loading = Instant::now();
    let quarters = load(&store).await;
    let head = store.head_position().await.expect("head");
    println!(
        "loaded {head} events ({} clients, {GROUPS} groups) in {:.1}s",
        GROUPS * MEMBERS,
        loading.elapsed().as_secs_f64()
    );

    let admin = uuid::Uuid::new_v4().to_string();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let circle = serve(&url, &admin);
    let caught_up = format!(
        "{}/api/v1/reports/retention?min_position={head}",
        circle.base
    );
    get_ok(&http, &admin, &caught_up, Duration::from_secs(300)).await;
    let pid = circle.child.id();
    let (rss, peak) = resident_kb(pid);
    println!(
        "circle serve: reports rebuilt from position 0 and served in {:.1}s; resident {} MB (peak {} MB)",
        started.elapsed().as_secs_f64(),
        rss / 1024,
        peak / 1024
    );

    // The leader writes as_of snapshots 30 s after start, then every 30 s.
    let expected = head / 50_000;
    let waiting = Instant::now();
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    loop {
        let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM practice_snapshots")
            .fetch_one(&pool)
            .await
            .expect("count snapshots");
        if kept >= expected {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(300),
            "only {kept} snapshots"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{expected} as_of snapshots written {:.1}s after the rebuild",
        waiting.elapsed().as_secs_f64()
    );
    for (quarter, at) in quarters.iter().enumerate() {
        let as_of = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let url = format!(
            "{}/api/v1/reports/retention?as_of={}",
            circle.base,
            as_of.replace(':', "%3A")
        );
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(get_ok(&http, &admin, &url, Duration::from_secs(30)).await);
        }
        let (fastest, slowest) = (times.iter().min().copied(), times.iter().max().copied());
        println!(
            "as_of after {}% of the log: median {:.0} ms (min {:.0}, max {:.0})",
            (quarter + 1) * 25,
            median(times).as_secs_f64() * 1e3,
            fastest.unwrap_or_default().as_secs_f64() * 1e3,
            slowest.unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    let (rss, peak) = resident_kb(pid);
    println!(
        "after the as_of reports: resident {} MB (peak {} MB)",
        rss / 1024,
        peak / 1024
    );
    drop(circle);
    support::drop_schema(&base, &schema).await;
}

//! The dashboard at scale: 200 groups, 2,000 clients, 100,000 events. A Circle on a
//! fresh PostgreSQL schema serves the caseload (a clinician with four groups), group
//! and member pages over HTTP through the whole path (session, guard, policy, access
//! log, projection, rendering); it prints p50/p99/max per page and each page's size,
//! raw and gzip-compressed (`gzip -6`, as a proxy in front would send it), and the
//! resident memory before and after the page views.
//!
//! Run: `scripts/bench --bench dashboard`, or `cargo bench -p circle-services --bench
//! dashboard` with CIRCLE_BENCH_DATABASE_URL set.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use circle_events::client::ClientEvent;
use circle_events::group::{Focus, Format, GroupEvent};
use circle_events::instruments::Score;
use circle_services::app::Application;
use circle_services::config::{Overrides, Settings};
use circle_services::crypto::Vault;
use circle_services::dashboard::session::Session;
use circle_services::store::{Append, Store};
use support::append;

mod support;

const GROUPS: usize = 200;
const MEMBERS: usize = 10;
const EVENTS: usize = 100_000;
/// Each clinician facilitates this many groups: their caseload.
const GROUPS_PER_CLINICIAN: usize = 4;
const VIEWS: usize = 300;

fn week(n: usize) -> DateTime<FixedOffset> {
    let start = Utc::now().fixed_offset() - chrono::Duration::weeks(60);
    start + chrono::Duration::weeks(n as i64)
}

fn client_id(g: usize, m: usize) -> String {
    format!("cli-{g}-{m}")
}

/// Weekly sessions with everyone's attendance and a PHQ-9 from half the group; one
/// member in seven worsens, and one in twenty has a risk item.
fn group_events(g: usize, count: usize) -> Vec<GroupEvent> {
    let created = GroupEvent::GroupCreated {
        group_id: format!("grp-{g}"),
        name: format!("Group {g}"),
        focus: [Focus::Anxiety, Focus::Depression, Focus::Grief][g % 3],
        format: Format::Open,
        capacity: MEMBERS as u32,
        facilitators: vec![format!("dr-{}", g / GROUPS_PER_CLINICIAN)],
        starts_on: None,
    };
    support::weekly_group(created, g, MEMBERS, count, week, "PHQ-9", |m, session| {
        let worsening = (g + m).is_multiple_of(7);
        let level = if worsening { 1 + session / 10 } else { 2 };
        let mut items: Vec<i64> = (0..9).map(|i| ((level + i) % 4).min(3) as i64).collect();
        items[8] = i64::from((g + m + session).is_multiple_of(20));
        items.into_iter().map(Score::whole).collect()
    })
}

async fn load(store: &Store) {
    let registrations: Vec<Append> = (0..GROUPS)
        .flat_map(|g| (0..MEMBERS).map(move |m| (g, m)))
        .map(|(g, m)| {
            let registered = ClientEvent::ClientRegistered {
                client_id: client_id(g, m),
                personal: None,
            };
            append("client", client_id(g, m), &[registered])
        })
        .collect();
    for chunk in registrations.chunks(1_000) {
        store.commit_batch(chunk).await.expect("load clients");
    }
    let per_group = (EVENTS - registrations.len()) / GROUPS;
    for first in (0..GROUPS).step_by(20) {
        let batch: Vec<Append> = (first..first + 20)
            .map(|g| append("group", format!("grp-{g}"), &group_events(g, per_group)))
            .collect();
        store.commit_batch(&batch).await.expect("load groups");
    }
}

fn gzip_len(bytes: &[u8]) -> usize {
    let mut child = Command::new("gzip")
        .arg("-6")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write to gzip");
    child.wait_with_output().expect("gzip output").stdout.len()
}

fn resident_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    support::run(bench());
}

async fn bench() {
    let base = std::env::var("CIRCLE_BENCH_DATABASE_URL")
        .expect("CIRCLE_BENCH_DATABASE_URL (scripts/bench sets it)");
    let (url, schema) = support::fresh_schema(&base, "bench_dashboard").await;
    let store = Store::postgres(&url, 4).await.expect("store");
    let loading = Instant::now();
    load(&store).await;
    let head = store.head_position().await.expect("head");
    println!(
        "loaded {head} events ({} clients, {GROUPS} groups) in {:.1}s",
        GROUPS * MEMBERS,
        loading.elapsed().as_secs_f64()
    );
    let admin = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let settings = Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(url.clone()),
            admin_token: Some(admin.clone()),
            master_key: Some(Vault::generate_master_key()),
            ..Overrides::default()
        },
    )
    .expect("settings");
    let app = Application::build(&settings).await.expect("build");
    let address = app.local_addr().expect("address");
    let state = app.state();
    tokio::spawn(app.run(std::future::pending()));
    assert!(
        state
            .reports
            .caught_up(head, Duration::from_secs(300))
            .await,
        "the projection caught up"
    );
    let clinician = circle_services::auth::create_token(
        &store,
        circle_services::auth::Role::Clinician,
        Some("dr-3".into()),
    )
    .await
    .expect("token");
    let cookie = |token: &str| {
        let set = Session::new(token.to_string(), Utc::now()).set_cookie(false);
        set.to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("pair")
            .to_string()
    };
    let http = reqwest::Client::new();
    let pages = [
        (
            "caseload (clinician, 4 groups)",
            "/app".to_string(),
            cookie(&clinician),
        ),
        (
            "group (clinician)",
            "/app/groups/grp-13".to_string(),
            cookie(&clinician),
        ),
        (
            "member (clinician)",
            "/app/clients/cli-13-0".to_string(),
            cookie(&clinician),
        ),
        (
            "practice (admin)",
            "/app/practice".to_string(),
            cookie(&admin),
        ),
        (
            "caseload (admin, 200 groups)",
            "/app".to_string(),
            cookie(&admin),
        ),
    ];
    let before = resident_mb();
    for (name, path, cookie) in &pages {
        let mut times = Vec::with_capacity(VIEWS);
        let mut body = Vec::new();
        for _ in 0..VIEWS {
            let started = Instant::now();
            let response = http
                .get(format!("http://{address}{path}"))
                .header("cookie", cookie)
                .send()
                .await
                .expect("page");
            assert_eq!(response.status(), 200, "{name}");
            body = response.bytes().await.expect("body").to_vec();
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "{name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} KB, {:.1} KB gzip",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&times, 1.0),
            body.len() / 1024,
            gzip_len(&body) as f64 / 1024.0
        );
    }
    println!(
        "resident memory: {before} MB before {} page views, {} MB after",
        VIEWS * pages.len(),
        resident_mb()
    );
    support::drop_schema(&base, &schema).await;
}

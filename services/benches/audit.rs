//! The audit chain and tree at scale, on PostgreSQL (`scripts/bench`):
//!
//! 6. Append throughput at 8 and 32 writers with the chain, and with the chain's
//!    database side switched off in a second schema (`circle_chain` returning zero
//!    hashes), alternating rounds in one run so both see the same machine.
//! 7. A log of 1,000,000 events: the leader's first checkpoint over it, `verify`
//!    (events/s), inclusion and consistency proofs (ms), and the NDJSON export over
//!    HTTP (events/s), and `circle audit verify --export` on that export, offline.
//!
//! To measure one part again: `CIRCLE_BENCH_AUDIT_PARTS=log` skips part 6;
//! `CIRCLE_BENCH_AUDIT_KEEP=1` keeps part 7's schema and prints its URL, and
//! `CIRCLE_BENCH_AUDIT_LOG_URL=<that url>` reuses it instead of filling a new one;
//! `CIRCLE_BENCH_AUDIT_ROUNDS=n` runs part 6 with n alternating rounds (default 3).

use std::time::{Duration, Instant};

use circle_services::app::Application;
use circle_services::appender::Appender;
use circle_services::audit::note::Signer;
use circle_services::audit::tree;
use circle_services::auth::Role;
use circle_services::config::{Overrides, Settings};
use circle_services::crypto::Vault;
use circle_services::metrics::Metrics;
use circle_services::store::{Append, EventMetadata, Fence, NewEvent, Store};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

mod support;

const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
const LOG_SIZE: u64 = 1_000_000;

fn event(n: usize) -> NewEvent {
    NewEvent {
        event_type: "FeedbackRecorded".into(),
        event_version: 1,
        payload: serde_json::json!({
            "session_id": format!("s{}", n % 52), "client_id": format!("c{}", n % 10),
            "instrument": "SRS", "items": [9.1, 8.7, 9.4, 8.9], "catalogue_version": "2024.1"
        }),
        metadata: EventMetadata::system("bench", "clinician"),
    }
}

/// A schema of its own for one part of the run (dropped at the end).
async fn fresh_schema(base: &str, prefix: &str, made: &mut Vec<String>) -> String {
    let (url, schema) = support::fresh_schema(base, prefix).await;
    made.push(schema);
    url
}

/// Appends per second by `writers` tasks, each appending one event at a time to
/// streams of its own through the group-commit appender, for [`ROUND`].
async fn appends_per_second(store: &Store, writers: usize, round: usize) -> f64 {
    let (appender, mut worker) = Appender::new(
        store.clone(),
        Metrics::new(),
        256,
        tokio::sync::watch::channel(0).0,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let appender = appender.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                let id = format!("w{round}-{w}");
                while started.elapsed() < ROUND {
                    let append = Append {
                        aggregate_type: "group",
                        aggregate_id: id.clone(),
                        expected_version: done,
                        events: vec![event(done as usize)],
                        idempotency: None,
                        key_action: None,
                        chained: false,
                        token_hash: None,
                    };
                    if appender.append(append).await.is_ok() {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("writer");
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = running.await;
    rate
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    support::run(bench());
}

async fn bench() {
    let Ok(base) = std::env::var("CIRCLE_BENCH_DATABASE_URL") else {
        eprintln!("set CIRCLE_BENCH_DATABASE_URL (scripts/bench does) to run the audit benchmark");
        return;
    };
    let mut made = Vec::new();
    let parts = std::env::var("CIRCLE_BENCH_AUDIT_PARTS").unwrap_or_else(|_| "appends,log".into());
    if parts.contains("appends") {
        appends(&base, &mut made).await;
    }
    if parts.contains("log") {
        log(&base, &mut made).await;
    }
    for schema in made {
        support::drop_schema(&base, &schema).await;
    }
}

async fn appends(base: &str, made: &mut Vec<String>) {
    let rounds: usize = std::env::var("CIRCLE_BENCH_AUDIT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    println!("\n6. appends/s with the chain and with its database side off, {rounds} alternating rounds of {ROUND:?}");
    let chained = Store::postgres(&fresh_schema(base, "bench_chained", made).await, 16)
        .await
        .expect("store");
    let off_url = fresh_schema(base, "bench_unchained", made).await;
    let unchained = Store::postgres(&off_url, 16).await.expect("store");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&off_url)
        .await
        .expect("connect");
    sqlx::query(
        "CREATE OR REPLACE FUNCTION circle_chain(prev bytea, first_position bigint, tails bytea[])
         RETURNS bytea[] LANGUAGE sql IMMUTABLE AS
         $$ SELECT array_fill(prev, ARRAY[coalesce(array_length(tails, 1), 0)]) $$",
    )
    .execute(&pool)
    .await
    .expect("switch the chain off");
    println!(
        "{:>8} {:>16} {:>16} {:>8}",
        "writers", "chain appends/s", "off appends/s", "ratio"
    );
    for writers in [8, 32] {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            on.push(appends_per_second(&chained, writers, round).await);
            off.push(appends_per_second(&unchained, writers, round).await);
        }
        let (on, off) = (median(on), median(off));
        println!("{writers:>8} {on:>16.0} {off:>16.0} {:>7.2}x", on / off);
    }
    rust_side();
}

/// The chain's work in Rust, which the chain-off schema still does: each event's
/// canonical tail, built before the lock (the off schema only stops the hashing
/// under it). Measured alone, per event, to bound its share of an append.
fn rust_side() {
    use circle_services::audit::chain::{self, EventFields};
    let n = 200_000;
    let events: Vec<NewEvent> = (0..n).map(event).collect();
    let payloads: Vec<String> = events.iter().map(|e| e.payload.to_string()).collect();
    let started = Instant::now();
    let mut bytes = 0;
    for (i, (e, payload)) in events.iter().zip(&payloads).enumerate() {
        let meta = &e.metadata;
        let tail = chain::tail(&EventFields {
            event_id: meta.event_id,
            aggregate_type: "group",
            aggregate_id: "w0-0",
            sequence: i as i64 + 1,
            event_type: &e.event_type,
            event_version: e.event_version,
            payload,
            occurred_at: meta.occurred_at,
            recorded_at: meta.occurred_at,
            actor_id: &meta.actor_id,
            actor_role: &meta.actor_role,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
        });
        bytes += tail.len();
        std::hint::black_box(chain::chain(&chain::GENESIS, i as i64 + 1, &tail));
    }
    let per_event = started.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!(
        "Rust side of the chain (tail built + one SHA-256, as under the lock): {per_event:.2} µs per \
         event, {:.0} bytes of tail sent per event; at 20,000 appends/s that is {:.1}% of one core",
        bytes as f64 / n as f64,
        per_event * 20_000.0 / 1e4
    );
}

async fn log(base: &str, made: &mut Vec<String>) {
    println!("\n7. a log of {LOG_SIZE} events");
    let (url, filled) = match std::env::var("CIRCLE_BENCH_AUDIT_LOG_URL") {
        Ok(url) => (url, true),
        Err(_) if std::env::var_os("CIRCLE_BENCH_AUDIT_KEEP").is_some() => {
            let (url, _) = support::fresh_schema(base, "bench_audit").await;
            println!("keeping the log's schema: CIRCLE_BENCH_AUDIT_LOG_URL={url}");
            (url, false)
        }
        Err(_) => (fresh_schema(base, "bench_audit", made).await, false),
    };
    let store = Store::postgres(&url, 16).await.expect("store");
    if !filled {
        fill(&store).await;
    }
    if store.tree_head(None).await.expect("head").is_none() {
        first_checkpoint(&store).await;
    }
    verify(&store).await;
    proofs(&store).await;
    export(url).await;
}

async fn fill(store: &Store) {
    let started = Instant::now();
    let mut written = 0u64;
    let mut stream = 0;
    while written < LOG_SIZE {
        let batch: Vec<Append> = (0..100)
            .map(|_| {
                stream += 1;
                Append {
                    aggregate_type: "group",
                    aggregate_id: format!("g{stream}"),
                    expected_version: 0,
                    events: (0..10).map(event).collect(),
                    idempotency: None,
                    key_action: None,
                    chained: false,
                    token_hash: None,
                }
            })
            .collect();
        store.commit_batch(&batch).await.expect("fill");
        written += 1000;
    }
    println!(
        "filled in {:.1}s ({:.0} events/s in batches of 1,000)",
        started.elapsed().as_secs_f64(),
        LOG_SIZE as f64 / started.elapsed().as_secs_f64()
    );
}

async fn first_checkpoint(store: &Store) {
    let key = Signer::generate("bench.example/log").expect("key");
    let signer = Signer::parse(&key).expect("key");
    let holder = Uuid::new_v4();
    let epoch = store
        .acquire_lease("leader", holder, Duration::from_secs(600))
        .await
        .expect("lease")
        .expect("free");
    let fence = Fence {
        lease: "leader".into(),
        holder,
        epoch,
    };
    let started = Instant::now();
    tree::checkpoint(store, &signer, &fence)
        .await
        .expect("checkpoint")
        .expect("signed");
    println!(
        "first checkpoint over the whole log (chain re-checked, tree stored): {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// `circle audit verify --database-url`'s check, three times, alternating with the
/// check as it was before binary COPY ([`verify_by_pages`]), so both see the same
/// machine (the first run also warms PostgreSQL's cache).
async fn verify(store: &Store) {
    for run in 1..=3 {
        let started = Instant::now();
        let checked = verify_by_pages(store).await;
        let before = checked as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        let verdict = tree::verify_store(store, |_, _| {}).await.expect("verify");
        assert!(verdict.ok, "{verdict:?}");
        // A reused log also holds the token events of an earlier run's export.
        assert_eq!(verdict.checked, checked);
        assert!(checked >= LOG_SIZE);
        let now = verdict.checked as f64 / started.elapsed().as_secs_f64();
        println!(
            "verify through the store, run {run}: {now:.0} events/s (before: pages of rows, {before:.0} events/s; {:.2}x)",
            now / before
        );
    }
}

/// The store check as it was: pages of 10,000 rows decoded into events, four read
/// and hashed ahead, each event's canonical bytes built afresh.
async fn verify_by_pages(store: &Store) -> u64 {
    use circle_services::audit::chain::{Hash, GENESIS};
    use circle_services::audit::verify::LogCheck;
    use circle_services::store::AuditFilter;
    use futures_util::StreamExt;
    const PAGE: i64 = 10_000;
    let head = store.head_position().await.expect("head");
    let pages = (0..head).step_by(PAGE as usize).map(|start| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut rows = store
                .read_audit((start - 1).max(0), PAGE + 1, &AuditFilter::default())
                .await
                .expect("page");
            let mut previous = match rows.first() {
                Some(first) if start > 0 && first.position == start => rows.remove(0).hash,
                _ => GENESIS,
            };
            rows.retain(|e| e.position <= start + PAGE);
            let hashed: Vec<(Hash, Hash)> = rows
                .iter()
                .map(|e| {
                    let expected = e.expected_hash(&previous);
                    let used = previous;
                    previous = e.hash;
                    (used, expected)
                })
                .collect();
            (rows, hashed)
        })
    });
    let mut pages = futures_util::stream::iter(pages).buffered(4);
    let mut check = LogCheck::default();
    while let Some(page) = pages.next().await {
        let (rows, hashed) = page.expect("page task");
        for (event, hashed) in rows.iter().zip(hashed) {
            check.push_hashed(event, Some(hashed)).expect("chain");
        }
    }
    check.checked()
}

/// The export check as it was: one line at a time on one thread.
fn verify_lines(path: &std::path::Path) -> u64 {
    use std::io::BufRead;
    let mut check = circle_services::audit::verify::LogCheck::default();
    let export = std::io::BufReader::new(std::fs::File::open(path).expect("export"));
    for line in export.lines() {
        let event = serde_json::from_str(&line.expect("line")).expect("event");
        check.push(&event).expect("chain");
    }
    check.checked()
}

async fn proofs(store: &Store) {
    let (mut inclusion, mut consistency) = (Vec::new(), Vec::new());
    for i in 0..50u64 {
        let position = (i * 7_919 * 127) % LOG_SIZE;
        let t = Instant::now();
        tree::inclusion_proof(store, position, LOG_SIZE)
            .await
            .expect("inclusion");
        inclusion.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        tree::consistency_proof(store, position.max(1), LOG_SIZE)
            .await
            .expect("consistency");
        consistency.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "proofs at {LOG_SIZE}: inclusion median {:.2} ms (max {:.2}), consistency median {:.2} ms (max {:.2})",
        median(inclusion.clone()),
        max(&inclusion),
        median(consistency.clone()),
        max(&consistency)
    );
}

/// The export through the real route, read as a client reads it into a file; then
/// that file checked offline.
async fn export(url: String) {
    let mut settings = Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(url),
            master_key: Some(Vault::generate_master_key()),
            ..Overrides::default()
        },
    )
    .expect("settings");
    settings.log = "warn".into();
    // No signing key: the log's checkpoint was signed by the bench's own key, and
    // PostgreSQL without one signs nothing; the export needs none.
    let app = Application::build(&settings).await.expect("build Circle");
    let address = app.local_addr().expect("address");
    let state = app.state();
    tokio::spawn(app.run(std::future::pending()));
    let token = circle_services::auth::create_token(&state.store, Role::Auditor, None)
        .await
        .expect("token");
    let rss_before = resident_mb();
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(format!("http://{address}/api/v1/audit/events"))
        .bearer_auth(token)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("export");
    let mut response = response;
    let (mut lines, mut bytes) = (0u64, 0u64);
    let path = std::env::temp_dir().join(format!("circle-bench-export-{}.ndjson", Uuid::new_v4()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("export file"));
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        std::io::Write::write_all(&mut file, &chunk).expect("write export");
    }
    drop(file);
    let seconds = started.elapsed().as_secs_f64();
    // The log, and the token events of this Circle's start and the auditor's token.
    assert!(lines >= LOG_SIZE, "{lines} lines");
    println!(
        "NDJSON export over HTTP: {lines} events, {:.0} MB in {seconds:.1}s ({:.0} events/s); \
         resident memory {rss_before:.0} MB before, {:.0} MB after",
        bytes as f64 / 1e6,
        lines as f64 / seconds,
        resident_mb()
    );
    for run in 1..=3 {
        let started = Instant::now();
        let checked = verify_lines(&path);
        assert_eq!(checked, lines);
        let before = checked as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        let export = std::io::BufReader::new(std::fs::File::open(&path).expect("export"));
        let summary = circle_services::audit::verify::verify_export(export, None).expect("verify");
        assert_eq!(summary.events, lines);
        let now = summary.events as f64 / started.elapsed().as_secs_f64();
        println!(
            "verify --export offline, run {run}: {now:.0} events/s (before: line by line, {before:.0} events/s; {:.2}x)",
            now / before
        );
    }
    let _ = std::fs::remove_file(&path);
}

/// This process's resident memory (server and client of the export both), in MB.
fn resident_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

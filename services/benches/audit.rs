//! The audit chain and tree at scale, on PostgreSQL (`scripts/bench`):
//!
//! 6. Append throughput at 8 and 32 writers with the chain, and with the chain's
//!    database side switched off in a second schema (`circle_chain` returning zero
//!    hashes), alternating rounds in one run so both see the same machine.
//! 7. A log of 1,000,000 events: the leader's first checkpoint over it, `verify`
//!    (events/s), inclusion and consistency proofs (ms), and the NDJSON export over
//!    HTTP (events/s).

use std::time::{Duration, Instant};

use circle_services::app::Application;
use circle_services::appender::Appender;
use circle_services::audit::note::Signer;
use circle_services::audit::tree;
use circle_services::auth::Role;
use circle_services::config::{Overrides, Settings};
use circle_services::crypto::Vault;
use circle_services::metrics::Metrics;
use circle_services::secret::Secret;
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

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Ok(base) = std::env::var("CIRCLE_BENCH_DATABASE_URL") else {
        eprintln!("set CIRCLE_BENCH_DATABASE_URL (scripts/bench does) to run the audit benchmark");
        return;
    };
    let mut made = Vec::new();
    println!("\n6. appends/s with the chain and with its database side off, {ROUNDS} alternating rounds of {ROUND:?}");
    let chained = Store::postgres(&fresh_schema(&base, "bench_chained", &mut made).await, 16)
        .await
        .expect("store");
    let off_url = fresh_schema(&base, "bench_unchained", &mut made).await;
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
        for round in 0..ROUNDS {
            on.push(appends_per_second(&chained, writers, round).await);
            off.push(appends_per_second(&unchained, writers, round).await);
        }
        let (on, off) = (median(on), median(off));
        println!("{writers:>8} {on:>16.0} {off:>16.0} {:>7.2}x", on / off);
    }

    println!("\n7. a log of {LOG_SIZE} events");
    let url = fresh_schema(&base, "bench_audit", &mut made).await;
    let store = Store::postgres(&url, 16).await.expect("store");
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
    tree::checkpoint(&store, &signer, &fence)
        .await
        .expect("checkpoint")
        .expect("signed");
    println!(
        "first checkpoint over the whole log (chain re-checked, tree stored): {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let verdict = tree::verify_store(&store, |_, _| {}).await.expect("verify");
    assert!(verdict.ok, "{verdict:?}");
    println!(
        "verify: {:.0} events/s",
        verdict.checked as f64 / started.elapsed().as_secs_f64()
    );

    let (mut inclusion, mut consistency) = (Vec::new(), Vec::new());
    for i in 0..50u64 {
        let position = (i * 7_919 * 127) % LOG_SIZE;
        let t = Instant::now();
        tree::inclusion_proof(&store, position, LOG_SIZE)
            .await
            .expect("inclusion");
        inclusion.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        tree::consistency_proof(&store, position.max(1), LOG_SIZE)
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

    // The export through the real route, read as a client reads it.
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
    settings.audit_signing_key = Some(Secret::new(key));
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
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(lines, LOG_SIZE);
    println!(
        "NDJSON export over HTTP: {lines} events, {:.0} MB in {seconds:.1}s ({:.0} events/s); \
         resident memory {rss_before:.0} MB before, {:.0} MB after",
        bytes as f64 / 1e6,
        lines as f64 / seconds,
        resident_mb()
    );
    for schema in made {
        support::drop_schema(&base, &schema).await;
    }
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

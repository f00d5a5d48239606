//! The HTTP path beside the engine: commands/s and latency through `POST
//! /api/v1/groups/{id}/sessions/{s}/feedback` with 8 and 32 keep-alive connections,
//! each request a new event, on a Circle served in-process (the client shares the
//! machine's cores, as in the figures).
//!
//! Run: `scripts/bench` (after `commands`, so the direct path's figures print in the
//! same run), or `cargo bench -p circle-services --bench http` with
//! CIRCLE_BENCH_DATABASE_URL set. `CIRCLE_BENCH_HTTP_SECS` sets the run length per
//! point (default 60): long enough that a slowdown shows in the 10-second windows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use circle_services::app::Application;
use circle_services::config::{Overrides, Settings};
use circle_services::crypto::Vault;
use serde_json::json;

mod support;

const GROUPS: usize = 64;
const MEMBERS: usize = 10;
const WINDOW: Duration = Duration::from_secs(10);

struct Client {
    http: reqwest::Client,
    base: String,
    admin: String,
}

impl Client {
    async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::StatusCode {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .map(|r| r.status())
            .unwrap_or(reqwest::StatusCode::SERVICE_UNAVAILABLE)
    }

    async fn setup(&self) {
        for g in 0..GROUPS {
            let group = format!("g{g}");
            self.post(
                "/api/v1/groups",
                json!({"group_id": group, "name": "Bench", "focus": "anxiety",
                "format": "open", "capacity": MEMBERS, "facilitators": ["dr_bench"]}),
            )
            .await;
            for m in 0..MEMBERS {
                let client = format!("g{g}c{m}");
                self.post("/api/v1/clients", json!({"client_id": client}))
                    .await;
                self.post(
                    &format!("/api/v1/groups/{group}/members"),
                    json!({"client_id": client, "joined_on": "2026-01-06"}),
                )
                .await;
            }
            self.post(&format!("/api/v1/groups/{group}/sessions"),
                json!({"session_id": "s1", "starts_at": "2026-01-13T18:00:00+01:00", "duration_minutes": 90}))
                .await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One point: `connections` writers for `run_for`; prints rate, p50/p99/max and the
/// rate in each 10-second window.
async fn run(client: Arc<Client>, connections: usize, run_for: Duration) {
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..connections {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut n = w;
            while started.elapsed() < run_for {
                let group = n % GROUPS;
                let body = json!({"client_id": format!("g{group}c{}", n % MEMBERS), "instrument": "SRS",
                                  "items": [9.0, 9.0, 9.5, 9.0]});
                let sent = Instant::now();
                let status = client
                    .post(&format!("/api/v1/groups/g{group}/sessions/s1/feedback"), body)
                    .await;
                samples.push((sent - started, sent.elapsed(), status.is_success()));
                n += connections;
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for writer in writers {
        samples.extend(writer.await.expect("writer"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = samples.iter().filter(|s| s.2).count();
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    latencies.sort();
    let windows: Vec<String> = (0..(run_for.as_secs() / WINDOW.as_secs()).max(1))
        .map(|i| {
            let (from, to) = (WINDOW * i as u32, WINDOW * (i as u32 + 1));
            let n = samples
                .iter()
                .filter(|s| s.2 && s.0 >= from && s.0 < to)
                .count();
            format!("{:.0}", n as f64 / WINDOW.as_secs_f64())
        })
        .collect();
    println!(
        "  {connections:>2} connections: {:>6.0} commands/s ({ok} of {} answered 2xx), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; per 10 s: {}",
        ok as f64 / elapsed,
        samples.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        windows.join(" / "),
    );
}

#[tokio::main]
async fn main() {
    let Ok(base) = std::env::var("CIRCLE_BENCH_DATABASE_URL") else {
        eprintln!("CIRCLE_BENCH_DATABASE_URL is not set: run scripts/bench");
        return;
    };
    let run_for = Duration::from_secs(
        std::env::var("CIRCLE_BENCH_HTTP_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let admin = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let mut settings = Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(support::fresh_schema(&base, "bench_http").await.0),
            admin_token: Some(admin.clone()),
            master_key: Some(Vault::generate_master_key()),
            ..Overrides::default()
        },
    )
    .expect("settings");
    settings.log = "warn".into();
    let app = Application::build(&settings).await.expect("build Circle");
    let address = app.local_addr().expect("address");
    tokio::spawn(app.run(std::future::pending()));
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("HTTP client"),
        base: format!("http://{address}"),
        admin,
    });
    println!("\n5. the HTTP path: SRS feedback on {GROUPS} groups, {run_for:?} per point");
    client.setup().await;
    for connections in [8, 32] {
        run(client.clone(), connections, run_for).await;
    }
}

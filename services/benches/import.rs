//! `circle import` into PostgreSQL: rows per second for a synthetic practice (groups
//! of ten over a year of weekly sessions, every member marked at every session, a
//! PHQ-9 every fourth week), through the command path with idempotency keys, as the
//! CLI runs it; then the same files again (every row found already imported).
//!
//! `./scripts/bench --bench import`; `CIRCLE_BENCH_IMPORT_GROUPS` sets the size
//! (default 300 groups, 201,300 rows), `CIRCLE_BENCH_IMPORT_WORKERS` the rows in flight
//! at once (default 256, as the CLI).

use std::time::Instant;

use circle_services::app::Application;
use circle_services::config::{Overrides, Settings};
use circle_services::crypto::Vault;
use circle_services::import::synthetic::{write_practice, Shape};
use circle_services::import::{import, Options};

mod support;

fn main() {
    support::run(bench());
}

async fn bench() {
    let Ok(base) = std::env::var("CIRCLE_BENCH_DATABASE_URL") else {
        eprintln!("CIRCLE_BENCH_DATABASE_URL is not set: run scripts/bench");
        return;
    };
    let groups = std::env::var("CIRCLE_BENCH_IMPORT_GROUPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let shape = Shape {
        groups,
        members: 10,
        weeks: 52,
    };
    let dir = std::env::temp_dir().join(format!(
        "circle-bench-import-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("bench dir");
    write_practice(&dir, shape).expect("write the practice");
    let (url, schema) = support::fresh_schema(&base, "bench_import").await;
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
    let app = Application::build(&settings).await.expect("build Circle");
    let state = app.state();
    println!(
        "\nimport: {} rows ({} groups of {} over {} weeks) into PostgreSQL",
        shape.rows(),
        shape.groups,
        shape.members,
        shape.weeks
    );
    // `CIRCLE_BENCH_IMPORT_WORKERS` (default 64): how many rows are in flight at once.
    let workers = std::env::var("CIRCLE_BENCH_IMPORT_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    for (round, workers) in [("first import", workers), ("the same files again", workers)] {
        let options = Options {
            workers,
            progress: false,
            ..Options::default()
        };
        let started = Instant::now();
        let summary = import(&state, &dir, &options).await.expect("import");
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(summary.refused(), 0, "{:?}", summary.lines());
        println!(
            "  {round}, {workers} workers: {} rows in {seconds:.1}s = {:.0} rows/s",
            summary.rows(),
            summary.rows() as f64 / seconds
        );
        for line in summary.lines() {
            println!("    {line}");
        }
    }
    app.run(async {}).await.expect("stop");
    drop(state);
    support::drop_schema(&base, &schema).await;
    let _ = std::fs::remove_dir_all(&dir);
}

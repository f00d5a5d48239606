//! Commands per second on PostgreSQL: Circle's command path versus stock cqrs-es 0.5
//! with postgres-es 0.5, side by side, on the same `Group` aggregate and command.
//!
//! Run: `scripts/bench` (or `cargo bench -p circle-services --bench commands` with
//! CIRCLE_BENCH_DATABASE_URL set). Each system gets its own fresh schema.
//!
//! 1. Throughput with 1, 8 and 32 concurrent writers. Every writer records session
//!    feedback (an SRS) on groups drawn in turn from a shared pool of 64, so writers
//!    sometimes meet on the same group, as clinicians in one practice would.
//! 2. Cost as one group's history grows: one writer, the group prefilled to 500 and
//!    then 4,000 events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use circle_events::group::{Group, GroupCommand};
use circle_services::store::Store;
use cqrs_es::{CqrsFramework, DomainEvent};
use postgres_es::PostgresEventRepository;
use sqlx::postgres::PgPoolOptions;

mod support;

use support::engine::{
    feedback, feedback_event, setup_commands, setup_pool, throughput, Circle, System,
    POOL_OF_GROUPS,
};

const RUN_FOR: Duration = Duration::from_secs(4);
const HISTORY_COMMANDS: usize = 1_000;

type StockCqrs =
    CqrsFramework<Group, cqrs_es::persist::PersistedEventStore<PostgresEventRepository, Group>>;

/// Stock cqrs-es 0.5 + postgres-es 0.5, configured as its README shows.
struct Stock {
    cqrs: StockCqrs,
    pool: sqlx::PgPool,
}

impl Stock {
    async fn open(url: &str) -> Stock {
        let pool = PgPoolOptions::new()
            .max_connections(40)
            .connect(url)
            .await
            .expect("connect stock pool");
        sqlx::raw_sql(
            "CREATE TABLE events (
                aggregate_type text NOT NULL, aggregate_id text NOT NULL,
                sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
                event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, sequence));
             CREATE TABLE snapshots (
                aggregate_type text NOT NULL, aggregate_id text NOT NULL,
                last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
                current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
                payload json NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));",
        )
        .execute(&pool)
        .await
        .expect("create stock tables");
        Stock {
            cqrs: postgres_es::postgres_cqrs(pool.clone(), vec![], ()),
            pool,
        }
    }

    async fn execute(&self, group: &str, command: GroupCommand) -> bool {
        self.cqrs.execute(group, command).await.is_ok()
    }

    async fn prefill(&self, group: &str, from_sequence: usize, count: usize) {
        for n in 0..count {
            let event = feedback_event(n);
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ('group', $1, $2, $3, $4, $5, '{}')",
            )
            .bind(group)
            .bind((from_sequence + n + 1) as i64)
            .bind(event.event_type())
            .bind(event.event_version())
            .bind(serde_json::to_value(&event).expect("serialize"))
            .execute(&self.pool)
            .await
            .expect("prefill stock");
        }
    }
}

impl System for Stock {
    async fn run(&self, group: String, command: GroupCommand) -> bool {
        self.execute(&group, command).await
    }
}

/// Steady-state rate on one group. The first command is timed apart: for Circle it
/// includes loading the history into the cache (once per process), for stock it is
/// an ordinary command.
async fn sequential_rate<S: System>(system: &S, group: &str) -> (f64, Duration) {
    let started = Instant::now();
    assert!(
        system.run(group.into(), feedback(0)).await,
        "first command failed"
    );
    let first = started.elapsed();
    let started = Instant::now();
    for n in 1..HISTORY_COMMANDS {
        assert!(
            system.run(group.into(), feedback(n)).await,
            "history command failed"
        );
    }
    (
        (HISTORY_COMMANDS - 1) as f64 / started.elapsed().as_secs_f64(),
        first,
    )
}

/// Schemas are named `bench_*` and dropped by [`drop_bench_schemas`] at the end.
async fn fresh_schema(base: &str, name: &str) -> String {
    support::fresh_schema(base, &format!("bench_{name}"))
        .await
        .0
}

async fn count_feedback_events(store: &Store) -> u64 {
    let mut count = 0;
    let mut after = 0;
    loop {
        let page = store.read_all(after, 10_000).await.expect("read log");
        let Some(last) = page.last() else { break };
        after = last.position;
        count += page
            .iter()
            .filter(|e| e.event_type == "FeedbackRecorded")
            .count() as u64;
    }
    count
}

fn main() {
    support::run(bench());
}

async fn bench() {
    // `cargo bench` passes --bench; this harness takes no options.
    let Ok(base) = std::env::var("CIRCLE_BENCH_DATABASE_URL") else {
        eprintln!(
            "set CIRCLE_BENCH_DATABASE_URL (scripts/bench does) to run the command benchmark"
        );
        return;
    };
    println!("Circle vs stock cqrs-es 0.5 + postgres-es 0.5 on PostgreSQL; {RUN_FOR:?} per point");
    println!("\n1. throughput: SRS feedback on a pool of {POOL_OF_GROUPS} groups");
    println!(
        "{:>8} {:>14} {:>14} {:>8} {:>12} {:>12}",
        "writers", "circle cmd/s", "stock cmd/s", "ratio", "circle fail", "stock fail"
    );
    for writers in [1, 8, 32] {
        let circle = Arc::new(Circle::open(&fresh_schema(&base, "circle").await).await);
        setup_pool(circle.as_ref(), "g").await;
        let stock = Arc::new(Stock::open(&fresh_schema(&base, "stock").await).await);
        setup_pool(stock.as_ref(), "g").await;
        let before = circle.commit_totals();
        let ours = throughput(circle.clone(), "g", writers, RUN_FOR).await;
        let after = circle.commit_totals();
        let commits = (after[1] - before[1]).max(1.0);
        let theirs = throughput(stock.clone(), "g", writers, RUN_FOR).await;
        let recorded = count_feedback_events(&circle.store).await;
        println!(
            "{writers:>8} {:>14.0} {:>14.0} {:>7.2}x {:>12} {:>12}   (circle: {} accepted, {recorded} recorded, {} lost, {:.1} commands per commit, {:.2} ms each)",
            ours.per_second,
            theirs.per_second,
            ours.per_second / theirs.per_second,
            ours.failed,
            theirs.failed,
            ours.ok,
            ours.ok.abs_diff(recorded),
            (after[0] - before[0]) / commits,
            (after[2] - before[2]) / commits * 1e3,
        );
    }

    println!(
        "\n2. one writer, one group, as its history grows ({HISTORY_COMMANDS} commands per point)"
    );
    println!(
        "{:>8} {:>14} {:>14} {:>22} {:>20}",
        "history", "circle cmd/s", "stock cmd/s", "circle first command", "stock first command"
    );
    let circle = Circle::open(&fresh_schema(&base, "circle").await).await;
    let stock = Stock::open(&fresh_schema(&base, "stock").await).await;
    let setup = setup_commands("h");
    let setup_len = setup.len();
    for command in setup {
        circle.execute("h", command.clone()).await;
        stock.execute("h", command).await;
    }
    let mut rates = Vec::new();
    let mut version = setup_len;
    for target in [500usize, 4_000] {
        let fill = target - version;
        circle.prefill("h", version as u64, fill).await;
        stock.prefill("h", version, fill).await;
        // A fresh Circle, as after a restart: its first command loads the history.
        let circle_fresh = Circle::open(&circle.url).await;
        let (ours, our_first) = sequential_rate(&circle_fresh, "h").await;
        let (theirs, their_first) = sequential_rate(&stock, "h").await;
        println!(
            "{target:>8} {ours:>14.0} {theirs:>14.0} {:>19.1} ms {:>17.1} ms",
            our_first.as_secs_f64() * 1e3,
            their_first.as_secs_f64() * 1e3
        );
        rates.push((ours, theirs));
        version = target + HISTORY_COMMANDS;
    }
    println!(
        "rate at 4,000 / rate at 500: circle {:.2}x, stock {:.2}x",
        rates[1].0 / rates[0].0,
        rates[1].1 / rates[0].1
    );
    drop_bench_schemas(&base).await;
}

async fn drop_bench_schemas(base: &str) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(base)
        .await
        .expect("connect");
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'bench\\_%'")
            .fetch_all(&pool)
            .await
            .expect("list bench schemas");
    for schema in schemas {
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&pool)
            .await
            .expect("drop bench schema");
    }
}

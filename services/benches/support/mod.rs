//! What the benchmarks share: a PostgreSQL schema of their own for each run.

pub mod engine;

use sqlx::Connection;

/// A new schema named `<prefix>_<uuid>`: the URL that makes it the search path, and
/// its name (for [`drop_schema`]).
pub async fn fresh_schema(base: &str, prefix: &str) -> (String, String) {
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to the benchmark database");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    (
        format!("{base}{separator}options=-c%20search_path%3D{schema}"),
        schema,
    )
}

/// Group commits so far, read from a Circle's metrics text: `[appends, commits,
/// seconds spent committing]`.
#[allow(dead_code)] // only the command-path benchmarks read it
pub fn commit_totals(metrics: &str) -> [f64; 3] {
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name}is not in the metrics"))
    };
    [
        value("circle_store_append_batch_size_sum "),
        value("circle_store_append_batch_size_count "),
        value("circle_store_append_duration_seconds_sum "),
    ]
}

/// PostgreSQL's checkpoints so far (timed and requested) and the buffers they
/// wrote, where the server says (`pg_stat_bgwriter` up to PostgreSQL 16). A
/// checkpoint spreads its writes over most of `checkpoint_timeout`, and pages first
/// changed after it began are logged whole: a point it overlaps may be slower for
/// it (on a noisy machine windows also vary without one).
#[allow(dead_code)] // only the HTTP benchmark reports them
pub async fn checkpoints(base: &str) -> Option<(i64, i64)> {
    let mut conn = sqlx::PgConnection::connect(base).await.ok()?;
    sqlx::query_as(
        "SELECT checkpoints_timed + checkpoints_req, buffers_checkpoint FROM pg_stat_bgwriter",
    )
    .fetch_one(&mut conn)
    .await
    .ok()
}

/// CPU seconds (user and system) spent so far by this process and by the
/// machine's processes named `postgres`, where /proc shows them (a local server;
/// `None` otherwise). A point's work per command is steadier than its rate on a
/// noisy machine: a change that saves work shows here when the rate's noise hides it.
/// PostgreSQL's figure counts the whole server (its background writers too, and any
/// other database's sessions); a backend that starts or ends between two readings
/// skews it (the benchmark's Circle keeps its connections open through a point).
#[allow(dead_code)] // only the HTTP benchmark reports it
pub fn cpu_seconds() -> (f64, Option<f64>) {
    // SAFETY: getrusage writes only the struct it is given.
    let own = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    };
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let postgres = std::fs::read_dir("/proc").ok().and_then(|entries| {
        let mut found = None;
        for entry in entries.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: utime and stime are the 14th and 15th fields.
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            if !head.ends_with("(postgres") {
                continue;
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let used = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            if let (Some(user), Some(system)) = (used(11), used(12)) {
                *found.get_or_insert(0.0) += (user + system) / ticks;
            }
        }
        found
    });
    (own, postgres)
}

#[allow(dead_code)] // not every benchmark drops what it made
pub async fn drop_schema(base: &str, schema: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut conn)
            .await;
    }
}

/// One aggregate's events as a single append at version 0, as the loaders write them.
#[allow(dead_code)] // only the loading benchmarks use it
pub fn append<E: cqrs_es::DomainEvent>(
    kind: &'static str,
    id: String,
    events: &[E],
) -> circle_services::store::Append {
    use circle_services::store::{Append, EventMetadata, NewEvent};
    Append {
        aggregate_type: kind,
        aggregate_id: id,
        expected_version: 0,
        events: events
            .iter()
            .map(|e| NewEvent::encode(e, EventMetadata::system("bench", "admin")))
            .collect(),
        idempotency: None,
        key_action: None,
        chained: false,
        token_hash: None,
    }
}

/// A weekly group's history for a loader: `created`, `members` joining in week 0,
/// then weekly sessions with everyone's attendance (a fixed mix of no-shows, excused
/// and late) and half the members' questionnaires (`items(member, session)` for the
/// instrument), until it holds `count` events.
#[allow(dead_code)] // only the loading benchmarks use it
pub fn weekly_group(
    created: circle_events::group::GroupEvent,
    g: usize,
    members: usize,
    count: usize,
    week: impl Fn(usize) -> chrono::DateTime<chrono::FixedOffset>,
    instrument: &str,
    items: impl Fn(usize, usize) -> Vec<circle_events::instruments::Score>,
) -> Vec<circle_events::group::GroupEvent> {
    use circle_events::group::{AttendanceStatus, GroupEvent, Measure};
    use circle_events::instruments::Score;
    let client_id = |m: usize| format!("cli-{g}-{m}");
    let mut events = vec![created];
    events.extend((0..members).map(|m| GroupEvent::MemberJoined {
        client_id: client_id(m),
        joined_on: week(0).date_naive(),
    }));
    let mut session = 0;
    while events.len() < count {
        let session_id = format!("s{session}");
        events.push(GroupEvent::SessionScheduled {
            session_id: session_id.clone(),
            starts_at: week(session),
            duration_minutes: 90,
        });
        for m in 0..members {
            let status = match (g + m + session) % 9 {
                0 => AttendanceStatus::NoShow,
                1 => AttendanceStatus::Excused,
                2 => AttendanceStatus::Late,
                _ => AttendanceStatus::Present,
            };
            events.push(GroupEvent::AttendanceRecorded {
                session_id: session_id.clone(),
                client_id: client_id(m),
                status,
            });
        }
        for m in (0..members).filter(|m| (m + session) % 2 == 0) {
            let items = items(m, session);
            events.push(GroupEvent::FeedbackRecorded {
                client_id: client_id(m),
                session_id: Some(session_id.clone()),
                measure: Measure {
                    instrument: instrument.into(),
                    reference_version: "2024.1".into(),
                    total: Score::from_tenths(items.iter().map(|s| s.tenths()).sum()),
                    items,
                    administered_at: week(session),
                },
            });
        }
        session += 1;
    }
    events.truncate(count);
    events
}

/// Runs a benchmark as `circle serve` runs (see `circle_services::alloc::run`).
pub fn run<F: std::future::Future>(bench: F) -> F::Output {
    circle_services::alloc::run(bench).expect("a runtime")
}

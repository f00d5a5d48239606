//! The `circle` binary as an operator runs it: a `circle serve` process killed
//! (SIGKILL) while its projector is mid-stream, then restarted, ends with reports
//! identical to a fresh replay of the log; `circle token create` prints a working
//! token as the last word on stdout.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use circle_events::group::{Focus, Format, GroupEvent, Measure};
use circle_events::instruments::Score;
use circle_projections::reports::{self, RetentionScope};
use circle_services::auth::Role;
use circle_services::crypto::Vault;
use circle_services::projector;
use circle_services::store::{Append, EventMetadata, NewEvent, Store};
use circle_tests::process::{circle_binary, CircleProcess};
use circle_tests::{default_projection, fresh_schema_url};
use serde_json::Value;
use uuid::Uuid;

const GROUPS: usize = 20;
const EVENTS_PER_GROUP: usize = 6_000;

/// Groups with members, sessions and many questionnaires, appended straight to the log.
async fn fill(store: &Store) {
    let start: DateTime<chrono::FixedOffset> =
        DateTime::parse_from_rfc3339("2026-01-06T18:00:00+01:00").unwrap();
    for g in 0..GROUPS {
        let group_id = format!("g{g}");
        let mut events = vec![GroupEvent::GroupCreated {
            group_id: group_id.clone(),
            name: "load".into(),
            focus: Focus::Anxiety,
            format: Format::Open,
            capacity: 10,
            facilitators: vec!["dr".into()],
            starts_on: None,
        }];
        for m in 0..10 {
            events.push(GroupEvent::MemberJoined {
                client_id: format!("{group_id}-c{m}"),
                joined_on: start.date_naive(),
            });
        }
        while events.len() < EVENTS_PER_GROUP {
            let n = events.len();
            // Item 9 stays 0: no risk alert per event, or alerts would dwarf the state.
            let items: Vec<Score> = (0..9)
                .map(|i| Score::whole(if i == 8 { 0 } else { ((n + i) % 4) as i64 }))
                .collect();
            events.push(GroupEvent::FeedbackRecorded {
                client_id: format!("{group_id}-c{}", n % 10),
                session_id: None,
                measure: Measure {
                    instrument: "PHQ-9".into(),
                    reference_version: "2024.1".into(),
                    total: Score::from_tenths(items.iter().map(|s| s.tenths()).sum()),
                    items,
                    administered_at: start + chrono::Duration::minutes(n as i64),
                },
            });
        }
        for (chunk_index, chunk) in events.chunks(2_000).enumerate() {
            store
                .commit_batch(&[Append {
                    aggregate_type: "group",
                    aggregate_id: group_id.clone(),
                    expected_version: (chunk_index * 2_000) as u64,
                    events: chunk
                        .iter()
                        .map(|e| NewEvent::encode(e, EventMetadata::system("loader", "admin")))
                        .collect(),
                    idempotency: None,
                    key_action: None,
                    chained: false,
                    token_hash: None,
                }])
                .await
                .unwrap();
        }
    }
}

fn serve(database_url: &str, admin: &str, master_key: &str) -> CircleProcess {
    CircleProcess::serve(&[
        ("CIRCLE_DATABASE_URL", database_url),
        ("CIRCLE_ADMIN_TOKEN", admin),
        ("CIRCLE_MASTER_KEY", master_key),
        ("RUST_LOG", "warn"),
    ])
}

/// Where a restart resumes the reports from: the checkpoint, or the newest snapshot
/// of the same settings beyond it (while catching up, the snapshots are the saves).
async fn resume_point(store: &Store) -> i64 {
    let checkpoint = store
        .load_checkpoint(projector::REPORTS)
        .await
        .unwrap()
        .map_or(0, |(p, _)| p);
    let snapshot = store
        .resumable_snapshot(&default_projection().digest(), checkpoint)
        .await
        .unwrap();
    snapshot.map_or(checkpoint, |s| s.position)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_stream_resumes_to_the_same_reports_as_a_replay() {
    let url = fresh_schema_url().await;
    let store = Store::postgres(&url, 4).await.unwrap();
    fill(&store).await;
    let (admin, master_key) = (
        format!("admin-{}", Uuid::new_v4().simple()),
        Vault::generate_master_key(),
    );
    // Registered (an event) before the head is taken, so no start adds one later.
    let grant = circle_services::tokens::Grant::new(Role::Admin, None, "crash test");
    circle_services::tokens::register(
        &store,
        &admin,
        &grant,
        circle_services::tokens::operator("test"),
    )
    .await
    .unwrap();
    let head = store.head_position().await.unwrap();

    // First run: kill it as soon as it has saved a resume point part-way through.
    let mut first = serve(&url, &admin, &master_key);
    let deadline = Instant::now() + Duration::from_secs(60);
    while resume_point(&store).await == 0 {
        assert!(Instant::now() < deadline, "no resume point saved");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.signal("KILL");
    first.exit_status(Duration::from_secs(5)).await;
    let at_kill = resume_point(&store).await;
    assert!(
        0 < at_kill && at_kill < head,
        "killed mid-stream: resume point {at_kill} of {head}"
    );

    // Second run resumes from there and catches up.
    let mut second = serve(&url, &admin, &master_key);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let report: Value = loop {
        let answer = http
            .get(format!(
                "{}/api/v1/reports/retention?min_position={head}",
                second.base
            ))
            .bearer_auth(&admin)
            .send()
            .await;
        if let Ok(answer) = answer {
            if answer.status().is_success() {
                break answer.json().await.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "restarted projector did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let outcomes: Value = http
        .get(format!(
            "{}/api/v1/reports/outcomes?group_id=g3&instrument=PHQ-9",
            second.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alerts: Value = http
        .get(format!("{}/api/v1/alerts", second.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    second.kill();

    // A fresh replay of the whole log gives the same reports.
    let replayed = projector::rebuild(&store, &default_projection(), |_, _| {})
        .await
        .unwrap();
    let now = Utc::now();
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("as_of");
        v
    };
    let expected_retention = serde_json::to_value(reports::retention(
        &replayed,
        &RetentionScope::Practice,
        now,
    ))
    .unwrap();
    assert_eq!(strip(report), strip(expected_retention));
    let expected_outcomes =
        serde_json::to_value(reports::outcomes(&replayed, "g3", "PHQ-9", now)).unwrap();
    assert_eq!(strip(outcomes), strip(expected_outcomes));
    let expected_alerts = reports::alerts(&replayed, None).len();
    assert_eq!(alerts.as_array().unwrap().len(), expected_alerts);
}

#[tokio::test]
async fn token_create_prints_a_token_that_the_api_accepts_with_its_role() {
    let url = fresh_schema_url().await;
    let app = circle_tests::spawn_app_on(&url).await;
    app.post(
        "/api/v1/groups",
        &app.admin,
        serde_json::json!({"group_id": "g1", "name": "x", "focus": "grief", "format": "open", "facilitators": ["dr_x"]}),
    )
    .await;
    let output = Command::new(circle_binary())
        .args([
            "token",
            "create",
            "--role",
            "clinician",
            "--clinician-id",
            "dr_x",
            "--database-url",
            &url,
        ])
        .output()
        .expect("run circle token create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.split_whitespace().last().expect("a token");
    assert_eq!(
        app.get("/api/v1/groups/g1", token).await.status,
        reqwest::StatusCode::OK
    );
    let refused = Command::new(circle_binary())
        .args([
            "token",
            "create",
            "--role",
            "clinician",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a clinician token needs --clinician-id"
    );
}

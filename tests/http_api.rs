//! The HTTP API on a real PostgreSQL, as a dashboard or a script would use it.

use circle_events::group::GroupCommand;
use circle_services::auth::{Principal, Role};
use circle_services::commands::CommandContext;
use circle_tests::{spawn_app, spawn_app_on, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn create_group(
    app: &TestApp,
    token: &str,
    group_id: &str,
    capacity: u32,
    facilitator: &str,
) -> i64 {
    let answer = app
        .post(
            "/api/v1/groups",
            token,
            json!({"group_id": group_id, "name": "Tuesday anxiety", "focus": "anxiety",
                   "format": "open", "capacity": capacity, "facilitators": [facilitator]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    answer.position()
}

async fn register(app: &TestApp, token: &str, client_id: &str) -> i64 {
    let answer = app
        .post(
            "/api/v1/clients",
            token,
            json!({"client_id": client_id, "display_name": "Ada L.", "birth_year": 1985,
                   "contact": "ada@example.org"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    answer.position()
}

fn phq9(items: [i64; 9]) -> Value {
    json!({"client_id": "c1", "instrument": "PHQ-9", "items": items})
}

#[tokio::test]
async fn a_week_of_group_work_is_recorded_with_increasing_positions() {
    let app = spawn_app().await;
    let admin = app.admin.clone();
    let mut positions = vec![create_group(&app, &admin, "g1", 10, "dr_a").await];
    for client in ["c1", "c2", "c3"] {
        positions.push(register(&app, &admin, client).await);
    }
    for client in ["c1", "c2", "c3"] {
        let joined = app
            .post(
                "/api/v1/groups/g1/members",
                &admin,
                json!({"client_id": client, "joined_on": "2026-01-06"}),
            )
            .await;
        assert_eq!(joined.status, StatusCode::OK, "{:?}", joined.body);
        positions.push(joined.position());
    }
    let session = app
        .post(
            "/api/v1/groups/g1/sessions",
            &admin,
            json!({"session_id": "s1", "starts_at": "2026-01-13T18:00:00+01:00", "duration_minutes": 90}),
        )
        .await;
    assert_eq!(session.status, StatusCode::CREATED);
    assert_eq!(session.body["id"], "s1");
    positions.push(session.position());
    let attendance = app
        .post(
            "/api/v1/groups/g1/sessions/s1/attendance",
            &admin,
            json!({"records": [{"client_id": "c1", "status": "present"},
                               {"client_id": "c2", "status": "late"},
                               {"client_id": "c3", "status": "no_show"}]}),
        )
        .await;
    assert_eq!(attendance.status, StatusCode::OK, "{:?}", attendance.body);
    positions.push(attendance.position());
    let feedback = app
        .post(
            "/api/v1/groups/g1/sessions/s1/feedback",
            &admin,
            phq9([1, 2, 1, 0, 1, 2, 1, 0, 0]),
        )
        .await;
    assert_eq!(feedback.status, StatusCode::OK, "{:?}", feedback.body);
    positions.push(feedback.position());

    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // Three attendance marks are three events, so the group is at version 9.
    assert_eq!(feedback.body["version"], 9);
    assert_eq!(app.head().await, *positions.last().unwrap());

    let group = app.get("/api/v1/groups/g1", &admin).await;
    assert_eq!(group.body["active_members"], 3);
    assert_eq!(
        group.body["sessions"][0]["attendance"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

async fn group_with_session(app: &TestApp) {
    let admin = app.admin.clone();
    create_group(app, &admin, "g1", 10, "dr_a").await;
    register(app, &admin, "c1").await;
    app.post(
        "/api/v1/groups/g1/members",
        &admin,
        json!({"client_id": "c1", "joined_on": "2026-01-06"}),
    )
    .await;
    app.post(
        "/api/v1/groups/g1/sessions",
        &admin,
        json!({"session_id": "s1", "starts_at": "2026-01-13T18:00:00+01:00", "duration_minutes": 90}),
    )
    .await;
}

#[tokio::test]
async fn a_phq9_item_of_4_is_refused_naming_the_item_and_nothing_is_stored() {
    let app = spawn_app().await;
    group_with_session(&app).await;
    let before = app.head().await;
    let answer = app
        .post(
            "/api/v1/groups/g1/sessions/s1/feedback",
            &app.admin,
            phq9([1, 2, 1, 4, 1, 2, 1, 0, 0]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.field(), "items[3]");
    assert_eq!(answer.body["status"], 400);
    assert_eq!(app.head().await, before);
}

#[tokio::test]
async fn malformed_input_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    group_with_session(&app).await;
    let before = app.head().await;
    let cases = [
        (
            "/api/v1/groups/g1/sessions/s1/feedback",
            json!({"client_id": "c1", "instrument": "ORS", "items": [1.25, 2, 3, 4]}),
            "items[0]",
        ),
        (
            "/api/v1/groups/g1/sessions/s1/feedback",
            json!({"client_id": "c1", "instrument": "ORS", "items": [1, "2", 3, 4]}),
            "items[1]",
        ),
        (
            "/api/v1/groups/g1/members/c1/departure",
            json!({"left_on": "2026-02-01", "reason": "bored"}),
            "reason",
        ),
        (
            "/api/v1/groups/g1/members/c1/departure",
            json!({"left_on": "yesterday", "reason": "other"}),
            "left_on",
        ),
        (
            "/api/v1/groups/g1/sessions/s1/attendance",
            json!({"records": [{"client_id": "c1", "status": "asleep"}]}),
            "records[0].status",
        ),
        (
            "/api/v1/groups",
            json!({"name": "x", "focus": "grief", "format": "open", "capacity": 0, "facilitators": ["a"]}),
            "capacity",
        ),
        (
            "/api/v1/groups",
            json!({"focus": "grief", "format": "open", "facilitators": ["a"]}),
            "name",
        ),
        (
            "/api/v1/groups",
            json!({"group_id": "has space", "name": "x", "focus": "grief", "format": "open", "facilitators": ["a"]}),
            "group_id",
        ),
        ("/api/v1/clients", json!({"birth_year": 1800}), "birth_year"),
    ];
    for (path, body, field) in cases {
        let answer = app.post(path, &app.admin, body.clone()).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {:?}",
            answer.body
        );
        assert_eq!(answer.content_type, "application/problem+json");
        assert_eq!(answer.field(), field, "{path} {body}: {:?}", answer.body);
    }
    let not_json = app
        .send(
            Method::POST,
            "/api/v1/groups",
            Some(&app.admin),
            &[("content-type", "application/json")],
            None,
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.head().await,
        before,
        "nothing stored for refused commands"
    );
}

#[tokio::test]
async fn the_eleventh_member_of_a_group_of_ten_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin.clone();
    create_group(&app, &admin, "g1", 10, "dr_a").await;
    for n in 0..11 {
        register(&app, &admin, &format!("c{n}")).await;
    }
    for n in 0..10 {
        let answer = app
            .post(
                "/api/v1/groups/g1/members",
                &admin,
                json!({"client_id": format!("c{n}"), "joined_on": "2026-01-06"}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let before = app.head().await;
    let eleventh = app
        .post(
            "/api/v1/groups/g1/members",
            &admin,
            json!({"client_id": "c10", "joined_on": "2026-01-06"}),
        )
        .await;
    assert_eq!(eleventh.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(eleventh.field(), "client_id");
    assert_eq!(app.head().await, before);
}

#[tokio::test]
async fn joining_needs_a_registered_client_and_an_existing_group() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    let unknown = app
        .post(
            "/api/v1/groups/g1/members",
            &app.admin,
            json!({"client_id": "ghost", "joined_on": "2026-01-06"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.field(), "client_id");
    register(&app, &app.admin, "c1").await;
    let no_group = app
        .post(
            "/api/v1/groups/nope/members",
            &app.admin,
            json!({"client_id": "c1", "joined_on": "2026-01-06"}),
        )
        .await;
    assert_eq!(no_group.status, StatusCode::NOT_FOUND);
    assert_eq!(no_group.content_type, "application/problem+json");
}

#[tokio::test]
async fn the_same_idempotency_key_twice_records_one_event() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    register(&app, &app.admin, "c1").await;
    let body = json!({"client_id": "c1", "joined_on": "2026-01-06"});
    let key = [("Idempotency-Key", "join-c1-g1")];
    let first = app
        .send(
            Method::POST,
            "/api/v1/groups/g1/members",
            Some(&app.admin),
            &key,
            Some(&body),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let head = app.head().await;
    let again = app
        .send(
            Method::POST,
            "/api/v1/groups/g1/members",
            Some(&app.admin),
            &key,
            Some(&body),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, first.body);
    assert_eq!(app.head().await, head, "no new event");

    let other = json!({"client_id": "c1", "joined_on": "2026-01-07"});
    let reused = app
        .send(
            Method::POST,
            "/api/v1/groups/g1/members",
            Some(&app.admin),
            &key,
            Some(&other),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT);
    assert_eq!(reused.field(), "Idempotency-Key");
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn concurrent_retries_with_one_idempotency_key_record_one_event() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    let before = app.head().await;
    let body = json!({"session_id": "s1", "starts_at": "2026-01-13T18:00:00+01:00", "duration_minutes": 90});
    let key = [("Idempotency-Key", "schedule-s1")];
    let answers = futures_util::future::join_all((0..8).map(|_| {
        app.send(
            Method::POST,
            "/api/v1/groups/g1/sessions",
            Some(&app.admin),
            &key,
            Some(&body),
        )
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        assert_eq!(answer.body, answers[0].body);
    }
    assert_eq!(app.head().await, before + 1);
}

#[tokio::test]
async fn if_match_guards_against_lost_updates() {
    let app = spawn_app().await;
    let created = app
        .post("/api/v1/groups", &app.admin, json!({"group_id": "g1", "name": "x", "focus": "grief", "format": "closed", "facilitators": ["dr_a"]}))
        .await;
    assert_eq!(created.body["version"], 1);
    let body = json!({"clinician_id": "dr_b"});
    let stale = app
        .send(
            Method::POST,
            "/api/v1/groups/g1/facilitators",
            Some(&app.admin),
            &[("If-Match", "0")],
            Some(&body),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.field(), "If-Match");
    let fresh = app
        .send(
            Method::POST,
            "/api/v1/groups/g1/facilitators",
            Some(&app.admin),
            &[("If-Match", "1")],
            Some(&body),
        )
        .await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.body["version"], 2);
}

#[tokio::test]
async fn roles_decide_who_may_write_and_read() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    let body = json!({"session_id": "s1", "starts_at": "2026-01-13T18:00:00+01:00", "duration_minutes": 90});

    let anonymous = app
        .send(
            Method::POST,
            "/api/v1/groups/g1/sessions",
            None,
            &[],
            Some(&body),
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.content_type, "application/problem+json");
    let forged = app
        .post(
            "/api/v1/groups/g1/sessions",
            "circle_not-a-real-token",
            body.clone(),
        )
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);

    let other_clinician = app.token(Role::Clinician, Some("dr_b")).await;
    let before = app.head().await;
    let refused = app
        .post("/api/v1/groups/g1/sessions", &other_clinician, body.clone())
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(app.head().await, before);
    assert_eq!(
        app.get("/api/v1/groups/g1", &other_clinician).await.status,
        StatusCode::FORBIDDEN
    );
    let own_list = app.get("/api/v1/groups", &other_clinician).await;
    assert_eq!(own_list.body, json!([]));

    let facilitator = app.token(Role::Clinician, Some("dr_a")).await;
    // Issuing the token is an event too: count from after it.
    let before = app.head().await;
    let allowed = app
        .post("/api/v1/groups/g1/sessions", &facilitator, body.clone())
        .await;
    assert_eq!(allowed.status, StatusCode::CREATED);
    let events = app.state.store.read_all(before, 10).await.unwrap();
    assert_eq!(events[0].actor_id, "dr_a");
    assert_eq!(events[0].actor_role, "clinician");

    let auditor = app.token(Role::Auditor, None).await;
    assert_eq!(
        app.get("/api/v1/groups/g1", &auditor).await.status,
        StatusCode::OK
    );
    let write = app
        .post(
            "/api/v1/groups/g1/closure",
            &auditor,
            json!({"closed_on": "2026-06-30"}),
        )
        .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    let reporter = app.token(Role::Reporter, None).await;
    assert_eq!(
        app.get("/api/v1/groups/g1", &reporter).await.status,
        StatusCode::FORBIDDEN
    );
}

async fn join(app: &TestApp, group_id: &str, client_id: &str) {
    let answer = app
        .post(
            &format!("/api/v1/groups/{group_id}/members"),
            &app.admin,
            json!({"client_id": client_id, "joined_on": "2026-01-06"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
}

/// A clinician assigned to a group sees its members on the very next request, even
/// when another Circle process took the assignment.
#[tokio::test]
async fn a_clinician_assigned_to_a_group_reads_its_members_at_once() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    register(&app, &app.admin, "c1").await;
    join(&app, "g1", "c1").await;
    let newcomer = app.token(Role::Clinician, Some("dr_b")).await;
    let before = app.get("/api/v1/clients/c1", &newcomer).await;
    assert_eq!(before.status, StatusCode::FORBIDDEN);

    let other_process = spawn_app_on(&app.database_url).await;
    let assigned = other_process
        .post(
            "/api/v1/groups/g1/facilitators",
            &other_process.admin,
            json!({"clinician_id": "dr_b"}),
        )
        .await;
    assert_eq!(assigned.status, StatusCode::OK, "{:?}", assigned.body);
    let after = app.get("/api/v1/clients/c1", &newcomer).await;
    assert_eq!(after.status, StatusCode::OK, "{:?}", after.body);
    assert_eq!(after.body["personal"]["display_name"], "Ada L.");
    let consent = app
        .post(
            "/api/v1/clients/c1/consents",
            &newcomer,
            json!({"scope": "research", "granted": true}),
        )
        .await;
    assert_eq!(consent.status, StatusCode::OK, "{:?}", consent.body);
}

/// Access follows the care team: a clinician of another group is refused, and so is
/// one removed from the client's group, from the next request on.
#[tokio::test]
async fn a_clinician_outside_the_clients_groups_is_refused() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    create_group(&app, &app.admin, "g2", 10, "dr_b").await;
    register(&app, &app.admin, "c1").await;
    join(&app, "g1", "c1").await;
    let dr_a = app.token(Role::Clinician, Some("dr_a")).await;
    let dr_b = app.token(Role::Clinician, Some("dr_b")).await;
    assert_eq!(
        app.get("/api/v1/clients/c1", &dr_a).await.status,
        StatusCode::OK
    );
    let other_group = app.get("/api/v1/clients/c1", &dr_b).await;
    assert_eq!(other_group.status, StatusCode::FORBIDDEN);
    assert_eq!(other_group.content_type, "application/problem+json");

    let assigned = app
        .post(
            "/api/v1/groups/g1/facilitators",
            &app.admin,
            json!({"clinician_id": "dr_c"}),
        )
        .await;
    assert_eq!(assigned.status, StatusCode::OK);
    // Removal has no route yet; it goes through the command path as a route would.
    let ctx = CommandContext::new(Principal::system("admin-test"));
    let removal = GroupCommand::RemoveFacilitator {
        clinician_id: "dr_a".into(),
    };
    app.state
        .commands
        .execute(&app.state.groups, "g1", removal, &ctx, |_| true)
        .await
        .unwrap();
    let removed = app.get("/api/v1/clients/c1", &dr_a).await;
    assert_eq!(removed.status, StatusCode::FORBIDDEN);
    let before = app.head().await;
    let write = app
        .post(
            "/api/v1/clients/c1/consents",
            &dr_a,
            json!({"scope": "research", "granted": true}),
        )
        .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert_eq!(app.head().await, before);
}

#[tokio::test]
async fn personal_data_is_sealed_in_the_log_and_gone_after_erasure() {
    let app = spawn_app().await;
    register(&app, &app.admin, "c1").await;
    let events = app.state.store.read_all(0, 10).await.unwrap();
    let stored = serde_json::to_string(&events).unwrap();
    assert!(
        !stored.contains("Ada"),
        "display name must not be stored in plain text"
    );
    assert!(!stored.contains("ada@example.org"));

    let before = app.get("/api/v1/clients/c1", &app.admin).await;
    assert_eq!(before.body["personal"]["display_name"], "Ada L.");
    let auditor = app.token(Role::Auditor, None).await;
    assert_eq!(
        app.get("/api/v1/clients/c1", &auditor).await.body["personal"],
        Value::Null
    );

    let clinician = app.token(Role::Clinician, Some("dr_a")).await;
    let not_theirs = app
        .post(
            "/api/v1/clients/c1/erasure",
            &clinician,
            json!({"reason": "client_request"}),
        )
        .await;
    assert_eq!(not_theirs.status, StatusCode::FORBIDDEN);
    let erased = app
        .post(
            "/api/v1/clients/c1/erasure",
            &app.admin,
            json!({"reason": "client_request"}),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{:?}", erased.body);
    let after = app.get("/api/v1/clients/c1", &app.admin).await;
    assert_eq!(after.body["erased"], true);
    assert_eq!(after.body["personal"], Value::Null);
    // The sealed bytes are still in the log, but their key is gone.
    assert_eq!(
        app.state.store.client_key("c1").await.unwrap(),
        circle_services::store::ClientKey::Destroyed
    );
    let consent = app
        .post(
            "/api/v1/clients/c1/consents",
            &app.admin,
            json!({"scope": "research", "granted": true}),
        )
        .await;
    assert_eq!(consent.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_problem() {
    let app = spawn_app().await;
    let huge = json!({"name": "x".repeat(100_000), "focus": "grief", "format": "open", "facilitators": ["a"]});
    let answer = app.post("/api/v1/groups", &app.admin, huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.content_type, "application/problem+json");
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    let health = app.send(Method::GET, "/healthz", None, &[], None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = app.send(Method::GET, "/readyz", None, &[], None).await;
    assert_eq!(ready.status, StatusCode::OK);
    let metrics = app.send(Method::GET, "/metrics", None, &[], None).await;
    assert_eq!(metrics.content_type, "text/plain; version=0.0.4");
    let text = metrics.body.as_str().unwrap();
    for name in [
        "circle_http_requests_total{method=\"POST\",route=\"/api/v1/groups\",status=\"201\"} 1",
        "circle_commands_total{command=\"create_group\",outcome=\"accepted\"} 1",
        "circle_events_appended_total 1",
        "circle_build_info{version=",
        "circle_store_append_duration_seconds_bucket",
        "circle_process_resident_memory_bytes",
        "circle_projection_position{projection=\"reports\"}",
        "circle_projection_lag_events{projection=\"reports\"}",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let openapi = app
        .send(Method::GET, "/api/v1/openapi.json", None, &[], None)
        .await;
    let paths = openapi.body["paths"].as_object().unwrap();
    for path in [
        "/api/v1/groups",
        "/api/v1/groups/{group_id}/members",
        "/api/v1/groups/{group_id}/sessions/{session_id}/feedback",
        "/api/v1/clients/{client_id}/erasure",
    ] {
        assert!(paths.contains_key(path), "openapi lacks {path}");
    }
}

#[tokio::test]
async fn promtool_accepts_the_metrics_exposition() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    app.get("/api/v1/groups/g1", &app.admin).await;
    let metrics = app.send(Method::GET, "/metrics", None, &[], None).await;
    let text = metrics.body.as_str().unwrap().to_string();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed: scripts/test installs it");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn assert_refused(answer: &circle_tests::Answer, status: StatusCode, field: &str, case: &str) {
    assert_eq!(answer.status, status, "{case}: {:?}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json", "{case}");
    assert_eq!(answer.field(), field, "{case}: {:?}", answer.body);
}

#[tokio::test]
async fn control_characters_in_text_are_refused_naming_the_field_and_nothing_is_stored() {
    let app = spawn_app().await;
    group_with_session(&app).await;
    let before = app.head().await;
    let group = |name: &str| {
        format!(
            r#"{{"name": "{name}", "focus": "grief", "format": "open", "facilitators": ["dr_a"]}}"#
        )
    };
    let cases = [
        ("/api/v1/groups", group(r"\u001b[31mred"), "name"),
        ("/api/v1/groups", group(r"bell\u0007"), "name"),
        ("/api/v1/groups", group(r"nul\u0000"), "name"),
        ("/api/v1/groups", group(r"del\u007F"), "name"),
        ("/api/v1/groups", group("raw del\u{7f}"), "name"),
        ("/api/v1/groups", group(r"next line\u0085"), "name"),
        ("/api/v1/groups", group("raw csi\u{9b}31m"), "name"),
        (
            "/api/v1/groups/g1/sessions/s1/cancellation",
            r#"{"reason": "snow\u0000"}"#.to_string(),
            "reason",
        ),
        (
            "/api/v1/groups/g1/sessions/s1/attendance",
            r#"{"records": [{"client_id": "c1\u0000", "status": "present"}]}"#.to_string(),
            "records[0].client_id",
        ),
        (
            "/api/v1/clients",
            r#"{"display_name": "Ada\u001b]0;title\u0007"}"#.to_string(),
            "display_name",
        ),
        (
            "/api/v1/groups",
            r#"{"na\u0000me": "x"}"#.to_string(),
            "body",
        ),
    ];
    for (path, body, field) in cases {
        let answer = app.post_raw(path, &app.admin, body.clone()).await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, field, &body);
    }
    assert_eq!(
        app.head().await,
        before,
        "nothing stored for refused commands"
    );

    // Line breaks and tabs are text; an escaped backslash before `u0000` is too.
    let named = app
        .post_raw("/api/v1/groups", &app.admin, group(r"back\\u0000slash"))
        .await;
    assert_eq!(named.status, StatusCode::CREATED, "{:?}", named.body);
    let cancelled = app
        .post_raw(
            "/api/v1/groups/g1/sessions/s1/cancellation",
            &app.admin,
            r#"{"reason": "snow:\n\troads closed\r\n"}"#,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
}

#[tokio::test]
async fn text_after_the_json_body_is_refused_naming_body() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    let before = app.head().await;
    for body in [
        r#"{"closed_on": "2026-06-30"} garbage"#,
        r#"{"closed_on": "2026-06-30"}{"closed_on": "2026-07-01"}"#,
        r#"{"closed_on": "2026-06-30"},"#,
    ] {
        let answer = app
            .post_raw("/api/v1/groups/g1/closure", &app.admin, body)
            .await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, "body", body);
    }
    assert_eq!(app.head().await, before);
    let trailing_space = app
        .post_raw(
            "/api/v1/groups/g1/closure",
            &app.admin,
            "{\"closed_on\": \"2026-06-30\"}\r\n ",
        )
        .await;
    assert_eq!(trailing_space.status, StatusCode::OK);
}

#[tokio::test]
async fn only_application_json_bodies_are_read() {
    let app = spawn_app().await;
    let before = app.head().await;
    let body = |id: &str| {
        format!(
            r#"{{"group_id": "{id}", "name": "x", "focus": "grief", "format": "open", "facilitators": ["dr_a"]}}"#
        )
    };
    for content_type in [
        "application/jsonxyz",
        "application/json-patch+json",
        "application/x-json",
        "text/plain",
        "json",
        "application/json; charset=latin1",
    ] {
        let answer = app
            .send_raw(
                Method::POST,
                "/api/v1/groups",
                Some(&app.admin),
                &[("content-type", content_type)],
                body("g0"),
            )
            .await;
        assert_refused(
            &answer,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
            content_type,
        );
    }
    assert_eq!(app.head().await, before);
    for (i, content_type) in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=\"UTF-8\"",
    ]
    .into_iter()
    .enumerate()
    {
        let answer = app
            .send_raw(
                Method::POST,
                "/api/v1/groups",
                Some(&app.admin),
                &[("content-type", content_type)],
                body(&format!("g{}", i + 1)),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{content_type}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_answered_in_problem_json() {
    let app = spawn_app().await;
    for path in ["/nope", "/api/v1/nope", "/api/v2/groups"] {
        let answer = app
            .send(Method::GET, path, Some(&app.admin), &[], None)
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.content_type, "application/problem+json", "{path}");
        assert_eq!(answer.body["status"], 404, "{path}");
    }
    for (method, path, allowed) in [
        (Method::DELETE, "/api/v1/groups", "GET,HEAD,POST"),
        (Method::PUT, "/api/v1/groups/g1", "GET,HEAD"),
        (Method::POST, "/healthz", "GET,HEAD"),
    ] {
        let answer = app
            .send(method.clone(), path, Some(&app.admin), &[], None)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.content_type, "application/problem+json", "{path}");
        assert_eq!(answer.body["status"], 405, "{path}");
        let allow = answer.headers["allow"].to_str().unwrap().replace(' ', "");
        let mut allow: Vec<&str> = allow.split(',').collect();
        allow.sort();
        assert_eq!(allow.join(","), allowed, "{method} {path}");
    }
}

#[tokio::test]
async fn query_and_path_refusals_are_problems_naming_the_parameter() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    for (path, field) in [
        (
            "/api/v1/reports/attendance?group_id=g1&min_position=soon",
            "min_position",
        ),
        (
            "/api/v1/reports/retention?min_position=1e99",
            "min_position",
        ),
        (
            "/api/v1/reports/retention?as_of=2026-06-30T23:59:60Z",
            "as_of",
        ),
        (
            "/api/v1/reports/retention?as_of=0000-01-01T00:00:00Z",
            "as_of",
        ),
        ("/api/v1/groups/%FF", "group_id"),
        ("/api/v1/clients/%C3%28", "client_id"),
    ] {
        let answer = app.get(path, &app.admin).await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, field, path);
    }
}

#[tokio::test]
async fn impossible_dates_and_leap_seconds_are_refused_naming_the_field() {
    let app = spawn_app().await;
    group_with_session(&app).await;
    let before = app.head().await;
    let cases = [
        (
            "/api/v1/groups/g1/members",
            json!({"client_id": "c1", "joined_on": "0000-01-01"}),
            "joined_on",
        ),
        (
            "/api/v1/groups/g1/members",
            json!({"client_id": "c1", "joined_on": "-0001-01-01"}),
            "joined_on",
        ),
        (
            "/api/v1/groups/g1/members",
            json!({"client_id": "c1", "joined_on": "+262142-01-01"}),
            "joined_on",
        ),
        (
            "/api/v1/groups/g1/sessions",
            json!({"starts_at": "2026-06-30T23:59:60Z", "duration_minutes": 90}),
            "starts_at",
        ),
        (
            "/api/v1/groups/g1/closure",
            json!({"closed_on": "2200-01-01"}),
            "closed_on",
        ),
        (
            "/api/v1/clients/c1/measures",
            json!({"instrument": "GAD-7", "items": [1, 1, 1, 1, 1, 1, 1],
                   "administered_at": "1899-12-31T12:00:00Z"}),
            "administered_at",
        ),
        (
            "/api/v1/groups",
            json!({"name": "x", "focus": "grief", "format": "open", "facilitators": ["dr_a"],
                   "starts_on": "+262142-01-01"}),
            "starts_on",
        ),
    ];
    for (path, body, field) in cases {
        let answer = app.post(path, &app.admin, body.clone()).await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, field, &body.to_string());
    }
    assert_eq!(app.head().await, before);
}

#[tokio::test]
async fn five_thousand_facilitators_are_refused() {
    let app = spawn_app().await;
    let before = app.head().await;
    let facilitators: Vec<String> = (0..5_000).map(|i| format!("dr_{i}")).collect();
    let answer = app
        .post(
            "/api/v1/groups",
            &app.admin,
            json!({"name": "x", "focus": "grief", "format": "open", "facilitators": facilitators}),
        )
        .await;
    assert_refused(&answer, StatusCode::BAD_REQUEST, "facilitators", "5,000");
    assert_eq!(app.head().await, before);
}

#[tokio::test]
async fn metrics_stay_small_whatever_methods_callers_invent() {
    let app = spawn_app().await;
    for _ in 0..300 {
        let invented = format!("X{}", uuid::Uuid::new_v4().simple()).to_uppercase();
        let method = Method::from_bytes(invented.as_bytes()).unwrap();
        app.send(method, "/api/v1/groups", Some(&app.admin), &[], None)
            .await;
    }
    let metrics = app.send(Method::GET, "/metrics", None, &[], None).await;
    let text = metrics.body.as_str().unwrap();
    let series = text
        .lines()
        .filter(|l| l.starts_with("circle_http_requests_total{"))
        .count();
    assert!(series <= 5, "{series} series:\n{text}");
    assert!(
        text.contains("method=\"other\""),
        "invented methods are counted as other:\n{text}"
    );
}

#[tokio::test]
async fn a_groups_sessions_are_read_page_by_page_in_time_order() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    // Scheduled out of order: pages follow the time the sessions start.
    for (id, starts_at) in [
        ("s_c", "2026-01-27T18:00:00+01:00"),
        ("s_a", "2026-01-13T18:00:00+01:00"),
        ("s_e", "2026-02-10T18:00:00+01:00"),
        ("s_b", "2026-01-20T18:00:00+01:00"),
        ("s_d", "2026-02-03T18:00:00+01:00"),
    ] {
        let answer = app
            .post(
                "/api/v1/groups/g1/sessions",
                &app.admin,
                json!({"session_id": id, "starts_at": starts_at, "duration_minutes": 90}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let ids = |answer: &circle_tests::Answer| -> Vec<String> {
        answer.body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_string())
            .collect()
    };

    let whole = app.get("/api/v1/groups/g1", &app.admin).await;
    assert_eq!(ids(&whole), ["s_a", "s_b", "s_c", "s_d", "s_e"]);
    assert_eq!(whole.body["sessions_total"], 5);
    assert_eq!(whole.body["next_sessions_after"], Value::Null);

    let mut pages = Vec::new();
    let mut path = "/api/v1/groups/g1?sessions_limit=2".to_string();
    loop {
        let page = app.get(&path, &app.admin).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        assert_eq!(page.body["sessions_total"], 5);
        pages.push(ids(&page));
        match page.body["next_sessions_after"].as_str() {
            Some(after) => {
                path = format!("/api/v1/groups/g1?sessions_limit=2&sessions_after={after}")
            }
            None => break,
        }
    }
    assert_eq!(pages, [vec!["s_a", "s_b"], vec!["s_c", "s_d"], vec!["s_e"]]);

    for (query, field) in [
        ("sessions_limit=0", "sessions_limit"),
        ("sessions_limit=1000000", "sessions_limit"),
        ("sessions_limit=many", "sessions_limit"),
        ("sessions_after=has%20space", "sessions_after"),
    ] {
        let answer = app
            .get(&format!("/api/v1/groups/g1?{query}"), &app.admin)
            .await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, field, query);
    }
    // A well-formed cursor to a session the group does not have depends on what is
    // stored, not on the request's form: 422, as the description says.
    let unknown = app
        .get("/api/v1/groups/g1?sessions_after=s_zzz", &app.admin)
        .await;
    assert_refused(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "sessions_after",
        "s_zzz",
    );

    let openapi = app
        .send(Method::GET, "/api/v1/openapi.json", None, &[], None)
        .await;
    let parameters = openapi.body["paths"]["/api/v1/groups/{group_id}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] != "header") // Circle-Purpose, on every operation
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(
        parameters,
        ["group_id", "sessions_after", "sessions_limit", "as_of"]
    );
}

#[tokio::test]
async fn a_min_position_beyond_the_log_is_refused_not_waited_for() {
    let app = spawn_app().await;
    create_group(&app, &app.admin, "g1", 10, "dr_a").await;
    let head = app.head().await;
    let answer = app
        .get(
            &format!(
                "/api/v1/reports/attendance?group_id=g1&min_position={}",
                head + 1_000_000
            ),
            &app.admin,
        )
        .await;
    assert_refused(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "min_position",
        "beyond",
    );
    let negative = app
        .get(
            "/api/v1/reports/attendance?group_id=g1&min_position=-1",
            &app.admin,
        )
        .await;
    assert_refused(
        &negative,
        StatusCode::BAD_REQUEST,
        "min_position",
        "negative",
    );
}

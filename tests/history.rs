//! A group's and a client's history over HTTP (actors, times, corrections, sealed
//! personal data, paging), entities `as_of` a past time, and every audit read in the
//! access log: on real PostgreSQL.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use circle_services::auth::Role;
use circle_tests::{group_with_member, held_session, spawn_app, succeeded, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A pause long enough that a time taken in it falls strictly between two writes.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

async fn access_entries(app: &TestApp, query: &str) -> Vec<Value> {
    let page = app
        .get(&format!("/api/v1/audit/access{query}"), &app.admin)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    page.body["entries"].as_array().expect("entries").clone()
}

fn entries_for<'a>(entries: &'a [Value], route: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["route"] == route).collect()
}

#[tokio::test]
async fn a_group_s_history_names_each_actor_time_and_what_a_correction_supersedes() {
    let app = spawn_app().await;
    group_with_member(&app, "grp-h", "anxiety", "c1", "2026-01-06").await;
    held_session(
        &app,
        "grp-h",
        "s1",
        "2026-01-13T18:00:00+00:00",
        "c1",
        "no_show",
    )
    .await;
    let dr_a = app.token(Role::Clinician, Some("dr_a")).await;
    // The facilitator corrects the mark: a new event pointing at the first.
    succeeded(
        app.post(
            "/api/v1/groups/grp-h/sessions/s1/attendance",
            &dr_a,
            json!({"records": [{"client_id": "c1", "status": "late"}]}),
        )
        .await,
    );
    let auditor = app.token(Role::Auditor, None).await;

    let history = app.get("/api/v1/groups/grp-h/history", &auditor).await;
    assert_eq!(history.status, StatusCode::OK, "{:?}", history.body);
    let events = history.body["events"].as_array().expect("events");
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "GroupCreated",
            "MemberJoined",
            "SessionScheduled",
            "AttendanceRecorded",
            "AttendanceCorrected"
        ]
    );
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
    let positions: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let recorded = &events[3];
    let correction = &events[4];
    assert_eq!(recorded["actor"]["role"], "admin");
    assert_eq!(
        correction["actor"],
        json!({"id": "dr_a", "role": "clinician"})
    );
    assert_eq!(
        correction["corrects"],
        json!({"sequence": 4, "position": recorded["position"]})
    );
    assert!(recorded["corrects"].is_null());
    assert_eq!(correction["payload"]["previous_status"], "no_show");
    assert_eq!(correction["event_version"], 1);
    for field in ["recorded_at", "occurred_at", "correlation_id", "event_id"] {
        assert!(correction[field].is_string(), "{field}: {correction}");
    }
    assert_eq!(correction["hash"].as_str().map(str::len), Some(64));
    // The same hash the audit feed serves for that position.
    let feed = app
        .get(
            &format!("/api/v1/audit/events?after={}&limit=1", positions[4] - 1),
            &auditor,
        )
        .await;
    assert_eq!(feed.body["events"][0]["hash"], correction["hash"]);

    // Paged by position, like the audit feed.
    let first = app
        .get("/api/v1/groups/grp-h/history?limit=2", &auditor)
        .await;
    assert_eq!(first.body["events"].as_array().unwrap().len(), 2);
    let next = first.body["next_after"].as_i64().expect("next_after");
    assert_eq!(next, positions[1]);
    let rest = app
        .get(
            &format!("/api/v1/groups/grp-h/history?after={next}&limit=3"),
            &auditor,
        )
        .await;
    assert_eq!(rest.body["events"][0]["sequence"], 3);
    assert_eq!(rest.body["events"][2]["corrects"]["sequence"], 4);

    // The facilitator reads it; a reporter never; a missing group is 404 to those
    // who may see every group.
    let dr_b = app.token(Role::Clinician, Some("dr_b")).await;
    let reporter = app.token(Role::Reporter, None).await;
    assert_eq!(
        app.get("/api/v1/groups/grp-h/history", &dr_a).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/groups/grp-h/history", &dr_b).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get("/api/v1/groups/grp-h/history", &reporter)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get("/api/v1/groups/nope/history", &auditor)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let bad = app
        .get("/api/v1/groups/grp-h/history?limit=0", &auditor)
        .await;
    assert_eq!(
        (bad.status, bad.field()),
        (StatusCode::BAD_REQUEST, "limit")
    );

    // Every history read is in the access log, with the clients it names.
    let seen = access_entries(&app, "?client_id=c1").await;
    let reads = entries_for(&seen, "GET /api/v1/groups/{group_id}/history");
    assert_eq!(reads.len(), 4, "auditor ×3 and dr_a: {seen:#?}");
    assert!(reads
        .iter()
        .all(|e| e["entity"]["client_ids"] == json!(["c1"])));
}

#[tokio::test]
async fn a_client_s_history_keeps_personal_data_sealed_and_is_recorded() {
    let app = spawn_app().await;
    succeeded(
        app.post(
            "/api/v1/clients",
            &app.admin,
            json!({"client_id": "c-sealed", "display_name": "Ada Lovelace", "contact": "ada@example.org"}),
        )
        .await,
    );
    succeeded(
        app.post(
            "/api/v1/clients/c-sealed/consents",
            &app.admin,
            json!({"scope": "research", "granted": true}),
        )
        .await,
    );
    let auditor = app.token(Role::Auditor, None).await;
    for token in [&auditor, &app.admin] {
        let history = app.get("/api/v1/clients/c-sealed/history", token).await;
        assert_eq!(history.status, StatusCode::OK, "{:?}", history.body);
        assert_eq!(history.body["aggregate_type"], "client");
        let events = history.body["events"].as_array().unwrap();
        assert_eq!(events[0]["event_type"], "ClientRegistered");
        assert_eq!(events[1]["event_type"], "ConsentGranted");
        let text = history.body.to_string();
        assert!(!text.contains("Ada"), "plain text in history: {text}");
        assert!(!text.contains("ada@example.org"));
    }
    let seen = access_entries(&app, "?client_id=c-sealed").await;
    assert_eq!(
        entries_for(&seen, "GET /api/v1/clients/{client_id}/history").len(),
        2,
        "{seen:#?}"
    );
}

#[tokio::test]
async fn a_group_and_a_client_as_of_a_time_between_two_events_are_as_they_stood_then() {
    let app = spawn_app().await;
    group_with_member(&app, "grp-t", "depression", "c-t", "2026-02-02").await;
    pause().await;
    let between = now();
    pause().await;
    // Given: a second facilitator and a consent after `between`.
    succeeded(
        app.post(
            "/api/v1/groups/grp-t/facilitators",
            &app.admin,
            json!({"clinician_id": "dr_z"}),
        )
        .await,
    );
    succeeded(
        app.post(
            "/api/v1/groups/grp-t/closure",
            &app.admin,
            json!({"closed_on": "2026-06-01"}),
        )
        .await,
    );
    succeeded(
        app.post(
            "/api/v1/clients/c-t/consents",
            &app.admin,
            json!({"scope": "research", "granted": true}),
        )
        .await,
    );
    let auditor = app.token(Role::Auditor, None).await;
    let query = |path: &str, at: &str| format!("{path}?as_of={}", at.replace('+', "%2B"));

    // When: read as of `between`; then: the earlier state.
    let then = app
        .get(&query("/api/v1/groups/grp-t", &between), &auditor)
        .await;
    assert_eq!(then.status, StatusCode::OK, "{:?}", then.body);
    assert_eq!(then.body["facilitators"], json!(["dr_a"]));
    assert!(then.body["closed_on"].is_null());
    assert_eq!(then.body["version"], 2, "created and joined");
    assert_eq!(then.body["active_members"], 1);
    let live = app.get("/api/v1/groups/grp-t", &auditor).await;
    assert_eq!(live.body["facilitators"], json!(["dr_a", "dr_z"]));
    assert_eq!(live.body["closed_on"], "2026-06-01");

    let client_then = app
        .get(&query("/api/v1/clients/c-t", &between), &app.admin)
        .await;
    assert_eq!(client_then.status, StatusCode::OK, "{:?}", client_then.body);
    // Reporting is given from registration (opt-out); research came later.
    assert_eq!(client_then.body["consents"], json!(["reporting"]));
    let client_now = app.get("/api/v1/clients/c-t", &app.admin).await;
    assert_eq!(
        client_now.body["consents"],
        json!(["reporting", "research"])
    );

    // Before the group existed (but within the log): 404; outside the log: 422.
    let first_event = app.get("/api/v1/audit/events?limit=1", &auditor).await.body["events"][0]
        ["recorded_at"]
        .as_str()
        .unwrap()
        .to_string();
    let missing = app
        .get(&query("/api/v1/groups/grp-t", &first_event), &auditor)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{:?}", missing.body);
    for at in ["2000-01-01T00:00:00Z", "2199-01-01T00:00:00Z"] {
        for path in ["/api/v1/groups/grp-t", "/api/v1/clients/c-t"] {
            let refused = app.get(&query(path, at), &auditor).await;
            assert_eq!(
                (refused.status, refused.field()),
                (StatusCode::UNPROCESSABLE_ENTITY, "as_of"),
                "{path} {at}: {:?}",
                refused.body
            );
        }
    }
    let malformed = app
        .get("/api/v1/groups/grp-t?as_of=yesterday", &auditor)
        .await;
    assert_eq!(
        (malformed.status, malformed.field()),
        (StatusCode::BAD_REQUEST, "as_of")
    );
}

#[tokio::test]
async fn who_looked_at_the_audit_log_is_answerable() {
    let app = spawn_app().await;
    group_with_member(&app, "grp-a", "anxiety", "c-a", "2026-01-06").await;
    let auditor = app.token(Role::Auditor, None).await;
    let page = app.get("/api/v1/audit/events", &auditor).await;
    assert_eq!(page.status, StatusCode::OK);
    let verify = app.get("/api/v1/audit/verify", &auditor).await;
    assert_eq!(verify.status, StatusCode::OK);
    let export = app
        .send(
            reqwest::Method::GET,
            "/api/v1/audit/events?aggregate_type=client&aggregate_id=c-a",
            Some(&auditor),
            &[("Accept", "application/x-ndjson")],
            None,
        )
        .await;
    assert_eq!(export.status, StatusCode::OK);

    let all = access_entries(&app, "?limit=1000").await;
    let feed = entries_for(&all, "GET /api/v1/audit/events");
    assert_eq!(feed.len(), 2, "{all:#?}");
    // The page names the client registered and the member who joined; the export
    // the client its filter names.
    assert!(feed
        .iter()
        .all(|e| e["entity"]["client_ids"] == json!(["c-a"])));
    let checks = entries_for(&all, "GET /api/v1/audit/verify");
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0]["entity"]["client_ids"], json!([]));
    assert_eq!(checks[0]["agent"]["role"], "auditor");
    let by_client = access_entries(&app, "?client_id=c-a").await;
    assert_eq!(entries_for(&by_client, "GET /api/v1/audit/events").len(), 2);
}

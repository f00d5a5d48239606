//! Goals over HTTP on PostgreSQL: the GAS vectors through the API, the usual answers,
//! idempotency and roles, bad input refused with nothing stored, and erasure.

use circle_services::auth::Role;
use circle_services::store::ClientKey;
use circle_tests::{assert_t, gas_vector_groups, spawn_app, Answer, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn every_gas_vector_holds_through_the_http_report() {
    let app = spawn_app().await;
    let (groups, position) = gas_vector_groups(&app, "gas").await;
    for (group, expected, _) in &groups {
        let report = app
            .get(
                &format!("/api/v1/reports/goals?group_id={group}&min_position={position}"),
                &app.admin,
            )
            .await;
        assert_eq!(report.status, StatusCode::OK, "{:?}", report.body);
        let member = &report.body["clients"][0];
        assert_t(&member["latest_t"], *expected, group);
        assert_t(&report.body["summary"]["mean_t"], *expected, group);
        assert_eq!(member["check_in_rate"], 1.0, "{group}");
        assert_eq!(report.body["rho"], 0.3);
    }
    // Folded from the log as of now, the same figures.
    // A second on, so no event of this test falls in the second `as_of` cuts off.
    let now = (chrono::Utc::now() + chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (group, expected, _) = &groups[5];
    let folded = app
        .get(
            &format!("/api/v1/reports/goals?group_id={group}&as_of={now}"),
            &app.admin,
        )
        .await;
    assert_eq!(folded.status, StatusCode::OK, "{:?}", folded.body);
    assert_t(&folded.body["summary"]["mean_t"], *expected, "as_of");
}

/// g1 facilitated by dr_a, with members c1 and c2, session s1 (attended by both),
/// and goal1 of c1 set on 6 January.
async fn practice(app: &TestApp) -> i64 {
    let admin = &app.admin;
    let mut position = 0;
    let writes = [
        (
            "/api/v1/groups",
            json!({"group_id": "g1", "name": "Tuesday", "focus": "anxiety", "format": "open", "facilitators": ["dr_a"]}),
        ),
        (
            "/api/v1/groups",
            json!({"group_id": "g2", "name": "Friday", "focus": "grief", "format": "open", "facilitators": ["dr_b"]}),
        ),
        (
            "/api/v1/clients",
            json!({"client_id": "c1", "display_name": "Ada"}),
        ),
        ("/api/v1/clients", json!({"client_id": "c2"})),
        (
            "/api/v1/groups/g1/members",
            json!({"client_id": "c1", "joined_on": "2026-01-05"}),
        ),
        (
            "/api/v1/groups/g1/members",
            json!({"client_id": "c2", "joined_on": "2026-01-05"}),
        ),
        (
            "/api/v1/groups/g1/sessions",
            json!({"session_id": "s1", "starts_at": "2026-01-13T18:00:00+00:00", "duration_minutes": 90}),
        ),
        (
            "/api/v1/groups/g1/sessions/s1/attendance",
            json!({"records": [{"client_id": "c1", "status": "present"}, {"client_id": "c2", "status": "present"}]}),
        ),
        (
            "/api/v1/clients/c1/goals",
            json!({"goal_id": "goal1", "title": "Speak once a session", "group_id": "g1", "set_on": "2026-01-06"}),
        ),
        (
            "/api/v1/clients/c2/goals",
            json!({"goal_id": "goal2", "title": "Walk daily", "weight": 2, "group_id": "g1", "set_on": "2026-01-06"}),
        ),
    ];
    for (path, body) in writes {
        let answer = app.post(path, admin, body).await;
        assert!(answer.status.is_success(), "{path}: {:?}", answer.body);
        position = answer.position();
    }
    position
}

#[tokio::test]
async fn a_goal_is_set_checked_in_on_and_closed_with_the_usual_answers() {
    let app = spawn_app().await;
    practice(&app).await;
    let dr_a = app.token(Role::Clinician, Some("dr_a")).await;
    let set = app
        .post(
            "/api/v1/clients/c1/goals",
            &dr_a,
            json!({"title": "Call my sister", "weight": 3, "start_level": -2, "group_id": "g1", "set_on": "2026-01-13"}),
        )
        .await;
    assert_eq!(set.status, StatusCode::CREATED, "{:?}", set.body);
    let goal = set.body["id"].as_str().unwrap().to_string();
    assert!(goal.starts_with("goal_"), "{goal}");

    let path = format!("/api/v1/clients/c1/goals/{goal}/check-ins");
    let body = json!({"level": 1, "session_id": "s1"});
    let key = [("Idempotency-Key", "check-in-1")];
    let first = app
        .send(reqwest::Method::POST, &path, Some(&dr_a), &key, Some(&body))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let head = app.head().await;
    let again = app
        .send(reqwest::Method::POST, &path, Some(&dr_a), &key, Some(&body))
        .await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(app.head().await, head, "a replay records nothing");
    let other_body = json!({"level": 2, "session_id": "s1"});
    let reused = app
        .send(
            reqwest::Method::POST,
            &path,
            Some(&dr_a),
            &key,
            Some(&other_body),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT);

    let closed = app
        .post(
            &format!("/api/v1/clients/c1/goals/{goal}/closure"),
            &dr_a,
            json!({"reason": "revised", "replaced_by": "goal1", "closed_on": "2026-01-20"}),
        )
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{:?}", closed.body);
    let report = app
        .get(
            &format!(
                "/api/v1/reports/goals?group_id=g1&min_position={}",
                closed.position()
            ),
            &dr_a,
        )
        .await;
    assert_eq!(report.status, StatusCode::OK);
    let c1 = &report.body["clients"][0];
    assert_eq!(c1["client_id"], "c1");
    let revised = c1["goals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["goal_id"] == goal.as_str())
        .unwrap();
    assert_eq!(revised["closure"], "revised");
    assert_eq!(revised["latest_level"], 1);
    assert!(
        !report.body.to_string().contains("Call my sister"),
        "reports carry no titles"
    );
}

#[tokio::test]
async fn only_a_facilitator_of_the_goals_group_or_an_admin_writes_goals() {
    let app = spawn_app().await;
    practice(&app).await;
    let mut tokens = Vec::new();
    for (role, clinician) in [
        (Role::Clinician, Some("dr_b")),
        (Role::Auditor, None),
        (Role::Reporter, None),
    ] {
        tokens.push((role, app.token(role, clinician).await));
    }
    // Issuing tokens is an event too: the head is taken after.
    let head = app.head().await;
    let body = json!({"level": 0, "session_id": "s1"});
    for (role, token) in tokens {
        let answer = app
            .post(
                "/api/v1/clients/c1/goals/goal1/check-ins",
                &token,
                body.clone(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{role:?}");
        let set = app
            .post(
                "/api/v1/clients/c1/goals",
                &token,
                json!({"title": "x", "group_id": "g1", "set_on": "2026-01-13"}),
            )
            .await;
        assert_eq!(set.status, StatusCode::FORBIDDEN, "{role:?}");
    }
    assert_eq!(app.head().await, head);
    let dr_a = app.token(Role::Clinician, Some("dr_a")).await;
    let answer = app
        .post("/api/v1/clients/c1/goals/goal1/check-ins", &dr_a, body)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    // The report is theirs in full; a reporter gets group figures only.
    let reporter = app.token(Role::Reporter, None).await;
    let aggregate = app
        .get(
            &format!(
                "/api/v1/reports/goals?group_id=g1&min_position={}",
                answer.position()
            ),
            &reporter,
        )
        .await;
    assert_eq!(aggregate.status, StatusCode::OK);
    assert!(
        aggregate.body.get("clients").is_none(),
        "{:?}",
        aggregate.body
    );
    assert_eq!(
        aggregate.body["summary"]["members_with_goals"],
        Value::Null,
        "2 < k"
    );
    // Two members' mean T is theirs alone (issue 7): withheld below k too.
    assert_eq!(aggregate.body["summary"]["mean_t"], Value::Null);
}

/// Asserts a refusal: its status, the field it names, and that nothing was stored.
async fn refused(app: &TestApp, answer: Answer, status: StatusCode, field: &str, head: i64) {
    assert_eq!(answer.status, status, "{field}: {:?}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.field(), field, "{:?}", answer.body);
    assert_eq!(app.head().await, head, "{field}: nothing is stored");
}

#[tokio::test]
async fn bad_goal_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let app = spawn_app().await;
    let head = practice(&app).await;
    let admin = &app.admin;
    let goal = |extra: Value| {
        let mut body =
            json!({"title": "Sleep by eleven", "group_id": "g1", "set_on": "2026-01-13"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    use StatusCode as S;
    let goals = "/api/v1/clients/c1/goals";
    let check_in = "/api/v1/clients/c1/goals/goal1/check-ins";
    let at_s1 = |level: Value| json!({"level": level, "session_id": "s1"});
    let mut outside = goal(json!({}));
    outside.as_object_mut().unwrap().remove("group_id");
    let mut cases = vec![
        (
            goals,
            goal(json!({"start_level": 3})),
            S::BAD_REQUEST,
            "start_level",
        ),
        // goal2 is c2's.
        (
            "/api/v1/clients/c1/goals/goal2/check-ins",
            at_s1(json!(1)),
            S::UNPROCESSABLE_ENTITY,
            "goal_id",
        ),
        (
            "/api/v1/clients/c1/goals/goal2/closure",
            json!({"reason": "dropped"}),
            S::UNPROCESSABLE_ENTITY,
            "goal_id",
        ),
        // Before the goal was set (6 January).
        (
            check_in,
            json!({"level": 1, "checked_in_at": "2026-01-05T12:00:00Z"}),
            S::UNPROCESSABLE_ENTITY,
            "checked_in_at",
        ),
        // The wrong group for the goal, a revised goal without a replacement.
        (
            check_in,
            json!({"level": 1, "session_id": "s1", "group_id": "g2"}),
            S::UNPROCESSABLE_ENTITY,
            "group_id",
        ),
        (
            "/api/v1/clients/c1/goals/goal1/closure",
            json!({"reason": "revised"}),
            S::BAD_REQUEST,
            "replaced_by",
        ),
        // A goal id in use, and a goal outside any group.
        (
            "/api/v1/clients/c2/goals",
            goal(json!({"goal_id": "goal1"})),
            S::CONFLICT,
            "goal_id",
        ),
        (goals, outside, S::BAD_REQUEST, "group_id"),
        // The group form names the entry.
        (
            "/api/v1/groups/g1/sessions/s1/goal-check-ins",
            json!({"check_ins": [{"client_id": "c1", "goal_id": "goal1", "level": 1},
                                 {"client_id": "c1", "goal_id": "goal2", "level": 1}]}),
            S::UNPROCESSABLE_ENTITY,
            "check_ins[1].goal_id",
        ),
    ];
    for weight in [0, 4] {
        cases.push((
            goals,
            goal(json!({"weight": weight})),
            S::BAD_REQUEST,
            "weight",
        ));
    }
    for title in [json!(""), json!("   "), json!("x".repeat(201))] {
        cases.push((
            goals,
            goal(json!({"title": title})),
            S::BAD_REQUEST,
            "title",
        ));
    }
    for level in [json!(3), json!(1.5), json!(-3)] {
        cases.push((check_in, at_s1(level), S::BAD_REQUEST, "level"));
    }
    for (path, body, status, field) in cases {
        let answer = app.post(path, admin, body).await;
        refused(&app, answer, status, field, head).await;
    }
    // A goal that was never set.
    let answer = app
        .post(
            "/api/v1/clients/c1/goals/goal9/check-ins",
            admin,
            at_s1(json!(1)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn a_goal_title_is_sealed_in_the_log_and_unreadable_after_erasure() {
    let app = spawn_app().await;
    practice(&app).await;
    let events = app.state.store.read_all(0, 1_000).await.unwrap();
    let set = events
        .iter()
        .find(|e| e.event_type == "GoalSet" && e.payload["goal_id"] == "goal1")
        .expect("GoalSet in the log");
    assert!(
        !set.payload.to_string().contains("Speak once"),
        "{}",
        set.payload
    );
    let sealed: circle_events::client::SealedPersonalData =
        serde_json::from_value(set.payload["title"].clone()).unwrap();
    let ClientKey::Wrapped(wrapped) = app.state.store.client_key("c1").await.unwrap() else {
        panic!("c1 has a key");
    };
    let title = app
        .state
        .vault
        .open_goal_title(&wrapped, "c1", "goal1", &sealed)
        .unwrap();
    assert_eq!(title, "Speak once a session");

    let erased = app
        .post(
            "/api/v1/clients/c1/erasure",
            &app.admin,
            json!({"reason": "client_request"}),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK);
    assert_eq!(
        app.state.store.client_key("c1").await.unwrap(),
        ClientKey::Destroyed,
        "the only key to the title is gone"
    );
    let head = app.head().await;
    let again = app
        .post(
            "/api/v1/clients/c1/goals",
            &app.admin,
            json!({"title": "New", "group_id": "g1", "set_on": "2026-01-13"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn the_demo_practice_has_goals_one_member_exceeding_and_one_stalled() {
    let app = spawn_app().await;
    circle_services::demo::seed_if_empty(&app.state)
        .await
        .expect("demo seeds");
    let head = app.head().await;
    for group in ["grp-anxiety-tue", "grp-grief-wed"] {
        let report = app
            .get(
                &format!("/api/v1/reports/goals?group_id={group}&min_position={head}"),
                &app.admin,
            )
            .await;
        assert_eq!(report.status, StatusCode::OK, "{:?}", report.body);
        let clients = report.body["clients"].as_array().unwrap();
        assert_eq!(clients.len(), 10, "every member set goals");
        let first = &clients[0];
        assert_eq!(first["latest_t"], 70.0, "{group}: {first}");
        assert!(first["change"].as_f64().unwrap() > 0.0);
        let stalled: Vec<&Value> = clients
            .iter()
            .filter(|c| !c["stalled_goals"].as_array().unwrap().is_empty())
            .collect();
        assert_eq!(stalled.len(), 1, "{group}: {stalled:?}");
        assert_eq!(stalled[0]["client_id"], clients[7]["client_id"]);
        let rate = report.body["summary"]["check_in_rate"].as_f64().unwrap();
        assert!(rate > 0.5 && rate < 1.0, "{group}: {rate}");
        let alerts = app
            .get(&format!("/api/v1/alerts?group_id={group}"), &app.admin)
            .await;
        let stalled_alerts = alerts
            .body
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "stalled_goal")
            .count();
        assert_eq!(stalled_alerts, 1, "{group}");
    }
}

//! Reports over HTTP on PostgreSQL: live, as of a past time, after a restart, and as
//! rebuilt from position 0.

use circle_projections::practice::{AlertRules, Practice};
use circle_services::as_of;
use circle_services::auth::Role;
use circle_services::projector;
use circle_services::store::Snapshot;
use circle_tests::{
    assert_matches_6mp, default_projection, fresh_schema_url, group_with_member, held_session,
    numbers_about_people, one_member_group, set_reporting_consent, six_mp_group, spawn_app,
    spawn_app_on, spawn_app_with, TestApp,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn the_6mp_vector_fed_through_http_gives_the_published_retention() {
    let app = spawn_app().await;
    let position = six_mp_group(&app, "g6mp").await;
    let report = app
        .get(
            &format!("/api/v1/reports/retention?group_id=g6mp&min_position={position}"),
            &app.admin,
        )
        .await;
    assert_eq!(report.status, StatusCode::OK, "{:?}", report.body);
    assert!(report.body["position"].as_i64().unwrap() >= position);
    assert_eq!(report.body["scope"], "group:g6mp");
    assert_eq!(report.body["joined"], 21);
    assert_eq!(report.body["dropped_out"], 9);
    assert_matches_6mp(&report.body, true);

    // The same through the practice-wide and per-focus scopes.
    let grief = app
        .get("/api/v1/reports/retention?focus=grief", &app.admin)
        .await;
    assert_matches_6mp(&grief.body, true);
}

#[tokio::test]
async fn reporters_get_aggregates_only_with_small_counts_suppressed() {
    let app = spawn_app().await;
    let position = six_mp_group(&app, "g6mp").await;
    let reporter = app.token(Role::Reporter, None).await;
    let report = app
        .get(
            &format!("/api/v1/reports/retention?group_id=g6mp&min_position={position}"),
            &reporter,
        )
        .await;
    assert_eq!(report.status, StatusCode::OK);
    assert_eq!(report.body["joined"], 21);
    assert_eq!(
        report.body["kaplan_meier"][0]["events"],
        Value::Null,
        "3 events < k=5"
    );
    assert_eq!(report.body["kaplan_meier"][0]["at_risk"], 21);
    let attendance = app
        .get("/api/v1/reports/attendance?group_id=g6mp", &reporter)
        .await;
    assert_eq!(attendance.status, StatusCode::OK);
    assert!(attendance.body.get("by_client").is_none());
    let alerts = app.get("/api/v1/alerts?group_id=g6mp", &reporter).await;
    assert_eq!(alerts.status, StatusCode::FORBIDDEN);
}

/// The security probe (issue 7, item 2): counts were null but rates, means, effect
/// sizes, Kaplan–Meier steps, medians and `survival_at` gave one member away.
#[tokio::test]
async fn a_reporter_gets_no_value_computed_from_fewer_than_k_people() {
    let app = spawn_app().await;
    let position = one_member_group(&app, "probe").await;
    let reporter = app.token(Role::Reporter, None).await;
    let routes = [
        "attendance?group_id=probe",
        "outcomes?group_id=probe&instrument=PHQ-9",
        "retention?group_id=probe",
        "goals?group_id=probe",
    ];
    for route in routes {
        let path = format!("/api/v1/reports/{route}&min_position={position}");
        // The full form has the figures the probe read (so this test can fail).
        let full = app.get(&path, &app.admin).await;
        assert_eq!(full.status, StatusCode::OK, "{:?}", full.body);
        assert!(!numbers_about_people(&full.body).is_empty(), "{route}");

        let aggregate = app.get(&path, &reporter).await;
        assert_eq!(aggregate.status, StatusCode::OK, "{:?}", aggregate.body);
        let leaked = numbers_about_people(&aggregate.body);
        assert!(leaked.is_empty(), "{route}: {leaked:?}");
    }
    let full = app
        .get("/api/v1/reports/attendance?group_id=probe", &app.admin)
        .await;
    let rates: Vec<&Value> = full.body["by_session"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["attendance_rate"])
        .collect();
    assert_eq!(rates, [&json!(1.0), &json!(0.0), &json!(0.0)]);
    let outcomes = app
        .get(
            "/api/v1/reports/outcomes?group_id=probe&instrument=PHQ-9",
            &app.admin,
        )
        .await;
    assert_eq!(outcomes.body["summary"]["mean_change"], 24.0);
    let retention = app
        .get("/api/v1/reports/retention?group_id=probe", &reporter)
        .await;
    assert_eq!(retention.body["kaplan_meier"], json!([]));
    assert_eq!(retention.body["kaplan_meier_min_at_risk"], 5);
    assert_eq!(retention.body["survival_at"]["28"], Value::Null);
}

async fn week_of_attendance(app: &TestApp) -> i64 {
    let admin = &app.admin;
    app.post(
        "/api/v1/groups",
        admin,
        json!({"group_id": "g1", "name": "Anxiety", "focus": "anxiety", "format": "open", "facilitators": ["dr_a"]}),
    )
    .await;
    for client in ["c1", "c2"] {
        app.post("/api/v1/clients", admin, json!({"client_id": client}))
            .await;
        app.post(
            "/api/v1/groups/g1/members",
            admin,
            json!({"client_id": client, "joined_on": "2026-01-01"}),
        )
        .await;
    }
    let mut position = 0;
    for (week, (c1, c2)) in [
        ("present", "no_show"),
        ("late", "excused"),
        ("present", "present"),
    ]
    .iter()
    .enumerate()
    {
        let session = format!("s{week}");
        app.post(
            "/api/v1/groups/g1/sessions",
            admin,
            json!({"session_id": session, "starts_at": format!("2026-01-{:02}T18:00:00+01:00", 6 + 7 * week), "duration_minutes": 90}),
        )
        .await;
        let answer = app
            .post(
                &format!("/api/v1/groups/g1/sessions/{session}/attendance"),
                admin,
                json!({"records": [{"client_id": "c1", "status": c1}, {"client_id": "c2", "status": c2}]}),
            )
            .await;
        position = answer.position();
    }
    let phq9 = app
        .post(
            "/api/v1/groups/g1/sessions/s2/feedback",
            admin,
            json!({"client_id": "c1", "instrument": "PHQ-9", "items": [1, 1, 1, 1, 1, 1, 1, 1, 2]}),
        )
        .await;
    assert_eq!(phq9.status, StatusCode::OK);
    position.max(phq9.position())
}

#[tokio::test]
async fn attendance_outcomes_and_alerts_over_http() {
    let app = spawn_app().await;
    let position = week_of_attendance(&app).await;
    let attendance = app
        .get(
            &format!("/api/v1/reports/attendance?group_id=g1&min_position={position}"),
            &app.admin,
        )
        .await;
    assert_eq!(attendance.status, StatusCode::OK, "{:?}", attendance.body);
    assert_eq!(attendance.body["sessions_held"], 3);
    assert_eq!(attendance.body["attendance_rate"], 0.666667);
    let c2 = &attendance.body["by_client"][1];
    assert_eq!(
        (c2["client_id"].as_str(), c2["attended"].as_i64()),
        (Some("c2"), Some(1))
    );

    let alerts = app.get("/api/v1/alerts?group_id=g1", &app.admin).await;
    let kinds: Vec<_> = alerts
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].clone(), a["client_id"].clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (json!("attendance"), json!("c2")),
            (json!("risk"), json!("c1"))
        ]
    );

    let outcomes = app
        .get(
            "/api/v1/reports/outcomes?group_id=g1&instrument=PHQ-9",
            &app.admin,
        )
        .await;
    assert_eq!(outcomes.status, StatusCode::OK);
    assert_eq!(
        outcomes.body["clients"][0]["classification"],
        "insufficient_data"
    );
    assert_eq!(outcomes.body["reference_version"], "2024.1");

    let bad = app
        .get(
            "/api/v1/reports/outcomes?group_id=g1&instrument=BDI",
            &app.admin,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.field(), "instrument");
    let bad = app.get("/api/v1/reports/attendance", &app.admin).await;
    assert_eq!(bad.field(), "group_id");
    let bad = app
        .get("/api/v1/reports/retention?as_of=yesterday", &app.admin)
        .await;
    assert_eq!(bad.field(), "as_of");
    let missing = app
        .get("/api/v1/reports/attendance?group_id=nope", &app.admin)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let other = app.token(Role::Clinician, Some("dr_b")).await;
    assert_eq!(
        app.get("/api/v1/reports/attendance?group_id=g1", &other)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let own = app.token(Role::Clinician, Some("dr_a")).await;
    assert_eq!(
        app.get("/api/v1/reports/attendance?group_id=g1", &own)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_report_as_of_a_past_time_shows_the_log_as_it_stood_then() {
    let app = spawn_app().await;
    week_of_attendance(&app).await;
    let before_more = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let later = app
        .post(
            "/api/v1/groups/g1/members/c2/departure",
            &app.admin,
            json!({"left_on": "2026-01-25", "reason": "dropped_out"}),
        )
        .await;
    let now_report = app
        .get(
            &format!(
                "/api/v1/reports/retention?group_id=g1&min_position={}",
                later.position()
            ),
            &app.admin,
        )
        .await;
    assert_eq!(now_report.body["dropped_out"], 1);
    let as_of = before_more.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let then = app
        .get(
            &format!(
                "/api/v1/reports/retention?group_id=g1&as_of={}",
                urlencode(&as_of)
            ),
            &app.admin,
        )
        .await;
    assert_eq!(then.status, StatusCode::OK, "{:?}", then.body);
    assert_eq!(then.body["dropped_out"], 0);
    assert_eq!(then.body["active"], 2);
    assert!(then.body["position"].as_i64().unwrap() < later.position());
}

/// Snapshots kept every few events change no `as_of` answer: at each moment between
/// writes, the practice from the newest snapshot equals a fold from position 0. The
/// projector keeps them as it folds, with no fold of its own.
#[tokio::test]
async fn as_of_reports_from_snapshots_equal_a_fold_from_the_start() {
    let app = spawn_app_with(&fresh_schema_url().await, |settings| {
        settings.as_of_snapshot_every_events = 7;
    })
    .await;
    let (store, rules) = (&app.state.store, app.state.reporting.projection.alert_rules);
    let mut moments = vec![chrono::Utc::now()];
    week_of_attendance(&app).await;
    moments.push(chrono::Utc::now());
    six_mp_group(&app, "g6mp").await;
    moments.push(chrono::Utc::now());
    app.post(
        "/api/v1/groups/g1/members/c2/departure",
        &app.admin,
        json!({"left_on": "2026-01-25", "reason": "dropped_out"}),
    )
    .await;
    moments.push(chrono::Utc::now());
    let head = app.head().await;
    assert!(head >= 70, "{head} events");
    // The leader keeps one at every multiple of 7 it folds past.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let latest = store.latest_snapshot(None, None).await.unwrap();
        if latest.is_some_and(|s| s.position == head / 7 * 7) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot near {head}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for moment in &moments[1..] {
        let kept = store.latest_snapshot(Some(*moment), None).await.unwrap();
        assert!(
            kept.is_some_and(|s| s.position % 7 == 0 && s.position > 0),
            "a snapshot recorded by {moment}"
        );
    }
    for as_of in moments {
        let from_snapshot = folded_as_of(&app, as_of).await;
        let mut from_start = Practice::new(rules);
        projector::fold(store, &mut from_start, Some(as_of), |_, _| {})
            .await
            .unwrap();
        assert_eq!(from_snapshot, from_start, "as of {as_of}");
    }
    let as_of = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let report = app
        .get(
            &format!(
                "/api/v1/reports/retention?group_id=g6mp&as_of={}",
                urlencode(&as_of)
            ),
            &app.admin,
        )
        .await;
    assert_eq!(report.status, StatusCode::OK, "{:?}", report.body);
    assert_matches_6mp(&report.body, true);
}

/// The fold really starts from the snapshot: a doctored, empty one at the head
/// hides everything before it, unless it was made under other settings (here a row
/// from before snapshots recorded theirs, under other alert rules).
#[tokio::test]
async fn an_as_of_fold_starts_from_the_newest_snapshot_recorded_by_then() {
    let app = spawn_app().await;
    let (store, rules) = (&app.state.store, app.state.reporting.projection.alert_rules);
    week_of_attendance(&app).await;
    let head = app.head().await;
    let recorded_by = chrono::Utc::now();
    let empty_at_head = |rules| Practice {
        position: head,
        ..Practice::new(rules)
    };
    let other_rules = AlertRules {
        consecutive_absences: rules.consecutive_absences + 1,
    };
    store
        .save_snapshot(&Snapshot {
            position: head,
            max_recorded_at: recorded_by,
            state: serde_json::to_string(&empty_at_head(other_rules)).unwrap(),
            range: None,
            settings: None,
        })
        .await
        .unwrap();
    let folded = folded_as_of(&app, recorded_by).await;
    assert!(
        !folded.groups.is_empty(),
        "other settings: folded from the start"
    );

    store
        .save_snapshot(&Snapshot {
            position: head + 1,
            max_recorded_at: recorded_by,
            state: serde_json::to_string(&Practice {
                position: head + 1,
                ..Practice::new(rules)
            })
            .unwrap(),
            range: None,
            settings: Some(app.state.reporting.projection.digest()),
        })
        .await
        .unwrap();
    let folded = folded_as_of(&app, recorded_by).await;
    assert!(folded.groups.is_empty(), "started from the snapshot");
    let earlier = recorded_by - chrono::Duration::microseconds(1);
    let before_it = folded_as_of(&app, earlier).await;
    assert!(
        !before_it.groups.is_empty(),
        "no snapshot covers an earlier time"
    );
}

/// A snapshot is a fold under one set of settings and one form of the state: one
/// built under others (an older checkpoint format, whose newer fields read as empty)
/// is no start for an `as_of` fold, even under the same alert rules, and a rebuild
/// under the current settings keeps its own at the same position beside it.
#[tokio::test]
async fn an_as_of_fold_starts_only_from_a_snapshot_built_under_its_settings() {
    let app = spawn_app().await;
    let (store, rules) = (&app.state.store, app.state.reporting.projection.alert_rules);
    week_of_attendance(&app).await;
    let head = app.head().await;
    let recorded_by = chrono::Utc::now();
    let empty_at_head = |settings: &str| Snapshot {
        position: head,
        max_recorded_at: recorded_by,
        state: serde_json::to_string(&Practice {
            position: head,
            ..Practice::new(rules)
        })
        .unwrap(),
        range: None,
        settings: Some(settings.into()),
    };
    assert_eq!(
        app.state.reporting.projection.digest(),
        default_projection().digest(),
        "the projector keeps its snapshots under the digest the reports are read under"
    );
    store
        .save_snapshot(&empty_at_head("an older format"))
        .await
        .unwrap();
    let folded = folded_as_of(&app, recorded_by).await;
    assert!(
        !folded.groups.is_empty(),
        "built under other settings: folded from the start"
    );
    // The current settings' snapshot at the same position is kept beside it.
    store
        .save_snapshot(&empty_at_head(&app.state.reporting.projection.digest()))
        .await
        .unwrap();
    let folded = folded_as_of(&app, recorded_by).await;
    assert!(folded.groups.is_empty(), "started from its own snapshot");
}

/// The practice as of `at`, folded as an `as_of` report folds it.
async fn folded_as_of(app: &TestApp, at: chrono::DateTime<chrono::Utc>) -> Practice {
    as_of::practice_as_of(&app.state.store, &app.state.reporting.projection, at)
        .await
        .unwrap()
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn a_rebuild_from_zero_equals_the_live_projection_and_a_restart_resumes_it() {
    let app = spawn_app().await;
    let position = six_mp_and_a_week_folded(&app).await;
    let live: Practice = app.state.reports.read(|p| p.clone());
    let rebuilt = projector::rebuild(&app.state.store, &default_projection(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(rebuilt, live);

    // A second process on the same database starts from the saved checkpoint.
    let restarted = spawn_app_on(&app.database_url).await;
    assert_eq!(
        restarted.state.reports.position(),
        position,
        "resumed from the checkpoint"
    );
    assert_same_retention(&app, &restarted).await;
}

/// The 6MP group and a week of attendance, written and folded into the live reports:
/// the position of the last write.
async fn six_mp_and_a_week_folded(app: &TestApp) -> i64 {
    let position = six_mp_group(app, "g6mp")
        .await
        .max(week_of_attendance(app).await);
    assert!(
        app.state
            .reports
            .caught_up(position, std::time::Duration::from_secs(5))
            .await
    );
    position
}

/// The restarted instance's retention report says what the live one's does. The
/// second instance registers its own admin token, which is an event: the log (and so
/// the report's position) may have moved on by one, its figures not.
async fn assert_same_retention(live: &TestApp, restarted: &TestApp) {
    let mut reports = Vec::new();
    for app in [live, restarted] {
        let mut report = app.get("/api/v1/reports/retention", &app.admin).await.body;
        let fields = report.as_object_mut().unwrap();
        fields.remove("as_of");
        fields.remove("position");
        reports.push(report);
    }
    assert_eq!(reports[0], reports[1]);
}

/// While snapshots fall due the leader saves no checkpoint beside them (each is the
/// whole state): a restart resumes from the newest snapshot built under its own
/// settings when it is beyond the checkpoint, and reports the same.
#[tokio::test]
async fn a_restart_resumes_from_the_newest_snapshot_kept_under_its_settings() {
    let url = fresh_schema_url().await;
    let every_7 = |settings: &mut circle_services::config::Settings| {
        settings.as_of_snapshot_every_events = 7;
    };
    let app = spawn_app_with(&url, every_7).await;
    six_mp_and_a_week_folded(&app).await;
    let store = &app.state.store;
    let digest = default_projection().digest();
    let head = app.head().await;
    assert!(head >= 70, "{head} events");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store
        .resumable_snapshot(&digest, 0)
        .await
        .unwrap()
        .is_none_or(|s| s.position != head / 7 * 7)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot near {head}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let restarted = spawn_app_with(&url, every_7).await;
    assert_same_retention(&app, &restarted).await;

    // The restart really starts there: a doctored, empty snapshot beyond the log
    // hides everything, unless it was built under other settings.
    let head = app.head().await;
    let rules = app.state.reporting.projection.alert_rules;
    let empty_at = |position, rules| Snapshot {
        position,
        max_recorded_at: chrono::Utc::now(),
        state: serde_json::to_string(&Practice {
            position,
            ..Practice::new(rules)
        })
        .unwrap(),
        range: None,
        settings: Some(digest.clone()),
    };
    let other_rules = AlertRules {
        consecutive_absences: rules.consecutive_absences + 1,
    };
    store
        .save_snapshot(&empty_at(head + 100, rules))
        .await
        .unwrap();
    store
        .save_snapshot(&Snapshot {
            settings: Some("other settings".into()),
            ..empty_at(head + 200, other_rules)
        })
        .await
        .unwrap();
    let resumed = spawn_app_on(&url).await;
    let (position, groups, resumed_rules) = resumed
        .state
        .reports
        .read(|p| (p.position, p.groups.len(), p.rules));
    assert_eq!(
        (position, groups, resumed_rules),
        (head + 100, 0, rules),
        "resumed from the snapshot under its own settings"
    );
}

/// Issue 7, item 4: reporting is opt-out. A member who withdrew it is left out of
/// the reporter form, which says how many were left out; the full form (treatment)
/// keeps them.
#[tokio::test]
async fn a_client_who_withdrew_reporting_consent_is_left_out_of_the_reporter_form() {
    let app = spawn_app().await;
    six_mp_group(&app, "g6mp").await;
    // Reporting is given from registration: the client's record says so.
    let client = app.get("/api/v1/clients/g6mp-m00", &app.admin).await;
    assert_eq!(client.body["consents"], json!(["reporting"]));
    let position = set_reporting_consent(&app, "g6mp-m00", false).await;
    let client = app.get("/api/v1/clients/g6mp-m00", &app.admin).await;
    assert_eq!(client.body["consents"], json!([]));
    let reporter = app.token(Role::Reporter, None).await;
    let path = format!("/api/v1/reports/retention?group_id=g6mp&min_position={position}");

    let aggregate = app.get(&path, &reporter).await;
    assert_eq!(aggregate.status, StatusCode::OK, "{:?}", aggregate.body);
    assert_eq!(aggregate.body["joined"], 20);
    assert_eq!(aggregate.body["left_out_without_consent"], 1);
    let full = app.get(&path, &app.admin).await;
    assert_eq!(full.body["joined"], 21);
    assert_eq!(full.body["left_out_without_consent"], 0);
    for route in [
        "attendance?group_id=g6mp",
        "outcomes?group_id=g6mp&instrument=PHQ-9",
        "goals?group_id=g6mp",
        "retention",
        "retention?focus=grief",
    ] {
        let answer = app
            .get(&format!("/api/v1/reports/{route}"), &reporter)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{route}: {:?}", answer.body);
        assert_eq!(answer.body["left_out_without_consent"], 1, "{route}");
    }
    // An as_of report made after the withdrawal leaves the client out too.
    let now = urlencode(&chrono::Utc::now().to_rfc3339());
    let as_of = app
        .get(
            &format!("/api/v1/reports/retention?group_id=g6mp&as_of={now}"),
            &reporter,
        )
        .await;
    assert_eq!(as_of.body["joined"], 20, "{:?}", as_of.body);
    // Granting again brings the client back.
    let position = set_reporting_consent(&app, "g6mp-m00", true).await;
    let path = format!("/api/v1/reports/retention?group_id=g6mp&min_position={position}");
    let back = app.get(&path, &reporter).await;
    assert_eq!(back.body["joined"], 21);
    assert_eq!(back.body["left_out_without_consent"], 0);
}

/// Issue 7, item 4: 42 CFR Part 2. Every report about an addiction recovery group
/// says so in `Circle-Sensitivity` and in its body, in either form.
#[tokio::test]
async fn reports_about_an_addiction_recovery_group_carry_the_part2_label() {
    let app = spawn_app().await;
    group_with_member(&app, "rec", "addiction_recovery", "rec-c", "2026-01-01").await;
    let position = held_session(
        &app,
        "rec",
        "rec-s1",
        "2026-01-05T18:00:00+00:00",
        "rec-c",
        "present",
    )
    .await;
    group_with_member(&app, "anx", "anxiety", "anx-c", "2026-01-01").await;
    let reporter = app.token(Role::Reporter, None).await;
    for token in [&app.admin, &reporter] {
        for route in [
            "attendance?group_id=rec",
            "outcomes?group_id=rec&instrument=PHQ-9",
            "goals?group_id=rec",
            "retention?group_id=rec",
            "retention?focus=addiction_recovery",
            "retention",
        ] {
            let path = format!("/api/v1/reports/{route}&min_position={position}").replacen(
                "retention&",
                "retention?",
                1,
            );
            let answer = app.get(&path, token).await;
            assert_eq!(answer.status, StatusCode::OK, "{route}: {:?}", answer.body);
            assert_eq!(answer.headers["circle-sensitivity"], "part2", "{route}");
            assert_eq!(answer.body["sensitivity"], "part2", "{route}");
        }
    }
    let alerts = app.get("/api/v1/alerts?group_id=rec", &app.admin).await;
    assert_eq!(alerts.headers["circle-sensitivity"], "part2");
    // Other groups carry no label.
    for route in ["attendance?group_id=anx", "retention?focus=anxiety"] {
        let answer = app
            .get(&format!("/api/v1/reports/{route}"), &reporter)
            .await;
        assert!(
            answer.headers.get("circle-sensitivity").is_none(),
            "{route}"
        );
        assert!(answer.body.get("sensitivity").is_none(), "{route}");
    }
}

/// The client's record (the Client aggregate's `consents`) and the reports' fold
/// (`Practice::has_consent`) agree on every scope after any run of decisions: both
/// read the defaults from `ConsentScope::given_until_decided`.
#[test]
fn the_client_record_and_the_reports_agree_on_consent() {
    use circle_events::client::{Client, ClientCommand, ClientEvent, ConsentScope};
    use circle_projections::practice::{AnyEvent, Fact};
    use cqrs_es::Aggregate;

    let mut client = Client::default();
    let mut practice = Practice::new(AlertRules::default());
    let mut position = 0;
    let mut apply = |client: &mut Client, practice: &mut Practice, event: ClientEvent| {
        position += 1;
        practice.apply(&Fact {
            position,
            recorded_at: chrono::Utc::now(),
            aggregate_id: "c1".into(),
            event: AnyEvent::Client(event.clone()),
        });
        client.apply(event);
    };
    let registered = ClientEvent::ClientRegistered {
        client_id: "c1".into(),
        personal: None,
    };
    apply(&mut client, &mut practice, registered);
    // Every scope toggled in turn, three times over, by whatever the aggregate allows.
    for step in 0..9 {
        for scope in ConsentScope::ALL {
            let agree = ConsentScope::ALL
                .iter()
                .all(|s| client.consents.contains(s) == practice.has_consent("c1", *s));
            assert!(agree, "step {step}: {:?}", client.consents);
            let command = if client.consents.contains(&scope) {
                ClientCommand::WithdrawConsent { scope }
            } else {
                ClientCommand::GrantConsent { scope }
            };
            for event in client.decide(command).unwrap() {
                apply(&mut client, &mut practice, event);
            }
        }
    }
}

//! Publishing over NATS JetStream: reports and events from the log, the micro
//! service, a reporting job outside Rust, and a NATS outage mid-burst.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use circle_tests::jetstream::{
    msg_ids, report_at, report_message_at, wait_for_messages, PrivateNats,
};
use circle_tests::{
    assert_matches_6mp, assert_t, fresh_namespace, fresh_schema_url, gas_vector_groups,
    group_with_member, held_session, nats_url, numbers_about_people, one_member_group,
    set_reporting_consent, six_mp_group, spawn_app_with, succeeded, TestApp,
};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn nats_app(nats: &str, namespace: &str, k: u32) -> TestApp {
    let url = fresh_schema_url().await;
    let (nats, namespace) = (nats.to_string(), namespace.to_string());
    spawn_app_with(&url, move |s| {
        s.nats_url = Some(nats);
        s.nats_namespace = namespace;
        s.reporter_min_count = k;
    })
    .await
}

#[tokio::test]
async fn the_6mp_retention_report_arrives_on_nats_and_from_the_micro_service() {
    let ns = fresh_namespace();
    // k = 1 so the message carries the full table; the reporter form's suppression
    // is tested in tests/reports.rs.
    let app = nats_app(&nats_url(), &ns, 1).await;
    let position = six_mp_group(&app, "g6mp").await;
    let http = app
        .get(
            &format!("/api/v1/reports/retention?group_id=g6mp&min_position={position}"),
            &app.admin,
        )
        .await;
    assert_eq!(http.status, StatusCode::OK);
    assert_matches_6mp(&http.body, true);

    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let subject = format!("{ns}.reports.retention.group.g6mp");
    let published = report_at(
        &js,
        &format!("{}_REPORTS", ns.to_uppercase()),
        &subject,
        position,
    )
    .await;
    assert_matches_6mp(&published, true);
    assert_eq!(published["scope"], "group:g6mp");

    let reply = client
        .request(
            format!("{ns}.api.reports.retention"),
            json!({"group_id": "g6mp"}).to_string().into(),
        )
        .await
        .unwrap();
    let answered: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_matches_6mp(&answered, true);

    // Every event once in the events stream, with CloudEvents headers and no sealed data.
    let events_stream = format!("{}_EVENTS", ns.to_uppercase());
    wait_for_messages(&js, &events_stream, app.head().await as u64).await;
    let stream = js.get_stream(&events_stream).await.unwrap();
    // The admin token's issue comes first (a token event, its label withheld).
    let issued = stream.get_raw_message(1).await.unwrap();
    assert!(issued
        .subject
        .as_str()
        .starts_with(&format!("{ns}.events.token.")));
    assert!(!String::from_utf8_lossy(&issued.payload).contains("label"));
    let first = stream.get_raw_message(2).await.unwrap();
    assert_eq!(first.subject.as_str(), format!("{ns}.events.group.g6mp"));
    for header in [
        "ce-specversion",
        "ce-id",
        "ce-type",
        "ce-source",
        "ce-time",
        "Nats-Msg-Id",
    ] {
        assert!(first.headers.get(header).is_some(), "missing {header}");
    }
    let registered = stream
        .get_last_raw_message_by_subject(&format!("{ns}.events.client.g6mp-m00"))
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&registered.payload).unwrap();
    assert_eq!(body["event_type"], "ClientRegistered");
    assert!(body["data"].get("personal").is_none());
}

#[tokio::test]
async fn every_gas_vector_arrives_on_nats_and_from_the_micro_service() {
    let ns = fresh_namespace();
    // k = 1 so the one-member groups' T-scores are published; at k = 5 they are
    // one person's and withheld (the test below).
    let app = nats_app(&nats_url(), &ns, 1).await;
    let (groups, _) = gas_vector_groups(&app, "gas").await;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let reports = format!("{}_REPORTS", ns.to_uppercase());
    for (group, expected, position) in &groups {
        let subject = format!("{ns}.reports.goals.group.{group}");
        let published = report_at(&js, &reports, &subject, *position).await;
        assert_t(&published["summary"]["mean_t"], *expected, &subject);
        assert!(
            published.get("clients").is_none(),
            "reporter form: {published}"
        );
        assert_eq!(published["summary"]["members_with_goals"], 1);

        let reply = client
            .request(
                format!("{ns}.api.reports.goals"),
                json!({"group_id": group}).to_string().into(),
            )
            .await
            .unwrap();
        let answered: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_t(&answered["summary"]["mean_t"], *expected, "micro service");
        assert!(answered.get("clients").is_none());
    }
    // Goal events are published without their sealed titles.
    let events = format!("{}_EVENTS", ns.to_uppercase());
    wait_for_messages(&js, &events, app.head().await as u64).await;
    let stream = js.get_stream(&events).await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&format!("{ns}.events.group.gas0"))
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(body["event_type"], "GoalCheckedIn");
    let mut set_seen = false;
    let mut messages = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap()
        .messages()
        .await
        .unwrap();
    for _ in 0..app.head().await {
        let message = messages.next().await.unwrap().unwrap();
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        if body["event_type"] == "GoalSet" {
            set_seen = true;
            assert!(body["data"].get("title").is_none(), "{body}");
            assert!(body["data"]["weight"].is_number());
        }
    }
    assert!(set_seen);
}

/// The security probe (issue 7, item 2) on NATS: neither a published report nor the
/// micro service's answer carries a number computed from fewer than k people.
#[tokio::test]
async fn no_value_computed_from_fewer_than_k_people_leaves_over_nats() {
    let ns = fresh_namespace();
    let app = nats_app(&nats_url(), &ns, 5).await;
    let position = one_member_group(&app, "probe").await;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = format!("{}_REPORTS", ns.to_uppercase());
    for kind in ["attendance", "retention", "outcomes", "goals", "alerts"] {
        let subject = format!("{ns}.reports.{kind}.group.probe");
        let published = report_at(&js, &stream, &subject, position).await;
        let leaked = numbers_about_people(&published);
        assert!(leaked.is_empty(), "{subject}: {leaked:?}");
        let request = match kind {
            "outcomes" => json!({"group_id": "probe", "instrument": "PHQ-9"}),
            _ => json!({"group_id": "probe"}),
        };
        let reply = client
            .request(
                format!("{ns}.api.reports.{kind}"),
                request.to_string().into(),
            )
            .await
            .unwrap();
        let answered: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert!(answered.get("error").is_none(), "{answered}");
        let leaked = numbers_about_people(&answered);
        assert!(leaked.is_empty(), "{kind} answered: {leaked:?}");
        if kind == "outcomes" {
            // Published per instrument: the group's PHQ-9 is among them, its mean
            // change (one person's 24) withheld.
            assert_eq!(published["reports"][0]["instrument"], "PHQ-9");
            assert_eq!(
                published["reports"][0]["summary"]["mean_change"],
                Value::Null
            );
        }
        if kind == "retention" {
            assert_eq!(answered["kaplan_meier"], json!([]));
            assert_eq!(answered["kaplan_meier_min_at_risk"], 5);
        }
    }
    // The same group over HTTP, in full, has the figures the probe read.
    let full = app
        .get("/api/v1/reports/attendance?group_id=probe", &app.admin)
        .await;
    assert!(!numbers_about_people(&full.body).is_empty());
}

#[tokio::test]
async fn a_reporting_job_outside_rust_reads_reports_and_calls_the_service() {
    let ns = fresh_namespace();
    let app = nats_app(&nats_url(), &ns, 5).await;
    let position = six_mp_group(&app, "g6mp").await;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client);
    let subject = format!("{ns}.reports.retention.group.g6mp");
    report_at(
        &js,
        &format!("{}_REPORTS", ns.to_uppercase()),
        &subject,
        position,
    )
    .await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/reporting_job.py");
    let url = nats_url();
    let namespace = ns.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args([url, namespace, "g6mp".into()])
            .output()
            .expect("python3 runs (scripts/test installs nats-py)")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["service"], "circle");
    assert!(
        seen["circle_position"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            >= position
    );
    for report in [&seen["published"], &seen["answered"]] {
        // The reporter form: survival exact, small counts suppressed, no member rows.
        assert_matches_6mp(report, false);
        assert_eq!(report["kaplan_meier"][0]["events"], Value::Null);
        assert_eq!(report["kaplan_meier"][0]["at_risk"], 21);
    }
}

#[tokio::test]
async fn commands_succeed_through_a_nats_outage_and_everything_is_published_once() {
    let mut nats = PrivateNats::start();
    let app = nats_app(&nats.url(), "circle", 5).await;
    let admin = app.admin.clone();
    app.post(
        "/api/v1/groups",
        &admin,
        json!({"group_id": "g1", "name": "Burst", "focus": "trauma", "format": "open", "capacity": 50, "facilitators": ["dr_a"]}),
    )
    .await;
    let js = nats.jetstream().await;
    wait_for_messages(&js, "CIRCLE_EVENTS", 1).await;

    // A burst of commands, with nats-server stopped part-way through.
    for n in 0..40 {
        if n == 10 {
            nats.stop();
        }
        let answer = app
            .post(
                "/api/v1/clients",
                &admin,
                json!({"client_id": format!("c{n}")}),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "commands do not depend on NATS"
        );
        let join = app
            .post(
                "/api/v1/groups/g1/members",
                &admin,
                json!({"client_id": format!("c{n}"), "joined_on": "2026-01-06"}),
            )
            .await;
        assert_eq!(join.status, StatusCode::OK);
    }
    // Stay down a while: the publisher must fail, back off and resume from its checkpoint.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart();
    let head = app.head().await as u64;
    wait_for_messages(&js, "CIRCLE_EVENTS", head).await;
    let position = head as i64;
    let report = report_at(
        &js,
        "CIRCLE_REPORTS",
        "circle.reports.retention.group.g1",
        position,
    )
    .await;
    assert_eq!(report["joined"], 40);

    let events = msg_ids(&js, "CIRCLE_EVENTS").await;
    assert_eq!(events.len() as u64, head, "every event exactly once");
    assert_eq!(
        events.iter().collect::<HashSet<_>>().len(),
        events.len(),
        "no duplicate ids"
    );
    let reports = msg_ids(&js, "CIRCLE_REPORTS").await;
    assert_eq!(reports.iter().collect::<HashSet<_>>().len(), reports.len());
}

#[tokio::test]
async fn a_burst_of_commands_is_coalesced_to_few_report_publishes() {
    let ns = fresh_namespace();
    let app = nats_app(&nats_url(), &ns, 5).await;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let mut reports = client
        .subscribe(format!("{ns}.reports.attendance.group.g1"))
        .await
        .unwrap();
    app.post(
        "/api/v1/groups",
        &app.admin,
        json!({"group_id": "g1", "name": "Burst", "focus": "grief", "format": "open", "facilitators": ["dr_a"]}),
    )
    .await;
    let started = Instant::now();
    let mut last = 0;
    for n in 0..60 {
        let answer = app
            .post(
                "/api/v1/groups/g1/sessions",
                &app.admin,
                json!({"session_id": format!("s{n}"), "starts_at": "2026-01-13T18:00:00+01:00", "duration_minutes": 60}),
            )
            .await;
        last = answer.position();
    }
    let burst = started.elapsed();
    // Collect publishes until one reflects the last command.
    let mut publishes = 0u32;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), reports.next())
            .await
            .unwrap()
            .unwrap();
        publishes += 1;
        let at: i64 = message
            .headers
            .unwrap()
            .get("Circle-Position")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        if at >= last {
            break;
        }
    }
    // Default interval 100 ms: at most one publish per interval during the burst, plus
    // the one for the group's creation just before it and the final one after it.
    let allowed = (burst.as_millis() / 100) as u32 + 3;
    assert!(
        publishes <= allowed,
        "{publishes} publishes for a {burst:?} burst of 61 commands"
    );
    assert!(publishes < 61);
}

#[tokio::test]
async fn circle_starts_and_serves_without_nats_and_publishes_once_it_appears() {
    let mut nats = PrivateNats::not_started();
    let app = tokio::time::timeout(Duration::from_secs(10), nats_app(&nats.url(), "circle", 5))
        .await
        .expect("Circle starts while NATS is down");
    let created = app
        .post(
            "/api/v1/groups",
            &app.admin,
            json!({"group_id": "g1", "name": "Early", "focus": "grief", "format": "open", "capacity": 8, "facilitators": ["dr_a"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "NATS is not required to serve"
    );

    nats.restart();
    let js = nats.jetstream().await;
    wait_for_messages(&js, "CIRCLE_EVENTS", app.head().await as u64).await;
    report_at(
        &js,
        "CIRCLE_REPORTS",
        "circle.reports.attendance.group.g1",
        created.position(),
    )
    .await;
}

/// Issue 7, item 4 on NATS: a client who withdrew reporting consent is in no event
/// or report published, and each report says how many were left out; everything
/// about an addiction recovery group carries `Circle-Sensitivity: part2` and the
/// `sensitivity` field (published events, reports, the micro service's answers).
#[tokio::test]
async fn nats_leaves_out_clients_without_reporting_consent_and_labels_part2_groups() {
    let ns = fresh_namespace();
    let app = nats_app(&nats_url(), &ns, 1).await;
    let admin = &app.admin;
    // The opted-out client withdraws before joining: what was published before the
    // withdrawal (their registration, perhaps) stays published.
    succeeded(
        app.post("/api/v1/clients", admin, json!({"client_id": "optout-c"}))
            .await,
    );
    let withdrawn = set_reporting_consent(&app, "optout-c", false).await;
    group_with_member(&app, "rec", "addiction_recovery", "rec-c", "2026-01-01").await;
    succeeded(
        app.post(
            "/api/v1/groups/rec/members",
            admin,
            json!({"client_id": "optout-c", "joined_on": "2026-01-01"}),
        )
        .await,
    );
    let last_published = held_session(
        &app,
        "rec",
        "rec-s1",
        "2026-01-05T18:00:00+00:00",
        "rec-c",
        "present",
    )
    .await;
    let position = succeeded(
        app.post(
            "/api/v1/groups/rec/sessions/rec-s1/attendance",
            admin,
            json!({"records": [{"client_id": "optout-c", "status": "present"}]}),
        )
        .await,
    );
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client.clone());

    let reports = format!("{}_REPORTS", ns.to_uppercase());
    for kind in ["attendance", "retention", "outcomes", "goals", "alerts"] {
        let subject = format!("{ns}.reports.{kind}.group.rec");
        let message = report_message_at(&js, &reports, &subject, position).await;
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["left_out_without_consent"], 1, "{subject}: {body}");
        assert_eq!(body["sensitivity"], "part2", "{subject}");
        let header = message
            .headers
            .get("Circle-Sensitivity")
            .map(|v| v.as_str());
        assert_eq!(header, Some("part2"), "{subject}");
        assert!(!body.to_string().contains("optout-c"), "{subject}: {body}");
        if kind == "retention" {
            assert_eq!(body["joined"], 1, "only rec-c: {body}");
        }
        if kind == "attendance" {
            assert_eq!(body["by_session"][0]["present"], 1, "{body}");
        }
        let request = match kind {
            "outcomes" => json!({"group_id": "rec", "instrument": "PHQ-9"}),
            _ => json!({"group_id": "rec"}),
        };
        let reply = client
            .request(
                format!("{ns}.api.reports.{kind}"),
                request.to_string().into(),
            )
            .await
            .unwrap();
        let answered: Value = serde_json::from_slice(&reply.payload).unwrap();
        if kind != "outcomes" {
            assert_eq!(
                answered["left_out_without_consent"], 1,
                "{kind}: {answered}"
            );
        }
        assert_eq!(answered["sensitivity"], "part2", "{kind}: {answered}");
        let header = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Circle-Sensitivity"));
        assert_eq!(header.map(|v| v.as_str()), Some("part2"), "{kind}");
    }
    let practice = report_at(
        &js,
        &reports,
        &format!("{ns}.reports.retention.practice"),
        position,
    )
    .await;
    assert_eq!(practice["left_out_without_consent"], 1);

    // Events: none about the opted-out client; the group's carry the label.
    let events = format!("{}_EVENTS", ns.to_uppercase());
    let mut stream = js.get_stream(&events).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !published_position_reached(&mut stream, last_published).await {
        assert!(
            Instant::now() < deadline,
            "events up to {last_published} not published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = stream.info().await.unwrap().state.messages;
    let mut group_events = 0;
    for sequence in 1..=count {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        if body["position"].as_i64().unwrap() >= withdrawn {
            assert!(!body.to_string().contains("optout-c"), "{body}");
        }
        if message.subject.as_str() == format!("{ns}.events.group.rec") {
            group_events += 1;
            assert_eq!(body["sensitivity"], "part2", "{body}");
            let header = message
                .headers
                .get("Circle-Sensitivity")
                .map(|v| v.as_str());
            assert_eq!(header, Some("part2"));
        } else {
            assert!(body.get("sensitivity").is_none(), "{body}");
        }
    }
    // Created, rec-c joined, session, rec-c's mark (optout-c's join and mark withheld).
    assert_eq!(group_events, 4);
    assert!(
        count < app.head().await as u64,
        "the withheld events are not counted"
    );
}

/// Whether the events stream's last message has reached `position`.
async fn published_position_reached(stream: &mut jetstream::stream::Stream, position: i64) -> bool {
    let Ok(info) = stream.info().await else {
        return false;
    };
    let last = info.state.last_sequence;
    match stream.get_raw_message(last).await {
        Ok(message) => {
            let at: i64 = message
                .headers
                .get("Circle-Position")
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(0);
            at >= position
        }
        Err(_) => false,
    }
}

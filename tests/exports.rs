//! Exports for reporting teams (issue 10, item 2) over HTTP on PostgreSQL: CSV and
//! NDJSON with the reports' rows, the reporter form, consent, the access log.

use circle_services::auth::Role;
use circle_tests::{group_with_member, held_session, spawn_app, succeeded, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `grp-x` (anxiety, dr_a): `x0`…`x5` joined on 2026-01-05, each with a PHQ-9 of 20
/// then 8, at one session; `x1` took part in research, `x2` withdrew reporting.
async fn practice(app: &TestApp) -> i64 {
    group_with_member(app, "grp-x", "anxiety", "x0", "2026-01-05").await;
    for n in 1..6 {
        let client = format!("x{n}");
        succeeded(
            app.post("/api/v1/clients", &app.admin, json!({"client_id": client}))
                .await,
        );
        succeeded(
            app.post(
                "/api/v1/groups/grp-x/members",
                &app.admin,
                json!({"client_id": client, "joined_on": "2026-01-05"}),
            )
            .await,
        );
    }
    held_session(
        app,
        "grp-x",
        "s1",
        "2026-01-13T18:00:00+00:00",
        "x0",
        "present",
    )
    .await;
    let mut last = 0;
    for n in 0..6 {
        for (first, when) in [
            (3, "2026-01-06T10:00:00+00:00"),
            (1, "2026-03-01T10:00:00+00:00"),
        ] {
            // 3 × 6 + 2 = 20, then 1 × 8 = 8.
            let items = if first == 3 {
                json!([3, 3, 3, 3, 3, 3, 2, 0, 0])
            } else {
                json!([1, 1, 1, 1, 1, 1, 1, 1, 0])
            };
            last = succeeded(
                app.post(
                    &format!("/api/v1/clients/x{n}/measures"),
                    &app.admin,
                    json!({"instrument": "PHQ-9", "items": items, "administered_at": when,
                           "group_id": "grp-x"}),
                )
                .await,
            );
        }
    }
    succeeded(
        app.post(
            "/api/v1/clients/x1/consents",
            &app.admin,
            json!({"scope": "research", "granted": true}),
        )
        .await,
    );
    // Reporting consent is given from registration (opt-out): x2 withdraws it.
    succeeded(
        app.post(
            "/api/v1/clients/x2/consents",
            &app.admin,
            json!({"scope": "reporting", "granted": false}),
        )
        .await,
    );
    last.max(app.head().await)
}

async fn raw(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn outcomes_export_as_csv_one_row_per_member_and_instrument_with_the_reports_figures() {
    let app = spawn_app().await;
    let head = practice(&app).await;
    let path = format!("/api/v1/exports/outcomes.csv?group_id=grp-x&min_position={head}");
    let response = raw(&app, &path, &app.admin).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "content-type").starts_with("text/csv"));
    assert_eq!(header(&response, "circle-left-out"), "0");
    assert_eq!(header(&response, "circle-export-form"), "full");
    let body = response.text().await.expect("body");
    let mut expected = String::from(
        "group_id,client_id,instrument,reference_version,n_scores,baseline,latest,change,classification\r\n",
    );
    let report = app
        .get(
            &format!(
                "/api/v1/reports/outcomes?group_id=grp-x&instrument=PHQ-9&min_position={head}"
            ),
            &app.admin,
        )
        .await;
    for client in report.body["clients"].as_array().expect("clients") {
        expected.push_str(&format!(
            "grp-x,{},PHQ-9,{},{},{},{},{},{}\r\n",
            client["client_id"].as_str().unwrap(),
            report.body["reference_version"].as_str().unwrap(),
            client["n_scores"],
            client["baseline"],
            client["latest"],
            client["change"],
            client["classification"].as_str().unwrap(),
        ));
    }
    assert_eq!(body, expected);
    assert_eq!(body.lines().count(), 7);

    // The same rows as NDJSON, after its header line.
    let path = format!("/api/v1/exports/outcomes.ndjson?group_id=grp-x&min_position={head}");
    let response = raw(&app, &path, &app.admin).await;
    assert_eq!(header(&response, "content-type"), "application/x-ndjson");
    let text = response.text().await.expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines[0]["export"]["export"], "outcomes");
    assert_eq!(lines[0]["export"]["rows"], 6);
    assert_eq!(lines[0]["export"]["left_out"], 0);
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[1]["client_id"], "x0");
    assert_eq!(lines[1]["change"], 12);
}

#[tokio::test]
async fn reporters_get_no_member_rows_and_the_export_leaves_out_who_withdrew_reporting() {
    let app = spawn_app().await;
    let head = practice(&app).await;
    let reporter = app.token(Role::Reporter, None).await;
    let path = format!("/api/v1/exports/outcomes.csv?group_id=grp-x&min_position={head}");
    let response = raw(&app, &path, &reporter).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "circle-export-form"), "reporter");
    assert_eq!(header(&response, "circle-left-out"), "1");
    let body = response.text().await.expect("body");
    // Five members left (k = 5): shown, all recovered.
    assert_eq!(
        body,
        "group_id,instrument,reference_version,clients_with_two_or_more,recovered,improved,unchanged,deteriorated,share_reliably_improved,mean_change,effect_size\r\n\
         grp-x,PHQ-9,2024.1,5,5,,,,1.0,12.0,\r\n"
            .replace("2024.1", &reference_version(&app, head).await)
    );
    assert!(!body.contains("x0"));
    // Attendance: one held session, x0 present and four others absent (x2 left out):
    // every count is under k, the rate is from five people.
    let path = format!("/api/v1/exports/attendance.csv?min_position={head}");
    let body = raw(&app, &path, &reporter).await.text().await.unwrap();
    assert_eq!(
        body,
        "group_id,session_id,starts_at,present,late,left_early,excused,no_show,attendance_rate\r\n\
         grp-x,s1,2026-01-13T18:00:00Z,,,,,,0.2\r\n"
    );
}

async fn reference_version(app: &TestApp, head: i64) -> String {
    let report = app
        .get(
            &format!(
                "/api/v1/reports/outcomes?group_id=grp-x&instrument=PHQ-9&min_position={head}"
            ),
            &app.admin,
        )
        .await;
    report.body["reference_version"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_research_export_holds_only_clients_who_consented_and_is_in_the_access_log() {
    let app = spawn_app().await;
    let head = practice(&app).await;
    let path = format!(
        "/api/v1/exports/attendance.ndjson?focus=anxiety&purpose=research&min_position={head}"
    );
    let response = raw(&app, &path, &app.admin).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "circle-left-out"), "5");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["export"]["purpose"], "research");
    assert_eq!(lines[0]["export"]["scope"], "focus:anxiety");
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["client_id"], "x1");

    let auditor = app.token(Role::Auditor, None).await;
    let entries = app.get("/api/v1/audit/access?client_id=x1", &auditor).await;
    let routes: Vec<&str> = entries.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["route"].as_str())
        .collect();
    assert!(
        routes.contains(&"GET /api/v1/exports/attendance.ndjson"),
        "{routes:?}"
    );
}

#[tokio::test]
async fn bad_export_requests_are_refused_naming_the_parameter() {
    let app = spawn_app().await;
    practice(&app).await;
    let cases = [
        (
            "/api/v1/exports/alerts.csv?purpose=marketing",
            StatusCode::BAD_REQUEST,
            "purpose",
        ),
        (
            "/api/v1/exports/alerts.csv?focus=cooking",
            StatusCode::BAD_REQUEST,
            "focus",
        ),
        (
            "/api/v1/exports/retention.csv?as_of=yesterday",
            StatusCode::BAD_REQUEST,
            "as_of",
        ),
        (
            "/api/v1/exports/retention.csv?group_id=grp-x&focus=anxiety",
            StatusCode::UNPROCESSABLE_ENTITY,
            "focus",
        ),
    ];
    for (path, status, field) in cases {
        let answer = app.get(path, &app.admin).await;
        assert_eq!(answer.status, status, "{path}: {:?}", answer.body);
        assert_eq!(answer.field(), field, "{path}");
    }
    let missing = app
        .get("/api/v1/exports/outcomes.csv?group_id=nope", &app.admin)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // A clinician of no group asking about one: refused, whether it exists or not.
    let dr_b = app.token(Role::Clinician, Some("dr_b")).await;
    for group in ["grp-x", "nope"] {
        let path = format!("/api/v1/exports/outcomes.csv?group_id={group}");
        assert_eq!(app.get(&path, &dr_b).await.status, StatusCode::FORBIDDEN);
    }
}

/// Each streaming export may hold the practice as it stood when it began: a bounded
/// number at once, the rest told to come back, and nothing recorded for them.
#[tokio::test]
async fn exports_beyond_the_bound_are_told_to_come_back_later() {
    let app = circle_tests::spawn_app_with(&circle_tests::fresh_schema_url().await, |s| {
        s.exports_max_concurrent = 1
    })
    .await;
    let head = practice(&app).await;
    let path = format!("/api/v1/exports/outcomes.csv?group_id=grp-x&min_position={head}");
    // Given one export streaming (its slot held, as a slow reader's is),
    let streaming = app.state.export_limit.try_enter().unwrap();
    // when another asks, it is told to come back,
    let refused = raw(&app, &path, &app.admin).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("1 exports are streaming already"),
        "{problem}"
    );
    // and once the first ends, it gets its rows.
    drop(streaming);
    let answered = raw(&app, &path, &app.admin).await;
    assert_eq!(answered.status(), StatusCode::OK);
    assert!(answered.text().await.unwrap().lines().count() > 6);
}

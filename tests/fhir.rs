//! FHIR R4 Bulk Data export of a group (issue 10, item 1) on PostgreSQL: kick-off,
//! status, manifest and files over HTTP, and `circle export fhir` offline; every
//! resource validated by the Python `fhir.resources` package
//! (`python/validate_fhir.py`) and every PHQ-9 and GAD-7 code checked against a
//! fixed table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use circle_services::auth::Role;
use circle_tests::process::circle_binary;
use circle_tests::{
    fresh_data_dir, group_with_member, held_session, spawn_app, succeeded, TestApp,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The codes of the fixed table the export must use, by where they appear.
const PHQ9_ITEMS: [&str; 9] = [
    "44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3",
    "44260-8",
];
const GAD7_ITEMS: [&str; 7] = [
    "69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7",
];
const ANSWERS: [&str; 4] = ["LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9"];

/// `grp_fhir` (focus as given, facilitated by `dr_a`): `fc1` at one session with a
/// PHQ-9, a GAD-7 and an ORS there, `fc2` absent; `fc1` consents to research.
async fn seed(app: &TestApp, group: &str, focus: &str) -> i64 {
    group_with_member(app, group, focus, &format!("{group}-c1"), "2026-01-05").await;
    let c1 = format!("{group}-c1");
    let c2 = format!("{group}-c2");
    succeeded(
        app.post(
            "/api/v1/clients",
            &app.admin,
            json!({"client_id": c2, "display_name": "Bo K."}),
        )
        .await,
    );
    succeeded(
        app.post(
            &format!("/api/v1/groups/{group}/members"),
            &app.admin,
            json!({"client_id": c2, "joined_on": "2026-01-05"}),
        )
        .await,
    );
    held_session(
        app,
        group,
        "s1",
        "2026-01-13T18:00:00+01:00",
        &c1,
        "present",
    )
    .await;
    succeeded(
        app.post(
            &format!("/api/v1/groups/{group}/sessions/s1/attendance"),
            &app.admin,
            json!({"records": [{"client_id": c2, "status": "no_show"}]}),
        )
        .await,
    );
    for (instrument, items) in [
        ("PHQ-9", json!([3, 2, 1, 0, 0, 1, 2, 3, 1])),
        ("GAD-7", json!([0, 1, 2, 3, 2, 1, 0])),
        ("ORS", json!([4.5, 6, 7.2, 5])),
    ] {
        succeeded(
            app.post(
                &format!("/api/v1/groups/{group}/sessions/s1/feedback"),
                &app.admin,
                json!({"client_id": c1, "instrument": instrument, "items": items}),
            )
            .await,
        );
    }
    succeeded(
        app.post(
            &format!("/api/v1/clients/{c1}/consents"),
            &app.admin,
            json!({"scope": "research", "granted": true}),
        )
        .await,
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Kicks off an export and waits for its manifest.
async fn export(app: &TestApp, token: &str, group: &str, query: &str) -> Value {
    let kick_off = client()
        .get(format!(
            "{}/api/v1/fhir/Group/{group}/$export{query}",
            app.base
        ))
        .bearer_auth(token)
        .header("Prefer", "respond-async")
        .header("Accept", "application/fhir+json")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(
        kick_off.status(),
        StatusCode::ACCEPTED,
        "{:?}",
        kick_off.text().await
    );
    let status_url = kick_off.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(status_url.starts_with(&app.base), "{status_url}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client()
            .get(&status_url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        match status.status() {
            StatusCode::ACCEPTED => {
                assert!(Instant::now() < deadline, "the export never finished");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            StatusCode::OK => return status.json().await.unwrap(),
            other => panic!("status {other}: {:?}", status.text().await),
        }
    }
}

/// Downloads each file of the manifest into a fresh directory.
async fn download(manifest: &Value, token: &str) -> std::path::PathBuf {
    let dir = fresh_data_dir().join("fhir");
    std::fs::create_dir_all(&dir).unwrap();
    for file in manifest["output"].as_array().expect("output") {
        let response = client()
            .get(file["url"].as_str().unwrap())
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "application/fhir+ndjson"
        );
        let body = response.text().await.unwrap();
        assert_eq!(body.lines().count() as u64, file["count"].as_u64().unwrap());
        std::fs::write(
            dir.join(format!("{}.ndjson", file["type"].as_str().unwrap())),
            body,
        )
        .unwrap();
    }
    dir
}

fn validate(dir: &Path) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/validate_fhir.py");
    let run = Command::new("python3")
        .arg(script)
        .arg(dir)
        .output()
        .expect("python3");
    let out = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "fhir.resources refused the export:\n{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

fn resources(dir: &Path, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(format!("{kind}.ndjson")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_group_exports_as_bulk_data_that_fhir_resources_validates() {
    let app = spawn_app().await;
    seed(&app, "grp_fhir", "anxiety").await;
    let manifest = export(&app, &app.admin, "grp_fhir", "").await;
    assert_eq!(manifest["requiresAccessToken"], true);
    let types: Vec<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "Group",
            "Patient",
            "CareTeam",
            "Encounter",
            "QuestionnaireResponse",
            "Observation",
            "Consent",
            "Provenance"
        ]
    );
    let dir = download(&manifest, &app.admin).await;
    let report = validate(&dir);
    assert!(report.contains("resources valid"), "{report}");

    // The fixed table: item linkIds in order, answers from LL358-3, totals' codes.
    let answers = resources(&dir, "QuestionnaireResponse");
    let link_ids = |qr: &Value| -> Vec<String> {
        qr["item"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["linkId"].as_str().unwrap().to_string())
            .collect()
    };
    let phq9 = answers
        .iter()
        .find(|r| r["questionnaire"] == "http://loinc.org/q/44249-1")
        .unwrap();
    assert_eq!(link_ids(phq9), PHQ9_ITEMS);
    let gad7 = answers
        .iter()
        .find(|r| r["questionnaire"] == "http://loinc.org/q/69737-5")
        .unwrap();
    assert_eq!(link_ids(gad7), GAD7_ITEMS);
    for (item, score) in gad7["item"]
        .as_array()
        .unwrap()
        .iter()
        .zip([0, 1, 2, 3, 2, 1, 0])
    {
        assert_eq!(item["answer"][0]["valueCoding"]["code"], ANSWERS[score]);
    }
    let observations = resources(&dir, "Observation");
    let codes: Vec<&str> = observations
        .iter()
        .map(|o| o["code"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "44261-6",
            "44260-8",
            "44249-1",
            "70274-6",
            "69737-5",
            "ors-total"
        ]
    );
    let patients = resources(&dir, "Patient");
    assert_eq!(patients.len(), 2);
    assert!(patients.iter().all(|p| p.get("name").is_none()));
    let encounters = resources(&dir, "Encounter");
    let statuses: Vec<&str> = encounters
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["finished", "cancelled"]);

    // The files were disclosed to the admin, in the access log with the members.
    let auditor = app.token(Role::Auditor, None).await;
    let log = app
        .get("/api/v1/audit/access?client_id=grp_fhir-c2", &auditor)
        .await;
    let routes: Vec<&str> = log.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["route"].as_str())
        .collect();
    assert!(
        routes.contains(&"GET /api/v1/fhir/jobs/{job_id}/files/{resource_type}"),
        "{routes:?}"
    );
}

#[tokio::test]
async fn part_2_groups_are_labelled_names_go_only_to_the_groups_clinician_and_since_narrows() {
    let app = spawn_app().await;
    seed(&app, "grp_p2", "addiction_recovery").await;
    let dr_a = app.token(Role::Clinician, Some("dr_a")).await;
    let manifest = export(
        &app,
        &dr_a,
        "grp_p2",
        "?_type=Patient,Group&_elements=Patient.name",
    )
    .await;
    let dir = download(&manifest, &dr_a).await;
    validate(&dir);
    let patients = resources(&dir, "Patient");
    // fc1 was registered without a name; fc2 as "Bo K.".
    let names: Vec<&Value> = patients.iter().map(|p| &p["name"]).collect();
    assert_eq!(names, [&Value::Null, &json!([{"text": "Bo K."}])]);
    for resource in resources(&dir, "Group").iter().chain(&patients) {
        let labels: Vec<&str> = resource["meta"]["security"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["42CFRPart2", "R"]);
    }
    // An admin asking for names gets none: names go only to the group's clinician.
    let manifest = export(&app, &app.admin, "grp_p2", "?_type=Patient&_elements=name").await;
    assert_eq!(
        manifest["request"],
        format!(
            "{}/api/v1/fhir/Group/grp_p2/$export?_type=Patient&_elements=name",
            app.base
        )
    );
    let dir = download(&manifest, &app.admin).await;
    assert!(resources(&dir, "Patient")
        .iter()
        .all(|p| p.get("name").is_none()));
    // _since after everything: no files.
    let manifest = export(&app, &app.admin, "grp_p2", "?_since=2199-01-01T00:00:00Z").await;
    assert_eq!(manifest["output"], json!([]));

    // Another caller cannot read the job or its files; a reporter cannot start one.
    let manifest = export(&app, &app.admin, "grp_p2", "").await;
    let url = manifest["output"][0]["url"].as_str().unwrap();
    let dr_b = app.token(Role::Clinician, Some("dr_b")).await;
    let other = client().get(url).bearer_auth(&dr_b).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let auditor = app.token(Role::Auditor, None).await;
    let other = client()
        .get(url)
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let reporter = app.token(Role::Reporter, None).await;
    let refused = app
        .get("/api/v1/fhir/Group/grp_p2/$export", &reporter)
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // The client deletes the job: its status and files are gone.
    let status_url = url.rsplit_once("/files/").unwrap().0.to_string();
    let deleted = client()
        .delete(&status_url)
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let gone = client()
        .get(url)
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_kick_offs_are_refused_naming_the_parameter() {
    let app = spawn_app().await;
    seed(&app, "grp_bad", "grief").await;
    let send = |query: &'static str, prefer: bool| {
        let mut request = client()
            .get(format!(
                "{}/api/v1/fhir/Group/grp_bad/$export{query}",
                app.base
            ))
            .bearer_auth(&app.admin);
        if prefer {
            request = request.header("Prefer", "respond-async");
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (
                status,
                body["errors"][0]["field"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        }
    };
    assert_eq!(
        send("", false).await,
        (StatusCode::BAD_REQUEST, "Prefer".into())
    );
    assert_eq!(
        send("?_type=Medication", true).await,
        (StatusCode::BAD_REQUEST, "_type".into())
    );
    assert_eq!(
        send("?_since=soon", true).await,
        (StatusCode::BAD_REQUEST, "_since".into())
    );
    assert_eq!(
        send("?_outputFormat=csv", true).await,
        (StatusCode::BAD_REQUEST, "_outputFormat".into())
    );
    assert_eq!(
        send("?_elements=na%20me", true).await,
        (StatusCode::BAD_REQUEST, "_elements".into())
    );
    let missing = client()
        .get(format!("{}/api/v1/fhir/Group/nope/$export", app.base))
        .bearer_auth(&app.admin)
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn circle_export_fhir_writes_the_same_files_offline() {
    let app = spawn_app().await;
    seed(&app, "grp_cli", "depression").await;
    let out = fresh_data_dir().join("cli");
    let run = Command::new(circle_binary())
        .args(["export", "fhir", "--group", "grp_cli", "--out"])
        .arg(&out)
        .env("CIRCLE_DATABASE_URL", &app.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("circle export fhir");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("resources written"), "{stderr}");
    validate(&out);
    let manifest = export(&app, &app.admin, "grp_cli", "").await;
    let online = download(&manifest, &app.admin).await;
    for file in manifest["output"].as_array().unwrap() {
        let name = format!("{}.ndjson", file["type"].as_str().unwrap());
        assert_eq!(
            std::fs::read_to_string(out.join(&name)).unwrap(),
            std::fs::read_to_string(online.join(&name)).unwrap(),
            "{name}"
        );
    }
    let missing = Command::new(circle_binary())
        .args(["export", "fhir", "--group", "nope", "--out"])
        .arg(&out)
        .env("CIRCLE_DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

/// The embedded store (SQLite): a `circle serve` process answers the CSV export and
/// the FHIR export over HTTP, and `circle export fhir` reads the same store while it
/// runs.
#[tokio::test]
async fn exports_work_on_the_embedded_store_too() {
    use circle_tests::process::CircleProcess;
    const ADMIN: &str = "embedded-exports-admin-token-0123456789";
    let data_dir = fresh_data_dir();
    let data = data_dir.to_str().expect("utf-8 path").to_string();
    let circle = CircleProcess::serve(&[
        ("CIRCLE_DATA_DIR", data.as_str()),
        ("CIRCLE_ADMIN_TOKEN", ADMIN),
    ]);
    circle.wait_ready(Duration::from_secs(60)).await;
    let http = client();
    let post = |path: &str, body: Value| {
        let request = http
            .post(format!("{}{path}", circle.base))
            .bearer_auth(ADMIN)
            .json(&body);
        async move {
            let response = request.send().await.expect("post");
            assert!(
                response.status().is_success(),
                "{:?}",
                response.text().await
            );
            let body: Value = response.json().await.expect("json");
            body["position"].as_i64().unwrap_or(0)
        }
    };
    post(
        "/api/v1/groups",
        json!({"group_id": "grp_lite", "name": "Lite", "focus": "addiction_recovery",
        "format": "open", "facilitators": ["dr_a"]}),
    )
    .await;
    post("/api/v1/clients", json!({"client_id": "lite-1"})).await;
    post(
        "/api/v1/groups/grp_lite/members",
        json!({"client_id": "lite-1", "joined_on": "2026-01-05"}),
    )
    .await;
    post(
        "/api/v1/groups/grp_lite/sessions",
        json!({"session_id": "s1",
        "starts_at": "2026-01-13T18:00:00Z", "duration_minutes": 60}),
    )
    .await;
    post(
        "/api/v1/groups/grp_lite/sessions/s1/attendance",
        json!({"records": [{"client_id": "lite-1", "status": "late"}]}),
    )
    .await;
    let head = post(
        "/api/v1/groups/grp_lite/sessions/s1/feedback",
        json!({"client_id": "lite-1",
        "instrument": "PHQ-9", "items": [1, 1, 1, 1, 1, 1, 1, 1, 0]}),
    )
    .await;

    let csv = http
        .get(format!(
            "{}/api/v1/exports/outcomes.csv?group_id=grp_lite&min_position={head}",
            circle.base
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv.lines().nth(1),
        Some("grp_lite,lite-1,PHQ-9,2024.1,1,8,8,0,insufficient_data")
    );

    let kick_off = http
        .get(format!(
            "{}/api/v1/fhir/Group/grp_lite/$export",
            circle.base
        ))
        .bearer_auth(ADMIN)
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(kick_off.status(), StatusCode::ACCEPTED);
    let status_url = kick_off.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let manifest: Value = loop {
        let status = http
            .get(&status_url)
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        if status.status() == StatusCode::OK {
            break status.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the export never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let online = download(&manifest, ADMIN).await;
    validate(&online);

    let out = data_dir.join("fhir-cli");
    let run = Command::new(circle_binary())
        .args(["export", "fhir", "--group", "grp_lite", "--out"])
        .arg(&out)
        .env("CIRCLE_DATA_DIR", &data)
        .env_remove("CIRCLE_DATABASE_URL")
        .output()
        .expect("circle export fhir");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    validate(&out);
    for kind in [
        "Group",
        "Patient",
        "Encounter",
        "QuestionnaireResponse",
        "Observation",
    ] {
        let name = format!("{kind}.ndjson");
        assert_eq!(
            std::fs::read_to_string(out.join(&name)).unwrap(),
            std::fs::read_to_string(online.join(&name)).unwrap(),
            "{name}"
        );
    }
    let labelled = resources(&out, "Encounter");
    assert_eq!(labelled[0]["meta"]["security"][0]["code"], "42CFRPart2");
    assert_eq!(labelled[0]["status"], "finished", "late is attended");
}

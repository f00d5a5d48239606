//! Test support: every test gets its own PostgreSQL schema (or SQLite directory) and
//! its own Circle on an ephemeral port, so tests run in parallel without sharing
//! anything but the servers.

pub mod jetstream;
pub mod process;

use std::path::PathBuf;

use circle_services::app::Application;
use circle_services::auth::{create_token, Role};
use circle_services::config::{Overrides, Settings};
use circle_services::crypto::Vault;
use circle_services::http::AppState;
use circle_services::store::Store;
use reqwest::StatusCode;
use serde_json::Value;

/// The test database, from `deploy/test.env` (exported by `scripts/test`).
pub fn database_url() -> String {
    std::env::var("CIRCLE_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("CIRCLE_TEST_DATABASE_URL is not set: run the suite with scripts/test")
    })
}

/// A new, empty schema; the returned URL makes it the connection's search path.
pub async fn fresh_schema_url() -> String {
    let base = database_url();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("connect to the test database");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .expect("create test schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

pub async fn postgres_store() -> Store {
    Store::postgres(&fresh_schema_url().await, 16)
        .await
        .expect("open PostgreSQL store")
}

/// A private directory under the system temp dir for one embedded store.
pub fn fresh_data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("circle-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create data dir");
    dir
}

pub async fn sqlite_store() -> Store {
    Store::embedded(&fresh_data_dir())
        .await
        .expect("open embedded store")
}

pub struct TestApp {
    pub base: String,
    pub admin: String,
    pub state: AppState,
    pub http: reqwest::Client,
    pub database_url: String,
}

pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// The `field` of the first entry of a problem's `errors`.
    pub fn field(&self) -> &str {
        self.body["errors"][0]["field"].as_str().unwrap_or("")
    }

    pub fn position(&self) -> i64 {
        self.body["position"].as_i64().expect("position in answer")
    }
}

/// A Circle on PostgreSQL in a fresh schema.
pub async fn spawn_app() -> TestApp {
    let url = fresh_schema_url().await;
    spawn_app_on(&url).await
}

/// A Circle on an existing schema: a second instance simulates a second process.
pub async fn spawn_app_on(database_url: &str) -> TestApp {
    spawn_app_with(database_url, |_| {}).await
}

/// The reports projection's settings as Circle's defaults give them.
pub fn default_projection() -> circle_services::projector::ProjectionSettings {
    Settings::load(None, Overrides::default())
        .expect("default settings")
        .projection()
}

/// The test NATS server, from `deploy/test.env` (exported by `scripts/test`).
pub fn nats_url() -> String {
    std::env::var("CIRCLE_TEST_NATS_URL").unwrap_or_else(|_| {
        panic!("CIRCLE_TEST_NATS_URL is not set: run the suite with scripts/test")
    })
}

/// A subject namespace of its own, so tests share the NATS server but no stream.
pub fn fresh_namespace() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// One master key per database, as in a deployment: every instance on a schema
/// must use the key its data was sealed with (a start with another is refused).
pub fn master_key_for(database_url: &str) -> String {
    static KEYS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        std::sync::OnceLock::new();
    let mut keys = KEYS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    keys.entry(database_url.to_string())
        .or_insert_with(Vault::generate_master_key)
        .clone()
}

/// A Circle on an existing schema with settings adjusted by `configure`.
pub async fn spawn_app_with(database_url: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let admin = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let mut settings = Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(database_url.to_string()),
            admin_token: Some(admin.clone()),
            master_key: Some(master_key_for(database_url)),
            ..Overrides::default()
        },
    )
    .expect("settings");
    configure(&mut settings);
    let app = Application::build(&settings).await.expect("build app");
    let base = format!("http://{}", app.local_addr().expect("address"));
    let state = app.state();
    tokio::spawn(app.run(std::future::pending()));
    TestApp {
        base,
        admin,
        state,
        http: reqwest::Client::new(),
        database_url: database_url.to_string(),
    }
}

impl TestApp {
    pub async fn token(&self, role: Role, clinician_id: Option<&str>) -> String {
        create_token(&self.state.store, role, clinician_id.map(String::from))
            .await
            .expect("create token")
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self.request(method, path, token, headers);
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::answer(request).await
    }

    /// A request whose body is sent byte for byte, as a careless or hostile client
    /// might write it.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> Answer {
        let request = self.request(method, path, token, headers);
        Self::answer(request.body(body.into())).await
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
    }

    /// A raw JSON body posted with `Content-Type: application/json`.
    pub async fn post_raw(&self, path: &str, token: &str, body: impl Into<Vec<u8>>) -> Answer {
        let json = [("content-type", "application/json")];
        self.send_raw(reqwest::Method::POST, path, Some(token), &json, body)
            .await
    }

    async fn answer(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            content_type,
            body,
            headers,
        }
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(token), &[], Some(&body))
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(reqwest::Method::GET, path, Some(token), &[], None)
            .await
    }

    pub async fn head(&self) -> i64 {
        self.state.store.head_position().await.expect("head")
    }
}

/// The 6-MP vector (Freireich 1963), `testdata/km_6mp.json`.
pub fn six_mp() -> Value {
    serde_json::from_str(include_str!("../../testdata/km_6mp.json")).expect("vector parses")
}

/// The 6-MP vector as commands: one group with room for all 21, everyone joining on
/// one date and leaving after 7×t days, dropouts for events, completions for
/// censored. Returns the log position of the last command.
pub async fn six_mp_group(app: &TestApp, group_id: &str) -> i64 {
    let admin = &app.admin;
    let created = app
        .post(
            "/api/v1/groups",
            admin,
            serde_json::json!({"group_id": group_id, "name": "6-MP", "focus": "grief", "format": "closed",
                               "capacity": 21, "facilitators": ["dr_a"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let joined_on = chrono::NaiveDate::from_ymd_opt(2025, 1, 6).unwrap();
    let mut position = 0;
    for (i, o) in six_mp()["observations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let client = format!("{group_id}-m{i:02}");
        app.post(
            "/api/v1/clients",
            admin,
            serde_json::json!({"client_id": client}),
        )
        .await;
        let join = app
            .post(
                &format!("/api/v1/groups/{group_id}/members"),
                admin,
                serde_json::json!({"client_id": client, "joined_on": joined_on}),
            )
            .await;
        assert_eq!(join.status, StatusCode::OK, "{:?}", join.body);
        let left_on = joined_on + chrono::Duration::days(o["t"].as_i64().unwrap() * 7);
        let reason = if o["event"].as_bool().unwrap() {
            "dropped_out"
        } else {
            "completed"
        };
        let leave = app
            .post(
                &format!("/api/v1/groups/{group_id}/members/{client}/departure"),
                admin,
                serde_json::json!({"left_on": left_on, "reason": reason}),
            )
            .await;
        assert_eq!(leave.status, StatusCode::OK, "{:?}", leave.body);
        position = leave.position();
    }
    position
}

/// Checks a retention report against the published 6-MP table to 4 decimals.
/// `counts` is false for the reporter form, where counts below k may be null.
pub fn assert_matches_6mp(report: &Value, counts: bool) {
    let vector = six_mp();
    let rows = report["kaplan_meier"]
        .as_array()
        .expect("kaplan_meier rows");
    let expected = vector["expected"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "{report}");
    for (row, want) in rows.iter().zip(expected) {
        assert_eq!(
            row["t_days"].as_i64().unwrap(),
            want["t"].as_i64().unwrap() * 7
        );
        if counts {
            assert_eq!(row["at_risk"], want["at_risk"]);
            assert_eq!(row["events"], want["events"]);
        }
        for field in ["survival", "std_err"] {
            let got = row[field].as_f64().unwrap();
            let published = want[field].as_f64().unwrap();
            // The vector has 4 decimals: the true value is within half a unit of them.
            assert!(
                (got - published).abs() <= 0.5e-4 + 1e-9,
                "{field}: {got} vs {published}"
            );
        }
    }
    assert_eq!(
        report["median_days"],
        vector["median"].as_i64().unwrap() * 7
    );
}

/// The GAS vectors (Kiresuk & Sherman 1968), `testdata/gas_vectors.json`.
pub fn gas_vectors() -> Vec<Value> {
    let file: Value =
        serde_json::from_str(include_str!("../../testdata/gas_vectors.json")).expect("parses");
    file["vectors"].as_array().expect("vectors").clone()
}

/// Asserts a T-score matches a published one to its 4 decimals.
pub fn assert_t(got: &Value, expected: f64, context: &str) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{context}: no T-score"));
    assert!(
        (got - expected).abs() <= 0.5e-4 + 1e-9,
        "{context}: T {got} vs {expected}"
    );
}

/// The GAS vectors as commands: per vector, a group `{prefix}{i}` with one member
/// who sets one goal per weight (at the default start level) and checks in at the
/// vector's levels, through the group check-in form at an attended session.
/// Returns each group with its expected T and its last position, and the last
/// position written.
pub async fn gas_vector_groups(app: &TestApp, prefix: &str) -> (Vec<(String, f64, i64)>, i64) {
    use serde_json::json;
    let admin = &app.admin;
    let mut groups = Vec::new();
    let mut position = 0;
    for (i, vector) in gas_vectors().iter().enumerate() {
        let (group, client, session) = (
            format!("{prefix}{i}"),
            format!("{prefix}{i}-c"),
            format!("{prefix}{i}-s"),
        );
        let ok = succeeded;
        group_with_member(app, &group, "depression", &client, "2026-01-05").await;
        held_session(
            app,
            &group,
            &session,
            "2026-01-13T18:00:00+00:00",
            &client,
            "present",
        )
        .await;
        let weights = vector["weights"].as_array().expect("weights");
        let mut check_ins = Vec::new();
        for (g, (weight, level)) in weights
            .iter()
            .zip(vector["levels"].as_array().expect("levels"))
            .enumerate()
        {
            let goal_id = format!("{prefix}{i}-goal{g}");
            ok(app
                .post(
                    &format!("/api/v1/clients/{client}/goals"),
                    admin,
                    json!({"goal_id": goal_id, "title": format!("Goal {g}"), "weight": weight,
                           "group_id": group, "set_on": "2026-01-06"}),
                )
                .await);
            check_ins.push(json!({"client_id": client, "goal_id": goal_id, "level": level}));
        }
        position = ok(app
            .post(
                &format!("/api/v1/groups/{group}/sessions/{session}/goal-check-ins"),
                admin,
                json!({"check_ins": check_ins}),
            )
            .await);
        let expected = vector["expected_t"].as_f64().expect("expected_t");
        groups.push((group, expected, position));
    }
    (groups, position)
}

/// Runs each named `async fn(Store)` as two tests, `postgres::name` and
/// `sqlite::name`, each on a fresh store of its own.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::postgres_store().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::sqlite_store().await).await;
                }
            )*
        }
    };
}

/// An answer that must have succeeded: its log position.
pub fn succeeded(answer: Answer) -> i64 {
    assert!(answer.status.is_success(), "{:?}", answer.body);
    answer.position()
}

/// An open group of `focus` facilitated by `dr_a`, with `client` registered and
/// joined on `joined_on`. Returns the last position.
pub async fn group_with_member(
    app: &TestApp,
    group: &str,
    focus: &str,
    client: &str,
    joined_on: &str,
) -> i64 {
    use serde_json::json;
    let admin = &app.admin;
    succeeded(
        app.post(
            "/api/v1/groups",
            admin,
            json!({"group_id": group, "name": "Group", "focus": focus, "format": "open",
                   "facilitators": ["dr_a"]}),
        )
        .await,
    );
    succeeded(
        app.post("/api/v1/clients", admin, json!({"client_id": client}))
            .await,
    );
    succeeded(
        app.post(
            &format!("/api/v1/groups/{group}/members"),
            admin,
            json!({"client_id": client, "joined_on": joined_on}),
        )
        .await,
    )
}

/// A session of 90 minutes at `starts_at` with one member's attendance. Returns the
/// last position.
pub async fn held_session(
    app: &TestApp,
    group: &str,
    session: &str,
    starts_at: &str,
    client: &str,
    status: &str,
) -> i64 {
    use serde_json::json;
    succeeded(
        app.post(
            &format!("/api/v1/groups/{group}/sessions"),
            &app.admin,
            json!({"session_id": session, "starts_at": starts_at, "duration_minutes": 90}),
        )
        .await,
    );
    succeeded(
        app.post(
            &format!("/api/v1/groups/{group}/sessions/{session}/attendance"),
            &app.admin,
            json!({"records": [{"client_id": client, "status": status}]}),
        )
        .await,
    )
}

/// The security probe's group (issue 7, item 2): one member, three sessions
/// (present, no-show, no-show), a PHQ-9 change of 24, a goal checked in, and a
/// dropout on day 15. Every figure about it is one person's. Returns the last
/// position.
pub async fn one_member_group(app: &TestApp, group: &str) -> i64 {
    use serde_json::json;
    let admin = &app.admin;
    let client = format!("{group}-c");
    let ok = succeeded;
    group_with_member(app, group, "anxiety", &client, "2026-01-01").await;
    for (n, status) in ["present", "no_show", "no_show"].iter().enumerate() {
        let session = format!("{group}-s{n}");
        let starts_at = format!("2026-01-{:02}T18:00:00+00:00", 5 + 3 * n);
        held_session(app, group, &session, &starts_at, &client, status).await;
    }
    for (session, items) in [
        ("s0", [3, 3, 3, 3, 3, 3, 3, 3, 0]),
        ("s2", [0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ] {
        ok(app
            .post(
                &format!("/api/v1/groups/{group}/sessions/{group}-{session}/feedback"),
                admin,
                json!({"client_id": client, "instrument": "PHQ-9", "items": items}),
            )
            .await);
    }
    let goal = format!("{group}-goal");
    ok(app
        .post(
            &format!("/api/v1/clients/{client}/goals"),
            admin,
            json!({"goal_id": goal, "title": "Probe goal", "weight": 2, "group_id": group,
                   "set_on": "2026-01-02"}),
        )
        .await);
    ok(app
        .post(
            &format!("/api/v1/groups/{group}/sessions/{group}-s0/goal-check-ins"),
            admin,
            json!({"check_ins": [{"client_id": client, "goal_id": goal, "level": 1}]}),
        )
        .await);
    ok(app
        .post(
            &format!("/api/v1/groups/{group}/members/{client}/departure"),
            admin,
            json!({"left_on": "2026-01-16", "reason": "dropped_out"}),
        )
        .await)
}

/// The numbers in a report that are about people: for a report on fewer than k
/// people, each is computed from fewer than k. Left out: log positions, the session
/// count, the GAS ρ, the instrument's catalogue values, the reporter form's own k,
/// and how many it left out for want of consent (about no one's data in it:
/// ARCHITECTURE.md, "Consent and Part 2").
pub fn numbers_about_people(report: &Value) -> Vec<String> {
    const NOT_ABOUT_PEOPLE: [&str; 7] = [
        "position",
        "sessions_held",
        "rho",
        "clinical_cutoff",
        "reliable_change",
        "kaplan_meier_min_at_risk",
        "left_out_without_consent",
    ];
    fn walk(value: &Value, key: &str, path: String, found: &mut Vec<String>) {
        match value {
            Value::Number(_) if !NOT_ABOUT_PEOPLE.contains(&key) => {
                found.push(format!("{path} = {value}"))
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, key, format!("{path}[{i}]"), found);
                }
            }
            Value::Object(fields) => {
                for (name, field) in fields {
                    walk(field, name, format!("{path}.{name}"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(report, "", String::new(), &mut found);
    found
}

/// Withdraws (or grants) a client's reporting consent. Returns its position.
pub async fn set_reporting_consent(app: &TestApp, client: &str, granted: bool) -> i64 {
    succeeded(
        app.post(
            &format!("/api/v1/clients/{client}/consents"),
            &app.admin,
            serde_json::json!({"scope": "reporting", "granted": granted}),
        )
        .await,
    )
}

//! The access log (issue 7, item 2) on a real PostgreSQL, and its store on both
//! backends: reads of client data and refusals are recorded before the answer,
//! served to auditors, hash-chained, append-only, and a read that cannot be
//! recorded is not answered.

use circle_services::auth::Role;
use circle_services::store::access::{verify_chain, AccessFilter, NewAccess, GENESIS};
use circle_services::store::Store;
use circle_tests::{fresh_data_dir, postgres_store, spawn_app, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const CORRELATION: &str = "6b0c5a9e-58c2-4a51-9d2c-2f1f9b1d7a10";

async fn ok(app: &TestApp, path: &str, body: Value) {
    let answer = app.post(path, &app.admin, body).await;
    assert!(answer.status.is_success(), "{path}: {:?}", answer.body);
}

/// `dr-a` facilitates `grp-a`, whose member `c1` came to its one session.
async fn practice(app: &TestApp) {
    let steps = [
        (
            "/api/v1/groups",
            json!({"group_id": "grp-a", "name": "A", "focus": "anxiety",
            "format": "open", "facilitators": ["dr-a"]}),
        ),
        (
            "/api/v1/clients",
            json!({"client_id": "c1", "display_name": "Ada L."}),
        ),
        (
            "/api/v1/groups/grp-a/members",
            json!({"client_id": "c1", "joined_on": "2026-01-05"}),
        ),
        (
            "/api/v1/groups/grp-a/sessions",
            json!({"session_id": "s1",
            "starts_at": "2026-01-13T18:00:00+00:00", "duration_minutes": 90}),
        ),
        (
            "/api/v1/groups/grp-a/sessions/s1/attendance",
            json!({"records": [{"client_id": "c1", "status": "present"}]}),
        ),
    ];
    for (path, body) in steps {
        ok(app, path, body).await;
    }
}

async fn entries(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let page = app
        .get(&format!("/api/v1/audit/access{query}"), token)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    page.body["entries"].as_array().expect("entries").clone()
}

#[tokio::test]
async fn who_saw_a_client_and_who_was_refused_is_recorded_and_served_to_auditors() {
    let app = spawn_app().await;
    practice(&app).await;
    let dr_a = app.token(Role::Clinician, Some("dr-a")).await;
    let dr_b = app.token(Role::Clinician, Some("dr-b")).await;
    let auditor = app.token(Role::Auditor, None).await;
    let reporter = app.token(Role::Reporter, None).await;
    let headers = [
        ("Circle-Purpose", "treatment review"),
        ("X-Correlation-Id", CORRELATION),
    ];
    let read = app
        .send(
            Method::GET,
            "/api/v1/clients/c1",
            Some(&dr_a),
            &headers,
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/clients/c1", &dr_b).await.status,
        StatusCode::FORBIDDEN
    );
    let anonymous = app
        .send(Method::GET, "/api/v1/clients/c1", None, &[], None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    // A report's member rows are client data too; the reporter form has none.
    let report = app
        .get("/api/v1/reports/attendance?group_id=grp-a", &dr_a)
        .await;
    assert_eq!(report.status, StatusCode::OK);
    let aggregate = app
        .get("/api/v1/reports/attendance?group_id=grp-a", &reporter)
        .await;
    assert_eq!(aggregate.status, StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/audit/access", &reporter).await.status,
        StatusCode::FORBIDDEN
    );

    let seen = entries(&app, &auditor, "?client_id=c1").await;
    let reads: Vec<&Value> = seen
        .iter()
        .filter(|e| e["agent"]["who"] == "dr-a")
        .collect();
    assert_eq!(reads.len(), 2, "the client read and the report: {seen:#?}");
    let first = reads[0];
    assert_eq!(first["route"], "GET /api/v1/clients/{client_id}");
    assert_eq!(first["action"], "R");
    assert_eq!(first["outcome"], "0");
    assert_eq!(first["status"], 200);
    assert_eq!(first["agent"]["role"], "clinician");
    assert_eq!(first["agent"]["clinician_id"], "dr-a");
    // The token's own id (as `circle token list` shows it), never its secret.
    assert!(first["agent"]["token_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("tok_")));
    assert_eq!(first["entity"]["client_ids"], json!(["c1"]));
    assert_eq!(first["purpose_of_event"], "treatment review");
    assert_eq!(first["correlation_id"], CORRELATION);
    assert_eq!(first["hash"].as_str().map(str::len), Some(64));
    assert_eq!(reads[1]["route"], "GET /api/v1/reports/attendance");
    assert!(
        seen.iter().all(|e| e["agent"]["role"] != "reporter"),
        "the aggregate form discloses no client"
    );

    let refused = entries(&app, &auditor, "?actor_id=dr-b").await;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["status"], 403);
    assert_eq!(refused[0]["outcome"], "4");
    let anonymous = entries(&app, &auditor, "?actor_id=anonymous").await;
    assert_eq!(anonymous.len(), 1);
    assert_eq!(anonymous[0]["status"], 401);
    assert!(anonymous[0]["agent"]["role"].is_null());

    // Writes are in the event log, not here; paging goes by seq.
    let all = entries(&app, &app.admin, "?limit=1000").await;
    assert!(all.iter().all(|e| e["action"] == "R"), "{all:#?}");
    let page = app.get("/api/v1/audit/access?limit=2", &app.admin).await;
    let next = page.body["next_after"].as_i64().expect("a next page");
    let rest = entries(&app, &app.admin, &format!("?after={next}&limit=1000")).await;
    assert_eq!(rest[0]["seq"], next + 1);
    let future = entries(&app, &app.admin, "?from=2199-01-01T00:00:00Z").await;
    assert!(future.is_empty());

    // The chain verifies from the stored text.
    let rows = app
        .state
        .store
        .read_access(&AccessFilter {
            limit: 10_000,
            ..AccessFilter::default()
        })
        .await
        .expect("read the log");
    assert!(rows.len() >= 8, "{}", rows.len());
    assert_eq!(verify_chain(&GENESIS, &rows), Ok(()));
}

#[tokio::test]
async fn a_read_that_cannot_be_recorded_is_not_answered() {
    let app = spawn_app().await;
    practice(&app).await;
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&app.database_url)
        .await
        .expect("connect to the test's schema");
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_access_log() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'unwritable for this test'; END $$;
         CREATE TRIGGER unwritable BEFORE INSERT ON access_log
             FOR EACH ROW EXECUTE FUNCTION refuse_access_log();",
    )
    .execute(&mut db)
    .await
    .expect("make the access log unwritable");
    let read = app.get("/api/v1/clients/c1", &app.admin).await;
    assert_eq!(
        read.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        read.body
    );
    assert!(read.headers.contains_key("retry-after"));
    assert!(
        !read.body.to_string().contains("Ada"),
        "nothing disclosed: {}",
        read.body
    );
    let group = app.get("/api/v1/groups/grp-a", &app.admin).await;
    assert_eq!(group.status, StatusCode::SERVICE_UNAVAILABLE);
    // Reads without client data and writes do not depend on it.
    assert_eq!(
        app.get("/api/v1/groups", &app.admin).await.status,
        StatusCode::OK
    );
    sqlx::raw_sql("DROP TRIGGER unwritable ON access_log")
        .execute(&mut db)
        .await
        .expect("writable again");
    let read = app.get("/api/v1/clients/c1", &app.admin).await;
    assert_eq!(read.status, StatusCode::OK);
}

#[tokio::test]
async fn circle_purpose_is_short_plain_text_or_refused_naming_it() {
    let app = spawn_app().await;
    practice(&app).await;
    let long = "x".repeat(201);
    for bad in [long.as_str(), "care\tplan"] {
        let answer = app
            .send(
                Method::GET,
                "/api/v1/clients/c1",
                Some(&app.admin),
                &[("Circle-Purpose", bad)],
                None,
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(answer.field(), "Circle-Purpose");
    }
    let fine = "x".repeat(200);
    let answer = app
        .send(
            Method::GET,
            "/api/v1/clients/c1",
            Some(&app.admin),
            &[("Circle-Purpose", fine.as_str())],
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// Appends, reads with each filter, verifies the chain, and tries `update`, which
/// `execute` must see refused.
async fn append_only_chain<F, Fut>(store: Store, update: &str, execute: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let access = |who: &str, clients: &[&str]| NewAccess {
        recorded: chrono::Utc::now(),
        agent_who: who.into(),
        client_ids: clients.iter().map(|c| c.to_string()).collect(),
        entry: json!({"agent": {"who": who}}),
    };
    store
        .append_access(&[access("a", &["c1", "c2"]), access("b", &["c2"])])
        .await
        .expect("first batch");
    store
        .append_access(&[access("a", &["c3"])])
        .await
        .expect("second batch");
    let read = |client_id: Option<&str>, actor_id: Option<&str>| AccessFilter {
        client_id: client_id.map(String::from),
        actor_id: actor_id.map(String::from),
        limit: 100,
        ..AccessFilter::default()
    };
    let all = store.read_access(&read(None, None)).await.expect("read");
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(verify_chain(&GENESIS, &all), Ok(()));
    let c2 = store
        .read_access(&read(Some("c2"), None))
        .await
        .expect("read");
    assert_eq!(c2.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    let by_a = store
        .read_access(&read(Some("c3"), Some("a")))
        .await
        .expect("read");
    assert_eq!(by_a.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
    let after = AccessFilter {
        after: 1,
        limit: 1,
        ..AccessFilter::default()
    };
    let page = store.read_access(&after).await.expect("read");
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
    assert!(
        !execute(update.to_string()).await,
        "{update} must be refused"
    );
}

#[tokio::test]
async fn the_access_log_store_is_append_only_and_chained_on_postgres() {
    let store = postgres_store().await;
    let Store::Postgres(pg) = &store else {
        unreachable!("a PostgreSQL store")
    };
    let pool = pg.pool().clone();
    let execute = |sql: String| {
        let pool = pool.clone();
        async move { sqlx::query(&sql).execute(&pool).await.is_ok() }
    };
    let update = "UPDATE access_log SET entry = '{}' WHERE seq = 1";
    append_only_chain(store.clone(), update, execute).await;
    for statement in ["DELETE FROM access_log", "TRUNCATE access_log_clients"] {
        assert!(
            sqlx::query(statement).execute(&pool).await.is_err(),
            "{statement}"
        );
    }
}

#[tokio::test]
async fn the_access_log_store_is_append_only_and_chained_on_sqlite() {
    let dir = fresh_data_dir();
    let store = Store::embedded(&dir).await.expect("open embedded store");
    let file = dir.join("circle.sqlite3");
    let execute = |sql: String| async move {
        let url = format!("sqlite://{}", file.display());
        let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("open the SQLite file");
        sqlx::query(&sql).execute(&mut db).await.is_ok()
    };
    append_only_chain(store, "DELETE FROM access_log WHERE seq = 1", execute).await;
}

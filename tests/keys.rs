//! Tokens and keys (issue 7): secrets stay out of logs and answers, tokens are
//! managed and revoked at once on every instance, the master key is checked, erasure
//! stops clinical writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use circle_services::app::Application;
use circle_services::config::{Overrides, Settings};
use circle_services::crypto::Vault;
use circle_tests::process::{circle_binary, CircleProcess};
use circle_tests::{fresh_schema_url, spawn_app, spawn_app_on, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// The password in the test database URL (`user:password@host`).
fn url_password(url: &str) -> String {
    let after_scheme = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let userinfo = after_scheme.split_once('@').map(|(u, _)| u).unwrap_or("");
    userinfo
        .split_once(':')
        .map(|(_, p)| p.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn secrets_never_reach_the_log_or_an_answer() {
    let url = fresh_schema_url().await;
    let password = url_password(&url);
    assert!(
        !password.is_empty(),
        "the test database URL carries a password"
    );
    let admin = format!("admin-{}", Uuid::new_v4().simple());
    let master_key = Vault::generate_master_key();
    let circle = CircleProcess::serve(&[
        ("CIRCLE_DATABASE_URL", url.as_str()),
        ("CIRCLE_ADMIN_TOKEN", admin.as_str()),
        ("CIRCLE_MASTER_KEY", master_key.as_str()),
        ("RUST_LOG", "debug"),
    ]);
    circle.wait_ready(Duration::from_secs(20)).await;
    let http = reqwest::Client::new();
    let mut bodies = String::new();
    let wrong = format!("wrong-{}", Uuid::new_v4().simple());
    for token in [admin.as_str(), wrong.as_str()] {
        for (method, path, body) in [
            (Method::GET, "/api/v1/groups", None),
            (
                Method::POST,
                "/api/v1/clients",
                Some(serde_json::json!({"client_id": "cli-secret-1"})),
            ),
            (Method::GET, "/api/v1/nowhere", None),
        ] {
            let mut request = http
                .request(method, format!("{}{path}", circle.base))
                .bearer_auth(token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let answer = request.send().await.unwrap();
            bodies.push_str(&answer.text().await.unwrap());
        }
    }
    // A failed login reads the same whether or not the token ever existed.
    let unknown = http
        .get(format!("{}/api/v1/groups", circle.base))
        .bearer_auth(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    let unknown: Value = unknown.json().await.unwrap();
    let missing: Value = http
        .get(format!("{}/api/v1/groups", circle.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unknown, missing);

    // A start that fails (no such database) says why without the URL's secret.
    let bad_url = url
        .replacen(&format!(":{password}@"), ":not-the-password-7c1e@", 1)
        .replacen("/circle_test", "/no_such_database_3b9", 1);
    assert!(bad_url.contains("no_such_database_3b9"), "{bad_url}");
    let mut refused = CircleProcess::serve(&[
        ("CIRCLE_DATABASE_URL", bad_url.as_str()),
        ("CIRCLE_ADMIN_TOKEN", admin.as_str()),
        ("CIRCLE_MASTER_KEY", master_key.as_str()),
        ("RUST_LOG", "debug"),
    ]);
    let _ = refused.exit_status(Duration::from_secs(3)).await;
    refused.kill();
    assert!(
        refused.log_text().contains("connecting to PostgreSQL"),
        "{}",
        refused.log_text()
    );

    let logs = format!("{}\n{}", circle.log_text(), refused.log_text());
    assert!(logs.contains("circle is ready"), "{logs}");
    for (what, secret) in [
        ("admin token", admin.as_str()),
        ("wrong token", wrong.as_str()),
        ("master key", master_key.as_str()),
        ("database password", password.as_str()),
        ("wrong database password", "not-the-password-7c1e"),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the log:\n{logs}");
        assert!(!bodies.contains(secret), "the {what} is in an answer");
    }
}

/// Issues a token through the API as the app's admin; returns (secret, id).
async fn issue(app: &TestApp, body: Value) -> (String, String) {
    let issued = app.post("/api/v1/tokens", &app.admin, body).await;
    assert_eq!(issued.status, StatusCode::CREATED, "{:?}", issued.body);
    (
        issued.body["token"].as_str().unwrap().to_string(),
        issued.body["token_id"].as_str().unwrap().to_string(),
    )
}

/// Revokes a token through `app`'s API as `by`.
async fn revoke(app: &TestApp, by: &str, token_id: &str) -> circle_tests::Answer {
    let path = format!("/api/v1/tokens/{token_id}/revocation");
    app.post(&path, by, json!({})).await
}

/// The token stream's events in the log, as (type, actor role, payload).
async fn token_events(app: &TestApp, token_id: &str) -> Vec<(String, String, Value)> {
    let log = app.state.store.read_all(0, 10_000).await.unwrap();
    log.into_iter()
        .filter(|e| e.aggregate_type == "token" && e.aggregate_id == token_id)
        .map(|e| (e.event_type, e.actor_role, e.payload))
        .collect()
}

#[tokio::test]
async fn a_revoked_token_is_refused_at_once_on_every_instance() {
    let first = spawn_app().await;
    let second = spawn_app_on(&first.database_url).await;
    let (token, token_id) = issue(
        &first,
        json!({"role": "clinician", "clinician_id": "dr_rev", "label": "Dr Rev's laptop"}),
    )
    .await;
    // Seen (and, before, cached) by both instances.
    for app in [&first, &second] {
        assert_eq!(
            app.get("/api/v1/groups", &token).await.status,
            StatusCode::OK
        );
    }
    let revoked = revoke(&first, &first.admin, &token_id).await;
    assert_eq!(revoked.status, StatusCode::OK, "{:?}", revoked.body);
    assert!(revoked.body["revoked_at"].is_string());
    let unknown = second
        .get("/api/v1/groups", "never-issued-token-0123456789")
        .await;
    for app in [&second, &first] {
        let refused = app.get("/api/v1/groups", &token).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        // A refused token reads exactly like one that never existed.
        assert_eq!(refused.body, unknown.body);
    }
    // The audit feed says who granted access to whom, and who ended it.
    let events = token_events(&first, &token_id).await;
    let kinds: Vec<&str> = events.iter().map(|(t, ..)| t.as_str()).collect();
    assert_eq!(kinds, ["TokenIssued", "TokenRevoked"]);
    assert_eq!(events[0].1, "admin");
    assert_eq!(events[0].2["clinician_id"], "dr_rev");
    assert_eq!(events[0].2["role"], "clinician");
    assert!(
        !events[0].2.to_string().contains(&token),
        "no secret in the log"
    );
    // Revoking again writes nothing more.
    let again = revoke(&second, &second.admin, &token_id).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(token_events(&first, &token_id).await.len(), 2);
}

#[tokio::test]
async fn requests_arriving_together_are_each_answered_for_their_own_token() {
    // Lookups that arrive together share one query: each must still get its own row.
    let app = Arc::new(spawn_app().await);
    let (clinician, _) = issue(
        &app,
        json!({"role": "clinician", "clinician_id": "dr_many", "label": "ward"}),
    )
    .await;
    let (revoked, revoked_id) = issue(&app, json!({"role": "auditor", "label": "gone"})).await;
    assert_eq!(
        revoke(&app, &app.admin, &revoked_id).await.status,
        StatusCode::OK
    );
    let tokens = [
        (app.admin.clone(), StatusCode::OK),
        (clinician, StatusCode::OK),
        (revoked, StatusCode::UNAUTHORIZED),
        (
            "never-issued-token-0123456789".to_string(),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    let mut requests = tokio::task::JoinSet::new();
    for round in 0..40 {
        let (token, expected) = tokens[round % tokens.len()].clone();
        let app = app.clone();
        requests.spawn(async move { (app.get("/api/v1/groups", &token).await.status, expected) });
    }
    while let Some(answered) = requests.join_next().await {
        let (status, expected) = answered.unwrap();
        assert_eq!(status, expected);
    }
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let app = spawn_app().await;
    let expires_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let (token, _) = issue(
        &app,
        json!({"role": "auditor", "label": "short visit", "expires_at": expires_at.to_rfc3339()}),
    )
    .await;
    assert_eq!(
        app.get("/api/v1/groups", &token).await.status,
        StatusCode::OK
    );
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(1600)).await;
    assert_eq!(
        app.get("/api/v1/groups", &token).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn no_request_after_a_revocation_commits_succeeds() {
    let first = spawn_app().await;
    let second = Arc::new(spawn_app_on(&first.database_url).await);
    let (token, token_id) = issue(&first, json!({"role": "auditor"})).await;
    let token = Arc::new(token);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (app, token, stop) = (second.clone(), token.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let status = app.get("/api/v1/groups", &token).await.status;
                seen.push((sent, status));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoked = revoke(&first, &first.admin, &token_id).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let committed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut before = 0;
    let mut after = 0;
    for reader in readers {
        for (sent, status) in reader.await.unwrap() {
            if sent > committed {
                after += 1;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "a request after the revocation"
                );
            } else if status == StatusCode::OK {
                before += 1;
            }
        }
    }
    assert!(before > 0 && after > 0, "{before} before, {after} after");
}

/// Extra request headers, as (name, value).
type Headers = Vec<(&'static str, String)>;

/// A write goes in on a token its instance read live before, and the commit checks
/// the token instead of one more read: once the revocation has answered, on another
/// instance, that token writes nothing, and every other answer it would have had (a
/// refused body, a replayed key, a domain refusal, a refused header) is the plain
/// 401. Each case has its own token, known live on `second` until its revocation.
#[tokio::test]
async fn a_revoked_token_writes_nothing_on_an_instance_that_knew_it_live() {
    let first = spawn_app().await;
    let second = spawn_app_on(&first.database_url).await;
    let post = |token: &str, path: &str, headers: Headers, body: Value| {
        let (second, token, path) = (&second, token.to_string(), path.to_string());
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            second
                .send(Method::POST, &path, Some(&token), &headers, Some(&body))
                .await
        }
    };
    let key = |k: &str| vec![("Idempotency-Key", k.to_string())];
    let group = |id: &str| {
        json!({"group_id": id, "name": "G", "focus": "anxiety", "format": "open",
               "capacity": 8, "facilitators": ["dr_a"]})
    };
    let cases: Vec<(&str, &str, Headers, Value)> = vec![
        // Decided and refused by the commit: registration (per-append loop) and a new
        // group (PostgreSQL's set-based fast path).
        (
            "registration",
            "/api/v1/clients",
            vec![],
            json!({"client_id": "c-new"}),
        ),
        ("new group", "/api/v1/groups", vec![], group("g-new")),
        // Never reaching a commit: the guard reads the token before answering.
        (
            "bad body",
            "/api/v1/clients",
            vec![],
            json!({"client_id": "c-x", "birth_year": "x"}),
        ),
        (
            "replayed key",
            "/api/v1/clients",
            key("k-before"),
            json!({"client_id": "c-before-0"}),
        ),
        (
            "domain refusal",
            "/api/v1/clients",
            vec![],
            json!({"client_id": "c-before-0"}),
        ),
        (
            "bad purpose",
            "/api/v1/clients",
            vec![("Circle-Purpose", "p".repeat(201))],
            json!({"client_id": "c-y"}),
        ),
    ];
    for (n, (case, path, headers, body)) in cases.into_iter().enumerate() {
        let (token, token_id) = issue(&first, json!({"role": "admin"})).await;
        // Known live on `second`: it wrote there (the first case's key with it).
        let before = json!({"client_id": format!("c-before-{n}")});
        let headers_before = if n == 0 { key("k-before") } else { vec![] };
        let known = post(&token, "/api/v1/clients", headers_before, before).await;
        assert_eq!(
            known.status,
            StatusCode::CREATED,
            "{case}: {:?}",
            known.body
        );
        let revoked = revoke(&first, &first.admin, &token_id).await;
        assert_eq!(revoked.status, StatusCode::OK);
        let head = second.head().await;
        let answer = post(&token, path, headers, body).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{case}: {:?}",
            answer.body
        );
        assert_eq!(
            answer.body["detail"],
            circle_services::http::Problem::unauthorized().detail,
            "{case}"
        );
        assert_eq!(second.head().await, head, "{case}: nothing was written");
    }
}

#[tokio::test]
async fn tokens_are_managed_by_admins_only_and_checked() {
    let app = spawn_app().await;
    let clinician = app
        .token(circle_services::auth::Role::Clinician, Some("dr_x"))
        .await;
    for (body, status, field) in [
        (
            json!({"role": "superuser"}),
            StatusCode::BAD_REQUEST,
            "role",
        ),
        (
            json!({"role": "admin", "scope": "all"}),
            StatusCode::BAD_REQUEST,
            "scope",
        ),
        (
            json!({"role": "clinician"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "clinician_id",
        ),
        (
            json!({"role": "admin", "clinician_id": "dr_x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "clinician_id",
        ),
        (
            json!({"role": "admin", "expires_at": "2001-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expires_at",
        ),
        (
            json!({"role": "admin", "label": " "}),
            StatusCode::BAD_REQUEST,
            "label",
        ),
    ] {
        let refused = app.post("/api/v1/tokens", &app.admin, body.clone()).await;
        assert_eq!(refused.status, status, "{body}: {:?}", refused.body);
        assert_eq!(refused.field(), field, "{body}");
    }
    let forbidden = app
        .post("/api/v1/tokens", &clinician, json!({"role": "admin"}))
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/api/v1/tokens", &clinician).await.status,
        StatusCode::FORBIDDEN
    );
    let (secret, token_id) = issue(&app, json!({"role": "reporter", "label": "board pack"})).await;
    let listed = app.get("/api/v1/tokens", &app.admin).await;
    assert_eq!(listed.status, StatusCode::OK);
    let text = listed.body.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&app.admin),
        "no secret listed"
    );
    let row = listed.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["token_id"] == token_id.as_str())
        .expect("the new token is listed")
        .clone();
    assert_eq!(row["role"], "reporter");
    assert_eq!(row["label"], "board pack");
    assert!(row["revoked_at"].is_null() && row["created_at"].is_string());
    let missing = app
        .post(
            "/api/v1/tokens/tok_nothing/revocation",
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

fn settings(url: &str, admin_token: Option<&str>) -> Settings {
    Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(url.to_string()),
            admin_token: admin_token.map(String::from),
            master_key: Some(circle_tests::master_key_for(url)),
            ..Overrides::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn admin_tokens_do_not_pile_up_and_must_be_strong() {
    let url = fresh_schema_url().await;
    let weak = Application::build(&settings(&url, Some("a")))
        .await
        .err()
        .expect("a one-letter admin token is refused");
    assert!(
        format!("{weak:#}").contains("at least 24 characters"),
        "{weak:#}"
    );
    let first = Application::build(&settings(&url, None)).await.unwrap();
    let generated = first
        .generated_admin_token
        .clone()
        .expect("the first start makes one");
    let store = first.state().store.clone();
    drop(first);
    for _ in 0..2 {
        let again = Application::build(&settings(&url, None)).await.unwrap();
        assert!(
            again.generated_admin_token.is_none(),
            "a restart makes no new admin token"
        );
    }
    let admins: Vec<_> = store
        .list_tokens()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.role == "admin")
        .collect();
    assert_eq!(admins.len(), 1, "{admins:?}");
    assert_eq!(admins[0].label, "generated at start");
    // Once every admin token is revoked, the next start makes a new one.
    circle_services::tokens::revoke(
        &store,
        &admins[0].token_id,
        circle_services::tokens::operator("test"),
    )
    .await
    .unwrap();
    let after = Application::build(&settings(&url, None)).await.unwrap();
    assert!(after.generated_admin_token.is_some_and(|t| t != generated));
}

#[tokio::test]
async fn the_token_command_lists_and_revokes() {
    let url = fresh_schema_url().await;
    let circle = |args: &[&str]| {
        let output = std::process::Command::new(circle_binary())
            .args(args)
            .env("CIRCLE_DATABASE_URL", &url)
            .output()
            .expect("run circle");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let created = circle(&[
        "token",
        "create",
        "--role",
        "auditor",
        "--label",
        "inspector",
        "--expires-in-days",
        "7",
    ]);
    let token_id = created
        .split_whitespace()
        .find(|w| w.starts_with("tok_"))
        .expect("the id is printed")
        .trim_end_matches(':')
        .to_string();
    let secret = created.split_whitespace().last().unwrap().to_string();
    let listed = circle(&["token", "list"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with(&token_id))
        .expect("listed");
    assert!(
        row.contains("auditor") && row.contains("inspector"),
        "{row}"
    );
    assert!(!listed.contains(&secret), "the secret is never listed");
    assert!(circle(&["token", "revoke", &token_id]).contains("revoked"));
    let listed = circle(&["token", "list"]);
    let row = listed.lines().find(|l| l.starts_with(&token_id)).unwrap();
    assert!(!row.ends_with("\t-"), "revoked_at is set: {row}");
}

/// Builds and runs a Circle on `settings`; its base URL, or why it refused to start.
async fn start(settings: &Settings) -> anyhow::Result<String> {
    let app = Application::build(settings).await?;
    let base = format!("http://{}", app.local_addr()?);
    tokio::spawn(app.run(std::future::pending()));
    Ok(base)
}

/// A start that must be refused, saying `why`.
async fn refused(settings: &Settings, why: &str) {
    let error = start(settings).await.expect_err(why);
    assert!(format!("{error:#}").contains(why), "{error:#}");
}

async fn register(base: &str, admin: &str, client_id: &str) {
    let answer = reqwest::Client::new()
        .post(format!("{base}/api/v1/clients"))
        .bearer_auth(admin)
        .json(&json!({"client_id": client_id, "display_name": "Kim Keycheck"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
}

const ADMIN: &str = "admin-token-for-key-checks-0123456789";

#[tokio::test]
async fn a_wrong_master_key_is_refused_at_start() {
    let url = fresh_schema_url().await;
    let with_key = |key: &str| {
        let mut settings = settings(&url, Some(ADMIN));
        settings.master_key = Some(circle_services::secret::Secret::new(key));
        settings
    };
    let (right, wrong) = (Vault::generate_master_key(), Vault::generate_master_key());
    let base = start(&with_key(&right)).await.unwrap();
    register(&base, ADMIN, "cli-kc").await;
    refused(&with_key(&wrong), "key check failed").await;
    start(&with_key(&right))
        .await
        .expect("the right key starts");

    // A store sealed before key checks existed: a client's wrapped key decides.
    let store = circle_services::store::Store::postgres(&url, 2)
        .await
        .unwrap();
    let circle_services::store::Store::Postgres(pg) = &store else {
        unreachable!()
    };
    sqlx::query("DELETE FROM key_check")
        .execute(pg.pool())
        .await
        .unwrap();
    refused(&with_key(&wrong), "key check failed").await;
    start(&with_key(&right))
        .await
        .expect("the right key starts");
    assert!(
        store.key_check().await.unwrap().is_some(),
        "and the check is stored"
    );
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn the_embedded_key_file_is_private_and_never_replaced_over_sealed_data() {
    use std::os::unix::fs::PermissionsExt;
    let dir = circle_tests::fresh_data_dir();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let embedded = |master_key: Option<String>| {
        Settings::load(
            None,
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                data_dir: Some(dir.clone()),
                admin_token: Some(ADMIN.into()),
                master_key,
                ..Overrides::default()
            },
        )
        .unwrap()
    };
    let base = start(&embedded(None)).await.unwrap();
    register(&base, ADMIN, "cli-embedded").await;
    let key_file = dir.join("master.key");
    assert_eq!(mode(&dir), 0o700, "the data directory");
    for name in ["master.key", "circle.sqlite3", "circle.sqlite3-wal"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(&embedded(None), "must be 0600").await;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let other = Some(Vault::generate_master_key());
    refused(&embedded(other), "key check failed").await;

    let kept = std::fs::read_to_string(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    refused(&embedded(None), "is missing").await;
    assert!(!key_file.exists(), "no new key over sealed data");
    std::fs::write(&key_file, kept).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    start(&embedded(None))
        .await
        .expect("the restored key starts");
}

/// A group `g1` facilitated by `dr_a` with client `c1` a member since 2026-01-06 and
/// a session `s1` on 2026-01-13.
async fn group_with_member(app: &TestApp) {
    let admin = &app.admin;
    for (path, body) in [
        (
            "/api/v1/groups",
            json!({"group_id": "g1", "name": "Tuesday", "focus": "anxiety", "format": "open",
                   "capacity": 10, "facilitators": ["dr_a"]}),
        ),
        (
            "/api/v1/clients",
            json!({"client_id": "c1", "display_name": "Erin Erased"}),
        ),
        (
            "/api/v1/groups/g1/members",
            json!({"client_id": "c1", "joined_on": "2026-01-06"}),
        ),
        (
            "/api/v1/groups/g1/sessions",
            json!({"session_id": "s1", "starts_at": "2026-01-13T18:00:00+01:00", "duration_minutes": 90}),
        ),
    ] {
        let answer = app.post(path, admin, body).await;
        assert!(answer.status.is_success(), "{path}: {:?}", answer.body);
    }
}

/// Every clinical write that names `c1`, as (path, body).
fn clinical_writes(n: usize) -> Vec<(String, Value)> {
    vec![
        (
            "/api/v1/groups/g1/sessions/s1/feedback".into(),
            json!({"client_id": "c1", "instrument": "PHQ-9", "items": [1, 0, 0, 0, 0, 0, 0, 0, n % 2]}),
        ),
        (
            "/api/v1/groups/g1/sessions/s1/attendance".into(),
            json!({"records": [{"client_id": "c1", "status": if n.is_multiple_of(2) { "present" } else { "late" }}]}),
        ),
        (
            "/api/v1/clients/c1/measures".into(),
            json!({"instrument": "PHQ-9", "items": [0, 0, 0, 0, 0, 0, 0, 0, n % 2],
                   "administered_at": "2026-01-14T10:00:00Z", "group_id": "g1"}),
        ),
        (
            "/api/v1/clients/c1/goals".into(),
            json!({"title": format!("goal {n}"), "group_id": "g1", "set_on": "2026-01-13"}),
        ),
    ]
}

async fn erase(app: &TestApp) -> i64 {
    let erased = app
        .post(
            "/api/v1/clients/c1/erasure",
            &app.admin,
            json!({"reason": "client_request"}),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{:?}", erased.body);
    erased.position()
}

#[tokio::test]
async fn erasure_ends_memberships_and_refuses_every_later_clinical_write() {
    let app = spawn_app().await;
    group_with_member(&app).await;
    for (path, body) in clinical_writes(0) {
        let before = app.post(&path, &app.admin, body).await;
        assert!(
            before.status.is_success(),
            "{path} before erasure: {:?}",
            before.body
        );
    }
    let erased_at = erase(&app).await;
    let head = app.head().await;
    for (path, body) in clinical_writes(1) {
        let refused = app.post(&path, &app.admin, body).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {:?}",
            refused.body
        );
    }
    assert_eq!(app.head().await, head, "nothing stored");
    // The membership ended with the erasure, before it.
    let log = app.state.store.read_all(0, 1000).await.unwrap();
    let left = log
        .iter()
        .find(|e| e.event_type == "MemberLeft" && e.payload["client_id"] == "c1")
        .expect("the membership ended");
    assert!(left.position < erased_at);
    let group = app.get("/api/v1/groups/g1", &app.admin).await;
    assert!(!group.body.to_string().contains("Erin"));
}

#[tokio::test]
async fn no_clinical_write_naming_an_erased_client_commits_after_its_erasure() {
    let first = Arc::new(spawn_app().await);
    let second = Arc::new(spawn_app_on(&first.database_url).await);
    group_with_member(&first).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (app, stop) = (
            if w % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            },
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (path, body) = clinical_writes(n).swap_remove(n % 4);
                let _ = app.post(&path, &app.admin, body).await;
                n += 8;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let erased_at = erase(&first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let log = first.state.store.read_all(0, 100_000).await.unwrap();
    let before = log.iter().filter(|e| e.position < erased_at).count();
    let late: Vec<_> = log
        .iter()
        .filter(|e| e.position > erased_at && e.payload.to_string().contains("\"c1\""))
        .map(|e| (e.position, e.event_type.clone()))
        .collect();
    assert!(before > 10, "the writers ran before the erasure");
    assert!(late.is_empty(), "written after ClientErased: {late:?}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An embedded Circle in `dir` (its own `master.key`), with the test admin token.
fn embedded_in(dir: &std::path::Path) -> Settings {
    Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.to_path_buf()),
            admin_token: Some(ADMIN.into()),
            ..Overrides::default()
        },
    )
    .unwrap()
}

async fn wrapped_key(store: &circle_services::store::Store, client_id: &str) -> Vec<u8> {
    match store.client_key(client_id).await.unwrap() {
        circle_services::store::ClientKey::Wrapped(key) => key,
        other => panic!("{client_id}: {other:?}"),
    }
}

async fn erase_client(base: &str, client_id: &str) {
    let answer = reqwest::Client::new()
        .post(format!("{base}/api/v1/clients/{client_id}/erasure"))
        .bearer_auth(ADMIN)
        .json(&json!({"reason": "client_request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_erased_key_is_gone_from_the_sqlite_files() {
    let dir = circle_tests::fresh_data_dir();
    let base = start(&embedded_in(&dir)).await.unwrap();
    register(&base, ADMIN, "cli-gone").await;
    let store = circle_services::store::Store::embedded(&dir).await.unwrap();
    let key = wrapped_key(&store, "cli-gone").await;
    let files = || {
        ["circle.sqlite3", "circle.sqlite3-wal"]
            .iter()
            .map(|name| std::fs::read(dir.join(name)).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert!(
        files().iter().any(|f| contains(f, &key)),
        "the key is on disk at first"
    );
    erase_client(&base, "cli-gone").await;
    for (name, bytes) in ["circle.sqlite3", "circle.sqlite3-wal"].iter().zip(files()) {
        assert!(!contains(&bytes, &key), "the erased key is still in {name}");
    }
}

#[tokio::test]
async fn erasure_rewrites_the_postgres_key_table() {
    let app = spawn_app().await;
    group_with_member(&app).await;
    let circle_services::store::Store::Postgres(pg) = &app.state.store else {
        unreachable!()
    };
    let filenode = || async {
        sqlx::query_scalar::<_, String>("SELECT pg_relation_filepath('client_keys')")
            .fetch_one(pg.pool())
            .await
            .unwrap()
    };
    let before = filenode().await;
    erase(&app).await;
    // VACUUM FULL wrote a new file: the old one, with the dead row's bytes, is gone.
    assert_ne!(filenode().await, before);
}

/// Like [`start`], with a sender that shuts the instance down and a handle that
/// ends when it has.
async fn start_stoppable(
    settings: &Settings,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let app = Application::build(settings).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        app.run(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (base, stop, running)
}

#[tokio::test]
async fn a_rotated_master_key_opens_live_keys_and_no_erased_one() {
    let dir = circle_tests::fresh_data_dir();
    let (base, stop, running) = start_stoppable(&embedded_in(&dir)).await;
    register(&base, ADMIN, "cli-stays").await;
    register(&base, ADMIN, "cli-goes").await;
    let store = circle_services::store::Store::embedded(&dir).await.unwrap();
    let old_key = std::fs::read_to_string(dir.join("master.key")).unwrap();
    let erased_copy = wrapped_key(&store, "cli-goes").await; // as a backup keeps it
    erase_client(&base, "cli-goes").await;
    let running_refused = circle_services::app::rotate_master_key(&embedded_in(&dir), None)
        .await
        .err()
        .expect("refused while an instance runs");
    assert!(
        format!("{running_refused:#}").contains("stop every instance"),
        "{running_refused:#}"
    );
    stop.send(()).unwrap();
    running.await.unwrap();

    let rotation = circle_services::app::rotate_master_key(&embedded_in(&dir), None)
        .await
        .unwrap();
    assert_eq!(rotation.rewrapped, 1, "the live key only");
    assert!(
        rotation.new_key.is_none(),
        "the embedded store keeps it in its file"
    );
    let new_key = std::fs::read_to_string(dir.join("master.key")).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(mode(&dir.join("master.key")), 0o600);
    let (old, new) = (
        Vault::from_base64(&old_key).unwrap(),
        Vault::from_base64(&new_key).unwrap(),
    );
    // A kept copy of the erased key opened only with the old master key: destroyed
    // (replaced in the file), nothing opens it any more.
    assert!(old.unwraps(&erased_copy, "cli-goes"));
    assert!(!new.unwraps(&erased_copy, "cli-goes"));
    assert!(new.unwraps(&wrapped_key(&store, "cli-stays").await, "cli-stays"));

    let base = start(&embedded_in(&dir)).await.unwrap();
    let client: Value = reqwest::Client::new()
        .get(format!("{base}/api/v1/clients/cli-stays"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(client["personal"]["display_name"], "Kim Keycheck");
    let mut with_old = embedded_in(&dir);
    with_old.master_key = Some(circle_services::secret::Secret::new(old_key));
    refused(&with_old, "key check failed").await;
}

//! Test support: every test gets its own PostgreSQL schema (or SQLite directory) and
//! its own Circle on an ephemeral port, so tests run in parallel without sharing
//! anything but the servers.

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
    let admin = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let settings = Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(database_url.to_string()),
            admin_token: Some(admin.clone()),
            master_key: Some(Vault::generate_master_key()),
            ..Overrides::default()
        },
    )
    .expect("settings");
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
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
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

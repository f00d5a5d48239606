//! Tokens and keys (issue 7): secrets stay out of logs and answers, tokens are
//! managed and revoked at once on every instance, the master key is checked, erasure
//! stops clinical writes.

use std::time::Duration;

use circle_services::crypto::Vault;
use circle_tests::process::CircleProcess;
use circle_tests::fresh_schema_url;
use reqwest::Method;
use serde_json::Value;
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
    assert!(!password.is_empty(), "the test database URL carries a password");
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

//! The dashboard in a real browser: `tests/python/dashboard_browser.py` drives
//! Debian's Chromium (`/usr/bin/chromium`) with Playwright for Python against a
//! `circle demo` process, once on a fresh PostgreSQL schema and once on the embedded
//! store. `scripts/test` installs both when missing; no browser is ever downloaded.
//!
//! The script signs in and reads the caseload, opens a member's chart, records a
//! session's attendance (keyboard only) and a PHQ-9 through the forms, sees other tabs
//! update live, checks the CSRF refusal, the 403 page and the print stylesheet, and on
//! every page: no console error or failed request, axe-core finds nothing serious,
//! every field is labelled. With JavaScript off the forms still work.
//! Screenshots of every page at 1280x900 and 390 px wide go to `target/screenshots/`
//! (the embedded-store run repeats only the checks that touch the store).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use circle_services::crypto::Vault;
use circle_tests::process::CircleProcess;
use serde_json::json;

/// The demo clinician the script signs in as: the facilitator of the demo's open
/// PHQ-9 group, whose members are active today.
const CLINICIAN: &str = "dr-chen";

/// Where the screenshots go: the workspace's `target/screenshots/`.
fn screenshots() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // tests run from target/<profile>/deps.
    exe.ancestors()
        .nth(3)
        .expect("target directory")
        .join("screenshots")
}

/// Given a seeded demo practice at `circle`, when the browser script runs against
/// it, then every check passes; the script's output is the failure message.
/// `audit_pages`: every check, with axe-core and the photographs; otherwise the
/// checks that touch the store.
async fn browser_checks_pass(circle: CircleProcess, admin: &str, label: &str, audit_pages: bool) {
    let seeding = Instant::now();
    circle.wait_ready(Duration::from_secs(60)).await;
    println!(
        "{label}: the demo practice was seeded and ready in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let issued = reqwest::Client::new()
        .post(format!("{}/api/v1/tokens", circle.base))
        .bearer_auth(admin)
        .json(&json!({"role": "clinician", "clinician_id": CLINICIAN, "label": "browser test"}))
        .send()
        .await
        .expect("issue a clinician token");
    assert_eq!(issued.status(), 201, "{}", circle.log_text());
    let issued: serde_json::Value = issued.json().await.expect("token JSON");
    let clinician = issued["token"].as_str().expect("token").to_string();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/dashboard_browser.py");
    let started = Instant::now();
    let run = tokio::task::spawn_blocking({
        let base = circle.base.clone();
        let admin = admin.to_string();
        let label = label.to_string();
        move || {
            let mut command = Command::new("python3");
            command
                .arg(script)
                .args(["--base", &base, "--admin-token", &admin])
                .args(["--clinician-token", &clinician, "--label", &label]);
            if audit_pages {
                command.arg("--screenshots").arg(screenshots());
            } else {
                command.arg("--second-store");
            }
            command.output()
        }
    })
    .await
    .expect("join")
    .expect("python3 runs (scripts/test installs playwright and chromium)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!(
        "{label}: the browser checks ran in {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        run.status.success(),
        "the browser checks failed on the {label} store:\n{stdout}\n{stderr}\ncircle's log:\n{}",
        circle.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_chromium_on_postgresql() {
    let url = circle_tests::fresh_schema_url().await;
    let admin = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let master_key = Vault::generate_master_key();
    let circle = CircleProcess::start(
        "demo",
        &[
            ("CIRCLE_DATABASE_URL", url.as_str()),
            ("CIRCLE_ADMIN_TOKEN", admin.as_str()),
            ("CIRCLE_MASTER_KEY", master_key.as_str()),
            ("RUST_LOG", "warn"),
        ],
    );
    browser_checks_pass(circle, &admin, "postgres", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_chromium_on_the_embedded_store() {
    let data_dir = circle_tests::fresh_data_dir();
    let admin = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let circle = CircleProcess::start(
        "demo",
        &[
            ("CIRCLE_DATA_DIR", data_dir.to_str().expect("utf-8 path")),
            ("CIRCLE_ADMIN_TOKEN", admin.as_str()),
            ("RUST_LOG", "warn"),
        ],
    );
    // The same pages from the other store: the checks that touch the store (sign-in,
    // reads, the forms' writes, live updates). The pages' HTML, CSRF, the policy and
    // JavaScript-off do not depend on the store: they are the PostgreSQL run's.
    browser_checks_pass(circle, &admin, "embedded", false).await;
}

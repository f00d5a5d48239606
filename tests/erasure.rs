//! Erasure proven end to end (issue 7, item 5): a client with a unique name, contact,
//! birth year and goal title joins a group, answers questionnaires, appears in
//! reports and on NATS, and is erased. Then none of their personal data, in plain,
//! base64 or hex form, is anywhere it could have reached: the database (a `pg_dump`
//! of the test's schema, or the embedded store's files), the NATS streams' stored
//! messages, the projection checkpoints, or the log of the `circle serve` process;
//! nor is their wrapped key. The client reads as erased, reports still count them
//! by their pseudonymous id, the audit chain verifies, and nothing more can be
//! recorded for them.
//!
//! The same scenario runs on PostgreSQL and on the embedded store.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use base64::Engine;
use circle_services::crypto::Vault;
use circle_services::store::{ClientKey, Store};
use circle_tests::jetstream::report_at;
use circle_tests::process::CircleProcess;
use circle_tests::{database_url, fresh_data_dir, fresh_namespace, fresh_schema_url, nats_url};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

const ADMIN: &str = "erasure-test-admin-token-0123456789abcdef";

/// Where the scenario's Circle keeps its data.
enum Backend {
    Postgres { url: String },
    Embedded { dir: PathBuf },
}

impl Backend {
    async fn store(&self) -> Store {
        match self {
            Backend::Postgres { url } => Store::postgres(url, 2).await.unwrap(),
            Backend::Embedded { dir } => Store::embedded(dir).await.unwrap(),
        }
    }

    /// Every byte the store keeps: a `pg_dump` of the test's schema, or every file
    /// of the embedded data directory but the master key.
    fn stored_bytes(&self) -> Vec<(String, Vec<u8>)> {
        match self {
            Backend::Postgres { url } => {
                let schema = url
                    .split("search_path%3D")
                    .nth(1)
                    .expect("the schema in the test URL");
                let dump = std::process::Command::new("pg_dump")
                    .args(["--dbname", &database_url(), "--schema", schema])
                    .output()
                    .expect("pg_dump runs");
                assert!(
                    dump.status.success(),
                    "pg_dump: {}",
                    String::from_utf8_lossy(&dump.stderr)
                );
                assert!(
                    String::from_utf8_lossy(&dump.stdout).contains("COPY"),
                    "the dump holds the tables' data"
                );
                vec![(format!("pg_dump of {schema}"), dump.stdout)]
            }
            Backend::Embedded { dir } => std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.file_name().is_some_and(|n| n != "master.key"))
                .filter(|path| path.is_file())
                .map(|path| (path.display().to_string(), std::fs::read(&path).unwrap()))
                .collect(),
        }
    }
}

/// A `circle serve` child process over HTTP, as an admin.
struct Circle {
    process: CircleProcess,
    http: reqwest::Client,
}

impl Circle {
    async fn start(backend: &Backend, namespace: &str) -> Circle {
        let config = fresh_data_dir().join("circle.toml");
        // k = 1: the reports carry the client's own figures, so they can leak them.
        let settings = format!(
            "nats_namespace = \"{namespace}\"\nreporter_min_count = 1\nnats_coalesce_ms = 50\n"
        );
        std::fs::write(&config, settings).unwrap();
        let master_key = Vault::generate_master_key();
        let nats = nats_url();
        let mut env = vec![
            ("CIRCLE_ADMIN_TOKEN", ADMIN),
            ("CIRCLE_CONFIG", config.to_str().unwrap()),
            ("CIRCLE_NATS_URL", nats.as_str()),
            // As much as Circle ever logs: none of it may carry personal data.
            ("RUST_LOG", "debug"),
        ];
        match backend {
            Backend::Postgres { url } => {
                env.push(("CIRCLE_DATABASE_URL", url));
                env.push(("CIRCLE_MASTER_KEY", master_key.as_str()));
            }
            Backend::Embedded { dir } => env.push(("CIRCLE_DATA_DIR", dir.to_str().unwrap())),
        }
        let process = CircleProcess::serve(&env);
        process.wait_ready(Duration::from_secs(30)).await;
        Circle {
            process,
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.process.base))
            .bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// A write that must succeed: its log position.
    async fn ok(&self, path: &str, body: Value) -> i64 {
        let (status, answer) = self.post(path, body).await;
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer["position"].as_i64().unwrap()
    }
}

/// The person: unique text in every personal field, and a goal title.
struct Person {
    client_id: String,
    name: String,
    contact: String,
    birth_year: i32,
    goal_title: String,
}

impl Person {
    fn unique() -> Person {
        let tag = Uuid::new_v4().simple().to_string();
        Person {
            client_id: format!("cli-{}", &tag[..12]),
            name: format!("Erasable Person {tag}"),
            contact: format!("erasable-{tag}@example.org"),
            // Unusual enough to look for beside its field name.
            birth_year: 1901 + (tag.as_bytes()[0] as i32 % 50),
            goal_title: format!("Erasable goal title {tag}"),
        }
    }

    /// Each personal text, and the birth year as its field holds it in JSON.
    fn texts(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("contact", self.contact.clone()),
            ("goal title", self.goal_title.clone()),
            ("birth year", format!("\"birth_year\":{}", self.birth_year)),
        ]
    }
}

/// Every form `text` can take inside stored bytes: itself, and its base64
/// (standard and URL-safe) and hex (lower and upper case). A base64 form depends
/// on where the text starts within a 3-byte group, so each of the three alignments
/// is looked for, without the characters its neighbours share.
fn forms(what: &str, text: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut forms = vec![(format!("{what} (plain)"), text.to_vec())];
    for (name, engine) in [
        ("base64", &base64::engine::general_purpose::STANDARD_NO_PAD),
        (
            "base64url",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ),
    ] {
        for offset in 0..3 {
            let mut shifted = vec![b'#'; offset];
            shifted.extend_from_slice(text);
            let encoded = engine.encode(&shifted);
            let start = if offset == 0 { 0 } else { 4 };
            // The last group may hold bytes that follow the text.
            let end = encoded.len().saturating_sub(4) / 4 * 4;
            if end > start + 8 {
                forms.push((
                    format!("{what} ({name}, offset {offset})"),
                    encoded.as_bytes()[start..end].to_vec(),
                ));
            }
        }
    }
    let hex: String = text.iter().map(|b| format!("{b:02x}")).collect();
    forms.push((format!("{what} (hex)"), hex.clone().into_bytes()));
    forms.push((format!("{what} (HEX)"), hex.to_uppercase().into_bytes()));
    forms
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that no form of any needle is in any of the places.
fn nowhere(needles: &[(String, Vec<u8>)], places: &[(String, Vec<u8>)]) {
    let mut found = Vec::new();
    for (place, bytes) in places {
        for (what, needle) in needles {
            if contains(bytes, needle) {
                found.push(format!("{what} in {place}"));
            }
        }
    }
    assert!(found.is_empty(), "erased data found: {found:#?}");
}

/// Every message stored in the stream, headers and payload, as one text per message.
async fn stream_messages(js: &jetstream::Context, name: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(mut stream) = js.get_stream(name).await else {
        return Vec::new();
    };
    let (first, last) = stream
        .info()
        .await
        .map(|info| (info.state.first_sequence, info.state.last_sequence))
        .unwrap();
    let mut messages = Vec::new();
    for sequence in first..=last {
        // A report replaced by a newer one on its subject is gone: nothing to read.
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let mut bytes = format!("{} {:?} ", message.subject, message.headers).into_bytes();
        bytes.extend_from_slice(&message.payload);
        messages.push((format!("{name} #{sequence}"), bytes));
    }
    messages
}

/// Waits until the events stream holds the event at `position`.
async fn published(js: &jetstream::Context, stream: &str, position: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(last_sequence) = s.info().await.map(|info| info.state.last_sequence) {
                if let Ok(last) = s.get_raw_message(last_sequence).await {
                    let at: i64 = last
                        .headers
                        .get("Circle-Position")
                        .and_then(|v| v.as_str().parse().ok())
                        .unwrap_or(0);
                    if at >= position {
                        return;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{stream} never reached {position}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_erased_client_leaves_no_trace(backend: Backend) {
    let ns = fresh_namespace();
    let circle = Circle::start(&backend, &ns).await;
    let person = Person::unique();
    let id = person.client_id.as_str();

    // Given a client who joins a group, is marked, answers a PHQ-9 twice, sets a goal.
    circle
        .ok(
            "/api/v1/clients",
            json!({"client_id": id, "display_name": person.name, "contact": person.contact,
                   "birth_year": person.birth_year}),
        )
        .await;
    circle
        .ok(
            "/api/v1/groups",
            json!({"group_id": "grp-e", "name": "Group", "focus": "anxiety", "format": "open",
                   "facilitators": ["dr_a"]}),
        )
        .await;
    circle
        .ok(
            "/api/v1/groups/grp-e/members",
            json!({"client_id": id, "joined_on": "2026-01-01"}),
        )
        .await;
    for (n, items) in [[3, 3, 3, 3, 3, 3, 3, 3, 1], [1, 1, 1, 1, 1, 1, 1, 1, 0]]
        .iter()
        .enumerate()
    {
        let session = format!("grp-e-s{n}");
        circle
            .ok(
                "/api/v1/groups/grp-e/sessions",
                json!({"session_id": session, "starts_at": format!("2026-01-{:02}T18:00:00+00:00", 5 + 7 * n),
                       "duration_minutes": 90}),
            )
            .await;
        circle
            .ok(
                &format!("/api/v1/groups/grp-e/sessions/{session}/attendance"),
                json!({"records": [{"client_id": id, "status": "present"}]}),
            )
            .await;
        circle
            .ok(
                &format!("/api/v1/groups/grp-e/sessions/{session}/feedback"),
                json!({"client_id": id, "instrument": "PHQ-9", "items": items}),
            )
            .await;
    }
    let before = circle
        .ok(
            &format!("/api/v1/clients/{id}/goals"),
            json!({"goal_id": "goal-e", "title": person.goal_title, "weight": 2,
                   "group_id": "grp-e", "set_on": "2026-01-05"}),
        )
        .await;
    // They are in the reports and on NATS, and their record reads in full.
    let (_, report) = circle
        .get(&format!(
            "/api/v1/reports/attendance?group_id=grp-e&min_position={before}"
        ))
        .await;
    assert_eq!(report["by_client"][0]["client_id"], id, "{report}");
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(nats);
    let (events, reports, audit) = (
        format!("{}_EVENTS", ns.to_uppercase()),
        format!("{}_REPORTS", ns.to_uppercase()),
        format!("{}_AUDIT", ns.to_uppercase()),
    );
    let subject = format!("{ns}.reports.outcomes.group.grp-e");
    let published_outcomes = report_at(&js, &reports, &subject, before).await;
    assert_eq!(
        published_outcomes["reports"][0]["summary"]["clients_with_two_or_more"],
        1
    );
    let (_, record) = circle.get(&format!("/api/v1/clients/{id}")).await;
    assert_eq!(record["personal"]["display_name"], person.name.as_str());
    let store = backend.store().await;
    let ClientKey::Wrapped(wrapped) = store.client_key(id).await.unwrap() else {
        panic!("{id} has a key");
    };
    // The needles can be found: the wrapped key is in the store before erasure.
    let key_forms = forms("wrapped key", &wrapped);
    let stored = backend.stored_bytes();
    assert!(
        key_forms
            .iter()
            .any(|(_, form)| stored.iter().any(|(_, bytes)| contains(bytes, form))),
        "the wrapped key is in the store before erasure"
    );

    // When they are erased.
    let erased_at = circle
        .ok(
            &format!("/api/v1/clients/{id}/erasure"),
            json!({"reason": "client_request"}),
        )
        .await;

    // Then nothing more is recorded for them: no registration under their id, no
    // clinical write, no consent.
    let (status, _) = circle
        .post(
            "/api/v1/clients",
            json!({"client_id": id, "display_name": person.name, "contact": person.contact,
                   "birth_year": person.birth_year}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "re-registration");
    for (path, body) in [
        (
            "/api/v1/groups/grp-e/sessions/grp-e-s1/attendance".to_string(),
            json!({"records": [{"client_id": id, "status": "late"}]}),
        ),
        (
            "/api/v1/groups/grp-e/sessions/grp-e-s1/feedback".to_string(),
            json!({"client_id": id, "instrument": "PHQ-9", "items": [0, 0, 0, 0, 0, 0, 0, 0, 0]}),
        ),
        (
            "/api/v1/groups/grp-e/members".to_string(),
            json!({"client_id": id, "joined_on": "2026-02-01"}),
        ),
        (
            format!("/api/v1/clients/{id}/consents"),
            json!({"scope": "research", "granted": true}),
        ),
    ] {
        let (status, answer) = circle.post(&path, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {answer}");
    }
    // The client reads as erased; the key is gone.
    let (_, record) = circle.get(&format!("/api/v1/clients/{id}")).await;
    assert_eq!(record["erased"], true, "{record}");
    assert_eq!(record["personal"], Value::Null);
    assert_eq!(store.client_key(id).await.unwrap(), ClientKey::Destroyed);
    // Reports still count them, by their pseudonymous id.
    let (_, report) = circle
        .get(&format!(
            "/api/v1/reports/outcomes?group_id=grp-e&instrument=PHQ-9&min_position={erased_at}"
        ))
        .await;
    assert_eq!(report["clients"][0]["client_id"], id, "{report}");
    assert_eq!(report["summary"]["clients_with_two_or_more"], 1);
    let (_, retention) = circle.get("/api/v1/reports/retention?group_id=grp-e").await;
    assert_eq!(retention["joined"], 1);
    // The audit chain still verifies.
    let (status, verdict) = circle.get("/api/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert!(verdict["checked"].as_i64().unwrap() >= erased_at);

    // Everything published after the erasure is on NATS before it is read back.
    published(&js, &events, erased_at).await;
    // (Reports follow group events: the last is the erasure's `MemberLeft`, just
    // before its `ClientErased`; this test is the only writer.)
    let after = report_at(&js, &reports, &subject, erased_at - 1).await;
    assert_eq!(
        after["reports"][0]["summary"]["clients_with_two_or_more"],
        1
    );

    // And no form of their personal data, nor of their key, is anywhere.
    let mut needles: Vec<(String, Vec<u8>)> = person
        .texts()
        .iter()
        .flat_map(|(what, text)| forms(what, text.as_bytes()))
        .collect();
    needles.extend(key_forms);
    let mut places = backend.stored_bytes();
    for stream in [&events, &reports, &audit] {
        places.extend(stream_messages(&js, stream).await);
    }
    assert!(
        places.iter().any(|(place, _)| place.starts_with(&events)),
        "the events stream was read"
    );
    // Stopped, Circle saves its checkpoints and the log is complete.
    let mut circle = circle;
    circle.process.signal("TERM");
    let stopped = circle.process.exit_status(Duration::from_secs(20)).await;
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    places.extend(
        backend
            .stored_bytes()
            .into_iter()
            .map(|(place, bytes)| (format!("{place}, stopped"), bytes)),
    );
    // The chain verifies offline too, by the command an auditor runs.
    if let Backend::Postgres { url } = &backend {
        let output = std::process::Command::new(circle_tests::process::circle_binary())
            .args(["audit", "verify", "--database-url", url])
            .env_remove("CIRCLE_DATABASE_URL")
            .output()
            .expect("run circle audit verify");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(stdout.starts_with("ok"), "{stdout}");
    }
    for checkpoint in ["reports", "nats"] {
        let (_, state) = store
            .load_checkpoint(checkpoint)
            .await
            .unwrap()
            .expect("checkpoint");
        assert!(
            state.contains(id) || checkpoint == "nats",
            "the reports fold kept {id}"
        );
        places.push((format!("checkpoint {checkpoint}"), state.into_bytes()));
    }
    let log = circle.process.log_text();
    assert!(log.contains("circle is ready"), "the log was captured");
    places.push(("the process log".into(), log.into_bytes()));
    nowhere(&needles, &places);
}

#[tokio::test]
async fn an_erased_client_leaves_no_trace_on_postgres() {
    let url = fresh_schema_url().await;
    an_erased_client_leaves_no_trace(Backend::Postgres { url }).await;
}

#[tokio::test]
async fn an_erased_client_leaves_no_trace_on_the_embedded_store() {
    let dir = fresh_data_dir();
    an_erased_client_leaves_no_trace(Backend::Embedded { dir }).await;
}

/// The search can find what it looks for: a text inside a larger base64 or hex
/// blob, at any alignment, is found by one of its forms.
#[test]
fn every_embedding_of_a_text_is_found_by_one_of_its_forms() {
    let text = b"Erasable Person 0123456789abcdef";
    let needles = forms("text", text);
    for prefix in 0..7 {
        let mut blob = b"{\"display_name\":\"".to_vec();
        blob.extend(std::iter::repeat_n(b'x', prefix));
        blob.extend_from_slice(text);
        blob.extend_from_slice(b"\",\"contact\":null}");
        let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
        for encoded in [
            base64::engine::general_purpose::STANDARD.encode(&blob),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&blob),
            hex.clone(),
            hex.to_uppercase(),
        ] {
            let found = needles.iter().any(|(_, n)| contains(encoded.as_bytes(), n));
            assert!(found, "prefix {prefix}: {encoded}");
        }
    }
}

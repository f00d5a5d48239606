//! Audit: the hash chain, the Merkle tree, signed checkpoints and proofs, on both
//! backends; tampering by a database superuser, on PostgreSQL.

use std::time::Duration;

use circle_services::audit::chain::to_hex;
use circle_services::audit::merkle::{self, leaf_hash};
use circle_services::audit::note::{Checkpoint, Signer, Verifier};
use circle_services::audit::tree::{self, TreeError};
use circle_services::store::{
    Append, AuditFilter, EventMetadata, Fence, NewEvent, Store, TreeHead,
};
use serde_json::json;

fn append(id: &str, expected_version: u64, events: u64) -> Append {
    Append {
        aggregate_type: "group",
        aggregate_id: id.into(),
        expected_version,
        events: (0..events)
            .map(|n| NewEvent {
                event_type: "SessionCancelled".into(),
                event_version: 1,
                payload: json!({"session_id": format!("s{n}"), "reason": "snow"}),
                metadata: EventMetadata::system("dr_a", "clinician"),
            })
            .collect(),
        idempotency: None,
        key_action: None,
        chained: false,
        token_hash: None,
    }
}

/// Appends `count` events in batches of a few streams each.
async fn fill(store: &Store, count: u64) {
    let head = store.head_position().await.unwrap() as u64;
    let mut written = 0;
    while written < count {
        let n = (count - written).min(7);
        let id = format!("g{}", head + written);
        store.commit_batch(&[append(&id, 0, n)]).await.unwrap();
        written += n;
    }
}

async fn lead(store: &Store) -> Fence {
    let holder = uuid::Uuid::new_v4();
    let epoch = store
        .acquire_lease("leader", holder, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the lease is free");
    Fence {
        lease: "leader".into(),
        holder,
        epoch,
    }
}

fn signer() -> Signer {
    Signer::parse(&Signer::generate("circle.test/log").unwrap()).unwrap()
}

async fn checkpoints_are_signed_once_per_size_and_proofs_verify(store: Store) {
    let signer = signer();
    let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
    let fence = lead(&store).await;
    fill(&store, 100).await;
    let first = tree::checkpoint(&store, &signer, &fence)
        .await
        .unwrap()
        .unwrap();
    let opened = Checkpoint::open(&first.note, &verifier).unwrap();
    assert_eq!((opened.size, opened.root), (100, first.root));
    let verdict = tree::verify_store(&store, |_, _| {}).await.unwrap();
    assert!(verdict.ok, "{verdict:?}");
    assert_eq!(verdict.root, to_hex(&first.root));
    // Nothing new: nothing signed.
    assert_eq!(
        tree::checkpoint(&store, &signer, &fence).await.unwrap(),
        None
    );

    fill(&store, 37).await;
    let second = tree::checkpoint(&store, &signer, &fence)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.size, 137);
    let proof = tree::consistency_proof(&store, 100, 137).await.unwrap();
    assert!(merkle::verify_consistency(
        100,
        137,
        &first.root,
        &second.root,
        &proof
    ));
    let events = store
        .read_audit(0, 200, &AuditFilter::default())
        .await
        .unwrap();
    for position in [1u64, 16, 17, 64, 100, 137] {
        for (size, root) in [(100, first.root), (137, second.root)] {
            if position > size {
                continue;
            }
            let proof = tree::inclusion_proof(&store, position - 1, size)
                .await
                .unwrap();
            let leaf = leaf_hash(&events[position as usize - 1].hash);
            assert!(
                merkle::verify_inclusion(position - 1, size, &leaf, &proof, &root),
                "{position} in {size}"
            );
        }
    }
    // The proofs also hold for sizes nobody checkpointed, from the same nodes.
    let root_120 = tree::root(&store, 120).await.unwrap();
    let proof = tree::consistency_proof(&store, 120, 137).await.unwrap();
    assert!(merkle::verify_consistency(
        120,
        137,
        &root_120,
        &second.root,
        &proof
    ));

    // A second root for a size already signed is never stored, nor signed.
    let forged = TreeHead {
        size: 100,
        root: [9; 32],
        note: signer.sign(&format!(
            "circle.test/log\n100\n{}\n",
            "CQ".repeat(21) + "k="
        )),
    };
    let kept = store
        .save_tree_head(&forged, &fence)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept, first);
    assert_eq!(store.tree_heads().await.unwrap().len(), 2);
}

/// A checkpoint signed over a log that no longer has its root (here: a forged one at
/// the head) stops the leader: it signs nothing on top of it.
async fn the_leader_refuses_to_extend_a_tree_whose_signed_root_it_cannot_reproduce(store: Store) {
    let signer = signer();
    let fence = lead(&store).await;
    fill(&store, 20).await;
    let forged = TreeHead {
        size: 20,
        root: [9; 32],
        note: "forged".into(),
    };
    store.save_tree_head(&forged, &fence).await.unwrap();
    fill(&store, 5).await;
    let refused = tree::checkpoint(&store, &signer, &fence).await;
    assert!(
        matches!(refused, Err(TreeError::Tampered(_))),
        "{refused:?}"
    );
    assert_eq!(store.tree_heads().await.unwrap().len(), 1);
    let verdict = tree::verify_store(&store, |_, _| {}).await.unwrap();
    assert_eq!(
        (verdict.ok, verdict.first_bad_position),
        (false, Some(20)),
        "{verdict:?}"
    );
}

/// Only the current lease holder stores checkpoints.
async fn a_deposed_leader_stores_no_checkpoint(store: Store) {
    let signer = signer();
    let fence = lead(&store).await;
    fill(&store, 3).await;
    let stale = Fence {
        epoch: fence.epoch - 1,
        ..fence
    };
    assert_eq!(
        tree::checkpoint(&store, &signer, &stale).await.unwrap(),
        None
    );
    assert!(store.tree_heads().await.unwrap().is_empty());
}

circle_tests::on_both_backends!(
    checkpoints_are_signed_once_per_size_and_proofs_verify,
    the_leader_refuses_to_extend_a_tree_whose_signed_root_it_cannot_reproduce,
    a_deposed_leader_stores_no_checkpoint,
);

/// A Circle on PostgreSQL that signs a checkpoint within 200 ms of a write and
/// publishes it on NATS under a namespace of its own.
async fn audited_app() -> (circle_tests::TestApp, String, String) {
    let url = circle_tests::fresh_schema_url().await;
    let namespace = circle_tests::fresh_namespace();
    let key = Signer::generate("circle.test/log").unwrap();
    let (ns, secret) = (namespace.clone(), key.clone());
    let app = circle_tests::spawn_app_with(&url, move |settings| {
        settings.audit_signing_key = Some(circle_services::secret::Secret::new(secret));
        settings.audit_checkpoint_every_ms = 200;
        settings.nats_url = Some(circle_tests::nats_url());
        settings.nats_namespace = ns;
    })
    .await;
    (app, namespace, key)
}

/// The whole log as an auditor exports it (NDJSON); checks the content type.
async fn export_ndjson(app: &circle_tests::TestApp, token: &str) -> String {
    let export = app
        .http
        .get(format!("{}/api/v1/audit/events", app.base))
        .bearer_auth(token)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    export.text().await.unwrap()
}

/// The signed note of the latest checkpoint, once it covers `size` events.
async fn checkpoint_at(app: &circle_tests::TestApp, token: &str, size: i64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = app.get("/api/v1/audit/checkpoint", token).await;
        if let serde_json::Value::String(note) = &answer.body {
            if note.lines().nth(1) == Some(size.to_string().as_str()) {
                return note.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint of {size}: {} {:?}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn auditors_read_the_log_checkpoints_and_proofs_over_http() {
    use circle_services::auth::Role;
    use reqwest::StatusCode;

    let (app, namespace, _) = audited_app().await;
    circle_tests::six_mp_group(&app, "g6mp").await;
    let sealed = app
        .post(
            "/api/v1/clients",
            &app.admin,
            json!({"client_id": "named", "display_name": "Ada Lovelace"}),
        )
        .await;
    assert_eq!(sealed.status, StatusCode::CREATED);
    // Tokens are events too: every one is made before the head is read.
    let auditor = app.token(Role::Auditor, None).await;
    let others = [
        app.token(Role::Clinician, Some("dr_a")).await,
        app.token(Role::Reporter, None).await,
    ];
    let head = app.head().await;
    let note = checkpoint_at(&app, &auditor, head).await;
    let key = app.get("/api/v1/audit/key", &auditor).await;
    let key = key.body.as_str().unwrap().to_string();
    let verifier = Verifier::parse(&key).unwrap();
    let checkpoint = Checkpoint::open(&note, &verifier).unwrap();
    assert_eq!(checkpoint.size, head as u64);

    // Only auditors and admins.
    for token in &others {
        for path in [
            "/api/v1/audit/events",
            "/api/v1/audit/checkpoint",
            "/api/v1/audit/verify",
        ] {
            assert_eq!(
                app.get(path, token).await.status,
                StatusCode::FORBIDDEN,
                "{path}"
            );
        }
    }
    let anonymous = app
        .send(reqwest::Method::GET, "/api/v1/audit/key", None, &[], None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // The NDJSON export: every event, chained, with the signed root; no plain text.
    let text = export_ndjson(&app, &auditor).await;
    assert!(!text.contains("Ada Lovelace"));
    let mut check = circle_services::audit::verify::LogCheck::default();
    for line in text.lines() {
        let event: circle_services::store::AuditEvent = serde_json::from_str(line).unwrap();
        check.push(&event).unwrap();
    }
    assert_eq!(
        (check.checked(), check.root()),
        (head as u64, checkpoint.root)
    );

    // Paged JSON and filters.
    let page = app
        .get("/api/v1/audit/events?after=10&limit=5", &auditor)
        .await;
    assert_eq!(page.body["events"][0]["position"], 11);
    assert_eq!(page.body["next_after"], 15);
    let one = app
        .get(
            "/api/v1/audit/events?aggregate_type=client&aggregate_id=named",
            &auditor,
        )
        .await;
    assert_eq!(one.body["events"].as_array().unwrap().len(), 1);
    assert_eq!(one.body["next_after"], serde_json::Value::Null);

    // Proofs, checked against the signed root.
    let inclusion = app
        .get(
            &format!("/api/v1/audit/proof/inclusion?position=17&tree_size={head}"),
            &auditor,
        )
        .await;
    assert_eq!(inclusion.status, StatusCode::OK, "{:?}", inclusion.body);
    let hex = |v: &serde_json::Value| {
        circle_services::audit::chain::hash_from_hex(v.as_str().unwrap()).unwrap()
    };
    let proof: Vec<_> = inclusion.body["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(hex)
        .collect();
    let leaf = hex(&inclusion.body["leaf_hash"]);
    assert!(merkle::verify_inclusion(
        16,
        head as u64,
        &leaf,
        &proof,
        &checkpoint.root
    ));
    let consistency = app
        .get(
            &format!("/api/v1/audit/proof/consistency?from=10&to={head}"),
            &auditor,
        )
        .await;
    let proof: Vec<_> = consistency.body["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(hex)
        .collect();
    let old_root = hex(&consistency.body["from_root"]);
    assert!(merkle::verify_consistency(
        10,
        head as u64,
        &old_root,
        &checkpoint.root,
        &proof
    ));

    let verdict = app.get("/api/v1/audit/verify", &auditor).await;
    assert_eq!(verdict.body["ok"], true, "{:?}", verdict.body);
    assert_eq!(verdict.body["checked"], head);

    // Refused, naming the parameter: 400 for what the description itself rules out,
    // 422 for a value it allows that the log (or the other parameter) rules out.
    let (bad, ruled_out) = (StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY);
    let beyond = head + 1;
    for (path, status, field) in [
        (
            format!("/api/v1/audit/proof/inclusion?position=0&tree_size={head}"),
            bad,
            "position",
        ),
        (
            "/api/v1/audit/proof/inclusion?position=x".to_string(),
            bad,
            "position",
        ),
        (
            "/api/v1/audit/proof/inclusion?position=1&tree_size=0".to_string(),
            bad,
            "tree_size",
        ),
        (
            format!("/api/v1/audit/proof/inclusion?position={beyond}&tree_size={head}"),
            ruled_out,
            "position",
        ),
        (
            format!("/api/v1/audit/proof/inclusion?position=1&tree_size={beyond}"),
            ruled_out,
            "tree_size",
        ),
        (
            "/api/v1/audit/proof/consistency?from=0&to=5".to_string(),
            bad,
            "from",
        ),
        (
            "/api/v1/audit/proof/consistency?from=1".to_string(),
            bad,
            "to",
        ),
        (
            format!("/api/v1/audit/proof/consistency?from=5&to={beyond}"),
            ruled_out,
            "to",
        ),
        (
            "/api/v1/audit/proof/consistency?from=9&to=5".to_string(),
            ruled_out,
            "from",
        ),
        (
            "/api/v1/audit/checkpoint?tree_size=-1".to_string(),
            bad,
            "tree_size",
        ),
        (
            format!("/api/v1/audit/checkpoint?tree_size={beyond}"),
            ruled_out,
            "tree_size",
        ),
        ("/api/v1/audit/events?limit=0".to_string(), bad, "limit"),
        ("/api/v1/audit/events?after=-1".to_string(), bad, "after"),
        (
            "/api/v1/audit/events?from=yesterday".to_string(),
            bad,
            "from",
        ),
        (
            "/api/v1/audit/events?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z".to_string(),
            ruled_out,
            "from",
        ),
    ] {
        let answer = app.get(&path, &auditor).await;
        assert_eq!(answer.status, status, "{path}");
        assert_eq!(answer.content_type, "application/problem+json", "{path}");
        assert_eq!(answer.field(), field, "{path}: {:?}", answer.body);
    }
    // A size the leader never happened to sign (it signs whatever the head is).
    let signed: Vec<i64> = app
        .state
        .store
        .tree_heads()
        .await
        .unwrap()
        .iter()
        .map(|h| h.size)
        .collect();
    let never = (1..head).find(|n| !signed.contains(n)).unwrap();
    let unsigned = app
        .get(
            &format!("/api/v1/audit/checkpoint?tree_size={never}"),
            &auditor,
        )
        .await;
    assert_eq!(unsigned.status, StatusCode::NOT_FOUND);

    // The same checkpoint on NATS.
    let client = async_nats::connect(circle_tests::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = format!("{}_AUDIT", namespace.to_uppercase());
    let subject = format!("{namespace}.audit.checkpoint");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = match js.get_stream(&stream).await {
            Ok(s) => s.get_last_raw_message_by_subject(&subject).await.ok(),
            Err(_) => None,
        };
        if let Some(message) = found {
            let published = std::str::from_utf8(&message.payload).unwrap().to_string();
            if Checkpoint::open(&published, &verifier).unwrap().size == head as u64 {
                assert_eq!(published, note);
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint on NATS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `circle audit …`; returns (exit code, stdout). Off the test's runtime, which
/// also serves the app the command may call.
async fn circle_audit(args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(circle_tests::process::circle_binary())
            .arg("audit")
            .args(&args)
            .env_remove("CIRCLE_DATABASE_URL")
            .output()
            .expect("run circle");
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        (output.status.code().unwrap_or(-1), stdout)
    })
    .await
    .unwrap()
}

/// Runs `sql` as the owner of the schema's tables with every user trigger on events
/// and checkpoints disabled, as an attacker with database rights would; the owner
/// can do this, and so can any superuser.
async fn as_attacker(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(&format!(
        "BEGIN;
         ALTER TABLE events DISABLE TRIGGER USER;
         ALTER TABLE audit_checkpoints DISABLE TRIGGER USER;
         {sql};
         ALTER TABLE events ENABLE TRIGGER USER;
         ALTER TABLE audit_checkpoints ENABLE TRIGGER USER;
         COMMIT;"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// 40 events, a checkpoint of them, then `attack`: the first bad position that both
/// the store check and `circle audit verify --database-url` report, and the reason.
async fn first_bad_after(attack: &str) -> (i64, String) {
    let url = circle_tests::fresh_schema_url().await;
    let store = Store::postgres(&url, 4).await.unwrap();
    fill(&store, 40).await;
    let fence = lead(&store).await;
    tree::checkpoint(&store, &signer(), &fence)
        .await
        .unwrap()
        .unwrap();
    as_attacker(&url, attack).await;
    let verdict = tree::verify_store(&store, |_, _| {}).await.unwrap();
    assert!(!verdict.ok, "{verdict:?}");
    let position = verdict.first_bad_position.unwrap();
    let (code, out) = circle_audit(&["verify", "--database-url", &url]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("FAIL position {position}: ")),
        "{out}"
    );
    (position, verdict.reason.unwrap())
}

#[tokio::test]
async fn a_changed_payload_byte_is_found_at_its_position() {
    let (position, reason) = first_bad_after(
        "UPDATE events SET payload_text = overlay(payload_text placing 'X' from 3 for 1)
         WHERE position = 17",
    )
    .await;
    assert_eq!(position, 17, "{reason}");
}

#[tokio::test]
async fn a_changed_recorded_at_is_found_at_its_position() {
    let (position, reason) = first_bad_after(
        "UPDATE events SET recorded_at = recorded_at + interval '1 microsecond'
         WHERE position = 23",
    )
    .await;
    assert_eq!(position, 23, "{reason}");
}

#[tokio::test]
async fn a_deleted_row_is_found_at_its_position() {
    let (position, reason) = first_bad_after("DELETE FROM events WHERE position = 30").await;
    assert_eq!(position, 30);
    assert!(reason.starts_with("missing"), "{reason}");
}

#[tokio::test]
async fn a_deleted_last_row_is_found_against_the_checkpoint() {
    let (position, reason) = first_bad_after("DELETE FROM events WHERE position = 40").await;
    assert_eq!(position, 40);
    assert!(reason.starts_with("missing"), "{reason}");
}

#[tokio::test]
async fn two_swapped_rows_are_found_at_the_first() {
    let (position, reason) = first_bad_after(
        "UPDATE events SET position = -11 WHERE position = 11;
         UPDATE events SET position = 11 WHERE position = 12;
         UPDATE events SET position = 12 WHERE position = -11",
    )
    .await;
    assert_eq!(position, 11, "{reason}");
}

#[tokio::test]
async fn an_inserted_row_is_found_at_its_position() {
    let (position, reason) = first_bad_after(
        "UPDATE events SET position = -(position + 1) WHERE position >= 35;
         UPDATE events SET position = -position WHERE position < 0;
         INSERT INTO events (position, event_id, aggregate_type, aggregate_id, sequence,
             event_type, event_version, payload, payload_text, occurred_at, recorded_at,
             actor_id, actor_role, correlation_id, causation_id, hash)
         SELECT 35, gen_random_uuid(), aggregate_type, 'forged', 1, event_type,
                event_version, payload, payload_text, occurred_at, recorded_at, 'dr_x',
                actor_role, correlation_id, causation_id, hash
         FROM events WHERE position = 34;
         UPDATE log_head SET position = position + 1",
    )
    .await;
    assert_eq!(position, 35, "{reason}");
}

/// The strongest attack: history rewritten with every hash recomputed, the stored
/// checkpoints and tree removed, and the server signing the new log. The chain
/// passes; the consistency proof against the checkpoint the auditor kept does not.
#[tokio::test]
async fn a_log_rewritten_with_recomputed_hashes_fails_consistency_with_a_kept_checkpoint() {
    use circle_services::auth::Role;

    let (app, _, key) = audited_app().await;
    let store = app.state.store.clone();
    let auditor = app.token(Role::Auditor, None).await;
    fill(&store, 40).await;
    let kept = checkpoint_at(&app, &auditor, app.head().await).await;
    let verifier_key = Signer::parse(&key).unwrap().verifier_key();
    let dir = circle_tests::fresh_data_dir();
    let (kept_file, key_file) = (dir.join("kept.checkpoint"), dir.join("circle.vkey"));
    std::fs::write(&kept_file, &kept).unwrap();
    std::fs::write(&key_file, &verifier_key).unwrap();
    let consistency = |new: std::path::PathBuf| {
        let args = [
            "consistency".to_string(),
            kept_file.display().to_string(),
            new.display().to_string(),
            "--url".into(),
            app.base.clone(),
            "--token".into(),
            auditor.clone(),
            "--key".into(),
            key_file.display().to_string(),
        ];
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            circle_audit(&args).await
        }
    };

    // Honest growth: consistent.
    fill(&store, 3).await;
    let honest = dir.join("honest.checkpoint");
    let honest_size = app.head().await;
    std::fs::write(&honest, checkpoint_at(&app, &auditor, honest_size).await).unwrap();
    let (code, out) = consistency(honest).await;
    assert_eq!((code, out.starts_with("ok ")), (0, true), "{out}");

    // The offline export check agrees with the kept checkpoint.
    let export = dir.join("export.ndjson");
    let text = export_ndjson(&app, &auditor).await;
    std::fs::write(&export, &text).unwrap();
    let offline = |export: std::path::PathBuf| {
        let args = [
            "verify".to_string(),
            "--export".into(),
            export.display().to_string(),
            "--checkpoint".into(),
            kept_file.display().to_string(),
            "--key".into(),
            key_file.display().to_string(),
        ];
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            circle_audit(&args).await
        }
    };
    let (code, out) = offline(export).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("ok {honest_size} events, root ")),
        "{out}"
    );
    let edited = dir.join("edited.ndjson");
    let one_byte: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| match i {
            9 => line.replacen("snow", "snoW", 1),
            _ => line.to_string(),
        })
        .collect();
    std::fs::write(&edited, one_byte.join("\n")).unwrap();
    let (code, out) = offline(edited).await;
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "FAIL position 10: the hash does not match the event's contents and the hash before it"
        )
    );

    // The rewrite.
    as_attacker(
        &app.database_url,
        "UPDATE events SET payload_text = replace(payload_text, 'snow', 'rain')
         WHERE position = 10;
         DO $$ DECLARE h bytea; r events; BEGIN
             SELECT hash INTO h FROM events WHERE position = 9;
             FOR r IN SELECT * FROM events WHERE position >= 10 ORDER BY position LOOP
                 h := sha256(h || circle_event_bytes(r));
                 UPDATE events SET hash = h WHERE position = r.position;
             END LOOP;
             UPDATE log_head SET hash = h;
         END $$;
         DELETE FROM audit_checkpoints;
         DELETE FROM merkle_nodes",
    )
    .await;
    fill(&store, 2).await;
    let rewritten = dir.join("rewritten.checkpoint");
    let rewritten_size = app.head().await;
    std::fs::write(
        &rewritten,
        checkpoint_at(&app, &auditor, rewritten_size).await,
    )
    .unwrap();
    let verdict = app.get("/api/v1/audit/verify", &auditor).await;
    assert_eq!(
        verdict.body["ok"], true,
        "the chain alone passes: {:?}",
        verdict.body
    );
    let (code, out) = consistency(rewritten.clone()).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rewritten"), "{out}");
}

/// `tests/python/verify_log.py`, written from ARCHITECTURE.md alone with the Python
/// standard library and `cryptography`, agrees with `circle audit verify`: chain,
/// root, signature, and one inclusion and one consistency proof fetched over HTTP.
#[tokio::test]
async fn an_independent_python_verifier_agrees_with_circle() {
    use circle_services::auth::Role;

    let (app, _, key) = audited_app().await;
    circle_tests::six_mp_group(&app, "g6mp").await;
    let named = app
        .post(
            "/api/v1/clients",
            &app.admin,
            json!({"client_id": "named", "display_name": "Zoë Ünicode", "birth_year": 1980}),
        )
        .await;
    assert_eq!(named.status, reqwest::StatusCode::CREATED);
    let erased = app
        .post(
            "/api/v1/clients/named/erasure",
            &app.admin,
            json!({"reason": "client_request"}),
        )
        .await;
    assert_eq!(erased.status, reqwest::StatusCode::OK, "{:?}", erased.body);
    let auditor = app.token(Role::Auditor, None).await;
    let head = app.head().await;
    let note = checkpoint_at(&app, &auditor, head).await;
    let dir = circle_tests::fresh_data_dir();
    let (export, checkpoint, vkey) = (
        dir.join("export.ndjson"),
        dir.join("checkpoint"),
        dir.join("key"),
    );
    let text = export_ndjson(&app, &auditor).await;
    std::fs::write(&export, text).unwrap();
    std::fs::write(&checkpoint, note).unwrap();
    std::fs::write(&vkey, Signer::parse(&key).unwrap().verifier_key()).unwrap();

    let paths = [&export, &checkpoint, &vkey].map(|p| p.display().to_string());
    let (code, rust) = circle_audit(&[
        "verify",
        "--export",
        &paths[0],
        "--checkpoint",
        &paths[1],
        "--key",
        &paths[2],
    ])
    .await;
    assert_eq!(code, 0, "{rust}");
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/verify_log.py");
    let args = [
        script.display().to_string(),
        paths[0].clone(),
        paths[1].clone(),
        paths[2].clone(),
        app.base.clone(),
        auditor.clone(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(args)
            .output()
            .expect("python3 runs (scripts/test installs cryptography)")
    })
    .await
    .unwrap();
    let python = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success(),
        "{python} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(python, rust);
    assert!(python.starts_with(&format!("ok {head} events, root ")));
}

/// Verification reads pages ahead in parallel (`tree::VERIFY_PAGE` events, one
/// binary COPY each): damage at a page's last or first position is still found
/// exactly there.
#[tokio::test]
async fn damage_at_a_page_boundary_is_found_at_its_position() {
    let page = tree::VERIFY_PAGE;
    for (attack, expected) in [
        (format!("DELETE FROM events WHERE position = {page}"), page),
        (
            format!(
                "UPDATE events SET actor_id = 'dr_x' WHERE position IN ({}, {})",
                page + 1,
                page + 5
            ),
            page + 1,
        ),
    ] {
        let url = circle_tests::fresh_schema_url().await;
        let store = Store::postgres(&url, 8).await.unwrap();
        for b in 0..(page / 500 + 1) {
            let batch: Vec<Append> = (0..50)
                .map(|a| append(&format!("b{b}-{a}"), 0, 10))
                .collect();
            store.commit_batch(&batch).await.unwrap();
        }
        assert!(tree::verify_store(&store, |_, _| {}).await.unwrap().ok);
        as_attacker(&url, &attack).await;
        let verdict = tree::verify_store(&store, |_, _| {}).await.unwrap();
        assert_eq!(
            verdict.first_bad_position,
            Some(expected),
            "{attack}: {verdict:?}"
        );
    }
}

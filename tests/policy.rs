//! The access policy as a matrix, on a seeded server on PostgreSQL: every operation
//! of the served OpenAPI description, for every role and for a clinician of another
//! group, answers what ARCHITECTURE.md's "Privacy" table says (2xx, 403 or 404). An
//! operation the table below does not know fails the test, and so does a route the
//! policy has no entry for (the guard refuses it, so even an admin gets 403).
//!
//! Also the security probe's findings (issue 7): a clinician taking another's
//! client into their group, idempotency keys shared across callers, and refusals
//! that told whether a client exists.

use circle_services::auth::Role;
use circle_tests::{spawn_app, Answer, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Admin,
    /// `dr-a`, who facilitates the group every case acts on.
    Facilitator,
    /// `dr-b`, who facilitates another group.
    OtherClinician,
    Auditor,
    Reporter,
}

const EVERYONE: [Who; 5] = [
    Who::Admin,
    Who::Facilitator,
    Who::OtherClinician,
    Who::Auditor,
    Who::Reporter,
];

struct Tokens {
    admin: String,
    dr_a: String,
    dr_b: String,
    auditor: String,
    reporter: String,
}

impl Tokens {
    async fn new(app: &TestApp) -> Tokens {
        Tokens {
            admin: app.admin.clone(),
            dr_a: app.token(Role::Clinician, Some("dr-a")).await,
            dr_b: app.token(Role::Clinician, Some("dr-b")).await,
            auditor: app.token(Role::Auditor, None).await,
            reporter: app.token(Role::Reporter, None).await,
        }
    }

    fn of(&self, who: Who) -> &str {
        match who {
            Who::Admin => &self.admin,
            Who::Facilitator => &self.dr_a,
            Who::OtherClinician => &self.dr_b,
            Who::Auditor => &self.auditor,
            Who::Reporter => &self.reporter,
        }
    }
}

/// The answer the table expects.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Success,
    Forbidden,
    NotFound,
}

/// ARCHITECTURE.md's "Privacy" table, per operation, for records that exist.
fn expected(method: &str, path: &str, who: Who) -> Expect {
    use Expect::*;
    use Who::*;
    let allowed: &[Who] = match (method, path) {
        ("GET", "/api/v1/openapi.json") => &EVERYONE,
        ("GET", "/api/v1/groups") => &[Admin, Facilitator, OtherClinician, Auditor],
        (
            "GET",
            "/api/v1/groups/{group_id}"
            | "/api/v1/clients/{client_id}"
            | "/api/v1/groups/{group_id}/history"
            | "/api/v1/clients/{client_id}/history"
            | "/api/v1/alerts",
        ) => &[Admin, Facilitator, Auditor],
        ("GET", p) if p.starts_with("/api/v1/reports/") || p.starts_with("/api/v1/exports/") => {
            &[Admin, Facilitator, Auditor, Reporter]
        }
        ("GET", p) if p.starts_with("/api/v1/audit/") => &[Admin, Auditor],
        // A group's FHIR export, its job and files: who may read the group.
        ("GET" | "DELETE", p) if p.starts_with("/api/v1/fhir/") => &[Admin, Facilitator, Auditor],
        (_, p) if p.starts_with("/api/v1/tokens") => &[Admin],
        // Any clinician registers new clients.
        ("POST", "/api/v1/clients") => &[Admin, Facilitator, OtherClinician],
        ("POST", "/api/v1/clients/{client_id}/erasure") => &[Admin],
        ("POST", p) if p.starts_with("/api/v1/groups") || p.starts_with("/api/v1/clients") => {
            &[Admin, Facilitator]
        }
        _ => panic!(
            "{method} {path}: no row in the policy matrix; add one to ARCHITECTURE.md and here"
        ),
    };
    if allowed.contains(&who) {
        Success
    } else {
        Forbidden
    }
}

/// For records that do not exist: only those who may see every record of the kind
/// learn that one is missing; everyone else is refused as for any record not theirs.
fn expected_missing(method: &str, path: &str, who: Who) -> Option<Expect> {
    let names_a_record = path.contains('{')
        || path.starts_with("/api/v1/reports/")
        || path.starts_with("/api/v1/exports/");
    if method != "GET" || !names_a_record {
        return None;
    }
    Some(match expected(method, path, who) {
        Expect::Success if who == Who::Facilitator => Expect::Forbidden,
        Expect::Success => Expect::NotFound,
        other => other,
    })
}

/// The records one case acts on, fresh for each case so that no case's write
/// changes another's answer.
struct World {
    group: String,
    client: String,
    /// Registered by `dr-a`, in no group yet: one they may bring in.
    newcomer: String,
    session: String,
    goal: String,
    /// A reporter token's id, for the revocation case.
    token: String,
    /// A FHIR export job of the caller's on `group` (a made-up id for a caller who
    /// may not start one).
    job: String,
    n: usize,
}

fn ok(answer: Answer, what: &str) -> Answer {
    assert!(
        answer.status.is_success(),
        "seeding {what}: {:?}",
        answer.body
    );
    answer
}

async fn seed(app: &TestApp, tokens: &Tokens, n: usize) -> World {
    let admin = &app.admin;
    let w = World {
        group: format!("g{n}"),
        client: format!("c{n}"),
        newcomer: format!("nc{n}"),
        session: format!("s{n}"),
        goal: format!("goal{n}"),
        token: String::new(),
        job: uuid::Uuid::new_v4().to_string(),
        n,
    };
    let group_body = json!({"group_id": w.group, "name": "Tuesday", "focus": "anxiety",
                            "format": "open", "facilitators": ["dr-a"]});
    ok(app.post("/api/v1/groups", admin, group_body).await, "group");
    let person = json!({"client_id": w.client, "display_name": "Ada L.", "birth_year": 1985});
    ok(app.post("/api/v1/clients", admin, person).await, "client");
    let newcomer = json!({"client_id": w.newcomer, "display_name": "New C."});
    ok(
        app.post("/api/v1/clients", &tokens.dr_a, newcomer).await,
        "newcomer",
    );
    let members = format!("/api/v1/groups/{}/members", w.group);
    let join = json!({"client_id": w.client, "joined_on": "2026-01-05"});
    ok(app.post(&members, admin, join).await, "join");
    let sessions = format!("/api/v1/groups/{}/sessions", w.group);
    let session = json!({"session_id": w.session, "starts_at": "2026-01-13T18:00:00+00:00",
                         "duration_minutes": 90});
    ok(app.post(&sessions, admin, session).await, "session");
    let attendance = format!(
        "/api/v1/groups/{}/sessions/{}/attendance",
        w.group, w.session
    );
    let present = json!({"records": [{"client_id": w.client, "status": "present"}]});
    ok(app.post(&attendance, admin, present).await, "attendance");
    let goals = format!("/api/v1/clients/{}/goals", w.client);
    let goal = json!({"goal_id": w.goal, "title": "Walk daily", "group_id": w.group,
                      "set_on": "2026-01-06"});
    ok(app.post(&goals, admin, goal).await, "goal");
    let issued = json!({"role": "reporter", "label": format!("matrix {n}")});
    let issued = ok(app.post("/api/v1/tokens", admin, issued).await, "token");
    let token = issued.body["token_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    World { token, ..w }
}

/// The concrete request for an operation of the description, on a world's records.
fn request(method: &str, template: &str, w: &World) -> (String, Option<Value>) {
    let path = template
        .replace("{group_id}", &w.group)
        .replace("{client_id}", &w.client)
        .replace("{session_id}", &w.session)
        .replace("{goal_id}", &w.goal)
        .replace("{token_id}", &w.token)
        .replace("{job_id}", &w.job)
        .replace("{resource_type}", "Patient");
    let n = w.n;
    let query = match template {
        "/api/v1/reports/outcomes" => format!("?group_id={}&instrument=PHQ-9", w.group),
        p if p.starts_with("/api/v1/reports/")
            || p.starts_with("/api/v1/exports/")
            || p == "/api/v1/alerts" =>
        {
            format!("?group_id={}", w.group)
        }
        "/api/v1/audit/proof/inclusion" => "?position=1&tree_size=1".to_string(),
        "/api/v1/audit/proof/consistency" => "?from=1&to=1".to_string(),
        _ => String::new(),
    };
    let items = json!([1, 1, 1, 1, 1, 1, 1, 1, 0]);
    let body = match (method, template) {
        ("GET" | "DELETE", _) => None,
        (_, "/api/v1/groups") => Some(json!({"group_id": format!("new{n}"), "name": "Grief",
            "focus": "grief", "format": "closed", "facilitators": ["dr-a"]})),
        (_, "/api/v1/groups/{group_id}/facilitators") => Some(json!({"clinician_id": "dr-c"})),
        (_, "/api/v1/groups/{group_id}/members") => {
            Some(json!({"client_id": w.newcomer, "joined_on": "2026-01-05"}))
        }
        (_, "/api/v1/groups/{group_id}/members/{client_id}/departure") => {
            Some(json!({"left_on": "2026-02-01", "reason": "completed"}))
        }
        (_, "/api/v1/groups/{group_id}/sessions") => Some(json!({
            "starts_at": "2026-02-03T18:00:00+00:00", "duration_minutes": 90})),
        (_, "/api/v1/groups/{group_id}/sessions/{session_id}/cancellation") => {
            Some(json!({"reason": "snow"}))
        }
        (_, "/api/v1/groups/{group_id}/sessions/{session_id}/attendance") => {
            Some(json!({"records": [{"client_id": w.client, "status": "late"}]}))
        }
        (_, "/api/v1/groups/{group_id}/sessions/{session_id}/feedback") => {
            Some(json!({"client_id": w.client, "instrument": "PHQ-9", "items": items}))
        }
        (_, "/api/v1/groups/{group_id}/sessions/{session_id}/goal-check-ins") => {
            Some(json!({"check_ins": [{"client_id": w.client, "goal_id": w.goal, "level": 0}]}))
        }
        (_, "/api/v1/groups/{group_id}/closure") => Some(json!({"closed_on": "2026-03-01"})),
        (_, "/api/v1/clients") => Some(json!({"client_id": format!("r{n}")})),
        (_, "/api/v1/clients/{client_id}/consents") => {
            Some(json!({"scope": "research", "granted": true}))
        }
        (_, "/api/v1/clients/{client_id}/erasure") => Some(json!({"reason": "client_request"})),
        (_, "/api/v1/clients/{client_id}/measures") => Some(json!({"instrument": "PHQ-9",
            "items": items, "administered_at": "2026-01-20T10:00:00+00:00"})),
        (_, "/api/v1/clients/{client_id}/goals") => Some(json!({"goal_id": format!("ng{n}"),
            "title": "Sleep", "group_id": w.group, "set_on": "2026-01-07"})),
        (_, "/api/v1/clients/{client_id}/goals/{goal_id}/check-ins") => {
            Some(json!({"level": 1, "checked_in_at": "2026-01-20T10:00:00+00:00"}))
        }
        (_, "/api/v1/clients/{client_id}/goals/{goal_id}/closure") => {
            Some(json!({"reason": "attained", "closed_on": "2026-01-21"}))
        }
        (_, "/api/v1/tokens") => Some(json!({"role": "auditor", "label": "matrix"})),
        (_, "/api/v1/tokens/{token_id}/revocation") => Some(json!({})),
        _ => panic!("{method} {template}: no request body in the matrix test; add one"),
    };
    (format!("{path}{query}"), body)
}

fn class(status: StatusCode) -> Option<Expect> {
    match status {
        s if s.is_success() => Some(Expect::Success),
        StatusCode::FORBIDDEN => Some(Expect::Forbidden),
        StatusCode::NOT_FOUND => Some(Expect::NotFound),
        _ => None,
    }
}

/// A finished FHIR export of `group` started by the token's holder: its job id, or
/// `None` when they may not start one.
async fn finished_export(app: &TestApp, token: &str, group: &str) -> Option<String> {
    let path = format!("/api/v1/fhir/Group/{group}/$export");
    let prefer = [("Prefer", "respond-async")];
    let kick_off = app
        .send(Method::GET, &path, Some(token), &prefer, None)
        .await;
    if kick_off.status != StatusCode::ACCEPTED {
        return None;
    }
    let status_url = kick_off.headers["content-location"]
        .to_str()
        .ok()?
        .to_string();
    let status_path = status_url.trim_start_matches(&app.base).to_string();
    for _ in 0..200 {
        if app.get(&status_path, token).await.status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    status_path.rsplit('/').next().map(String::from)
}

/// Every operation the server describes: `(method, path template)`.
async fn operations(app: &TestApp) -> Vec<(String, String)> {
    let description = app
        .send(Method::GET, "/api/v1/openapi.json", None, &[], None)
        .await;
    assert_eq!(description.status, StatusCode::OK);
    let mut operations = Vec::new();
    for (path, item) in description.body["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    assert!(operations.len() > 20, "{operations:?}");
    operations
}

#[tokio::test]
async fn every_operation_answers_each_role_as_the_policy_table_says() {
    // A signing key, so the audit trail's checkpoint, key and proofs have something
    // to answer with.
    let url = circle_tests::fresh_schema_url().await;
    let key = circle_services::audit::note::Signer::generate("circle.test/log").unwrap();
    let app = circle_tests::spawn_app_with(&url, move |settings| {
        settings.audit_signing_key = Some(circle_services::secret::Secret::new(key));
        settings.audit_checkpoint_every_ms = 50;
    })
    .await;
    let tokens = Tokens::new(&app).await;
    // dr-b's own group, so that dr-b is a clinician of another group, not of none.
    let other = json!({"group_id": "grp-b", "name": "B", "focus": "grief", "format": "open",
                       "facilitators": ["dr-b"]});
    ok(app.post("/api/v1/groups", &app.admin, other).await, "grp-b");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.get("/api/v1/audit/checkpoint", &app.admin).await.status != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "no checkpoint signed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut failures = Vec::new();
    let mut cases = 0;
    for (method, template) in operations(&app).await {
        for who in EVERYONE {
            let mut world = seed(&app, &tokens, cases).await;
            cases += 1;
            if template.contains("{job_id}") {
                if let Some(job) = finished_export(&app, tokens.of(who), &world.group).await {
                    world.job = job;
                }
            }
            let (path, body) = request(&method, &template, &world);
            let m = Method::from_bytes(method.as_bytes()).expect("method");
            // A bulk export is asked for as a job; other routes ignore the header.
            let prefer = [("Prefer", "respond-async")];
            let answer = app
                .send(m, &path, Some(tokens.of(who)), &prefer, body.as_ref())
                .await;
            let want = expected(&method, &template, who);
            if class(answer.status) != Some(want) {
                failures.push(format!(
                    "{method} {template} as {who:?}: {} (expected {want:?}) {}",
                    answer.status, answer.body
                ));
            }
            let Some(want) = expected_missing(&method, &template, who) else {
                continue;
            };
            let missing = path
                .replace(&format!("/{}", world.group), "/no-such-group")
                .replace(&format!("={}", world.group), "=no-such-group")
                .replace(&format!("/{}", world.client), "/no-such-client");
            if missing == path {
                continue; // a list: nothing in it to be missing
            }
            let answer = app
                .send(Method::GET, &missing, Some(tokens.of(who)), &prefer, None)
                .await;
            if class(answer.status) != Some(want) {
                failures.push(format!(
                    "{method} {template} (missing record) as {who:?}: {} (expected {want:?}) {}",
                    answer.status, answer.body
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `dr-a` facilitates `grp-a`; `dr-b` facilitates `grp-b`, whose member `cli-b1` was
/// registered and brought in by an admin.
async fn two_practices(app: &TestApp) -> Tokens {
    let tokens = Tokens::new(app).await;
    for (group, dr) in [("grp-a", "dr-a"), ("grp-b", "dr-b")] {
        let body = json!({"group_id": group, "name": group, "focus": "anxiety", "format": "open",
                          "facilitators": [dr]});
        ok(app.post("/api/v1/groups", &app.admin, body).await, group);
    }
    let person = json!({"client_id": "cli-b1", "display_name": "Bea B.", "birth_year": 1990,
                        "contact": "bea@example.org"});
    ok(
        app.post("/api/v1/clients", &app.admin, person).await,
        "cli-b1",
    );
    let join = json!({"client_id": "cli-b1", "joined_on": "2026-01-05"});
    ok(
        app.post("/api/v1/groups/grp-b/members", &app.admin, join)
            .await,
        "join",
    );
    tokens
}

#[tokio::test]
async fn a_clinician_cannot_take_another_clinicians_client_into_their_group() {
    let app = spawn_app().await;
    let tokens = two_practices(&app).await;
    let read = app.get("/api/v1/clients/cli-b1", &tokens.dr_a).await;
    assert_eq!(read.status, StatusCode::FORBIDDEN);
    let head = app.head().await;
    let join = json!({"client_id": "cli-b1", "joined_on": "2026-01-12"});
    let taken = app
        .post("/api/v1/groups/grp-a/members", &tokens.dr_a, join.clone())
        .await;
    assert_eq!(taken.status, StatusCode::FORBIDDEN, "{:?}", taken.body);
    assert_eq!(taken.field(), "client_id");
    assert_eq!(app.head().await, head, "nothing is stored");
    let read = app.get("/api/v1/clients/cli-b1", &tokens.dr_a).await;
    assert_eq!(read.status, StatusCode::FORBIDDEN);
    assert!(read.body.get("personal").is_none());
    // The referral: an admin brings the client in, as its own recorded event.
    let referred = app
        .post("/api/v1/groups/grp-a/members", &app.admin, join)
        .await;
    assert_eq!(referred.status, StatusCode::OK, "{:?}", referred.body);
    let read = app.get("/api/v1/clients/cli-b1", &tokens.dr_a).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["personal"]["display_name"], "Bea B.");
}

#[tokio::test]
async fn idempotency_keys_are_each_callers_own() {
    let app = spawn_app().await;
    let tokens = two_practices(&app).await;
    let key = [("Idempotency-Key", "shared-key-1")];
    let send = |token: String, body: Value| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/api/v1/clients",
                Some(&token),
                &key,
                Some(&body),
            )
            .await
        }
    };
    let first = send(app.admin.clone(), json!({"client_id": "k-1"})).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // Another caller's same key is their own key: a new request, not a conflict.
    let second_admin = app.token(Role::Admin, None).await;
    let theirs = send(second_admin.clone(), json!({"client_id": "k-2"})).await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{:?}", theirs.body);
    assert_eq!(theirs.body["id"], "k-2");
    let clinician = send(tokens.dr_b.clone(), json!({"client_id": "k-3"})).await;
    assert_eq!(
        clinician.status,
        StatusCode::CREATED,
        "{:?}",
        clinician.body
    );
    // Each caller's replay is their own answer; a changed body is still a conflict.
    let replay = send(second_admin.clone(), json!({"client_id": "k-2"})).await;
    assert_eq!(replay.body, theirs.body);
    let changed = send(second_admin, json!({"client_id": "k-9"})).await;
    assert_eq!(changed.status, StatusCode::CONFLICT);
    assert_eq!(changed.field(), "Idempotency-Key");
    // A caller who may not write here is refused before any key is looked up.
    let key = [("Idempotency-Key", "shared-key-2")];
    let path = "/api/v1/groups/grp-a/sessions";
    let body = json!({"session_id": "s1", "starts_at": "2026-02-03T18:00:00+00:00",
                      "duration_minutes": 60});
    let by_admin = app
        .send(Method::POST, path, Some(&app.admin), &key, Some(&body))
        .await;
    assert_eq!(by_admin.status, StatusCode::CREATED);
    let by_other = app
        .send(Method::POST, path, Some(&tokens.dr_b), &key, Some(&body))
        .await;
    assert_eq!(
        by_other.status,
        StatusCode::FORBIDDEN,
        "{:?}",
        by_other.body
    );
}

#[tokio::test]
async fn refusals_do_not_tell_whether_a_client_exists_or_was_erased() {
    let app = spawn_app().await;
    let tokens = two_practices(&app).await;
    ok(
        app.post("/api/v1/clients", &app.admin, json!({"client_id": "gone"}))
            .await,
        "gone",
    );
    let erase = json!({"reason": "client_request"});
    ok(
        app.post("/api/v1/clients/gone/erasure", &app.admin, erase)
            .await,
        "erase",
    );
    for who in [Who::Reporter, Who::Auditor, Who::Facilitator] {
        let mut answers = Vec::new();
        for client in ["cli-b1", "gone", "never-registered"] {
            let join = json!({"client_id": client, "joined_on": "2026-01-12"});
            let answer = app
                .post("/api/v1/groups/grp-a/members", tokens.of(who), join)
                .await;
            assert_eq!(
                answer.status,
                StatusCode::FORBIDDEN,
                "{who:?} {client}: {:?}",
                answer.body
            );
            // Auditors may read every client, so may know which exist.
            let read = app
                .get(&format!("/api/v1/clients/{client}"), tokens.of(who))
                .await;
            if who != Who::Auditor {
                assert_eq!(read.status, StatusCode::FORBIDDEN, "{who:?} {client}");
                answers.push((answer.body, read.body));
            } else {
                answers.push((answer.body, Value::Null));
            }
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{who:?}: {answers:?}"
        );
    }
}

//! The dashboard over HTTP, through the real router, guard, write skeleton and
//! store: signing in, pages by role, the weekly forms, CSRF, the live stream.
//! (The browser tests drive the same pages in Chromium.)

use std::time::Duration;

use circle_services::app::Application;
use circle_services::auth::Role;
use circle_services::config::{Overrides, Settings};
use circle_tests::{fresh_schema_url, master_key_for, spawn_app, TestApp};
use reqwest::{redirect, StatusCode};
use serde_json::{json, Value};

/// A browser without JavaScript: one session cookie, redirects not followed.
struct Browser<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    cookie: String,
}

struct Page {
    status: StatusCode,
    location: String,
    cache_control: String,
    html: String,
}

impl Page {
    /// The value of the first hidden field `name` in the page.
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.html.find(&marker).expect(name) + marker.len();
        let end = self.html[start..].find('"').expect("closing quote");
        self.html[start..start + end].to_string()
    }
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Browser<'a> {
        let http = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .build()
            .expect("client");
        Browser {
            app,
            http,
            cookie: String::new(),
        }
    }

    /// Signs in through the form, as a person would: its CSRF cookie, then the token.
    async fn sign_in(app: &'a TestApp, token: &str) -> Browser<'a> {
        let mut browser = Browser::new(app);
        let form = browser.get("/app/sign-in").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.field("csrf");
        let signed_in = browser
            .post("/app/sign-in", &[("csrf", &csrf), ("token", token)])
            .await;
        assert_eq!(
            signed_in.status,
            StatusCode::SEE_OTHER,
            "{}",
            signed_in.html
        );
        assert!(!browser.cookie.contains("circle_signin"));
        browser
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let response = request
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("request");
        for cookie in response.headers().get_all("set-cookie") {
            let pair = cookie.to_str().unwrap().split(';').next().unwrap();
            let name = pair.split('=').next().unwrap();
            // One cookie per name, as a browser keeps them.
            let mut kept: Vec<&str> = self
                .cookie
                .split("; ")
                .filter(|c| !c.is_empty() && !c.starts_with(&format!("{name}=")))
                .collect();
            if !pair.ends_with('=') {
                kept.push(pair);
            }
            self.cookie = kept.join("; ");
        }
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let cache_control = response
            .headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let html = response.text().await.expect("body");
        Page {
            status,
            location,
            cache_control,
            html,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.app.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let request = self
            .http
            .post(format!("{}{path}", self.app.base))
            .form(fields);
        self.send(request).await
    }
}

/// Writes as the admin and returns once the projection holds the write (pages read
/// the projection, which follows the log a moment behind).
async fn ok(app: &TestApp, path: &str, body: Value) -> i64 {
    let answer = app.post(path, &app.admin, body).await;
    assert!(answer.status.is_success(), "{path}: {:?}", answer.body);
    let position = answer.position();
    let seen = format!("/api/v1/alerts?min_position={position}");
    let caught_up = app.get(&seen, &app.admin).await;
    assert_eq!(caught_up.status, StatusCode::OK, "{:?}", caught_up.body);
    position
}

/// Dr A's group with three members, two held sessions and an upcoming one; member
/// c-risk scored 2 on PHQ-9 item 9. Dr B runs another group.
async fn practice(app: &TestApp) {
    let group = |id: &str, dr: &str| {
        json!({"group_id": id, "name": format!("Group of {dr}"), "focus": "depression",
               "format": "open", "facilitators": [dr]})
    };
    ok(app, "/api/v1/groups", group("grp-a", "dr-a")).await;
    ok(app, "/api/v1/groups", group("grp-b", "dr-b")).await;
    for client in ["c-risk", "c-absent", "c-fine", "c-other"] {
        ok(app, "/api/v1/clients", json!({"client_id": client})).await;
    }
    for client in ["c-risk", "c-absent", "c-fine"] {
        let join = json!({"client_id": client, "joined_on": "2026-01-05"});
        ok(app, "/api/v1/groups/grp-a/members", join).await;
    }
    let join = json!({"client_id": "c-other", "joined_on": "2026-01-05"});
    ok(app, "/api/v1/groups/grp-b/members", join).await;
    for (session, at) in [
        ("s1", "2026-01-13T18:00:00+00:00"),
        ("s2", "2026-01-20T18:00:00+00:00"),
        ("s3", "2099-01-27T18:00:00+00:00"),
    ] {
        let schedule = json!({"session_id": session, "starts_at": at, "duration_minutes": 90});
        ok(app, "/api/v1/groups/grp-a/sessions", schedule).await;
    }
    for session in ["s1", "s2"] {
        let records = json!({"records": [
            {"client_id": "c-risk", "status": "present"},
            {"client_id": "c-fine", "status": "present"},
            {"client_id": "c-absent", "status": "no_show"}]});
        let path = format!("/api/v1/groups/grp-a/sessions/{session}/attendance");
        ok(app, &path, records).await;
    }
    let phq9 =
        json!({"client_id": "c-risk", "instrument": "PHQ-9", "items": [1, 1, 1, 1, 1, 1, 1, 1, 2]});
    ok(app, "/api/v1/groups/grp-a/sessions/s2/feedback", phq9).await;
}

/// The routes the access log records as having shown `client_id`.
async fn access_routes(app: &TestApp, client_id: &str) -> Vec<String> {
    let path = format!("/api/v1/audit/access?client_id={client_id}");
    let log = app.get(&path, &app.admin).await;
    log.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["route"].as_str().map(String::from))
        .collect()
}

/// The member rows of the Today page, in order, with the rule each shows.
fn today_rows(html: &str) -> Vec<String> {
    html.split("<tr><td data-label=\"Member\"><a href=\"/app/clients/")
        .skip(1)
        .map(|row| {
            let id = &row[..row.find('"').unwrap()];
            let need = row
                .split("class=\"chip ")
                .nth(1)
                .map(|c| &c[c.find('>').unwrap() + 1..c.find('<').unwrap()])
                .unwrap_or("");
            format!("{id}: {need}")
        })
        .collect()
}

#[tokio::test]
async fn a_clinician_signs_in_and_sees_their_members_by_need_and_nothing_of_others() {
    let app = spawn_app().await;
    practice(&app).await;
    let dr_a = app.token(Role::Clinician, Some("dr-a")).await;
    let mut browser = Browser::sign_in(&app, &dr_a).await;
    assert!(browser.cookie.contains("circle_session="));

    let today = browser.get("/app").await;
    assert_eq!(today.status, StatusCode::OK, "{}", today.html);
    assert_eq!(
        today.cache_control, "no-store",
        "a page of client data is never cached"
    );
    assert_eq!(
        today_rows(&today.html),
        [
            "c-risk: Risk item",
            "c-absent: Consecutive absences",
            "c-fine: No rule fired"
        ]
    );
    assert!(today
        .html
        .contains("PHQ-9 item 9 scored 2; not yet reviewed"));
    assert!(!today.html.contains("grp-b") && !today.html.contains("c-other"));

    // Another clinician's group and member, by URL: a 403 page, not data.
    for path in ["/app/groups/grp-b", "/app/clients/c-other"] {
        let refused = browser.get(path).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}");
        assert!(refused.html.contains("<h1>403"), "{}", refused.html);
        assert!(!refused.html.contains("c-other"));
    }
    let group = browser.get("/app/groups/grp-a").await;
    assert_eq!(group.status, StatusCode::OK);
    assert!(group.html.contains("unrecorded") || group.html.contains("no-show"));
    let member = browser.get("/app/clients/c-risk").await;
    assert_eq!(member.status, StatusCode::OK);
    assert!(member.html.contains("<svg"), "one chart per instrument");
    assert!(member.html.contains("PHQ-9 items") && member.html.contains("Item 9 (risk item)"));
    for other in ["c-fine", "c-absent", "c-other"] {
        assert!(!member.html.contains(other), "never another member's data");
    }

    // The pages that showed members are in the access log, as the JSON reads are.
    let routes = access_routes(&app, "c-risk").await;
    for route in [
        "GET /app",
        "GET /app/groups/{group_id}",
        "GET /app/clients/{client_id}",
    ] {
        assert!(routes.iter().any(|r| r == route), "{route} in {routes:?}");
    }
}

#[tokio::test]
async fn without_a_session_pages_lead_to_sign_in_and_a_revoked_token_ends_the_session_at_once() {
    let app = spawn_app().await;
    practice(&app).await;
    let mut stranger = Browser::new(&app);
    assert_eq!(
        stranger.get("/").await.location,
        "/app",
        "the root opens on the dashboard"
    );
    let page = stranger.get("/app/groups/grp-a").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location, "/app/sign-in");

    let mut wrong = Browser::new(&app);
    let form = wrong.get("/app/sign-in").await;
    let refused = wrong
        .post(
            "/app/sign-in",
            &[("csrf", &form.field("csrf")), ("token", "not-a-token")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.html.contains("not valid"));
    assert!(!wrong.cookie.contains("circle_session"));

    let created = app
        .post(
            "/api/v1/tokens",
            &app.admin,
            json!({"role": "clinician", "clinician_id": "dr-a"}),
        )
        .await;
    let token = created.body["token"].as_str().expect("token").to_string();
    let id = created.body["token_id"].as_str().expect("id").to_string();
    let mut browser = Browser::sign_in(&app, &token).await;
    assert_eq!(browser.get("/app").await.status, StatusCode::OK);
    let revoked = app
        .post(
            &format!("/api/v1/tokens/{id}/revocation"),
            &app.admin,
            json!({}),
        )
        .await;
    assert!(revoked.status.is_success(), "{:?}", revoked.body);
    let after = browser.get("/app").await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.location, "/app/sign-in");

    // Signing out clears the cookie.
    let admin = &app.admin.clone();
    let mut browser = Browser::sign_in(&app, admin).await;
    let today = browser.get("/app").await;
    let out = browser
        .post("/app/sign-out", &[("csrf", &today.field("csrf"))])
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/app").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_attendance_form_records_once_through_the_write_skeleton_and_refuses_a_forged_post() {
    let app = spawn_app().await;
    practice(&app).await;
    let dr_a = app.token(Role::Clinician, Some("dr-a")).await;
    let mut browser = Browser::sign_in(&app, &dr_a).await;
    let path = "/app/groups/grp-a/sessions/s3/attendance";
    let form = browser.get(path).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.html);
    for member in ["c-risk", "c-absent", "c-fine"] {
        assert!(form.html.contains(&format!("name=\"status:{member}\"")));
    }
    let (csrf, key) = (form.field("csrf"), form.field("idempotency_key"));
    let fields = [
        ("csrf", csrf.as_str()),
        ("idempotency_key", key.as_str()),
        ("status:c-risk", "present"),
        ("status:c-absent", "late"),
        ("status:c-fine", "excused"),
    ];

    // A post without this session's CSRF token records nothing.
    let head = app.head().await;
    let mut forged = fields;
    forged[0] = ("csrf", "forged");
    let refused = browser.post(path, &forged).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(app.head().await, head);

    let sent = browser.post(path, &fields).await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.html);
    assert!(sent.location.starts_with("/app/groups/grp-a?after="));
    let after_first = app.head().await;
    assert_eq!(after_first, head + 3, "three marks");
    let again = browser.post(path, &fields).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    assert_eq!(
        app.head().await,
        after_first,
        "a double submit records once"
    );

    let group = app.get("/api/v1/groups/grp-a", &app.admin).await;
    let s3 = group.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session_id"] == "s3")
        .unwrap()
        .clone();
    assert_eq!(s3["attendance"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_questionnaire_out_of_range_is_refused_beside_its_field_and_a_risk_review_is_an_event() {
    let app = spawn_app().await;
    practice(&app).await;
    let dr_a = app.token(Role::Clinician, Some("dr-a")).await;
    let mut browser = Browser::sign_in(&app, &dr_a).await;
    let path = "/app/groups/grp-a/sessions/s2/feedback";
    let form = browser.get(&format!("{path}?instrument=GAD-7")).await;
    assert!(form.html.contains("min=\"0\" max=\"3\" step=\"1\""));
    let csrf = form.field("csrf");
    let key = form.field("idempotency_key");
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("idempotency_key", key.as_str()),
        ("instrument", "GAD-7"),
        ("client_id", "c-fine"),
    ];
    let names: Vec<String> = (0..7).map(|i| format!("items[{i}]")).collect();
    for (i, name) in names.iter().enumerate() {
        fields.push((name, if i == 4 { "5" } else { "1" }));
    }
    let head = app.head().await;
    let refused = browser.post(path, &fields).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.html.contains(
            "<span class=\"field-error\" id=\"items-4--error\">GAD-7 item 5 must be a whole number from 0 to 3, got 5</span>"
        ),
        "{}",
        refused.html
    );
    assert_eq!(app.head().await, head, "nothing stored");

    let today = browser.get("/app").await;
    let review = browser
        .post(
            "/app/groups/grp-a/members/c-risk/risk-review",
            &[("csrf", &today.field("csrf")), ("idempotency_key", "r1")],
        )
        .await;
    assert_eq!(review.status, StatusCode::SEE_OTHER, "{}", review.html);
    let position: i64 = review.location.rsplit('=').next().unwrap().parse().unwrap();
    let events = app
        .get(
            &format!("/api/v1/audit/events?after={}", position - 1),
            &app.admin,
        )
        .await;
    assert_eq!(events.body["events"][0]["event_type"], "RiskReviewed");
    let today = browser.get("/app").await;
    assert_eq!(today_rows(&today.html)[0], "c-absent: Consecutive absences");
}

#[tokio::test]
async fn an_open_page_hears_of_a_risk_item_within_a_second_and_resumes_from_its_last_position() {
    let app = spawn_app().await;
    practice(&app).await;
    let dr_a = app.token(Role::Clinician, Some("dr-a")).await;
    let browser = Browser::sign_in(&app, &dr_a).await;
    let open = |last: Option<String>| {
        let mut request = browser
            .http
            .get(format!("{}/app/events", app.base))
            .header("cookie", &browser.cookie);
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        request.send()
    };
    let mut response = open(None).await.expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    let mut text = String::new();
    let ready = next_event(&mut response, &mut text).await;
    assert!(ready.starts_with("event: ready"), "{ready}");

    let started = std::time::Instant::now();
    let phq9 =
        json!({"client_id": "c-fine", "instrument": "PHQ-9", "items": [0, 0, 0, 0, 0, 0, 0, 0, 1]});
    let position = ok(&app, "/api/v1/groups/grp-a/sessions/s2/feedback", phq9).await;
    let event = tokio::time::timeout(Duration::from_secs(1), next_event(&mut response, &mut text))
        .await
        .expect("the log event within a second");
    assert!(event.contains(&format!("id: {position}")), "{event}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // A reconnect that saw less is told at once where the log is.
    let mut resumed = open(Some((position - 5).to_string()))
        .await
        .expect("stream");
    let chunk = tokio::time::timeout(Duration::from_secs(1), resumed.chunk())
        .await
        .expect("at once")
        .expect("bytes")
        .expect("an event");
    let chunk = String::from_utf8(chunk.to_vec()).unwrap();
    assert!(
        chunk.contains("event: log") && chunk.contains(&format!("id: {position}")),
        "{chunk}"
    );
}

/// The next event (up to its blank line) of an event stream.
async fn next_event(response: &mut reqwest::Response, text: &mut String) -> String {
    loop {
        if let Some(end) = text.find("\n\n") {
            let event = text[..end].to_string();
            text.drain(..end + 2);
            return event;
        }
        let chunk = response.chunk().await.expect("bytes").expect("open stream");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn open_event_streams_end_when_shutdown_begins_so_they_never_hold_it_up() {
    let url = fresh_schema_url().await;
    let admin = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let settings = Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(url.clone()),
            admin_token: Some(admin.clone()),
            master_key: Some(master_key_for(&url)),
            ..Overrides::default()
        },
    )
    .expect("settings");
    let app = Application::build(&settings).await.expect("build");
    let base = format!("http://{}", app.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let cookie = circle_services::dashboard::session::Session::new(admin, chrono::Utc::now())
        .set_cookie(false);
    let cookie = cookie
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let response = http
            .get(format!("{base}/app/events"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("stream");
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    let started = std::time::Instant::now();
    stop.send(()).expect("signal");
    for mut stream in streams {
        // The `ready` event, then the end of the stream.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while stream.chunk().await.expect("bytes").is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the stream ended on shutdown");
    }
    let outcome = tokio::time::timeout(Duration::from_secs(8), running)
        .await
        .expect("shutdown finished within the grace period")
        .expect("task");
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_reporter_gets_the_aggregate_practice_and_an_auditor_reads_without_forms_or_names() {
    let app = spawn_app().await;
    practice(&app).await;
    let reporter = app.token(Role::Reporter, None).await;
    let mut browser = Browser::new(&app);
    let form = browser.get("/app/sign-in").await;
    let signed_in = browser
        .post(
            "/app/sign-in",
            &[("csrf", &form.field("csrf")), ("token", &reporter)],
        )
        .await;
    assert_eq!(signed_in.location, "/app/practice");
    let practice_page = browser.get("/app/practice").await;
    assert_eq!(practice_page.status, StatusCode::OK);
    assert!(practice_page.html.contains("The aggregate form"));
    assert!(practice_page.html.contains("fewer than 5"));
    assert_eq!(browser.get("/app").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        browser.get("/app/groups/grp-a").await.status,
        StatusCode::FORBIDDEN
    );

    let auditor = app.token(Role::Auditor, None).await;
    ok(
        &app,
        "/api/v1/clients",
        json!({"client_id": "c-named", "display_name": "Ada L."}),
    )
    .await;
    let join = json!({"client_id": "c-named", "joined_on": "2026-01-05"});
    ok(&app, "/api/v1/groups/grp-a/members", join).await;
    let mut browser = Browser::sign_in(&app, &auditor).await;
    let group = browser.get("/app/groups/grp-a").await;
    assert_eq!(group.status, StatusCode::OK);
    assert!(!group.html.contains("Schedule a session"), "read-only");
    assert!(!group.html.contains("/attendance\""), "no forms");
    let member = browser.get("/app/clients/c-named").await;
    assert!(member.html.contains("Personal data withheld"));
    assert!(!member.html.contains("Ada L."));
    let audit = browser.get("/app/audit?as_of=2099-01-01").await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.html);
    assert!(audit.html.contains("action=\"/app/audit/history\""));

    // A group's and a member's history, read-only, personal data sealed, logged.
    let history = browser.get("/app/audit/history?group_id=grp-a").await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.html);
    assert!(history.html.contains("MemberJoined") && history.html.contains("c-named"));
    assert!(!history.html.contains("<form method=\"post\""), "read-only");
    let client = browser.get("/app/audit/history?client_id=c-named").await;
    assert_eq!(client.status, StatusCode::OK, "{}", client.html);
    assert!(client.html.contains("ClientRegistered"), "{}", client.html);
    assert!(client.html.contains("sealed") && !client.html.contains("Ada L."));
    let routes = access_routes(&app, "c-named").await;
    assert!(
        routes.iter().any(|r| r == "GET /app/audit/history"),
        "{routes:?}"
    );
    let admin = app.admin.clone();
    let mut browser = Browser::sign_in(&app, &admin).await;
    assert!(browser
        .get("/app/clients/c-named")
        .await
        .html
        .contains("Ada L."));
}

#[tokio::test]
async fn a_corrected_mark_shows_as_a_correction_with_what_it_replaced() {
    let app = spawn_app().await;
    practice(&app).await;
    let records = json!({"records": [{"client_id": "c-absent", "status": "excused"}]});
    ok(&app, "/api/v1/groups/grp-a/sessions/s1/attendance", records).await;
    let admin = app.admin.clone();
    let mut browser = Browser::sign_in(&app, &admin).await;
    let group = browser.get("/app/groups/grp-a").await;
    assert_eq!(group.status, StatusCode::OK);
    assert!(
        group
            .html
            .contains("excused, corrected: recorded earlier as no-show"),
        "{}",
        group.html
    );
    assert!(group.html.contains("class=\"corrected\""));
}

#[tokio::test]
async fn an_admin_pages_through_many_groups_with_the_most_urgent_members_first() {
    let app = spawn_app().await;
    practice(&app).await;
    for i in 0..24 {
        let group = json!({"group_id": format!("grp-x{i:02}"), "name": format!("Extra {i:02}"),
            "focus": "anxiety", "format": "open", "facilitators": ["dr-x"]});
        ok(&app, "/api/v1/groups", group).await;
    }
    let admin = app.admin.clone();
    let mut browser = Browser::sign_in(&app, &admin).await;
    let first = browser.get("/app").await;
    assert_eq!(first.status, StatusCode::OK);
    // Across the practice, the urgent rows first; then the neediest group.
    let urgent = &first.html[first.html.find("Needs someone now").expect("urgent list")..];
    assert!(urgent.find("c-risk").unwrap() < urgent.find("c-absent").unwrap());
    assert!(first.html.find("Group of dr-a").unwrap() < first.html.find("Extra 00").unwrap());
    assert!(first.html.contains("href=\"/app?page=2\""));
    assert!(!first.html.contains("Extra 23"), "20 groups a page");
    let second = browser.get("/app?page=2").await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(second.html.contains("Extra 23") && !second.html.contains("Extra 00<"));
    assert!(second.html.contains("aria-current=\"page\">2<"));
}

//! Concurrency on a real PostgreSQL: capacity under a rush of joins, a reader that
//! follows the log while many writers append, and cached state versus full replay.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use circle_events::client::ConsentScope;
use circle_events::group::{AttendanceMark, AttendanceStatus, GroupCommand};
use circle_services::auth::Principal;
use circle_services::commands::{CommandContext, CommandError, IdempotencyRequest, Link, Step};
use circle_services::store::{Append, AppendResult, EventMetadata, NewEvent, Store};
use circle_tests::{spawn_app, spawn_app_on, spawn_app_with, TestApp};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

async fn group_and_clients(app: &TestApp, clients: usize) {
    let created = app
        .post(
            "/api/v1/groups",
            &app.admin,
            json!({"group_id": "g1", "name": "Rush", "focus": "anxiety", "format": "open",
                   "capacity": 10, "facilitators": ["dr_a"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    for n in 0..clients {
        let answer = app
            .post(
                "/api/v1/clients",
                &app.admin,
                json!({"client_id": format!("c{n}")}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
}

async fn member_joined_events(store: &Store) -> Vec<String> {
    store
        .load_stream("group", "g1", 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "MemberJoined")
        .map(|e| e.payload["client_id"].as_str().unwrap().to_string())
        .collect()
}

/// 32 joins at once against one group of capacity 10, split across two Circle
/// instances on the same database (two processes with separate caches), so the
/// store's version check and the service's retries are both exercised.
#[tokio::test]
async fn thirty_two_concurrent_joins_fill_ten_places_exactly() {
    let first = spawn_app().await;
    group_and_clients(&first, 32).await;
    let second = spawn_app_on(&first.database_url).await;
    let tokens = [first.admin.clone(), second.admin.clone()];
    let joins = (0..32).map(|n| {
        let app = if n % 2 == 0 { &first } else { &second };
        let token = &tokens[n % 2];
        async move {
            app.post(
                "/api/v1/groups/g1/members",
                token,
                json!({"client_id": format!("c{n}"), "joined_on": "2026-01-06"}),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(joins).await;
    let accepted = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let at_capacity = answers
        .iter()
        .filter(|a| a.status == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    let others: Vec<_> = answers
        .iter()
        .filter(|a| a.status != StatusCode::OK && a.status != StatusCode::UNPROCESSABLE_ENTITY)
        .map(|a| (a.status, a.body.clone()))
        .collect();
    // A join that kept meeting the other instance's writes may be told to retry (409);
    // it must never be silently lost or doubled.
    assert!(
        others.iter().all(|(s, _)| *s == StatusCode::CONFLICT),
        "{others:?}"
    );
    assert_eq!(
        accepted, 10,
        "answers: {accepted} ok, {at_capacity} full, {others:?}"
    );

    let joined = member_joined_events(&first.state.store).await;
    assert_eq!(joined.len(), 10);
    assert_eq!(
        joined.iter().collect::<HashSet<_>>().len(),
        10,
        "no member twice"
    );
    let positions: Vec<i64> = first
        .state
        .store
        .read_all(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(
        positions,
        (1..=positions.len() as i64).collect::<Vec<_>>(),
        "gap-free log"
    );
    for app in [&first, &second] {
        let group = app.get("/api/v1/groups/g1", &app.admin).await;
        assert_eq!(group.body["active_members"], 10);
    }
}

/// Cached aggregate state, advanced command by command (with another instance
/// writing in between), equals the state rebuilt from the whole log.
#[tokio::test]
async fn cached_state_equals_a_full_replay() {
    let first = spawn_app().await;
    group_and_clients(&first, 12).await;
    let second = spawn_app_on(&first.database_url).await;
    for n in 0..12 {
        let app = if n % 3 == 0 { &second } else { &first };
        app.post(
            "/api/v1/groups/g1/members",
            &app.admin,
            json!({"client_id": format!("c{n}"), "joined_on": "2026-01-06"}),
        )
        .await;
    }
    for week in 0..30 {
        let app = if week % 4 == 0 { &second } else { &first };
        let session = format!("s{week}");
        app.post(
            "/api/v1/groups/g1/sessions",
            &app.admin,
            json!({"session_id": session, "starts_at": "2026-02-03T18:00:00+01:00", "duration_minutes": 90}),
        )
        .await;
        let records: Vec<_> = (0..10)
            .map(|n| json!({"client_id": format!("c{n}"), "status": if (n + week) % 3 == 0 { "no_show" } else { "present" }}))
            .collect();
        let answer = app
            .post(
                &format!("/api/v1/groups/g1/sessions/{session}/attendance"),
                &app.admin,
                json!({"records": records}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        // A correction for one member, from the other instance.
        let other = if week % 4 == 0 { &first } else { &second };
        other
            .post(
                &format!("/api/v1/groups/g1/sessions/{session}/attendance"),
                &other.admin,
                json!({"records": [{"client_id": "c1", "status": "excused"}]}),
            )
            .await;
    }
    for app in [&first, &second] {
        let cached = app.state.groups.load("g1").await.unwrap();
        let replayed = app.state.groups.replay("g1").await.unwrap();
        assert_eq!(cached, replayed);
        assert_eq!(
            cached.aggregate.sequence, cached.version,
            "each event applied once"
        );
    }
}

/// Joins of `clients` to g1 as links of one chain, as `circle import` runs a group's rows.
fn join_links(clients: &[&str]) -> Vec<Link<GroupCommand>> {
    let ctx = CommandContext::new(Principal::system("import:memberships.csv"));
    clients
        .iter()
        .map(|client_id| Link {
            steps: vec![Step {
                command: GroupCommand::JoinGroup {
                    client_id: client_id.to_string(),
                    joined_on: NaiveDate::from_ymd_opt(2026, 1, 6).unwrap(),
                },
                occurred_at: None,
            }],
            ctx: ctx.clone(),
        })
        .collect()
}

/// A chain is decided on the instance's cached state in one go. When another
/// instance wrote first, the chain's appends are refused and its links run again
/// alone on the state the log really holds: capacity is kept.
#[tokio::test]
async fn a_chain_decided_on_a_stale_cache_runs_again_on_the_true_state() {
    let first = spawn_app().await;
    group_and_clients(&first, 12).await;
    let second = spawn_app_on(&first.database_url).await;
    // Given the first instance has g1 cached empty, and the second fills nine places,
    assert_eq!(first.state.groups.load("g1").await.unwrap().version, 1);
    for n in 0..9 {
        let join = json!({"client_id": format!("c{n}"), "joined_on": "2026-01-06"});
        let answer = second
            .post("/api/v1/groups/g1/members", &second.admin, join)
            .await;
        assert!(answer.status.is_success(), "{:?}", answer.body);
    }
    // when the first runs three joins, a refused one among them, as one chain,
    let state = &first.state;
    let results = state
        .commands
        .execute_chain(
            &state.groups,
            "g1",
            join_links(&["c9", "c0", "c10"]),
            |_| true,
        )
        .await;
    // then c9 takes the last place, c0 is already a member and c10 finds it full.
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let refusals = [&results[1], &results[2]].map(|result| format!("{result:?}"));
    assert!(refusals[0].contains("AlreadyMember"), "{results:?}");
    assert!(refusals[1].contains("AtCapacity"), "{results:?}");
    let joined = member_joined_events(&state.store).await;
    assert_eq!(joined.len(), 10, "{joined:?}");
    let cached = state.groups.load("g1").await.unwrap();
    assert_eq!(cached, state.groups.replay("g1").await.unwrap());
}

/// A chain on a fresh cache: every link is decided on the state the ones before it
/// leave, a refused link leaves it as it was, and one wait for the store serves all.
#[tokio::test]
async fn a_chains_links_see_the_links_before_them_and_a_refusal_changes_nothing() {
    let app = spawn_app().await;
    group_and_clients(&app, 3).await;
    let state = &app.state;
    let results = state
        .commands
        .execute_chain(
            &state.groups,
            "g1",
            join_links(&["c0", "c0", "c1", "nobody", "c2"]),
            |_| true,
        )
        .await;
    let accepted: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(accepted, [true, false, true, true, true], "{results:?}");
    let versions: Vec<i64> = results
        .iter()
        .flatten()
        .map(|receipt| receipt.body["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3, 4, 5]);
    assert_eq!(
        member_joined_events(&state.store).await,
        ["c0", "c1", "nobody", "c2"]
    );
}

/// Two links with one idempotency key (two equal import rows): the second is answered
/// by the first once it has committed, as the key's reuse, not decided on the state
/// the first leaves (where the same join would be "already a member").
#[tokio::test]
async fn a_second_link_with_the_same_key_is_answered_by_the_first() {
    let app = spawn_app().await;
    group_and_clients(&app, 1).await;
    let state = &app.state;
    let mut links = join_links(&["c0", "c0"]);
    for (link, hash) in links.iter_mut().zip([1u8, 2]) {
        link.ctx.idempotency = Some(IdempotencyRequest {
            key: "import:memberships:same".into(),
            request_hash: vec![hash],
            found_absent: false,
        });
    }
    let results = state
        .commands
        .execute_chain(&state.groups, "g1", links, |_| true)
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(CommandError::IdempotencyKeyReused)),
        "{results:?}"
    );
    assert_eq!(member_joined_events(&state.store).await, ["c0"]);
}

/// A link that writes nothing (a mark already recorded) answers the version and the
/// position of the last link committed before it, as it would alone after it.
#[tokio::test]
async fn a_link_that_writes_nothing_answers_the_position_before_it() {
    let app = spawn_app().await;
    group_and_clients(&app, 1).await;
    let state = &app.state;
    let mut links = join_links(&["c0"]);
    let step = |command| Link {
        steps: vec![Step {
            command,
            occurred_at: None,
        }],
        ctx: links[0].ctx.clone(),
    };
    let mark = || GroupCommand::RecordAttendance {
        session_id: "s1".into(),
        records: vec![AttendanceMark {
            client_id: "c0".into(),
            status: AttendanceStatus::Present,
        }],
    };
    let schedule = GroupCommand::ScheduleSession {
        session_id: "s1".into(),
        starts_at: "2026-01-13T18:00:00+00:00".parse().unwrap(),
        duration_minutes: 90,
    };
    links.extend([step(schedule), step(mark()), step(mark())]);
    let results = state
        .commands
        .execute_chain(&state.groups, "g1", links, |_| true)
        .await;
    let answers: Vec<(i64, i64)> = results
        .iter()
        .map(|result| {
            let body = &result.as_ref().expect("accepted").body;
            (
                body["version"].as_i64().unwrap(),
                body["position"].as_i64().unwrap(),
            )
        })
        .collect();
    let (marked_version, marked_at) = answers[2];
    assert_eq!(answers[3], (marked_version, marked_at), "{answers:?}");
    assert_eq!(state.store.head_position().await.unwrap(), marked_at);
}

/// A Circle that keeps at most `capacity` aggregates of each type in memory.
async fn app_with_cache(database_url: &str, capacity: usize) -> TestApp {
    spawn_app_with(database_url, |settings| {
        settings.aggregate_cache_capacity = capacity
    })
    .await
}

/// Many clients, four requests in flight at a time: the cache of client state never
/// holds more than its capacity, though every client is written and read.
#[tokio::test]
async fn the_aggregate_cache_stays_within_its_capacity_under_load() {
    let app = app_with_cache(&circle_tests::fresh_schema_url().await, 8).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (state, done) = (app.state.clone(), done.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(state.clients.cached());
                tokio::task::yield_now().await;
            }
            most
        })
    };
    let app = &app;
    let work = futures_util::stream::iter(0..120).map(|n| async move {
        let client = format!("c{n}");
        let registered = app
            .post("/api/v1/clients", &app.admin, json!({"client_id": client}))
            .await;
        assert_eq!(registered.status, StatusCode::CREATED);
        let consent = app
            .post(
                &format!("/api/v1/clients/{client}/consents"),
                &app.admin,
                json!({"scope": "treatment", "granted": true}),
            )
            .await;
        assert_eq!(consent.status, StatusCode::OK);
        // Its own client: another task's may not be registered yet (four at a time).
        let read = app
            .get(&format!("/api/v1/clients/{client}"), &app.admin)
            .await;
        assert_eq!(read.status, StatusCode::OK);
    });
    work.buffer_unordered(4).collect::<Vec<()>>().await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let most = watcher.await.unwrap();
    assert!(most <= 8, "the cache held {most} clients");
    assert!(most >= 4, "the cache was used ({most})");
    assert!(app.state.clients.cached() <= 8);
    let last = app.state.clients.load("c119").await.unwrap();
    assert!(last.aggregate.consents.contains(&ConsentScope::Treatment));
}

/// With room for two groups and three in use, the group is evicted between most
/// commands (and another instance writes meanwhile); reloaded, it equals the
/// state rebuilt from the whole log.
#[tokio::test]
async fn an_evicted_aggregate_reloads_to_the_state_of_a_full_replay() {
    let url = circle_tests::fresh_schema_url().await;
    let first = app_with_cache(&url, 2).await;
    group_and_clients(&first, 10).await;
    let second = app_with_cache(&url, 2).await;
    for other in ["g2", "g3"] {
        let created = first
            .post(
                "/api/v1/groups",
                &first.admin,
                json!({"group_id": other, "name": "Other", "focus": "grief",
                       "format": "open", "facilitators": ["dr_b"]}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
    }
    for n in 0..10 {
        let app = if n % 3 == 0 { &second } else { &first };
        let joined = app
            .post(
                "/api/v1/groups/g1/members",
                &app.admin,
                json!({"client_id": format!("c{n}"), "joined_on": "2026-01-06"}),
            )
            .await;
        assert_eq!(joined.status, StatusCode::OK, "{:?}", joined.body);
        for other in ["g2", "g3"] {
            app.get(&format!("/api/v1/groups/{other}"), &app.admin)
                .await;
        }
    }
    for week in 0..6 {
        let app = if week % 2 == 0 { &second } else { &first };
        let session = format!("s{week}");
        let scheduled = app
            .post(
                "/api/v1/groups/g1/sessions",
                &app.admin,
                json!({"session_id": session, "starts_at": "2026-02-03T18:00:00+01:00", "duration_minutes": 90}),
            )
            .await;
        assert_eq!(
            scheduled.status,
            StatusCode::CREATED,
            "{:?}",
            scheduled.body
        );
        for other in ["g2", "g3"] {
            app.get(&format!("/api/v1/groups/{other}"), &app.admin)
                .await;
        }
        let records: Vec<_> = (0..10)
            .map(|n| json!({"client_id": format!("c{n}"), "status": if (n + week) % 3 == 0 { "no_show" } else { "present" }}))
            .collect();
        let marked = app
            .post(
                &format!("/api/v1/groups/g1/sessions/{session}/attendance"),
                &app.admin,
                json!({"records": records}),
            )
            .await;
        assert_eq!(marked.status, StatusCode::OK, "{:?}", marked.body);
    }
    for app in [&first, &second] {
        assert!(app.state.groups.cached() <= 2);
        let cached = app.state.groups.load("g1").await.unwrap();
        let replayed = app.state.groups.replay("g1").await.unwrap();
        assert_eq!(cached, replayed);
        assert_eq!(cached.aggregate.active_members().count(), 10);
        assert_eq!(cached.aggregate.sessions.len(), 6);
    }
}

fn cache_count(metrics: &str, aggregate: &str, result: &str) -> u64 {
    let series =
        format!("circle_aggregate_cache_total{{aggregate=\"{aggregate}\",result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.parse().unwrap())
}

/// Room for one group: reading the group just written is a hit; a second group
/// pushes the first out, so reading the first again is a miss.
#[tokio::test]
async fn the_aggregate_cache_counts_hits_and_misses() {
    let app = app_with_cache(&circle_tests::fresh_schema_url().await, 1).await;
    for group in ["g1", "g2"] {
        let created = app
            .post(
                "/api/v1/groups",
                &app.admin,
                json!({"group_id": group, "name": "Cached", "focus": "grief",
                       "format": "open", "facilitators": ["dr_a"]}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(
            app.get(&format!("/api/v1/groups/{group}"), &app.admin)
                .await
                .status,
            StatusCode::OK
        );
    }
    app.get("/api/v1/groups/g1", &app.admin).await;
    let metrics = app
        .send(reqwest::Method::GET, "/metrics", None, &[], None)
        .await;
    let text = metrics.body.as_str().unwrap();
    assert_eq!(cache_count(text, "group", "hit"), 2, "{text}");
    assert_eq!(cache_count(text, "group", "miss"), 3, "{text}");
    assert_eq!(cache_count(text, "client", "miss"), 0);
}

fn new_event(writer: usize, n: usize) -> NewEvent {
    NewEvent {
        event_type: "SessionCancelled".into(),
        event_version: 1,
        payload: json!({"session_id": format!("w{writer}-{n}"), "reason": "load"}),
        metadata: EventMetadata {
            event_id: Uuid::new_v4(),
            occurred_at: Utc::now(),
            actor_id: format!("writer-{writer}"),
            actor_role: "admin".into(),
            correlation_id: Uuid::new_v4(),
            causation_id: None,
        },
    }
}

/// Eight writers, each with its own connection pool (as separate processes would
/// be), append concurrently in transactions of varying size while a reader follows
/// the log from position 0. The reader must see every event exactly once, in
/// position order, with no gap ever observed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_following_the_log_sees_every_event_once_in_order() {
    const WRITERS: usize = 8;
    const EVENTS_PER_WRITER: usize = 3_000;
    let url = circle_tests::fresh_schema_url().await;
    let reader_store = Store::postgres(&url, 2).await.unwrap();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = Store::postgres(&url, 2).await.unwrap();
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            let mut versions = std::collections::HashMap::<String, u64>::new();
            let mut batch_no = 0;
            while written < EVENTS_PER_WRITER {
                // 1 to 4 appends of 1 to 3 events, to vary transaction sizes.
                let appends: Vec<Append> = (0..1 + batch_no % 4)
                    .map(|k| {
                        let count = 1 + (batch_no + k) % 3;
                        let aggregate_id = format!("w{writer}-a{k}");
                        let expected_version = versions.get(&aggregate_id).copied().unwrap_or(0);
                        Append {
                            aggregate_type: "group",
                            aggregate_id,
                            expected_version,
                            events: (0..count).map(|i| new_event(writer, written + i)).collect(),
                            idempotency: None,
                            key_action: None,
                            chained: false,
                            token_hash: None,
                        }
                    })
                    .collect();
                let results = store.commit_batch(&appends).await.unwrap();
                for (append, result) in appends.iter().zip(results) {
                    let AppendResult::Committed { version, .. } = result else {
                        panic!("unexpected {result:?}");
                    };
                    versions.insert(append.aggregate_id.clone(), version);
                    written += append.events.len();
                }
                batch_no += 1;
            }
            written
        }));
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut last = 0i64;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = reader_store.read_all(last, 500).await.unwrap();
                for event in &page {
                    assert_eq!(
                        event.position,
                        last + 1,
                        "the reader saw a gap after {last}"
                    );
                    assert!(seen.insert(event.event_id), "event seen twice");
                    last = event.position;
                }
                if page.is_empty() {
                    if finished {
                        return (seen.len(), last);
                    }
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut total = 0;
    for writer in writers {
        total += writer.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (seen, last) = reader.await.unwrap();
    assert!(total >= 20_000, "wrote {total} events");
    assert_eq!(seen, total, "reader saw every event exactly once");
    assert_eq!(last as usize, total);
}

/// Each instance folds its own commits without reading them back (the appender's
/// feed), and everything else from the log: another instance's commits, and the
/// tokens' events written beside the appender. Two instances writing at once, each
/// also issuing tokens, must both hold exactly the reports of a fresh replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_writing_at_once_each_fold_exactly_the_log() {
    let first = spawn_app().await;
    group_and_clients(&first, 10).await;
    let second = spawn_app_on(&first.database_url).await;
    for n in 0..10 {
        let answer = first
            .post(
                "/api/v1/groups/g1/members",
                &first.admin,
                json!({"client_id": format!("c{n}"), "joined_on": "2026-01-06"}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    first
        .post(
            "/api/v1/groups/g1/sessions",
            &first.admin,
            json!({"session_id": "s1", "starts_at": "2026-01-13T18:00:00+01:00", "duration_minutes": 90}),
        )
        .await;
    let writers = (0..8).map(|w| {
        let app = if w % 2 == 0 { &first } else { &second };
        async move {
            for k in 0..15 {
                let answer = if k % 5 == 4 {
                    app.post(
                        "/api/v1/tokens",
                        &app.admin,
                        json!({"role": "clinician", "clinician_id": "dr_a", "label": format!("w{w}k{k}")}),
                    )
                    .await
                } else {
                    app.post(
                        "/api/v1/groups/g1/sessions/s1/feedback",
                        &app.admin,
                        json!({"client_id": format!("c{}", (w + k) % 10), "instrument": "SRS",
                               "items": [9.0, 8.5, 9.5, (k % 10) as f64]}),
                    )
                    .await
                };
                // Two instances on one group may meet each other's writes often
                // enough to be told to retry; either way the log is what counts.
                assert!(
                    answer.status.is_success() || answer.status == StatusCode::CONFLICT,
                    "{:?}",
                    answer.body
                );
            }
        }
    });
    futures_util::future::join_all(writers).await;
    let store = &first.state.store;
    let head = store.head_position().await.unwrap();
    let mut replayed =
        circle_projections::practice::Practice::new(circle_tests::default_projection().alert_rules);
    circle_services::projector::fold(store, &mut replayed, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(replayed.position, head);
    for app in [&first, &second] {
        assert!(
            app.state
                .reports
                .caught_up(head, std::time::Duration::from_secs(5))
                .await,
            "caught up with the log"
        );
        assert_eq!(
            *app.state.reports.snapshot(),
            replayed,
            "the live reports equal a fresh replay"
        );
    }
}

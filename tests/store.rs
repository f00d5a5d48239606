//! One store test suite, run against both backends: PostgreSQL and embedded SQLite.

use chrono::Utc;
use circle_events::group::{Focus, Format, Group, GroupCommand};
use circle_services::store::cqrs::CqrsStore;
use circle_services::store::{
    Append, AppendResult, ClientKey, EventMetadata, Fence, IdempotencyRecord, KeyAction, LogRange,
    NewEvent, Snapshot, Store, Stretch,
};
use cqrs_es::{CqrsFramework, EventStore};
use serde_json::json;
use uuid::Uuid;

fn event(n: u32) -> NewEvent {
    NewEvent {
        event_type: "SessionCancelled".into(),
        event_version: 1,
        payload: json!({"session_id": format!("s{n}"), "reason": "test"}),
        metadata: EventMetadata {
            event_id: Uuid::new_v4(),
            occurred_at: Utc::now(),
            actor_id: "dr_a".into(),
            actor_role: "clinician".into(),
            correlation_id: Uuid::new_v4(),
            causation_id: Some(Uuid::new_v4()),
        },
    }
}

fn append(id: &str, expected_version: u64, events: u32) -> Append {
    Append {
        aggregate_type: "group",
        aggregate_id: id.into(),
        expected_version,
        events: (0..events).map(event).collect(),
        idempotency: None,
        key_action: None,
    }
}

async fn appends_are_read_back_in_order_with_their_metadata(store: Store) {
    let first = append("g1", 0, 3);
    let results = store
        .commit_batch(std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![AppendResult::Committed {
            version: 3,
            last_position: 3
        }]
    );
    let results = store
        .commit_batch(&[append("g2", 0, 1), append("g1", 3, 2)])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            AppendResult::Committed {
                version: 1,
                last_position: 4
            },
            AppendResult::Committed {
                version: 5,
                last_position: 6
            },
        ]
    );
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    let stream = store.load_stream("group", "g1", 0).await.unwrap();
    assert_eq!(
        stream.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let e = &all[0];
    assert_eq!(e.event_id, first.events[0].metadata.event_id);
    assert_eq!(e.actor_id, "dr_a");
    assert_eq!(e.actor_role, "clinician");
    assert_eq!(e.correlation_id, first.events[0].metadata.correlation_id);
    assert_eq!(e.causation_id, first.events[0].metadata.causation_id);
    assert_eq!(e.payload, first.events[0].payload);
    assert!(e.recorded_at >= e.occurred_at);
    assert_eq!(store.read_all(4, 1).await.unwrap()[0].position, 5);
    assert_eq!(store.load_stream("group", "g1", 3).await.unwrap().len(), 2);
    assert_eq!(store.head_position().await.unwrap(), 6);
    assert_eq!(
        store.aggregate_ids("group").await.unwrap(),
        vec!["g1", "g2"]
    );
}

async fn a_stale_expected_version_conflicts_without_failing_the_batch(store: Store) {
    store.commit_batch(&[append("g1", 0, 2)]).await.unwrap();
    let results = store
        .commit_batch(&[append("g1", 1, 1), append("g2", 0, 1), append("g1", 2, 1)])
        .await
        .unwrap();
    assert_eq!(results[0], AppendResult::Conflict { actual_version: 2 });
    assert_eq!(
        results[1],
        AppendResult::Committed {
            version: 1,
            last_position: 3
        }
    );
    assert_eq!(
        results[2],
        AppendResult::Committed {
            version: 3,
            last_position: 4
        }
    );
    // Two appends expecting the same version in one batch: only the first wins.
    let results = store
        .commit_batch(&[append("g3", 0, 1), append("g3", 0, 1)])
        .await
        .unwrap();
    assert!(matches!(results[0], AppendResult::Committed { .. }));
    assert_eq!(results[1], AppendResult::Conflict { actual_version: 1 });
    assert_eq!(store.head_position().await.unwrap(), 5);
}

async fn an_idempotency_key_answers_the_same_and_appends_once(store: Store) {
    let with_key = |expected| {
        let mut a = append("g1", expected, 1);
        a.idempotency = Some(IdempotencyRecord {
            key: "k1".into(),
            request_hash: vec![1, 2, 3],
            status: 201,
            response_id: "s9".into(),
        });
        a
    };
    let results = store
        .commit_batch(&[with_key(0), with_key(0)])
        .await
        .unwrap();
    assert_eq!(
        results[0],
        AppendResult::Committed {
            version: 1,
            last_position: 1
        }
    );
    let AppendResult::AlreadyAnswered(answer) = &results[1] else {
        panic!("second use of the key must replay: {results:?}");
    };
    assert_eq!(
        answer.body,
        json!({"id": "s9", "version": 1, "position": 1})
    );
    assert_eq!(answer.status, 201);
    let later = store.commit_batch(&[with_key(1)]).await.unwrap();
    assert!(matches!(later[0], AppendResult::AlreadyAnswered(_)));
    let stored = store.find_response("k1").await.unwrap().unwrap();
    assert_eq!(stored.request_hash, vec![1, 2, 3]);
    assert_eq!(store.head_position().await.unwrap(), 1);
}

async fn client_keys_are_stored_and_destroyed_with_their_events(store: Store) {
    let mut register = append("c1", 0, 1);
    register.aggregate_type = "client";
    register.key_action = Some(KeyAction::Store {
        client_id: "c1".into(),
        wrapped_key: vec![7; 60],
    });
    store.commit_batch(&[register]).await.unwrap();
    assert_eq!(
        store.client_key("c1").await.unwrap(),
        ClientKey::Wrapped(vec![7; 60])
    );
    // A conflicting append does not run its key action.
    let mut stale = append("c1", 0, 1);
    stale.aggregate_type = "client";
    stale.key_action = Some(KeyAction::Destroy {
        client_id: "c1".into(),
    });
    store.commit_batch(&[stale]).await.unwrap();
    assert_eq!(
        store.client_key("c1").await.unwrap(),
        ClientKey::Wrapped(vec![7; 60])
    );
    let mut erase = append("c1", 1, 1);
    erase.aggregate_type = "client";
    erase.key_action = Some(KeyAction::Destroy {
        client_id: "c1".into(),
    });
    store.commit_batch(&[erase]).await.unwrap();
    assert_eq!(store.client_key("c1").await.unwrap(), ClientKey::Destroyed);
    assert_eq!(store.client_key("c2").await.unwrap(), ClientKey::Missing);
}

async fn an_append_naming_an_erased_client_is_refused_even_in_its_erasures_batch(store: Store) {
    let client = |id: &str, version: u64, action: KeyAction| {
        let mut append = append(id, version, 1);
        append.aggregate_type = "client";
        append.key_action = Some(action);
        append
    };
    let store_key = |id: &str| KeyAction::Store {
        client_id: id.into(),
        wrapped_key: vec![7; 60],
    };
    store
        .commit_batch(&[
            client("c1", 0, store_key("c1")),
            client("c2", 0, store_key("c2")),
        ])
        .await
        .unwrap();
    let naming = |ids: &[&str], version: u64| {
        let mut write = append("g1", version, 1);
        write.key_action = Some(KeyAction::RequireLive {
            client_ids: ids.iter().map(|c| c.to_string()).collect(),
        });
        write
    };
    let before = store
        .commit_batch(&[naming(&["c1", "c2"], 0)])
        .await
        .unwrap();
    assert!(matches!(before[0], AppendResult::Committed { .. }));
    // The erasure and a write naming the client in one batch: the write comes after.
    let destroy = KeyAction::Destroy {
        client_id: "c2".into(),
    };
    let results = store
        .commit_batch(&[client("c2", 1, destroy), naming(&["c1", "c2"], 1)])
        .await
        .unwrap();
    assert!(matches!(results[0], AppendResult::Committed { .. }));
    assert_eq!(
        results[1],
        AppendResult::ClientErased {
            client_id: "c2".into()
        }
    );
    let later = store.commit_batch(&[naming(&["c2"], 1)]).await.unwrap();
    assert!(matches!(later[0], AppendResult::ClientErased { .. }));
    let others = store.commit_batch(&[naming(&["c1"], 1)]).await.unwrap();
    assert!(matches!(
        others[0],
        AppendResult::Committed { version: 2, .. }
    ));
}

async fn stock_cqrs_es_runs_on_the_store(store: Store) {
    let cqrs = CqrsFramework::new(CqrsStore::<Group>::new(store.clone()), vec![], ());
    cqrs.execute(
        "g1",
        GroupCommand::CreateGroup {
            group_id: "g1".into(),
            name: "Grief".into(),
            focus: Focus::Grief,
            format: Format::Closed,
            capacity: 8,
            facilitators: vec!["dr_a".into()],
            starts_on: None,
        },
    )
    .await
    .unwrap();
    cqrs.execute(
        "g1",
        GroupCommand::AssignFacilitator {
            clinician_id: "dr_b".into(),
        },
    )
    .await
    .unwrap();
    let refused = cqrs
        .execute(
            "g1",
            GroupCommand::AssignFacilitator {
                clinician_id: "dr_b".into(),
            },
        )
        .await;
    assert!(refused.is_err());
    let events = CqrsStore::<Group>::new(store.clone())
        .load_events("g1")
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].sequence, 2);
    assert_eq!(store.head_position().await.unwrap(), 2);
}

async fn a_checkpoint_keeps_state_and_position_together(store: Store) {
    assert_eq!(store.load_checkpoint("reports").await.unwrap(), None);
    store
        .save_checkpoint("reports", 7, "{\"a\":1}", None)
        .await
        .unwrap();
    store
        .save_checkpoint("reports", 9, "{\"a\":2}", None)
        .await
        .unwrap();
    store.save_checkpoint("other", 1, "{}", None).await.unwrap();
    assert_eq!(
        store.load_checkpoint("reports").await.unwrap(),
        Some((9, "{\"a\":2}".to_string()))
    );
}

async fn one_holder_leads_at_a_time_and_a_deposed_leader_cannot_save(store: Store) {
    let ttl = std::time::Duration::from_secs(30);
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let fence = |holder, epoch| Fence {
        lease: "leader".into(),
        holder,
        epoch,
    };
    assert_eq!(
        store.acquire_lease("leader", first, ttl).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.acquire_lease("leader", second, ttl).await.unwrap(),
        None,
        "held"
    );
    assert_eq!(
        store.acquire_lease("leader", first, ttl).await.unwrap(),
        Some(1),
        "renewed"
    );
    assert!(store
        .save_checkpoint("reports", 5, "{}", Some(&fence(first, 1)))
        .await
        .unwrap());

    // The first leader goes quiet; its lease runs out and the second takes over.
    store.release_lease("leader", first).await.unwrap();
    assert_eq!(
        store.acquire_lease("leader", second, ttl).await.unwrap(),
        Some(2)
    );
    assert!(store
        .save_checkpoint("reports", 8, "{\"by\":2}", Some(&fence(second, 2)))
        .await
        .unwrap());

    // The first wakes up believing it still leads: its write is refused.
    let saved = store
        .save_checkpoint("reports", 6, "{\"by\":1}", Some(&fence(first, 1)))
        .await
        .unwrap();
    assert!(!saved, "fenced out");
    assert_eq!(
        store.load_checkpoint("reports").await.unwrap(),
        Some((8, "{\"by\":2}".to_string()))
    );
    assert_eq!(
        store.acquire_lease("leader", first, ttl).await.unwrap(),
        None
    );
}

async fn a_snapshot_is_found_by_the_time_its_events_were_recorded_by(store: Store) {
    let at = |text: &str| text.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert_eq!(store.latest_snapshot(None).await.unwrap(), None);
    let snapshot = |position: i64, max_recorded_at: &str| Snapshot {
        position,
        max_recorded_at: at(max_recorded_at),
        state: format!("{{\"position\":{position}}}"),
        range: None,
    };
    let early = snapshot(100, "2026-01-01T10:00:00.000001Z");
    let range = LogRange {
        after: 100,
        min_recorded_at: at("2026-01-01T11:00:00.000002Z"),
    };
    let late = Snapshot {
        range: Some(range),
        ..snapshot(200, "2026-01-02T10:00:00Z")
    };
    store.save_snapshot(&early).await.unwrap();
    store.save_snapshot(&late).await.unwrap();
    store.save_snapshot(&late).await.unwrap();
    let by = |time: &str| {
        let store = store.clone();
        let time = at(time);
        async move { store.latest_snapshot(Some(time)).await.unwrap() }
    };
    assert_eq!(by("2026-01-01T09:59:59Z").await, None);
    assert_eq!(by("2026-01-01T10:00:00.000001Z").await, Some(early.clone()));
    assert_eq!(by("2026-01-02T09:59:59Z").await, Some(early));
    assert_eq!(by("2026-01-03T00:00:00Z").await, Some(late.clone()));
    assert_eq!(store.latest_snapshot(None).await.unwrap(), Some(late));
    // Only rows with a range, beyond the position asked.
    assert_eq!(store.snapshot_ranges(0).await.unwrap(), vec![(200, range)]);
    assert_eq!(store.snapshot_ranges(200).await.unwrap(), vec![]);
}

async fn a_read_up_to_a_time_and_position_filters_in_the_store(store: Store) {
    let stretch = |after, upto, until, limit| Stretch {
        after,
        upto,
        until,
        limit,
    };
    store.commit_batch(&[append("g1", 0, 5)]).await.unwrap();
    let now = chrono::Utc::now();
    let hour = chrono::Duration::hours(1);
    let positions = |events: Vec<circle_services::store::RawEvent>| {
        events.iter().map(|e| e.position).collect::<Vec<_>>()
    };
    let all = store
        .read_raw_until(stretch(0, i64::MAX, now + hour, 10))
        .await
        .unwrap();
    assert_eq!(all, store.read_raw(0, 10).await.unwrap());
    let some = store
        .read_raw_until(stretch(1, 4, now + hour, 2))
        .await
        .unwrap();
    assert_eq!(positions(some), vec![2, 3]);
    let some = store
        .read_raw_until(stretch(2, 4, now + hour, 10))
        .await
        .unwrap();
    assert_eq!(positions(some), vec![3, 4]);
    let none = store
        .read_raw_until(stretch(0, i64::MAX, now - hour, 10))
        .await
        .unwrap();
    assert!(none.is_empty(), "recorded after the time asked");
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(circle_tests::postgres_store().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(circle_tests::sqlite_store().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    appends_are_read_back_in_order_with_their_metadata,
    a_stale_expected_version_conflicts_without_failing_the_batch,
    an_idempotency_key_answers_the_same_and_appends_once,
    client_keys_are_stored_and_destroyed_with_their_events,
    an_append_naming_an_erased_client_is_refused_even_in_its_erasures_batch,
    stock_cqrs_es_runs_on_the_store,
    a_checkpoint_keeps_state_and_position_together,
    one_holder_leads_at_a_time_and_a_deposed_leader_cannot_save,
    a_snapshot_is_found_by_the_time_its_events_were_recorded_by,
    a_read_up_to_a_time_and_position_filters_in_the_store,
);

/// PostgreSQL's jsonb refuses `\u0000`: such an append must fail alone, not the
/// group commit it shares with other clinicians' commands.
#[tokio::test]
async fn one_bad_append_fails_alone_and_its_batch_mates_commit() {
    use circle_services::appender::Appender;
    use circle_services::metrics::Metrics;

    let store = circle_tests::postgres_store().await;
    let (appender, mut worker) = Appender::new(
        store.clone(),
        Metrics::new(),
        64,
        tokio::sync::watch::channel(0).0,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let mut poisoned = append("bad", 0, 1);
    poisoned.events[0].payload = json!({"session_id": "s0", "reason": "nul \u{0000} here"});
    let mut appends: Vec<Append> = (0..16).map(|g| append(&format!("g{g}"), 0, 1)).collect();
    appends.insert(8, poisoned);
    // Submitted together, so they meet in one batch.
    let outcomes = futures_util::future::join_all(appends.into_iter().map(|a| {
        let appender = appender.clone();
        async move { appender.append(a).await }
    }))
    .await;
    assert!(outcomes[8].is_err(), "the bad append fails");
    let committed = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(AppendResult::Committed { .. })))
        .count();
    assert_eq!(committed, 16, "{outcomes:?}");
    assert_eq!(store.head_position().await.unwrap(), 16);

    // Stopping drains and ends the worker; later appends are refused, not lost.
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(appender.append(append("late", 0, 1)).await.is_err());
}

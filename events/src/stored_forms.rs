//! The stored form of every event Circle writes, pinned.
//!
//! The log is forever: a row written today must read the same in every later build.
//! Each row below is an event beside the exact `(event_type, event_version, payload)`
//! the log keeps for it, checked both ways. Renaming a field, a variant or an enum
//! value fails here, and so does a new variant without a row (see
//! [`every_variant_has_a_pinned_form`]). When a shape has to change: bump the
//! version in `upcast.rs`, move the old row to the upcast table, pin the new one.

use std::collections::BTreeSet;

use cqrs_es::DomainEvent;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::Value;

use crate::client::{ClientEvent, ConsentScope, ErasureReason, SealedPersonalData};
use crate::group::{
    AttendanceStatus, DepartureReason, Focus, Format, GoalClosure, GroupEvent, Measure,
};
use crate::instruments::Score;
use crate::token::TokenEvent;
use crate::upcast::{decode, decode_text, encode};

fn date(text: &str) -> chrono::NaiveDate {
    text.parse().expect("a valid date")
}

fn measure() -> Measure {
    Measure {
        instrument: "PHQ-9".into(),
        reference_version: "2024.1".into(),
        items: vec![Score::from_tenths(20), Score::from_tenths(15)],
        total: Score::from_tenths(35),
        administered_at: "2026-01-13T19:30:00+01:00".parse().expect("a valid time"),
    }
}

const MEASURE: &str = r#"{"instrument": "PHQ-9", "reference_version": "2024.1", "items": [2, 1.5],
    "total": 3.5, "administered_at": "2026-01-13T19:30:00+01:00"}"#;

fn group_events() -> Vec<(GroupEvent, String)> {
    vec![
        (
            GroupEvent::GroupCreated {
                group_id: "g1".into(),
                name: "Tuesday anxiety".into(),
                focus: Focus::AddictionRecovery,
                format: Format::Closed,
                capacity: 10,
                facilitators: vec!["dr_a".into(), "dr_b".into()],
                starts_on: Some(date("2026-01-06")),
            },
            r#"{"event_type": "GroupCreated", "event_version": 1, "payload": {
                "group_id": "g1", "name": "Tuesday anxiety", "focus": "addiction_recovery",
                "format": "closed", "capacity": 10, "facilitators": ["dr_a", "dr_b"],
                "starts_on": "2026-01-06"}}"#
                .into(),
        ),
        (
            GroupEvent::GroupCreated {
                group_id: "g2".into(),
                name: "Open grief".into(),
                focus: Focus::Grief,
                format: Format::Open,
                capacity: 8,
                facilitators: vec!["dr_a".into()],
                starts_on: None,
            },
            r#"{"event_type": "GroupCreated", "event_version": 1, "payload": {
                "group_id": "g2", "name": "Open grief", "focus": "grief", "format": "open",
                "capacity": 8, "facilitators": ["dr_a"], "starts_on": null}}"#
                .into(),
        ),
        (
            GroupEvent::FacilitatorAssigned {
                clinician_id: "dr_c".into(),
            },
            r#"{"event_type": "FacilitatorAssigned", "event_version": 1,
                "payload": {"clinician_id": "dr_c"}}"#
                .into(),
        ),
        (
            GroupEvent::FacilitatorRemoved {
                clinician_id: "dr_b".into(),
            },
            r#"{"event_type": "FacilitatorRemoved", "event_version": 1,
                "payload": {"clinician_id": "dr_b"}}"#
                .into(),
        ),
        (
            GroupEvent::MemberJoined {
                client_id: "c1".into(),
                joined_on: date("2026-01-06"),
            },
            r#"{"event_type": "MemberJoined", "event_version": 2,
                "payload": {"client_id": "c1", "joined_on": "2026-01-06"}}"#
                .into(),
        ),
        (
            GroupEvent::MemberLeft {
                client_id: "c1".into(),
                left_on: date("2026-03-31"),
                reason: DepartureReason::DroppedOut,
            },
            r#"{"event_type": "MemberLeft", "event_version": 1, "payload": {
                "client_id": "c1", "left_on": "2026-03-31", "reason": "dropped_out"}}"#
                .into(),
        ),
        (
            GroupEvent::SessionScheduled {
                session_id: "s1".into(),
                starts_at: "2026-01-13T18:00:00+01:00".parse().expect("a valid time"),
                duration_minutes: 90,
            },
            r#"{"event_type": "SessionScheduled", "event_version": 1, "payload": {
                "session_id": "s1", "starts_at": "2026-01-13T18:00:00+01:00",
                "duration_minutes": 90}}"#
                .into(),
        ),
        (
            GroupEvent::SessionCancelled {
                session_id: "s2".into(),
                reason: "facilitator ill".into(),
            },
            r#"{"event_type": "SessionCancelled", "event_version": 1,
                "payload": {"session_id": "s2", "reason": "facilitator ill"}}"#
                .into(),
        ),
        (
            GroupEvent::AttendanceRecorded {
                session_id: "s1".into(),
                client_id: "c1".into(),
                status: AttendanceStatus::LeftEarly,
            },
            r#"{"event_type": "AttendanceRecorded", "event_version": 1, "payload": {
                "session_id": "s1", "client_id": "c1", "status": "left_early"}}"#
                .into(),
        ),
        (
            GroupEvent::AttendanceCorrected {
                session_id: "s1".into(),
                client_id: "c1".into(),
                status: AttendanceStatus::Excused,
                previous_status: AttendanceStatus::NoShow,
                corrects_sequence: 9,
            },
            r#"{"event_type": "AttendanceCorrected", "event_version": 1, "payload": {
                "session_id": "s1", "client_id": "c1", "status": "excused",
                "previous_status": "no_show", "corrects_sequence": 9}}"#
                .into(),
        ),
        (
            GroupEvent::FeedbackRecorded {
                client_id: "c1".into(),
                session_id: Some("s1".into()),
                measure: measure(),
            },
            format!(
                r#"{{"event_type": "FeedbackRecorded", "event_version": 1, "payload": {{
                    "client_id": "c1", "session_id": "s1", "measure": {MEASURE}}}}}"#
            ),
        ),
        (
            GroupEvent::FeedbackRecorded {
                client_id: "c1".into(),
                session_id: None,
                measure: measure(),
            },
            format!(
                r#"{{"event_type": "FeedbackRecorded", "event_version": 1, "payload": {{
                    "client_id": "c1", "session_id": null, "measure": {MEASURE}}}}}"#
            ),
        ),
        (
            GroupEvent::GroupClosed {
                closed_on: date("2026-06-30"),
            },
            r#"{"event_type": "GroupClosed", "event_version": 1,
                "payload": {"closed_on": "2026-06-30"}}"#
                .into(),
        ),
        (
            GroupEvent::GoalSet {
                goal_id: "goal1".into(),
                client_id: "c1".into(),
                title: SealedPersonalData {
                    sealed: "bm9uY2UrdGl0bGU=".into(),
                },
                weight: 2,
                start_level: -1,
                set_on: date("2026-01-13"),
            },
            r#"{"event_type": "GoalSet", "event_version": 1, "payload": {
                "goal_id": "goal1", "client_id": "c1", "title": {"sealed": "bm9uY2UrdGl0bGU="},
                "weight": 2, "start_level": -1, "set_on": "2026-01-13"}}"#
                .into(),
        ),
        (
            GroupEvent::GoalCheckedIn {
                goal_id: "goal1".into(),
                client_id: "c1".into(),
                level: 1,
                session_id: Some("s1".into()),
                checked_in_at: "2026-01-20T18:00:00+01:00".parse().expect("a valid time"),
            },
            r#"{"event_type": "GoalCheckedIn", "event_version": 1, "payload": {
                "goal_id": "goal1", "client_id": "c1", "level": 1, "session_id": "s1",
                "checked_in_at": "2026-01-20T18:00:00+01:00"}}"#
                .into(),
        ),
        (
            GroupEvent::GoalCheckedIn {
                goal_id: "goal1".into(),
                client_id: "c1".into(),
                level: -2,
                session_id: None,
                checked_in_at: "2026-01-23T09:15:00+00:00".parse().expect("a valid time"),
            },
            r#"{"event_type": "GoalCheckedIn", "event_version": 1, "payload": {
                "goal_id": "goal1", "client_id": "c1", "level": -2, "session_id": null,
                "checked_in_at": "2026-01-23T09:15:00Z"}}"#
                .into(),
        ),
        (
            GroupEvent::GoalClosed {
                goal_id: "goal1".into(),
                client_id: "c1".into(),
                reason: GoalClosure::Revised,
                replaced_by: Some("goal2".into()),
                closed_on: date("2026-02-03"),
            },
            r#"{"event_type": "GoalClosed", "event_version": 1, "payload": {
                "goal_id": "goal1", "client_id": "c1", "reason": "revised",
                "replaced_by": "goal2", "closed_on": "2026-02-03"}}"#
                .into(),
        ),
        (
            GroupEvent::GoalClosed {
                goal_id: "goal2".into(),
                client_id: "c1".into(),
                reason: GoalClosure::Attained,
                replaced_by: None,
                closed_on: date("2026-03-03"),
            },
            r#"{"event_type": "GoalClosed", "event_version": 1, "payload": {
                "goal_id": "goal2", "client_id": "c1", "reason": "attained",
                "replaced_by": null, "closed_on": "2026-03-03"}}"#
                .into(),
        ),
        (
            GroupEvent::GoalClosed {
                goal_id: "goal3".into(),
                client_id: "c2".into(),
                reason: GoalClosure::Dropped,
                replaced_by: None,
                closed_on: date("2026-03-10"),
            },
            r#"{"event_type": "GoalClosed", "event_version": 1, "payload": {
                "goal_id": "goal3", "client_id": "c2", "reason": "dropped",
                "replaced_by": null, "closed_on": "2026-03-10"}}"#
                .into(),
        ),
        (
            GroupEvent::RiskReviewed {
                client_id: "c1".into(),
            },
            r#"{"event_type": "RiskReviewed", "event_version": 1,
                "payload": {"client_id": "c1"}}"#
                .into(),
        ),
    ]
}

fn client_events() -> Vec<(ClientEvent, String)> {
    vec![
        (
            ClientEvent::ClientRegistered {
                client_id: "c1".into(),
                personal: Some(SealedPersonalData {
                    sealed: "bm9uY2UrY2lwaGVydGV4dA==".into(),
                }),
            },
            r#"{"event_type": "ClientRegistered", "event_version": 1, "payload": {
                "client_id": "c1", "personal": {"sealed": "bm9uY2UrY2lwaGVydGV4dA=="}}}"#
                .into(),
        ),
        (
            ClientEvent::ClientRegistered {
                client_id: "c2".into(),
                personal: None,
            },
            r#"{"event_type": "ClientRegistered", "event_version": 1,
                "payload": {"client_id": "c2", "personal": null}}"#
                .into(),
        ),
        (
            ClientEvent::ConsentGranted {
                scope: ConsentScope::Treatment,
            },
            r#"{"event_type": "ConsentGranted", "event_version": 1,
                "payload": {"scope": "treatment"}}"#
                .into(),
        ),
        (
            ClientEvent::ConsentWithdrawn {
                scope: ConsentScope::Research,
            },
            r#"{"event_type": "ConsentWithdrawn", "event_version": 1,
                "payload": {"scope": "research"}}"#
                .into(),
        ),
        (
            ClientEvent::ClientErased {
                reason: ErasureReason::ConsentWithdrawn,
            },
            r#"{"event_type": "ClientErased", "event_version": 1,
                "payload": {"reason": "consent_withdrawn"}}"#
                .into(),
        ),
        (
            ClientEvent::MeasureRecorded { measure: measure() },
            format!(
                r#"{{"event_type": "MeasureRecorded", "event_version": 1,
                    "payload": {{"measure": {MEASURE}}}}}"#
            ),
        ),
    ]
}

fn token_events() -> Vec<(TokenEvent, String)> {
    vec![
        (
            TokenEvent::TokenIssued {
                token_id: "tok_1".into(),
                role: "clinician".into(),
                clinician_id: Some("dr_a".into()),
                label: "Dr A's laptop".into(),
                expires_at: Some("2026-06-30T00:00:00Z".parse().expect("a valid time")),
            },
            r#"{"event_type": "TokenIssued", "event_version": 1, "payload": {
                "token_id": "tok_1", "role": "clinician", "clinician_id": "dr_a",
                "label": "Dr A's laptop", "expires_at": "2026-06-30T00:00:00Z"}}"#
                .into(),
        ),
        (
            TokenEvent::TokenRevoked {
                token_id: "tok_1".into(),
            },
            r#"{"event_type": "TokenRevoked", "event_version": 1,
                "payload": {"token_id": "tok_1"}}"#
                .into(),
        ),
    ]
}

/// Rows older builds wrote, which this build reads but no longer writes.
fn upcast_sources() -> Vec<(GroupEvent, String)> {
    vec![(
        GroupEvent::MemberJoined {
            client_id: "c1".into(),
            joined_on: date("2024-03-05"),
        },
        r#"{"event_type": "MemberJoined", "event_version": 1,
            "payload": {"client_id": "c1", "joined_at": "2024-03-05T18:30:00+01:00"}}"#
            .into(),
    )]
}

/// The stored triple of a pinned row.
fn stored(row: &str) -> (String, u32, Value) {
    let row: Value = serde_json::from_str(row).expect("a pinned row is JSON");
    let event_type = row["event_type"].as_str().expect("event_type").to_string();
    let version = row["event_version"].as_u64().expect("event_version");
    let version = u32::try_from(version).expect("a small version");
    (event_type, version, row["payload"].clone())
}

fn check_written<E>(rows: Vec<(E, String)>)
where
    E: DomainEvent,
{
    for (event, row) in rows {
        let (event_type, version, payload) = stored(&row);
        assert_eq!(
            encode(&event),
            (event_type.clone(), version, payload.clone()),
            "{event:?} is no longer written as pinned"
        );
        check_read(&event, &event_type, version, payload);
    }
}

fn check_read<E>(event: &E, event_type: &str, version: u32, payload: Value)
where
    E: DomainEvent,
{
    let text = payload.to_string();
    let read: E = decode(event_type, version, payload)
        .unwrap_or_else(|e| panic!("{event_type} v{version} no longer reads: {e}"));
    assert_eq!(&read, event, "{event_type} v{version} reads differently");
    let from_text: E = decode_text(event_type, version, &text)
        .unwrap_or_else(|e| panic!("{event_type} v{version} no longer reads from text: {e}"));
    assert_eq!(&from_text, event);
}

#[test]
fn every_group_event_is_written_and_read_exactly_as_pinned() {
    check_written(group_events());
}

#[test]
fn every_client_event_is_written_and_read_exactly_as_pinned() {
    check_written(client_events());
}

#[test]
fn every_token_event_is_written_and_read_exactly_as_pinned() {
    check_written(token_events());
}

#[test]
fn rows_written_by_older_versions_still_read_as_pinned() {
    for (event, row) in upcast_sources() {
        let (event_type, version, payload) = stored(&row);
        check_read(&event, &event_type, version, payload);
    }
}

#[test]
fn every_variant_has_a_pinned_form() {
    let pinned = |types: Vec<String>| types.into_iter().collect::<BTreeSet<_>>();
    let group = pinned(group_events().iter().map(|(e, _)| e.event_type()).collect());
    assert_eq!(group, variant_names::<GroupEvent>(), "GroupEvent rows");
    let client = pinned(
        client_events()
            .iter()
            .map(|(e, _)| e.event_type())
            .collect(),
    );
    assert_eq!(client, variant_names::<ClientEvent>(), "ClientEvent rows");
    let token = pinned(token_events().iter().map(|(e, _)| e.event_type()).collect());
    assert_eq!(token, variant_names::<TokenEvent>(), "TokenEvent rows");
}

/// The variant names serde derives for an enum: what the log can ever hold, read
/// from the derive itself so no list here can fall behind it.
fn variant_names<'de, E: Deserialize<'de>>() -> BTreeSet<String> {
    let mut names: &'static [&'static str] = &[];
    let _ = E::deserialize(VariantNames(&mut names));
    names.iter().map(|n| n.to_string()).collect()
}

/// A deserializer that answers only one question: which variants does the enum have.
struct VariantNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for VariantNames<'_> {
    type Error = de::value::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = variants;
        Err(de::Error::custom("variant names read"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only enums have variant names"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        struct identifier ignored_any
    }
}

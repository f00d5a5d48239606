//! Given these events, when this command, then these events or this error.

use chrono::{DateTime, FixedOffset, NaiveDate};
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;

use super::*;
use crate::instruments::Score;
use crate::{Rejection, RejectionKind};

type GroupTest = TestFramework<Group>;

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn at(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

fn created(capacity: u32) -> GroupEvent {
    GroupEvent::GroupCreated {
        group_id: "g1".into(),
        name: "Tuesday anxiety".into(),
        focus: Focus::Anxiety,
        format: Format::Open,
        capacity,
        facilitators: vec!["dr_a".into()],
        starts_on: Some(date("2026-01-06")),
    }
}

fn joined(client: &str, on: &str) -> GroupEvent {
    GroupEvent::MemberJoined {
        client_id: client.into(),
        joined_on: date(on),
    }
}

fn left(client: &str, on: &str, reason: DepartureReason) -> GroupEvent {
    GroupEvent::MemberLeft {
        client_id: client.into(),
        left_on: date(on),
        reason,
    }
}

fn scheduled(session: &str, starts_at: &str) -> GroupEvent {
    GroupEvent::SessionScheduled {
        session_id: session.into(),
        starts_at: at(starts_at),
        duration_minutes: 90,
    }
}

fn join(client: &str, on: &str) -> GroupCommand {
    GroupCommand::JoinGroup {
        client_id: client.into(),
        joined_on: date(on),
    }
}

fn mark(client: &str, status: AttendanceStatus) -> AttendanceMark {
    AttendanceMark {
        client_id: client.into(),
        status,
    }
}

fn whole(items: &[i64]) -> Vec<Score> {
    items.iter().map(|i| Score::whole(*i)).collect()
}

fn feedback(client: &str, instrument: &str, items: Vec<Score>) -> GroupCommand {
    GroupCommand::RecordFeedback {
        client_id: client.into(),
        session_id: Some("s1".into()),
        instrument: instrument.into(),
        items,
        administered_at: None,
    }
}

fn kind(result: Result<Vec<GroupEvent>, GroupError>) -> RejectionKind {
    result.expect_err("expected a rejection").kind()
}

fn group_of_members(capacity: u32, members: usize) -> Vec<GroupEvent> {
    let mut events = vec![created(capacity)];
    events.extend((0..members).map(|i| joined(&format!("c{i}"), "2026-01-06")));
    events
}

#[test]
fn creating_a_group_records_its_profile() {
    GroupTest::with(())
        .given_no_previous_events()
        .when(GroupCommand::CreateGroup {
            group_id: "g1".into(),
            name: "  Tuesday anxiety ".into(),
            focus: Focus::Anxiety,
            format: Format::Open,
            capacity: 10,
            facilitators: vec!["dr_a".into()],
            starts_on: Some(date("2026-01-06")),
        })
        .then_expect_events(vec![created(10)]);
}

#[test]
fn a_group_cannot_be_created_twice() {
    GroupTest::with(())
        .given(vec![created(10)])
        .when(GroupCommand::CreateGroup {
            group_id: "g1".into(),
            name: "again".into(),
            focus: Focus::Grief,
            format: Format::Closed,
            capacity: 8,
            facilitators: vec!["dr_b".into()],
            starts_on: None,
        })
        .then_expect_error(GroupError::AlreadyExists);
}

#[test]
fn a_group_needs_a_facilitator_a_name_and_a_sane_capacity() {
    let base = |capacity, facilitators: Vec<&str>, name: &str| GroupCommand::CreateGroup {
        group_id: "g1".into(),
        name: name.into(),
        focus: Focus::Trauma,
        format: Format::Closed,
        capacity,
        facilitators: facilitators.into_iter().map(String::from).collect(),
        starts_on: None,
    };
    let group = Group::default();
    for (command, field) in [
        (base(0, vec!["dr_a"], "x"), "capacity"),
        (base(51, vec!["dr_a"], "x"), "capacity"),
        (base(8, vec![], "x"), "facilitators"),
        (base(8, vec!["dr_a", "dr_a"], "x"), "facilitators[1]"),
        (base(8, vec!["dr a"], "x"), "facilitators[0]"),
        (base(8, vec!["dr_a"], "   "), "name"),
    ] {
        assert_eq!(
            kind(group.decide(command)),
            RejectionKind::Invalid {
                field: field.into()
            }
        );
    }
}

#[test]
fn a_client_joins_a_group_with_room() {
    GroupTest::with(())
        .given(vec![created(10)])
        .when(join("c1", "2026-01-06"))
        .then_expect_events(vec![joined("c1", "2026-01-06")]);
}

#[test]
fn capacity_is_never_exceeded() {
    GroupTest::with(())
        .given(group_of_members(10, 10))
        .when(join("c10", "2026-01-13"))
        .then_expect_error(GroupError::AtCapacity(10));
}

#[test]
fn a_departure_frees_a_place() {
    let mut given = group_of_members(2, 2);
    given.push(left("c0", "2026-01-20", DepartureReason::DroppedOut));
    GroupTest::with(())
        .given(given)
        .when(join("c9", "2026-01-27"))
        .then_expect_events(vec![joined("c9", "2026-01-27")]);
}

#[test]
fn a_member_cannot_join_twice() {
    GroupTest::with(())
        .given(group_of_members(10, 1))
        .when(join("c0", "2026-02-01"))
        .then_expect_error(GroupError::AlreadyMember("c0".into()));
}

#[test]
fn a_former_member_may_rejoin_but_not_before_they_left() {
    let given = vec![
        created(10),
        joined("c1", "2026-01-06"),
        left("c1", "2026-02-03", DepartureReason::Other),
    ];
    GroupTest::with(())
        .given(given.clone())
        .when(join("c1", "2026-03-03"))
        .then_expect_events(vec![joined("c1", "2026-03-03")]);
    GroupTest::with(())
        .given(given)
        .when(join("c1", "2026-01-20"))
        .then_expect_error(GroupError::JoinedBeforePreviousDeparture {
            joined_on: date("2026-01-20"),
            left_on: date("2026-02-03"),
        });
}

#[test]
fn nobody_joins_a_group_that_does_not_exist_or_is_closed() {
    GroupTest::with(())
        .given_no_previous_events()
        .when(join("c1", "2026-01-06"))
        .then_expect_error(GroupError::GroupNotFound);
    GroupTest::with(())
        .given(vec![
            created(10),
            GroupEvent::GroupClosed {
                closed_on: date("2026-03-01"),
            },
        ])
        .when(join("c1", "2026-03-02"))
        .then_expect_error(GroupError::GroupClosed(date("2026-03-01")));
}

#[test]
fn leaving_records_date_and_reason() {
    GroupTest::with(())
        .given(vec![created(10), joined("c1", "2026-01-06")])
        .when(GroupCommand::LeaveGroup {
            client_id: "c1".into(),
            left_on: date("2026-02-17"),
            reason: DepartureReason::Completed,
        })
        .then_expect_events(vec![left("c1", "2026-02-17", DepartureReason::Completed)]);
}

#[test]
fn left_on_cannot_precede_joined_on() {
    GroupTest::with(())
        .given(vec![created(10), joined("c1", "2026-01-06")])
        .when(GroupCommand::LeaveGroup {
            client_id: "c1".into(),
            left_on: date("2026-01-05"),
            reason: DepartureReason::DroppedOut,
        })
        .then_expect_error(GroupError::LeftBeforeJoined {
            left_on: date("2026-01-05"),
            joined_on: date("2026-01-06"),
        });
}

#[test]
fn only_a_member_can_leave() {
    GroupTest::with(())
        .given(vec![created(10)])
        .when(GroupCommand::LeaveGroup {
            client_id: "c1".into(),
            left_on: date("2026-01-05"),
            reason: DepartureReason::DroppedOut,
        })
        .then_expect_error(GroupError::NotAMember("c1".into()));
}

#[test]
fn departure_reasons_come_from_the_fixed_set() {
    for reason in [
        "completed",
        "dropped_out",
        "transferred",
        "discharged",
        "other",
    ] {
        let parsed: DepartureReason = serde_json::from_value(serde_json::json!(reason)).unwrap();
        assert_eq!(serde_json::to_value(parsed).unwrap(), reason);
    }
    assert!(serde_json::from_value::<DepartureReason>(serde_json::json!("bored")).is_err());
}

#[test]
fn attendance_is_recorded_for_members_on_the_session_date() {
    GroupTest::with(())
        .given(vec![
            created(10),
            joined("c1", "2026-01-06"),
            joined("c2", "2026-01-06"),
            scheduled("s1", "2026-01-13T18:00:00+01:00"),
        ])
        .when(GroupCommand::RecordAttendance {
            session_id: "s1".into(),
            records: vec![
                mark("c1", AttendanceStatus::Present),
                mark("c2", AttendanceStatus::NoShow),
            ],
        })
        .then_expect_events(vec![
            GroupEvent::AttendanceRecorded {
                session_id: "s1".into(),
                client_id: "c1".into(),
                status: AttendanceStatus::Present,
            },
            GroupEvent::AttendanceRecorded {
                session_id: "s1".into(),
                client_id: "c2".into(),
                status: AttendanceStatus::NoShow,
            },
        ]);
}

#[test]
fn no_attendance_for_someone_who_was_not_a_member_that_day() {
    GroupTest::with(())
        .given(vec![
            created(10),
            joined("c1", "2026-01-14"),
            scheduled("s1", "2026-01-13T18:00:00+01:00"),
        ])
        .when(GroupCommand::RecordAttendance {
            session_id: "s1".into(),
            records: vec![mark("c1", AttendanceStatus::Present)],
        })
        .then_expect_error(GroupError::NotAMemberOn {
            client_id: "c1".into(),
            date: date("2026-01-13"),
        });
    // A member who left before the session is not a member on its date either.
    GroupTest::with(())
        .given(vec![
            created(10),
            joined("c1", "2026-01-06"),
            left("c1", "2026-01-10", DepartureReason::DroppedOut),
            scheduled("s1", "2026-01-13T18:00:00+01:00"),
        ])
        .when(GroupCommand::RecordAttendance {
            session_id: "s1".into(),
            records: vec![mark("c1", AttendanceStatus::Present)],
        })
        .then_expect_error(GroupError::NotAMemberOn {
            client_id: "c1".into(),
            date: date("2026-01-13"),
        });
}

#[test]
fn the_session_date_is_the_date_the_facilitator_wrote() {
    // 23:30 in New York is already the next day in UTC; membership is checked against
    // the local date.
    GroupTest::with(())
        .given(vec![
            created(10),
            joined("c1", "2026-01-13"),
            scheduled("s1", "2026-01-13T23:30:00-05:00"),
        ])
        .when(GroupCommand::RecordAttendance {
            session_id: "s1".into(),
            records: vec![mark("c1", AttendanceStatus::Late)],
        })
        .then_expect_events(vec![GroupEvent::AttendanceRecorded {
            session_id: "s1".into(),
            client_id: "c1".into(),
            status: AttendanceStatus::Late,
        }]);
}

#[test]
fn no_attendance_for_a_cancelled_session() {
    GroupTest::with(())
        .given(vec![
            created(10),
            joined("c1", "2026-01-06"),
            scheduled("s1", "2026-01-13T18:00:00+01:00"),
            GroupEvent::SessionCancelled {
                session_id: "s1".into(),
                reason: "facilitator ill".into(),
            },
        ])
        .when(GroupCommand::RecordAttendance {
            session_id: "s1".into(),
            records: vec![mark("c1", AttendanceStatus::Present)],
        })
        .then_expect_error(GroupError::SessionCancelled("s1".into()));
}

#[test]
fn recording_attendance_again_is_a_correction_that_points_at_the_original() {
    GroupTest::with(())
        .given(vec![
            created(10),
            joined("c1", "2026-01-06"),
            scheduled("s1", "2026-01-13T18:00:00+01:00"),
            GroupEvent::AttendanceRecorded {
                session_id: "s1".into(),
                client_id: "c1".into(),
                status: AttendanceStatus::NoShow,
            },
        ])
        .when(GroupCommand::RecordAttendance {
            session_id: "s1".into(),
            records: vec![mark("c1", AttendanceStatus::Late)],
        })
        .then_expect_events(vec![GroupEvent::AttendanceCorrected {
            session_id: "s1".into(),
            client_id: "c1".into(),
            status: AttendanceStatus::Late,
            previous_status: AttendanceStatus::NoShow,
            corrects_sequence: 4,
        }]);
}

#[test]
fn only_a_correction_names_the_event_it_supersedes() {
    let correction = GroupEvent::AttendanceCorrected {
        session_id: "s1".into(),
        client_id: "c1".into(),
        status: AttendanceStatus::Late,
        previous_status: AttendanceStatus::NoShow,
        corrects_sequence: 4,
    };
    assert_eq!(correction.corrects_sequence(), Some(4));
    assert_eq!(created(10).corrects_sequence(), None);
    let first_mark = GroupEvent::AttendanceRecorded {
        session_id: "s1".into(),
        client_id: "c1".into(),
        status: AttendanceStatus::NoShow,
    };
    assert_eq!(first_mark.corrects_sequence(), None);
}

#[test]
fn the_same_mark_twice_records_nothing_new() {
    GroupTest::with(())
        .given(vec![
            created(10),
            joined("c1", "2026-01-06"),
            scheduled("s1", "2026-01-13T18:00:00+01:00"),
            GroupEvent::AttendanceRecorded {
                session_id: "s1".into(),
                client_id: "c1".into(),
                status: AttendanceStatus::Present,
            },
        ])
        .when(GroupCommand::RecordAttendance {
            session_id: "s1".into(),
            records: vec![mark("c1", AttendanceStatus::Present)],
        })
        .then_expect_events(vec![]);
}

#[test]
fn a_member_listed_twice_in_one_attendance_is_refused() {
    let group = {
        let mut g = Group::default();
        for e in [
            created(10),
            joined("c1", "2026-01-06"),
            scheduled("s1", "2026-01-13T18:00:00+01:00"),
        ] {
            g.apply(e);
        }
        g
    };
    let result = group.decide(GroupCommand::RecordAttendance {
        session_id: "s1".into(),
        records: vec![
            mark("c1", AttendanceStatus::Present),
            mark("c1", AttendanceStatus::Late),
        ],
    });
    assert_eq!(
        kind(result),
        RejectionKind::Invalid {
            field: "records[1].client_id".into()
        }
    );
}

fn group_with_session() -> Vec<GroupEvent> {
    vec![
        created(10),
        joined("c1", "2026-01-06"),
        scheduled("s1", "2026-01-13T18:00:00+01:00"),
    ]
}

#[test]
fn feedback_is_totalled_exactly_and_names_its_catalogue_version() {
    let items: Vec<Score> = [9.1, 8.7, 9.9, 8.4]
        .iter()
        .map(|v| Score::from_json(&serde_json::json!(v)).unwrap())
        .collect();
    GroupTest::with(())
        .given(group_with_session())
        .when(feedback("c1", "SRS", items.clone()))
        .then_expect_events(vec![GroupEvent::FeedbackRecorded {
            client_id: "c1".into(),
            session_id: Some("s1".into()),
            measure: Measure {
                instrument: "SRS".into(),
                reference_version: "2024.1".into(),
                items,
                total: Score::from_tenths(361),
                administered_at: at("2026-01-13T18:00:00+01:00"),
            },
        }]);
}

#[test]
fn a_phq9_item_out_of_range_is_refused_naming_the_item() {
    GroupTest::with(())
        .given(group_with_session())
        .when(feedback("c1", "PHQ-9", whole(&[1, 2, 0, 4, 1, 0, 0, 1, 0])))
        .then_expect_error(GroupError::InvalidItems(crate::instruments::ItemError {
            field: "items[3]".into(),
            message: "PHQ-9 item 4 must be a whole number from 0 to 3, got 4".into(),
        }));
}

#[test]
fn feedback_needs_the_right_number_of_items_and_a_known_instrument() {
    let mut group = Group::default();
    for e in group_with_session() {
        group.apply(e);
    }
    assert_eq!(
        kind(group.decide(feedback("c1", "GAD-7", whole(&[1, 2, 3])))),
        RejectionKind::Invalid {
            field: "items".into()
        }
    );
    assert_eq!(
        kind(group.decide(feedback("c1", "BDI-II", whole(&[1, 2, 3])))),
        RejectionKind::Invalid {
            field: "instrument".into()
        }
    );
}

#[test]
fn feedback_only_from_members_and_never_for_cancelled_sessions() {
    GroupTest::with(())
        .given(group_with_session())
        .when(feedback("c2", "GAD-7", whole(&[1, 1, 1, 1, 1, 1, 1])))
        .then_expect_error(GroupError::NotAMemberOn {
            client_id: "c2".into(),
            date: date("2026-01-13"),
        });
    let mut given = group_with_session();
    given.push(GroupEvent::SessionCancelled {
        session_id: "s1".into(),
        reason: "holiday".into(),
    });
    GroupTest::with(())
        .given(given)
        .when(feedback("c1", "GAD-7", whole(&[1, 1, 1, 1, 1, 1, 1])))
        .then_expect_error(GroupError::SessionCancelled("s1".into()));
}

#[test]
fn a_measure_between_sessions_needs_a_time_and_membership_on_that_day() {
    let between = |when: Option<&str>| GroupCommand::RecordFeedback {
        client_id: "c1".into(),
        session_id: None,
        instrument: "ORS".into(),
        items: whole(&[5, 5, 5, 5]),
        administered_at: when.map(at),
    };
    let mut group = Group::default();
    for e in group_with_session() {
        group.apply(e);
    }
    assert_eq!(
        kind(group.decide(between(None))),
        RejectionKind::Invalid {
            field: "administered_at".into()
        }
    );
    assert!(group.decide(between(Some("2026-01-01T09:00:00Z"))).is_err());
    assert_eq!(
        group
            .decide(between(Some("2026-01-20T09:00:00Z")))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn sessions_have_unique_ids_and_sane_durations() {
    GroupTest::with(())
        .given(group_with_session())
        .when(GroupCommand::ScheduleSession {
            session_id: "s1".into(),
            starts_at: at("2026-01-20T18:00:00+01:00"),
            duration_minutes: 90,
        })
        .then_expect_error(GroupError::SessionExists("s1".into()));
    let mut group = Group::default();
    group.apply(created(10));
    assert_eq!(
        kind(group.decide(GroupCommand::ScheduleSession {
            session_id: "s2".into(),
            starts_at: at("2026-01-20T18:00:00+01:00"),
            duration_minutes: 0,
        })),
        RejectionKind::Invalid {
            field: "duration_minutes".into()
        }
    );
}

#[test]
fn a_group_keeps_at_least_one_facilitator() {
    GroupTest::with(())
        .given(vec![created(10)])
        .when(GroupCommand::RemoveFacilitator {
            clinician_id: "dr_a".into(),
        })
        .then_expect_error(GroupError::LastFacilitator);
    GroupTest::with(())
        .given(vec![
            created(10),
            GroupEvent::FacilitatorAssigned {
                clinician_id: "dr_b".into(),
            },
        ])
        .when(GroupCommand::RemoveFacilitator {
            clinician_id: "dr_a".into(),
        })
        .then_expect_events(vec![GroupEvent::FacilitatorRemoved {
            clinician_id: "dr_a".into(),
        }]);
}

#[test]
fn a_closed_group_schedules_nothing_more() {
    GroupTest::with(())
        .given(vec![
            created(10),
            GroupEvent::GroupClosed {
                closed_on: date("2026-06-30"),
            },
        ])
        .when(GroupCommand::ScheduleSession {
            session_id: "s9".into(),
            starts_at: at("2026-07-07T18:00:00+01:00"),
            duration_minutes: 90,
        })
        .then_expect_error(GroupError::GroupClosed(date("2026-06-30")));
}

#[test]
fn state_tracks_the_stream_sequence() {
    let mut group = Group::default();
    for e in group_with_session() {
        group.apply(e);
    }
    assert_eq!(group.sequence, 3);
    assert_eq!(group.active_members().collect::<Vec<_>>(), vec!["c1"]);
}

fn refused_field(group: &Group, command: GroupCommand) -> String {
    match kind(group.decide(command)) {
        RejectionKind::Invalid { field } => field,
        other => panic!("expected a 400-kind refusal, got {other:?}"),
    }
}

fn replay(events: Vec<GroupEvent>) -> Group {
    let mut group = Group::default();
    for e in events {
        group.apply(e);
    }
    group
}

#[test]
fn dates_outside_the_calendar_of_1900_to_2199_are_refused_naming_the_field() {
    let group = replay(vec![created(10), joined("c1", "2026-01-06")]);
    let far = |year| NaiveDate::from_ymd_opt(year, 1, 1).unwrap();
    for day in [
        far(0),
        far(-1),
        far(262142),
        date("1899-12-31"),
        date("2200-01-01"),
    ] {
        let join = GroupCommand::JoinGroup {
            client_id: "c2".into(),
            joined_on: day,
        };
        assert_eq!(refused_field(&group, join), "joined_on", "{day}");
        let leave = GroupCommand::LeaveGroup {
            client_id: "c1".into(),
            left_on: day,
            reason: DepartureReason::Completed,
        };
        assert_eq!(refused_field(&group, leave), "left_on", "{day}");
        let close = GroupCommand::CloseGroup { closed_on: day };
        assert_eq!(refused_field(&group, close), "closed_on", "{day}");
        let create = GroupCommand::CreateGroup {
            group_id: "g2".into(),
            name: "x".into(),
            focus: Focus::Grief,
            format: Format::Open,
            capacity: 8,
            facilitators: vec!["dr_a".into()],
            starts_on: Some(day),
        };
        assert_eq!(refused_field(&Group::default(), create), "starts_on");
    }
    for day in ["1900-01-01", "2199-12-31"] {
        assert!(group.decide(join("c2", day)).is_ok(), "{day} is in range");
    }
}

#[test]
fn session_and_measure_times_are_in_the_calendar_and_never_a_leap_second() {
    let group = replay(group_with_session());
    let schedule = |starts_at: DateTime<FixedOffset>| GroupCommand::ScheduleSession {
        session_id: "s2".into(),
        starts_at,
        duration_minutes: 90,
    };
    let measure = |administered_at| GroupCommand::RecordFeedback {
        client_id: "c1".into(),
        session_id: None,
        instrument: "GAD-7".into(),
        items: whole(&[1; 7]),
        administered_at: Some(administered_at),
    };
    let leap_second = at("2026-06-30T23:59:60+00:00");
    assert_eq!(leap_second.timestamp_subsec_nanos(), 1_000_000_000);
    for bad in [
        leap_second,
        at("1899-12-31T23:00:00+00:00"),
        at("2200-01-01T00:00:00+00:00"),
        at("0000-01-01T00:00:00+00:00"),
    ] {
        assert_eq!(refused_field(&group, schedule(bad)), "starts_at", "{bad}");
        assert_eq!(
            refused_field(&group, measure(bad)),
            "administered_at",
            "{bad}"
        );
    }
    assert!(group
        .decide(schedule(at("2199-12-31T23:59:59+00:00")))
        .is_ok());
}

#[test]
fn a_group_has_at_most_ten_facilitators() {
    let create = |n: usize| GroupCommand::CreateGroup {
        group_id: "g1".into(),
        name: "x".into(),
        focus: Focus::Grief,
        format: Format::Open,
        capacity: 8,
        facilitators: (0..n).map(|i| format!("dr_{i}")).collect(),
        starts_on: None,
    };
    assert!(Group::default().decide(create(MAX_FACILITATORS)).is_ok());
    assert_eq!(
        refused_field(&Group::default(), create(MAX_FACILITATORS + 1)),
        "facilitators"
    );
    assert_eq!(
        refused_field(&Group::default(), create(5_000)),
        "facilitators"
    );

    let full = replay(
        std::iter::once(created(10))
            .chain(
                (1..MAX_FACILITATORS).map(|i| GroupEvent::FacilitatorAssigned {
                    clinician_id: format!("dr_{i}"),
                }),
            )
            .collect(),
    );
    assert_eq!(full.facilitators.len(), MAX_FACILITATORS);
    let one_more = GroupCommand::AssignFacilitator {
        clinician_id: "dr_new".into(),
    };
    assert_eq!(
        kind(full.decide(one_more)),
        RejectionKind::Rule {
            field: Some("clinician_id".into())
        }
    );
}

#[test]
fn one_attendance_command_carries_a_bounded_number_of_marks() {
    let group = replay(group_with_session());
    let records = (0..=MAX_ATTENDANCE_MARKS)
        .map(|i| mark(&format!("c{i}"), AttendanceStatus::Present))
        .collect();
    let command = GroupCommand::RecordAttendance {
        session_id: "s1".into(),
        records,
    };
    assert_eq!(refused_field(&group, command), "records");
}

#[test]
fn only_addiction_recovery_groups_carry_the_part2_label() {
    let all = [
        Focus::Anxiety,
        Focus::Depression,
        Focus::Grief,
        Focus::Trauma,
        Focus::Relationships,
        Focus::AddictionRecovery,
        Focus::PersonalGrowth,
    ];
    for focus in all {
        let expected = (focus == Focus::AddictionRecovery).then_some(Sensitivity::Part2);
        assert_eq!(focus.sensitivity(), expected, "{focus:?}");
    }
    assert_eq!(Sensitivity::Part2.as_str(), "part2");
    assert_eq!(serde_json::to_value(Sensitivity::Part2).unwrap(), "part2");
}

fn phq9_recorded(client: &str, items: &[i64]) -> GroupEvent {
    let items = whole(items);
    GroupEvent::FeedbackRecorded {
        client_id: client.into(),
        session_id: Some("s1".into()),
        measure: Measure {
            instrument: "PHQ-9".into(),
            reference_version: "2024.1".into(),
            total: Score::from_tenths(items.iter().map(|s| s.tenths()).sum()),
            items,
            administered_at: at("2026-01-13T18:00:00+01:00"),
        },
    }
}

fn review_risk(client: &str) -> GroupCommand {
    GroupCommand::ReviewRisk {
        client_id: client.into(),
    }
}

#[test]
fn a_risk_item_awaits_a_clinicians_review_and_the_review_is_an_event() {
    let mut given = group_with_session();
    given.push(phq9_recorded("c1", &[1, 1, 1, 1, 1, 1, 1, 1, 2]));
    GroupTest::with(())
        .given(given)
        .when(review_risk("c1"))
        .then_expect_events(vec![GroupEvent::RiskReviewed {
            client_id: "c1".into(),
        }]);
}

#[test]
fn a_review_with_no_risk_item_pending_is_refused_naming_the_member() {
    let mut reviewed = group_with_session();
    reviewed.push(phq9_recorded("c1", &[1, 1, 1, 1, 1, 1, 1, 1, 2]));
    reviewed.push(GroupEvent::RiskReviewed {
        client_id: "c1".into(),
    });
    let error = GroupError::NoRiskToReview("c1".into());
    assert_eq!(
        error.kind(),
        RejectionKind::Rule {
            field: Some("client_id".into())
        }
    );
    GroupTest::with(())
        .given(reviewed)
        .when(review_risk("c1"))
        .then_expect_error(error.clone());
    let mut no_flag = group_with_session();
    no_flag.push(phq9_recorded("c1", &[1, 1, 1, 1, 1, 1, 1, 1, 0]));
    GroupTest::with(())
        .given(no_flag)
        .when(review_risk("c1"))
        .then_expect_error(error);
}

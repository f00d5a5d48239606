//! Goals, given/when/then: every rule of DOMAIN.md "Goals and accountability" that
//! the aggregate decides.

use chrono::{DateTime, FixedOffset, NaiveDate};
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;

use super::*;
use crate::client::SealedPersonalData;
use crate::{Rejection, RejectionKind};

type GroupTest = TestFramework<Group>;

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn at(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

fn sealed() -> SealedPersonalData {
    SealedPersonalData {
        sealed: "bm9uY2UrdGl0bGU=".into(),
    }
}

/// g1 with c1 and c2 members from 6 January, sessions s1 (13 Jan) and s2 (20 Jan),
/// and goal1 of c1 set on 13 January.
fn history() -> Vec<GroupEvent> {
    vec![
        GroupEvent::GroupCreated {
            group_id: "g1".into(),
            name: "Tuesday".into(),
            focus: Focus::Depression,
            format: Format::Open,
            capacity: 8,
            facilitators: vec!["dr_a".into()],
            starts_on: None,
        },
        GroupEvent::MemberJoined {
            client_id: "c1".into(),
            joined_on: date("2026-01-06"),
        },
        GroupEvent::MemberJoined {
            client_id: "c2".into(),
            joined_on: date("2026-01-06"),
        },
        GroupEvent::SessionScheduled {
            session_id: "s1".into(),
            starts_at: at("2026-01-13T18:00:00+01:00"),
            duration_minutes: 90,
        },
        GroupEvent::SessionScheduled {
            session_id: "s2".into(),
            starts_at: at("2026-01-20T18:00:00+01:00"),
            duration_minutes: 90,
        },
        goal_set("goal1", "c1", "2026-01-13"),
    ]
}

fn goal_set(goal_id: &str, client_id: &str, on: &str) -> GroupEvent {
    GroupEvent::GoalSet {
        goal_id: goal_id.into(),
        client_id: client_id.into(),
        title: sealed(),
        weight: 1,
        start_level: -1,
        set_on: date(on),
    }
}

fn set_goal(goal_id: &str, client_id: &str, weight: u8, start_level: i8) -> GroupCommand {
    GroupCommand::SetGoal {
        goal_id: goal_id.into(),
        client_id: client_id.into(),
        title: sealed(),
        weight,
        start_level,
        set_on: date("2026-01-13"),
    }
}

fn check_in(goal_id: &str, client_id: &str, level: i8, session: Option<&str>) -> GroupCommand {
    GroupCommand::CheckIn {
        goal_id: goal_id.into(),
        client_id: client_id.into(),
        level,
        session_id: session.map(String::from),
        checked_in_at: None,
    }
}

fn close(goal_id: &str, reason: GoalClosure, replaced_by: Option<&str>) -> GroupCommand {
    GroupCommand::CloseGoal {
        goal_id: goal_id.into(),
        client_id: "c1".into(),
        reason,
        replaced_by: replaced_by.map(String::from),
        closed_on: date("2026-01-27"),
    }
}

/// How `command` is refused after `given`.
fn refusal(given: Vec<GroupEvent>, command: GroupCommand) -> RejectionKind {
    let mut group = Group::default();
    for event in given {
        group.apply(event);
    }
    group
        .decide(command)
        .expect_err("expected a refusal")
        .kind()
}

fn invalid(field: &str) -> RejectionKind {
    RejectionKind::Invalid {
        field: field.into(),
    }
}

fn rule(field: &str) -> RejectionKind {
    RejectionKind::Rule {
        field: Some(field.into()),
    }
}

fn with(mut events: Vec<GroupEvent>, more: Vec<GroupEvent>) -> Vec<GroupEvent> {
    events.extend(more);
    events
}

#[test]
fn a_member_sets_a_goal_with_its_title_sealed() {
    GroupTest::with(())
        .given(history())
        .when(set_goal("goal2", "c2", 3, 0))
        .then_expect_events(vec![GroupEvent::GoalSet {
            goal_id: "goal2".into(),
            client_id: "c2".into(),
            title: sealed(),
            weight: 3,
            start_level: 0,
            set_on: date("2026-01-13"),
        }]);
}

#[test]
fn weights_are_1_to_3() {
    for weight in [0, 4] {
        assert_eq!(
            refusal(history(), set_goal("goal2", "c2", weight, -1)),
            invalid("weight"),
            "{weight}"
        );
    }
}

#[test]
fn levels_are_minus_2_to_plus_2() {
    for level in [-3, 3] {
        assert_eq!(
            refusal(history(), set_goal("goal2", "c2", 1, level)),
            invalid("start_level")
        );
        assert_eq!(
            refusal(history(), check_in("goal1", "c1", level, Some("s1"))),
            invalid("level")
        );
    }
    GroupTest::with(())
        .given(history())
        .when(check_in("goal1", "c1", -2, Some("s1")))
        .then_expect_events(vec![GroupEvent::GoalCheckedIn {
            goal_id: "goal1".into(),
            client_id: "c1".into(),
            level: -2,
            session_id: Some("s1".into()),
            checked_in_at: at("2026-01-13T18:00:00+01:00"),
        }]);
}

#[test]
fn a_goal_is_set_only_by_a_member_and_once() {
    let mut command = set_goal("goal2", "c9", 1, -1);
    assert_eq!(refusal(history(), command.clone()), rule("client_id"));
    if let GroupCommand::SetGoal {
        client_id, set_on, ..
    } = &mut command
    {
        *client_id = "c1".into();
        *set_on = date("2026-01-05");
    }
    assert_eq!(
        refusal(history(), command),
        rule("client_id"),
        "before joining"
    );
    assert_eq!(
        refusal(history(), set_goal("goal1", "c2", 1, -1)),
        RejectionKind::Conflict
    );
}

#[test]
fn a_check_in_only_while_a_member() {
    let departed = with(
        history(),
        vec![GroupEvent::MemberLeft {
            client_id: "c1".into(),
            left_on: date("2026-01-15"),
            reason: DepartureReason::Completed,
        }],
    );
    assert_eq!(
        refusal(departed.clone(), check_in("goal1", "c1", 0, Some("s2"))),
        rule("client_id")
    );
    // The session before the departure is still theirs.
    GroupTest::with(())
        .given(departed)
        .when(check_in("goal1", "c1", 0, Some("s1")))
        .then_expect_events(vec![GroupEvent::GoalCheckedIn {
            goal_id: "goal1".into(),
            client_id: "c1".into(),
            level: 0,
            session_id: Some("s1".into()),
            checked_in_at: at("2026-01-13T18:00:00+01:00"),
        }]);
}

#[test]
fn a_check_in_only_on_the_members_own_goal() {
    assert_eq!(
        refusal(history(), check_in("goal1", "c2", 1, Some("s1"))),
        rule("goal_id"),
        "another client's goal"
    );
    assert_eq!(
        refusal(history(), check_in("goal9", "c1", 1, Some("s1"))),
        RejectionKind::NotFound
    );
}

#[test]
fn no_check_in_on_a_closed_goal() {
    let closed = with(
        history(),
        vec![GroupEvent::GoalClosed {
            goal_id: "goal1".into(),
            client_id: "c1".into(),
            reason: GoalClosure::Attained,
            replaced_by: None,
            closed_on: date("2026-01-14"),
        }],
    );
    assert_eq!(
        refusal(closed.clone(), check_in("goal1", "c1", 2, Some("s2"))),
        rule("goal_id")
    );
    assert_eq!(
        refusal(closed, close("goal1", GoalClosure::Dropped, None)),
        rule("goal_id"),
        "closed once"
    );
}

#[test]
fn no_check_in_dated_before_the_goal_was_set() {
    let early = GroupCommand::CheckIn {
        goal_id: "goal1".into(),
        client_id: "c1".into(),
        level: 0,
        session_id: None,
        checked_in_at: Some(at("2026-01-12T10:00:00+00:00")),
    };
    assert_eq!(refusal(history(), early), rule("checked_in_at"));
    let set_later = with(history(), vec![goal_set("goal2", "c2", "2026-01-14")]);
    assert_eq!(
        refusal(set_later, check_in("goal2", "c2", 0, Some("s1"))),
        rule("session_id")
    );
    assert_eq!(
        refusal(history(), check_in("goal1", "c1", 0, None)),
        invalid("checked_in_at"),
        "outside a session a check-in says when"
    );
}

#[test]
fn a_check_in_at_a_session_is_by_a_member_who_did_not_miss_it() {
    let absent = with(
        history(),
        vec![GroupEvent::AttendanceRecorded {
            session_id: "s1".into(),
            client_id: "c1".into(),
            status: AttendanceStatus::NoShow,
        }],
    );
    assert_eq!(
        refusal(absent, check_in("goal1", "c1", 0, Some("s1"))),
        rule("session_id")
    );
    let cancelled = with(
        history(),
        vec![GroupEvent::SessionCancelled {
            session_id: "s2".into(),
            reason: "snow".into(),
        }],
    );
    assert_eq!(
        refusal(cancelled, check_in("goal1", "c1", 0, Some("s2"))),
        rule("session_id")
    );
    assert_eq!(
        refusal(history(), check_in("goal1", "c1", 0, Some("s9"))),
        RejectionKind::NotFound
    );
}

#[test]
fn a_revised_goal_names_the_goal_that_replaces_it() {
    let two_goals = with(history(), vec![goal_set("goal2", "c1", "2026-01-20")]);
    GroupTest::with(())
        .given(two_goals.clone())
        .when(close("goal1", GoalClosure::Revised, Some("goal2")))
        .then_expect_events(vec![GroupEvent::GoalClosed {
            goal_id: "goal1".into(),
            client_id: "c1".into(),
            reason: GoalClosure::Revised,
            replaced_by: Some("goal2".into()),
            closed_on: date("2026-01-27"),
        }]);
    assert_eq!(
        refusal(
            two_goals.clone(),
            close("goal1", GoalClosure::Revised, None)
        ),
        invalid("replaced_by")
    );
    assert_eq!(
        refusal(
            two_goals.clone(),
            close("goal1", GoalClosure::Revised, Some("goal1"))
        ),
        rule("replaced_by")
    );
    assert_eq!(
        refusal(
            two_goals.clone(),
            close("goal1", GoalClosure::Attained, Some("goal2"))
        ),
        invalid("replaced_by")
    );
    let others = with(history(), vec![goal_set("goal3", "c2", "2026-01-20")]);
    assert_eq!(
        refusal(others, close("goal1", GoalClosure::Revised, Some("goal3"))),
        rule("replaced_by"),
        "another client's goal replaces nothing of c1's"
    );
    assert_eq!(
        refusal(
            two_goals,
            close("goal1", GoalClosure::Revised, Some("goal9"))
        ),
        RejectionKind::NotFound
    );
}

#[test]
fn a_goal_is_attained_or_dropped_without_a_replacement() {
    for reason in [GoalClosure::Attained, GoalClosure::Dropped] {
        GroupTest::with(())
            .given(history())
            .when(close("goal1", reason, None))
            .then_expect_events(vec![GroupEvent::GoalClosed {
                goal_id: "goal1".into(),
                client_id: "c1".into(),
                reason,
                replaced_by: None,
                closed_on: date("2026-01-27"),
            }]);
    }
    let mut early = close("goal1", GoalClosure::Dropped, None);
    if let GroupCommand::CloseGoal { closed_on, .. } = &mut early {
        *closed_on = date("2026-01-12");
    }
    assert_eq!(refusal(history(), early), rule("closed_on"));
}

#[test]
fn the_group_check_in_form_records_every_level_or_none() {
    let two = with(history(), vec![goal_set("goal2", "c2", "2026-01-13")]);
    let entry = |client: &str, goal: &str, level| GoalLevel {
        client_id: client.into(),
        goal_id: goal.into(),
        level,
    };
    GroupTest::with(())
        .given(two.clone())
        .when(GroupCommand::CheckInSession {
            session_id: "s2".into(),
            check_ins: vec![entry("c1", "goal1", 1), entry("c2", "goal2", 2)],
        })
        .then_expect_events(vec![
            GroupEvent::GoalCheckedIn {
                goal_id: "goal1".into(),
                client_id: "c1".into(),
                level: 1,
                session_id: Some("s2".into()),
                checked_in_at: at("2026-01-20T18:00:00+01:00"),
            },
            GroupEvent::GoalCheckedIn {
                goal_id: "goal2".into(),
                client_id: "c2".into(),
                level: 2,
                session_id: Some("s2".into()),
                checked_in_at: at("2026-01-20T18:00:00+01:00"),
            },
        ]);
    let form = |check_ins| GroupCommand::CheckInSession {
        session_id: "s2".into(),
        check_ins,
    };
    assert_eq!(
        refusal(
            two.clone(),
            form(vec![entry("c1", "goal1", 1), entry("c1", "goal2", 2)])
        ),
        rule("check_ins[1].goal_id")
    );
    assert_eq!(
        refusal(
            two.clone(),
            form(vec![entry("c1", "goal1", 1), entry("c2", "goal2", 3)])
        ),
        invalid("check_ins[1].level")
    );
    assert_eq!(
        refusal(
            two.clone(),
            form(vec![entry("c1", "goal1", 1), entry("c1", "goal1", 0)])
        ),
        invalid("check_ins[1].goal_id")
    );
    assert_eq!(refusal(two, form(vec![])), invalid("check_ins"));
}

#[test]
fn the_aggregate_keeps_no_sealed_title() {
    // Only the log holds the sealed title; state keeps what the rules need.
    let mut group = Group::default();
    for event in history() {
        group.apply(event);
    }
    let state = serde_json::to_string(&group.goals).unwrap();
    assert!(!state.contains(&sealed().sealed), "{state}");
}

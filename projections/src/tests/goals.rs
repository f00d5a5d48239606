//! Goals: GAS T-scores (the published vectors), check-in rates, stalled goals.

use circle_events::client::SealedPersonalData;
use circle_events::group::GoalClosure;

use super::*;
use crate::goals::{self, t_score, GoalsReport, GAS_RHO};

impl Log {
    fn goal(&mut self, client: &str, goal: &str, weight: u8, start: i8, on: &str) -> &mut Self {
        self.group(
            "g1",
            GroupEvent::GoalSet {
                goal_id: goal.into(),
                client_id: client.into(),
                title: SealedPersonalData {
                    sealed: "c2VhbGVk".into(),
                },
                weight,
                start_level: start,
                set_on: date(on),
            },
        )
    }

    fn check_in(
        &mut self,
        client: &str,
        goal: &str,
        level: i8,
        session: Option<&str>,
        when: &str,
    ) -> &mut Self {
        self.group(
            "g1",
            GroupEvent::GoalCheckedIn {
                goal_id: goal.into(),
                client_id: client.into(),
                level,
                session_id: session.map(String::from),
                checked_in_at: at(when),
            },
        )
    }

    fn weekly(&mut self, client: &str, weeks: u32, status: AttendanceStatus) -> &mut Self {
        for week in 0..weeks {
            let id = format!("w{week}");
            let starts = date("2026-01-06") + Duration::weeks(i64::from(week));
            self.session("g1", &id, &format!("{starts}T18:00:00+00:00"));
            self.mark("g1", &id, client, status);
        }
        self
    }

    fn goals(&self) -> GoalsReport {
        goals::goals(&self.practice, "g1", now()).expect("g1 exists")
    }
}

fn member(log: &mut Log, client: &str) {
    log.joined("g1", client, "2026-01-01");
}

fn vectors() -> Vec<serde_json::Value> {
    super::gas_vectors()["vectors"]
        .as_array()
        .expect("vectors")
        .clone()
}

fn to_4(value: f64) -> f64 {
    (value * 1e4).round() / 1e4
}

#[test]
fn every_gas_vector_gives_its_t_score_to_4_decimals() {
    for vector in vectors() {
        let weights: Vec<u8> = serde_json::from_value(vector["weights"].clone()).unwrap();
        let levels: Vec<i8> = serde_json::from_value(vector["levels"].clone()).unwrap();
        let rho = vector["rho"].as_f64().unwrap();
        let expected = vector["expected_t"].as_f64().unwrap();
        assert_eq!(rho, GAS_RHO, "the vectors use DOMAIN.md's rho");
        let t = t_score(weights.iter().copied().zip(levels.iter().copied()), rho).unwrap();
        assert_eq!(to_4(t), expected, "{vector}");
    }
}

#[test]
fn every_gas_vector_holds_through_the_report() {
    for vector in vectors() {
        let weights: Vec<u8> = serde_json::from_value(vector["weights"].clone()).unwrap();
        let levels: Vec<i8> = serde_json::from_value(vector["levels"].clone()).unwrap();
        let expected = vector["expected_t"].as_f64().unwrap();
        let mut log = Log::new();
        log.created("g1", Focus::Depression);
        member(&mut log, "c1");
        for (i, (weight, level)) in weights.iter().zip(&levels).enumerate() {
            let goal = format!("goal{i}");
            log.goal("c1", &goal, *weight, -1, "2026-01-05");
            log.check_in("c1", &goal, *level, None, "2026-01-12T10:00:00+00:00");
        }
        let report = log.goals();
        let row = &report.clients.as_ref().unwrap()[0];
        assert_eq!(row.latest_t.map(to_4), Some(expected), "{vector}");
        assert_eq!(report.summary.mean_t.map(to_4), Some(expected), "{vector}");
        let baseline = t_score(weights.iter().map(|w| (*w, -1)), GAS_RHO).unwrap();
        assert_eq!(row.baseline_t.map(to_4), Some(to_4(baseline)));
    }
}

#[test]
fn baseline_is_the_start_levels_and_change_is_latest_minus_baseline() {
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    member(&mut log, "c1");
    log.goal("c1", "a", 1, -1, "2026-01-05")
        .goal("c1", "b", 1, -1, "2026-01-05")
        .goal("c1", "c", 1, -1, "2026-01-05");
    let before = log.goals();
    let row = &before.clients.as_ref().unwrap()[0];
    assert_eq!(row.baseline_t, Some(36.306936), "three goals at -1");
    assert_eq!(row.latest_t, row.baseline_t, "no check-in yet");
    assert_eq!(row.change, Some(0.0));
    for goal in ["a", "b", "c"] {
        log.check_in("c1", goal, 1, None, "2026-01-12T10:00:00+00:00");
    }
    let after = log.goals();
    let row = &after.clients.as_ref().unwrap()[0];
    assert_eq!(row.latest_t, Some(63.693064));
    assert_eq!(row.change, Some(27.386128));
    assert_eq!(row.active_goals, 3);
}

#[test]
fn the_latest_level_is_the_latest_by_date_and_a_closed_goal_leaves_the_score() {
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    member(&mut log, "c1");
    log.goal("c1", "a", 1, -1, "2026-01-05")
        .goal("c1", "b", 1, -1, "2026-01-05")
        .check_in("c1", "a", 2, None, "2026-02-01T10:00:00+00:00")
        // Back-filled: an earlier check-in recorded later does not win.
        .check_in("c1", "a", 0, None, "2026-01-20T10:00:00+00:00");
    let row = log.goals().clients.unwrap().remove(0);
    assert_eq!(row.goals[0].latest_level, 2);
    log.group(
        "g1",
        GroupEvent::GoalClosed {
            goal_id: "b".into(),
            client_id: "c1".into(),
            reason: GoalClosure::Dropped,
            replaced_by: None,
            closed_on: date("2026-02-02"),
        },
    );
    let row = log.goals().clients.unwrap().remove(0);
    assert_eq!(row.active_goals, 1);
    assert_eq!(row.latest_t, Some(70.0), "only goal a, at +2");
    assert_eq!(row.goals[1].closure, Some(GoalClosure::Dropped));
}

#[test]
fn the_check_in_rate_counts_attended_sessions_with_an_active_goal() {
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    member(&mut log, "c1");
    // w0 (6 Jan) is before the goal; w1..w4 attended with the goal; w5 excused.
    log.goal("c1", "a", 1, -1, "2026-01-10");
    log.weekly("c1", 5, AttendanceStatus::Present);
    log.session("g1", "w5", "2026-02-10T18:00:00+00:00").mark(
        "g1",
        "w5",
        "c1",
        AttendanceStatus::Excused,
    );
    log.check_in("c1", "a", 0, Some("w1"), "2026-01-13T18:00:00+00:00")
        // Without a session, on a session's date: that session's check-in.
        .check_in("c1", "a", 1, None, "2026-01-27T20:00:00+00:00")
        // Between sessions: counts as a level, not as a session checked in.
        .check_in("c1", "a", 1, None, "2026-01-29T20:00:00+00:00");
    let row = log.goals().clients.unwrap().remove(0);
    assert_eq!((row.sessions_checked_in, row.sessions_attended), (2, 4));
    assert_eq!(row.check_in_rate, Some(0.5));
    assert_eq!(log.goals().summary.check_in_rate, Some(0.5));
}

#[test]
fn a_goal_without_a_check_in_in_three_attended_sessions_stalls_and_alerts_once() {
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    member(&mut log, "c1");
    log.goal("c1", "a", 1, -1, "2026-01-01");
    log.weekly("c1", 2, AttendanceStatus::Present);
    assert!(
        log.goals().clients.unwrap()[0].stalled_goals.is_empty(),
        "two sessions"
    );
    log.session("g1", "x", "2026-01-21T18:00:00+00:00").mark(
        "g1",
        "x",
        "c1",
        AttendanceStatus::NoShow,
    );
    assert!(
        log.goals().clients.unwrap()[0].stalled_goals.is_empty(),
        "a missed session does not count"
    );
    log.session("g1", "y", "2026-01-28T18:00:00+00:00").mark(
        "g1",
        "y",
        "c1",
        AttendanceStatus::Late,
    );
    let report = log.goals();
    assert_eq!(
        report.clients.unwrap()[0].stalled_goals,
        vec!["a".to_string()]
    );
    assert_eq!(report.summary.stalled_goals, Some(1));
    let stalled = |log: &Log| {
        log.practice
            .alerts
            .iter()
            .filter(|a| a.kind == AlertKind::StalledGoal)
            .count()
    };
    assert_eq!(stalled(&log), 1);
    log.session("g1", "z", "2026-02-04T18:00:00+00:00").mark(
        "g1",
        "z",
        "c1",
        AttendanceStatus::Present,
    );
    assert_eq!(stalled(&log), 1, "one alert per stall");
    log.check_in("c1", "a", 0, Some("z"), "2026-02-04T18:30:00+00:00");
    assert!(log.goals().clients.unwrap()[0].stalled_goals.is_empty());
    for (id, day) in [("p", "11"), ("q", "18"), ("r", "25")] {
        log.session("g1", id, &format!("2026-02-{day}T18:00:00+00:00"))
            .mark("g1", id, "c1", AttendanceStatus::Present);
    }
    assert_eq!(stalled(&log), 2, "a new stall alerts again");
}

#[test]
fn the_group_shows_mean_t_and_the_share_at_or_above_50() {
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    for (client, level) in [("c1", 2), ("c2", 0), ("c3", -2)] {
        member(&mut log, client);
        log.goal(client, &format!("{client}_a"), 1, -1, "2026-01-05");
        log.check_in(
            client,
            &format!("{client}_a"),
            level,
            None,
            "2026-01-12T10:00:00+00:00",
        );
    }
    let summary = log.goals().summary;
    assert_eq!(summary.members_with_goals, Some(3));
    assert_eq!(summary.mean_t, Some(50.0));
    assert_eq!(summary.at_or_above_50, Some(2));
    assert_eq!(summary.share_at_or_above_50, Some(0.666667));
}

#[test]
fn the_reporter_form_carries_group_figures_only_with_small_counts_suppressed() {
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    member(&mut log, "c1");
    log.goal("c1", "a", 2, 1, "2026-01-05")
        .weekly("c1", 2, AttendanceStatus::Present);
    assert_eq!(log.goals().summary.check_in_rate, Some(0.0));
    let report = log.goals().for_reporters(5);
    assert!(report.clients.is_none());
    assert_eq!(report.summary.members_with_goals, None);
    assert_eq!(report.summary.at_or_above_50, None);
    assert_eq!(
        log.goals().summary.mean_t,
        Some(60.0),
        "one goal of weight 2 at +1"
    );
    // One member's T-score and check-in rate are theirs alone (issue 7).
    assert_eq!(report.summary.mean_t, None);
    assert_eq!(report.summary.share_at_or_above_50, None);
    assert_eq!(report.summary.check_in_rate, None);
    assert_eq!(report.summary.stalled_goals, None);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json.get("clients").is_none(), "{json}");
}

#[test]
fn a_report_as_of_a_day_ignores_later_goals_and_check_ins() {
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    member(&mut log, "c1");
    log.goal("c1", "a", 1, -1, "2026-01-05")
        .check_in("c1", "a", 2, None, "2026-07-01T10:00:00+00:00")
        .goal("c1", "b", 1, -1, "2026-07-01");
    let row = log.goals().clients.unwrap().remove(0);
    assert_eq!(row.goals.len(), 1, "goal b is set after the report's day");
    assert_eq!(row.latest_t, Some(40.0));
}

#[test]
fn stalled_goals_of_one_member_are_withheld_however_many() {
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    member(&mut log, "c1");
    for goal in ["a", "b", "c", "d", "e"] {
        log.goal("c1", goal, 1, -1, "2026-01-05");
    }
    log.weekly("c1", 3, AttendanceStatus::Present);
    assert_eq!(log.goals().summary.stalled_goals, Some(5));
    assert_eq!(log.goals().for_reporters(5).summary.stalled_goals, None);
}

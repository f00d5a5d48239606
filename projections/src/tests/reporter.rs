//! The reporter form and small numbers: the security probe's examples (issue 7, item 2).
//! A value computed from fewer than k people is `null`; the full form is unchanged.

use super::*;
use crate::reports::shown_to_reporters;

const K: u32 = 5;

/// A group whose members `clients` joined on 2026-01-01.
fn group_of(clients: &[&str]) -> Log {
    let mut log = Log::new();
    log.created("g1", Focus::Anxiety);
    for client in clients {
        log.joined("g1", client, "2026-01-01");
    }
    log
}

#[test]
fn the_rule_shows_a_value_from_k_people_and_withholds_one_from_fewer() {
    assert!(shown_to_reporters(K, K));
    assert!(!shown_to_reporters(K - 1, K));
    assert!(!shown_to_reporters(0, K));
    assert!(shown_to_reporters(0, 0), "k = 0 withholds nothing");
}

#[test]
fn a_one_member_groups_attendance_rates_are_withheld() {
    let mut log = group_of(&["c1"]);
    for (n, status) in [
        AttendanceStatus::Present,
        AttendanceStatus::NoShow,
        AttendanceStatus::NoShow,
    ]
    .into_iter()
    .enumerate()
    {
        let session = format!("s{n}");
        log.session(
            "g1",
            &session,
            &format!("2026-01-{:02}T18:00:00+00:00", 6 + 7 * n),
        );
        log.mark("g1", &session, "c1", status);
    }
    let full = reports::attendance(&log.practice, "g1", now()).unwrap();
    let rates: Vec<_> = full.by_session.iter().map(|s| s.attendance_rate).collect();
    assert_eq!(
        rates,
        vec![Some(1.0), Some(0.0), Some(0.0)],
        "the probe's leak"
    );
    assert_eq!(full.attendance_rate, Some(0.333333));

    let reporter = full.for_reporters(K);
    assert!(reporter
        .by_session
        .iter()
        .all(|s| s.attendance_rate.is_none()));
    assert_eq!(reporter.attendance_rate, None);
    let json = serde_json::to_value(&reporter).unwrap();
    assert_eq!(
        json["by_session"][0]["attendance_rate"],
        serde_json::Value::Null
    );
    assert_eq!(json["attendance_rate"], serde_json::Value::Null);
}

#[test]
fn a_session_rate_needs_k_members_expected_and_the_overall_rate_k_members() {
    let members = ["c1", "c2", "c3", "c4", "c5"];
    let mut log = group_of(&members);
    log.session("g1", "s1", "2026-01-06T18:00:00+00:00");
    for client in members {
        log.mark("g1", "s1", client, AttendanceStatus::Present);
    }
    // c5 leaves: the second session expects four.
    log.left("g1", "c5", date("2026-01-10"), DepartureReason::Completed);
    log.session("g1", "s2", "2026-01-13T18:00:00+00:00");
    for client in &members[..4] {
        log.mark("g1", "s2", client, AttendanceStatus::Present);
    }
    let reporter = reports::attendance(&log.practice, "g1", now())
        .unwrap()
        .for_reporters(K);
    assert_eq!(
        reporter.by_session[0].attendance_rate,
        Some(1.0),
        "5 expected"
    );
    assert_eq!(reporter.by_session[1].attendance_rate, None, "4 expected");
    assert_eq!(reporter.attendance_rate, Some(1.0), "5 members in all");
}

#[test]
fn one_persons_change_is_not_published_as_the_mean_change() {
    let mut log = group_of(&["c1"]);
    log.measure("g1", "c1", "PHQ-9", phq9(24, 3), "2026-01-06T18:00:00Z");
    log.measure("g1", "c1", "PHQ-9", phq9(3, 0), "2026-03-06T18:00:00Z");
    let full = reports::outcomes(&log.practice, "g1", "PHQ-9", now()).unwrap();
    assert_eq!(full.summary.mean_change, Some(24.0), "the probe's leak");
    assert_eq!(full.summary.share_reliably_improved, Some(1.0));

    let reporter = full.for_reporters(K);
    let s = &reporter.summary;
    assert_eq!(
        (s.mean_change, s.effect_size, s.share_reliably_improved),
        (None, None, None)
    );
    let json = serde_json::to_value(&reporter).unwrap();
    assert_eq!(json["summary"]["mean_change"], serde_json::Value::Null);
}

/// Eight members: a dropout on day 10 (8 at risk), three complete on day 12, one
/// dropout on day 15 (4 at risk: the probe's step), three on day 20.
fn small_risk_set() -> Log {
    let clients: Vec<String> = (1..=8).map(|n| format!("c{n}")).collect();
    let names: Vec<&str> = clients.iter().map(String::as_str).collect();
    let mut log = group_of(&names);
    let day = |n| date("2026-01-01") + Duration::days(n);
    log.left("g1", "c1", day(10), DepartureReason::DroppedOut);
    for client in ["c2", "c3", "c4"] {
        log.left("g1", client, day(12), DepartureReason::Completed);
    }
    log.left("g1", "c5", day(15), DepartureReason::DroppedOut);
    for client in ["c6", "c7", "c8"] {
        log.left("g1", client, day(20), DepartureReason::DroppedOut);
    }
    log
}

#[test]
fn a_kaplan_meier_step_with_fewer_than_k_at_risk_is_left_out_and_said_so() {
    let log = small_risk_set();
    let scope = RetentionScope::Group("g1".into());
    let full = reports::retention(&log.practice, &scope, now());
    let steps: Vec<_> = full
        .kaplan_meier
        .iter()
        .map(|r| (r.t_days, r.at_risk))
        .collect();
    assert_eq!(
        steps,
        vec![(10, Some(8)), (15, Some(4)), (20, Some(3))],
        "the probe's leak"
    );
    assert_eq!(full.kaplan_meier[1].events, Some(1));
    assert_eq!(full.median_days, Some(20));
    assert_eq!(
        full.kaplan_meier_min_at_risk, None,
        "the full form is unchanged"
    );

    let reporter = full.for_reporters(K);
    let kept: Vec<_> = reporter.kaplan_meier.iter().map(|r| r.t_days).collect();
    assert_eq!(kept, vec![10]);
    assert_eq!(reporter.kaplan_meier_min_at_risk, Some(K));
    // The median falls on the withheld step; S(28) is from nobody still at risk.
    assert_eq!(reporter.median_days, None);
    assert_eq!(reporter.survival_at["28"], None);
    let json = serde_json::to_value(&reporter).unwrap();
    assert_eq!(json["kaplan_meier_min_at_risk"], K);
    assert_eq!(json["survival_at"]["28"], serde_json::Value::Null);
    assert!(!json.to_string().contains("\"t_days\":15"), "{json}");
    let full_json = serde_json::to_value(reports::retention(&log.practice, &scope, now())).unwrap();
    assert!(full_json.get("kaplan_meier_min_at_risk").is_none());
}

#[test]
fn survival_at_a_day_is_shown_only_while_k_people_are_still_at_risk() {
    // Six members, one dropout on day 10; two stay past day 28.
    let clients = ["c1", "c2", "c3", "c4", "c5", "c6"];
    let mut log = group_of(&clients);
    let day = |n| date("2026-01-01") + Duration::days(n);
    log.left("g1", "c1", day(10), DepartureReason::DroppedOut);
    for client in ["c2", "c3", "c4"] {
        log.left("g1", client, day(20), DepartureReason::Completed);
    }
    let full = reports::retention(&log.practice, &RetentionScope::Group("g1".into()), now());
    assert_eq!(full.survival_at["28"], Some(0.833333));
    let reporter = full.for_reporters(K);
    assert_eq!(reporter.kaplan_meier.len(), 1, "6 at risk on day 10");
    assert_eq!(
        reporter.survival_at["28"], None,
        "2 still at risk on day 28"
    );
}

#[test]
fn the_risk_set_counts_people_not_membership_periods() {
    // Four people, five periods at risk on day 20: c1 left on day 25 and came back.
    let mut log = group_of(&["c1", "c2", "c3", "c4"]);
    let day = |n| date("2026-01-01") + Duration::days(n);
    log.left("g1", "c1", day(25), DepartureReason::Other);
    log.joined("g1", "c1", "2026-02-01");
    log.left("g1", "c2", day(20), DepartureReason::DroppedOut);
    let full = reports::retention(&log.practice, &RetentionScope::Group("g1".into()), now());
    assert_eq!(full.joined, Some(5));
    assert_eq!(full.kaplan_meier[0].at_risk, Some(5), "periods at risk");
    let reporter = full.for_reporters(K);
    assert!(reporter.kaplan_meier.is_empty(), "4 people at risk");
    assert_eq!(reporter.joined, None, "5 periods, but 4 people");
    assert_eq!(reporter.dropout_rate, None, "4 people");
}

#[test]
fn the_dropout_rate_of_fewer_than_k_people_is_withheld() {
    let mut log = group_of(&["c1", "c2"]);
    log.left("g1", "c1", date("2026-01-20"), DepartureReason::DroppedOut);
    let full = reports::retention(&log.practice, &RetentionScope::Practice, now());
    assert_eq!(full.dropout_rate, Some(0.5));
    assert_eq!(full.for_reporters(K).dropout_rate, None);
}

#[test]
fn the_6mp_curve_keeps_every_step_at_k_5() {
    let (log, _) = six_mp_log();
    let full = reports::retention(&log.practice, &RetentionScope::Group("g1".into()), now());
    let reporter = full.clone().for_reporters(K);
    // Six or more at risk at every step: the curve, median and S(t) survive.
    assert_eq!(reporter.kaplan_meier.len(), full.kaplan_meier.len());
    let survival = |r: &reports::RetentionReport| -> Vec<f64> {
        r.kaplan_meier.iter().map(|row| row.survival).collect()
    };
    assert_eq!(survival(&reporter), survival(&full));
    assert_eq!(reporter.median_days, full.median_days);
    assert_eq!(reporter.survival_at, full.survival_at);
    assert_eq!(reporter.dropout_rate, full.dropout_rate);
}

#[test]
fn five_alerts_of_one_person_are_not_a_count_of_five() {
    let mut log = group_of(&["c1"]);
    for day in 1..=5 {
        let when = format!("2026-02-{day:02}T18:00:00Z");
        log.measure("g1", "c1", "PHQ-9", phq9(0, 1), &when);
    }
    let risk = |k| {
        reports::alert_counts(&log.practice, Some("g1"), k)
            .into_iter()
            .find(|(kind, _)| *kind == AlertKind::Risk)
            .map(|(_, count)| count)
    };
    assert_eq!(reports::alerts(&log.practice, Some("g1")).len(), 5);
    assert_eq!(risk(K), Some(None), "five alerts, one person");
    assert_eq!(risk(1), Some(Some(5)));
}

//! Reporting consent and the Part 2 label: given members who withdrew reporting
//! consent, then the reporter form leaves them out and says how many; the full form
//! keeps them.

use std::collections::BTreeSet;

use circle_events::client::{ClientEvent, ConsentScope, SealedPersonalData};
use circle_events::group::{GoalClosure, Sensitivity};

use super::*;
use crate::consent::{for_reporting, reporter_form, withdrawn_from_reporting};

impl Log {
    fn client(&mut self, client: &str, event: ClientEvent) -> &mut Self {
        self.position += 1;
        self.practice.apply(&Fact {
            position: self.position,
            recorded_at: now(),
            aggregate_id: client.into(),
            event: AnyEvent::Client(event),
        });
        self
    }

    fn withdraws_reporting(&mut self, client: &str) -> &mut Self {
        let scope = ConsentScope::Reporting;
        self.client(client, ClientEvent::ConsentWithdrawn { scope })
    }
}

/// Six members of g1 (anxiety) with a session, two PHQ-9s each and a goal each; c6
/// withdrew reporting consent. g2 (addiction recovery) has c6 alone.
fn practice_with_an_opt_out() -> Log {
    let mut log = Log::new();
    log.created("g1", Focus::Anxiety);
    log.created("g2", Focus::AddictionRecovery);
    let clients = ["c1", "c2", "c3", "c4", "c5", "c6"];
    log.session("g1", "s1", "2026-01-05T18:00:00Z");
    for (n, client) in clients.into_iter().enumerate() {
        log.joined("g1", client, "2026-01-01");
        log.mark("g1", "s1", client, AttendanceStatus::Present);
        log.measure("g1", client, "PHQ-9", phq9(15, 0), "2026-01-05T18:00:00Z");
        log.measure(
            "g1",
            client,
            "PHQ-9",
            phq9(5 + n as i64, 0),
            "2026-02-05T18:00:00Z",
        );
        log.group(
            "g1",
            GroupEvent::GoalSet {
                goal_id: format!("goal-{client}"),
                client_id: client.into(),
                title: SealedPersonalData {
                    sealed: "c2VhbGVk".into(),
                },
                weight: 1,
                start_level: -1,
                set_on: date("2026-01-05"),
            },
        );
    }
    log.joined("g2", "c6", "2026-01-01");
    log.withdraws_reporting("c6");
    log
}

#[test]
fn withdrawn_reporting_consent_leaves_the_client_out_of_every_reporter_form() {
    let log = practice_with_an_opt_out();
    let p = &log.practice;
    let withdrawn = withdrawn_from_reporting(p);
    assert_eq!(withdrawn, BTreeSet::from(["c6".to_string()]));
    let g1 = RetentionScope::Group("g1".into());

    let attendance = reporter_form(p, &withdrawn, &g1, 5, |p| {
        reports::attendance(p, "g1", now())
    })
    .unwrap();
    assert_eq!(attendance.left_out_without_consent, 1);
    assert_eq!(attendance.by_session[0].counts.present, Some(5));

    let retention = reporter_form(p, &withdrawn, &g1, 5, |p| {
        Some(reports::retention(p, &g1, now()))
    })
    .unwrap();
    assert_eq!(
        (retention.joined, retention.left_out_without_consent),
        (Some(5), 1)
    );

    let outcomes = reporter_form(p, &withdrawn, &g1, 5, |p| {
        reports::outcomes(p, "g1", "PHQ-9", now())
    })
    .unwrap();
    assert_eq!(outcomes.summary.clients_with_two_or_more, Some(5));
    assert_eq!(outcomes.left_out_without_consent, 1);

    let goals = reporter_form(p, &withdrawn, &g1, 5, |p| {
        crate::goals::goals(p, "g1", now())
    })
    .unwrap();
    assert_eq!(goals.summary.members_with_goals, Some(5));
    assert_eq!(goals.left_out_without_consent, 1);

    // The whole practice: c6 counted once although in two groups.
    let practice = RetentionScope::Practice;
    let all = reporter_form(p, &withdrawn, &practice, 5, |p| {
        Some(reports::retention(p, &practice, now()))
    })
    .unwrap();
    assert_eq!((all.joined, all.left_out_without_consent), (Some(5), 1));
}

#[test]
fn the_full_form_keeps_a_client_without_reporting_consent() {
    let log = practice_with_an_opt_out();
    let full = reports::attendance(&log.practice, "g1", now()).unwrap();
    assert_eq!(full.by_client.as_ref().map(Vec::len), Some(6));
    assert_eq!(full.left_out_without_consent, 0);
    let json = serde_json::to_value(&full).unwrap();
    assert_eq!(json["left_out_without_consent"], 0);
}

#[test]
fn nothing_about_a_withdrawn_client_is_left_in_the_reporting_view() {
    let mut log = practice_with_an_opt_out();
    log.group(
        "g1",
        GroupEvent::GoalClosed {
            goal_id: "goal-c6".into(),
            client_id: "c6".into(),
            reason: GoalClosure::Dropped,
            replaced_by: None,
            closed_on: date("2026-02-01"),
        },
    );
    let withdrawn = withdrawn_from_reporting(&log.practice);
    for scope in [RetentionScope::Group("g1".into()), RetentionScope::Practice] {
        let view = for_reporting(&log.practice, &withdrawn, &scope);
        // Attendance marks stay, so that a session c6 alone was marked at is still
        // held for the others; reports count members' marks only.
        let mut rest = view.practice.into_owned();
        for group in rest.groups.values_mut() {
            for session in group.sessions.values_mut() {
                session.marks.retain(|client, _| client != "c6");
            }
        }
        let text = serde_json::to_string(&rest).unwrap();
        assert!(!text.contains("c6"), "{scope:?}: {text}");
    }
    // Nobody withdrew in g1's scope once c6 grants again: the practice itself.
    let scope = ConsentScope::Reporting;
    log.client("c6", ClientEvent::ConsentGranted { scope });
    let withdrawn = withdrawn_from_reporting(&log.practice);
    let view = for_reporting(&log.practice, &withdrawn, &RetentionScope::Practice);
    assert!(matches!(view.practice, std::borrow::Cow::Borrowed(_)));
    assert_eq!(view.left_out_without_consent, 0);
}

#[test]
fn a_report_about_an_addiction_recovery_group_carries_the_part2_label() {
    let log = practice_with_an_opt_out();
    let p = &log.practice;
    let part2 = Some(Sensitivity::Part2);
    assert_eq!(
        reports::attendance(p, "g2", now()).unwrap().sensitivity,
        part2
    );
    assert_eq!(
        reports::attendance(p, "g1", now()).unwrap().sensitivity,
        None
    );
    let json = serde_json::to_value(reports::attendance(p, "g2", now()).unwrap()).unwrap();
    assert_eq!(json["sensitivity"], "part2");
    let json = serde_json::to_value(reports::attendance(p, "g1", now()).unwrap()).unwrap();
    assert!(json.get("sensitivity").is_none(), "{json}");
    // A report over several groups carries the label when any of them does.
    let practice = reports::retention(p, &RetentionScope::Practice, now());
    assert_eq!(practice.sensitivity, part2);
    let anxiety = reports::retention(p, &RetentionScope::Focus(Focus::Anxiety), now());
    assert_eq!(anxiety.sensitivity, None);
    let outcomes = reports::outcomes(p, "g2", "PHQ-9", now()).unwrap();
    assert_eq!(outcomes.sensitivity, part2);
    let goals = crate::goals::goals(p, "g2", now()).unwrap();
    assert_eq!(goals.sensitivity, part2);
    // The reporter form keeps it, also when the group's only member is left out.
    let withdrawn = withdrawn_from_reporting(p);
    let g2 = RetentionScope::Group("g2".into());
    let form = reporter_form(p, &withdrawn, &g2, 5, |p| {
        reports::attendance(p, "g2", now())
    });
    assert_eq!(form.unwrap().sensitivity, part2);
}

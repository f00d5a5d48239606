//! Reports from events: given these events, then this report.

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, TimeZone, Utc};
use circle_events::group::{AttendanceStatus, DepartureReason, Focus, Format, GroupEvent, Measure};
use circle_events::instruments::Score;

use crate::outcomes::Classification;
use crate::practice::{AlertKind, AlertRules, AnyEvent, Fact, Practice};
use crate::reports::{self, ReporterForm, RetentionScope};

struct Log {
    practice: Practice,
    position: i64,
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn at(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

impl Log {
    fn new() -> Log {
        Log {
            practice: Practice::new(AlertRules::default()),
            position: 0,
        }
    }

    fn group(&mut self, group_id: &str, event: GroupEvent) -> &mut Self {
        self.position += 1;
        self.practice.apply(&Fact {
            position: self.position,
            recorded_at: now(),
            aggregate_id: group_id.into(),
            event: AnyEvent::Group(event),
        });
        self
    }

    fn created(&mut self, group_id: &str, focus: Focus) -> &mut Self {
        self.group(
            group_id,
            GroupEvent::GroupCreated {
                group_id: group_id.into(),
                name: "g".into(),
                focus,
                format: Format::Open,
                capacity: 30,
                facilitators: vec!["dr".into()],
                starts_on: None,
            },
        )
    }

    fn joined(&mut self, group_id: &str, client: &str, on: &str) -> &mut Self {
        self.group(
            group_id,
            GroupEvent::MemberJoined {
                client_id: client.into(),
                joined_on: date(on),
            },
        )
    }

    fn left(
        &mut self,
        group_id: &str,
        client: &str,
        on: NaiveDate,
        reason: DepartureReason,
    ) -> &mut Self {
        self.group(
            group_id,
            GroupEvent::MemberLeft {
                client_id: client.into(),
                left_on: on,
                reason,
            },
        )
    }

    fn session(&mut self, group_id: &str, session: &str, starts_at: &str) -> &mut Self {
        self.group(
            group_id,
            GroupEvent::SessionScheduled {
                session_id: session.into(),
                starts_at: at(starts_at),
                duration_minutes: 90,
            },
        )
    }

    fn mark(
        &mut self,
        group_id: &str,
        session: &str,
        client: &str,
        status: AttendanceStatus,
    ) -> &mut Self {
        self.group(
            group_id,
            GroupEvent::AttendanceRecorded {
                session_id: session.into(),
                client_id: client.into(),
                status,
            },
        )
    }

    fn measure(
        &mut self,
        group_id: &str,
        client: &str,
        instrument: &str,
        items: Vec<Score>,
        when: &str,
    ) -> &mut Self {
        let total = Score::from_tenths(items.iter().map(|s| s.tenths()).sum());
        self.group(
            group_id,
            GroupEvent::FeedbackRecorded {
                client_id: client.into(),
                session_id: None,
                measure: Measure {
                    instrument: instrument.into(),
                    reference_version: "2024.1".into(),
                    items,
                    total,
                    administered_at: at(when),
                },
            },
        )
    }
}

fn phq9(total_first_eight: i64, item9: i64) -> Vec<Score> {
    let mut items = vec![0i64; 9];
    let mut left = total_first_eight;
    for item in items.iter_mut().take(8) {
        let v = left.min(3);
        *item = v;
        left -= v;
    }
    items[8] = item9;
    items.into_iter().map(Score::whole).collect()
}

/// The 6-MP vector as memberships of group `g1`: everyone joins on one day and
/// leaves after 7×t days, dropouts for events, completions for censored.
fn six_mp_log() -> (Log, serde_json::Value) {
    let vector: serde_json::Value =
        serde_json::from_str(include_str!("../../testdata/km_6mp.json")).expect("vector parses");
    let mut log = Log::new();
    log.created("g1", Focus::Grief);
    let joined_on = date("2025-01-06");
    for (i, o) in vector["observations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let client = format!("c{i}");
        log.joined("g1", &client, "2025-01-06");
        let days = o["t"].as_i64().unwrap() * 7;
        let reason = if o["event"].as_bool().unwrap() {
            DepartureReason::DroppedOut
        } else {
            DepartureReason::Completed
        };
        log.left("g1", &client, joined_on + Duration::days(days), reason);
    }
    (log, vector)
}

#[test]
fn the_6mp_vector_as_group_memberships_gives_the_published_retention() {
    let (log, vector) = six_mp_log();
    let report = reports::retention(&log.practice, &RetentionScope::Group("g1".into()), now());
    let expected = vector["expected"].as_array().unwrap();
    assert_eq!(report.kaplan_meier.len(), expected.len());
    for (row, want) in report.kaplan_meier.iter().zip(expected) {
        assert_eq!(row.t_days as i64, want["t"].as_i64().unwrap() * 7);
        assert_eq!(row.at_risk, Some(want["at_risk"].as_u64().unwrap() as u32));
        assert_eq!(row.events, Some(want["events"].as_u64().unwrap() as u32));
        // The vector gives 4 decimals: the true value lies within half a unit of them.
        let within = |x: f64, published: f64| (x - published).abs() <= 0.5e-4 + 1e-9;
        assert!(
            within(row.survival, want["survival"].as_f64().unwrap()),
            "{row:?}"
        );
        assert!(
            within(row.std_err.unwrap(), want["std_err"].as_f64().unwrap()),
            "{row:?}"
        );
    }
    assert_eq!(report.median_days, Some(23 * 7));
    assert_eq!(report.joined, Some(21));
    assert_eq!(report.dropped_out, Some(9));
    assert_eq!(report.completed, Some(12));
    assert_eq!(report.active, Some(0));
    assert_eq!(report.survival_at["28"], Some(1.0));
    assert!((report.survival_at["56"].unwrap() - 0.806723).abs() < 1e-6);
    assert_eq!(report.scope, "group:g1");
}

#[test]
fn active_members_are_censored_at_the_report_date_and_scopes_filter_groups() {
    let mut log = Log::new();
    log.created("a", Focus::Anxiety).created("b", Focus::Grief);
    log.joined("a", "c1", "2026-05-01")
        .joined("b", "c2", "2026-05-01");
    log.left("b", "c2", date("2026-05-11"), DepartureReason::DroppedOut);
    log.joined("a", "c3", "2026-07-01"); // after the report date: not counted
    let anxiety = reports::retention(&log.practice, &RetentionScope::Focus(Focus::Anxiety), now());
    assert_eq!(
        (anxiety.joined, anxiety.active, anxiety.dropped_out),
        (Some(1), Some(1), Some(0))
    );
    assert!(anxiety.kaplan_meier.is_empty());
    assert_eq!(anxiety.scope, "focus:anxiety");
    let practice = reports::retention(&log.practice, &RetentionScope::Practice, now());
    assert_eq!(practice.joined, Some(2));
    assert_eq!(practice.kaplan_meier[0].t_days, 10);
    assert_eq!(practice.kaplan_meier[0].at_risk, Some(2));
    assert_eq!(practice.dropout_rate, Some(0.5));
}

fn attendance_log() -> Log {
    let mut log = Log::new();
    log.created("g1", Focus::Anxiety);
    log.joined("g1", "c1", "2026-01-01")
        .joined("g1", "c2", "2026-01-01");
    log.joined("g1", "c3", "2026-01-15"); // misses the first session
    log.session("g1", "s1", "2026-01-06T18:00:00+01:00")
        .session("g1", "s2", "2026-01-13T18:00:00+01:00")
        .session("g1", "s3", "2026-01-20T18:00:00+01:00")
        .session("g1", "s4", "2026-01-27T18:00:00+01:00");
    log.mark("g1", "s1", "c1", AttendanceStatus::Present).mark(
        "g1",
        "s1",
        "c2",
        AttendanceStatus::Late,
    );
    log.group(
        "g1",
        GroupEvent::SessionCancelled {
            session_id: "s2".into(),
            reason: "snow".into(),
        },
    );
    log.mark("g1", "s3", "c1", AttendanceStatus::Present).mark(
        "g1",
        "s3",
        "c2",
        AttendanceStatus::Excused,
    );
    // c3 has no mark for s3: a no-show.
    log.mark("g1", "s4", "c1", AttendanceStatus::LeftEarly)
        .mark("g1", "s4", "c2", AttendanceStatus::NoShow)
        .mark("g1", "s4", "c3", AttendanceStatus::Present);
    log
}

#[test]
fn attendance_counts_held_sessions_and_unmarked_members_as_no_shows() {
    let log = attendance_log();
    let report = reports::attendance(&log.practice, "g1", now()).unwrap();
    assert_eq!(report.sessions_held, 3);
    let ids: Vec<_> = report
        .by_session
        .iter()
        .map(|s| s.session_id.as_str())
        .collect();
    assert_eq!(ids, vec!["s1", "s3", "s4"]);
    let s3 = &report.by_session[1];
    assert_eq!(
        (s3.counts.present, s3.counts.excused, s3.counts.no_show),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(s3.attendance_rate, Some(0.333333));
    let by_client = report.by_client.unwrap();
    let c2 = by_client.iter().find(|c| c.client_id == "c2").unwrap();
    assert_eq!(
        (c2.sessions, c2.attended, c2.consecutive_absences),
        (3, 1, 2)
    );
    let c3 = by_client.iter().find(|c| c.client_id == "c3").unwrap();
    assert_eq!(
        (c3.sessions, c3.attended, c3.consecutive_absences),
        (2, 1, 0)
    );
    // 1+1 (s1) + 1 (s3) + 2 (s4) attended of 2 + 3 + 3 expected.
    assert_eq!(report.attendance_rate, Some(0.625));
}

#[test]
fn two_consecutive_absences_raise_one_attendance_alert() {
    let log = attendance_log();
    let alerts = reports::alerts(&log.practice, Some("g1"));
    let attendance: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Attendance)
        .collect();
    assert_eq!(attendance.len(), 1, "{alerts:?}");
    assert_eq!(attendance[0].client_id, "c2");
}

#[test]
fn outcomes_classify_each_member_and_summarize_the_group() {
    let mut log = Log::new();
    log.created("g1", Focus::Anxiety);
    for (client, first, last) in [("c1", 15, 8), ("c2", 12, 7), ("c3", 8, 14), ("c4", 20, 13)] {
        log.measure(
            "g1",
            client,
            "PHQ-9",
            phq9(first, 0),
            "2026-01-06T18:00:00Z",
        );
        log.measure("g1", client, "PHQ-9", phq9(last, 0), "2026-03-06T18:00:00Z");
    }
    log.measure("g1", "c5", "PHQ-9", phq9(11, 0), "2026-01-06T18:00:00Z");
    let report = reports::outcomes(&log.practice, "g1", "PHQ-9", now()).unwrap();
    let classes: Vec<_> = report
        .clients
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.client_id.as_str(), c.classification))
        .collect();
    assert_eq!(
        classes,
        vec![
            ("c1", Classification::Recovered),
            ("c2", Classification::Unchanged),
            ("c3", Classification::Deteriorated),
            ("c4", Classification::Improved),
            ("c5", Classification::InsufficientData),
        ]
    );
    let c1 = &report.clients.as_ref().unwrap()[0];
    assert_eq!(
        (c1.baseline, c1.latest, c1.change),
        (Score::whole(15), Score::whole(8), Score::whole(7))
    );
    let s = &report.summary;
    assert_eq!(s.clients_with_two_or_more, Some(4));
    assert_eq!(
        (s.recovered, s.improved, s.unchanged, s.deteriorated),
        (Some(1), Some(1), Some(1), Some(1))
    );
    assert_eq!(s.mean_change, Some(3.25)); // (7 + 5 - 6 + 7) / 4
    assert_eq!(s.share_reliably_improved, Some(0.5));
    assert!(s.effect_size.is_some());

    let reporter = report.clone().for_reporters(4);
    assert!(reporter.clients.is_none());
    assert_eq!(reporter.summary.recovered, None);
    assert_eq!(
        reporter.summary.mean_change,
        Some(3.25),
        "from 4 people, k = 4"
    );
    let reporter = report.for_reporters(5);
    assert_eq!(reporter.summary.mean_change, None, "from 4 people, k = 5");
    assert_eq!(reporter.summary.effect_size, None);
}

#[test]
fn risk_is_raised_on_the_event_that_carries_it_regardless_of_total() {
    let mut log = Log::new();
    log.created("g1", Focus::Grief);
    log.measure("g1", "c1", "PHQ-9", phq9(0, 1), "2026-01-06T18:00:00Z");
    let alerts = reports::alerts(&log.practice, None);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertKind::Risk);
    assert_eq!(alerts[0].position, log.position);
    assert_eq!(alerts[0].detail, "PHQ-9 item 9 scored 1");
}

#[test]
fn alliance_and_deterioration_alerts() {
    let mut log = Log::new();
    log.created("g1", Focus::Trauma);
    let srs = |v: i64| vec![Score::from_tenths(v); 4];
    log.measure("g1", "c1", "SRS", srs(95), "2026-01-06T18:00:00Z"); // 38: fine
    log.measure("g1", "c1", "SRS", srs(93), "2026-01-13T18:00:00Z"); // 37.2: a drop
    log.measure("g1", "c1", "SRS", srs(80), "2026-01-20T18:00:00Z"); // 32: below 36
    log.measure("g1", "c1", "ORS", srs(60), "2026-01-06T18:00:00Z"); // 24
    log.measure("g1", "c1", "ORS", srs(45), "2026-01-13T18:00:00Z"); // 18: reliably worse
    log.measure("g1", "c1", "ORS", srs(40), "2026-01-20T18:00:00Z"); // still worse: no repeat
    let kinds: Vec<_> = reports::alerts(&log.practice, Some("g1"))
        .iter()
        .map(|a| (a.kind, a.detail.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (
                AlertKind::Alliance,
                "SRS total fell from 38 to 37.2".to_string()
            ),
            (AlertKind::Alliance, "SRS total 32 is below 36".to_string()),
            (
                AlertKind::Deterioration,
                "ORS went from 24 to 18: reliable deterioration".to_string()
            ),
        ]
    );
}

#[test]
fn the_same_events_give_byte_identical_reports_and_replays_do_not_double_count() {
    let first = attendance_log();
    let second = attendance_log();
    let json = |log: &Log| {
        serde_json::to_string(&reports::attendance(&log.practice, "g1", now())).unwrap()
            + &serde_json::to_string(&reports::retention(
                &log.practice,
                &RetentionScope::Practice,
                now(),
            ))
            .unwrap()
    };
    assert_eq!(json(&first), json(&second));
    // Replaying an already-applied event changes nothing.
    let mut replayed = attendance_log();
    replayed.practice.apply(&Fact {
        position: 5,
        recorded_at: now(),
        aggregate_id: "g1".into(),
        event: AnyEvent::Group(GroupEvent::MemberJoined {
            client_id: "c9".into(),
            joined_on: date("2026-01-01"),
        }),
    });
    assert_eq!(replayed.practice, first.practice);
    // And the state survives persistence exactly.
    let stored = serde_json::to_string(&first.practice).unwrap();
    let restored: Practice = serde_json::from_str(&stored).unwrap();
    assert_eq!(restored, first.practice);
}

#[test]
fn the_reporter_form_drops_member_rows_and_small_counts() {
    let log = attendance_log();
    let report = reports::attendance(&log.practice, "g1", now())
        .unwrap()
        .for_reporters(5);
    assert!(report.by_client.is_none());
    assert!(report.by_session.iter().all(|s| s.counts.present.is_none()));
    let json = serde_json::to_value(&report).unwrap();
    assert!(json.get("by_client").is_none());
    assert_eq!(json["by_session"][0]["present"], serde_json::Value::Null);
    let retention =
        reports::retention(&log.practice, &RetentionScope::Practice, now()).for_reporters(2);
    assert_eq!(retention.joined, Some(3));
    assert_eq!(retention.dropped_out, None);
}

/// The GAS vectors, `testdata/gas_vectors.json` (loaded here, at the crate's depth,
/// for the goals tests).
fn gas_vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("../../testdata/gas_vectors.json")).expect("parses")
}

mod consent;
mod exports;
mod goals;
mod reporter;

#[test]
fn the_practice_records_the_latest_recording_time_not_the_last() {
    let mut practice = Practice::new(AlertRules::default());
    assert_eq!(practice.max_recorded_at, None);
    for (position, minutes) in [(1, 10), (2, 5), (3, 7)] {
        practice.apply(&Fact {
            position,
            recorded_at: now() + Duration::minutes(minutes),
            aggregate_id: "g1".into(),
            event: AnyEvent::Group(GroupEvent::MemberJoined {
                client_id: format!("c{position}"),
                joined_on: date("2026-01-01"),
            }),
        });
    }
    // Positions follow commit order, recording times the clock before commit.
    assert_eq!(
        practice.max_recorded_at,
        Some(now() + Duration::minutes(10))
    );
}

#[test]
fn a_recorded_score_is_stored_as_numbers_and_reads_back_the_same() {
    let score = crate::practice::RecordedScore {
        administered_at: at("2024-01-02T18:00:00.25+01:00"),
        total: Score::from_tenths(196),
        reference_version: "2024.1".into(),
    };
    let stored = serde_json::to_value(&score).unwrap();
    assert_eq!(
        stored,
        serde_json::json!([1704214800, 250_000_000, 3600, 19.6, "2024.1"])
    );
    let back: crate::practice::RecordedScore = serde_json::from_value(stored).unwrap();
    assert_eq!(back, score);
    assert_eq!(
        back.administered_at.to_rfc3339(),
        "2024-01-02T18:00:00.250+01:00"
    );
}

#[test]
fn session_and_alert_times_are_stored_as_numbers_and_read_back_the_same() {
    let log = attendance_log();
    let stored = serde_json::to_value(&log.practice).unwrap();
    let session = stored["groups"]["g1"]["sessions"]
        .as_object()
        .and_then(|sessions| sessions.values().next())
        .unwrap();
    assert!(
        session["starts_at"]
            .as_array()
            .is_some_and(|a| a.len() == 3),
        "{session}"
    );
    let alert = &stored["alerts"][0];
    assert_eq!(
        alert["raised_at"],
        serde_json::json!([now().timestamp(), 0])
    );
    let back: Practice = serde_json::from_value(stored).unwrap();
    assert_eq!(back, log.practice);
}

#[test]
fn reporting_consent_is_given_until_withdrawn_and_research_absent_until_granted() {
    use circle_events::client::{ClientEvent, ConsentScope};
    fn client(log: &mut Log, event: ClientEvent) {
        log.position += 1;
        log.practice.apply(&Fact {
            position: log.position,
            recorded_at: now(),
            aggregate_id: "c1".into(),
            event: AnyEvent::Client(event),
        });
    }
    let mut log = Log::new();
    assert!(log.practice.has_consent("c1", ConsentScope::Reporting));
    assert!(!log.practice.has_consent("c1", ConsentScope::Research));

    let reporting = ConsentScope::Reporting;
    client(&mut log, ClientEvent::ConsentWithdrawn { scope: reporting });
    let research = ConsentScope::Research;
    client(&mut log, ClientEvent::ConsentGranted { scope: research });
    assert!(!log.practice.has_consent("c1", ConsentScope::Reporting));
    assert!(log.practice.has_consent("c1", ConsentScope::Research));

    client(&mut log, ClientEvent::ConsentWithdrawn { scope: research });
    assert!(!log.practice.has_consent("c1", ConsentScope::Research));
    // The decisions survive the checkpoint's round trip.
    let back: Practice =
        serde_json::from_value(serde_json::to_value(&log.practice).unwrap()).unwrap();
    assert_eq!(back, log.practice);
}

#[test]
fn the_caseload_puts_risk_first_until_reviewed_then_deterioration_alliance_absences() {
    use crate::caseload::{NeedKind, Triage};
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    for client in ["a-risk", "b-worse", "c-alliance", "d-absent", "e-fine"] {
        log.joined("g1", client, "2026-01-01");
    }
    log.measure("g1", "a-risk", "PHQ-9", phq9(6, 1), "2026-01-06T18:00:00Z");
    log.measure("g1", "b-worse", "PHQ-9", phq9(5, 0), "2026-01-06T18:00:00Z");
    log.measure(
        "g1",
        "b-worse",
        "PHQ-9",
        phq9(14, 0),
        "2026-01-13T18:00:00Z",
    );
    let srs = |v: i64| vec![Score::from_tenths(v); 4];
    log.measure("g1", "c-alliance", "SRS", srs(95), "2026-01-06T18:00:00Z");
    log.measure("g1", "c-alliance", "SRS", srs(93), "2026-01-13T18:00:00Z");
    for (session, day) in [("s1", "2026-01-06"), ("s2", "2026-01-13")] {
        log.session("g1", session, &format!("{day}T18:00:00Z"));
        for client in ["a-risk", "b-worse", "c-alliance", "e-fine"] {
            log.mark("g1", session, client, AttendanceStatus::Present);
        }
        log.mark("g1", session, "d-absent", AttendanceStatus::NoShow);
    }
    let today = date("2026-01-20");
    let order = |log: &Log| -> Vec<(String, Option<NeedKind>)> {
        Triage::new(&log.practice)
            .group("g1", today)
            .unwrap()
            .into_iter()
            .map(|row| (row.client_id, row.need.map(|n| n.kind)))
            .collect()
    };
    let expected = |first: Option<NeedKind>| {
        let mut rows = vec![
            ("b-worse".to_string(), Some(NeedKind::Deterioration)),
            ("c-alliance".to_string(), Some(NeedKind::Alliance)),
            ("d-absent".to_string(), Some(NeedKind::Absences)),
            ("e-fine".to_string(), None),
        ];
        match first {
            Some(kind) => rows.insert(0, ("a-risk".to_string(), Some(kind))),
            None => rows.insert(3, ("a-risk".to_string(), None)),
        }
        rows
    };
    assert_eq!(order(&log), expected(Some(NeedKind::Risk)));
    let risk = Triage::new(&log.practice).group("g1", today).unwrap()[0].clone();
    let need = risk.need.unwrap();
    assert_eq!(need.detail, "PHQ-9 item 9 scored 1; not yet reviewed");
    // When the questionnaire was taken, not when it was recorded.
    assert_eq!(need.at, at("2026-01-06T18:00:00Z").to_utc());

    // When a clinician reviews it, it leaves the top; a new risk item brings it back.
    log.group(
        "g1",
        GroupEvent::RiskReviewed {
            client_id: "a-risk".into(),
        },
    );
    assert_eq!(order(&log), expected(None));
    log.measure("g1", "a-risk", "PHQ-9", phq9(6, 2), "2026-01-14T18:00:00Z");
    assert_eq!(order(&log), expected(Some(NeedKind::Risk)));

    // A departure does not clear an unreviewed risk item; other former members leave.
    log.left(
        "g1",
        "a-risk",
        date("2026-01-15"),
        DepartureReason::DroppedOut,
    );
    log.left(
        "g1",
        "e-fine",
        date("2026-01-15"),
        DepartureReason::Completed,
    );
    let rows = order(&log);
    assert_eq!(rows[0], ("a-risk".to_string(), Some(NeedKind::Risk)));
    assert!(!rows.iter().any(|(id, _)| id == "e-fine"));
}

#[test]
fn a_member_keeps_the_first_and_latest_items_per_instrument_in_time_order() {
    use crate::practice::LATEST_ITEM_SCORES;
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    log.joined("g1", "c1", "2026-01-01");
    // Eight weekly PHQ-9s, the second one back-filled last.
    for week in [1, 3, 4, 5, 6, 7, 8, 2] {
        let when = format!("2026-01-{:02}T18:00:00Z", week * 3);
        log.measure("g1", "c1", "PHQ-9", phq9(week, 0), &when);
    }
    log.measure(
        "g1",
        "c2",
        "GAD-7",
        vec![Score::whole(1); 7],
        "2026-01-05T18:00:00Z",
    );

    let group = &log.practice.groups["g1"];
    let history = group.item_history("PHQ-9", "c1").unwrap();
    let first = history.first.as_ref().unwrap();
    assert_eq!(first.administered_at, at("2026-01-03T18:00:00Z"));
    assert_eq!(first.items, phq9(1, 0));
    let latest: Vec<_> = history
        .latest
        .iter()
        .map(|s| s.administered_at.format("%d").to_string())
        .collect();
    assert_eq!(latest.len(), LATEST_ITEM_SCORES);
    assert_eq!(latest, ["09", "12", "15", "18", "21", "24"]);
    assert_eq!(history.latest.last().unwrap().items, phq9(8, 0));
    // Never another member's items.
    assert!(group.item_history("PHQ-9", "c2").is_none());
    assert!(group.item_history("GAD-7", "c2").is_some());
}

#[test]
fn a_member_in_two_groups_has_one_item_history() {
    use crate::practice::ItemHistory;
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    log.created("g2", Focus::Anxiety);
    log.measure("g1", "c1", "PHQ-9", phq9(9, 0), "2026-01-06T18:00:00Z");
    log.measure("g2", "c1", "PHQ-9", phq9(4, 0), "2026-02-06T18:00:00Z");
    let groups = &log.practice.groups;
    let merged =
        ItemHistory::merged(["g1", "g2"].map(|g| groups[g].item_history("PHQ-9", "c1").unwrap()));
    assert_eq!(merged.first.unwrap().items, phq9(9, 0));
    assert_eq!(merged.latest.len(), 2);
    assert_eq!(merged.latest[1].items, phq9(4, 0));
}

#[test]
fn a_corrected_mark_keeps_what_it_replaced() {
    let mut log = attendance_log();
    let session = log.practice.groups["g1"].held_sessions()[0].0.clone();
    let client = log.practice.groups["g1"].sessions[&session]
        .marks
        .keys()
        .next()
        .unwrap()
        .clone();
    let was = log.practice.groups["g1"].sessions[&session].marks[&client];
    log.group(
        "g1",
        GroupEvent::AttendanceCorrected {
            session_id: session.clone(),
            client_id: client.clone(),
            status: AttendanceStatus::Excused,
            previous_status: was,
            corrects_sequence: 3,
        },
    );
    let record = &log.practice.groups["g1"].sessions[&session];
    assert_eq!(record.marks[&client], AttendanceStatus::Excused);
    assert_eq!(record.corrected[&client], vec![was]);
    let stored = serde_json::to_value(&log.practice).unwrap();
    let back: Practice = serde_json::from_value(stored).unwrap();
    assert_eq!(back, log.practice);
}

#[test]
fn an_alert_says_when_its_event_happened_not_only_when_it_was_recorded() {
    let mut log = Log::new();
    log.created("g1", Focus::Depression);
    log.measure("g1", "c1", "PHQ-9", phq9(6, 1), "2026-01-06T18:00:00+01:00");
    let alert = &log.practice.alerts[0];
    assert_eq!(alert.kind, AlertKind::Risk);
    assert_eq!(alert.raised_at, now());
    assert_eq!(alert.occurred_at, at("2026-01-06T18:00:00+01:00"));
}

#[test]
fn the_alliance_rule_flags_a_total_below_the_cutoff_or_else_a_fall() {
    use crate::practice::{alliance_concern, AllianceConcern};
    use circle_events::instruments::Catalogue;
    let catalogue = Catalogue::builtin();
    let srs = catalogue.current("SRS").unwrap();
    let phq9 = catalogue.current("PHQ-9").unwrap();
    let s = Score::from_tenths;
    assert_eq!(alliance_concern(srs, None, s(380)), None);
    assert_eq!(alliance_concern(srs, Some(s(370)), s(380)), None);
    assert_eq!(
        alliance_concern(srs, Some(s(380)), s(372)),
        Some(AllianceConcern::Fell {
            from: s(380),
            to: s(372)
        })
    );
    assert_eq!(
        alliance_concern(srs, Some(s(380)), s(320)),
        Some(AllianceConcern::BelowCutoff {
            total: s(320),
            cutoff: s(360)
        })
    );
    // Not an alliance scale: never an alliance concern.
    assert_eq!(alliance_concern(phq9, Some(s(100)), s(50)), None);
}

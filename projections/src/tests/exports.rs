//! Exports: the reports' rows as CSV and NDJSON, the reporter form, consent.

use std::borrow::Cow;
use std::sync::Arc;

use circle_events::client::{ClientEvent, ConsentScope};
use serde_json::Value;

use super::*;
use crate::exports::{
    self, columns, csv_header, csv_record, csv_row, ndjson_header, ndjson_row, Export, ExportKind,
    ExportRequest, Form, Purpose, Scope,
};

const K: u32 = 5;

fn consent(log: &mut Log, client: &str, event: ClientEvent) {
    log.position += 1;
    log.practice.apply(&Fact {
        position: log.position,
        recorded_at: now(),
        aggregate_id: client.into(),
        event: AnyEvent::Client(event),
    });
}

/// Group `g1` (anxiety) of `n` members `c0…`, each with two PHQ-9 scores (20 → 8) and
/// present at one session; `g2` (grief) with one member.
fn practice(n: usize) -> Log {
    let mut log = Log::new();
    log.created("g1", Focus::Anxiety);
    log.created("g2", Focus::Grief);
    log.session("g1", "s1", "2026-02-03T18:00:00+00:00");
    for i in 0..n {
        let client = format!("c{i}");
        log.joined("g1", &client, "2026-01-05");
        log.measure(
            "g1",
            &client,
            "PHQ-9",
            phq9(20, 0),
            "2026-01-06T10:00:00+00:00",
        );
        log.measure(
            "g1",
            &client,
            "PHQ-9",
            phq9(8, 0),
            "2026-03-01T10:00:00+00:00",
        );
        log.mark("g1", "s1", &client, AttendanceStatus::Present);
    }
    log.joined("g2", "solo", "2026-01-05");
    log
}

fn request(kind: ExportKind, form: Form, scope: Scope) -> ExportRequest {
    ExportRequest {
        kind,
        form,
        purpose: Purpose::Operations,
        scope,
        as_of: now(),
        k: K,
    }
}

/// An export with its rows read out, as a client reads them.
struct Read {
    export: Export,
    rows: Vec<Vec<Value>>,
}

impl std::ops::Deref for Read {
    type Target = Export;

    fn deref(&self) -> &Export {
        &self.export
    }
}

fn run(log: &Log, request: &ExportRequest) -> Read {
    let export =
        exports::export(Arc::new(log.practice.clone()), request).expect("the group exists");
    let rows: Vec<Vec<Value>> = export.rows().collect();
    assert_eq!(
        rows.len(),
        export.row_count,
        "the header's count is the rows'"
    );
    Read { export, rows }
}

fn csv(export: &Read) -> String {
    let mut out = Vec::new();
    csv_header(export.columns, &mut out);
    for row in &export.rows {
        csv_row(row, &mut out);
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn the_columns_are_a_pinned_contract() {
    // A rename or reorder here is a new FORMAT_VERSION and a note for every consumer.
    assert_eq!(exports::FORMAT_VERSION, 1);
    let pinned: [(ExportKind, Form, &str); 8] = [
        (ExportKind::Outcomes, Form::Full, "group_id,client_id,instrument,reference_version,n_scores,baseline,latest,change,classification"),
        (ExportKind::Outcomes, Form::Reporter, "group_id,instrument,reference_version,clients_with_two_or_more,recovered,improved,unchanged,deteriorated,share_reliably_improved,mean_change,effect_size"),
        (ExportKind::Attendance, Form::Full, "group_id,client_id,sessions,attended,attendance_rate,consecutive_absences"),
        (ExportKind::Attendance, Form::Reporter, "group_id,session_id,starts_at,present,late,left_early,excused,no_show,attendance_rate"),
        (ExportKind::Retention, Form::Full, "group_id,focus,joined,active,completed,dropped_out,other_exits,dropout_rate,median_days,survival_28,survival_56,survival_84"),
        (ExportKind::Retention, Form::Reporter, "group_id,focus,joined,active,completed,dropped_out,other_exits,dropout_rate,median_days,survival_28,survival_56,survival_84"),
        (ExportKind::Alerts, Form::Full, "group_id,client_id,kind,raised_at,position,detail"),
        (ExportKind::Alerts, Form::Reporter, "group_id,kind,count"),
    ];
    for (kind, form, header) in pinned {
        assert_eq!(columns(kind, form).join(","), header, "{kind:?} {form:?}");
    }
}

#[test]
fn csv_quotes_commas_quotes_and_line_breaks_and_ends_records_with_crlf() {
    let mut out = Vec::new();
    let fields = ["plain", "a,b", "say \"hi\"", "two\nlines", "cr\rhere", ""];
    csv_record(fields.iter().map(|f| Cow::Borrowed(*f)), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\rhere\",\r\n"
    );
}

#[test]
fn outcomes_give_one_row_per_member_and_instrument_with_the_reports_figures() {
    let log = practice(2);
    let export = run(
        &log,
        &request(ExportKind::Outcomes, Form::Full, Scope::Group("g1".into())),
    );
    assert_eq!(
        csv(&export),
        "group_id,client_id,instrument,reference_version,n_scores,baseline,latest,change,classification\r\n\
         g1,c0,PHQ-9,2024.1,2,20,8,12,recovered\r\n\
         g1,c1,PHQ-9,2024.1,2,20,8,12,recovered\r\n"
    );
    assert_eq!(export.client_ids, ["c0", "c1"]);
    assert_eq!(export.left_out, 0);
    // The same figures as the outcomes report.
    let report = reports::outcomes(&log.practice, "g1", "PHQ-9", now()).unwrap();
    let first = &report.clients.unwrap()[0];
    assert_eq!(export.rows[0][5], serde_json::json!(first.baseline));
    assert_eq!(export.rows[0][7], serde_json::json!(first.change));
}

#[test]
fn the_reporter_form_has_no_member_rows_and_empties_what_fewer_than_k_people_give() {
    let small = practice(3);
    let export = run(
        &small,
        &request(
            ExportKind::Outcomes,
            Form::Reporter,
            Scope::Group("g1".into()),
        ),
    );
    assert_eq!(
        csv(&export),
        "group_id,instrument,reference_version,clients_with_two_or_more,recovered,improved,unchanged,deteriorated,share_reliably_improved,mean_change,effect_size\r\n\
         g1,PHQ-9,2024.1,,,,,,,,\r\n"
    );
    assert!(export.client_ids.is_empty());
    let big = practice(6);
    let export = run(
        &big,
        &request(
            ExportKind::Outcomes,
            Form::Reporter,
            Scope::Group("g1".into()),
        ),
    );
    assert_eq!(export.rows[0][3], serde_json::json!(6));
    assert_eq!(export.rows[0][4], serde_json::json!(6));
    // Attendance: session rows only, small counts empty.
    let export = run(
        &small,
        &request(
            ExportKind::Attendance,
            Form::Reporter,
            Scope::Group("g1".into()),
        ),
    );
    assert_eq!(
        csv(&export),
        "group_id,session_id,starts_at,present,late,left_early,excused,no_show,attendance_rate\r\n\
         g1,s1,2026-02-03T18:00:00Z,,,,,,\r\n"
    );
}

#[test]
fn a_scope_of_the_practice_or_a_focus_covers_its_groups_and_an_unknown_group_is_none() {
    let log = practice(2);
    let all = run(
        &log,
        &request(ExportKind::Retention, Form::Full, Scope::Practice),
    );
    let groups: Vec<&str> = all.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(groups, ["g1", "g2"]);
    assert_eq!(all.rows[1][1], "grief");
    let grief = run(
        &log,
        &request(
            ExportKind::Retention,
            Form::Full,
            Scope::Focus(Focus::Grief),
        ),
    );
    assert_eq!(grief.rows.len(), 1);
    assert_eq!(grief.scope, "focus:grief");
    let unknown = request(ExportKind::Alerts, Form::Full, Scope::Group("nope".into()));
    assert!(exports::export(Arc::new(log.practice.clone()), &unknown).is_none());
}

#[test]
fn research_exports_hold_only_clients_who_granted_research_and_say_how_many_are_left_out() {
    let mut log = practice(3);
    consent(
        &mut log,
        "c1",
        ClientEvent::ConsentGranted {
            scope: ConsentScope::Research,
        },
    );
    let mut research = request(ExportKind::Outcomes, Form::Full, Scope::Group("g1".into()));
    research.purpose = Purpose::Research;
    let export = run(&log, &research);
    assert_eq!(export.client_ids, ["c1"]);
    assert_eq!(export.rows.len(), 1);
    assert_eq!(export.left_out, 2);
}

#[test]
fn the_reporter_form_leaves_out_who_withdrew_reporting_consent_and_the_full_form_does_not() {
    let mut log = practice(6);
    let withdrawn = ClientEvent::ConsentWithdrawn {
        scope: ConsentScope::Reporting,
    };
    consent(&mut log, "c0", withdrawn);
    let reporter = run(
        &log,
        &request(
            ExportKind::Outcomes,
            Form::Reporter,
            Scope::Group("g1".into()),
        ),
    );
    assert_eq!(reporter.left_out, 1);
    // Five left: still k, so shown, and computed without c0.
    assert_eq!(reporter.rows[0][3], serde_json::json!(5));
    let full = run(
        &log,
        &request(ExportKind::Outcomes, Form::Full, Scope::Group("g1".into())),
    );
    assert_eq!(full.left_out, 0);
    assert_eq!(full.rows.len(), 6);
    // The reports themselves are untouched.
    assert!(log.practice.groups["g1"].members.contains_key("c0"));
}

#[test]
fn ndjson_has_a_header_line_then_one_object_per_row_with_keys_in_column_order() {
    let mut log = practice(1);
    consent(
        &mut log,
        "c0",
        ClientEvent::ConsentGranted {
            scope: ConsentScope::Research,
        },
    );
    let mut research = request(ExportKind::Attendance, Form::Full, Scope::Practice);
    research.purpose = Purpose::Research;
    let export = run(&log, &research);
    let mut out = Vec::new();
    ndjson_header(&export, &mut out);
    for row in &export.rows {
        ndjson_row(export.columns, row, &mut out);
    }
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "{{\"export\":{{\"export\":\"attendance\",\"format_version\":1,\"form\":\"full\",\
             \"purpose\":\"research\",\"scope\":\"practice\",\"as_of\":\"2026-06-01T12:00:00Z\",\
             \"position\":{},\"left_out\":1,\"rows\":1,\"columns\":[\"group_id\",\"client_id\",\
             \"sessions\",\"attended\",\"attendance_rate\",\"consecutive_absences\"]}}}}",
            log.position
        )
    );
    assert_eq!(
        lines[1],
        "{\"group_id\":\"g1\",\"client_id\":\"c0\",\"sessions\":1,\"attended\":1,\
         \"attendance_rate\":1.0,\"consecutive_absences\":0}"
    );
    assert_eq!(lines.len(), 2);
}

#[test]
fn alerts_name_members_in_the_full_form_and_are_counts_by_kind_for_reporters() {
    let mut log = practice(1);
    log.session("g1", "s2", "2026-02-10T18:00:00+00:00");
    log.session("g1", "s3", "2026-02-17T18:00:00+00:00");
    log.mark("g1", "s2", "c0", AttendanceStatus::NoShow);
    log.mark("g1", "s3", "c0", AttendanceStatus::NoShow);
    let full = run(
        &log,
        &request(ExportKind::Alerts, Form::Full, Scope::Group("g1".into())),
    );
    assert_eq!(full.rows.len(), 1);
    assert_eq!(full.rows[0][1], "c0");
    assert_eq!(full.rows[0][2], "attendance");
    assert_eq!(full.client_ids, ["c0"]);
    let reporter = run(
        &log,
        &request(
            ExportKind::Alerts,
            Form::Reporter,
            Scope::Group("g1".into()),
        ),
    );
    assert_eq!(
        csv(&reporter),
        "group_id,kind,count\r\ng1,attendance,\r\ng1,alliance,\r\ng1,deterioration,\r\ng1,risk,\r\ng1,stalled_goal,\r\n"
    );
}

#[test]
fn leaving_out_the_only_member_marked_keeps_the_session_held_for_the_others() {
    let mut log = practice(2);
    log.session("g1", "s2", "2026-02-10T18:00:00+00:00");
    log.mark("g1", "s2", "c0", AttendanceStatus::Present);
    consent(
        &mut log,
        "c1",
        ClientEvent::ConsentGranted {
            scope: ConsentScope::Research,
        },
    );
    let mut research = request(
        ExportKind::Attendance,
        Form::Full,
        Scope::Group("g1".into()),
    );
    research.purpose = Purpose::Research;
    let export = run(&log, &research);
    // c1: present at s1, unmarked (a no-show) at s2, which c0's mark made held.
    assert_eq!(export.rows.len(), 1);
    assert_eq!(export.rows[0][1], "c1");
    assert_eq!(export.rows[0][2], serde_json::json!(2));
    assert_eq!(export.rows[0][3], serde_json::json!(1));
}

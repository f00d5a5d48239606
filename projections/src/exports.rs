//! Exports for reporting teams: the rows of the reports (`reports`) as one table,
//! encoded as RFC 4180 CSV or as NDJSON. Pure: the services crate streams the bytes.
//!
//! Each export has a full form (one row per member where the report has member rows:
//! client ids are disclosed) and a reporter form (no member rows; every count or value
//! from fewer than k people empty, by [`shown_to_reporters`] through the reports'
//! [`ReporterForm`]). The column names are a contract ([`FORMAT_VERSION`], pinned by
//! `tests/exports.rs`): a renamed or reordered column is a new version.
//!
//! Consent decides who is in the rows: a research export holds only clients who
//! granted `research`; a reporter-form export leaves out clients who withdrew
//! `reporting`. How many were left out is stated ([`Export::left_out`]), never who.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use circle_events::client::ConsentScope;
use circle_events::instruments::Catalogue;
use serde::Serialize;
use serde_json::Value;

use crate::consent;
use crate::practice::{Alert, Practice};
use crate::reports::{self, ReporterForm, RetentionScope};

#[cfg(doc)]
use crate::reports::shown_to_reporters;

/// The version of the exports' columns and NDJSON header line.
pub const FORMAT_VERSION: u32 = 1;

/// Which report's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportKind {
    Outcomes,
    Attendance,
    Retention,
    Alerts,
}

impl ExportKind {
    pub const ALL: [ExportKind; 4] = [
        ExportKind::Outcomes,
        ExportKind::Attendance,
        ExportKind::Retention,
        ExportKind::Alerts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExportKind::Outcomes => "outcomes",
            ExportKind::Attendance => "attendance",
            ExportKind::Retention => "retention",
            ExportKind::Alerts => "alerts",
        }
    }

    /// What one row is, in each form (for the API description).
    pub fn row_meaning(self, form: Form) -> &'static str {
        match (self, form) {
            (ExportKind::Outcomes, Form::Full) => {
                "one row per member x instrument in a group (an episode)"
            }
            (ExportKind::Outcomes, Form::Reporter) => "one row per group x instrument",
            (ExportKind::Attendance, Form::Full) => "one row per member of a group",
            (ExportKind::Attendance, Form::Reporter) => "one row per held session",
            (ExportKind::Retention, _) => "one row per group",
            (ExportKind::Alerts, Form::Full) => "one row per alert",
            (ExportKind::Alerts, Form::Reporter) => "one row per group x alert kind",
        }
    }
}

/// Who sees what: the full form, or the reporter form (aggregates only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    Full,
    Reporter,
}

/// Why the export is made; research narrows it to clients who consented to research.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Care and the practice's own operations (the default).
    Operations,
    Research,
}

/// Which groups the rows come from: the reports' own scope.
pub use crate::reports::RetentionScope as Scope;

/// One export asked for.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub kind: ExportKind,
    pub form: Form,
    pub purpose: Purpose,
    pub scope: Scope,
    pub as_of: DateTime<Utc>,
    /// The reporter form's k.
    pub k: u32,
}

/// An export ready to stream: what its header line and the access log need, computed
/// first, and its rows, computed again a part at a time (a group, or
/// [`ALERTS_PER_PART`] alerts) from a snapshot of the practice as they are read, so
/// that they are never all held at once.
#[derive(Clone, Debug)]
pub struct Export {
    pub kind: ExportKind,
    pub form: Form,
    pub purpose: Purpose,
    pub scope: String,
    pub as_of: DateTime<Utc>,
    pub position: i64,
    pub columns: &'static [&'static str],
    /// How many rows [`Export::rows`] yields.
    pub row_count: usize,
    /// Distinct clients in scope whose data consent kept out of the rows.
    pub left_out: u32,
    /// Distinct clients named in the rows (sorted): what the access log records.
    pub client_ids: Vec<String>,
    source: Source,
}

impl Export {
    /// Each row's values in column order (`null` is an empty CSV field), computed a
    /// part at a time as the iterator is advanced.
    pub fn rows(&self) -> impl Iterator<Item = Vec<Value>> + Send + 'static {
        let source = self.source.clone();
        (0..source.parts()).flat_map(move |part| source.part(part))
    }
}

/// Alerts of the full alerts export computed at a time.
pub const ALERTS_PER_PART: usize = 1024;

/// What an export's rows are computed from: the practice with consent applied, and
/// the groups in scope, in id order.
#[derive(Clone, Debug)]
struct Source {
    practice: Arc<Practice>,
    request: ExportRequest,
    in_scope: Arc<[String]>,
}

impl Source {
    fn parts(&self) -> usize {
        match (self.request.kind, self.request.form) {
            // In the log's order, as the alerts report lists them.
            (ExportKind::Alerts, Form::Full) => {
                self.practice.alerts.len().div_ceil(ALERTS_PER_PART)
            }
            _ => self.in_scope.len(),
        }
    }

    fn part(&self, part: usize) -> Vec<Vec<Value>> {
        let (practice, request) = (&*self.practice, &self.request);
        if let (ExportKind::Alerts, Form::Full) = (request.kind, request.form) {
            let start = (part * ALERTS_PER_PART).min(practice.alerts.len());
            let end = (start + ALERTS_PER_PART).min(practice.alerts.len());
            return alert_rows(&practice.alerts[start..end], &self.in_scope);
        }
        let Some(group_id) = self.in_scope.get(part) else {
            return Vec::new();
        };
        match request.kind {
            ExportKind::Outcomes => outcome_rows(practice, group_id, request),
            ExportKind::Attendance => attendance_rows(practice, group_id, request),
            ExportKind::Retention => retention_rows(practice, group_id, request),
            ExportKind::Alerts => alert_count_rows(practice, group_id, request),
        }
    }
}

/// The columns of each export and form, in order: the stable contract.
pub fn columns(kind: ExportKind, form: Form) -> &'static [&'static str] {
    match (kind, form) {
        (ExportKind::Outcomes, Form::Full) => &[
            "group_id",
            "client_id",
            "instrument",
            "reference_version",
            "n_scores",
            "baseline",
            "latest",
            "change",
            "classification",
        ],
        (ExportKind::Outcomes, Form::Reporter) => &[
            "group_id",
            "instrument",
            "reference_version",
            "clients_with_two_or_more",
            "recovered",
            "improved",
            "unchanged",
            "deteriorated",
            "share_reliably_improved",
            "mean_change",
            "effect_size",
        ],
        (ExportKind::Attendance, Form::Full) => &[
            "group_id",
            "client_id",
            "sessions",
            "attended",
            "attendance_rate",
            "consecutive_absences",
        ],
        (ExportKind::Attendance, Form::Reporter) => &[
            "group_id",
            "session_id",
            "starts_at",
            "present",
            "late",
            "left_early",
            "excused",
            "no_show",
            "attendance_rate",
        ],
        (ExportKind::Retention, _) => &[
            "group_id",
            "focus",
            "joined",
            "active",
            "completed",
            "dropped_out",
            "other_exits",
            "dropout_rate",
            "median_days",
            "survival_28",
            "survival_56",
            "survival_84",
        ],
        (ExportKind::Alerts, Form::Full) => &[
            "group_id",
            "client_id",
            "kind",
            "raised_at",
            "position",
            "detail",
        ],
        (ExportKind::Alerts, Form::Reporter) => &["group_id", "kind", "count"],
    }
}

/// The export the request asks for, from the practice as of `request.as_of` (a
/// snapshot the rows are computed from later); `None` when it names a group the
/// practice does not have. The rows are computed once here, part by part and
/// dropped, for the row count and the client ids, which the header line and the
/// access log need before the first row.
pub fn export(practice: Arc<Practice>, request: &ExportRequest) -> Option<Export> {
    if let Scope::Group(id) = &request.scope {
        if !practice.groups.contains_key(id) {
            return None;
        }
    }
    let in_scope: Arc<[String]> = practice
        .groups
        .iter()
        .filter(|(id, group)| request.scope.includes(id, group))
        .map(|(id, _)| id.clone())
        .collect();
    let scoped: Vec<&str> = in_scope.iter().map(String::as_str).collect();
    let left_out = left_out(&practice, &scoped, request);
    let consent::ForReporting {
        practice: consented,
        left_out_without_consent,
    } = consent::for_reporting(&practice, &left_out, &request.scope);
    let consented = match consented {
        Cow::Borrowed(_) => practice.clone(),
        Cow::Owned(copy) => Arc::new(copy),
    };
    let source = Source {
        practice: consented,
        request: request.clone(),
        in_scope,
    };
    let columns = columns(request.kind, request.form);
    let client_column = columns.iter().position(|c| *c == "client_id");
    let mut row_count = 0;
    let mut client_ids = BTreeSet::new();
    for part in 0..source.parts() {
        let rows = source.part(part);
        row_count += rows.len();
        if let Some(at) = client_column {
            client_ids.extend(rows.iter().filter_map(|r| r[at].as_str()).map(String::from));
        }
    }
    Some(Export {
        kind: request.kind,
        form: request.form,
        purpose: request.purpose,
        scope: request.scope.label(),
        as_of: request.as_of,
        position: source.practice.position,
        columns,
        row_count,
        left_out: left_out_without_consent,
        client_ids: client_ids.into_iter().collect(),
        source,
    })
}

/// The clients consent keeps out of the rows: without research consent for
/// research; having withdrawn reporting consent for the reporter form. They are
/// taken out as the reporter-form reports take them out ([`consent::for_reporting`]),
/// so an export and its report agree.
fn left_out(practice: &Practice, in_scope: &[&str], request: &ExportRequest) -> BTreeSet<String> {
    match (request.purpose, request.form) {
        (Purpose::Research, _) => in_scope
            .iter()
            .filter_map(|id| practice.groups.get(*id))
            .flat_map(|group| group.members.keys())
            .filter(|client| !practice.has_consent(client, ConsentScope::Research))
            .cloned()
            .collect(),
        (Purpose::Operations, Form::Reporter) => consent::withdrawn_from_reporting(practice),
        (Purpose::Operations, Form::Full) => BTreeSet::new(),
    }
}

fn json<T: Serialize>(value: T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn outcome_rows(practice: &Practice, group_id: &str, request: &ExportRequest) -> Vec<Vec<Value>> {
    let catalogue = Catalogue::builtin();
    let mut rows = Vec::new();
    let Some(group) = practice.groups.get(group_id) else {
        return rows;
    };
    for instrument in group.measures.keys() {
        if catalogue.current(instrument).is_none() {
            continue;
        }
        let Some(report) = reports::outcomes(practice, group_id, instrument, request.as_of) else {
            continue;
        };
        match request.form {
            Form::Full => {
                for c in report.clients.iter().flatten() {
                    rows.push(vec![
                        json(group_id),
                        json(&c.client_id),
                        json(&report.instrument),
                        json(&report.reference_version),
                        json(c.n_scores),
                        json(c.baseline),
                        json(c.latest),
                        json(c.change),
                        json(c.classification),
                    ]);
                }
            }
            Form::Reporter => {
                let report = report.for_reporters(request.k);
                let s = &report.summary;
                rows.push(vec![
                    json(group_id),
                    json(&report.instrument),
                    json(&report.reference_version),
                    json(s.clients_with_two_or_more),
                    json(s.recovered),
                    json(s.improved),
                    json(s.unchanged),
                    json(s.deteriorated),
                    json(s.share_reliably_improved),
                    json(s.mean_change),
                    json(s.effect_size),
                ]);
            }
        }
    }
    rows
}

fn attendance_rows(
    practice: &Practice,
    group_id: &str,
    request: &ExportRequest,
) -> Vec<Vec<Value>> {
    let Some(report) = reports::attendance(practice, group_id, request.as_of) else {
        return Vec::new();
    };
    match request.form {
        Form::Full => report
            .by_client
            .iter()
            .flatten()
            .map(|c| {
                vec![
                    json(group_id),
                    json(&c.client_id),
                    json(c.sessions),
                    json(c.attended),
                    json(c.attendance_rate),
                    json(c.consecutive_absences),
                ]
            })
            .collect(),
        Form::Reporter => report
            .for_reporters(request.k)
            .by_session
            .into_iter()
            .map(|s| {
                let c = &s.counts;
                vec![
                    json(group_id),
                    json(&s.session_id),
                    json(s.starts_at),
                    json(c.present),
                    json(c.late),
                    json(c.left_early),
                    json(c.excused),
                    json(c.no_show),
                    json(s.attendance_rate),
                ]
            })
            .collect(),
    }
}

fn retention_rows(practice: &Practice, group_id: &str, request: &ExportRequest) -> Vec<Vec<Value>> {
    let Some(group) = practice.groups.get(group_id) else {
        return Vec::new();
    };
    let scope = RetentionScope::Group(group_id.to_string());
    let mut report = reports::retention(practice, &scope, request.as_of);
    if request.form == Form::Reporter {
        report = report.for_reporters(request.k);
    }
    let survival = |day: &str| json(report.survival_at.get(day).copied().flatten());
    vec![vec![
        json(group_id),
        group.focus.map_or(Value::Null, json),
        json(report.joined),
        json(report.active),
        json(report.completed),
        json(report.dropped_out),
        json(report.other_exits),
        json(report.dropout_rate),
        json(report.median_days),
        survival("28"),
        survival("56"),
        survival("84"),
    ]]
}

/// The full form: one row per alert of a group in scope (`in_scope` sorted).
fn alert_rows(alerts: &[Alert], in_scope: &[String]) -> Vec<Vec<Value>> {
    alerts
        .iter()
        .filter(|a| {
            in_scope
                .binary_search_by(|id| id.as_str().cmp(&a.group_id))
                .is_ok()
        })
        .map(|a| {
            vec![
                json(&a.group_id),
                json(&a.client_id),
                json(a.kind),
                json(a.raised_at),
                json(a.position),
                json(&a.detail),
            ]
        })
        .collect()
}

/// The reporter form: the group's alerts counted by kind.
fn alert_count_rows(
    practice: &Practice,
    group_id: &str,
    request: &ExportRequest,
) -> Vec<Vec<Value>> {
    reports::alert_counts(practice, Some(group_id), request.k)
        .into_iter()
        .map(|(kind, count)| vec![json(group_id), json(kind), json(count)])
        .collect()
}

// ---- encoding ----

/// Appends one CSV record (RFC 4180): fields separated by commas, a field holding a
/// comma, quote, CR or LF quoted with its quotes doubled, and the record ended by CRLF.
pub fn csv_record<'a>(fields: impl IntoIterator<Item = Cow<'a, str>>, out: &mut Vec<u8>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if field.contains([',', '"', '\r', '\n']) {
            out.push(b'"');
            for byte in field.bytes() {
                if byte == b'"' {
                    out.push(b'"');
                }
                out.push(byte);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(field.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A value as a CSV field: `null` is empty, text as it is, numbers as JSON writes them.
fn csv_field(value: &Value) -> Cow<'_, str> {
    match value {
        Value::Null => Cow::Borrowed(""),
        Value::String(text) => Cow::Borrowed(text),
        other => Cow::Owned(other.to_string()),
    }
}

/// The CSV header row.
pub fn csv_header(columns: &[&str], out: &mut Vec<u8>) {
    csv_record(columns.iter().map(|c| Cow::Borrowed(*c)), out);
}

/// One row as a CSV record.
pub fn csv_row(row: &[Value], out: &mut Vec<u8>) {
    csv_record(row.iter().map(csv_field), out);
}

/// The NDJSON export's first line: what the rows are, and how many clients consent
/// left out (CSV states the same in response headers).
#[derive(Serialize)]
struct NdjsonHeader<'a> {
    export: &'a str,
    format_version: u32,
    form: Form,
    purpose: Purpose,
    scope: &'a str,
    as_of: DateTime<Utc>,
    position: i64,
    left_out: u32,
    rows: usize,
    columns: &'a [&'a str],
}

/// Appends the NDJSON header line: `{"export": {...}}`.
pub fn ndjson_header(export: &Export, out: &mut Vec<u8>) {
    let header = NdjsonHeader {
        export: export.kind.name(),
        format_version: FORMAT_VERSION,
        form: export.form,
        purpose: export.purpose,
        scope: &export.scope,
        as_of: export.as_of,
        position: export.position,
        left_out: export.left_out,
        rows: export.row_count,
        columns: export.columns,
    };
    out.extend_from_slice(b"{\"export\":");
    // Plain data: serializing it cannot fail.
    let _ = serde_json::to_writer(&mut *out, &header);
    out.extend_from_slice(b"}\n");
}

/// Appends one row as an NDJSON object, its keys in column order.
pub fn ndjson_row(columns: &[&str], row: &[Value], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (column, value)) in columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, column);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, value);
    }
    out.extend_from_slice(b"}\n");
}

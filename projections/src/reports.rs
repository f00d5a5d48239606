//! The reports of API.md, computed from a [`Practice`] as of a date.
//!
//! Output is deterministic: maps are ordered, rows sorted, and every float is rounded
//! to six decimals, so the same events give byte-identical JSON.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use circle_events::group::{AttendanceStatus, DepartureReason, Focus};
use circle_events::instruments::{Catalogue, Direction, InstrumentDefinition, Score};
use serde::Serialize;

use crate::outcomes::{classify, effect_size, Classification};
use crate::practice::{Alert, GroupRecord, Practice};
use crate::survival::{KaplanMeier, Observation};

/// Rounds for stable, readable output.
pub fn round6(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

pub(crate) fn rate(numerator: u32, denominator: u32) -> Option<f64> {
    (denominator > 0).then(|| round6(numerator as f64 / denominator as f64))
}

// ---- attendance ----

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StatusCounts {
    pub present: Option<u32>,
    pub late: Option<u32>,
    pub left_early: Option<u32>,
    pub excused: Option<u32>,
    pub no_show: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionAttendance {
    pub session_id: String,
    pub starts_at: DateTime<FixedOffset>,
    #[serde(flatten)]
    pub counts: StatusCounts,
    pub attendance_rate: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientAttendance {
    pub client_id: String,
    pub sessions: u32,
    pub attended: u32,
    pub attendance_rate: Option<f64>,
    pub consecutive_absences: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttendanceReport {
    pub group_id: String,
    pub as_of: DateTime<Utc>,
    pub position: i64,
    pub sessions_held: u32,
    pub attendance_rate: Option<f64>,
    pub by_session: Vec<SessionAttendance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_client: Option<Vec<ClientAttendance>>,
}

pub fn attendance(
    practice: &Practice,
    group_id: &str,
    as_of: DateTime<Utc>,
) -> Option<AttendanceReport> {
    let group = practice.groups.get(group_id)?;
    let mut by_session = Vec::new();
    let mut per_client: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let (mut attended_total, mut expected_total) = (0u32, 0u32);
    let held = group.held_sessions();
    for (session_id, session) in &held {
        let mut counts = [0u32; 5];
        let mut members = 0;
        for (client_id, _) in group
            .members
            .iter()
            .filter(|(c, _)| group.is_member_on(c, session.date()))
        {
            members += 1;
            let status = session
                .marks
                .get(client_id)
                .copied()
                .unwrap_or(AttendanceStatus::NoShow);
            let slot = match status {
                AttendanceStatus::Present => 0,
                AttendanceStatus::Late => 1,
                AttendanceStatus::LeftEarly => 2,
                AttendanceStatus::Excused => 3,
                AttendanceStatus::NoShow => 4,
            };
            counts[slot] += 1;
            let entry = per_client.entry(client_id.as_str()).or_default();
            entry.0 += 1;
            if status.attended() {
                entry.1 += 1;
            }
        }
        let attended = counts[0] + counts[1] + counts[2];
        attended_total += attended;
        expected_total += members;
        by_session.push(SessionAttendance {
            session_id: (*session_id).clone(),
            starts_at: session.starts_at,
            counts: StatusCounts {
                present: Some(counts[0]),
                late: Some(counts[1]),
                left_early: Some(counts[2]),
                excused: Some(counts[3]),
                no_show: Some(counts[4]),
            },
            attendance_rate: rate(attended, members),
        });
    }
    let by_client = per_client
        .into_iter()
        .map(|(client_id, (sessions, attended))| ClientAttendance {
            client_id: client_id.to_string(),
            sessions,
            attended,
            attendance_rate: rate(attended, sessions),
            consecutive_absences: group.consecutive_absences(client_id),
        })
        .collect();
    Some(AttendanceReport {
        group_id: group_id.to_string(),
        as_of,
        position: practice.position,
        sessions_held: held.len() as u32,
        attendance_rate: rate(attended_total, expected_total),
        by_session,
        by_client: Some(by_client),
    })
}

// ---- retention ----

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RetentionScope {
    Group(String),
    Focus(Focus),
    Practice,
}

impl RetentionScope {
    fn label(&self) -> String {
        match self {
            RetentionScope::Group(id) => format!("group:{id}"),
            RetentionScope::Focus(focus) => format!(
                "focus:{}",
                serde_json::to_value(focus)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
            RetentionScope::Practice => "practice".to_string(),
        }
    }

    fn includes(&self, group_id: &str, group: &GroupRecord) -> bool {
        match self {
            RetentionScope::Group(id) => id == group_id,
            RetentionScope::Focus(focus) => group.focus == Some(*focus),
            RetentionScope::Practice => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KmRow {
    pub t_days: u32,
    pub at_risk: Option<u32>,
    pub events: Option<u32>,
    pub survival: f64,
    pub std_err: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetentionReport {
    pub scope: String,
    pub as_of: DateTime<Utc>,
    pub position: i64,
    pub joined: Option<u32>,
    pub active: Option<u32>,
    pub completed: Option<u32>,
    pub dropped_out: Option<u32>,
    pub other_exits: Option<u32>,
    pub dropout_rate: Option<f64>,
    pub kaplan_meier: Vec<KmRow>,
    pub median_days: Option<u32>,
    pub survival_at: BTreeMap<String, f64>,
}

pub fn retention(
    practice: &Practice,
    scope: &RetentionScope,
    as_of: DateTime<Utc>,
) -> RetentionReport {
    let today: NaiveDate = as_of.date_naive();
    let (mut joined, mut active, mut completed, mut dropped, mut other) = (0, 0, 0, 0, 0);
    let mut observations = Vec::new();
    for (group_id, group) in &practice.groups {
        if !scope.includes(group_id, group) {
            continue;
        }
        for period in group.members.values().flatten() {
            if period.joined_on > today {
                continue;
            }
            joined += 1;
            let ended = period.left_on.filter(|left| *left <= today);
            let (end, event) = match (ended, period.reason) {
                (Some(left), Some(DepartureReason::DroppedOut)) => {
                    dropped += 1;
                    (left, true)
                }
                (Some(left), Some(DepartureReason::Completed)) => {
                    completed += 1;
                    (left, false)
                }
                (Some(left), _) => {
                    other += 1;
                    (left, false)
                }
                (None, _) => {
                    active += 1;
                    (today, false)
                }
            };
            let days = (end - period.joined_on).num_days().max(0) as u32;
            observations.push(Observation { days, event });
        }
    }
    let km = KaplanMeier::estimate(&observations);
    let survival_at = [28, 56, 84]
        .into_iter()
        .map(|d| (d.to_string(), round6(km.survival_at(d))))
        .collect();
    RetentionReport {
        scope: scope.label(),
        as_of,
        position: practice.position,
        joined: Some(joined),
        active: Some(active),
        completed: Some(completed),
        dropped_out: Some(dropped),
        other_exits: Some(other),
        dropout_rate: rate(dropped, joined),
        kaplan_meier: km
            .steps
            .iter()
            .map(|s| KmRow {
                t_days: s.t_days,
                at_risk: Some(s.at_risk),
                events: Some(s.events),
                survival: round6(s.survival),
                std_err: s.std_err.map(round6),
            })
            .collect(),
        median_days: km.median(),
        survival_at,
    }
}

// ---- outcomes ----

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientOutcome {
    pub client_id: String,
    pub n_scores: u32,
    pub baseline: Score,
    pub latest: Score,
    /// In the instrument's better direction: positive is better.
    pub change: Score,
    pub classification: Classification,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutcomeSummary {
    pub clients_with_two_or_more: Option<u32>,
    pub recovered: Option<u32>,
    pub improved: Option<u32>,
    pub unchanged: Option<u32>,
    pub deteriorated: Option<u32>,
    pub share_reliably_improved: Option<f64>,
    pub mean_change: Option<f64>,
    pub effect_size: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutcomesReport {
    pub group_id: String,
    pub instrument: String,
    pub reference_version: String,
    pub direction: Direction,
    pub clinical_cutoff: Option<Score>,
    pub reliable_change: Option<Score>,
    pub as_of: DateTime<Utc>,
    pub position: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<ClientOutcome>>,
    pub summary: OutcomeSummary,
}

pub fn outcomes(
    practice: &Practice,
    group_id: &str,
    instrument: &str,
    as_of: DateTime<Utc>,
) -> Option<OutcomesReport> {
    let group = practice.groups.get(group_id)?;
    let catalogue = Catalogue::builtin();
    let current = catalogue.current(instrument)?;
    let mut clients = Vec::new();
    let (mut baselines, mut changes) = (Vec::new(), Vec::new());
    let mut counts: BTreeMap<Classification, u32> = BTreeMap::new();
    let by_client = group.measures.get(instrument);
    for client_id in by_client.into_iter().flat_map(|m| m.keys()) {
        let scores = group.scores(instrument, client_id);
        let (Some(first), Some(last)) = (scores.first(), scores.last()) else {
            continue;
        };
        let definition: &InstrumentDefinition = catalogue
            .version(instrument, &last.reference_version)
            .unwrap_or(current);
        let change = definition.improvement(first.total, last.total);
        let classification = if scores.len() < 2 {
            Classification::InsufficientData
        } else {
            baselines.push(first.total.as_f64());
            changes.push(change.as_f64());
            classify(definition, first.total, last.total)
        };
        *counts.entry(classification).or_default() += 1;
        clients.push(ClientOutcome {
            client_id: client_id.clone(),
            n_scores: scores.len() as u32,
            baseline: first.total,
            latest: last.total,
            change,
            classification,
        });
    }
    let count = |c| Some(counts.get(&c).copied().unwrap_or(0));
    let with_two = changes.len() as u32;
    let reliably_improved = counts.get(&Classification::Recovered).copied().unwrap_or(0)
        + counts.get(&Classification::Improved).copied().unwrap_or(0);
    Some(OutcomesReport {
        group_id: group_id.to_string(),
        instrument: instrument.to_string(),
        reference_version: current.version.clone(),
        direction: current.direction,
        clinical_cutoff: current.clinical_cutoff,
        reliable_change: current.reliable_change,
        as_of,
        position: practice.position,
        clients: Some(clients),
        summary: OutcomeSummary {
            clients_with_two_or_more: Some(with_two),
            recovered: count(Classification::Recovered),
            improved: count(Classification::Improved),
            unchanged: count(Classification::Unchanged),
            deteriorated: count(Classification::Deteriorated),
            share_reliably_improved: rate(reliably_improved, with_two),
            mean_change: (!changes.is_empty())
                .then(|| round6(changes.iter().sum::<f64>() / changes.len() as f64)),
            effect_size: effect_size(&baselines, &changes).map(round6),
        },
    })
}

// ---- alerts ----

/// Alerts for a group (or all groups), newest last.
pub fn alerts<'a>(practice: &'a Practice, group_id: Option<&str>) -> Vec<&'a Alert> {
    practice
        .alerts
        .iter()
        .filter(|a| group_id.is_none_or(|g| a.group_id == g))
        .collect()
}

// ---- the reporter form ----

/// Minimum necessary for reporting consumers: no per-member rows, and any count
/// below `k` replaced by `null`.
pub trait ReporterForm {
    fn for_reporters(self, k: u32) -> Self;
}

pub(crate) fn suppress(count: &mut Option<u32>, k: u32) {
    if count.is_some_and(|c| c < k) {
        *count = None;
    }
}

impl ReporterForm for AttendanceReport {
    fn for_reporters(mut self, k: u32) -> Self {
        self.by_client = None;
        for session in &mut self.by_session {
            let c = &mut session.counts;
            for count in [
                &mut c.present,
                &mut c.late,
                &mut c.left_early,
                &mut c.excused,
                &mut c.no_show,
            ] {
                suppress(count, k);
            }
        }
        self
    }
}

impl ReporterForm for RetentionReport {
    fn for_reporters(mut self, k: u32) -> Self {
        for count in [
            &mut self.joined,
            &mut self.active,
            &mut self.completed,
            &mut self.dropped_out,
            &mut self.other_exits,
        ] {
            suppress(count, k);
        }
        for row in &mut self.kaplan_meier {
            suppress(&mut row.at_risk, k);
            suppress(&mut row.events, k);
        }
        self
    }
}

impl ReporterForm for OutcomesReport {
    fn for_reporters(mut self, k: u32) -> Self {
        self.clients = None;
        let s = &mut self.summary;
        for count in [
            &mut s.clients_with_two_or_more,
            &mut s.recovered,
            &mut s.improved,
            &mut s.unchanged,
            &mut s.deteriorated,
        ] {
            suppress(count, k);
        }
        self
    }
}

//! The reports of API.md, computed from a [`Practice`] as of a date.
//!
//! Output is deterministic: maps are ordered, rows sorted, and every float is rounded
//! to six decimals, so the same events give byte-identical JSON.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use circle_events::group::{AttendanceStatus, DepartureReason, Focus, Sensitivity};
use circle_events::instruments::{Catalogue, Direction, InstrumentDefinition, Score};
use serde::Serialize;

use crate::consent;
use crate::outcomes::{classify, effect_size, Classification};
use crate::practice::{Alert, AlertKind, GroupRecord, Practice};
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
    /// Reporter form: clients left out because they withdrew reporting consent
    /// (always 0 in the full form, which keeps them).
    pub left_out_without_consent: u32,
    /// `part2` when a group the report covers is under 42 CFR Part 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Sensitivity>,
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
        left_out_without_consent: 0,
        sensitivity: group_sensitivity(practice, group_id),
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
    pub fn label(&self) -> String {
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

    /// Whether a report over this scope includes the group's data.
    pub fn includes(&self, group_id: &str, group: &GroupRecord) -> bool {
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
    /// Distinct people at risk (`at_risk` counts membership periods): what the
    /// reporter form's rule is applied to. Never serialized.
    #[serde(skip)]
    pub people_at_risk: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetentionReport {
    pub scope: String,
    pub as_of: DateTime<Utc>,
    pub position: i64,
    /// Reporter form: clients left out because they withdrew reporting consent
    /// (always 0 in the full form, which keeps them).
    pub left_out_without_consent: u32,
    /// `part2` when a group the report covers is under 42 CFR Part 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Sensitivity>,
    pub joined: Option<u32>,
    pub active: Option<u32>,
    pub completed: Option<u32>,
    pub dropped_out: Option<u32>,
    pub other_exits: Option<u32>,
    pub dropout_rate: Option<f64>,
    pub kaplan_meier: Vec<KmRow>,
    /// Reporter form only: steps with fewer people at risk than this are left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kaplan_meier_min_at_risk: Option<u32>,
    pub median_days: Option<u32>,
    /// S(t) at 28, 56 and 84 days; `null` in the reporter form when fewer than k
    /// people are still at risk on that day.
    pub survival_at: BTreeMap<String, Option<f64>>,
    /// Distinct people who joined, and still at risk on each `survival_at` day: what
    /// the reporter form's rule is applied to. Never serialized.
    #[serde(skip)]
    pub people: u32,
    #[serde(skip)]
    pub people_at_risk_on: BTreeMap<String, u32>,
    /// Distinct people behind `joined`, `active`, `completed`, `dropped_out` and
    /// `other_exits` (which count membership periods). Never serialized.
    #[serde(skip)]
    pub people_counted: [u32; 5],
}

pub fn retention(
    practice: &Practice,
    scope: &RetentionScope,
    as_of: DateTime<Utc>,
) -> RetentionReport {
    let today: NaiveDate = as_of.date_naive();
    let (mut joined, mut active, mut completed, mut dropped, mut other) = (0, 0, 0, 0, 0);
    // Who is behind each count, in the order of `RetentionReport::people_counted`.
    let mut counted: [std::collections::BTreeSet<&str>; 5] = Default::default();
    let mut observations = Vec::new();
    let mut whose: Vec<(u32, &str)> = Vec::new();
    for (group_id, group) in &practice.groups {
        if !scope.includes(group_id, group) {
            continue;
        }
        for (client_id, period) in group
            .members
            .iter()
            .flat_map(|(c, periods)| periods.iter().map(move |p| (c.as_str(), p)))
        {
            if period.joined_on > today {
                continue;
            }
            joined += 1;
            counted[0].insert(client_id);
            let ended = period.left_on.filter(|left| *left <= today);
            let (end, event, exit) = match (ended, period.reason) {
                (Some(left), Some(DepartureReason::DroppedOut)) => {
                    dropped += 1;
                    (left, true, 3)
                }
                (Some(left), Some(DepartureReason::Completed)) => {
                    completed += 1;
                    (left, false, 2)
                }
                (Some(left), _) => {
                    other += 1;
                    (left, false, 4)
                }
                (None, _) => {
                    active += 1;
                    (today, false, 1)
                }
            };
            counted[exit].insert(client_id);
            let days = (end - period.joined_on).num_days().max(0) as u32;
            observations.push(Observation { days, event });
            whose.push((days, client_id));
        }
    }
    let km = KaplanMeier::estimate(&observations);
    const SURVIVAL_DAYS: [u32; 3] = [28, 56, 84];
    let survival_at = SURVIVAL_DAYS
        .into_iter()
        .map(|d| (d.to_string(), Some(round6(km.survival_at(d)))))
        .collect();
    let step_times: Vec<u32> = km.steps.iter().map(|s| s.t_days).collect();
    let people_at_steps = people_from(&whose, &step_times);
    let people_at_days = people_from(&whose, &SURVIVAL_DAYS);
    let people_counted = counted.map(|people| people.len() as u32);
    RetentionReport {
        scope: scope.label(),
        as_of,
        position: practice.position,
        left_out_without_consent: 0,
        sensitivity: consent::sensitivity(practice, scope),
        joined: Some(joined),
        active: Some(active),
        completed: Some(completed),
        dropped_out: Some(dropped),
        other_exits: Some(other),
        dropout_rate: rate(dropped, joined),
        kaplan_meier: km
            .steps
            .iter()
            .zip(people_at_steps)
            .map(|(s, people_at_risk)| KmRow {
                t_days: s.t_days,
                at_risk: Some(s.at_risk),
                events: Some(s.events),
                survival: round6(s.survival),
                std_err: s.std_err.map(round6),
                people_at_risk,
            })
            .collect(),
        kaplan_meier_min_at_risk: None,
        median_days: km.median(),
        survival_at,
        people: people_counted[0],
        people_counted,
        people_at_risk_on: SURVIVAL_DAYS
            .iter()
            .zip(people_at_days)
            .map(|(d, n)| (d.to_string(), n))
            .collect(),
    }
}

/// For each time in `times`, the distinct people with an observation at least that
/// long (the people at risk then), in the order of `times`.
fn people_from(observations: &[(u32, &str)], times: &[u32]) -> Vec<u32> {
    let mut longest_first: Vec<&(u32, &str)> = observations.iter().collect();
    longest_first.sort_unstable_by_key(|o| std::cmp::Reverse(o.0));
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_unstable_by_key(|i| std::cmp::Reverse(times[*i]));
    let mut seen = std::collections::BTreeSet::new();
    let mut next = longest_first.into_iter().peekable();
    let mut counts = vec![0; times.len()];
    for i in order {
        while let Some((_, client)) = next.next_if(|(days, _)| *days >= times[i]) {
            seen.insert(*client);
        }
        counts[i] = seen.len() as u32;
    }
    counts
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
    /// Reporter form: clients left out because they withdrew reporting consent
    /// (always 0 in the full form, which keeps them).
    pub left_out_without_consent: u32,
    /// `part2` when a group the report covers is under 42 CFR Part 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Sensitivity>,
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
        left_out_without_consent: 0,
        sensitivity: group_sensitivity(practice, group_id),
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

/// Alerts in the reporter form: how many of each kind, withheld when fewer than k
/// people raised them (several alerts may be one person's).
pub fn alert_counts(
    practice: &Practice,
    group_id: Option<&str>,
    k: u32,
) -> Vec<(AlertKind, Option<u32>)> {
    let alerts = alerts(practice, group_id);
    AlertKind::ALL
        .into_iter()
        .map(|kind| {
            let of_kind: Vec<&&Alert> = alerts.iter().filter(|a| a.kind == kind).collect();
            let people: std::collections::BTreeSet<&str> =
                of_kind.iter().map(|a| a.client_id.as_str()).collect();
            let mut count = Some(of_kind.len() as u32);
            withhold_small(&mut count, people.len() as u32, k);
            (kind, count)
        })
        .collect()
}

// ---- the reporter form ----

/// Minimum necessary for reporting consumers: no per-member rows, and no value
/// computed from fewer than `k` people (see [`shown_to_reporters`]).
pub trait ReporterForm {
    fn for_reporters(self, k: u32) -> Self;
    /// Says how many clients were left out for want of reporting consent (see
    /// [`consent::reporter_form`], which sets it).
    fn set_left_out_without_consent(&mut self, clients: u32);
}

/// The label of a report on one group (see [`consent::sensitivity`]).
pub fn group_sensitivity(practice: &Practice, group_id: &str) -> Option<Sensitivity> {
    consent::sensitivity(practice, &RetentionScope::Group(group_id.to_string()))
}

/// The reporter form's one rule (ARCHITECTURE.md, "Reporter form: small numbers"):
/// a value computed from a set of people is shown only when the set has at least
/// `k` members. A count is computed from the people it counts; a rate, mean, effect
/// size, survival estimate or median from everyone it was computed over.
pub fn shown_to_reporters(people: u32, k: u32) -> bool {
    people >= k
}

/// Withholds `value` (makes it `null`) when it was computed from fewer than `k` people.
pub fn withhold_small<T>(value: &mut Option<T>, people: u32, k: u32) {
    if !shown_to_reporters(people, k) {
        *value = None;
    }
}

/// A count below `k` becomes `null`.
pub(crate) fn suppress(count: &mut Option<u32>, k: u32) {
    if let Some(people) = *count {
        withhold_small(count, people, k);
    }
}

/// The people a count counted, read before [`suppress`] (a count already withheld
/// stands for too few).
pub(crate) fn people(count: Option<u32>) -> u32 {
    count.unwrap_or(0)
}

impl ReporterForm for AttendanceReport {
    fn set_left_out_without_consent(&mut self, clients: u32) {
        self.left_out_without_consent = clients;
    }

    fn for_reporters(mut self, k: u32) -> Self {
        // Every member expected at a held session has exactly one status there.
        let members = self.by_client.take().map_or(0, |rows| rows.len() as u32);
        withhold_small(&mut self.attendance_rate, members, k);
        for session in &mut self.by_session {
            let c = &mut session.counts;
            let expected = [c.present, c.late, c.left_early, c.excused, c.no_show]
                .into_iter()
                .map(people)
                .sum();
            withhold_small(&mut session.attendance_rate, expected, k);
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
    fn set_left_out_without_consent(&mut self, clients: u32) {
        self.left_out_without_consent = clients;
    }

    fn for_reporters(mut self, k: u32) -> Self {
        withhold_small(&mut self.dropout_rate, self.people, k);
        // These count membership periods; the people behind them decide.
        for (count, people) in [
            &mut self.joined,
            &mut self.active,
            &mut self.completed,
            &mut self.dropped_out,
            &mut self.other_exits,
        ]
        .into_iter()
        .zip(self.people_counted)
        {
            withhold_small(count, people, k);
        }
        // The risk set only shrinks, so what is kept is the curve's start.
        self.kaplan_meier
            .retain(|row| shown_to_reporters(row.people_at_risk, k));
        self.kaplan_meier_min_at_risk = Some(k);
        for row in &mut self.kaplan_meier {
            suppress(&mut row.at_risk, k);
            suppress(&mut row.events, k);
        }
        let kept = &self.kaplan_meier;
        self.median_days = self
            .median_days
            .filter(|median| kept.iter().any(|row| row.t_days == *median));
        for (day, survival) in &mut self.survival_at {
            let people = self.people_at_risk_on.get(day).copied().unwrap_or(0);
            withhold_small(survival, people, k);
        }
        self
    }
}

impl ReporterForm for OutcomesReport {
    fn set_left_out_without_consent(&mut self, clients: u32) {
        self.left_out_without_consent = clients;
    }

    fn for_reporters(mut self, k: u32) -> Self {
        self.clients = None;
        let s = &mut self.summary;
        // Share, mean and effect size are over the members with two or more scores.
        let with_two = people(s.clients_with_two_or_more);
        for value in [
            &mut s.share_reliably_improved,
            &mut s.mean_change,
            &mut s.effect_size,
        ] {
            withhold_small(value, with_two, k);
        }
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

//! The practice as the reports see it: folded from events in log order.
//!
//! `Practice` keeps only what the reports need (membership periods, held sessions
//! and marks, measure totals) and the alerts raised so far. It is serializable so the
//! services crate can persist it together with its checkpoint position, atomically.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use circle_events::client::{ClientEvent, ConsentScope};
use circle_events::group::{AttendanceStatus, Focus, GroupEvent, Measure};
use circle_events::instruments::{Catalogue, Direction, InstrumentDefinition, Score};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::goals::{GoalCheckIn, GoalRecord, STALLED_AFTER};
use crate::outcomes::{classify, Classification};

/// A decoded event with the log facts the reports need.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub aggregate_id: String,
    pub event: AnyEvent,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AnyEvent {
    Group(GroupEvent),
    Client(ClientEvent),
    /// Tokens issued and revoked: in the log for the audit feed, nothing to report.
    Token(circle_events::token::TokenEvent),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRules {
    /// Consecutive absences that raise an attendance alert.
    pub consecutive_absences: u32,
}

impl Default for AlertRules {
    fn default() -> Self {
        AlertRules {
            consecutive_absences: 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Attendance,
    Alliance,
    Deterioration,
    Risk,
    /// No check-in on an active goal in the member's last 3 attended sessions.
    StalledGoal,
}

impl AlertKind {
    /// Every kind, in the order counts are published.
    pub const ALL: [AlertKind; 5] = [
        AlertKind::Attendance,
        AlertKind::Alliance,
        AlertKind::Deterioration,
        AlertKind::Risk,
        AlertKind::StalledGoal,
    ];
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub group_id: String,
    pub client_id: String,
    /// When the event that raised it was recorded.
    #[serde(with = "stored_time::utc")]
    pub raised_at: DateTime<Utc>,
    /// When what raised it happened: the measure's administration or the session's
    /// start (a back-filled or imported event is recorded long after).
    #[serde(with = "stored_time::fixed")]
    pub occurred_at: DateTime<FixedOffset>,
    pub position: i64,
    pub detail: String,
}

/// A membership period, as the Group aggregate keeps it.
pub use circle_events::group::MembershipPeriod as Period;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    #[serde(with = "stored_time::fixed")]
    pub starts_at: DateTime<FixedOffset>,
    pub cancelled: bool,
    pub marks: BTreeMap<String, AttendanceStatus>,
    /// Members whose mark was corrected: the marks it replaced, earliest first (a
    /// correction shows as one, never as an overwrite).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub corrected: BTreeMap<String, Vec<AttendanceStatus>>,
}

impl SessionRecord {
    pub fn held(&self) -> bool {
        !self.cancelled && !self.marks.is_empty()
    }

    pub fn date(&self) -> NaiveDate {
        self.starts_at.date_naive()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RecordedScore {
    pub administered_at: DateTime<FixedOffset>,
    pub total: Score,
    pub reference_version: String,
}

/// Stored as `[unix seconds, nanoseconds, UTC offset in seconds, total, reference
/// version]`: a state holds one per measure recorded, and numbers read several times
/// faster than an object with an RFC 3339 time (restoring a snapshot is most of an
/// `as_of` report's time).
impl Serialize for RecordedScore {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (seconds, nanos, offset) = stored_time::parts(&self.administered_at);
        (seconds, nanos, offset, self.total, &self.reference_version).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RecordedScore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (seconds, nanos, offset, total, reference_version): (i64, u32, i32, Score, String) =
            Deserialize::deserialize(deserializer)?;
        Ok(RecordedScore {
            administered_at: stored_time::from_parts(seconds, nanos, offset)?,
            total,
            reference_version,
        })
    }
}

/// How many of a member's latest administrations per instrument keep their items.
pub const LATEST_ITEM_SCORES: usize = 6;

/// One administration's item scores (the dashboard's item table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemScores {
    #[serde(with = "stored_time::fixed")]
    pub administered_at: DateTime<FixedOffset>,
    pub items: Vec<Score>,
}

/// A member's item scores on one instrument: the first administration and the
/// latest [`LATEST_ITEM_SCORES`], so that showing which items moved reads no stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemHistory {
    pub first: Option<ItemScores>,
    /// In time order; equal times keep the order recorded.
    pub latest: Vec<ItemScores>,
}

impl ItemHistory {
    /// Adds an administration at its place in time (back-filled ones too).
    pub fn add(&mut self, scores: ItemScores) {
        self.keep_if_first(&scores);
        let at = self
            .latest
            .partition_point(|s| s.administered_at <= scores.administered_at);
        self.latest.insert(at, scores);
        if self.latest.len() > LATEST_ITEM_SCORES {
            self.latest.remove(0);
        }
    }

    fn keep_if_first(&mut self, scores: &ItemScores) {
        let earlier = |first: &ItemScores| scores.administered_at < first.administered_at;
        if self.first.as_ref().is_none_or(earlier) {
            self.first = Some(scores.clone());
        }
    }

    /// Several groups' histories of one member as one (a member may be in several).
    pub fn merged<'a>(histories: impl IntoIterator<Item = &'a ItemHistory>) -> ItemHistory {
        let mut merged = ItemHistory::default();
        for history in histories {
            for scores in &history.latest {
                merged.add(scores.clone());
            }
            if let Some(first) = &history.first {
                merged.keep_if_first(first);
            }
        }
        merged
    }
}

/// Times in the stored state as numbers (`[unix seconds, nanoseconds]`, and the UTC
/// offset in seconds for local times): reading RFC 3339 text was most of the cost
/// of restoring a large state.
mod stored_time {
    use chrono::{DateTime, FixedOffset, Utc};
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn parts(at: &DateTime<FixedOffset>) -> (i64, u32, i32) {
        (
            at.timestamp(),
            at.timestamp_subsec_nanos(),
            at.offset().local_minus_utc(),
        )
    }

    pub fn from_parts<E: Error>(
        seconds: i64,
        nanos: u32,
        offset: i32,
    ) -> Result<DateTime<FixedOffset>, E> {
        let offset =
            FixedOffset::east_opt(offset).ok_or_else(|| E::custom("UTC offset out of range"))?;
        Ok(utc_from_parts::<E>(seconds, nanos)?.with_timezone(&offset))
    }

    fn utc_from_parts<E: Error>(seconds: i64, nanos: u32) -> Result<DateTime<Utc>, E> {
        DateTime::from_timestamp(seconds, nanos).ok_or_else(|| E::custom("time out of range"))
    }

    pub mod fixed {
        use super::*;

        pub fn serialize<S: Serializer>(
            at: &DateTime<FixedOffset>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            parts(at).serialize(serializer)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<DateTime<FixedOffset>, D::Error> {
            let (seconds, nanos, offset) = Deserialize::deserialize(deserializer)?;
            from_parts(seconds, nanos, offset)
        }
    }

    pub mod utc {
        use super::*;

        pub fn serialize<S: Serializer>(
            at: &DateTime<Utc>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            (at.timestamp(), at.timestamp_subsec_nanos()).serialize(serializer)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<DateTime<Utc>, D::Error> {
            let (seconds, nanos) = Deserialize::deserialize(deserializer)?;
            utc_from_parts(seconds, nanos)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub focus: Option<Focus>,
    /// The group's name and facilitators, for the dashboard (not personal data).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub facilitators: BTreeSet<String>,
    #[serde(default)]
    pub closed_on: Option<NaiveDate>,
    pub members: BTreeMap<String, Vec<Period>>,
    pub sessions: BTreeMap<String, SessionRecord>,
    /// instrument → client → totals in the order recorded.
    pub measures: BTreeMap<String, BTreeMap<String, Vec<RecordedScore>>>,
    /// instrument → client → the first and latest administrations' items.
    #[serde(default)]
    pub items: BTreeMap<String, BTreeMap<String, ItemHistory>>,
    /// Members whose current absence streak has already raised an alert.
    pub absence_alerted: BTreeSet<String>,
    /// Members' goals by goal id (no titles).
    #[serde(default)]
    pub goals: BTreeMap<String, GoalRecord>,
    /// Goals whose current stall has already raised an alert.
    #[serde(default)]
    pub stall_alerted: BTreeSet<String>,
    /// Each member's latest risk review: the log position of its `RiskReviewed`.
    /// Risk alerts raised before it are reviewed.
    #[serde(default)]
    pub risk_reviewed: BTreeMap<String, i64>,
}

impl GroupRecord {
    pub fn is_member_on(&self, client_id: &str, date: NaiveDate) -> bool {
        self.members
            .get(client_id)
            .is_some_and(|periods| periods.iter().any(|p| p.covers(date)))
    }

    /// Held sessions in time order.
    pub fn held_sessions(&self) -> Vec<(&String, &SessionRecord)> {
        let mut held: Vec<_> = self.sessions.iter().filter(|(_, s)| s.held()).collect();
        held.sort_by(|a, b| a.1.starts_at.cmp(&b.1.starts_at).then(a.0.cmp(b.0)));
        held
    }

    /// The member's current run of absences over held sessions while a member.
    pub fn consecutive_absences(&self, client_id: &str) -> u32 {
        let mut run = 0;
        for (_, session) in self.held_sessions().into_iter().rev() {
            if !self.is_member_on(client_id, session.date()) {
                continue;
            }
            match session.marks.get(client_id) {
                Some(status) if status.attended() => break,
                _ => run += 1,
            }
        }
        run
    }

    /// The member's goals that are stalled as of `day` and have not yet raised an
    /// alert for this stall; they are marked as raised.
    fn newly_stalled(&mut self, client_id: &str, day: NaiveDate) -> Vec<String> {
        let stalled: Vec<String> = self
            .goals
            .iter()
            .filter(|(_, g)| g.client_id == client_id && self.is_stalled(g, day))
            .map(|(id, _)| id.clone())
            .collect();
        stalled
            .into_iter()
            .filter(|id| self.stall_alerted.insert(id.clone()))
            .collect()
    }

    /// A member's measures on an instrument, by administration time (kept sorted on
    /// insertion, so no report or alert ever sorts a history).
    pub fn scores(&self, instrument: &str, client_id: &str) -> &[RecordedScore] {
        self.measures
            .get(instrument)
            .and_then(|by_client| by_client.get(client_id))
            .map_or(&[], Vec::as_slice)
    }

    /// A member's first and latest items on an instrument in this group.
    pub fn item_history(&self, instrument: &str, client_id: &str) -> Option<&ItemHistory> {
        self.items
            .get(instrument)
            .and_then(|by_client| by_client.get(client_id))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Practice {
    pub position: i64,
    pub rules: AlertRules,
    pub groups: BTreeMap<String, GroupRecord>,
    pub erased_clients: BTreeSet<String>,
    /// Each client's latest consent decision per scope. A scope never decided is
    /// absent: reporting counts as given (opt-out), research as not (opt-in).
    #[serde(default)]
    pub consents: BTreeMap<String, BTreeMap<ConsentScope, bool>>,
    pub alerts: Vec<Alert>,
    /// The latest `recorded_at` among the events folded (positions follow commit
    /// order, not the clock): an `as_of` at or after it sees all of this state.
    #[serde(default)]
    pub max_recorded_at: Option<DateTime<Utc>>,
}

impl Practice {
    pub fn new(rules: AlertRules) -> Practice {
        Practice {
            rules,
            ..Practice::default()
        }
    }

    /// Folds one event. Events at or below the current position are ignored, so a
    /// replayed page never counts twice.
    pub fn apply(&mut self, fact: &Fact) {
        if fact.position <= self.position {
            return;
        }
        self.position = fact.position;
        self.max_recorded_at = self.max_recorded_at.max(Some(fact.recorded_at));
        match &fact.event {
            AnyEvent::Group(event) => self.apply_group(fact, event),
            AnyEvent::Client(ClientEvent::ClientErased { .. }) => {
                self.erased_clients.insert(fact.aggregate_id.clone());
            }
            AnyEvent::Client(ClientEvent::ConsentGranted { scope }) => {
                self.decide_consent(&fact.aggregate_id, *scope, true)
            }
            AnyEvent::Client(ClientEvent::ConsentWithdrawn { scope }) => {
                self.decide_consent(&fact.aggregate_id, *scope, false)
            }
            AnyEvent::Client(_) | AnyEvent::Token(_) => {}
        }
    }

    fn decide_consent(&mut self, client_id: &str, scope: ConsentScope, given: bool) {
        self.consents
            .entry(client_id.to_string())
            .or_default()
            .insert(scope, given);
    }

    /// Whether the client's data may be used for `scope` now. Reporting is opt-out
    /// (given until withdrawn), research and treatment opt-in (absent until granted).
    pub fn has_consent(&self, client_id: &str, scope: ConsentScope) -> bool {
        let decided = self
            .consents
            .get(client_id)
            .and_then(|scopes| scopes.get(&scope));
        decided.copied().unwrap_or(scope.given_until_decided())
    }

    fn apply_group(&mut self, fact: &Fact, event: &GroupEvent) {
        let rules = self.rules;
        let group_id = &fact.aggregate_id;
        let group = self.groups.entry(group_id.clone()).or_default();
        let occurred_at = match event {
            GroupEvent::AttendanceRecorded { session_id, .. }
            | GroupEvent::AttendanceCorrected { session_id, .. } => {
                group.sessions.get(session_id).map(|s| s.starts_at)
            }
            GroupEvent::FeedbackRecorded { measure, .. } => Some(measure.administered_at),
            _ => None,
        }
        .unwrap_or_else(|| fact.recorded_at.fixed_offset());
        let mut raised = Vec::new();
        let mut raise = |kind, client_id: &str, detail: String| {
            raised.push(Alert {
                kind,
                group_id: group_id.clone(),
                client_id: client_id.to_string(),
                raised_at: fact.recorded_at,
                occurred_at,
                position: fact.position,
                detail,
            })
        };
        match event {
            GroupEvent::GroupCreated {
                focus,
                name,
                facilitators,
                ..
            } => {
                group.focus = Some(*focus);
                group.name = name.clone();
                group.facilitators = facilitators.iter().cloned().collect();
            }
            GroupEvent::FacilitatorAssigned { clinician_id } => {
                group.facilitators.insert(clinician_id.clone());
            }
            GroupEvent::FacilitatorRemoved { clinician_id } => {
                group.facilitators.remove(clinician_id);
            }
            GroupEvent::GroupClosed { closed_on } => group.closed_on = Some(*closed_on),
            GroupEvent::MemberJoined {
                client_id,
                joined_on,
            } => group
                .members
                .entry(client_id.clone())
                .or_default()
                .push(Period {
                    joined_on: *joined_on,
                    left_on: None,
                    reason: None,
                }),
            GroupEvent::MemberLeft {
                client_id,
                left_on,
                reason,
            } => {
                if let Some(period) = group.members.get_mut(client_id).and_then(|p| p.last_mut()) {
                    period.left_on = Some(*left_on);
                    period.reason = Some(*reason);
                }
            }
            GroupEvent::SessionScheduled {
                session_id,
                starts_at,
                ..
            } => {
                group.sessions.insert(
                    session_id.clone(),
                    SessionRecord {
                        starts_at: *starts_at,
                        cancelled: false,
                        marks: BTreeMap::new(),
                        corrected: BTreeMap::new(),
                    },
                );
            }
            GroupEvent::SessionCancelled { session_id, .. } => {
                if let Some(session) = group.sessions.get_mut(session_id) {
                    session.cancelled = true;
                }
            }
            GroupEvent::AttendanceRecorded {
                session_id,
                client_id,
                status,
            }
            | GroupEvent::AttendanceCorrected {
                session_id,
                client_id,
                status,
                ..
            } => {
                if let Some(session) = group.sessions.get_mut(session_id) {
                    if let GroupEvent::AttendanceCorrected {
                        previous_status, ..
                    } = event
                    {
                        let earlier = session.corrected.entry(client_id.clone()).or_default();
                        earlier.push(*previous_status);
                    }
                    session.marks.insert(client_id.clone(), *status);
                }
                // Once per streak, on the recorded absence that makes it long enough.
                // Unmarked members count as no-shows in reports, but only a recorded
                // mark raises: the rest of the same sheet may be on its way.
                if status.attended() {
                    group.absence_alerted.remove(client_id);
                    if let Some(day) = group.sessions.get(session_id).map(|s| s.date()) {
                        for goal_id in group.newly_stalled(client_id, day) {
                            raise(
                                AlertKind::StalledGoal,
                                client_id,
                                format!(
                                    "goal {goal_id}: no check-in in the last {STALLED_AFTER} attended sessions"
                                ),
                            );
                        }
                    }
                } else {
                    let run = group.consecutive_absences(client_id);
                    if run >= rules.consecutive_absences
                        && group.absence_alerted.insert(client_id.clone())
                    {
                        raise(
                            AlertKind::Attendance,
                            client_id,
                            format!("{run} consecutive absences"),
                        );
                    }
                }
            }
            GroupEvent::FeedbackRecorded {
                client_id, measure, ..
            } => {
                let scores = group
                    .measures
                    .entry(measure.instrument.clone())
                    .or_default()
                    .entry(client_id.clone())
                    .or_default();
                let (baseline, previous) = (scores.first().cloned(), scores.last().cloned());
                // Back-filled measures go to their place in time; equal times keep
                // the order they were recorded in.
                let at = scores.partition_point(|s| s.administered_at <= measure.administered_at);
                scores.insert(
                    at,
                    RecordedScore {
                        administered_at: measure.administered_at,
                        total: measure.total,
                        reference_version: measure.reference_version.clone(),
                    },
                );
                group
                    .items
                    .entry(measure.instrument.clone())
                    .or_default()
                    .entry(client_id.clone())
                    .or_default()
                    .add(ItemScores {
                        administered_at: measure.administered_at,
                        items: measure.items.clone(),
                    });
                measure_alerts(
                    measure,
                    previous.as_ref(),
                    baseline.as_ref(),
                    |kind, detail| raise(kind, client_id, detail),
                );
            }
            GroupEvent::GoalSet {
                goal_id,
                client_id,
                weight,
                start_level,
                set_on,
                ..
            } => {
                group.goals.insert(
                    goal_id.clone(),
                    GoalRecord {
                        client_id: client_id.clone(),
                        weight: *weight,
                        start_level: *start_level,
                        set_on: *set_on,
                        closed_on: None,
                        closure: None,
                        check_ins: Vec::new(),
                    },
                );
            }
            GroupEvent::GoalCheckedIn {
                goal_id,
                level,
                session_id,
                checked_in_at,
                ..
            } => {
                if let Some(goal) = group.goals.get_mut(goal_id) {
                    goal.add_check_in(GoalCheckIn {
                        date: checked_in_at.date_naive(),
                        session_id: session_id.clone(),
                        level: *level,
                    });
                }
                group.stall_alerted.remove(goal_id);
            }
            GroupEvent::GoalClosed {
                goal_id,
                reason,
                closed_on,
                ..
            } => {
                if let Some(goal) = group.goals.get_mut(goal_id) {
                    goal.closed_on = Some(*closed_on);
                    goal.closure = Some(*reason);
                }
            }
            GroupEvent::RiskReviewed { client_id } => {
                group.risk_reviewed.insert(client_id.clone(), fact.position);
            }
        }
        self.alerts.extend(raised);
    }
}

/// Why an alliance score is a concern (the alliance rule of DOMAIN.md, in one place:
/// alerts, the caseload and the dashboard's grid all ask it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AllianceConcern {
    /// The total is below the instrument's cutoff.
    BelowCutoff { total: Score, cutoff: Score },
    /// The total fell since the member's previous one.
    Fell { from: Score, to: Score },
}

impl AllianceConcern {
    pub fn describe(self, definition: &InstrumentDefinition) -> String {
        let instrument = &definition.instrument;
        match self {
            AllianceConcern::BelowCutoff { total, cutoff } => {
                format!("{instrument} total {total} is below {cutoff}")
            }
            AllianceConcern::Fell { from, to } => {
                format!("{instrument} total fell from {from} to {to}")
            }
        }
    }
}

/// Whether an alliance scale's `total` is a concern, given the member's `previous`
/// total on it: below the cutoff, or else any fall since the previous. `None` for an
/// instrument that is not an alliance scale.
pub fn alliance_concern(
    definition: &InstrumentDefinition,
    previous: Option<Score>,
    total: Score,
) -> Option<AllianceConcern> {
    let is_alliance_scale =
        definition.reliable_change.is_none() && definition.direction == Direction::HigherIsBetter;
    if !is_alliance_scale {
        return None;
    }
    if definition.is_clinical(total) == Some(true) {
        let cutoff = definition.clinical_cutoff.unwrap_or_default();
        return Some(AllianceConcern::BelowCutoff { total, cutoff });
    }
    let from = previous.filter(|p| total < *p)?;
    Some(AllianceConcern::Fell { from, to: total })
}

/// Alerts a new measure raises: risk items, alliance below cutoff or falling, and
/// reliable deterioration since baseline (raised when it first appears).
fn measure_alerts(
    measure: &Measure,
    previous: Option<&RecordedScore>,
    baseline: Option<&RecordedScore>,
    mut raise: impl FnMut(AlertKind, String),
) {
    let catalogue = Catalogue::builtin();
    let Some(definition) = catalogue
        .version(&measure.instrument, &measure.reference_version)
        .or_else(|| catalogue.current(&measure.instrument))
    else {
        return;
    };
    for item in definition.risk_flags(&measure.items) {
        raise(
            AlertKind::Risk,
            format!(
                "{} item {item} scored {}",
                measure.instrument,
                measure.items[item - 1]
            ),
        );
    }
    if let Some(concern) = alliance_concern(definition, previous.map(|p| p.total), measure.total) {
        raise(AlertKind::Alliance, concern.describe(definition));
    }
    if let (Some(baseline), Some(previous)) = (baseline, previous) {
        let was = classify(definition, baseline.total, previous.total);
        let now = classify(definition, baseline.total, measure.total);
        if now == Classification::Deteriorated && was != Classification::Deteriorated {
            raise(
                AlertKind::Deterioration,
                format!(
                    "{} went from {} to {}: reliable deterioration",
                    measure.instrument, baseline.total, measure.total
                ),
            );
        }
    }
}

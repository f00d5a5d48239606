//! The Group aggregate: one therapy group with its facilitators, membership periods,
//! sessions, attendance and feedback.
//!
//! Sessions live inside the group rather than in their own aggregate because every
//! session rule ("attendance only for members on that date", "none once cancelled")
//! is a rule about the group's membership: one consistency boundary, no cross-aggregate
//! lookups. A weekly group of ten produces roughly a thousand events a year, and the
//! command service caches aggregate state, so the longer stream costs nothing per
//! command.

mod commands;
mod errors;
mod events;
#[cfg(test)]
mod goal_tests;
mod goals;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveDate};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

pub use commands::*;
pub use errors::GroupError;
pub use events::*;
pub use goals::GoalState;

use crate::calendar;
use crate::ids::{is_valid_id, INVALID_ID};
use crate::instruments::Catalogue;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub profile: Option<GroupProfile>,
    pub facilitators: BTreeSet<String>,
    pub memberships: BTreeMap<String, Vec<MembershipPeriod>>,
    pub sessions: BTreeMap<String, SessionState>,
    pub closed_on: Option<NaiveDate>,
    /// Members' goals by goal id.
    pub goals: BTreeMap<String, GoalState>,
    /// Members with a risk item (a catalogue risk flag) recorded since their last
    /// review: what `ReviewRisk` clears.
    #[serde(default)]
    pub risk_pending: BTreeSet<String>,
    /// Number of events applied, i.e. the stream sequence of the latest one.
    pub sequence: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupProfile {
    pub group_id: String,
    pub name: String,
    pub focus: Focus,
    pub format: Format,
    pub capacity: u32,
    pub starts_on: Option<NaiveDate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipPeriod {
    pub joined_on: NaiveDate,
    pub left_on: Option<NaiveDate>,
    pub reason: Option<DepartureReason>,
}

impl MembershipPeriod {
    pub fn covers(&self, date: NaiveDate) -> bool {
        self.joined_on <= date && self.left_on.is_none_or(|left| date <= left)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    pub starts_at: DateTime<FixedOffset>,
    pub duration_minutes: u32,
    pub cancelled: Option<String>,
    pub attendance: BTreeMap<String, MarkState>,
    pub feedback_recorded: u32,
}

impl SessionState {
    /// The session's date as the facilitator wrote it (in the offset given).
    pub fn date(&self) -> NaiveDate {
        self.starts_at.date_naive()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarkState {
    pub status: AttendanceStatus,
    /// Stream sequence of the event that set this mark.
    pub sequence: u64,
}

impl Group {
    pub fn exists(&self) -> bool {
        self.profile.is_some()
    }

    /// Members whose current period is open.
    pub fn active_members(&self) -> impl Iterator<Item = &str> {
        self.memberships
            .iter()
            .filter(|(_, periods)| periods.last().is_some_and(|p| p.left_on.is_none()))
            .map(|(id, _)| id.as_str())
    }

    pub fn is_member_on(&self, client_id: &str, date: NaiveDate) -> bool {
        self.memberships
            .get(client_id)
            .is_some_and(|periods| periods.iter().any(|p| p.covers(date)))
    }

    fn open_period(&self, client_id: &str) -> Option<&MembershipPeriod> {
        self.memberships
            .get(client_id)
            .and_then(|periods| periods.last())
            .filter(|p| p.left_on.is_none())
    }

    fn require_open(&self) -> Result<&GroupProfile, GroupError> {
        let profile = self.profile.as_ref().ok_or(GroupError::GroupNotFound)?;
        match self.closed_on {
            Some(closed_on) => Err(GroupError::GroupClosed(closed_on)),
            None => Ok(profile),
        }
    }

    fn require_session(&self, session_id: &str) -> Result<&SessionState, GroupError> {
        if !self.exists() {
            return Err(GroupError::GroupNotFound);
        }
        let session = self
            .sessions
            .get(session_id)
            .ok_or_else(|| GroupError::SessionNotFound(session_id.to_string()))?;
        match session.cancelled {
            Some(_) => Err(GroupError::SessionCancelled(session_id.to_string())),
            None => Ok(session),
        }
    }

    /// Decides which events a command produces, without changing anything.
    pub fn decide(&self, command: GroupCommand) -> Result<Vec<GroupEvent>, GroupError> {
        use GroupCommand::*;
        match command {
            CreateGroup {
                group_id,
                name,
                focus,
                format,
                capacity,
                facilitators,
                starts_on,
            } => {
                if self.exists() {
                    return Err(GroupError::AlreadyExists);
                }
                check_id("group_id", &group_id)?;
                // Counted as sent, so the limit is the one the API description gives.
                if name.trim().is_empty() || name.chars().count() > MAX_NAME_LEN {
                    return Err(GroupError::invalid(
                        "name",
                        format!("must be 1 to {MAX_NAME_LEN} characters"),
                    ));
                }
                let name = name.trim().to_string();
                if capacity == 0 || capacity > MAX_CAPACITY {
                    return Err(GroupError::invalid(
                        "capacity",
                        format!("must be from 1 to {MAX_CAPACITY}"),
                    ));
                }
                if facilitators.is_empty() || facilitators.len() > MAX_FACILITATORS {
                    return Err(GroupError::invalid(
                        "facilitators",
                        format!("a group has 1 to {MAX_FACILITATORS} facilitators"),
                    ));
                }
                let mut seen = BTreeSet::new();
                for (i, clinician) in facilitators.iter().enumerate() {
                    check_id(&format!("facilitators[{i}]"), clinician)?;
                    if !seen.insert(clinician) {
                        return Err(GroupError::invalid(
                            &format!("facilitators[{i}]"),
                            "is listed twice",
                        ));
                    }
                }
                if let Some(starts_on) = starts_on {
                    check_date("starts_on", starts_on)?;
                }
                Ok(vec![GroupEvent::GroupCreated {
                    group_id,
                    name,
                    focus,
                    format,
                    capacity,
                    facilitators,
                    starts_on,
                }])
            }
            AssignFacilitator { clinician_id } => {
                self.require_open()?;
                check_id("clinician_id", &clinician_id)?;
                if self.facilitators.contains(&clinician_id) {
                    return Err(GroupError::AlreadyFacilitator(clinician_id));
                }
                if self.facilitators.len() >= MAX_FACILITATORS {
                    return Err(GroupError::TooManyFacilitators(MAX_FACILITATORS));
                }
                Ok(vec![GroupEvent::FacilitatorAssigned { clinician_id }])
            }
            RemoveFacilitator { clinician_id } => {
                self.require_open()?;
                if !self.facilitators.contains(&clinician_id) {
                    return Err(GroupError::NotAFacilitator(clinician_id));
                }
                if self.facilitators.len() == 1 {
                    return Err(GroupError::LastFacilitator);
                }
                Ok(vec![GroupEvent::FacilitatorRemoved { clinician_id }])
            }
            JoinGroup {
                client_id,
                joined_on,
            } => {
                let profile = self.require_open()?;
                check_id("client_id", &client_id)?;
                check_date("joined_on", joined_on)?;
                if self.open_period(&client_id).is_some() {
                    return Err(GroupError::AlreadyMember(client_id));
                }
                let previous_departure = self
                    .memberships
                    .get(&client_id)
                    .and_then(|periods| periods.last())
                    .and_then(|p| p.left_on);
                if let Some(left_on) = previous_departure.filter(|left| joined_on < *left) {
                    return Err(GroupError::JoinedBeforePreviousDeparture { joined_on, left_on });
                }
                if self.active_members().count() >= profile.capacity as usize {
                    return Err(GroupError::AtCapacity(profile.capacity));
                }
                Ok(vec![GroupEvent::MemberJoined {
                    client_id,
                    joined_on,
                }])
            }
            LeaveGroup {
                client_id,
                left_on,
                reason,
            } => {
                if !self.exists() {
                    return Err(GroupError::GroupNotFound);
                }
                check_date("left_on", left_on)?;
                let period = self
                    .open_period(&client_id)
                    .ok_or_else(|| GroupError::NotAMember(client_id.clone()))?;
                if left_on < period.joined_on {
                    return Err(GroupError::LeftBeforeJoined {
                        left_on,
                        joined_on: period.joined_on,
                    });
                }
                Ok(vec![GroupEvent::MemberLeft {
                    client_id,
                    left_on,
                    reason,
                }])
            }
            ScheduleSession {
                session_id,
                starts_at,
                duration_minutes,
            } => {
                self.require_open()?;
                check_id("session_id", &session_id)?;
                if self.sessions.contains_key(&session_id) {
                    return Err(GroupError::SessionExists(session_id));
                }
                check_time("starts_at", &starts_at)?;
                if duration_minutes == 0 || duration_minutes > MAX_SESSION_MINUTES {
                    return Err(GroupError::invalid(
                        "duration_minutes",
                        format!("must be from 1 to {MAX_SESSION_MINUTES}"),
                    ));
                }
                Ok(vec![GroupEvent::SessionScheduled {
                    session_id,
                    starts_at,
                    duration_minutes,
                }])
            }
            CancelSession { session_id, reason } => {
                self.require_session(&session_id)?;
                check_reason(&reason)?;
                Ok(vec![GroupEvent::SessionCancelled { session_id, reason }])
            }
            RecordAttendance {
                session_id,
                records,
            } => self.decide_attendance(session_id, records),
            RecordFeedback {
                client_id,
                session_id,
                instrument,
                items,
                administered_at,
            } => {
                if !self.exists() {
                    return Err(GroupError::GroupNotFound);
                }
                let definition = Catalogue::builtin()
                    .current(&instrument)
                    .ok_or_else(|| GroupError::UnknownInstrument(instrument.clone()))?;
                definition
                    .check_items(&items)
                    .map_err(GroupError::InvalidItems)?;
                if let Some(at) = &administered_at {
                    check_time("administered_at", at)?;
                }
                let administered_at = match (&session_id, administered_at) {
                    (_, Some(at)) => at,
                    (Some(session_id), None) => self.require_session(session_id)?.starts_at,
                    (None, None) => {
                        return Err(GroupError::invalid(
                            "administered_at",
                            "is required for a measure outside a session",
                        ))
                    }
                };
                let date = match &session_id {
                    Some(session_id) => self.require_session(session_id)?.date(),
                    None => administered_at.date_naive(),
                };
                if !self.is_member_on(&client_id, date) {
                    return Err(GroupError::NotAMemberOn { client_id, date });
                }
                let total = definition.total(&items);
                Ok(vec![GroupEvent::FeedbackRecorded {
                    client_id,
                    session_id,
                    measure: Measure {
                        instrument,
                        reference_version: definition.version.clone(),
                        items,
                        total,
                        administered_at,
                    },
                }])
            }
            CloseGroup { closed_on } => {
                self.require_open()?;
                check_date("closed_on", closed_on)?;
                Ok(vec![GroupEvent::GroupClosed { closed_on }])
            }
            SetGoal {
                goal_id,
                client_id,
                title,
                weight,
                start_level,
                set_on,
            } => self.decide_set_goal(goal_id, client_id, title, weight, start_level, set_on),
            CheckIn {
                goal_id,
                client_id,
                level,
                session_id,
                checked_in_at,
            } => {
                let request = goals::CheckInRequest {
                    goal_id,
                    client_id,
                    level,
                    session_id,
                    checked_in_at,
                };
                Ok(vec![self.decide_check_in(request, "")?])
            }
            CheckInSession {
                session_id,
                check_ins,
            } => self.decide_session_check_ins(session_id, check_ins),
            CloseGoal {
                goal_id,
                client_id,
                reason,
                replaced_by,
                closed_on,
            } => self.decide_close_goal(goal_id, client_id, reason, replaced_by, closed_on),
            ReviewRisk { client_id } => {
                if !self.exists() {
                    return Err(GroupError::GroupNotFound);
                }
                if !self.risk_pending.contains(&client_id) {
                    return Err(GroupError::NoRiskToReview(client_id));
                }
                Ok(vec![GroupEvent::RiskReviewed { client_id }])
            }
        }
    }

    fn decide_attendance(
        &self,
        session_id: String,
        records: Vec<AttendanceMark>,
    ) -> Result<Vec<GroupEvent>, GroupError> {
        let session = self.require_session(&session_id)?;
        if records.is_empty() || records.len() > MAX_ATTENDANCE_MARKS {
            return Err(GroupError::invalid(
                "records",
                format!("must hold 1 to {MAX_ATTENDANCE_MARKS} marks"),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut events = Vec::with_capacity(records.len());
        for (i, mark) in records.into_iter().enumerate() {
            let field = format!("records[{i}].client_id");
            check_id(&field, &mark.client_id)?;
            if !seen.insert(mark.client_id.clone()) {
                return Err(GroupError::invalid(&field, "is listed twice"));
            }
            if !self.is_member_on(&mark.client_id, session.date()) {
                return Err(GroupError::NotAMemberOn {
                    client_id: mark.client_id,
                    date: session.date(),
                });
            }
            match session.attendance.get(&mark.client_id) {
                Some(previous) if previous.status == mark.status => {}
                Some(previous) => events.push(GroupEvent::AttendanceCorrected {
                    session_id: session_id.clone(),
                    client_id: mark.client_id,
                    status: mark.status,
                    previous_status: previous.status,
                    corrects_sequence: previous.sequence,
                }),
                None => events.push(GroupEvent::AttendanceRecorded {
                    session_id: session_id.clone(),
                    client_id: mark.client_id,
                    status: mark.status,
                }),
            }
        }
        Ok(events)
    }
}

fn check_id(field: &str, id: &str) -> Result<(), GroupError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(GroupError::invalid(field, INVALID_ID))
    }
}

fn check_date(field: &str, date: NaiveDate) -> Result<(), GroupError> {
    calendar::check_date(date).map_err(|reason| GroupError::invalid(field, reason))
}

fn check_time(field: &str, at: &DateTime<FixedOffset>) -> Result<(), GroupError> {
    calendar::check_time(at).map_err(|reason| GroupError::invalid(field, reason))
}

fn check_reason(reason: &str) -> Result<(), GroupError> {
    if reason.trim().is_empty() || reason.chars().count() > MAX_REASON_LEN {
        return Err(GroupError::invalid(
            "reason",
            format!("must be 1 to {MAX_REASON_LEN} characters"),
        ));
    }
    Ok(())
}

impl Aggregate for Group {
    const TYPE: &'static str = "group";
    type Command = GroupCommand;
    type Event = GroupEvent;
    type Error = GroupError;
    type Services = ();

    async fn handle(
        &mut self,
        command: GroupCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), GroupError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: GroupEvent) {
        self.sequence += 1;
        let sequence = self.sequence;
        match event {
            GroupEvent::GroupCreated {
                group_id,
                name,
                focus,
                format,
                capacity,
                facilitators,
                starts_on,
            } => {
                self.facilitators = facilitators.into_iter().collect();
                self.profile = Some(GroupProfile {
                    group_id,
                    name,
                    focus,
                    format,
                    capacity,
                    starts_on,
                });
            }
            GroupEvent::FacilitatorAssigned { clinician_id } => {
                self.facilitators.insert(clinician_id);
            }
            GroupEvent::FacilitatorRemoved { clinician_id } => {
                self.facilitators.remove(&clinician_id);
            }
            GroupEvent::MemberJoined {
                client_id,
                joined_on,
            } => self
                .memberships
                .entry(client_id)
                .or_default()
                .push(MembershipPeriod {
                    joined_on,
                    left_on: None,
                    reason: None,
                }),
            GroupEvent::MemberLeft {
                client_id,
                left_on,
                reason,
            } => {
                if let Some(period) = self
                    .memberships
                    .get_mut(&client_id)
                    .and_then(|p| p.last_mut())
                {
                    period.left_on = Some(left_on);
                    period.reason = Some(reason);
                }
            }
            GroupEvent::SessionScheduled {
                session_id,
                starts_at,
                duration_minutes,
            } => {
                self.sessions.insert(
                    session_id,
                    SessionState {
                        starts_at,
                        duration_minutes,
                        cancelled: None,
                        attendance: BTreeMap::new(),
                        feedback_recorded: 0,
                    },
                );
            }
            GroupEvent::SessionCancelled { session_id, reason } => {
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session.cancelled = Some(reason);
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
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session
                        .attendance
                        .insert(client_id, MarkState { status, sequence });
                }
            }
            GroupEvent::FeedbackRecorded {
                session_id,
                client_id,
                measure,
            } => {
                if let Some(session) = session_id.and_then(|id| self.sessions.get_mut(&id)) {
                    session.feedback_recorded += 1;
                }
                let flagged = Catalogue::builtin()
                    .version(&measure.instrument, &measure.reference_version)
                    .is_some_and(|d| !d.risk_flags(&measure.items).is_empty());
                if flagged {
                    self.risk_pending.insert(client_id);
                }
            }
            GroupEvent::RiskReviewed { client_id } => {
                self.risk_pending.remove(&client_id);
            }
            GroupEvent::GroupClosed { closed_on } => self.closed_on = Some(closed_on),
            GroupEvent::GoalSet { .. }
            | GroupEvent::GoalCheckedIn { .. }
            | GroupEvent::GoalClosed { .. } => self.apply_goal(&event),
        }
    }
}

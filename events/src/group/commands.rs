use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::{Deserialize, Serialize};

use super::events::{AttendanceStatus, DepartureReason, Focus, Format, GoalClosure};
use crate::client::SealedPersonalData;
use crate::instruments::Score;
use crate::Command;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GroupCommand {
    CreateGroup {
        group_id: String,
        name: String,
        focus: Focus,
        format: Format,
        capacity: u32,
        facilitators: Vec<String>,
        starts_on: Option<NaiveDate>,
    },
    AssignFacilitator {
        clinician_id: String,
    },
    RemoveFacilitator {
        clinician_id: String,
    },
    JoinGroup {
        client_id: String,
        joined_on: NaiveDate,
    },
    LeaveGroup {
        client_id: String,
        left_on: NaiveDate,
        reason: DepartureReason,
    },
    ScheduleSession {
        session_id: String,
        starts_at: DateTime<FixedOffset>,
        duration_minutes: u32,
    },
    CancelSession {
        session_id: String,
        reason: String,
    },
    /// Marks for several members at once; a member marked before gets a correction.
    RecordAttendance {
        session_id: String,
        records: Vec<AttendanceMark>,
    },
    /// A questionnaire; with a session it defaults to the session's start time and
    /// must be taken by a member on the session's date.
    RecordFeedback {
        client_id: String,
        session_id: Option<String>,
        instrument: String,
        items: Vec<Score>,
        administered_at: Option<DateTime<FixedOffset>>,
    },
    CloseGroup {
        closed_on: NaiveDate,
    },
    /// A member sets a goal; `title` arrives sealed (services checks its length first).
    SetGoal {
        goal_id: String,
        client_id: String,
        title: SealedPersonalData,
        weight: u8,
        start_level: i8,
        set_on: NaiveDate,
    },
    /// With a session, `checked_in_at` defaults to the session's start.
    CheckIn {
        goal_id: String,
        client_id: String,
        level: i8,
        session_id: Option<String>,
        checked_in_at: Option<DateTime<FixedOffset>>,
    },
    /// Levels for several goals at one session: the group check-in form.
    CheckInSession {
        session_id: String,
        check_ins: Vec<GoalLevel>,
    },
    CloseGoal {
        goal_id: String,
        client_id: String,
        reason: GoalClosure,
        replaced_by: Option<String>,
        closed_on: NaiveDate,
    },
    /// A clinician has reviewed a member's risk item (e.g. PHQ-9 item 9 above 0):
    /// the flag leaves the top of the caseload, and the review is on the record.
    ReviewRisk {
        client_id: String,
    },
}

/// One member's level for one goal in a group check-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoalLevel {
    pub client_id: String,
    pub goal_id: String,
    pub level: i8,
}

impl GroupCommand {
    /// The clients this command writes about: each must not be erased when it
    /// commits (services checks this under the log's lock).
    pub fn clients_named(&self) -> Vec<&str> {
        match self {
            GroupCommand::JoinGroup { client_id, .. }
            | GroupCommand::LeaveGroup { client_id, .. }
            | GroupCommand::RecordFeedback { client_id, .. }
            | GroupCommand::SetGoal { client_id, .. }
            | GroupCommand::CheckIn { client_id, .. }
            | GroupCommand::CloseGoal { client_id, .. }
            | GroupCommand::ReviewRisk { client_id } => vec![client_id],
            GroupCommand::RecordAttendance { records, .. } => {
                records.iter().map(|r| r.client_id.as_str()).collect()
            }
            GroupCommand::CheckInSession { check_ins, .. } => {
                check_ins.iter().map(|c| c.client_id.as_str()).collect()
            }
            GroupCommand::CreateGroup { .. }
            | GroupCommand::AssignFacilitator { .. }
            | GroupCommand::RemoveFacilitator { .. }
            | GroupCommand::ScheduleSession { .. }
            | GroupCommand::CancelSession { .. }
            | GroupCommand::CloseGroup { .. } => Vec::new(),
        }
    }
}

impl Command for GroupCommand {
    fn name(&self) -> &'static str {
        match self {
            GroupCommand::CreateGroup { .. } => "create_group",
            GroupCommand::AssignFacilitator { .. } => "assign_facilitator",
            GroupCommand::RemoveFacilitator { .. } => "remove_facilitator",
            GroupCommand::JoinGroup { .. } => "join_group",
            GroupCommand::LeaveGroup { .. } => "leave_group",
            GroupCommand::ScheduleSession { .. } => "schedule_session",
            GroupCommand::CancelSession { .. } => "cancel_session",
            GroupCommand::RecordAttendance { .. } => "record_attendance",
            // Feedback outside a session is a client's measure taken in the group's care.
            GroupCommand::RecordFeedback {
                session_id: None, ..
            } => "record_measure",
            GroupCommand::RecordFeedback { .. } => "record_feedback",
            GroupCommand::CloseGroup { .. } => "close_group",
            GroupCommand::SetGoal { .. } => "set_goal",
            GroupCommand::CheckIn { .. } => "check_in",
            GroupCommand::CheckInSession { .. } => "session_check_ins",
            GroupCommand::CloseGoal { .. } => "close_goal",
            GroupCommand::ReviewRisk { .. } => "review_risk",
        }
    }

    fn record_id(&self) -> Option<&str> {
        match self {
            GroupCommand::ScheduleSession { session_id, .. }
            | GroupCommand::CancelSession { session_id, .. }
            | GroupCommand::RecordAttendance { session_id, .. }
            | GroupCommand::CheckInSession { session_id, .. }
            | GroupCommand::RecordFeedback {
                session_id: Some(session_id),
                ..
            } => Some(session_id),
            GroupCommand::RecordFeedback {
                session_id: None,
                client_id,
                ..
            } => Some(client_id),
            GroupCommand::SetGoal { goal_id, .. }
            | GroupCommand::CheckIn { goal_id, .. }
            | GroupCommand::CloseGoal { goal_id, .. } => Some(goal_id),
            _ => None,
        }
    }

    fn creates(&self) -> bool {
        matches!(
            self,
            GroupCommand::CreateGroup { .. }
                | GroupCommand::ScheduleSession { .. }
                | GroupCommand::SetGoal { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttendanceMark {
    pub client_id: String,
    pub status: AttendanceStatus,
}

/// Limits that keep one group's stream and state bounded and sane.
pub const MAX_CAPACITY: u32 = 50;
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_SESSION_MINUTES: u32 = 600;
pub const MAX_REASON_LEN: usize = 500;
/// Facilitators of one group; a group is run by a few clinicians, not a department.
pub const MAX_FACILITATORS: usize = 10;
/// Marks in one attendance command: more than a full group of the largest capacity.
pub const MAX_ATTENDANCE_MARKS: usize = 2 * MAX_CAPACITY as usize;
/// Goal Attainment Scaling: weights 1 to 3, levels -2 (much less than expected) to +2.
pub const GOAL_WEIGHTS: std::ops::RangeInclusive<u8> = 1..=3;
pub const GOAL_LEVELS: std::ops::RangeInclusive<i8> = -2..=2;
/// Goals one member may hold open in one group: a handful is what GAS scores well.
pub const MAX_ACTIVE_GOALS: usize = 10;

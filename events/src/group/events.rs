use chrono::{DateTime, FixedOffset, NaiveDate};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::client::SealedPersonalData;
use crate::instruments::Score;

/// What a group is about; drives per-focus retention and 42 CFR Part 2 labelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Focus {
    Anxiety,
    Depression,
    Grief,
    Trauma,
    Relationships,
    AddictionRecovery,
    PersonalGrowth,
}

/// Closed groups run one cohort through a fixed course; open groups admit at any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Open,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DepartureReason {
    Completed,
    DroppedOut,
    Transferred,
    Discharged,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AttendanceStatus {
    Present,
    Late,
    LeftEarly,
    Excused,
    NoShow,
}

impl AttendanceStatus {
    /// Present, late and left early count as attended; excused and no-show do not.
    pub fn attended(self) -> bool {
        matches!(self, Self::Present | Self::Late | Self::LeftEarly)
    }
}

/// A scored questionnaire, exactly as it was administered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    pub instrument: String,
    /// Catalogue version the items were checked and totalled with.
    pub reference_version: String,
    pub items: Vec<Score>,
    pub total: Score,
    pub administered_at: DateTime<FixedOffset>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GroupEvent {
    GroupCreated {
        group_id: String,
        name: String,
        focus: Focus,
        format: Format,
        capacity: u32,
        facilitators: Vec<String>,
        starts_on: Option<NaiveDate>,
    },
    FacilitatorAssigned {
        clinician_id: String,
    },
    FacilitatorRemoved {
        clinician_id: String,
    },
    MemberJoined {
        client_id: String,
        joined_on: NaiveDate,
    },
    MemberLeft {
        client_id: String,
        left_on: NaiveDate,
        reason: DepartureReason,
    },
    SessionScheduled {
        session_id: String,
        starts_at: DateTime<FixedOffset>,
        duration_minutes: u32,
    },
    SessionCancelled {
        session_id: String,
        reason: String,
    },
    AttendanceRecorded {
        session_id: String,
        client_id: String,
        status: AttendanceStatus,
    },
    /// Replaces an earlier mark; `corrects_sequence` is the group-stream sequence of
    /// the event it corrects, so nothing is ever changed in place.
    AttendanceCorrected {
        session_id: String,
        client_id: String,
        status: AttendanceStatus,
        previous_status: AttendanceStatus,
        corrects_sequence: u64,
    },
    /// A questionnaire taken by a member, at a session or (session_id absent) between
    /// sessions but within this group's care.
    FeedbackRecorded {
        client_id: String,
        session_id: Option<String>,
        measure: Measure,
    },
    GroupClosed {
        closed_on: NaiveDate,
    },
    /// A member's goal in this group (Goal Attainment Scaling). The title is personal
    /// data, sealed with the client's key: erasure leaves only weight and levels.
    GoalSet {
        goal_id: String,
        client_id: String,
        title: SealedPersonalData,
        weight: u8,
        start_level: i8,
        set_on: NaiveDate,
    },
    /// The level a member reports for one goal, at a session or between sessions.
    GoalCheckedIn {
        goal_id: String,
        client_id: String,
        level: i8,
        session_id: Option<String>,
        checked_in_at: DateTime<FixedOffset>,
    },
    /// No more check-ins on this goal; a revised goal names its replacement.
    GoalClosed {
        goal_id: String,
        client_id: String,
        reason: GoalClosure,
        replaced_by: Option<String>,
        closed_on: NaiveDate,
    },
    /// A clinician reviewed the member's pending risk items (every one raised before
    /// this event); who and when are the event's actor and time.
    RiskReviewed {
        client_id: String,
    },
}

/// Why a goal was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GoalClosure {
    Attained,
    /// Replaced by another goal of the same member (`replaced_by`).
    Revised,
    Dropped,
}

impl DomainEvent for GroupEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::GroupCreated { .. } => "GroupCreated",
            Self::FacilitatorAssigned { .. } => "FacilitatorAssigned",
            Self::FacilitatorRemoved { .. } => "FacilitatorRemoved",
            Self::MemberJoined { .. } => "MemberJoined",
            Self::MemberLeft { .. } => "MemberLeft",
            Self::SessionScheduled { .. } => "SessionScheduled",
            Self::SessionCancelled { .. } => "SessionCancelled",
            Self::AttendanceRecorded { .. } => "AttendanceRecorded",
            Self::AttendanceCorrected { .. } => "AttendanceCorrected",
            Self::FeedbackRecorded { .. } => "FeedbackRecorded",
            Self::GroupClosed { .. } => "GroupClosed",
            Self::GoalSet { .. } => "GoalSet",
            Self::GoalCheckedIn { .. } => "GoalCheckedIn",
            Self::GoalClosed { .. } => "GoalClosed",
            Self::RiskReviewed { .. } => "RiskReviewed",
        };
        name.to_string()
    }

    fn event_version(&self) -> String {
        crate::upcast::current_version(&self.event_type()).to_string()
    }
}

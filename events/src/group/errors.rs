use chrono::NaiveDate;

use crate::instruments::ItemError;
use crate::{Rejection, RejectionKind};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("group not found")]
    GroupNotFound,
    #[error("group already exists")]
    AlreadyExists,
    #[error("group was closed on {0}")]
    GroupClosed(NaiveDate),
    #[error("group is at its capacity of {0} members")]
    AtCapacity(u32),
    #[error("client {0} is already a member of this group")]
    AlreadyMember(String),
    #[error("client {0} is not a member of this group")]
    NotAMember(String),
    #[error("client {client_id} was not a member of this group on {date}")]
    NotAMemberOn { client_id: String, date: NaiveDate },
    #[error("left_on {left_on} is before joined_on {joined_on}")]
    LeftBeforeJoined {
        left_on: NaiveDate,
        joined_on: NaiveDate,
    },
    #[error("joined_on {joined_on} is before the previous departure on {left_on}")]
    JoinedBeforePreviousDeparture {
        joined_on: NaiveDate,
        left_on: NaiveDate,
    },
    #[error("clinician {0} already facilitates this group")]
    AlreadyFacilitator(String),
    #[error("clinician {0} does not facilitate this group")]
    NotAFacilitator(String),
    #[error("a group has at most {0} facilitators")]
    TooManyFacilitators(usize),
    #[error("a group keeps at least one facilitator")]
    LastFacilitator,
    #[error("session {0} already exists")]
    SessionExists(String),
    #[error("session {0} not found")]
    SessionNotFound(String),
    #[error("session {0} is cancelled")]
    SessionCancelled(String),
    #[error("{0}")]
    InvalidItems(ItemError),
    #[error("unknown instrument {0}")]
    UnknownInstrument(String),
    #[error("goal {0} not found in this group")]
    GoalNotFound(String),
    #[error("goal {0} already exists")]
    GoalExists(String),
    /// A goal rule refused the command: another client's goal, a closed goal, a
    /// check-in before the goal was set or while not a member.
    #[error("{field}: {message}")]
    GoalRule { field: String, message: String },
    #[error("no risk item of client {0} awaits review in this group")]
    NoRiskToReview(String),
}

impl GroupError {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> GroupError {
        GroupError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl Rejection for GroupError {
    fn kind(&self) -> RejectionKind {
        use GroupError::*;
        let rule = |field: &str| RejectionKind::Rule {
            field: Some(field.to_string()),
        };
        match self {
            Invalid { field, .. } => RejectionKind::Invalid {
                field: field.clone(),
            },
            InvalidItems(e) => RejectionKind::Invalid {
                field: e.field.clone(),
            },
            UnknownInstrument(_) => RejectionKind::Invalid {
                field: "instrument".into(),
            },
            GroupNotFound => RejectionKind::NotFound,
            SessionNotFound(_) | GoalNotFound(_) => RejectionKind::NotFound,
            AlreadyExists | SessionExists(_) | GoalExists(_) => RejectionKind::Conflict,
            GoalRule { field, .. } => rule(field),
            GroupClosed(_) | LastFacilitator => RejectionKind::Rule { field: None },
            AtCapacity(_)
            | AlreadyMember(_)
            | NotAMember(_)
            | NotAMemberOn { .. }
            | NoRiskToReview(_) => rule("client_id"),
            LeftBeforeJoined { .. } => rule("left_on"),
            JoinedBeforePreviousDeparture { .. } => rule("joined_on"),
            AlreadyFacilitator(_) | NotAFacilitator(_) | TooManyFacilitators(_) => {
                rule("clinician_id")
            }
            SessionCancelled(_) => rule("session_id"),
        }
    }
}

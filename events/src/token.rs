//! API tokens as events: who granted access to whom, and when it ended. The token's
//! secret is never in an event (only the store keeps its hash); the row that makes a
//! token usable is written in the same transaction as its event (see
//! `services/src/tokens.rs`).

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// The aggregate type of token streams in the log; the stream id is the token id.
pub const TOKEN_TYPE: &str = "token";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TokenEvent {
    /// A token was issued (by the event's actor) for `role`, and for a clinician
    /// `clinician_id`. `label` says what or whom it is for.
    TokenIssued {
        token_id: String,
        role: String,
        clinician_id: Option<String>,
        label: String,
        expires_at: Option<DateTime<Utc>>,
    },
    /// The token was revoked (by the event's actor): refused from this position on.
    TokenRevoked { token_id: String },
}

impl DomainEvent for TokenEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::TokenIssued { .. } => "TokenIssued",
            Self::TokenRevoked { .. } => "TokenRevoked",
        };
        name.to_string()
    }

    fn event_version(&self) -> String {
        crate::upcast::current_version(&self.event_type()).to_string()
    }
}

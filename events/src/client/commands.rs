use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use super::events::{ConsentScope, ErasureReason, SealedPersonalData};
use crate::instruments::Score;
use crate::Command;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientCommand {
    RegisterClient {
        client_id: String,
        personal: Option<SealedPersonalData>,
    },
    GrantConsent {
        scope: ConsentScope,
    },
    WithdrawConsent {
        scope: ConsentScope,
    },
    EraseClient {
        reason: ErasureReason,
    },
    RecordMeasure {
        instrument: String,
        items: Vec<Score>,
        administered_at: DateTime<FixedOffset>,
    },
}

impl Command for ClientCommand {
    fn name(&self) -> &'static str {
        match self {
            ClientCommand::RegisterClient { .. } => "register_client",
            ClientCommand::GrantConsent { .. } => "grant_consent",
            ClientCommand::WithdrawConsent { .. } => "withdraw_consent",
            ClientCommand::EraseClient { .. } => "erase_client",
            ClientCommand::RecordMeasure { .. } => "record_measure",
        }
    }

    fn creates(&self) -> bool {
        matches!(self, ClientCommand::RegisterClient { .. })
    }
}

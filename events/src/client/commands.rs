use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use super::events::{ConsentScope, ErasureReason, SealedPersonalData};
use crate::instruments::Score;

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

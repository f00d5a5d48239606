use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::group::Measure;

/// Personal fields encrypted with the client's own key (base64 of nonce and
/// ciphertext). The domain never sees them in plain text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPersonalData {
    pub sealed: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConsentScope {
    Treatment,
    Reporting,
    Research,
}

impl ConsentScope {
    pub const ALL: [ConsentScope; 3] = [
        ConsentScope::Treatment,
        ConsentScope::Reporting,
        ConsentScope::Research,
    ];

    /// Whether a client who has not decided on this scope has given it: reporting
    /// is opt-out (given until withdrawn), treatment and research are opt-in. The
    /// Client aggregate and the reports' fold both read it here.
    pub fn given_until_decided(self) -> bool {
        match self {
            ConsentScope::Reporting => true,
            ConsentScope::Treatment | ConsentScope::Research => false,
        }
    }
}

/// Why personal data was erased. A fixed set, because free text in an immutable log
/// could itself carry personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErasureReason {
    ClientRequest,
    ConsentWithdrawn,
    UnlawfulProcessing,
    LegalObligation,
    Other,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientEvent {
    ClientRegistered {
        client_id: String,
        personal: Option<SealedPersonalData>,
    },
    ConsentGranted {
        scope: ConsentScope,
    },
    ConsentWithdrawn {
        scope: ConsentScope,
    },
    /// The client's key has been destroyed with this event; the sealed fields in
    /// `ClientRegistered` can no longer be read by anyone.
    ClientErased {
        reason: ErasureReason,
    },
    /// An outcome measure taken outside any group.
    MeasureRecorded {
        measure: Measure,
    },
}

impl DomainEvent for ClientEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::ClientRegistered { .. } => "ClientRegistered",
            Self::ConsentGranted { .. } => "ConsentGranted",
            Self::ConsentWithdrawn { .. } => "ConsentWithdrawn",
            Self::ClientErased { .. } => "ClientErased",
            Self::MeasureRecorded { .. } => "MeasureRecorded",
        };
        name.to_string()
    }

    fn event_version(&self) -> String {
        crate::upcast::current_version(&self.event_type()).to_string()
    }
}

use super::events::ConsentScope;
use crate::instruments::ItemError;
use crate::{Rejection, RejectionKind};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("client not found")]
    NotFound,
    #[error("client already exists")]
    AlreadyExists,
    #[error("client's personal data has been erased")]
    Erased,
    #[error("consent for {0:?} is already granted")]
    ConsentAlreadyGranted(ConsentScope),
    #[error("consent for {0:?} is not granted")]
    ConsentNotGranted(ConsentScope),
    #[error("{0}")]
    InvalidItems(ItemError),
    #[error("unknown instrument {0}")]
    UnknownInstrument(String),
}

impl ClientError {
    pub(crate) fn invalid(field: &str, message: &str) -> ClientError {
        ClientError::Invalid {
            field: field.to_string(),
            message: message.to_string(),
        }
    }
}

impl Rejection for ClientError {
    fn kind(&self) -> RejectionKind {
        match self {
            ClientError::Invalid { field, .. } => RejectionKind::Invalid {
                field: field.clone(),
            },
            ClientError::InvalidItems(e) => RejectionKind::Invalid {
                field: e.field.clone(),
            },
            ClientError::UnknownInstrument(_) => RejectionKind::Invalid {
                field: "instrument".into(),
            },
            ClientError::NotFound => RejectionKind::NotFound,
            ClientError::AlreadyExists => RejectionKind::Conflict,
            ClientError::Erased => RejectionKind::Rule { field: None },
            ClientError::ConsentAlreadyGranted(_) | ClientError::ConsentNotGranted(_) => {
                RejectionKind::Rule {
                    field: Some("scope".into()),
                }
            }
        }
    }
}

//! Issuing, listing and revoking API tokens. A token is a random secret shown once;
//! the store keeps its SHA-256 and a record (id, role, clinician, label, times).
//! Issuing and revoking are events in the log (aggregate `token`), written in the
//! transaction that changes the record, so the audit feed shows who granted access
//! to whom and when it ended.

use chrono::{DateTime, Utc};
use circle_events::token::TokenEvent;

use crate::auth::{hash_token, Role};
use crate::crypto::random_token;
use crate::store::{EventMetadata, NewEvent, Revocation, Store, StoreError, StoredToken};

/// The shortest token an operator may choose (`--admin-token`): 24 characters,
/// about 140 bits from a random alphanumeric string. Generated tokens are 50.
pub const MIN_TOKEN_CHARS: usize = 24;
/// Labels say what or whom a token is for; never the secret.
pub const MAX_LABEL_CHARS: usize = 200;

/// What a new token grants.
#[derive(Clone, Debug)]
pub struct Grant {
    pub role: Role,
    /// Required for clinicians, refused for everyone else.
    pub clinician_id: Option<String>,
    pub label: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Grant {
    pub fn new(role: Role, clinician_id: Option<String>, label: impl Into<String>) -> Grant {
        Grant {
            role,
            clinician_id,
            label: label.into(),
            expires_at: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a clinician token needs a clinician id, and only clinicians have one")]
    ClinicianIdMismatch,
    #[error("clinician id must be 1 to 64 characters from A-Z, a-z, 0-9, _ and -")]
    BadClinicianId,
    #[error("a token must be at least {MIN_TOKEN_CHARS} characters")]
    TooShort,
    #[error("label must be at most {MAX_LABEL_CHARS} characters, without control characters")]
    BadLabel,
    #[error("expires_at must be in the future")]
    AlreadyExpired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    /// The request field a refusal is about, for a 400 naming it.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            TokenError::ClinicianIdMismatch | TokenError::BadClinicianId => Some("clinician_id"),
            TokenError::TooShort => Some("token"),
            TokenError::BadLabel => Some("label"),
            TokenError::AlreadyExpired => Some("expires_at"),
            TokenError::Store(_) => None,
        }
    }
}

fn check(grant: &Grant, now: DateTime<Utc>) -> Result<(), TokenError> {
    if (grant.role == Role::Clinician) != grant.clinician_id.is_some() {
        return Err(TokenError::ClinicianIdMismatch);
    }
    if grant
        .clinician_id
        .as_deref()
        .is_some_and(|id| !circle_events::ids::is_valid_id(id))
    {
        return Err(TokenError::BadClinicianId);
    }
    // Tab, line feed and carriage return are text; other control characters not.
    let control = |c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    if grant.label.chars().count() > MAX_LABEL_CHARS || grant.label.chars().any(control) {
        return Err(TokenError::BadLabel);
    }
    if grant.expires_at.is_some_and(|at| at <= now) {
        return Err(TokenError::AlreadyExpired);
    }
    Ok(())
}

/// Issues a new random token; returns the secret (shown once, kept nowhere) and its
/// record.
pub async fn issue(
    store: &Store,
    grant: &Grant,
    by: EventMetadata,
) -> Result<(String, StoredToken), TokenError> {
    let secret = random_token();
    let record = store_token(store, &secret, grant, by).await?;
    Ok((
        secret,
        record.expect("a fresh random token is not stored yet"),
    ))
}

/// Stores a token the operator chose (`--admin-token`), if it is strong enough;
/// `None` when it was stored before (nothing written again).
pub async fn register(
    store: &Store,
    secret: &str,
    grant: &Grant,
    by: EventMetadata,
) -> Result<Option<StoredToken>, TokenError> {
    if secret.chars().count() < MIN_TOKEN_CHARS {
        return Err(TokenError::TooShort);
    }
    store_token(store, secret, grant, by).await
}

async fn store_token(
    store: &Store,
    secret: &str,
    grant: &Grant,
    by: EventMetadata,
) -> Result<Option<StoredToken>, TokenError> {
    let now = Utc::now();
    check(grant, now)?;
    let record = StoredToken {
        token_id: format!("tok_{}", uuid::Uuid::new_v4().simple()),
        role: grant.role.as_str().to_string(),
        clinician_id: grant.clinician_id.clone(),
        label: grant.label.clone(),
        created_at: now,
        expires_at: grant.expires_at,
        revoked_at: None,
    };
    let event = TokenEvent::TokenIssued {
        token_id: record.token_id.clone(),
        role: record.role.clone(),
        clinician_id: record.clinician_id.clone(),
        label: record.label.clone(),
        expires_at: record.expires_at,
    };
    let stored = store
        .issue_token(&hash_token(secret), &record, NewEvent::encode(&event, by))
        .await?;
    Ok(stored.then_some(record))
}

/// Revokes a token: from the commit on, every instance refuses it (each request
/// reads the token's record; see [`crate::auth::Authenticator::principal`]).
pub async fn revoke(
    store: &Store,
    token_id: &str,
    by: EventMetadata,
) -> Result<Revocation, TokenError> {
    let event = TokenEvent::TokenRevoked {
        token_id: token_id.to_string(),
    };
    Ok(store
        .revoke_token(token_id, NewEvent::encode(&event, by))
        .await?)
}

/// Whether any admin token is neither revoked nor expired.
pub async fn live_admin_exists(store: &Store) -> Result<bool, StoreError> {
    let now = Utc::now();
    Ok(store
        .list_tokens()
        .await?
        .iter()
        .any(|t| t.role == Role::Admin.as_str() && t.is_live(now)))
}

/// The actor of tokens issued from the command line or at start.
pub fn operator(action: &str) -> EventMetadata {
    EventMetadata::system(&format!("circle-{action}"), "operator")
}

/// Creates a token for tests and tools: role and clinician, no label, no expiry.
pub async fn create_token(
    store: &Store,
    role: Role,
    clinician_id: Option<String>,
) -> Result<String, TokenError> {
    let grant = Grant::new(role, clinician_id, "");
    Ok(issue(store, &grant, operator("cli")).await?.0)
}

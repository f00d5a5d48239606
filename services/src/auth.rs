//! Bearer tokens and roles. Tokens are random secrets; only their SHA-256 is stored.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::care_teams::CareTeamIndex;
use crate::commands::LoadError;
use crate::crypto::random_token;
use crate::store::{Store, StoreError, StoredToken};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including token management and erasure.
    Admin,
    /// Writes and reads for the groups they facilitate.
    Clinician,
    /// Reads everything, writes nothing.
    Auditor,
    /// Aggregate reports only.
    Reporter,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clinician => "clinician",
            Role::Auditor => "auditor",
            Role::Reporter => "reporter",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        [Role::Admin, Role::Clinician, Role::Auditor, Role::Reporter]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// Who is calling, as established from their token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    /// Set for clinicians: the id groups list among their facilitators.
    pub clinician_id: Option<String>,
    /// Recorded as the actor on events: the clinician id, or a token fingerprint.
    pub actor_id: String,
}

pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a clinician token needs --clinician-id, and only clinicians have one")]
    ClinicianIdMismatch,
    #[error("clinician id must be 1 to 64 characters from A-Z, a-z, 0-9, _ and -")]
    BadClinicianId,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates and stores a new token; returns the secret, which is not kept anywhere.
pub async fn create_token(
    store: &Store,
    role: Role,
    clinician_id: Option<String>,
) -> Result<String, TokenError> {
    let token = random_token();
    register_token(store, &token, role, clinician_id).await?;
    Ok(token)
}

/// Stores the hash of a token chosen by the operator (`--admin-token`).
pub async fn register_token(
    store: &Store,
    token: &str,
    role: Role,
    clinician_id: Option<String>,
) -> Result<(), TokenError> {
    if (role == Role::Clinician) != clinician_id.is_some() {
        return Err(TokenError::ClinicianIdMismatch);
    }
    if clinician_id
        .as_deref()
        .is_some_and(|id| !circle_events::ids::is_valid_id(id))
    {
        return Err(TokenError::BadClinicianId);
    }
    store
        .insert_token(
            &hash_token(token),
            &StoredToken {
                role: role.as_str().to_string(),
                clinician_id,
            },
        )
        .await?;
    Ok(())
}

/// Resolves bearer tokens, remembering the ones it has seen (tokens are immutable),
/// and answers which clients a clinician may see.
pub struct Authenticator {
    store: Store,
    known: RwLock<HashMap<String, Principal>>,
    care_teams: CareTeamIndex,
}

impl Authenticator {
    pub fn new(store: Store) -> Authenticator {
        Authenticator {
            care_teams: CareTeamIndex::new(store.clone()),
            store,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// Whether a clinician facilitates a group this client is or was a member of.
    pub async fn clinician_knows_client(
        &self,
        clinician_id: &str,
        client_id: &str,
    ) -> Result<bool, LoadError> {
        self.care_teams
            .clinician_knows_client(clinician_id, client_id)
            .await
    }

    /// Whether a clinician facilitates a group, from the same index.
    pub async fn clinician_facilitates(
        &self,
        clinician_id: &str,
        group_id: &str,
    ) -> Result<bool, LoadError> {
        self.care_teams.facilitates(clinician_id, group_id).await
    }

    /// Where a goal lives (its client and group), from the same index.
    pub async fn goal_home(
        &self,
        goal_id: &str,
    ) -> Result<Option<circle_projections::care_teams::GoalHome>, LoadError> {
        self.care_teams.goal_home(goal_id).await
    }

    pub async fn principal(&self, token: &str) -> Result<Option<Principal>, StoreError> {
        let hash = hash_token(token);
        if let Some(found) = self.known.read().ok().and_then(|k| k.get(&hash).cloned()) {
            return Ok(Some(found));
        }
        let Some(stored) = self.store.find_token(&hash).await? else {
            return Ok(None);
        };
        let Some(role) = Role::parse(&stored.role) else {
            return Ok(None);
        };
        let actor_id = stored
            .clinician_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", role.as_str(), &hash[..12]));
        let principal = Principal {
            role,
            clinician_id: stored.clinician_id,
            actor_id,
        };
        if let Ok(mut known) = self.known.write() {
            known.insert(hash, principal.clone());
        }
        Ok(Some(principal))
    }
}

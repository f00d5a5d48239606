//! Bearer tokens and roles. Tokens are random secrets; only their SHA-256 is stored
//! (issuing and revoking: [`crate::tokens`]).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::appender::{gather, Expected, SharedStoreError};
use crate::care_teams::CareTeamIndex;
use crate::commands::LoadError;
use crate::errors::ErrorChain;
use crate::store::{Store, StoreError, StoredToken};

pub use crate::tokens::{create_token, TokenError};

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
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

    pub fn parse(text: &str) -> Option<Role> {
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
    /// The token's id (not its secret): what the audit feed and `circle token` name.
    pub token_id: String,
}

/// A token's SHA-256 in lower-case hex: the only form of a token the store keeps.
/// Every authenticated request computes it, so it writes the digits straight into
/// one string (formatting each byte took 2.6% of the HTTP path's CPU).
pub fn hash_token(token: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(2 * digest.len());
    for byte in digest {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

impl Principal {
    /// Circle acting as itself (the demo seeder, an import, a benchmark): an admin
    /// with no token, recorded on events as `actor_id`.
    pub fn system(actor_id: impl Into<String>) -> Principal {
        Principal {
            role: Role::Admin,
            clinician_id: None,
            actor_id: actor_id.into(),
            token_id: "none".into(),
        }
    }
}

/// How a caller's token was found live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Read from the store for this request.
    Read,
    /// Known from an earlier read. The commit that acts on it checks that it is
    /// still live ([`crate::store::Append::token_hash`]); any other answer must read
    /// it again ([`Authenticator::still_live`]) before it leaves.
    AtCommit { token_hash: String },
}

/// Resolves bearer tokens and answers which clients a clinician may see.
pub struct Authenticator {
    lookups: mpsc::Sender<(String, LookupReply)>,
    care_teams: CareTeamIndex,
    /// Tokens found live by an earlier read, by hash. What they hold (role,
    /// clinician, id, expiry) never changes; only a revocation can end one, and that
    /// is asked again where it matters ([`Liveness::AtCommit`]). Unknown and refused
    /// tokens are never kept, so a caller cannot fill this with guesses.
    known: std::sync::Mutex<HashMap<String, StoredToken>>,
}

/// Most tokens [`Authenticator`] keeps known; when full it starts again empty (a
/// practice has tens of tokens, not thousands).
const MAX_KNOWN: usize = 4_096;

type LookupReply = oneshot::Sender<Result<Option<StoredToken>, SharedStoreError>>;

/// Most token hashes one query asks for.
const MAX_LOOKUPS: usize = 256;

/// The task that reads tokens for [`Authenticator::principal`]; run it (supervised)
/// with [`TokenLookupWorker::run`].
pub struct TokenLookupWorker {
    incoming: mpsc::Receiver<(String, LookupReply)>,
    store: Store,
}

impl Authenticator {
    /// The authenticator and the task that reads tokens for it.
    pub fn new(store: Store) -> (Authenticator, TokenLookupWorker) {
        let (lookups, incoming) = mpsc::channel(MAX_LOOKUPS * 4);
        let authenticator = Authenticator {
            lookups,
            care_teams: CareTeamIndex::new(store.clone()),
            known: std::sync::Mutex::new(HashMap::new()),
        };
        (authenticator, TokenLookupWorker { incoming, store })
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

    /// Every group a client has joined, from the same index.
    pub async fn groups_of_client(&self, client_id: &str) -> Result<Vec<String>, LoadError> {
        self.care_teams.groups_of_client(client_id).await
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

    /// The caller a token stands for, if it is stored, not revoked and not expired.
    /// Read from the store on every request, never cached: a revocation committed by
    /// any instance refuses the token on every instance from that moment (see
    /// ARCHITECTURE.md, "Tokens and keys"). The read is queued for
    /// [`TokenLookupWorker`], which answers the requests waiting at once with one
    /// query that starts after each of them arrived. An unknown, revoked and expired
    /// token are all `None`, so a caller cannot tell them apart.
    pub async fn principal(&self, token: &str) -> Result<Option<Principal>, SharedStoreError> {
        let hash = hash_token(token);
        Ok(self
            .read(&hash)
            .await?
            .and_then(|stored| principal_of(&hash, stored)))
    }

    /// The caller a token stands for, for a request whose every effect is a commit
    /// that checks the token ([`crate::policy::commits_only`]): a token read live
    /// before is not read again here ([`Liveness::AtCommit`]); the commit checks it,
    /// and the guard reads it before any other answer leaves. That saves the write
    /// path a round trip while keeping the promise of [`Self::principal`]: no write
    /// sent after a revocation commits.
    pub async fn caller_for_commit(
        &self,
        token: &str,
    ) -> Result<Option<(Principal, Liveness)>, SharedStoreError> {
        let hash = hash_token(token);
        let known = self.known().get(&hash).cloned();
        Ok(match known {
            Some(stored) => principal_of(&hash, stored)
                .map(|principal| (principal, Liveness::AtCommit { token_hash: hash })),
            None => self
                .read(&hash)
                .await?
                .and_then(|stored| principal_of(&hash, stored))
                .map(|principal| (principal, Liveness::Read)),
        })
    }

    /// Whether the token with this hash is live now, read from the store.
    pub async fn still_live(&self, token_hash: &str) -> Result<bool, SharedStoreError> {
        Ok(self
            .read(token_hash)
            .await?
            .is_some_and(|stored| stored.is_live(Utc::now())))
    }

    /// Reads a token's row (through [`TokenLookupWorker`]) and keeps what a live one
    /// holds for [`Self::caller_for_commit`]; a token found not live is forgotten.
    async fn read(&self, hash: &str) -> Result<Option<StoredToken>, SharedStoreError> {
        let stopped = || SharedStoreError(Arc::new(StoreError::Stopped));
        let (reply, answer) = oneshot::channel();
        self.lookups
            .send((hash.to_string(), reply))
            .await
            .map_err(|_| stopped())?;
        let stored = answer.await.map_err(|_| stopped())??;
        let mut known = self.known();
        match &stored {
            Some(token) if token.is_live(Utc::now()) => {
                if known.len() >= MAX_KNOWN && !known.contains_key(hash) {
                    known.clear();
                }
                known.insert(hash.to_string(), token.clone());
            }
            _ => {
                known.remove(hash);
            }
        }
        Ok(stored)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, StoredToken>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The principal of a stored token, if it is live now and its role is known.
fn principal_of(hash: &str, stored: StoredToken) -> Option<Principal> {
    if !stored.is_live(Utc::now()) {
        return None;
    }
    let role = Role::parse(&stored.role)?;
    let actor_id = stored
        .clinician_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", role.as_str(), &hash[..12]));
    Some(Principal {
        role,
        clinician_id: stored.clinician_id,
        actor_id,
        token_id: stored.token_id,
    })
}

impl TokenLookupWorker {
    /// Answers lookups until `stop`; then refuses new ones, answers those queued, and
    /// returns. Under load the requests that arrive while one query is in flight share
    /// the next (most carry the same few tokens), so authentication costs a fraction
    /// of a round trip per request instead of one.
    pub async fn run(&mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut queued = Vec::with_capacity(MAX_LOOKUPS);
        while gather(
            &mut self.incoming,
            &stop,
            MAX_LOOKUPS,
            Expected::NONE,
            &mut queued,
            |_| 1,
        )
        .await
        {
            let mut hashes: Vec<String> = queued.iter().map(|(hash, _)| hash.clone()).collect();
            hashes.sort_unstable();
            hashes.dedup();
            match self.store.find_tokens(&hashes).await {
                Ok(found) => {
                    let found: HashMap<String, StoredToken> = found.into_iter().collect();
                    for (hash, reply) in queued.drain(..) {
                        let _ = reply.send(Ok(found.get(&hash).cloned()));
                    }
                }
                Err(error) => {
                    // Answered (and logged) as a 503 where each request is handled.
                    tracing::debug!(error = %ErrorChain(&error), "reading tokens");
                    let error = SharedStoreError(Arc::new(error));
                    for (_, reply) in queued.drain(..) {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
        Ok(())
    }
}

impl crate::supervisor::Worker for TokenLookupWorker {
    fn run(
        &mut self,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        TokenLookupWorker::run(self, stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_kept_as_its_sha256_in_lower_case_hex() {
        // FIPS 180-2's first SHA-256 example: stored hashes must never change form.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

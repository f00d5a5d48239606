//! The event store: one ordered log of every event, owned by Circle.
//!
//! Two backends behind one type: PostgreSQL (production, tests) and SQLite in a data
//! directory (the embedded default). Both give the same guarantees, checked by one
//! test suite (`tests/store.rs`):
//!
//! - a global `position` that is gap-free and becomes visible in order: appends take a
//!   lock on the log head, so a reader following `position > n` never skips an event
//!   committed out of order;
//! - optimistic concurrency per aggregate (expected version);
//! - idempotency keys stored in the same transaction as the events they produced;
//! - per-client encryption keys stored beside, never inside, the events.
//!
//! Appends arrive in batches from the [`crate::appender`]: many concurrent commands
//! share one transaction, which is how the store goes past one-commit-per-command.

pub mod access;
mod copy;
pub mod cqrs;
mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use crate::audit::chain::AuditEvent;
use crate::audit::chain::{self, to_micros, ChainRows, Hash};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event store unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The store's disk (or quota) is full: nothing was written, and nothing will be
    /// until an operator frees space.
    #[error("the event store's disk is full")]
    DiskFull(#[source] sqlx::Error),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("applying migrations")]
    Migration(#[source] sqlx::Error),
    #[error("preparing the data directory")]
    DataDir(#[source] std::io::Error),
    #[error("the event store is shutting down")]
    Stopped,
}

impl From<sqlx::Error> for StoreError {
    /// Sorts a database error by what an operator must do about it.
    fn from(error: sqlx::Error) -> StoreError {
        if is_disk_full(&error) {
            StoreError::DiskFull(error)
        } else {
            StoreError::Unavailable(error)
        }
    }
}

/// SQLite's `SQLITE_FULL` (13, also for an I/O error on a full disk), PostgreSQL's
/// `disk_full` (53100), or `ENOSPC` from the operating system.
fn is_disk_full(error: &sqlx::Error) -> bool {
    const ENOSPC: i32 = 28;
    match error {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("13") | Some("53100"))
        }
        sqlx::Error::Io(io) => io.raw_os_error() == Some(ENOSPC),
        _ => false,
    }
}

/// Who did it and in which chain of actions: recorded with every event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub event_id: Uuid,
    /// Domain time: when it happened (may be back-filled by the caller).
    pub occurred_at: DateTime<Utc>,
    pub actor_id: String,
    pub actor_role: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

impl EventMetadata {
    /// Metadata for an event written now by a system actor, outside any request
    /// (loaders, benchmarks): fresh ids, no causation.
    pub fn system(actor_id: &str, actor_role: &str) -> EventMetadata {
        EventMetadata {
            event_id: Uuid::new_v4(),
            occurred_at: Utc::now(),
            actor_id: actor_id.to_string(),
            actor_role: actor_role.to_string(),
            correlation_id: Uuid::new_v4(),
            causation_id: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_type: String,
    pub event_version: u32,
    pub payload: Value,
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// A domain event in its stored form: type, current version, payload.
    pub fn encode<E: cqrs_es::DomainEvent>(event: &E, metadata: EventMetadata) -> NewEvent {
        let (event_type, event_version, payload) = circle_events::upcast::encode(event);
        NewEvent {
            event_type,
            event_version,
            payload,
            metadata,
        }
    }
}

/// Side effects on the key table that must commit atomically with their event.
#[derive(Clone, Debug)]
pub enum KeyAction {
    Store {
        client_id: String,
        wrapped_key: Vec<u8>,
    },
    Destroy {
        client_id: String,
    },
    /// Appends only while none of these clients is erased: checked under the log's
    /// lock, so no event naming a client commits after its `ClientErased`.
    RequireLive {
        client_ids: Vec<String>,
    },
}

/// Remembers the answer to a request so a retry with the same key gets it again.
#[derive(Clone, Debug)]
pub struct IdempotencyRecord {
    pub key: String,
    pub request_hash: Vec<u8>,
    pub status: u16,
    /// The `id` of the answer (the created resource, or the aggregate).
    pub response_id: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoredResponse {
    pub request_hash: Vec<u8>,
    pub status: u16,
    pub body: Value,
}

/// One command's events for one aggregate, appended all or nothing.
#[derive(Clone, Debug)]
pub struct Append {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub expected_version: u64,
    pub events: Vec<NewEvent>,
    pub idempotency: Option<IdempotencyRecord>,
    pub key_action: Option<KeyAction>,
    /// Decided on the state the batch's previous append to this stream leaves (a
    /// link of a chain, see [`crate::appender::Appender::append_chain`]): refused as
    /// a conflict unless that append commits, whatever the stream's version.
    pub chained: bool,
    /// The SHA-256 of the caller's token when the commit is to check that it is still
    /// live (not revoked, not expired): the caller's role and clinician were known
    /// from an earlier read (see [`crate::auth::Authenticator::caller`]). `None`: not
    /// checked here (the token was read for this request, or Circle itself writes).
    pub token_hash: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AppendResult {
    Committed {
        version: u64,
        last_position: i64,
    },
    /// Someone else appended first; `actual_version` is the stream's real version.
    Conflict {
        actual_version: u64,
    },
    /// The idempotency key was already used; here is what it answered.
    AlreadyAnswered(StoredResponse),
    /// A client the append requires live ([`KeyAction::RequireLive`]) is erased.
    ClientErased {
        client_id: String,
    },
    /// The caller's token ([`Append::token_hash`]) is no longer live.
    TokenNotLive,
}

/// An event as the log holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordedEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: u32,
    pub payload: Value,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub actor_id: String,
    pub actor_role: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

impl RecordedEvent {
    fn from_audit(e: AuditEvent, payload: Value) -> RecordedEvent {
        RecordedEvent {
            position: e.position,
            event_id: e.event_id,
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            sequence: e.sequence,
            event_type: e.event_type,
            event_version: e.event_version,
            payload,
            occurred_at: e.occurred_at,
            recorded_at: e.recorded_at,
            actor_id: e.actor_id,
            actor_role: e.actor_role,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
        }
    }
}

/// Which events an audit read selects besides `position > after`; `None` selects all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditFilter {
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub actor_id: Option<String>,
    /// `recorded_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// `recorded_at < to`.
    pub to: Option<DateTime<Utc>>,
}

/// A perfect subtree of the Merkle tree: (level, index from the left).
pub type NodeKey = (u32, u64);

/// A signed checkpoint as stored: the tree size, its root and the signed note.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeHead {
    pub size: i64,
    pub root: Hash,
    pub note: String,
}

fn stored_hash((key, bytes): (i64, Vec<u8>)) -> Result<(i64, Hash), StoreError> {
    chain::hash_from_slice(&bytes)
        .map(|hash| (key, hash))
        .ok_or_else(|| StoreError::Corrupt(format!("a stored hash at {key} is not 32 bytes")))
}

fn tree_head((size, root, note): (i64, Vec<u8>, String)) -> Result<TreeHead, StoreError> {
    let (size, root) = stored_hash((size, root))?;
    Ok(TreeHead { size, root, note })
}

/// What one transaction of appends did: a result per append, and the events of those
/// that committed, in log order, exactly as [`Store::read_raw`] returns them.
#[derive(Debug)]
pub struct Commit {
    pub results: Vec<AppendResult>,
    pub events: Vec<RawEvent>,
}

/// An event for projections: only what they read, the payload as stored text.
#[derive(Clone, Debug, PartialEq)]
pub struct RawEvent {
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub event_version: u32,
    pub payload: String,
}

/// Up to `limit` events in `(after, upto]` of the log recorded by `until`.
#[derive(Clone, Copy, Debug)]
pub struct Stretch {
    pub after: i64,
    pub upto: i64,
    pub until: DateTime<Utc>,
    pub limit: i64,
}

/// Proof of holding a lease at an epoch, checked by the writes made under it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fence {
    pub lease: String,
    pub holder: Uuid,
    pub epoch: i64,
}

/// The reports fold of every event up to `position`, serialized.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub position: i64,
    /// The latest `recorded_at` among those events (not always the last event's:
    /// positions follow commit order, recorded_at the clock before commit).
    pub max_recorded_at: DateTime<Utc>,
    pub state: String,
    /// The stretch of the log since the snapshot its writer kept before this one.
    pub range: Option<LogRange>,
    /// The digest of the settings its state was built under
    /// ([`crate::projector::ProjectionSettings::digest`]); `None` for snapshots kept
    /// before it was recorded, which are never resumed from.
    pub settings: Option<String>,
}

/// Every event in `(after, position]` of a snapshot was recorded at or after
/// `min_recorded_at`: an `as_of` fold before that time need not read the stretch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogRange {
    pub after: i64,
    pub min_recorded_at: DateTime<Utc>,
}

/// An API token as stored: its record; of the secret, only the hash is kept.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredToken {
    /// How operators name a token (`circle token revoke ID`); not a secret.
    pub token_id: String,
    pub role: String,
    pub clinician_id: Option<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl StoredToken {
    /// Neither revoked nor expired at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// Re-wraps one client's wrapped key (`client_id`, `wrapped`): `None` when it does
/// not open with the current master key.
pub type Rewrap<'a> = &'a dyn Fn(&str, &[u8]) -> Option<Vec<u8>>;

/// Every live key re-wrapped, or the first one that does not open, as an error that
/// aborts the rotation's transaction.
fn rewrap_all(
    rewrap: Rewrap<'_>,
    live: Vec<(String, Vec<u8>)>,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    live.into_iter()
        .map(|(client_id, wrapped)| match rewrap(&client_id, &wrapped) {
            Some(rewrapped) => Ok((client_id, rewrapped)),
            None => Err(StoreError::Corrupt(format!(
                "the key of client {client_id} does not open with the current master key"
            ))),
        })
        .collect()
}

/// What revoking a token found.
#[derive(Clone, Debug, PartialEq)]
pub enum Revocation {
    Revoked(StoredToken),
    /// Revoked before: nothing written.
    AlreadyRevoked(StoredToken),
    Unknown,
}

/// A token's event as the append that goes with its row change.
fn token_append(token_id: &str, version: u64, event: NewEvent) -> Append {
    Append {
        aggregate_type: circle_events::token::TOKEN_TYPE,
        aggregate_id: token_id.to_string(),
        expected_version: version,
        events: vec![event],
        idempotency: None,
        key_action: None,
        chained: false,
        token_hash: None,
    }
}

/// A token's event is appended under its row's lock, so anything but a commit means
/// the store is not as this code expects.
fn expect_committed(results: Vec<AppendResult>) -> Result<(), StoreError> {
    match results.as_slice() {
        [AppendResult::Committed { .. }] => Ok(()),
        other => Err(StoreError::Corrupt(format!(
            "a token event was not appended: {other:?}"
        ))),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ClientKey {
    Missing,
    Destroyed,
    Wrapped(Vec<u8>),
}

#[derive(Clone)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Postgres($store) => $call,
            Store::Sqlite($store) => $call,
        }
    };
}

impl Store {
    /// Connects to PostgreSQL and applies migrations.
    pub async fn postgres(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Ok(Store::Postgres(
            PgStore::connect(url, max_connections).await?,
        ))
    }

    /// Opens (or creates) the embedded store in `data_dir` and applies migrations.
    pub async fn embedded(data_dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open(data_dir).await?))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgresql",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Appends a batch of independent appends in one transaction. Each gets its own
    /// result; a conflict in one does not fail the others.
    pub async fn commit_batch(&self, batch: &[Append]) -> Result<Vec<AppendResult>, StoreError> {
        self.commit(batch).await.map(|commit| commit.results)
    }

    /// [`commit_batch`](Self::commit_batch), with the events it committed as the log
    /// now holds them (the appender hands them to this instance's projector).
    pub async fn commit(&self, batch: &[Append]) -> Result<Commit, StoreError> {
        dispatch!(self, s => s.commit(batch).await)
    }

    /// One aggregate's events with `sequence > after_sequence`, in order.
    pub async fn load_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        dispatch!(self, s => s.load_stream(aggregate_type, aggregate_id, after_sequence).await)
    }

    /// The log in global order: up to `limit` events with `position > after`.
    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        dispatch!(self, s => s.read_all(after, limit).await)
    }

    /// The log for auditors: up to `limit` events with `position > after` that `filter`
    /// selects, in order, with the exact payload text and the stored chain hash.
    pub async fn read_audit(
        &self,
        after: i64,
        limit: i64,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        dispatch!(self, s => s.read_audit(after, limit, filter).await)
    }

    /// One stream for auditors: up to `limit` of its events with `position > after`,
    /// in order, with the exact payload text and the stored chain hash.
    pub async fn read_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        dispatch!(self, s => s.read_stream(aggregate_type, aggregate_id, after, limit).await)
    }

    /// `(sequence, position)` of the stream's events at these sequences (those that exist).
    pub async fn stream_positions(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequences: &[i64],
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        dispatch!(self, s => s.stream_positions(aggregate_type, aggregate_id, sequences).await)
    }

    /// Up to `limit` events with `position > after`, in order, packed for the chain
    /// check: position, stored hash, canonical tail (PostgreSQL: one binary `COPY`).
    pub async fn chain_rows(&self, after: i64, limit: i64) -> Result<ChainRows, StoreError> {
        dispatch!(self, s => s.chain_rows(after, limit).await)
    }

    /// The stored chain hashes at these positions (those that exist).
    pub async fn chain_hashes(&self, positions: &[i64]) -> Result<Vec<(i64, Hash)>, StoreError> {
        dispatch!(self, s => s.chain_hashes(positions).await)
    }

    /// The stored Merkle subtrees among `keys`.
    pub async fn merkle_nodes(&self, keys: &[NodeKey]) -> Result<Vec<(NodeKey, Hash)>, StoreError> {
        dispatch!(self, s => s.merkle_nodes(keys).await)
    }

    /// Keeps Merkle subtrees; one already kept stays as it is.
    pub async fn save_merkle_nodes(&self, nodes: &[(NodeKey, Hash)]) -> Result<(), StoreError> {
        dispatch!(self, s => s.save_merkle_nodes(nodes).await)
    }

    /// Stores a signed checkpoint unless one of that size exists, while `fence` is
    /// current. Returns the checkpoint stored at that size (the earlier one if there
    /// was one: a size is never signed twice), or `None` when fenced out.
    pub async fn save_tree_head(
        &self,
        head: &TreeHead,
        fence: &Fence,
    ) -> Result<Option<TreeHead>, StoreError> {
        dispatch!(self, s => s.save_tree_head(head, fence).await)
    }

    /// The checkpoint of this tree size, or the latest when `None`.
    pub async fn tree_head(&self, size: Option<i64>) -> Result<Option<TreeHead>, StoreError> {
        dispatch!(self, s => s.tree_head(size).await)
    }

    /// Every checkpoint, by tree size.
    pub async fn tree_heads(&self) -> Result<Vec<TreeHead>, StoreError> {
        dispatch!(self, s => s.tree_heads().await)
    }

    /// Like [`Store::read_all`], lean: for projections that only fold payloads.
    pub async fn read_raw(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, StoreError> {
        dispatch!(self, s => s.read_raw(after, limit).await)
    }

    /// Like [`Store::read_raw`] up to position `upto`, keeping only events recorded by
    /// `until`: the filter
    /// runs in the database, so an `as_of` in the middle of the log does not fetch and
    /// decode the rest of it.
    pub async fn read_raw_until(&self, stretch: Stretch) -> Result<Vec<RawEvent>, StoreError> {
        dispatch!(self, s => s.read_raw_until(stretch).await)
    }

    pub async fn head_position(&self) -> Result<i64, StoreError> {
        dispatch!(self, s => s.head_position().await)
    }

    /// Ids of all aggregates of a type, in creation order.
    pub async fn aggregate_ids(&self, aggregate_type: &str) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.aggregate_ids(aggregate_type).await)
    }

    pub async fn find_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        dispatch!(self, s => s.find_response(key).await)
    }

    /// The answers stored for any of `keys`, in one query (the import looks its rows'
    /// keys up a batch at a time).
    pub async fn find_responses(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, StoredResponse>, StoreError> {
        dispatch!(self, s => s.find_responses(keys).await)
    }

    pub async fn client_key(&self, client_id: &str) -> Result<ClientKey, StoreError> {
        dispatch!(self, s => s.client_key(client_id).await)
    }

    /// After an erasure or a key rotation: makes the key table's files forget
    /// overwritten keys (PostgreSQL: `VACUUM FULL client_keys`; SQLite: a truncating
    /// WAL checkpoint, with `secure_delete` on). Backups and archived WAL are not
    /// touched: see ARCHITECTURE.md, "Tokens and keys".
    pub async fn compact_keys(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.compact_keys().await)
    }

    /// Replaces every live wrapped client key with `rewrap(client_id, wrapped)` and
    /// the key check with `key_check`, in one transaction (`circle keys rotate`);
    /// a key `rewrap` cannot open aborts it all. Returns how many keys were rewrapped.
    pub async fn rewrap_keys(
        &self,
        rewrap: Rewrap<'_>,
        key_check: &[u8],
    ) -> Result<usize, StoreError> {
        dispatch!(self, s => s.rewrap_keys(rewrap, key_check).await)
    }

    /// The master key's check value, once a start has stored it.
    pub async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, s => s.key_check().await)
    }

    /// Stores the check value unless one is stored already.
    pub async fn save_key_check(&self, sealed: &[u8]) -> Result<(), StoreError> {
        dispatch!(self, s => s.save_key_check(sealed).await)
    }

    /// Some live wrapped client key: sealed data exists that a master key must open.
    pub async fn any_wrapped_key(&self) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        dispatch!(self, s => s.any_wrapped_key().await)
    }

    /// Stores a new token with its `TokenIssued` event in one transaction; `false`
    /// (nothing written) when a token with this hash exists already.
    pub async fn issue_token(
        &self,
        token_hash: &str,
        token: &StoredToken,
        event: NewEvent,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.issue_token(token_hash, token, event).await)
    }

    /// Revokes a token with its `TokenRevoked` event in one transaction.
    pub async fn revoke_token(
        &self,
        token_id: &str,
        event: NewEvent,
    ) -> Result<Revocation, StoreError> {
        dispatch!(self, s => s.revoke_token(token_id, event).await)
    }

    /// Every token, revoked and expired ones included, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        dispatch!(self, s => s.list_tokens().await)
    }

    /// The stored tokens among these hashes, each with its hash; unknown ones are
    /// absent.
    pub async fn find_tokens(
        &self,
        token_hashes: &[String],
    ) -> Result<Vec<(String, StoredToken)>, StoreError> {
        dispatch!(self, s => s.find_tokens(token_hashes).await)
    }

    /// The position a projection's persisted state reflects, without the state.
    pub async fn checkpoint_position(&self, name: &str) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.checkpoint_position(name).await)
    }

    /// A projection's persisted state and the position it reflects.
    pub async fn load_checkpoint(&self, name: &str) -> Result<Option<(i64, String)>, StoreError> {
        dispatch!(self, s => s.load_checkpoint(name).await)
    }

    /// Persists state and position together, in one statement. With a fence, only
    /// while that lease is still held at that epoch: `false` means fenced out.
    pub async fn save_checkpoint(
        &self,
        name: &str,
        position: i64,
        state: &str,
        fence: Option<&Fence>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.save_checkpoint(name, position, state, fence).await)
    }

    /// Takes or renews the lease `name` for `holder` until `ttl` from now (database
    /// time). Returns the lease's epoch, or `None` while another holder's is unexpired.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: Uuid,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.acquire_lease(name, holder, ttl).await)
    }

    /// Lets the lease expire now, so another instance takes over without waiting.
    pub async fn release_lease(&self, name: &str, holder: Uuid) -> Result<(), StoreError> {
        dispatch!(self, s => s.release_lease(name, holder).await)
    }

    /// Keeps a snapshot of the reports fold; one already kept at its position under
    /// its settings stays (a fold's state at a position is the same whoever took it),
    /// and one under other settings is kept beside it.
    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        dispatch!(self, s => s.save_snapshot(snapshot).await)
    }

    /// The log stretches that snapshot rows beyond `after` vouch for, by position.
    pub async fn snapshot_ranges(&self, after: i64) -> Result<Vec<(i64, LogRange)>, StoreError> {
        dispatch!(self, s => s.snapshot_ranges(after).await)
    }

    /// The snapshot at the highest position whose events were all recorded by
    /// `recorded_by` (any snapshot when `None`).
    pub async fn latest_snapshot(
        &self,
        recorded_by: Option<DateTime<Utc>>,
        settings: Option<&str>,
    ) -> Result<Option<Snapshot>, StoreError> {
        dispatch!(self, s => s.newest_snapshot(recorded_by, settings, -1).await)
    }

    /// The snapshot at the highest position beyond `after` whose state was built
    /// under `settings` (a [`crate::projector::ProjectionSettings::digest`]): a
    /// point the live reports may resume from.
    pub async fn resumable_snapshot(
        &self,
        settings: &str,
        after: i64,
    ) -> Result<Option<Snapshot>, StoreError> {
        dispatch!(self, s => s.newest_snapshot(None, Some(settings), after).await)
    }

    /// Reachable and migrated.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }
}

/// The answer a successful write gives, also what an idempotency key replays.
pub fn write_response(id: &str, version: u64, position: i64) -> Value {
    serde_json::json!({ "id": id, "version": version, "position": position })
}

//! Embedded backend: SQLite in the data directory, for running Circle without
//! PostgreSQL. SQLite has one writer at a time, so positions taken inside a write
//! transaction are commit-ordered by construction.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use uuid::Uuid;

use super::*;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("migrations/sqlite/0002_projection_checkpoints.sql"),
    ),
    (3, include_str!("migrations/sqlite/0003_leases.sql")),
    (
        4,
        include_str!("migrations/sqlite/0004_practice_snapshots.sql"),
    ),
    (5, include_str!("migrations/sqlite/0005_access_log.sql")),
    (
        6,
        include_str!("migrations/sqlite/0006_snapshot_ranges.sql"),
    ),
    (
        8,
        include_str!("migrations/sqlite/0008_token_lifecycle.sql"),
    ),
    (9, include_str!("migrations/sqlite/0009_key_check.sql")),
    (10, include_str!("migrations/sqlite/0010_append_only.sql")),
    (11, include_str!("migrations/sqlite/0011_audit_tree.sql")),
    (
        12,
        include_str!("migrations/sqlite/0012_snapshot_settings.sql"),
    ),
    (
        13,
        include_str!("migrations/sqlite/0013_snapshots_keyed_by_settings.sql"),
    ),
];

/// Before this migration makes events append-only, the chain is back-filled.
const CHAIN_MIGRATION: i64 = 10;

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Only the service's user may enter the data directory (0700) or read its files
/// (0600): they hold the log, the wrapped client keys and token hashes. The database
/// file is created 0600 before SQLite opens it, because SQLite gives its `-wal` and
/// `-shm` files the database file's mode.
fn restrict(data_dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
        let database = data_dir.join("circle.sqlite3");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&database)?;
        for name in ["circle.sqlite3", "circle.sqlite3-wal", "circle.sqlite3-shm"] {
            let path = data_dir.join(name);
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

impl SqliteStore {
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(StoreError::DataDir)?;
        restrict(data_dir).map_err(StoreError::DataDir)?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(data_dir.join("circle.sqlite3"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Deleted and overwritten content is zeroed, not left in free pages: an
            // erased client's wrapped key must not stay readable in the file.
            .pragma("secure_delete", "on")
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // After SQLITE_FULL (or an I/O error) SQLite has already rolled the
            // transaction back, so the ROLLBACK sqlx sends on drop fails and the
            // connection still counts itself inside a transaction: every later BEGIN
            // on it would fail, long after the disk has space again. Flush the
            // rollback, and retire a connection that is still not clean.
            .after_release(|conn, _| {
                Box::pin(async move {
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options)
            .await?;
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await.map_err(StoreError::Migration)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Migration)?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::Migration)?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            if *version == CHAIN_MIGRATION {
                backfill_chain(&mut tx).await?;
            }
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Migration)?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(timestamp(&Utc::now()))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Migration)?;
        }
        tx.commit().await.map_err(StoreError::Migration)?;
        Ok(())
    }

    pub async fn commit(&self, batch: &[Append]) -> Result<Commit, StoreError> {
        // IMMEDIATE takes the write lock up front instead of failing to upgrade later.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let commit = append_batch(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(commit)
    }

    pub async fn load_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND sequence > ?
             ORDER BY sequence",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after_sequence as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(recorded_event).collect()
    }

    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM events WHERE position > ? ORDER BY position LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(recorded_event).collect()
    }

    pub async fn read_audit(
        &self,
        after: i64,
        limit: i64,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE position > ?1
               AND (?3 IS NULL OR aggregate_type = ?3)
               AND (?4 IS NULL OR aggregate_id = ?4)
               AND (?5 IS NULL OR actor_id = ?5)
               AND (?6 IS NULL OR recorded_at >= ?6)
               AND (?7 IS NULL OR recorded_at < ?7)
             ORDER BY position LIMIT ?2",
        )
        .bind(after)
        .bind(limit)
        .bind(&filter.aggregate_type)
        .bind(&filter.aggregate_id)
        .bind(&filter.actor_id)
        .bind(filter.from.as_ref().map(timestamp))
        .bind(filter.to.as_ref().map(timestamp))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_event).collect()
    }

    pub async fn read_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM events
             WHERE aggregate_type = ?1 AND aggregate_id = ?2 AND position > ?3
             ORDER BY sequence LIMIT ?4",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_event).collect()
    }

    pub async fn stream_positions(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequences: &[i64],
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let list = serde_json::to_string(sequences).map_err(|e| corrupt("sequences", e))?;
        Ok(sqlx::query_as(
            "SELECT sequence, position FROM events
             WHERE aggregate_type = ?1 AND aggregate_id = ?2
               AND sequence IN (SELECT value FROM json_each(?3))",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(list)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn chain_rows(&self, after: i64, limit: i64) -> Result<ChainRows, StoreError> {
        let events = self
            .read_audit(after, limit, &AuditFilter::default())
            .await?;
        let mut rows = ChainRows::default();
        for event in &events {
            rows.push_event(event);
        }
        Ok(rows)
    }

    pub async fn chain_hashes(&self, positions: &[i64]) -> Result<Vec<(i64, Hash)>, StoreError> {
        let list = serde_json::to_string(positions).map_err(|e| corrupt("positions", e))?;
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT position, hash FROM events
             WHERE position IN (SELECT value FROM json_each(?))",
        )
        .bind(list)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(stored_hash).collect()
    }

    pub async fn merkle_nodes(&self, keys: &[NodeKey]) -> Result<Vec<(NodeKey, Hash)>, StoreError> {
        let list = serde_json::to_string(keys).map_err(|e| corrupt("node keys", e))?;
        let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT n.level, n.node_index, n.hash FROM json_each(?) AS k
             JOIN merkle_nodes n
               ON n.level = k.value ->> 0 AND n.node_index = k.value ->> 1",
        )
        .bind(list)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(level, index, hash)| {
                let (_, hash) = stored_hash((index, hash))?;
                Ok(((level as u32, index as u64), hash))
            })
            .collect()
    }

    pub async fn save_merkle_nodes(&self, nodes: &[(NodeKey, Hash)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for ((level, index), hash) in nodes {
            sqlx::query(
                "INSERT INTO merkle_nodes (level, node_index, hash) VALUES (?, ?, ?)
                 ON CONFLICT DO NOTHING",
            )
            .bind(*level as i64)
            .bind(*index as i64)
            .bind(hash.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn save_tree_head(
        &self,
        head: &TreeHead,
        fence: &Fence,
    ) -> Result<Option<TreeHead>, StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (tree_size, root, note, created_at)
             SELECT ?1, ?2, ?3, ?4
             WHERE EXISTS (SELECT 1 FROM leases WHERE name = ?5 AND holder = ?6 AND epoch = ?7)
             ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(head.size)
        .bind(head.root.as_slice())
        .bind(&head.note)
        .bind(timestamp(&Utc::now()))
        .bind(&fence.lease)
        .bind(fence.holder.to_string())
        .bind(fence.epoch)
        .execute(&self.pool)
        .await?;
        self.tree_head(Some(head.size)).await
    }

    pub async fn tree_head(&self, size: Option<i64>) -> Result<Option<TreeHead>, StoreError> {
        let row: Option<(i64, Vec<u8>, String)> = sqlx::query_as(
            "SELECT tree_size, root, note FROM audit_checkpoints
             WHERE ?1 IS NULL OR tree_size = ?1
             ORDER BY tree_size DESC LIMIT 1",
        )
        .bind(size)
        .fetch_optional(&self.pool)
        .await?;
        row.map(tree_head).transpose()
    }

    pub async fn tree_heads(&self) -> Result<Vec<TreeHead>, StoreError> {
        let rows: Vec<(i64, Vec<u8>, String)> = sqlx::query_as(
            "SELECT tree_size, root, note FROM audit_checkpoints ORDER BY tree_size",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(tree_head).collect()
    }

    pub async fn read_raw(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, StoreError> {
        let rows: Vec<RawSqliteRow> = sqlx::query_as(
            "SELECT position, recorded_at, aggregate_type, aggregate_id, event_type, event_version,
                    payload
             FROM events WHERE position > ? ORDER BY position LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        raw_events(rows)
    }

    pub async fn read_raw_until(&self, stretch: Stretch) -> Result<Vec<RawEvent>, StoreError> {
        let rows: Vec<RawSqliteRow> = sqlx::query_as(
            "SELECT position, recorded_at, aggregate_type, aggregate_id, event_type, event_version,
                    payload
             FROM events WHERE position > ? AND position <= ? AND recorded_at <= ?
             ORDER BY position LIMIT ?",
        )
        .bind(stretch.after)
        .bind(stretch.upto)
        .bind(timestamp(&stretch.until))
        .bind(stretch.limit)
        .fetch_all(&self.pool)
        .await?;
        raw_events(rows)
    }

    pub async fn head_position(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn aggregate_ids(&self, aggregate_type: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT aggregate_id FROM events WHERE aggregate_type = ? AND sequence = 1
             ORDER BY position",
        )
        .bind(aggregate_type)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn find_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        find_response(&mut conn, key).await
    }

    pub async fn find_responses(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, StoredResponse>, StoreError> {
        let keys = serde_json::to_string(keys).map_err(|e| corrupt("idempotency keys", e))?;
        let rows: Vec<(String, Vec<u8>, i64, String)> = sqlx::query_as(
            "SELECT key, request_hash, status, response FROM idempotency_keys
             WHERE key IN (SELECT value FROM json_each(?))",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(key, request_hash, status, body)| {
                let body =
                    serde_json::from_str(&body).map_err(|e| corrupt("idempotency response", e))?;
                let stored = StoredResponse {
                    request_hash,
                    status: status as u16,
                    body,
                };
                Ok((key, stored))
            })
            .collect()
    }

    pub async fn client_key(&self, client_id: &str) -> Result<ClientKey, StoreError> {
        let row: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT wrapped_key FROM client_keys WHERE client_id = ?")
                .bind(client_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            None => ClientKey::Missing,
            Some((None,)) => ClientKey::Destroyed,
            Some((Some(key),)) => ClientKey::Wrapped(key),
        })
    }

    /// With `secure_delete` on, a destroyed key's bytes are zeroed in the database
    /// pages; the WAL still holds the old pages until a checkpoint copies them back
    /// and truncates it. A reader can hold the checkpoint up: retry briefly.
    pub async fn compact_keys(&self) -> Result<(), StoreError> {
        for _ in 0..50 {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            if busy == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(StoreError::Corrupt(
            "the WAL could not be truncated: readers kept it busy".into(),
        ))
    }

    pub async fn rewrap_keys(
        &self,
        rewrap: Rewrap<'_>,
        key_check: &[u8],
    ) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let live: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT client_id, wrapped_key FROM client_keys
             WHERE wrapped_key IS NOT NULL ORDER BY client_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let count = live.len();
        for (client_id, rewrapped) in rewrap_all(rewrap, live)? {
            sqlx::query("UPDATE client_keys SET wrapped_key = ? WHERE client_id = ?")
                .bind(rewrapped)
                .bind(&client_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT OR REPLACE INTO key_check (id, sealed, created_at) VALUES (1, ?, ?)")
            .bind(key_check)
            .bind(timestamp(&Utc::now()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(count)
    }

    pub async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT sealed FROM key_check WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn save_key_check(&self, sealed: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT OR IGNORE INTO key_check (id, sealed) VALUES (1, ?)")
            .bind(sealed)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn any_wrapped_key(&self) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT client_id, wrapped_key FROM client_keys
             WHERE wrapped_key IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn issue_token(
        &self,
        token_hash: &str,
        token: &StoredToken,
        event: NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO api_tokens (token_hash, token_id, role, clinician_id,
                 label, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(token_hash)
        .bind(&token.token_id)
        .bind(&token.role)
        .bind(&token.clinician_id)
        .bind(&token.label)
        .bind(timestamp(&token.created_at))
        .bind(token.expires_at.as_ref().map(timestamp))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            return Ok(false);
        }
        append_token_event(&mut tx, &token.token_id, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn revoke_token(
        &self,
        token_id: &str,
        event: NewEvent,
    ) -> Result<Revocation, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let found = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_id = ?"
        ))
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = found else {
            return Ok(Revocation::Unknown);
        };
        let mut token = stored_token(&row)?;
        if token.revoked_at.is_some() {
            return Ok(Revocation::AlreadyRevoked(token));
        }
        let now = Utc::now();
        sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE token_id = ?")
            .bind(timestamp(&now))
            .bind(token_id)
            .execute(&mut *tx)
            .await?;
        append_token_event(&mut tx, token_id, event).await?;
        tx.commit().await?;
        token.revoked_at = Some(now);
        Ok(Revocation::Revoked(token))
    }

    /// One indexed read per hash on one connection: the embedded store is local, so
    /// there is no round trip to save by building an `IN` list.
    pub async fn find_tokens(
        &self,
        token_hashes: &[String],
    ) -> Result<Vec<(String, StoredToken)>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let mut found = Vec::with_capacity(token_hashes.len());
        for hash in token_hashes {
            if let Some(token) = find_token(&mut connection, hash).await? {
                found.push((hash.clone(), token));
            }
        }
        Ok(found)
    }

    pub async fn list_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, token_id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(stored_token)
        .collect()
    }

    pub async fn checkpoint_position(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn load_checkpoint(&self, name: &str) -> Result<Option<(i64, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT position, state FROM projection_checkpoints WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO practice_snapshots
                 (position, max_recorded_at, state, created_at, range_after, range_min_recorded_at,
                  settings)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(snapshot.position)
        .bind(timestamp(&snapshot.max_recorded_at))
        .bind(&snapshot.state)
        .bind(timestamp(&Utc::now()))
        .bind(snapshot.range.map(|r| r.after))
        .bind(snapshot.range.map(|r| timestamp(&r.min_recorded_at)))
        .bind(&snapshot.settings)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// See the PostgreSQL store's `newest_snapshot`.
    pub async fn newest_snapshot(
        &self,
        recorded_by: Option<DateTime<Utc>>,
        settings: Option<&str>,
        after: i64,
    ) -> Result<Option<Snapshot>, StoreError> {
        type Row = (
            i64,
            String,
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT position, max_recorded_at, state, range_after, range_min_recorded_at,
                    settings
             FROM practice_snapshots
             WHERE (?1 IS NULL OR max_recorded_at <= ?1) AND (?2 IS NULL OR settings = ?2)
               AND position > ?3
             ORDER BY position DESC LIMIT 1",
        )
        .bind(recorded_by.as_ref().map(timestamp))
        .bind(settings)
        .bind(after)
        .fetch_optional(&self.pool)
        .await?;
        let time = |text: &str, what| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| corrupt(what, e))
        };
        row.map(|(position, max_recorded_at, state, after, min, settings)| {
            let range = match (after, min) {
                (Some(after), Some(min)) => Some(LogRange {
                    after,
                    min_recorded_at: time(&min, "range_min_recorded_at")?,
                }),
                _ => None,
            };
            Ok(Snapshot {
                position,
                max_recorded_at: time(&max_recorded_at, "max_recorded_at")?,
                state,
                range,
                settings,
            })
        })
        .transpose()
    }

    pub async fn snapshot_ranges(&self, after: i64) -> Result<Vec<(i64, LogRange)>, StoreError> {
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT DISTINCT position, range_after, range_min_recorded_at FROM practice_snapshots
             WHERE position > ? AND range_after IS NOT NULL
               AND range_min_recorded_at IS NOT NULL
             ORDER BY position",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(position, after, min_recorded_at)| {
                let min_recorded_at = DateTime::parse_from_rfc3339(&min_recorded_at)
                    .map_err(|e| corrupt("range_min_recorded_at", e))?
                    .with_timezone(&Utc);
                Ok((
                    position,
                    LogRange {
                        after,
                        min_recorded_at,
                    },
                ))
            })
            .collect()
    }

    pub async fn save_checkpoint(
        &self,
        name: &str,
        position: i64,
        state: &str,
        fence: Option<&Fence>,
    ) -> Result<bool, StoreError> {
        // `WHERE true` lets SQLite parse the upsert after a SELECT.
        let saved = sqlx::query(
            "INSERT INTO projection_checkpoints (name, position, state, updated_at)
             SELECT ?1, ?2, ?3, ?4
             WHERE (?5 IS NULL OR EXISTS (
                 SELECT 1 FROM leases WHERE name = ?5 AND holder = ?6 AND epoch = ?7)) AND true
             ON CONFLICT (name) DO UPDATE
             SET position = excluded.position, state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(position)
        .bind(state)
        .bind(timestamp(&Utc::now()))
        .bind(fence.map(|f| f.lease.as_str()))
        .bind(fence.map(|f| f.holder.to_string()))
        .bind(fence.map(|f| f.epoch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(saved > 0)
    }

    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: Uuid,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        let now = Utc::now().timestamp_millis();
        Ok(sqlx::query_scalar(
            "INSERT INTO leases AS l (name, holder, epoch, expires_at) VALUES (?1, ?2, 1, ?3)
             ON CONFLICT (name) DO UPDATE
             SET holder = excluded.holder,
                 epoch = CASE WHEN l.holder = excluded.holder THEN l.epoch ELSE l.epoch + 1 END,
                 expires_at = excluded.expires_at
             WHERE l.holder = excluded.holder OR l.expires_at < ?4
             RETURNING epoch",
        )
        .bind(name)
        .bind(holder.to_string())
        .bind(now + ttl.as_millis() as i64)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn release_lease(&self, name: &str, holder: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(holder.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }
}

/// A stored token by the SHA-256 of its secret.
async fn find_token(
    connection: &mut sqlx::SqliteConnection,
    hash: &str,
) -> Result<Option<StoredToken>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?"
    ))
    .bind(hash)
    .fetch_optional(&mut *connection)
    .await?;
    row.as_ref().map(stored_token).transpose()
}

/// Appends a batch inside a write transaction the caller holds (and commits).
async fn append_batch(
    tx: &mut sqlx::SqliteConnection,
    batch: &[Append],
) -> Result<Commit, StoreError> {
    let last: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (head, mut previous) = match last {
        None => (0, chain::GENESIS),
        Some((position, hash)) => (
            position,
            chain::hash_from_slice(&hash)
                .ok_or_else(|| corrupt("hash", format!("{} bytes at {position}", hash.len())))?,
        ),
    };
    let mut versions = HashMap::new();
    for append in batch {
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(sequence), 0) FROM events
             WHERE aggregate_type = ? AND aggregate_id = ?",
        )
        .bind(append.aggregate_type)
        .bind(&append.aggregate_id)
        .fetch_one(&mut *tx)
        .await?;
        versions.insert(
            (
                append.aggregate_type.to_string(),
                append.aggregate_id.clone(),
            ),
            version as u64,
        );
    }
    let mut responses = HashMap::new();
    for record in batch.iter().filter_map(|a| a.idempotency.as_ref()) {
        if let Some(found) = find_response(&mut *tx, &record.key).await? {
            responses.insert(record.key.clone(), found);
        }
    }
    let mut erased = std::collections::HashSet::new();
    for append in batch {
        if let Some(KeyAction::RequireLive { client_ids }) = &append.key_action {
            for client_id in client_ids {
                let destroyed: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM client_keys WHERE client_id = ? AND wrapped_key IS NULL",
                )
                .bind(client_id)
                .fetch_optional(&mut *tx)
                .await?;
                if destroyed.is_some() {
                    erased.insert(client_id.clone());
                }
            }
        }
    }
    // Tokens the commit is to check ([`Append::token_hash`]), each read once: those
    // no longer live.
    let mut dead_tokens = std::collections::HashSet::new();
    let mut read_tokens = std::collections::HashSet::new();
    let now = Utc::now();
    for hash in batch.iter().filter_map(|a| a.token_hash.as_ref()) {
        if !read_tokens.insert(hash) {
            continue;
        }
        let live = find_token(&mut *tx, hash)
            .await?
            .is_some_and(|token| token.is_live(now));
        if !live {
            dead_tokens.insert(hash.clone());
        }
    }
    let plan = plan_batch(
        batch,
        head,
        |t, i| {
            versions
                .get(&(t.to_string(), i.to_string()))
                .copied()
                .unwrap_or(0)
        },
        |key| responses.get(key).cloned(),
        erased,
        &dead_tokens,
    );
    let recorded = to_micros(Utc::now());
    let recorded_at = timestamp(&recorded);
    let mut events = Vec::new();
    for &(index, first_position, first_sequence) in &plan.accepted {
        let append = &batch[index];
        for (offset, event) in append.events.iter().enumerate() {
            let meta = &event.metadata;
            let position = first_position + offset as i64;
            let sequence = first_sequence + offset as i64;
            let payload = event.payload.to_string();
            let occurred = to_micros(meta.occurred_at);
            // Chained here, in the transaction that takes the position.
            let tail = chain::tail(&chain::EventFields {
                event_id: meta.event_id,
                aggregate_type: append.aggregate_type,
                aggregate_id: &append.aggregate_id,
                sequence,
                event_type: &event.event_type,
                event_version: event.event_version,
                payload: &payload,
                occurred_at: occurred,
                recorded_at: recorded,
                actor_id: &meta.actor_id,
                actor_role: &meta.actor_role,
                correlation_id: meta.correlation_id,
                causation_id: meta.causation_id,
            });
            previous = chain::chain(&previous, position, &tail);
            events.push(RawEvent {
                position,
                recorded_at: recorded,
                aggregate_type: append.aggregate_type.to_string(),
                aggregate_id: append.aggregate_id.clone(),
                event_type: event.event_type.clone(),
                event_version: event.event_version,
                payload: payload.clone(),
            });
            sqlx::query(
                "INSERT INTO events (position, event_id, aggregate_type, aggregate_id,
                    sequence, event_type, event_version, payload, occurred_at, recorded_at,
                    actor_id, actor_role, correlation_id, causation_id, hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(position)
            .bind(meta.event_id.to_string())
            .bind(append.aggregate_type)
            .bind(&append.aggregate_id)
            .bind(sequence)
            .bind(&event.event_type)
            .bind(event.event_version as i64)
            .bind(payload)
            .bind(timestamp(&occurred))
            .bind(&recorded_at)
            .bind(&meta.actor_id)
            .bind(&meta.actor_role)
            .bind(meta.correlation_id.to_string())
            .bind(meta.causation_id.map(|c| c.to_string()))
            .bind(previous.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        if let (
            Some(record),
            AppendResult::Committed {
                version,
                last_position,
            },
        ) = (&append.idempotency, &plan.results[index])
        {
            sqlx::query(
                "INSERT INTO idempotency_keys (key, request_hash, status, response, created_at)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&record.key)
            .bind(&record.request_hash)
            .bind(record.status as i64)
            .bind(write_response(&record.response_id, *version, *last_position).to_string())
            .bind(&recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        match &append.key_action {
            Some(KeyAction::Store {
                client_id,
                wrapped_key,
            }) => {
                sqlx::query(
                    "INSERT INTO client_keys (client_id, wrapped_key, created_at)
                     VALUES (?, ?, ?)",
                )
                .bind(client_id)
                .bind(wrapped_key)
                .bind(&recorded_at)
                .execute(&mut *tx)
                .await?;
            }
            Some(KeyAction::Destroy { client_id }) => {
                sqlx::query(
                    "UPDATE client_keys SET wrapped_key = NULL, destroyed_at = ?
                     WHERE client_id = ?",
                )
                .bind(&recorded_at)
                .bind(client_id)
                .execute(&mut *tx)
                .await?;
            }
            Some(KeyAction::RequireLive { .. }) | None => {}
        }
    }
    Ok(Commit {
        results: plan.results,
        events,
    })
}

/// See the PostgreSQL store: the token's event, in the transaction of its row change
/// (the write lock SQLite holds serializes them).
async fn append_token_event(
    tx: &mut sqlx::SqliteConnection,
    token_id: &str,
    event: NewEvent,
) -> Result<(), StoreError> {
    let version: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(sequence), 0) FROM events
         WHERE aggregate_type = ? AND aggregate_id = ?",
    )
    .bind(circle_events::token::TOKEN_TYPE)
    .bind(token_id)
    .fetch_one(&mut *tx)
    .await?;
    let append = token_append(token_id, version as u64, event);
    let commit = append_batch(tx, std::slice::from_ref(&append)).await?;
    expect_committed(commit.results)
}

const TOKEN_COLUMNS: &str =
    "token_id, role, clinician_id, label, created_at, expires_at, revoked_at";

fn stored_token(row: &SqliteRow) -> Result<StoredToken, StoreError> {
    let text = |name: &str| -> Result<Option<String>, StoreError> {
        row.try_get(name).map_err(|e| corrupt("api_tokens", e))
    };
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        text(name)?
            .map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| corrupt("api_tokens", e))
            })
            .transpose()
    };
    let required = |value: Option<String>| value.ok_or_else(|| corrupt("api_tokens", "a NULL"));
    Ok(StoredToken {
        token_id: required(text("token_id")?)?,
        role: required(text("role")?)?,
        clinician_id: text("clinician_id")?,
        label: text("label")?.unwrap_or_default(),
        created_at: time("created_at")?.ok_or_else(|| corrupt("api_tokens", "a NULL"))?,
        expires_at: time("expires_at")?,
        revoked_at: time("revoked_at")?,
    })
}

async fn find_response(
    conn: &mut sqlx::SqliteConnection,
    key: &str,
) -> Result<Option<StoredResponse>, StoreError> {
    let row: Option<(Vec<u8>, i64, String)> =
        sqlx::query_as("SELECT request_hash, status, response FROM idempotency_keys WHERE key = ?")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|(request_hash, status, body)| {
        Ok(StoredResponse {
            request_hash,
            status: status as u16,
            body: serde_json::from_str(&body).map_err(|e| corrupt("idempotency response", e))?,
        })
    })
    .transpose()
}

/// Chains every event written before the chain existed, in position order.
async fn backfill_chain(conn: &mut sqlx::SqliteConnection) -> Result<(), StoreError> {
    let rows = sqlx::query("SELECT * FROM events ORDER BY position")
        .fetch_all(&mut *conn)
        .await?;
    let mut previous = chain::GENESIS;
    for row in &rows {
        let event = unhashed_event(row, chain::GENESIS)?;
        previous = event.expected_hash(&previous);
        sqlx::query("UPDATE events SET hash = ? WHERE position = ?")
            .bind(previous.as_slice())
            .bind(event.position)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn recorded_event(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let audit = audit_event(row)?;
    let payload = serde_json::from_str(&audit.payload).map_err(|e| corrupt("payload", e))?;
    Ok(RecordedEvent::from_audit(audit, payload))
}

fn audit_event(row: &SqliteRow) -> Result<AuditEvent, StoreError> {
    let hash: Vec<u8> = row.try_get("hash")?;
    let hash = chain::hash_from_slice(&hash).ok_or_else(|| corrupt("hash", "not 32 bytes"))?;
    unhashed_event(row, hash)
}

fn unhashed_event(row: &SqliteRow, hash: chain::Hash) -> Result<AuditEvent, StoreError> {
    let time = |column: &str| -> Result<DateTime<Utc>, StoreError> {
        let text: String = row.try_get(column)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| corrupt(column, e))
    };
    let uuid = |text: String| Uuid::parse_str(&text).map_err(|e| corrupt("uuid", e));
    Ok(AuditEvent {
        position: row.try_get("position")?,
        event_id: uuid(row.try_get("event_id")?)?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get::<i64, _>("event_version")? as u32,
        payload: row.try_get("payload")?,
        occurred_at: time("occurred_at")?,
        recorded_at: time("recorded_at")?,
        actor_id: row.try_get("actor_id")?,
        actor_role: row.try_get("actor_role")?,
        correlation_id: uuid(row.try_get("correlation_id")?)?,
        causation_id: row
            .try_get::<Option<String>, _>("causation_id")?
            .map(uuid)
            .transpose()?,
        hash,
    })
}

/// Decides, for appends checked against the current stream versions and stored
/// idempotency keys, which ones commit and at which positions (the PostgreSQL
/// backend makes the same decisions inside `circle_append_batch`).
struct BatchPlan {
    results: Vec<AppendResult>,
    /// `(index into batch, first position, first sequence)` for each accepted append.
    accepted: Vec<(usize, i64, i64)>,
}

fn plan_batch(
    batch: &[Append],
    head: i64,
    mut version_of: impl FnMut(&str, &str) -> u64,
    mut stored_response: impl FnMut(&str) -> Option<StoredResponse>,
    // Clients erased before the batch; erasures accepted in it are added in order.
    mut erased: std::collections::HashSet<String>,
    // Callers' tokens found not live ([`Append::token_hash`]).
    dead_tokens: &std::collections::HashSet<String>,
) -> BatchPlan {
    use std::collections::HashMap;
    let mut versions: HashMap<(&str, &str), u64> = HashMap::new();
    let mut answered: HashMap<&str, StoredResponse> = HashMap::new();
    let mut results = Vec::with_capacity(batch.len());
    let mut accepted = Vec::new();
    // Streams with an append that did not commit: a later append to one of them (a
    // chain's next link) was decided on a state that never was, so it conflicts.
    let mut broken = std::collections::HashSet::new();
    let mut position = head;
    for (index, append) in batch.iter().enumerate() {
        let stream = (append.aggregate_type, append.aggregate_id.as_str());
        let current = *versions
            .entry(stream)
            .or_insert_with(|| version_of(stream.0, stream.1));
        let conflict = AppendResult::Conflict {
            actual_version: current,
        };
        // The token first: a revoked caller is not told what its key answered.
        let refused = if append
            .token_hash
            .as_ref()
            .is_some_and(|hash| dead_tokens.contains(hash))
        {
            Some(AppendResult::TokenNotLive)
        } else if append.chained && broken.contains(&stream) {
            Some(conflict)
        } else if let Some(previous) = append.idempotency.as_ref().and_then(|idem| {
            answered
                .get(idem.key.as_str())
                .cloned()
                .or_else(|| stored_response(&idem.key))
        }) {
            Some(AppendResult::AlreadyAnswered(previous))
        } else if let Some(client_id) = match &append.key_action {
            Some(KeyAction::RequireLive { client_ids }) => {
                client_ids.iter().find(|c| erased.contains(*c))
            }
            _ => None,
        } {
            Some(AppendResult::ClientErased {
                client_id: client_id.clone(),
            })
        } else if current != append.expected_version {
            Some(conflict)
        } else {
            None
        };
        if let Some(refused) = refused {
            broken.insert(stream);
            results.push(refused);
            continue;
        }
        let count = append.events.len() as i64;
        let version = current + count as u64;
        versions.insert(stream, version);
        if let Some(KeyAction::Destroy { client_id }) = &append.key_action {
            erased.insert(client_id.clone());
        }
        accepted.push((index, position + 1, current as i64 + 1));
        position += count;
        if let Some(idem) = &append.idempotency {
            answered.insert(
                &idem.key,
                StoredResponse {
                    request_hash: idem.request_hash.clone(),
                    status: idem.status,
                    body: write_response(&idem.response_id, version, position),
                },
            );
        }
        results.push(AppendResult::Committed {
            version,
            last_position: position,
        });
    }
    BatchPlan { results, accepted }
}

/// position, recorded_at, aggregate_type, aggregate_id, event_type, event_version, payload
type RawSqliteRow = (i64, String, String, String, String, i64, String);

fn raw_events(rows: Vec<RawSqliteRow>) -> Result<Vec<RawEvent>, StoreError> {
    rows.into_iter()
        .map(
            |(
                position,
                recorded_at,
                aggregate_type,
                aggregate_id,
                event_type,
                version,
                payload,
            )| {
                Ok(RawEvent {
                    position,
                    recorded_at: DateTime::parse_from_rfc3339(&recorded_at)
                        .map_err(|e| corrupt("recorded_at", e))?
                        .with_timezone(&Utc),
                    aggregate_type,
                    aggregate_id,
                    event_type,
                    event_version: version as u32,
                    payload,
                })
            },
        )
        .collect()
}

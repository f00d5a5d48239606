//! PostgreSQL backend.
//!
//! Ordering: every append transaction first locks the single `log_head` row and
//! takes its positions from it. The lock is held until commit, and PostgreSQL makes
//! a transaction visible before it releases its locks, so position `n + 1` can only be
//! written after position `n` is visible: positions are gap-free and appear in order.
//! One lock per batch, not per command, keeps this cheap; the whole batch is one
//! call to the `circle_append_batch` function, so one round trip and one commit.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::{Connection, Row};
use uuid::Uuid;

use super::*;

const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("migrations/postgres/0002_append_function.sql"),
    ),
    (
        3,
        include_str!("migrations/postgres/0003_projection_checkpoints.sql"),
    ),
    (4, include_str!("migrations/postgres/0004_leases.sql")),
    (
        5,
        include_str!("migrations/postgres/0005_practice_snapshots.sql"),
    ),
    (6, include_str!("migrations/postgres/0006_access_log.sql")),
    (
        7,
        include_str!("migrations/postgres/0007_snapshot_ranges.sql"),
    ),
    (
        8,
        include_str!("migrations/postgres/0008_token_lifecycle.sql"),
    ),
    (9, include_str!("migrations/postgres/0009_key_check.sql")),
    // 10 was an unchained append with the live-clients check, superseded by 14 before
    // it was ever released; the number stays unused.
    (11, include_str!("migrations/postgres/0011_hash_chain.sql")),
    (12, include_str!("migrations/postgres/0012_append_only.sql")),
    (13, include_str!("migrations/postgres/0013_audit_tree.sql")),
    (
        14,
        include_str!("migrations/postgres/0014_chain_with_live_clients.sql"),
    ),
    // 15 to 19 were set aside for work on parallel branches, which needed none; unused.
    (
        20,
        include_str!("migrations/postgres/0020_fast_path_for_live_clients.sql"),
    ),
    (
        21,
        include_str!("migrations/postgres/0021_fast_path_for_idempotency_records.sql"),
    ),
    (
        22,
        include_str!("migrations/postgres/0022_chained_appends_on_the_fast_path.sql"),
    ),
    (
        23,
        include_str!("migrations/postgres/0023_erased_clients_index.sql"),
    ),
    (
        24,
        include_str!("migrations/postgres/0024_the_callers_token_checked_in_the_commit.sql"),
    ),
    (
        25,
        include_str!("migrations/postgres/0025_each_token_checked_once.sql"),
    ),
    (
        26,
        include_str!("migrations/postgres/0026_the_fast_path_planned_once.sql"),
    ),
    (
        27,
        include_str!("migrations/postgres/0027_snapshot_settings.sql"),
    ),
    (
        28,
        include_str!("migrations/postgres/0028_snapshots_keyed_by_settings.sql"),
    ),
];

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The appender's committing connection (see [`PgStore::commit`]).
    committer: Arc<tokio::sync::Mutex<Option<HeldConnection>>>,
}

/// A connection kept out of the pool, and when it was last used.
type HeldConnection = (PoolConnection<Postgres>, Instant);

/// A held committing connection idle this long is tested before its next commit,
/// as the pool tests every connection it lends: the server may have closed it.
const HELD_IDLE_TEST: std::time::Duration = std::time::Duration::from_secs(1);

/// `payload_text` is what was hashed; the `payload` jsonb beside it is a copy for
/// SQL queries that Circle itself never reads.
const EVENT_COLUMNS: &str = "position, event_id, aggregate_type, aggregate_id, sequence, \
    event_type, event_version, payload_text, occurred_at, recorded_at, actor_id, actor_role, \
    correlation_id, causation_id, hash";

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let store = PgStore {
            pool,
            committer: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await.map_err(StoreError::Migration)?;
        // One migrator per schema at a time (tests run many schemas in parallel).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Migration)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Migration)?;
        let applied: Vec<i32> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(StoreError::Migration)?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Migration)?;
            sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::Migration)?;
        }
        tx.commit().await.map_err(StoreError::Migration)?;
        Ok(())
    }

    /// One round trip: `circle_append_batch` (migration 0002) locks the head, checks
    /// and inserts every append server-side, and the statement commits on its own.
    ///
    /// Commits go through one connection held between them. Borrowed from the pool
    /// for each commit, a connection costs two more round trips: sqlx tests it when
    /// lending it, on every command's critical path, and again when it comes back.
    /// A held connection idle for [`HELD_IDLE_TEST`] is tested first, as the pool
    /// would; one whose commit failed goes back to the pool, which tests it and
    /// closes it if it is broken, and the next commit borrows another. A second
    /// committer while the held connection is busy (an import beside the appender)
    /// borrows from the pool.
    pub async fn commit(&self, batch: &[Append]) -> Result<Commit, StoreError> {
        let Ok(mut held) = self.committer.try_lock() else {
            return append_batch(&self.pool, batch).await;
        };
        let reusable = match held.take() {
            Some((connection, used)) if used.elapsed() < HELD_IDLE_TEST => Some(connection),
            Some((mut connection, _)) => connection.ping().await.is_ok().then_some(connection),
            None => None,
        };
        let mut connection = match reusable {
            Some(connection) => connection,
            None => self.pool.acquire().await?,
        };
        let committed = append_batch(&mut *connection, batch).await;
        if committed.is_ok() {
            *held = Some((connection, Instant::now()));
        }
        committed
    }

    pub async fn load_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
             ORDER BY sequence"
        );
        let rows = sqlx::query(&sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(after_sequence as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(recorded_event).collect()
    }

    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        );
        let rows = sqlx::query(&sql)
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
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1
               AND ($3::text IS NULL OR aggregate_type = $3)
               AND ($4::text IS NULL OR aggregate_id = $4)
               AND ($5::text IS NULL OR actor_id = $5)
               AND ($6::timestamptz IS NULL OR recorded_at >= $6)
               AND ($7::timestamptz IS NULL OR recorded_at < $7)
             ORDER BY position LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(limit)
            .bind(&filter.aggregate_type)
            .bind(&filter.aggregate_id)
            .bind(&filter.actor_id)
            .bind(filter.from)
            .bind(filter.to)
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
        // By the stream's own index: within a stream, sequence and position agree.
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND position > $3
             ORDER BY sequence LIMIT $4"
        );
        let rows = sqlx::query(&sql)
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
        Ok(sqlx::query_as(
            "SELECT sequence, position FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = ANY($3)",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequences)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn chain_rows(&self, after: i64, limit: i64) -> Result<ChainRows, StoreError> {
        use futures_util::StreamExt;
        use sqlx::postgres::PgPoolCopyExt;
        // COPY takes no parameters: both are integers, formatted here.
        let sql = format!(
            "COPY (SELECT {} FROM events WHERE position > {after} ORDER BY position LIMIT {limit})
             TO STDOUT (FORMAT binary)",
            super::copy::COLUMNS
        );
        let mut stream = self.pool.copy_out_raw(&sql).await?;
        let expected = limit.clamp(0, 100_000) as usize;
        let mut rows = ChainRows::with_capacity(expected, expected * 640);
        let mut reader = super::copy::CopyReader::default();
        while let Some(chunk) = stream.next().await {
            reader.feed(&chunk?, &mut rows)?;
        }
        reader.finish()?;
        Ok(rows)
    }

    pub async fn chain_hashes(&self, positions: &[i64]) -> Result<Vec<(i64, Hash)>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT position, hash FROM events WHERE position = ANY($1)")
                .bind(positions)
                // Planned for these values each time (see `find_responses`).
                .persistent(false)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(stored_hash).collect()
    }

    pub async fn merkle_nodes(&self, keys: &[NodeKey]) -> Result<Vec<(NodeKey, Hash)>, StoreError> {
        let levels: Vec<i32> = keys.iter().map(|k| k.0 as i32).collect();
        let indexes: Vec<i64> = keys.iter().map(|k| k.1 as i64).collect();
        let rows: Vec<(i32, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT n.level, n.node_index, n.hash
             FROM unnest($1::int[], $2::bigint[]) AS k(level, node_index)
             JOIN merkle_nodes n ON n.level = k.level AND n.node_index = k.node_index",
        )
        .bind(&levels)
        .bind(&indexes)
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
        let levels: Vec<i32> = nodes.iter().map(|(k, _)| k.0 as i32).collect();
        let indexes: Vec<i64> = nodes.iter().map(|(k, _)| k.1 as i64).collect();
        let hashes: Vec<&[u8]> = nodes.iter().map(|(_, h)| h.as_slice()).collect();
        sqlx::query(
            "INSERT INTO merkle_nodes (level, node_index, hash)
             SELECT * FROM unnest($1::int[], $2::bigint[], $3::bytea[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&levels)
        .bind(&indexes)
        .bind(&hashes)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn save_tree_head(
        &self,
        head: &TreeHead,
        fence: &Fence,
    ) -> Result<Option<TreeHead>, StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (tree_size, root, note)
             SELECT $1, $2, $3
             WHERE EXISTS (SELECT 1 FROM leases WHERE name = $4 AND holder = $5 AND epoch = $6)
             ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(head.size)
        .bind(head.root.as_slice())
        .bind(&head.note)
        .bind(&fence.lease)
        .bind(fence.holder)
        .bind(fence.epoch)
        .execute(&self.pool)
        .await?;
        self.tree_head(Some(head.size)).await
    }

    pub async fn tree_head(&self, size: Option<i64>) -> Result<Option<TreeHead>, StoreError> {
        let row: Option<(i64, Vec<u8>, String)> = sqlx::query_as(
            "SELECT tree_size, root, note FROM audit_checkpoints
             WHERE $1::bigint IS NULL OR tree_size = $1
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
        let rows: Vec<RawRow> = sqlx::query_as(
            "SELECT position, recorded_at, aggregate_type, aggregate_id, event_type, event_version,
                    payload_text
             FROM events WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(raw_event).collect())
    }

    pub async fn read_raw_until(&self, stretch: Stretch) -> Result<Vec<RawEvent>, StoreError> {
        let rows: Vec<RawRow> = sqlx::query_as(
            "SELECT position, recorded_at, aggregate_type, aggregate_id, event_type, event_version,
                    payload_text
             FROM events WHERE position > $1 AND position <= $2 AND recorded_at <= $3
             ORDER BY position LIMIT $4",
        )
        .bind(stretch.after)
        .bind(stretch.upto)
        .bind(stretch.until)
        .bind(stretch.limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(raw_event).collect())
    }

    pub async fn head_position(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn aggregate_ids(&self, aggregate_type: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT aggregate_id FROM events WHERE aggregate_type = $1 AND sequence = 1
             ORDER BY position",
        )
        .bind(aggregate_type)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn find_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        let row: Option<(Vec<u8>, i32, Value)> = sqlx::query_as(
            "SELECT request_hash, status, response FROM idempotency_keys WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(request_hash, status, body)| StoredResponse {
            request_hash,
            status: status as u16,
            body,
        }))
    }

    pub async fn find_responses(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, StoredResponse>, StoreError> {
        let rows: Vec<(String, Vec<u8>, i32, Value)> = sqlx::query_as(
            "SELECT key, request_hash, status, response FROM idempotency_keys
             WHERE key = ANY ($1)",
        )
        .bind(keys)
        // Not a prepared statement: PostgreSQL would keep the generic plan it made
        // when the table was small (a sequential scan) on that connection while the
        // table grows; `circle import` read the whole table once per 256 rows.
        .persistent(false)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key, request_hash, status, body)| {
                let stored = StoredResponse {
                    request_hash,
                    status: status as u16,
                    body,
                };
                (key, stored)
            })
            .collect())
    }

    pub async fn client_key(&self, client_id: &str) -> Result<ClientKey, StoreError> {
        let row: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT wrapped_key FROM client_keys WHERE client_id = $1")
                .bind(client_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            None => ClientKey::Missing,
            Some((None,)) => ClientKey::Destroyed,
            Some((Some(key),)) => ClientKey::Wrapped(key),
        })
    }

    /// Rewrites the key table so a destroyed key's old bytes leave its files: a
    /// plain VACUUM only marks dead tuples free, leaving their bytes in the pages.
    /// The table is small (one row per client); its exclusive lock holds appends that
    /// touch it for as long as the rewrite takes.
    pub async fn compact_keys(&self) -> Result<(), StoreError> {
        sqlx::query("VACUUM FULL client_keys")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every live wrapped key replaced by `rewrap`'s, and the key check by
    /// `key_check`, in one transaction.
    pub async fn rewrap_keys(
        &self,
        rewrap: Rewrap<'_>,
        key_check: &[u8],
    ) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let live: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT client_id, wrapped_key FROM client_keys
             WHERE wrapped_key IS NOT NULL ORDER BY client_id FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await?;
        let count = live.len();
        for (client_id, rewrapped) in rewrap_all(rewrap, live)? {
            sqlx::query("UPDATE client_keys SET wrapped_key = $2 WHERE client_id = $1")
                .bind(&client_id)
                .bind(rewrapped)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO key_check (id, sealed) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET sealed = EXCLUDED.sealed, created_at = now()",
        )
        .bind(key_check)
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
        sqlx::query("INSERT INTO key_check (id, sealed) VALUES (1, $1) ON CONFLICT DO NOTHING")
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

    /// Stores a token's hash and record with its `TokenIssued` event, atomically;
    /// `false` (and nothing written) when the hash is already stored.
    pub async fn issue_token(
        &self,
        token_hash: &str,
        token: &StoredToken,
        event: NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (token_hash, token_id, role, clinician_id, label,
                 created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(token_hash)
        .bind(&token.token_id)
        .bind(&token.role)
        .bind(&token.clinician_id)
        .bind(&token.label)
        .bind(token.created_at)
        .bind(token.expires_at)
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

    /// Marks a token revoked with its `TokenRevoked` event, atomically. The row lock
    /// makes concurrent revocations of one token write one event.
    pub async fn revoke_token(
        &self,
        token_id: &str,
        event: NewEvent,
    ) -> Result<Revocation, StoreError> {
        let mut tx = self.pool.begin().await?;
        let revoked = sqlx::query(&format!(
            "UPDATE api_tokens SET revoked_at = now()
             WHERE token_id = $1 AND revoked_at IS NULL RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = revoked else {
            let found = sqlx::query(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_id = $1"
            ))
            .bind(token_id)
            .fetch_optional(&mut *tx)
            .await?;
            return Ok(match found {
                Some(row) => Revocation::AlreadyRevoked(stored_token(&row)?),
                None => Revocation::Unknown,
            });
        };
        append_token_event(&mut tx, token_id, event).await?;
        tx.commit().await?;
        Ok(Revocation::Revoked(stored_token(&row)?))
    }

    pub async fn find_tokens(
        &self,
        token_hashes: &[String],
    ) -> Result<Vec<(String, StoredToken)>, StoreError> {
        sqlx::query(&format!(
            "SELECT token_hash, {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ANY($1)"
        ))
        .bind(token_hashes)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let hash = row
                .try_get("token_hash")
                .map_err(|e| StoreError::Corrupt(format!("api_tokens: {e}")))?;
            Ok((hash, stored_token(row)?))
        })
        .collect()
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
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn load_checkpoint(&self, name: &str) -> Result<Option<(i64, String)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row =
            sqlx::query_as("SELECT position, state FROM projection_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
        conn.shrink_buffers();
        Ok(row)
    }

    pub async fn save_checkpoint(
        &self,
        name: &str,
        position: i64,
        state: &str,
        fence: Option<&Fence>,
    ) -> Result<bool, StoreError> {
        // The row is proposed only while the fence's lease is still the current one.
        let mut conn = self.pool.acquire().await?;
        let saved = sqlx::query(
            "INSERT INTO projection_checkpoints (name, position, state, updated_at)
             SELECT $1, $2, $3, now()
             WHERE $4::text IS NULL OR EXISTS (
                 SELECT 1 FROM leases WHERE name = $4 AND holder = $5 AND epoch = $6)
             ON CONFLICT (name) DO UPDATE
             SET position = EXCLUDED.position, state = EXCLUDED.state, updated_at = now()",
        )
        .bind(name)
        .bind(position)
        .bind(state)
        .bind(fence.map(|f| f.lease.as_str()))
        .bind(fence.map(|f| f.holder))
        .bind(fence.map(|f| f.epoch))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        conn.shrink_buffers();
        Ok(saved > 0)
    }

    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: Uuid,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        // Database time decides expiry, so instances' clocks need not agree.
        Ok(sqlx::query_scalar(
            "INSERT INTO leases AS l (name, holder, epoch, expires_at)
             VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3))
             ON CONFLICT (name) DO UPDATE
             SET holder = EXCLUDED.holder,
                 epoch = CASE WHEN l.holder = EXCLUDED.holder THEN l.epoch ELSE l.epoch + 1 END,
                 expires_at = EXCLUDED.expires_at
             WHERE l.holder = EXCLUDED.holder OR l.expires_at < clock_timestamp()
             RETURNING epoch",
        )
        .bind(name)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn release_lease(&self, name: &str, holder: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leases SET expires_at = clock_timestamp() - interval '1 second'
             WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(
            "INSERT INTO practice_snapshots
                 (position, max_recorded_at, state, range_after, range_min_recorded_at, settings)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(snapshot.position)
        .bind(snapshot.max_recorded_at)
        .bind(&snapshot.state)
        .bind(snapshot.range.map(|r| r.after))
        .bind(snapshot.range.map(|r| r.min_recorded_at))
        .bind(&snapshot.settings)
        .execute(&mut *conn)
        .await?;
        conn.shrink_buffers();
        Ok(())
    }

    /// The snapshot at the highest position beyond `after` whose events were all
    /// recorded by `recorded_by` and whose state was built under `settings`, each
    /// filter when given.
    pub async fn newest_snapshot(
        &self,
        recorded_by: Option<DateTime<Utc>>,
        settings: Option<&str>,
        after: i64,
    ) -> Result<Option<Snapshot>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        type Row = (
            i64,
            DateTime<Utc>,
            String,
            Option<i64>,
            Option<DateTime<Utc>>,
            Option<String>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT position, max_recorded_at, state, range_after, range_min_recorded_at,
                    settings
             FROM practice_snapshots
             WHERE ($1::timestamptz IS NULL OR max_recorded_at <= $1)
               AND ($2::text IS NULL OR settings = $2) AND position > $3
             ORDER BY position DESC LIMIT 1",
        )
        .bind(recorded_by)
        .bind(settings)
        .bind(after)
        .fetch_optional(&mut *conn)
        .await?;
        conn.shrink_buffers();
        Ok(row.map(
            |(position, max_recorded_at, state, after, min, settings)| Snapshot {
                position,
                max_recorded_at,
                state,
                range: after.zip(min).map(|(after, min_recorded_at)| LogRange {
                    after,
                    min_recorded_at,
                }),
                settings,
            },
        ))
    }

    pub async fn snapshot_ranges(&self, after: i64) -> Result<Vec<(i64, LogRange)>, StoreError> {
        let rows: Vec<(i64, i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT DISTINCT position, range_after, range_min_recorded_at FROM practice_snapshots
             WHERE position > $1 AND range_after IS NOT NULL
               AND range_min_recorded_at IS NOT NULL
             ORDER BY position",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(position, after, min_recorded_at)| {
                (
                    position,
                    LogRange {
                        after,
                        min_recorded_at,
                    },
                )
            })
            .collect())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }
}

/// Per-append arrays for `circle_append_batch`.
#[derive(Default)]
struct AppendColumns {
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    expected: Vec<i64>,
    count: Vec<i32>,
    idem_key: Vec<Option<String>>,
    idem_hash: Vec<Option<Vec<u8>>>,
    idem_status: Vec<Option<i32>>,
    response_id: Vec<Option<String>>,
    key_action: Vec<Option<&'static str>>,
    key_client: Vec<Option<String>>,
    key_wrapped: Vec<Option<Vec<u8>>>,
    chained: Vec<bool>,
    token: Vec<Option<String>>,
}

impl AppendColumns {
    fn push(&mut self, append: &Append) {
        self.aggregate_type.push(append.aggregate_type.to_string());
        self.aggregate_id.push(append.aggregate_id.clone());
        self.expected.push(append.expected_version as i64);
        self.count.push(append.events.len() as i32);
        self.chained.push(append.chained);
        self.token.push(append.token_hash.clone());
        let idem = append.idempotency.as_ref();
        self.idem_key.push(idem.map(|i| i.key.clone()));
        self.idem_hash.push(idem.map(|i| i.request_hash.clone()));
        self.idem_status.push(idem.map(|i| i.status as i32));
        self.response_id.push(idem.map(|i| i.response_id.clone()));
        let (action, client, wrapped) = match &append.key_action {
            Some(KeyAction::Store {
                client_id,
                wrapped_key,
            }) => (
                Some("store"),
                Some(client_id.clone()),
                Some(wrapped_key.clone()),
            ),
            Some(KeyAction::Destroy { client_id }) => {
                (Some("destroy"), Some(client_id.clone()), None)
            }
            // Ids never hold a comma (`ID_PATTERN`): one text per append carries them.
            Some(KeyAction::RequireLive { client_ids }) => {
                (Some("require"), Some(client_ids.join(",")), None)
            }
            None => (None, None, None),
        };
        self.key_action.push(action);
        self.key_client.push(client);
        self.key_wrapped.push(wrapped);
    }
}

/// Per-event arrays for `circle_append_batch`, in append order.
#[derive(Default)]
struct EventColumns {
    event_id: Vec<Uuid>,
    event_type: Vec<String>,
    event_version: Vec<i32>,
    payload: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
    actor_id: Vec<String>,
    actor_role: Vec<String>,
    correlation_id: Vec<Uuid>,
    causation_id: Vec<Option<Uuid>>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    /// `canonical_bytes` after the position, for the chain (see `audit::chain`).
    tail: Vec<Vec<u8>>,
}

impl EventColumns {
    fn push(
        &mut self,
        append: &Append,
        event: &NewEvent,
        sequence: i64,
        recorded_at: DateTime<Utc>,
    ) {
        let meta = &event.metadata;
        let payload = event.payload.to_string();
        let occurred_at = to_micros(meta.occurred_at);
        self.tail.push(chain::tail(&chain::EventFields {
            event_id: meta.event_id,
            aggregate_type: append.aggregate_type,
            aggregate_id: &append.aggregate_id,
            sequence,
            event_type: &event.event_type,
            event_version: event.event_version,
            payload: &payload,
            occurred_at,
            recorded_at,
            actor_id: &meta.actor_id,
            actor_role: &meta.actor_role,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
        }));
        self.aggregate_type.push(append.aggregate_type.to_string());
        self.aggregate_id.push(append.aggregate_id.clone());
        self.sequence.push(sequence);
        self.event_id.push(meta.event_id);
        self.event_type.push(event.event_type.clone());
        self.event_version.push(event.event_version as i32);
        self.payload.push(payload);
        self.occurred_at.push(occurred_at);
        self.actor_id.push(meta.actor_id.clone());
        self.actor_role.push(meta.actor_role.clone());
        self.correlation_id.push(meta.correlation_id);
        self.causation_id.push(meta.causation_id);
    }
}

type AppendRow = (
    String,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
    Option<i32>,
    Option<Value>,
);

/// `circle_append_batch` on any executor: the pool (one statement, its own commit) or
/// a transaction that writes something else atomically with the events.
async fn append_batch<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    batch: &[Append],
) -> Result<Commit, StoreError> {
    let mut a = AppendColumns::default();
    let mut e = EventColumns::default();
    // Each stream's version after the batch's appends to it so far.
    let mut streams = std::collections::HashMap::new();
    let mut keys = std::collections::HashSet::new();
    let mut simple = true;
    let recorded_at = to_micros(Utc::now());
    for append in batch {
        a.push(append);
        // 'require' and idempotency records are handled set-based on the fast path
        // (a key twice in one batch is the loop's: the second is answered by the
        // first); the other key actions need the per-command loop. A stream may come
        // again only as a chain: each append expecting the version the last one left.
        let after = append.expected_version + append.events.len() as u64;
        let chained = streams
            .insert((append.aggregate_type, append.aggregate_id.as_str()), after)
            .is_none_or(|before| append.chained && before == append.expected_version);
        simple &= append
            .idempotency
            .as_ref()
            .is_none_or(|idem| keys.insert(idem.key.as_str()))
            && matches!(
                append.key_action,
                None | Some(KeyAction::RequireLive { .. })
            )
            && chained;
        for (offset, event) in append.events.iter().enumerate() {
            e.push(
                append,
                event,
                append.expected_version as i64 + offset as i64 + 1,
                recorded_at,
            );
        }
    }
    let rows: Vec<AppendRow> = sqlx::query_as(
        "SELECT outcome, stream_version, last_position, answer_hash, answer_status, answer_body
         FROM circle_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
             $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)",
    )
    .bind(&a.aggregate_type)
    .bind(&a.aggregate_id)
    .bind(&a.expected)
    .bind(&a.count)
    .bind(&a.idem_key)
    .bind(&a.idem_hash)
    .bind(&a.idem_status)
    .bind(&a.response_id)
    .bind(&a.key_action)
    .bind(&a.key_client)
    .bind(&a.key_wrapped)
    .bind(&e.event_id)
    .bind(&e.event_type)
    .bind(&e.event_version)
    .bind(&e.payload)
    .bind(&e.occurred_at)
    .bind(&e.actor_id)
    .bind(&e.actor_role)
    .bind(&e.correlation_id)
    .bind(&e.causation_id)
    .bind(&e.aggregate_type)
    .bind(&e.aggregate_id)
    .bind(&e.sequence)
    .bind(&e.tail)
    .bind(simple)
    .bind(recorded_at)
    .bind(&a.chained)
    .bind(&a.token)
    .fetch_all(executor)
    .await?;
    if rows.len() != batch.len() {
        return Err(StoreError::Corrupt(format!(
            "append function answered {} of {} appends",
            rows.len(),
            batch.len()
        )));
    }
    let results = rows
        .into_iter()
        .map(append_result)
        .collect::<Result<Vec<_>, _>>()?;
    // The committed appends' events, their columns moved out as bound: what the log
    // now holds at those positions.
    let mut events = Vec::new();
    let mut first = 0;
    for (append, result) in batch.iter().zip(&results) {
        let count = append.events.len();
        if let AppendResult::Committed { last_position, .. } = result {
            for (offset, j) in (first..first + count).enumerate() {
                events.push(RawEvent {
                    position: last_position - count as i64 + 1 + offset as i64,
                    recorded_at,
                    aggregate_type: append.aggregate_type.to_string(),
                    aggregate_id: append.aggregate_id.clone(),
                    event_type: std::mem::take(&mut e.event_type[j]),
                    event_version: e.event_version[j] as u32,
                    payload: std::mem::take(&mut e.payload[j]),
                });
            }
        }
        first += count;
    }
    Ok(Commit { results, events })
}

/// Appends a token's event in the transaction that changed its row, at the next
/// version of its stream (the row's lock serializes changes to one token).
async fn append_token_event(
    tx: &mut sqlx::PgConnection,
    token_id: &str,
    event: NewEvent,
) -> Result<(), StoreError> {
    let version: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(sequence), 0) FROM events
         WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(circle_events::token::TOKEN_TYPE)
    .bind(token_id)
    .fetch_one(&mut *tx)
    .await?;
    let append = token_append(token_id, version as u64, event);
    let commit = append_batch(&mut *tx, std::slice::from_ref(&append)).await?;
    expect_committed(commit.results)
}

const TOKEN_COLUMNS: &str =
    "token_id, role, clinician_id, label, created_at, expires_at, revoked_at";

fn stored_token(row: &PgRow) -> Result<StoredToken, StoreError> {
    let corrupt = |e: sqlx::Error| StoreError::Corrupt(format!("api_tokens: {e}"));
    Ok(StoredToken {
        token_id: row.try_get("token_id").map_err(corrupt)?,
        role: row.try_get("role").map_err(corrupt)?,
        clinician_id: row.try_get("clinician_id").map_err(corrupt)?,
        label: row.try_get("label").map_err(corrupt)?,
        created_at: row.try_get("created_at").map_err(corrupt)?,
        expires_at: row.try_get("expires_at").map_err(corrupt)?,
        revoked_at: row.try_get("revoked_at").map_err(corrupt)?,
    })
}

fn append_result(row: AppendRow) -> Result<AppendResult, StoreError> {
    match row {
        (outcome, Some(version), Some(last_position), ..) if outcome == "committed" => {
            Ok(AppendResult::Committed {
                version: version as u64,
                last_position,
            })
        }
        (outcome, Some(version), ..) if outcome == "conflict" => Ok(AppendResult::Conflict {
            actual_version: version as u64,
        }),
        (outcome, _, _, Some(request_hash), Some(status), Some(body)) if outcome == "answered" => {
            Ok(AppendResult::AlreadyAnswered(StoredResponse {
                request_hash,
                status: status as u16,
                body,
            }))
        }
        (outcome, _, _, _, _, Some(Value::String(client_id))) if outcome == "erased" => {
            Ok(AppendResult::ClientErased { client_id })
        }
        (outcome, ..) if outcome == "unauthenticated" => Ok(AppendResult::TokenNotLive),
        (outcome, ..) => Err(StoreError::Corrupt(format!(
            "append function answered {outcome:?}"
        ))),
    }
}

type RawRow = (i64, DateTime<Utc>, String, String, String, i32, String);

fn raw_event(row: RawRow) -> RawEvent {
    let (position, recorded_at, aggregate_type, aggregate_id, event_type, version, payload) = row;
    RawEvent {
        position,
        recorded_at,
        aggregate_type,
        aggregate_id,
        event_type,
        event_version: version as u32,
        payload,
    }
}

fn recorded_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let audit = audit_event(row)?;
    let payload = serde_json::from_str(&audit.payload)
        .map_err(|e| StoreError::Corrupt(format!("payload at {}: {e}", audit.position)))?;
    Ok(RecordedEvent::from_audit(audit, payload))
}

fn audit_event(row: &PgRow) -> Result<AuditEvent, StoreError> {
    let position: i64 = row.try_get("position")?;
    let hash: Vec<u8> = row.try_get("hash")?;
    Ok(AuditEvent {
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get::<i32, _>("event_version")? as u32,
        payload: row.try_get("payload_text")?,
        occurred_at: row.try_get("occurred_at")?,
        recorded_at: row.try_get("recorded_at")?,
        actor_id: row.try_get("actor_id")?,
        actor_role: row.try_get("actor_role")?,
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get("causation_id")?,
        hash: chain::hash_from_slice(&hash).ok_or_else(|| {
            StoreError::Corrupt(format!("hash at {position} is {} bytes", hash.len()))
        })?,
        position,
    })
}

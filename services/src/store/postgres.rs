//! PostgreSQL backend.
//!
//! Ordering: every append transaction first locks the single `log_head` row and
//! takes its positions from it. The lock is held until commit, and PostgreSQL makes
//! a transaction visible before it releases its locks, so position `n + 1` can only be
//! written after position `n` is visible: positions are gap-free and appear in order.
//! One lock per batch, not per command, keeps this cheap.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use uuid::Uuid;

use super::*;

const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("migrations/postgres/0001_init.sql"))];

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

const EVENT_COLUMNS: &str = "position, event_id, aggregate_type, aggregate_id, sequence, \
    event_type, event_version, payload, occurred_at, recorded_at, actor_id, actor_role, \
    correlation_id, causation_id";

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let store = PgStore { pool };
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

    pub async fn commit_batch(&self, batch: &[Append]) -> Result<Vec<AppendResult>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let head: i64 = sqlx::query_scalar("SELECT position FROM log_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;

        // Current versions of every stream in the batch, in one round trip. Under the
        // head lock no other append can change them until we commit.
        let (types, ids): (Vec<&str>, Vec<&str>) = batch
            .iter()
            .map(|a| (a.aggregate_type, a.aggregate_id.as_str()))
            .unzip();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT t.typ, t.id,
                    COALESCE((SELECT max(e.sequence) FROM events e
                              WHERE e.aggregate_type = t.typ AND e.aggregate_id = t.id), 0)
             FROM unnest($1::text[], $2::text[]) AS t(typ, id)",
        )
        .bind(&types)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let versions: HashMap<(String, String), u64> = rows
            .into_iter()
            .map(|(t, i, v)| ((t, i), v as u64))
            .collect();

        let keys: Vec<&str> = batch
            .iter()
            .filter_map(|a| a.idempotency.as_ref().map(|i| i.key.as_str()))
            .collect();
        let mut responses = HashMap::new();
        if !keys.is_empty() {
            let rows: Vec<(String, Vec<u8>, i32, Value)> = sqlx::query_as(
                "SELECT key, request_hash, status, response FROM idempotency_keys
                 WHERE key = ANY($1)",
            )
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?;
            for (key, request_hash, status, body) in rows {
                responses.insert(
                    key,
                    StoredResponse {
                        request_hash,
                        status: status as u16,
                        body,
                    },
                );
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
        );
        if plan.accepted.is_empty() {
            tx.rollback().await?;
            return Ok(plan.results);
        }

        let recorded_at = Utc::now();
        let mut rows = EventColumns::default();
        let mut idem = IdempotencyColumns::default();
        for &(index, first_position, first_sequence) in &plan.accepted {
            let append = &batch[index];
            for (offset, event) in append.events.iter().enumerate() {
                rows.push(
                    append,
                    event,
                    first_position + offset as i64,
                    first_sequence + offset as i64,
                );
            }
            if let (
                Some(record),
                AppendResult::Committed {
                    version,
                    last_position,
                },
            ) = (&append.idempotency, &plan.results[index])
            {
                idem.push(
                    record,
                    write_response(&record.response_id, *version, *last_position),
                );
            }
        }
        sqlx::query(
            "INSERT INTO events (position, event_id, aggregate_type, aggregate_id, sequence,
                event_type, event_version, payload, occurred_at, recorded_at, actor_id,
                actor_role, correlation_id, causation_id)
             SELECT p, eid, atype, aid, seq, etype, ever, pl::jsonb, occ, $9, act, role, corr, caus
             FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],
                         $6::text[], $7::int[], $8::text[], $10::timestamptz[], $11::text[],
                         $12::text[], $13::uuid[], $14::uuid[])
                  AS t(p, eid, atype, aid, seq, etype, ever, pl, occ, act, role, corr, caus)",
        )
        .bind(&rows.position)
        .bind(&rows.event_id)
        .bind(&rows.aggregate_type)
        .bind(&rows.aggregate_id)
        .bind(&rows.sequence)
        .bind(&rows.event_type)
        .bind(&rows.event_version)
        .bind(&rows.payload)
        .bind(recorded_at)
        .bind(&rows.occurred_at)
        .bind(&rows.actor_id)
        .bind(&rows.actor_role)
        .bind(&rows.correlation_id)
        .bind(&rows.causation_id)
        .execute(&mut *tx)
        .await?;
        if !idem.key.is_empty() {
            sqlx::query(
                "INSERT INTO idempotency_keys (key, request_hash, status, response, created_at)
                 SELECT k, h, s, r::jsonb, $5
                 FROM unnest($1::text[], $2::bytea[], $3::int[], $4::text[]) AS t(k, h, s, r)",
            )
            .bind(&idem.key)
            .bind(&idem.request_hash)
            .bind(&idem.status)
            .bind(&idem.response)
            .bind(recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        for &(index, _, _) in &plan.accepted {
            match &batch[index].key_action {
                Some(KeyAction::Store {
                    client_id,
                    wrapped_key,
                }) => {
                    sqlx::query(
                        "INSERT INTO client_keys (client_id, wrapped_key, created_at)
                         VALUES ($1, $2, $3)",
                    )
                    .bind(client_id)
                    .bind(wrapped_key)
                    .bind(recorded_at)
                    .execute(&mut *tx)
                    .await?;
                }
                Some(KeyAction::Destroy { client_id }) => {
                    sqlx::query(
                        "UPDATE client_keys SET wrapped_key = NULL, destroyed_at = $2
                         WHERE client_id = $1",
                    )
                    .bind(client_id)
                    .bind(recorded_at)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {}
            }
        }
        sqlx::query("UPDATE log_head SET position = $1 WHERE id = 1")
            .bind(plan.next_head)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(plan.results)
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

    pub async fn insert_token(
        &self,
        token_hash: &str,
        token: &StoredToken,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, role, clinician_id, created_at)
             VALUES ($1, $2, $3, now()) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(token_hash)
        .bind(&token.role)
        .bind(&token.clinician_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn find_token(&self, token_hash: &str) -> Result<Option<StoredToken>, StoreError> {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT role, clinician_id FROM api_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(role, clinician_id)| StoredToken { role, clinician_id }))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }
}

/// Column-wise buffers for one `unnest` insert.
#[derive(Default)]
struct EventColumns {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    event_version: Vec<i32>,
    payload: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
    actor_id: Vec<String>,
    actor_role: Vec<String>,
    correlation_id: Vec<Uuid>,
    causation_id: Vec<Option<Uuid>>,
}

impl EventColumns {
    fn push(&mut self, append: &Append, event: &NewEvent, position: i64, sequence: i64) {
        let meta = &event.metadata;
        self.position.push(position);
        self.event_id.push(meta.event_id);
        self.aggregate_type.push(append.aggregate_type.to_string());
        self.aggregate_id.push(append.aggregate_id.clone());
        self.sequence.push(sequence);
        self.event_type.push(event.event_type.clone());
        self.event_version.push(event.event_version as i32);
        self.payload.push(event.payload.to_string());
        self.occurred_at.push(meta.occurred_at);
        self.actor_id.push(meta.actor_id.clone());
        self.actor_role.push(meta.actor_role.clone());
        self.correlation_id.push(meta.correlation_id);
        self.causation_id.push(meta.causation_id);
    }
}

#[derive(Default)]
struct IdempotencyColumns {
    key: Vec<String>,
    request_hash: Vec<Vec<u8>>,
    status: Vec<i32>,
    response: Vec<String>,
}

impl IdempotencyColumns {
    fn push(&mut self, record: &IdempotencyRecord, response: Value) {
        self.key.push(record.key.clone());
        self.request_hash.push(record.request_hash.clone());
        self.status.push(record.status as i32);
        self.response.push(response.to_string());
    }
}

fn recorded_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: row.try_get("position")?,
        event_id: row.try_get("event_id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get::<i32, _>("event_version")? as u32,
        payload: row.try_get("payload")?,
        occurred_at: row.try_get("occurred_at")?,
        recorded_at: row.try_get("recorded_at")?,
        actor_id: row.try_get("actor_id")?,
        actor_role: row.try_get("actor_role")?,
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get("causation_id")?,
    })
}

//! The access log's tables (migrations `0006_access_log.sql` on PostgreSQL,
//! `0005_access_log.sql` on SQLite): append-only (triggers refuse UPDATE, DELETE
//! and TRUNCATE), and hash-chained. A batch takes the chain's head under a lock
//! (`FOR UPDATE` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite), so several Circle
//! processes on one database extend one chain, with gap-free sequence numbers.
//!
//! What an entry says is the caller's business ([`crate::access_log`]); here it is
//! JSON text, hashed as stored: `hash = SHA-256(prev_hash ‖ seq ‖ entry)` (`seq` as
//! 8 bytes big-endian), so the chain verifies from the stored rows alone, without
//! re-serializing anything. PostgreSQL computes it in `circle_access_append` (one
//! round trip per batch), SQLite's store here; [`verify_chain`] checks either.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{PgStore, SqliteStore, Store, StoreError};

/// An entry to append. `entry` is a JSON object; its `seq` is the row's.
#[derive(Clone, Debug)]
pub struct NewAccess {
    pub recorded: DateTime<Utc>,
    /// The actor, for `actor_id=` queries.
    pub agent_who: String,
    /// The clients disclosed, for `client_id=` queries (at most 100; see the caller).
    pub client_ids: Vec<String>,
    pub entry: Value,
}

/// An entry as stored, with its place in the chain.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAccess {
    pub seq: i64,
    pub entry: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Which entries to read: all conditions given must hold.
#[derive(Clone, Debug, Default)]
pub struct AccessFilter {
    pub client_id: Option<String>,
    pub actor_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Entries with `seq > after`.
    pub after: i64,
    pub limit: i64,
}

/// The chain's link: SHA-256 of the previous hash, the sequence number and the
/// entry's stored text.
pub fn chain_hash(prev_hash: &[u8], seq: i64, entry: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(seq.to_be_bytes());
    hasher.update(entry.as_bytes());
    hasher.finalize().to_vec()
}

/// The chain's start: 32 zero bytes (the migrations' initial head).
pub const GENESIS: [u8; 32] = [0; 32];

/// The rows a batch adds after the head `(seq, hash)`.
struct Planned {
    rows: Vec<StoredAccess>,
    recorded: Vec<DateTime<Utc>>,
    agents: Vec<String>,
    clients: Vec<(String, i64)>,
}

fn plan(head_seq: i64, head_hash: Vec<u8>, batch: &[NewAccess]) -> Planned {
    let mut planned = Planned {
        rows: Vec::with_capacity(batch.len()),
        recorded: Vec::with_capacity(batch.len()),
        agents: Vec::with_capacity(batch.len()),
        clients: Vec::new(),
    };
    let (mut seq, mut prev) = (head_seq, head_hash);
    for access in batch {
        seq += 1;
        let text = access.entry.to_string();
        let hash = chain_hash(&prev, seq, &text);
        let mut ids = access.client_ids.clone();
        ids.sort_unstable();
        ids.dedup();
        planned.clients.extend(ids.into_iter().map(|id| (id, seq)));
        planned.recorded.push(access.recorded);
        planned.agents.push(access.agent_who.clone());
        planned.rows.push(StoredAccess {
            seq,
            entry: text,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
    planned
}

fn sqlite_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Store {
    /// Appends a batch of entries in one transaction, durable when this returns.
    pub async fn append_access(&self, batch: &[NewAccess]) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.append_access(batch).await,
            Store::Sqlite(s) => s.append_access(batch).await,
        }
    }

    /// Entries matching `filter`, in chain order.
    pub async fn read_access(
        &self,
        filter: &AccessFilter,
    ) -> Result<Vec<StoredAccess>, StoreError> {
        match self {
            Store::Postgres(s) => s.read_access(filter).await,
            Store::Sqlite(s) => s.read_access(filter).await,
        }
    }
}

type Row = (i64, String, Vec<u8>, Vec<u8>);

/// The chain's new head.
const MOVE_HEAD: &str = "UPDATE access_log_head SET seq = ?, hash = ? WHERE id = 1";

fn stored((seq, entry, prev_hash, hash): Row) -> StoredAccess {
    StoredAccess {
        seq,
        entry,
        prev_hash,
        hash,
    }
}

impl PgStore {
    async fn append_access(&self, batch: &[NewAccess]) -> Result<(), StoreError> {
        let recorded: Vec<DateTime<Utc>> = batch.iter().map(|a| a.recorded).collect();
        let agents: Vec<&str> = batch.iter().map(|a| a.agent_who.as_str()).collect();
        let entries: Vec<String> = batch.iter().map(|a| a.entry.to_string()).collect();
        let mut client_ids = Vec::new();
        let mut client_entries = Vec::new();
        for (index, access) in batch.iter().enumerate() {
            let mut ids: Vec<&str> = access.client_ids.iter().map(String::as_str).collect();
            ids.sort_unstable();
            ids.dedup();
            client_entries.extend(std::iter::repeat_n(index as i32 + 1, ids.len()));
            client_ids.extend(ids);
        }
        sqlx::query("SELECT circle_access_append($1, $2, $3, $4, $5)")
            .bind(&recorded)
            .bind(&agents)
            .bind(&entries)
            .bind(&client_ids)
            .bind(&client_entries)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn read_access(&self, f: &AccessFilter) -> Result<Vec<StoredAccess>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT l.seq, l.entry, l.prev_hash, l.hash FROM access_log l
             WHERE l.seq > $1
               AND ($2::text IS NULL OR l.seq IN
                    (SELECT c.seq FROM access_log_clients c WHERE c.client_id = $2 AND c.seq > $1))
               AND ($3::text IS NULL OR l.agent_who = $3)
               AND ($4::timestamptz IS NULL OR l.recorded >= $4)
               AND ($5::timestamptz IS NULL OR l.recorded < $5)
             ORDER BY l.seq LIMIT $6",
        )
        .bind(f.after)
        .bind(&f.client_id)
        .bind(&f.actor_id)
        .bind(f.from)
        .bind(f.to)
        .bind(f.limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(stored).collect())
    }
}

impl SqliteStore {
    async fn append_access(&self, batch: &[NewAccess]) -> Result<(), StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let (seq, hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, hash FROM access_log_head WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        let planned = plan(seq, hash, batch);
        let Some(last) = planned.rows.last() else {
            return Ok(());
        };
        let (head_seq, head_hash) = (last.seq, last.hash.clone());
        for ((row, recorded), agent) in planned
            .rows
            .iter()
            .zip(&planned.recorded)
            .zip(&planned.agents)
        {
            sqlx::query(
                "INSERT INTO access_log (seq, recorded, agent_who, entry, prev_hash, hash)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(row.seq)
            .bind(sqlite_time(recorded))
            .bind(agent)
            .bind(&row.entry)
            .bind(&row.prev_hash)
            .bind(&row.hash)
            .execute(&mut *tx)
            .await?;
        }
        for (client_id, seq) in &planned.clients {
            sqlx::query("INSERT INTO access_log_clients (client_id, seq) VALUES (?, ?)")
                .bind(client_id)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(MOVE_HEAD)
            .bind(head_seq)
            .bind(&head_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn read_access(&self, f: &AccessFilter) -> Result<Vec<StoredAccess>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT l.seq, l.entry, l.prev_hash, l.hash FROM access_log l
             WHERE l.seq > ?1
               AND (?2 IS NULL OR l.seq IN
                    (SELECT c.seq FROM access_log_clients c WHERE c.client_id = ?2 AND c.seq > ?1))
               AND (?3 IS NULL OR l.agent_who = ?3)
               AND (?4 IS NULL OR l.recorded >= ?4)
               AND (?5 IS NULL OR l.recorded < ?5)
             ORDER BY l.seq LIMIT ?6",
        )
        .bind(f.after)
        .bind(&f.client_id)
        .bind(&f.actor_id)
        .bind(f.from.as_ref().map(sqlite_time))
        .bind(f.to.as_ref().map(sqlite_time))
        .bind(f.limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(stored).collect())
    }
}

/// Whether `rows` (consecutive, from the chain's start or from a row whose hash is
/// `prev`) link up: each row's `prev_hash` is the one before's `hash`, and each hash
/// is its text's. Returns the first `seq` that does not.
pub fn verify_chain(prev: &[u8], rows: &[StoredAccess]) -> Result<(), i64> {
    let mut prev = prev.to_vec();
    for row in rows {
        if row.prev_hash != prev || row.hash != chain_hash(&row.prev_hash, row.seq, &row.entry) {
            return Err(row.seq);
        }
        prev = row.hash.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(who: &str) -> NewAccess {
        NewAccess {
            recorded: Utc::now(),
            agent_who: who.into(),
            client_ids: vec!["b".into(), "a".into(), "a".into()],
            entry: serde_json::json!({"agent": {"who": who}}),
        }
    }

    #[test]
    fn a_batch_continues_the_chain_and_a_changed_entry_breaks_it() {
        let planned = plan(0, GENESIS.to_vec(), &[access("x"), access("y")]);
        assert_eq!(verify_chain(&GENESIS, &planned.rows), Ok(()));
        assert_eq!(planned.rows[1].seq, 2);
        assert_eq!(planned.clients.len(), 4, "duplicates within one entry go");
        let mut tampered = planned.rows.clone();
        tampered[0].entry = tampered[0].entry.replace('x', "z");
        assert_eq!(verify_chain(&GENESIS, &tampered), Err(1));
        let next = plan(2, planned.rows[1].hash.clone(), &[access("z")]);
        let mut all = planned.rows;
        all.extend(next.rows);
        assert_eq!(verify_chain(&GENESIS, &all), Ok(()));
    }
}

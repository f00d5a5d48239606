//! The hash chain: `hash(n) = SHA-256(hash(n - 1) ‖ canonical_bytes(event n))`, with
//! 32 zero bytes before position 1. `canonical_bytes` is format 1, fixed and
//! documented in ARCHITECTURE.md ("The audit chain") so that anyone can recompute it
//! from an export:
//!
//! ```text
//! 0x01                                   format version
//! u64  position
//! 16   event_id                          (UUID bytes, RFC 9562 order)
//! str  aggregate_type    str aggregate_id
//! u64  sequence
//! str  event_type        u32 event_version
//! str  payload                           (the exact JSON text stored, UTF-8)
//! i64  occurred_at       i64 recorded_at (microseconds since 1970-01-01T00:00:00Z)
//! str  actor_id          str actor_role
//! 16   correlation_id
//! 0x00 | 0x01 16         causation_id    (absent | present)
//! ```
//!
//! Integers are big-endian; `str` is a u32 byte length then UTF-8 bytes. Personal
//! data is inside the payload only in sealed form, so erasing a key changes no byte.
//!
//! PostgreSQL chains in `circle_append_batch` from the [`tail`] Rust computes before
//! the lock (everything after the position); SQLite chains here, in the transaction.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash before position 1.
pub const GENESIS: Hash = [0; 32];

/// The `canonical_bytes` format this module writes.
pub const FORMAT: u8 = 1;

/// An event as the audit feed, the export and the chain see it: every column, the
/// payload as the exact stored text, and the stored chain hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: u32,
    /// The JSON text that was hashed (personal data in it is sealed).
    pub payload: String,
    #[serde(with = "micros")]
    pub occurred_at: DateTime<Utc>,
    #[serde(with = "micros")]
    pub recorded_at: DateTime<Utc>,
    pub actor_id: String,
    pub actor_role: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    /// The stored chain hash, lowercase hex.
    #[serde(with = "hex_hash")]
    pub hash: Hash,
}

/// The fields `canonical_bytes` covers, borrowed, so the append path can hash
/// before anything is stored.
pub struct EventFields<'a> {
    pub event_id: Uuid,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: u32,
    pub payload: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub actor_id: &'a str,
    pub actor_role: &'a str,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

impl AuditEvent {
    pub fn fields(&self) -> EventFields<'_> {
        EventFields {
            event_id: self.event_id,
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: self.event_version,
            payload: &self.payload,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            actor_id: &self.actor_id,
            actor_role: &self.actor_role,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
        }
    }

    /// The chain hash this event must have after `previous`.
    pub fn expected_hash(&self, previous: &Hash) -> Hash {
        chain(previous, self.position, &tail(&self.fields()))
    }
}

/// `canonical_bytes` without its first nine bytes (format and position): what the
/// PostgreSQL append function completes once it knows the position.
pub fn tail(e: &EventFields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + e.payload.len());
    write_tail(&mut out, e);
    out
}

/// [`tail`], appended to `out` (no allocation of its own).
pub fn write_tail(out: &mut Vec<u8>, e: &EventFields<'_>) {
    out.extend_from_slice(e.event_id.as_bytes());
    put_str(out, e.aggregate_type);
    put_str(out, e.aggregate_id);
    out.extend_from_slice(&e.sequence.to_be_bytes());
    put_str(out, e.event_type);
    out.extend_from_slice(&e.event_version.to_be_bytes());
    put_str(out, e.payload);
    out.extend_from_slice(&e.occurred_at.timestamp_micros().to_be_bytes());
    out.extend_from_slice(&e.recorded_at.timestamp_micros().to_be_bytes());
    put_str(out, e.actor_id);
    put_str(out, e.actor_role);
    out.extend_from_slice(e.correlation_id.as_bytes());
    match e.causation_id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id.as_bytes());
        }
    }
}

/// Events as the chain check needs them, packed for speed: each one's position,
/// stored hash and canonical tail ([`tail`]), the tails in one buffer. A page of
/// the log is read into one of these (PostgreSQL fills it straight from a binary
/// `COPY`), then hashed on another thread.
#[derive(Clone, Debug, Default)]
pub struct ChainRows {
    tails: Vec<u8>,
    rows: Vec<ChainRow>,
}

#[derive(Clone, Debug)]
struct ChainRow {
    position: i64,
    hash: Hash,
    end: usize,
}

impl ChainRows {
    pub fn with_capacity(rows: usize, bytes: usize) -> ChainRows {
        ChainRows {
            tails: Vec::with_capacity(bytes),
            rows: Vec::with_capacity(rows),
        }
    }

    pub fn push_event(&mut self, event: &AuditEvent) {
        write_tail(&mut self.tails, &event.fields());
        self.end_row(event.position, event.hash);
    }

    /// Where the next row's tail is written (then [`ChainRows::end_row`]).
    pub fn tail_buffer(&mut self) -> &mut Vec<u8> {
        &mut self.tails
    }

    /// Ends the row whose tail was written into [`ChainRows::tail_buffer`].
    pub fn end_row(&mut self, position: i64, hash: Hash) {
        self.rows.push(ChainRow {
            position,
            hash,
            end: self.tails.len(),
        });
    }

    /// Drops a row whose tail was only partly written (a malformed source).
    pub fn truncate_tail(&mut self) {
        let end = self.rows.last().map_or(0, |r| r.end);
        self.tails.truncate(end);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// `(position, stored hash, tail)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &Hash, &[u8])> + '_ {
        let mut start = 0;
        self.rows.iter().map(move |row| {
            let tail = self.tails.get(start..row.end).unwrap_or_default();
            start = row.end;
            (row.position, &row.hash, tail)
        })
    }

    /// The last row's tail.
    pub fn last_tail(&self) -> Option<&[u8]> {
        let n = self.rows.len();
        let start = match n {
            0 => return None,
            1 => 0,
            _ => self.rows[n - 2].end,
        };
        self.tails.get(start..self.rows[n - 1].end)
    }

    pub fn first_position(&self) -> Option<i64> {
        self.rows.first().map(|r| r.position)
    }

    /// Drops the first row (kept only for its stored hash).
    pub fn split_first(mut self) -> Option<((i64, Hash), ChainRows)> {
        if self.rows.is_empty() {
            return None;
        }
        let first = self.rows.remove(0);
        self.tails.drain(..first.end);
        for row in &mut self.rows {
            row.end -= first.end;
        }
        Some(((first.position, first.hash), self))
    }

    /// Keeps only the rows at or below `position`.
    pub fn keep_to(&mut self, position: i64) {
        let kept = self.rows.partition_point(|r| r.position <= position);
        self.rows.truncate(kept);
        self.truncate_tail();
    }

    /// Each row's expected hash, chained from `previous` and then from each row's
    /// stored hash: `(the hash it was chained from, the hash it must have)`.
    pub fn expected_hashes(&self, mut previous: Hash) -> Vec<(Hash, Hash)> {
        self.iter()
            .map(|(position, stored, tail)| {
                let used = previous;
                previous = *stored;
                (used, chain(&used, position, tail))
            })
            .collect()
    }
}

/// `canonical_bytes(event)` in full.
pub fn canonical_bytes(position: i64, e: &EventFields<'_>) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend_from_slice(&position.to_be_bytes());
    out.extend_from_slice(&tail(e));
    out
}

/// `SHA-256(previous ‖ canonical_bytes)` from the tail.
pub fn chain(previous: &Hash, position: i64, tail: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update([FORMAT]);
    hasher.update(position.to_be_bytes());
    hasher.update(tail);
    hasher.finalize().into()
}

/// Times are chained at microseconds (PostgreSQL's precision): a time is cut to
/// that before it is both hashed and stored, so the two always agree.
pub fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// 64 hex digits (either case) to a hash.
pub fn hash_from_hex(text: &str) -> Option<Hash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A stored hash column as a [`Hash`]; anything but 32 bytes is corrupt.
pub fn hash_from_slice(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

/// RFC 3339, UTC, exactly six fractional digits: the export's time form.
mod micros {
    use super::*;

    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        let t = DateTime::parse_from_rfc3339(&text).map_err(serde::de::Error::custom)?;
        Ok(t.with_timezone(&Utc))
    }
}

mod hex_hash {
    use super::*;

    pub fn serialize<S: serde::Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(h))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(d)?;
        hash_from_hex(&text).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> AuditEvent {
        AuditEvent {
            position: 1,
            event_id: Uuid::from_u128(0x0102030405060708090a0b0c0d0e0f10),
            aggregate_type: "group".into(),
            aggregate_id: "g1".into(),
            sequence: 1,
            event_type: "SessionCancelled".into(),
            event_version: 1,
            payload: r#"{"reason":"snow","session_id":"s1"}"#.into(),
            occurred_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            recorded_at: DateTime::from_timestamp_micros(1_700_000_001_000_001).unwrap(),
            actor_id: "dr_a".into(),
            actor_role: "clinician".into(),
            correlation_id: Uuid::from_u128(0x11),
            causation_id: None,
            hash: GENESIS,
        }
    }

    /// Pins format 1 byte for byte: a change here breaks every verifier.
    #[test]
    fn canonical_bytes_are_pinned() {
        let e = sample();
        let bytes = canonical_bytes(e.position, &e.fields());
        assert_eq!(
            to_hex(&bytes),
            "01\
             0000000000000001\
             0102030405060708090a0b0c0d0e0f10\
             0000000567726f7570\
             000000026731\
             0000000000000001\
             0000001053657373696f6e43616e63656c6c6564\
             00000001\
             000000237b22726561736f6e223a22736e6f77222c2273657373696f6e5f6964223a227331227d\
             00060a2418202240\
             00060a24182d8241\
             0000000464725f61\
             00000009636c696e696369616e\
             00000000000000000000000000000011\
             00"
        );
        let mut hasher = Sha256::new();
        hasher.update(GENESIS);
        hasher.update(&bytes);
        let direct: Hash = hasher.finalize().into();
        assert_eq!(e.expected_hash(&GENESIS), direct);
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = sample();
        let h = base.expected_hash(&GENESIS);
        let variants: [fn(&mut AuditEvent); 14] = [
            |e| e.position = 2,
            |e| e.event_id = Uuid::from_u128(1),
            |e| e.aggregate_type = "client".into(),
            |e| e.aggregate_id = "g2".into(),
            |e| e.sequence = 2,
            |e| e.event_type = "X".into(),
            |e| e.event_version = 2,
            |e| e.payload = r#"{"reason":"snow","session_id":"s2"}"#.into(),
            |e| e.occurred_at += chrono::Duration::microseconds(1),
            |e| e.recorded_at += chrono::Duration::microseconds(1),
            |e| e.actor_id = "dr_b".into(),
            |e| e.actor_role = "admin".into(),
            |e| e.correlation_id = Uuid::from_u128(0x12),
            |e| e.causation_id = Some(Uuid::nil()),
        ];
        for change in variants {
            let mut e = base.clone();
            change(&mut e);
            assert_ne!(e.expected_hash(&GENESIS), h);
        }
        assert_ne!(base.expected_hash(&[1; 32]), h);
    }

    #[test]
    fn packed_rows_hash_as_the_events_do() {
        let mut previous = GENESIS;
        let events: Vec<AuditEvent> = (1..=3)
            .map(|n| {
                let mut e = sample();
                e.position = n;
                e.causation_id = (n == 2).then(|| Uuid::from_u128(7));
                e.hash = e.expected_hash(&previous);
                previous = e.hash;
                e
            })
            .collect();
        let mut rows = ChainRows::default();
        for e in &events {
            rows.push_event(e);
        }
        let expected = rows.expected_hashes(GENESIS);
        for (e, (used, hash)) in events.iter().zip(&expected) {
            assert_eq!(*hash, e.hash);
            assert_eq!(e.expected_hash(used), e.hash);
        }
        let ((first, _), rest) = rows.clone().split_first().unwrap();
        assert_eq!(first, 1);
        assert_eq!(rest.expected_hashes(events[0].hash), expected[1..]);
        rows.keep_to(2);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.iter().last().unwrap().2, tail(&events[1].fields()));
    }

    #[test]
    fn the_export_form_is_pinned_and_round_trips() {
        let e = sample();
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(
            line,
            r#"{"position":1,"event_id":"01020304-0506-0708-090a-0b0c0d0e0f10","aggregate_type":"group","aggregate_id":"g1","sequence":1,"event_type":"SessionCancelled","event_version":1,"payload":"{\"reason\":\"snow\",\"session_id\":\"s1\"}","occurred_at":"2023-11-14T22:13:20.123456Z","recorded_at":"2023-11-14T22:13:21.000001Z","actor_id":"dr_a","actor_role":"clinician","correlation_id":"00000000-0000-0000-0000-000000000011","causation_id":null,"hash":"0000000000000000000000000000000000000000000000000000000000000000"}"#
        );
        assert_eq!(serde_json::from_str::<AuditEvent>(&line).unwrap(), e);
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        let h: Hash = core::array::from_fn(|i| i as u8 * 7);
        assert_eq!(hash_from_hex(&to_hex(&h)), Some(h));
        assert_eq!(hash_from_hex("zz"), None);
        assert_eq!(hash_from_hex(&"g".repeat(64)), None);
        assert_eq!(hash_from_hex(&"é".repeat(32)), None);
    }
}

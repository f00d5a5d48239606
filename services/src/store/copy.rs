//! The log read for the chain check as PostgreSQL's binary `COPY` stream, turned
//! straight into canonical tails ([`ChainRows`]).
//!
//! Binary `COPY` sends each column in PostgreSQL's own binary form, which for most
//! columns already is `canonical_bytes`' encoding: `bigint` and `integer` are
//! big-endian, a `uuid` its 16 bytes, `text` its UTF-8 bytes behind a 4-byte
//! big-endian length (exactly a canonical `str`). Only times differ: microseconds
//! since 2000-01-01 become microseconds since 1970-01-01. So a row costs a few
//! copies and no decoding, and the rows arrive as one stream instead of pages of
//! result messages: this is what lets `circle audit verify --database-url` check
//! more than 500,000 events a second.

use super::StoreError;
use crate::audit::chain::{ChainRows, Hash};

/// `COPY … (FORMAT binary)`'s signature, then flags and the header extension length.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// The columns, in the order [`push_row`] reads them.
pub(super) const COLUMNS: &str = "position, event_id, aggregate_type, aggregate_id, sequence, \
    event_type, event_version, payload_text, occurred_at, recorded_at, actor_id, actor_role, \
    correlation_id, causation_id, hash";
const FIELDS: usize = 15;
/// 2000-01-01T00:00:00Z in microseconds since 1970-01-01T00:00:00Z.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("the log's COPY stream: {what}"))
}

/// Reads a binary `COPY` stream chunk by chunk into [`ChainRows`].
#[derive(Default)]
pub(super) struct CopyReader {
    pending: Vec<u8>,
    header_read: bool,
    ended: bool,
}

impl CopyReader {
    /// Takes one chunk of the stream and packs every whole row in what has arrived.
    pub(super) fn feed(&mut self, chunk: &[u8], rows: &mut ChainRows) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            let used = self.parse(chunk, rows)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            self.pending.extend_from_slice(chunk);
            let pending = std::mem::take(&mut self.pending);
            let used = self.parse(&pending, rows)?;
            self.pending = pending;
            self.pending.drain(..used);
        }
        Ok(())
    }

    /// At the end of the stream: nothing may be left over, and the trailer was seen.
    pub(super) fn finish(self) -> Result<(), StoreError> {
        if !self.ended || !self.pending.is_empty() {
            return Err(corrupt("it ended in the middle of a row"));
        }
        Ok(())
    }

    /// Packs whole rows from `buf`; returns how many bytes it used.
    fn parse(&mut self, buf: &[u8], rows: &mut ChainRows) -> Result<usize, StoreError> {
        let mut at = 0;
        if !self.header_read {
            let fixed = SIGNATURE.len() + 8;
            let Some(header) = buf.get(..fixed) else {
                return Ok(0);
            };
            if &header[..SIGNATURE.len()] != SIGNATURE {
                return Err(corrupt("no binary COPY signature"));
            }
            let extension = be_u32(&header[fixed - 4..]) as usize;
            if buf.len() < fixed + extension {
                return Ok(0);
            }
            at = fixed + extension;
            self.header_read = true;
        }
        while !self.ended {
            match tuple(&buf[at..])? {
                None => break,
                Some((used, None)) => {
                    at += used;
                    self.ended = true;
                }
                Some((used, Some(fields))) => {
                    push_row(rows, &fields)?;
                    at += used;
                }
            }
        }
        Ok(at)
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().unwrap_or_default())
}

type Fields<'a> = [Option<&'a [u8]>; FIELDS];

/// One tuple from the start of `buf`: `None` when it has not all arrived, the
/// trailer as `Some((2, None))`.
fn tuple(buf: &[u8]) -> Result<Option<(usize, Option<Fields<'_>>)>, StoreError> {
    let Some(count) = buf.get(..2) else {
        return Ok(None);
    };
    let count = i16::from_be_bytes([count[0], count[1]]);
    if count == -1 {
        return Ok(Some((2, None)));
    }
    if count as usize != FIELDS {
        return Err(corrupt(format!("a row of {count} columns, not {FIELDS}")));
    }
    let mut fields: Fields<'_> = [None; FIELDS];
    let mut at = 2;
    for field in &mut fields {
        let Some(length) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        let length = i32::from_be_bytes(length.try_into().unwrap_or_default());
        at += 4;
        if length < 0 {
            continue; // NULL
        }
        let Some(value) = buf.get(at..at + length as usize) else {
            return Ok(None);
        };
        *field = Some(value);
        at += length as usize;
    }
    Ok(Some((at, Some(fields))))
}

/// A column of exactly `N` bytes.
fn fixed<'a, const N: usize>(
    value: Option<&'a [u8]>,
    name: &str,
) -> Result<&'a [u8; N], StoreError> {
    value
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| corrupt(format!("{name} is not {N} bytes")))
}

/// A `text` column as a canonical `str`: its 4-byte length, then its bytes.
fn put_text(out: &mut Vec<u8>, value: Option<&[u8]>, name: &str) -> Result<(), StoreError> {
    let text = value.ok_or_else(|| corrupt(format!("{name} is NULL")))?;
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text);
    Ok(())
}

fn put_time(out: &mut Vec<u8>, value: Option<&[u8]>, name: &str) -> Result<(), StoreError> {
    let since_2000 = i64::from_be_bytes(*fixed::<8>(value, name)?);
    let since_1970 = since_2000
        .checked_add(PG_EPOCH_MICROS)
        .ok_or_else(|| corrupt(format!("{name} is out of range")))?;
    out.extend_from_slice(&since_1970.to_be_bytes());
    Ok(())
}

/// Appends one row's canonical tail (the layout of `chain::write_tail`).
fn push_row(rows: &mut ChainRows, f: &Fields<'_>) -> Result<(), StoreError> {
    let position = i64::from_be_bytes(*fixed::<8>(f[0], "position")?);
    let hash: Hash = *fixed::<32>(f[14], "hash")?;
    let out = rows.tail_buffer();
    let written = (|| {
        out.extend_from_slice(fixed::<16>(f[1], "event_id")?);
        put_text(out, f[2], "aggregate_type")?;
        put_text(out, f[3], "aggregate_id")?;
        out.extend_from_slice(fixed::<8>(f[4], "sequence")?);
        put_text(out, f[5], "event_type")?;
        out.extend_from_slice(fixed::<4>(f[6], "event_version")?);
        put_text(out, f[7], "payload_text")?;
        put_time(out, f[8], "occurred_at")?;
        put_time(out, f[9], "recorded_at")?;
        put_text(out, f[10], "actor_id")?;
        put_text(out, f[11], "actor_role")?;
        out.extend_from_slice(fixed::<16>(f[12], "correlation_id")?);
        match f[13] {
            None => out.push(0),
            Some(_) => {
                out.push(1);
                out.extend_from_slice(fixed::<16>(f[13], "causation_id")?);
            }
        }
        Ok(())
    })();
    match written {
        Ok(()) => {
            rows.end_row(position, hash);
            Ok(())
        }
        Err(error) => {
            rows.truncate_tail();
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{tail, tests::sample};

    fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }

    /// What PostgreSQL sends for the sample event, by the binary COPY format.
    fn copied(causation: bool) -> Vec<u8> {
        let mut e = sample();
        e.causation_id = causation.then(|| uuid::Uuid::from_u128(9));
        let micros = |t: chrono::DateTime<chrono::Utc>| {
            (t.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes()
        };
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&15i16.to_be_bytes());
        field(&mut out, Some(&e.position.to_be_bytes()));
        field(&mut out, Some(e.event_id.as_bytes()));
        field(&mut out, Some(e.aggregate_type.as_bytes()));
        field(&mut out, Some(e.aggregate_id.as_bytes()));
        field(&mut out, Some(&e.sequence.to_be_bytes()));
        field(&mut out, Some(e.event_type.as_bytes()));
        field(&mut out, Some(&e.event_version.to_be_bytes()));
        field(&mut out, Some(e.payload.as_bytes()));
        field(&mut out, Some(&micros(e.occurred_at)));
        field(&mut out, Some(&micros(e.recorded_at)));
        field(&mut out, Some(e.actor_id.as_bytes()));
        field(&mut out, Some(e.actor_role.as_bytes()));
        field(&mut out, Some(e.correlation_id.as_bytes()));
        field(
            &mut out,
            e.causation_id.as_ref().map(|c| c.as_bytes().as_slice()),
        );
        field(&mut out, Some(&[7; 32]));
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn a_copied_row_packs_to_the_canonical_tail_in_any_chunking() {
        for causation in [false, true] {
            let mut e = sample();
            e.causation_id = causation.then(|| uuid::Uuid::from_u128(9));
            let stream = copied(causation);
            for chunk in [1, 7, 64, stream.len()] {
                let (mut reader, mut rows) = (CopyReader::default(), ChainRows::default());
                for piece in stream.chunks(chunk) {
                    reader.feed(piece, &mut rows).unwrap();
                }
                reader.finish().unwrap();
                let packed: Vec<_> = rows.iter().map(|(p, h, t)| (p, *h, t.to_vec())).collect();
                assert_eq!(
                    packed,
                    vec![(1, [7; 32], tail(&e.fields()))],
                    "chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn a_malformed_stream_is_an_error_never_a_panic() {
        let stream = copied(false);
        for cut in [0, 5, 30, stream.len() - 2] {
            let (mut reader, mut rows) = (CopyReader::default(), ChainRows::default());
            let fed = reader.feed(&stream[..cut], &mut rows);
            assert!(fed.is_err() || reader.finish().is_err(), "cut at {cut}");
        }
        let mut bad = stream.clone();
        bad[0] = b'X';
        assert!(CopyReader::default()
            .feed(&bad, &mut ChainRows::default())
            .is_err());
        let mut short_hash = stream.clone();
        let at = short_hash.len() - 2 - 32 - 4;
        short_hash[at..at + 4].copy_from_slice(&31i32.to_be_bytes());
        let (mut reader, mut rows) = (CopyReader::default(), ChainRows::default());
        assert!(reader.feed(&short_hash, &mut rows).is_err() || reader.finish().is_err());
        assert!(rows.is_empty());
    }
}

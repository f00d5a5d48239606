//! Checking a log from its events alone: positions from 1 without a gap, every hash
//! recomputed from the event's contents and the hash before it, and the Merkle root
//! of every prefix, to compare with signed checkpoints. The same check serves the
//! offline export verifier, `circle audit verify --database-url` and
//! `GET /api/v1/audit/verify`.

use std::io::BufRead;

use super::chain::{to_hex, AuditEvent, ChainRows, Hash, GENESIS};
use super::merkle::CompactRange;
use super::note::{Checkpoint, Verifier};

/// The first thing wrong with a log, and where.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("position {position}: {reason}")]
pub struct BadPosition {
    pub position: i64,
    pub reason: String,
}

impl BadPosition {
    pub fn new(position: i64, reason: impl Into<String>) -> BadPosition {
        BadPosition {
            position,
            reason: reason.into(),
        }
    }
}

/// A log checked event by event, in position order.
#[derive(Clone, Debug)]
pub struct LogCheck {
    previous: Hash,
    range: CompactRange,
}

impl Default for LogCheck {
    fn default() -> LogCheck {
        LogCheck {
            previous: GENESIS,
            range: CompactRange::default(),
        }
    }
}

impl LogCheck {
    /// Events checked so far (= the last good position).
    pub fn checked(&self) -> u64 {
        self.range.size()
    }

    /// The RFC 6962 root of the events checked so far.
    pub fn root(&self) -> Hash {
        self.range.root()
    }

    /// The position the next event must have.
    pub fn next_position(&self) -> i64 {
        self.checked() as i64 + 1
    }

    /// Checks the next event: its position, then its hash.
    pub fn push(&mut self, event: &AuditEvent) -> Result<(), BadPosition> {
        self.push_hashed(event, None)
    }

    /// Like [`LogCheck::push`], given `(previous, expected)`: the event's hash computed
    /// elsewhere (in parallel) after `previous`. Used only when `previous` is the hash
    /// this check holds, so the outcome is the same as hashing here.
    pub fn push_hashed(
        &mut self,
        event: &AuditEvent,
        hashed: Option<(Hash, Hash)>,
    ) -> Result<(), BadPosition> {
        self.check_position(event.position)?;
        let expected = match hashed {
            Some((previous, expected)) if previous == self.previous => expected,
            _ => event.expected_hash(&self.previous),
        };
        self.check_hash(&event.hash, &expected)
    }

    /// Like [`LogCheck::push_hashed`] for a packed row: `tail` is its canonical tail,
    /// hashed here only if `hashed` was chained from another hash than this check's.
    pub fn push_row(
        &mut self,
        position: i64,
        stored: &Hash,
        tail: &[u8],
        hashed: Option<(Hash, Hash)>,
    ) -> Result<(), BadPosition> {
        self.check_position(position)?;
        let expected = match hashed {
            Some((previous, expected)) if previous == self.previous => expected,
            _ => super::chain::chain(&self.previous, position, tail),
        };
        self.check_hash(stored, &expected)
    }

    fn check_position(&self, position: i64) -> Result<(), BadPosition> {
        let next = self.next_position();
        if position > next {
            return Err(BadPosition::new(
                next,
                format!("missing: the next event is at position {position}"),
            ));
        }
        if position < next {
            return Err(BadPosition::new(
                position,
                format!("out of order or repeated, after position {}", next - 1),
            ));
        }
        Ok(())
    }

    fn check_hash(&mut self, stored: &Hash, expected: &Hash) -> Result<(), BadPosition> {
        if expected != stored {
            return Err(BadPosition::new(
                self.next_position(),
                "the hash does not match the event's contents and the hash before it",
            ));
        }
        self.previous = *stored;
        self.range.push(stored, |_, _, _| {});
        Ok(())
    }

    /// Called at the end of the log: nothing may be missing up to `size`.
    pub fn ends_at_or_after(&self, size: u64) -> Result<(), BadPosition> {
        if self.checked() < size {
            return Err(BadPosition::new(
                self.next_position(),
                format!(
                    "missing: the log ends at position {} but a checkpoint covers {size} events",
                    self.checked()
                ),
            ));
        }
        Ok(())
    }
}

/// Why an export failed: a position, or the checkpoint itself.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ExportFailure {
    #[error("{0}")]
    Bad(#[from] BadPosition),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// A checked export: how many events, and their root.
#[derive(Debug, PartialEq)]
pub struct ExportSummary {
    pub events: u64,
    pub root: Hash,
    /// The checkpoint whose signature and root were checked.
    pub checkpoint: Option<Checkpoint>,
}

impl std::fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok {} events, root {}", self.events, to_hex(&self.root))
    }
}

/// Checks an NDJSON export (one event per line, from position 1) offline, and, when
/// given a signed checkpoint and the verifier key, its signature and that the export
/// has its root at its size. Never panics: every malformed input is a failure.
pub fn verify_export(
    export: impl BufRead,
    checkpoint: Option<(&str, &str)>,
) -> Result<ExportSummary, ExportFailure> {
    let checkpoint = match checkpoint {
        None => None,
        Some((note, key)) => {
            let verifier =
                Verifier::parse(key).map_err(|e| ExportFailure::Checkpoint(e.to_string()))?;
            Some(
                Checkpoint::open(note, &verifier)
                    .map_err(|e| ExportFailure::Checkpoint(e.to_string()))?,
            )
        }
    };
    let mut check = LogCheck::default();
    let compare = |check: &LogCheck| -> Result<(), BadPosition> {
        match &checkpoint {
            Some(c) if c.size == check.checked() && c.root != check.root() => {
                Err(BadPosition::new(
                    c.size as i64,
                    format!(
                        "the first {} events do not have the root of the signed checkpoint",
                        c.size
                    ),
                ))
            }
            _ => Ok(()),
        }
    };
    compare(&check)?;
    // Batches of lines are parsed and hashed on other threads, at most PARSING at a
    // time, while this one reads the next and checks finished ones in order.
    let mut export = export;
    let mut next_line = 1;
    std::thread::scope(|scope| -> Result<(), ExportFailure> {
        let mut parsing = std::collections::VecDeque::new();
        loop {
            let batch = read_batch(&mut export, next_line);
            next_line += batch.lines;
            let last = batch.ended || batch.unreadable.is_some();
            parsing.push_back(scope.spawn(move || parse_batch(batch)));
            while parsing.len() > PARSING || (last && !parsing.is_empty()) {
                let Some(parser) = parsing.pop_front() else {
                    break;
                };
                let parsed = parser.join().unwrap_or_else(|_| Parsed {
                    failure: Some("a parser thread failed".into()),
                    ..Parsed::default()
                });
                for ((position, stored, tail), hashed) in parsed.rows.iter().zip(parsed.hashed) {
                    check.push_row(position, stored, tail, hashed)?;
                    compare(&check)?;
                }
                if let Some(reason) = parsed.failure {
                    return Err(BadPosition::new(check.next_position(), reason).into());
                }
            }
            if last {
                return Ok(());
            }
        }
    })?;
    if let Some(c) = &checkpoint {
        check.ends_at_or_after(c.size)?;
    }
    Ok(ExportSummary {
        events: check.checked(),
        root: check.root(),
        checkpoint,
    })
}

/// Lines per batch of the export check, and batches parsed at once.
const BATCH_LINES: usize = 4096;
const PARSING: usize = 2;

/// Lines of an export as read, before parsing.
struct Batch {
    text: Vec<u8>,
    first_line: usize,
    lines: usize,
    ended: bool,
    /// Reading failed after these lines (the file, not its content).
    unreadable: Option<String>,
}

fn read_batch(export: &mut impl BufRead, first_line: usize) -> Batch {
    let mut batch = Batch {
        text: Vec::with_capacity(BATCH_LINES * 700),
        first_line,
        lines: 0,
        ended: false,
        unreadable: None,
    };
    while batch.lines < BATCH_LINES {
        match export.read_until(b'\n', &mut batch.text) {
            Ok(0) => {
                batch.ended = true;
                break;
            }
            Ok(_) => batch.lines += 1,
            Err(e) => {
                batch.unreadable = Some(e.to_string());
                break;
            }
        }
    }
    batch
}

/// A batch parsed: its events packed, each one's hash from the one before it in the
/// batch (the first's is computed by the checker, which holds the hash before it),
/// and what stopped it, if anything did.
#[derive(Default)]
struct Parsed {
    rows: ChainRows,
    hashed: Vec<Option<(Hash, Hash)>>,
    failure: Option<String>,
}

fn parse_batch(batch: Batch) -> Parsed {
    let mut parsed = Parsed {
        rows: ChainRows::with_capacity(batch.lines, batch.text.len()),
        ..Parsed::default()
    };
    let mut previous: Option<Hash> = None;
    let mut number = batch.first_line;
    for line in batch.text.split_inclusive(|b| *b == b'\n') {
        let line = match std::str::from_utf8(line) {
            Ok(line) => line,
            Err(e) => {
                parsed.failure = Some(format!("line {number} is unreadable: {e}"));
                return parsed;
            }
        };
        if !line.trim().is_empty() {
            let event: AuditEvent = match serde_json::from_str(line) {
                Ok(event) => event,
                Err(e) => {
                    parsed.failure = Some(format!("line {number} is not an event: {e}"));
                    return parsed;
                }
            };
            parsed.rows.push_event(&event);
            let hashed = previous
                .zip(parsed.rows.last_tail())
                .map(|(used, tail)| (used, super::chain::chain(&used, event.position, tail)));
            parsed.hashed.push(hashed);
            previous = Some(event.hash);
        }
        number += 1;
    }
    if let Some(e) = batch.unreadable {
        parsed.failure = Some(format!("line {number} is unreadable: {e}"));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::tests::sample;

    /// A valid log of `n` events.
    pub(crate) fn log(n: i64) -> Vec<AuditEvent> {
        let mut previous = GENESIS;
        (1..=n)
            .map(|position| {
                let mut e = sample();
                e.position = position;
                e.sequence = position;
                e.payload = format!(r#"{{"n":{position}}}"#);
                e.hash = e.expected_hash(&previous);
                previous = e.hash;
                e
            })
            .collect()
    }

    fn first_bad(events: &[AuditEvent]) -> Option<BadPosition> {
        let mut check = LogCheck::default();
        events.iter().find_map(|e| check.push(e).err())
    }

    #[test]
    fn a_valid_log_passes_and_each_kind_of_damage_names_its_position() {
        let good = log(10);
        assert_eq!(first_bad(&good), None);

        let mut changed = good.clone();
        changed[4].payload = r#"{"n":6}"#.into();
        assert_eq!(first_bad(&changed).unwrap().position, 5);

        let mut deleted = good.clone();
        deleted.remove(6);
        let bad = first_bad(&deleted).unwrap();
        assert_eq!((bad.position, bad.reason.starts_with("missing")), (7, true));

        let mut swapped = good.clone();
        swapped.swap(2, 3);
        assert_eq!(first_bad(&swapped).unwrap().position, 3);

        let mut renumbered = good.clone();
        renumbered.swap(2, 3);
        renumbered[2].position = 3;
        renumbered[3].position = 4;
        assert_eq!(first_bad(&renumbered).unwrap().position, 3);

        let mut inserted = good.clone();
        let mut extra = good[8].clone();
        extra.event_id = uuid::Uuid::from_u128(99);
        inserted.insert(8, extra);
        for (i, e) in inserted.iter_mut().enumerate() {
            e.position = i as i64 + 1;
        }
        assert_eq!(first_bad(&inserted).unwrap().position, 9);
    }

    fn export(events: &[AuditEvent]) -> String {
        events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect()
    }

    #[test]
    fn an_export_verifies_with_its_checkpoint_and_malformed_input_fails_with_a_reason() {
        use crate::audit::note::Signer;
        let events = log(12);
        let text = export(&events);
        let summary = verify_export(text.as_bytes(), None).unwrap();
        assert_eq!(summary.events, 12);
        assert!(summary.to_string().starts_with("ok 12 events, root "));

        let signer = Signer::parse(&Signer::generate("t.example/log").unwrap()).unwrap();
        let key = signer.verifier_key();
        let mut prefix = LogCheck::default();
        for e in &events[..10] {
            prefix.push(e).unwrap();
        }
        let at_10 = signer.sign(
            &Checkpoint {
                origin: "t.example/log".into(),
                size: 10,
                root: prefix.root(),
            }
            .text(),
        );
        let ok = verify_export(text.as_bytes(), Some((&at_10, &key))).unwrap();
        assert_eq!(ok.checkpoint.unwrap().size, 10);

        let wrong_root = signer.sign(
            &Checkpoint {
                origin: "t.example/log".into(),
                size: 10,
                root: [1; 32],
            }
            .text(),
        );
        let failed = verify_export(text.as_bytes(), Some((&wrong_root, &key))).unwrap_err();
        assert!(matches!(
            failed,
            ExportFailure::Bad(BadPosition { position: 10, .. })
        ));

        let short = export(&events[..8]);
        let failed = verify_export(short.as_bytes(), Some((&at_10, &key))).unwrap_err();
        assert!(matches!(
            failed,
            ExportFailure::Bad(BadPosition { position: 9, .. })
        ));

        let forged = at_10.replace("\n10\n", "\n11\n");
        assert!(matches!(
            verify_export(text.as_bytes(), Some((&forged, &key))),
            Err(ExportFailure::Checkpoint(_))
        ));
        assert!(matches!(
            verify_export(text.as_bytes(), Some((&at_10, "not a key"))),
            Err(ExportFailure::Checkpoint(_))
        ));

        let truncated = &text[..text.len() - 40];
        let failed = verify_export(truncated.as_bytes(), None).unwrap_err();
        assert!(matches!(
            failed,
            ExportFailure::Bad(BadPosition { position: 12, .. })
        ));
        for junk in ["{", "[]", "null", "\u{0}", "{\"position\":1}"] {
            let failed = verify_export(junk.as_bytes(), None).unwrap_err();
            assert!(matches!(
                failed,
                ExportFailure::Bad(BadPosition { position: 1, .. })
            ));
        }
        let not_utf8: &[u8] = b"\xff\xfe\n";
        assert!(verify_export(not_utf8, None).is_err());
    }

    #[test]
    fn a_log_shorter_than_a_checkpoint_names_the_first_missing_position() {
        let mut check = LogCheck::default();
        for e in log(3) {
            check.push(&e).unwrap();
        }
        assert!(check.ends_at_or_after(3).is_ok());
        assert_eq!(check.ends_at_or_after(5).unwrap_err().position, 4);
    }
}

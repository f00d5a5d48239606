//! `as_of` reports at scale: they fold the log up to a past time, which at millions
//! of events is the most expensive read Circle serves.
//!
//! - [`crate::slots::Slots`] bound how many such folds run at once; the rest are told
//!   to come back (503 with `Retry-After`) instead of queueing on two cores.
//! - Snapshots: the projector keeps the fold of every event up to a position, every
//!   N events ([`Snapshots`]), with the latest `recorded_at` among them (the state's
//!   own `max_recorded_at`). [`practice_as_of`]
//!   starts from the newest snapshot whose events were all recorded by `as_of`, then
//!   folds the rest with the usual `recorded_at <= as_of` filter. Because every event
//!   in such a snapshot passes that filter, the answer is the one a fold from
//!   position 0 would give.
//!
//! - When the live reports already are the practice as of that time (an `as_of` at
//!   or after everything they folded, with nothing later recorded by then), they
//!   answer without a fold ([`live_position_as_of`]).
//!
//! Snapshots are a cache: one that cannot be read is ignored, and a fold starts
//! only from one built under its own settings digest (alert rules, k, catalogue
//! versions and the state's format: a state of an older format would read its newer
//! fields as empty); without one it starts from position 0.

use chrono::{DateTime, Utc};
use circle_projections::practice::Practice;

use crate::projector::{self, LiveReports, ProjectionError, ProjectionSettings};
use crate::store::{LogRange, Snapshot, Store, Stretch};

const PAGE: i64 = 10_000;

/// The practice as the log stood at `as_of`, from the newest usable snapshot.
pub async fn practice_as_of(
    store: &Store,
    settings: &ProjectionSettings,
    as_of: DateTime<Utc>,
) -> Result<Practice, ProjectionError> {
    let mut practice = store
        .latest_snapshot(Some(as_of), Some(&settings.digest()))
        .await?
        .and_then(|snapshot| restore(&snapshot))
        .unwrap_or_else(|| Practice::new(settings.alert_rules));
    let ranges = store.snapshot_ranges(practice.position).await?;
    for (after, upto) in stretches_to_read(practice.position, &ranges, as_of) {
        let mut cursor = after;
        loop {
            let stretch = Stretch {
                after: cursor,
                upto,
                until: as_of,
                limit: PAGE,
            };
            let page = store.read_raw_until(stretch).await?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            for raw in page {
                practice.apply(&projector::fact(raw)?);
            }
            cursor = last;
        }
    }
    Ok(practice)
}

/// The stretches `(after, upto]` of the log beyond `from` that may hold events
/// recorded by `as_of`: all of it but the stretches a snapshot row vouches were
/// recorded after then.
fn stretches_to_read(
    from: i64,
    ranges: &[(i64, LogRange)],
    as_of: DateTime<Utc>,
) -> Vec<(i64, i64)> {
    let mut stretches = Vec::new();
    let mut cursor = from;
    for &(position, range) in ranges {
        if position <= cursor || range.min_recorded_at <= as_of {
            continue;
        }
        // Read up to where the skipped stretch starts (rows may overlap: each one's
        // minimum holds for any part of its stretch).
        if range.after > cursor {
            stretches.push((cursor, range.after));
        }
        cursor = position;
    }
    stretches.push((cursor, i64::MAX));
    stretches
}

/// Whether the live reports are exactly the practice as of `as_of`: every event they
/// folded was recorded by then and none after them was. Returns the position to check
/// under the read lock (the state may move on meanwhile), or `None` to fold instead.
/// An `as_of` at the head of the log then costs no fold at all.
pub async fn live_position_as_of(
    live: &LiveReports,
    store: &Store,
    as_of: DateTime<Utc>,
) -> Result<Option<i64>, ProjectionError> {
    if live.rebuilding() {
        return Ok(None);
    }
    let (position, covered) =
        live.read(|p| (p.position, p.max_recorded_at.is_none_or(|m| m <= as_of)));
    if !covered
        || !store
            .read_raw_until(Stretch {
                after: position,
                upto: i64::MAX,
                until: as_of,
                limit: 1,
            })
            .await?
            .is_empty()
    {
        return Ok(None);
    }
    Ok(Some(position))
}

/// Keeps a snapshot of the fold it is shown at every multiple of `every` events.
/// The projector shows it its own state as it folds (following or rebuilding), so
/// snapshots cost no second fold and no second state. Each one also says when the
/// events since the previous one were recorded at the earliest ([`LogRange`]), and
/// the settings the fold is built under: one of the current settings is also a
/// point the live reports resume from after a restart.
#[derive(Clone, Debug)]
pub struct Snapshots {
    every: i64,
    next: i64,
    range_after: i64,
    range_min: Option<DateTime<Utc>>,
    settings: String,
}

impl Snapshots {
    /// For a fold now at `position`, built under `settings` (their digest).
    pub fn new(every: i64, position: i64, settings: &str) -> Snapshots {
        let every = every.max(1);
        Snapshots {
            every,
            next: (position / every + 1) * every,
            range_after: position,
            range_min: None,
            settings: settings.to_string(),
        }
    }

    pub fn every(&self) -> i64 {
        self.every
    }

    /// The position the next snapshot falls due at.
    pub fn next_due(&self) -> i64 {
        self.next
    }

    /// The fold has just applied an event recorded at `recorded_at`, reaching
    /// `practice.position`: the snapshot due there, if any and if `keep` (only the
    /// leader keeps them; the others just follow along). It is taken
    /// ([`DueSnapshot::take`]) before the fold applies anything more.
    pub fn due(
        &mut self,
        practice: &Practice,
        recorded_at: DateTime<Utc>,
        keep: bool,
    ) -> Option<DueSnapshot> {
        self.range_min = Some(self.range_min.map_or(recorded_at, |m| m.min(recorded_at)));
        if practice.position < self.next {
            return None;
        }
        self.next = (practice.position / self.every + 1) * self.every;
        let range = self.range_min.take().map(|min_recorded_at| LogRange {
            after: self.range_after,
            min_recorded_at,
        });
        self.range_after = practice.position;
        let max_recorded_at = practice.max_recorded_at.filter(|_| keep)?;
        Some(DueSnapshot {
            position: practice.position,
            max_recorded_at,
            range,
            settings: self.settings.clone(),
        })
    }
}

/// A snapshot that fell due at `position`, not yet serialized. The projector
/// serializes it once the events up to it are applied and the write lock is
/// released, under the read lock: at 1,000,000 events that takes most of a second,
/// during which every reader (reports, the dashboard, the NATS publisher) would
/// otherwise wait, each holding a worker thread.
#[derive(Debug)]
pub struct DueSnapshot {
    position: i64,
    max_recorded_at: DateTime<Utc>,
    range: Option<LogRange>,
    settings: String,
}

impl DueSnapshot {
    /// Serializes `practice`, which must still be at the position it fell due (a
    /// snapshot whose state is elsewhere is refused when restored: `restore` checks
    /// the position).
    pub fn take(self, practice: &Practice) -> Result<Snapshot, ProjectionError> {
        debug_assert_eq!(practice.position, self.position);
        let state = serde_json::to_string(practice).map_err(ProjectionError::State)?;
        Ok(Snapshot {
            position: self.position,
            max_recorded_at: self.max_recorded_at,
            state,
            range: self.range,
            settings: Some(self.settings),
        })
    }
}

fn restore(snapshot: &Snapshot) -> Option<Practice> {
    let position = snapshot.position;
    match serde_json::from_str::<Practice>(&snapshot.state) {
        Ok(practice) if practice.position == position => Some(practice),
        Ok(_) => {
            tracing::warn!(
                position,
                "a snapshot's state is at another position; not used"
            );
            None
        }
        Err(error) => {
            tracing::warn!(%error, position, "snapshot unreadable; not used");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use circle_projections::practice::AlertRules;

    fn at(position: i64, seconds: i64) -> Practice {
        Practice {
            position,
            max_recorded_at: DateTime::from_timestamp(seconds, 0),
            ..Practice::new(AlertRules::default())
        }
    }

    #[test]
    fn snapshots_fall_due_at_each_multiple_passed_and_carry_the_latest_recording_time() {
        let t = |seconds| DateTime::from_timestamp(seconds, 0).unwrap();
        let mut snapshots = Snapshots::new(10, 3, "settings");
        assert!(snapshots.due(&at(9, 100), t(100), true).is_none());
        let kept = snapshots
            .due(&at(10, 90), t(80), true)
            .unwrap()
            .take(&at(10, 90))
            .unwrap();
        assert_eq!(kept.position, 10);
        assert_eq!(kept.max_recorded_at.timestamp(), 90);
        assert_eq!(kept.settings.as_deref(), Some("settings"));
        // Every event it saw since it started (at 3), at the earliest.
        assert_eq!(
            kept.range,
            Some(LogRange {
                after: 3,
                min_recorded_at: t(80)
            })
        );
        let back: Practice = serde_json::from_str(&kept.state).unwrap();
        assert_eq!(back, at(10, 90));
        assert!(snapshots.due(&at(19, 100), t(120), true).is_none());
        // A fold that jumps past a multiple keeps one where it landed.
        let kept = snapshots.due(&at(25, 100), t(110), true).unwrap();
        assert_eq!((kept.position, kept.range.unwrap().after), (25, 10));
        assert_eq!(kept.range.unwrap().min_recorded_at, t(110));
        // A follower keeps none, but its ranges start afresh all the same.
        assert!(snapshots.due(&at(30, 100), t(130), false).is_none());
        let kept = snapshots.due(&at(40, 100), t(140), true).unwrap();
        assert_eq!(kept.range.unwrap().after, 30);
    }

    #[test]
    fn an_as_of_fold_reads_all_but_the_stretches_recorded_after_it() {
        let t = |seconds| DateTime::from_timestamp(seconds, 0).unwrap();
        let range = |after, seconds| LogRange {
            after,
            min_recorded_at: t(seconds),
        };
        let ranges = [
            (10, range(0, 50)),
            (20, range(10, 100)),
            (30, range(20, 150)),
            // Written after a restart: its stretch starts at the checkpoint.
            (45, range(35, 200)),
            (50, range(45, 90)),
        ];
        assert_eq!(
            stretches_to_read(10, &ranges, t(120)),
            vec![(10, 20), (30, 35), (45, i64::MAX)]
        );
        assert_eq!(
            stretches_to_read(0, &ranges, t(10)),
            vec![(30, 35), (50, i64::MAX)]
        );
        assert_eq!(stretches_to_read(60, &ranges, t(10)), vec![(60, i64::MAX)]);
    }
}

//! `as_of` reports at scale: they fold the log up to a past time, which at millions
//! of events is the most expensive read Circle serves.
//!
//! - [`AsOfLimit`] bounds how many such folds run at once; the rest are told to come
//!   back (503 with `Retry-After`) instead of queueing on two cores.
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
//! Snapshots are a cache: one that cannot be read, or was made under other alert
//! rules, is ignored and the fold starts from position 0.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use circle_projections::practice::{AlertRules, Practice};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::projector::{self, LiveReports, ProjectionError};
use crate::store::{Snapshot, Store};

/// At most so many `as_of` folds at once.
#[derive(Clone)]
pub struct AsOfLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

/// Every `as_of` fold slot is taken.
#[derive(Debug, thiserror::Error)]
#[error("{0} as_of reports are already being computed; try again shortly")]
pub struct Saturated(pub usize);

impl AsOfLimit {
    pub fn new(max_concurrent: usize) -> AsOfLimit {
        let max = max_concurrent.max(1);
        AsOfLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for one fold, held until the permit is dropped; never waits.
    pub fn try_enter(&self) -> Result<OwnedSemaphorePermit, Saturated> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Saturated(self.max))
    }
}

/// The practice as the log stood at `as_of`, from the newest usable snapshot.
pub async fn practice_as_of(
    store: &Store,
    rules: AlertRules,
    as_of: DateTime<Utc>,
) -> Result<Practice, ProjectionError> {
    let mut practice = store
        .latest_snapshot(Some(as_of))
        .await?
        .and_then(|snapshot| restore(&snapshot, rules))
        .unwrap_or_else(|| Practice::new(rules));
    projector::fold(store, &mut practice, Some(as_of), |_, _| {}).await?;
    Ok(practice)
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
    if !covered || !store.read_raw_until(position, as_of, 1).await?.is_empty() {
        return Ok(None);
    }
    Ok(Some(position))
}

/// Keeps a snapshot of the fold it is shown at every multiple of `every` events.
/// The projector shows it its own state as it folds (following or rebuilding), so
/// snapshots cost no second fold and no second state.
#[derive(Clone, Debug)]
pub struct Snapshots {
    every: i64,
    next: i64,
}

impl Snapshots {
    /// For a fold now at `position`.
    pub fn new(every: i64, position: i64) -> Snapshots {
        let every = every.max(1);
        Snapshots {
            every,
            next: (position / every + 1) * every,
        }
    }

    pub fn every(&self) -> i64 {
        self.every
    }

    /// The snapshot due now that the fold has reached `practice.position`, if any.
    pub fn due(&mut self, practice: &Practice) -> Result<Option<Snapshot>, ProjectionError> {
        if practice.position < self.next {
            return Ok(None);
        }
        self.next = (practice.position / self.every + 1) * self.every;
        let Some(max_recorded_at) = practice.max_recorded_at else {
            return Ok(None);
        };
        let state = serde_json::to_string(practice).map_err(ProjectionError::State)?;
        Ok(Some(Snapshot {
            position: practice.position,
            max_recorded_at,
            state,
        }))
    }
}

fn restore(snapshot: &Snapshot, rules: AlertRules) -> Option<Practice> {
    let position = snapshot.position;
    match serde_json::from_str::<Practice>(&snapshot.state) {
        Ok(practice) if practice.rules == rules && practice.position == position => Some(practice),
        Ok(_) => {
            tracing::info!(position, "snapshot made under other alert rules; not used");
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

    #[test]
    fn folds_beyond_the_limit_are_refused_until_one_ends() {
        let limit = AsOfLimit::new(2);
        let first = limit.try_enter().unwrap();
        let _second = limit.try_enter().unwrap();
        let refused = limit.try_enter().unwrap_err();
        assert_eq!(
            refused.to_string(),
            "2 as_of reports are already being computed; try again shortly"
        );
        drop(first);
        assert!(limit.try_enter().is_ok());
    }

    fn at(position: i64, seconds: i64) -> Practice {
        Practice {
            position,
            max_recorded_at: DateTime::from_timestamp(seconds, 0),
            ..Practice::new(AlertRules::default())
        }
    }

    #[test]
    fn snapshots_fall_due_at_each_multiple_passed_and_carry_the_latest_recording_time() {
        let mut snapshots = Snapshots::new(10, 3);
        assert!(snapshots.due(&at(9, 100)).unwrap().is_none());
        let kept = snapshots.due(&at(10, 90)).unwrap().unwrap();
        assert_eq!(kept.position, 10);
        assert_eq!(kept.max_recorded_at.timestamp(), 90);
        let back: Practice = serde_json::from_str(&kept.state).unwrap();
        assert_eq!(back, at(10, 90));
        assert!(snapshots.due(&at(19, 100)).unwrap().is_none());
        // A fold that jumps past a multiple keeps one where it landed.
        assert_eq!(snapshots.due(&at(25, 100)).unwrap().unwrap().position, 25);
        assert!(snapshots.due(&at(29, 100)).unwrap().is_none());
        assert!(snapshots.due(&at(30, 100)).unwrap().is_some());
    }
}

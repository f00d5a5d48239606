//! `as_of` reports at scale: they fold the log up to a past time, which at millions
//! of events is the most expensive read Circle serves.
//!
//! - [`AsOfLimit`] bounds how many such folds run at once; the rest are told to come
//!   back (503 with `Retry-After`) instead of queueing on two cores.
//! - Snapshots: [`write_snapshots`] keeps the fold of every event up to a position,
//!   every N events, with the latest `recorded_at` among them. [`practice_as_of`]
//!   starts from the newest snapshot whose events were all recorded by `as_of`, then
//!   folds the rest with the usual `recorded_at <= as_of` filter. Because every event
//!   in such a snapshot passes that filter, the answer is the one a fold from
//!   position 0 would give.
//!
//! Snapshots are a cache: one that cannot be read, or was made under other alert
//! rules, is ignored and the fold starts from position 0.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use circle_projections::practice::{AlertRules, Practice};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::projector::{self, fact, ProjectionError};
use crate::store::{Snapshot, Store};

const PAGE: i64 = 10_000;

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

/// Brings the snapshots up to the head of the log: from the newest one, folds
/// forward and keeps a snapshot every `every` events. For whoever drives the
/// projections (after a checkpoint, or on a timer); returns how many were written.
pub async fn write_snapshots(
    store: &Store,
    rules: AlertRules,
    every: i64,
) -> Result<usize, ProjectionError> {
    let every = every.max(1);
    let latest = store.latest_snapshot(None).await?;
    let (mut practice, mut max_recorded_at) = match latest
        .as_ref()
        .and_then(|snapshot| Some((restore(snapshot, rules)?, snapshot.max_recorded_at)))
    {
        Some((practice, max)) => (practice, Some(max)),
        None => (Practice::new(rules), None),
    };
    let mut last_kept = practice.position;
    let mut written = 0;
    loop {
        let page = store.read_raw(practice.position, PAGE).await?;
        if page.is_empty() {
            return Ok(written);
        }
        for raw in page {
            let recorded_at = raw.recorded_at;
            max_recorded_at = Some(max_recorded_at.map_or(recorded_at, |m| m.max(recorded_at)));
            practice.apply(&fact(raw)?);
            if practice.position - last_kept < every {
                continue;
            }
            let Some(max_recorded_at) = max_recorded_at else {
                continue;
            };
            let state = serde_json::to_string(&practice).map_err(ProjectionError::State)?;
            store
                .save_snapshot(&Snapshot {
                    position: practice.position,
                    max_recorded_at,
                    state,
                })
                .await?;
            last_kept = practice.position;
            written += 1;
        }
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
}

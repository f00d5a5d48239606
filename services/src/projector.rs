//! Keeps the reports live: follows the log from a durable checkpoint and folds every
//! event into the [`Practice`].
//!
//! The projection's state and its position are saved together in one statement, so a
//! restart resumes exactly where the saved state left off: events after the
//! checkpoint are applied again onto the state *as of* the checkpoint, never onto a
//! state that already counted them. Because log positions are gap-free and
//! commit-ordered, following `position > n` never skips an event.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use circle_events::upcast::{self, DecodeError};
use circle_projections::practice::{AlertRules, AnyEvent, Fact, Practice};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::{RawEvent, Store, StoreError};

pub const REPORTS: &str = "reports";
const PAGE: i64 = 10_000;
const SAVE_EVERY_EVENTS: i64 = 20_000;
const SAVE_EVERY: Duration = Duration::from_secs(2);
const IDLE_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at position {position} is unreadable")]
    Decode {
        position: i64,
        #[source]
        source: DecodeError,
    },
    #[error("saved projection state is unreadable")]
    State(#[source] serde_json::Error),
    #[error("reading the log: {0}")]
    Task(String),
}

/// Turns a stored event into what the projections read.
pub fn fact(raw: RawEvent) -> Result<Fact, ProjectionError> {
    let position = raw.position;
    let decode_error = |source| ProjectionError::Decode { position, source };
    let event = match raw.aggregate_type.as_str() {
        "group" => AnyEvent::Group(
            upcast::decode_text(&raw.event_type, raw.event_version, &raw.payload)
                .map_err(decode_error)?,
        ),
        "client" => AnyEvent::Client(
            upcast::decode_text(&raw.event_type, raw.event_version, &raw.payload)
                .map_err(decode_error)?,
        ),
        other => {
            return Err(ProjectionError::Decode {
                position,
                source: DecodeError::FromTheFuture {
                    event_type: format!("{other}/{}", raw.event_type),
                    version: raw.event_version,
                },
            })
        }
    };
    Ok(Fact {
        position,
        recorded_at: raw.recorded_at,
        aggregate_id: raw.aggregate_id,
        event,
    })
}

/// Folds the log from `after` onto `practice`, page by page, keeping only events
/// recorded up to `until` when given. `progress` sees (position, head) after each page.
pub async fn fold(
    store: &Store,
    practice: &mut Practice,
    until: Option<DateTime<Utc>>,
    mut progress: impl FnMut(i64, i64),
) -> Result<(), ProjectionError> {
    let head = store.head_position().await?;
    let mut page = store.read_raw(practice.position, PAGE).await?;
    while let Some(last) = page.last().map(|e| e.position) {
        // Fetch the next page while this one is decoded and applied.
        let next = {
            let store = store.clone();
            tokio::spawn(async move { store.read_raw(last, PAGE).await })
        };
        for raw in page {
            if until.is_some_and(|t| raw.recorded_at > t) {
                continue;
            }
            practice.apply(&fact(raw)?);
        }
        progress(last, head.max(last));
        page = next
            .await
            .map_err(|e| ProjectionError::Task(e.to_string()))??;
    }
    Ok(())
}

/// The live reports projection, shared with the HTTP handlers.
pub struct LiveReports {
    practice: RwLock<Practice>,
    position: watch::Sender<i64>,
}

impl LiveReports {
    /// Runs `f` on the current state.
    pub fn read<T>(&self, f: impl FnOnce(&Practice) -> T) -> T {
        let practice = self.practice.read().unwrap_or_else(|p| p.into_inner());
        f(&practice)
    }

    pub fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// Waits until the projection has reached `position`, at most `timeout`.
    pub async fn caught_up(&self, position: i64, timeout: Duration) -> bool {
        let mut updates = self.position.subscribe();
        tokio::time::timeout(timeout, updates.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Starts following the log. Returns once the saved checkpoint is loaded; catching
/// up happens in the background.
pub async fn start(
    store: Store,
    rules: AlertRules,
    metrics: Metrics,
    committed: watch::Receiver<i64>,
) -> Result<Arc<LiveReports>, ProjectionError> {
    let practice = match store.load_checkpoint(REPORTS).await? {
        Some((_, state)) => {
            serde_json::from_str::<Practice>(&state).map_err(ProjectionError::State)?
        }
        None => Practice::new(rules),
    };
    // Report the projection from the start, before its first step has run.
    metrics.observe_projection(
        REPORTS,
        practice.position,
        store.head_position().await?,
        None,
    );
    let (position, _) = watch::channel(practice.position);
    let live = Arc::new(LiveReports {
        practice: RwLock::new(practice),
        position,
    });
    let runner = live.clone();
    tokio::spawn(async move { follow(store, runner, metrics, committed).await });
    Ok(live)
}

async fn follow(
    store: Store,
    live: Arc<LiveReports>,
    metrics: Metrics,
    mut committed: watch::Receiver<i64>,
) {
    let mut saved_position = live.position();
    let mut saved_at = Instant::now();
    let mut last_recorded_at: Option<DateTime<Utc>> = None;
    loop {
        match step(&store, &live, &mut last_recorded_at).await {
            Ok(applied) => {
                let position = live.position();
                let due = position - saved_position >= SAVE_EVERY_EVENTS
                    || (position > saved_position && saved_at.elapsed() >= SAVE_EVERY);
                if due {
                    let state = live.read(serde_json::to_string);
                    match state {
                        Ok(state) => match store.save_checkpoint(REPORTS, position, &state).await {
                            Ok(()) => {
                                saved_position = position;
                                saved_at = Instant::now();
                            }
                            Err(error) => {
                                metrics.projection_failed(REPORTS);
                                tracing::warn!(%error, "saving the reports checkpoint failed; will retry");
                            }
                        },
                        Err(error) => tracing::error!(%error, "serializing the reports state"),
                    }
                }
                if let Ok(head) = store.head_position().await {
                    metrics.observe_projection(REPORTS, position, head, last_recorded_at);
                }
                if applied == 0 {
                    tokio::select! {
                        changed = committed.changed() => {
                            if changed.is_err() {
                                tokio::time::sleep(IDLE_POLL).await;
                            }
                        }
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
            }
            Err(error) => {
                metrics.projection_failed(REPORTS);
                tracing::error!(%error, "reports projection stalled; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Applies one page of new events; returns how many.
async fn step(
    store: &Store,
    live: &LiveReports,
    last_recorded_at: &mut Option<DateTime<Utc>>,
) -> Result<usize, ProjectionError> {
    let page = store.read_raw(live.position(), PAGE).await?;
    let facts = page.into_iter().map(fact).collect::<Result<Vec<_>, _>>()?;
    let Some(last) = facts.last() else {
        return Ok(0);
    };
    let (position, recorded_at) = (last.position, last.recorded_at);
    {
        let mut practice = live.practice.write().unwrap_or_else(|p| p.into_inner());
        for fact in &facts {
            practice.apply(fact);
        }
    }
    *last_recorded_at = Some(recorded_at);
    live.position.send_replace(position);
    Ok(facts.len())
}

/// Rebuilds the reports from position 0 and saves the result as the checkpoint.
pub async fn rebuild(
    store: &Store,
    rules: AlertRules,
    progress: impl FnMut(i64, i64),
) -> Result<Practice, ProjectionError> {
    let mut practice = Practice::new(rules);
    fold(store, &mut practice, None, progress).await?;
    let state = serde_json::to_string(&practice).map_err(ProjectionError::State)?;
    store
        .save_checkpoint(REPORTS, practice.position, &state)
        .await?;
    Ok(practice)
}

//! Keeps the reports live: follows the log from a durable checkpoint and folds every
//! event into the [`Practice`].
//!
//! The projection's state and its position are saved together in one statement, so a
//! restart resumes exactly where the saved state left off: events after the
//! checkpoint are applied again onto the state *as of* the checkpoint, never onto a
//! state that already counted them. Because log positions are gap-free and
//! commit-ordered, following `position > n` never skips an event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use circle_events::group::Group;
use circle_events::instruments::Catalogue;
use circle_events::upcast::{self, DecodeError};
use circle_projections::practice::{AlertRules, AnyEvent, Fact, Practice};
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::appender::CommitFeed;
use crate::as_of;
use crate::errors::ErrorChain;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::store::{RawEvent, Snapshot, Store, StoreError, Stretch};

pub const REPORTS: &str = "reports";
const PAGE: i64 = 10_000;
/// A checkpoint is as big as the whole state: while catching up (full pages) it is
/// saved only every so many events, not on the timer, or saving would take most of
/// a rebuild's time. A restart re-folds at most that many beyond the newest save,
/// a checkpoint or a snapshot of the same settings (deleting snapshot rows makes
/// a restart longer, never wrong).
const SAVE_EVERY_EVENTS: i64 = 100_000;
const SAVE_EVERY: Duration = Duration::from_secs(2);
/// A live checkpoint takes at most about 1/SAVE_DUTY of the time: after a save that
/// took `d`, the next waits at least `SAVE_DUTY × d` (and [`SAVE_EVERY`]). The
/// checkpoint is the whole state, so its cost grows with the practice; at a fixed
/// interval it would take an ever larger share of the cores (and of the database's
/// WAL) from the commands beside it.
const SAVE_DUTY: u32 = 20;
const IDLE_POLL: Duration = Duration::from_millis(250);
/// The lag metrics ask the database for its head at most this often (a gauge
/// scraped every few seconds; per step it was a round trip per group commit).
const OBSERVE_EVERY: Duration = Duration::from_secs(1);

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
    #[error("projection state could not be serialized")]
    State(#[source] serde_json::Error),
    #[error("reading the log: {0}")]
    Task(String),
}

/// Turns a stored event into what the projections read.
pub fn fact(raw: RawEvent) -> Result<Fact, ProjectionError> {
    let position = raw.position;
    let decode_error = |source| ProjectionError::Decode { position, source };
    let event = match raw.aggregate_type.as_str() {
        t if t == Group::TYPE => AnyEvent::Group(
            upcast::decode_text(&raw.event_type, raw.event_version, &raw.payload)
                .map_err(decode_error)?,
        ),
        t if t == circle_events::client::Client::TYPE => AnyEvent::Client(
            upcast::decode_text(&raw.event_type, raw.event_version, &raw.payload)
                .map_err(decode_error)?,
        ),
        t if t == circle_events::token::TOKEN_TYPE => AnyEvent::Token(
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
/// recorded up to `until` when given (filtered by the store, so the rest of the log is
/// neither fetched nor decoded). `progress` sees (position, head) after each page.
pub async fn fold(
    store: &Store,
    practice: &mut Practice,
    until: Option<DateTime<Utc>>,
    mut progress: impl FnMut(i64, i64),
) -> Result<(), ProjectionError> {
    async fn read(store: &Store, after: i64, until: Option<DateTime<Utc>>) -> ReadResult {
        match until {
            Some(until) => {
                let stretch = Stretch {
                    after,
                    upto: i64::MAX,
                    until,
                    limit: PAGE,
                };
                store.read_raw_until(stretch).await
            }
            None => store.read_raw(after, PAGE).await,
        }
    }
    type ReadResult = Result<Vec<RawEvent>, StoreError>;
    let head = store.head_position().await?;
    let mut page = read(store, practice.position, until).await?;
    while let Some(last) = page.last().map(|e| e.position) {
        // Fetch the next page while this one is decoded and applied.
        let next = {
            let store = store.clone();
            tokio::spawn(async move { read(&store, last, until).await })
        };
        for raw in page {
            practice.apply(&fact(raw)?);
        }
        progress(last, head.max(last));
        page = next
            .await
            .map_err(|e| ProjectionError::Task(e.to_string()))??;
    }
    Ok(())
}

/// Version of the stored checkpoint's form. Bump it when `Practice`'s serialized
/// shape changes: a checkpoint of another format is rebuilt, never misread.
/// 2: the state records `max_recorded_at` (for the `as_of` snapshots taken from it),
/// and its times (measures, sessions, alerts) as numbers.
/// 3: the state records each client's consent decisions.
/// 4: groups record their name, facilitators, closure and risk reviews (the dashboard).
/// 5: groups record each member's first and latest items per instrument and the marks
/// corrections replaced; alerts record when their event occurred (the dashboard).
pub const CHECKPOINT_FORMAT: u32 = 5;

/// The settings a projection's state depends on. A checkpoint records their digest;
/// when they change, the state is rebuilt from position 0 with the new ones.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionSettings {
    pub alert_rules: AlertRules,
    /// The reporter form's k (applied when reports are read, recorded all the same so
    /// that a checkpoint says exactly what it was built under).
    pub reporter_min_count: u32,
}

impl ProjectionSettings {
    /// SHA-256 (hex) of the settings, the checkpoint format and the instrument
    /// catalogue's versions (the reference data scores were derived with).
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(CHECKPOINT_FORMAT.to_be_bytes());
        hasher.update(serde_json::to_vec(self).expect("plain numbers always serialize"));
        for definition in Catalogue::builtin().instruments() {
            hasher.update(definition.instrument.as_bytes());
            hasher.update(b"@");
            hasher.update(definition.version.as_bytes());
            hasher.update(b"\n");
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The stored form of a checkpoint: `{"format", "settings", "state"}`.
#[derive(Serialize)]
struct Checkpoint<'a> {
    format: u32,
    settings: &'a str,
    state: &'a Practice,
}

/// Reads a stored reports checkpoint. `Err` says why it cannot be resumed from; the
/// state inside may still be readable, and is served until a rebuild replaces it
/// (boxed: a practice is large, and this is the rare path).
fn read_checkpoint(text: &str, digest: &str) -> Result<Practice, (String, Option<Box<Practice>>)> {
    #[derive(Deserialize)]
    struct Envelope {
        format: u32,
        settings: String,
        state: serde_json::Value,
    }
    let envelope: Envelope = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        // Before format 1 the state was stored bare.
        Err(_) => {
            let old = serde_json::from_str::<Practice>(text).ok().map(Box::new);
            return Err(("the checkpoint has no format version".into(), old));
        }
    };
    let state = serde_json::from_value::<Practice>(envelope.state).map(Box::new);
    if envelope.format != CHECKPOINT_FORMAT {
        let why = format!(
            "the checkpoint's format is {}, this build writes {CHECKPOINT_FORMAT}",
            envelope.format
        );
        return Err((why, state.ok()));
    }
    if envelope.settings != digest {
        return Err((
            "the settings (alert rules, k, reference data) changed since the checkpoint".into(),
            state.ok(),
        ));
    }
    state
        .map(|state| *state)
        .map_err(|e| (format!("the checkpoint's state is unreadable: {e}"), None))
}

fn write_checkpoint(practice: &Practice, digest: &str) -> Result<String, ProjectionError> {
    serde_json::to_string(&Checkpoint {
        format: CHECKPOINT_FORMAT,
        settings: digest,
        state: practice,
    })
    .map_err(ProjectionError::State)
}

/// The live reports projection, shared with the HTTP handlers.
///
/// Copy-on-write: a reader that needs the state beyond one call (an export streaming
/// its rows) keeps an `Arc` of it ([`LiveReports::snapshot`]); the next page applied
/// while it does copies the state once (`Arc::make_mut`), and the copy it read is
/// dropped when it finishes. Readers within one call ([`LiveReports::read`]) hold no
/// `Arc` and cost no copy.
pub struct LiveReports {
    practice: RwLock<Arc<Practice>>,
    position: watch::Sender<i64>,
    /// The state was built under other settings or format: rebuild and switch over.
    stale: AtomicBool,
}

impl LiveReports {
    /// Runs `f` on the current state.
    pub fn read<T>(&self, f: impl FnOnce(&Practice) -> T) -> T {
        let practice = self.practice.read().unwrap_or_else(|p| p.into_inner());
        f(&practice)
    }

    /// The current state, kept as it is however the projection moves on.
    pub fn snapshot(&self) -> Arc<Practice> {
        self.practice
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// Follows the position as the projection applies events (live pages).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.position.subscribe()
    }

    /// Waits until the projection has reached `position`, at most `timeout`.
    pub async fn caught_up(&self, position: i64, timeout: Duration) -> bool {
        let mut updates = self.position.subscribe();
        tokio::time::timeout(timeout, updates.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Whether a rebuild under the current settings is under way.
    pub fn rebuilding(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }
}

/// The newest snapshot kept under the current settings, when it is beyond the
/// checkpoint (at `checkpointed`): while snapshots fall due, the leader saves no
/// checkpoint beside them (each is the whole state), so the latest durable state is
/// often a snapshot. One that cannot be read is passed over for the checkpoint.
async fn resume_from_snapshot(
    store: &Store,
    digest: &str,
    checkpointed: i64,
) -> Result<Option<Practice>, ProjectionError> {
    let Some(snapshot) = store.resumable_snapshot(digest, checkpointed).await? else {
        return Ok(None);
    };
    let position = snapshot.position;
    match serde_json::from_str::<Practice>(&snapshot.state) {
        Ok(practice) if practice.position == position => {
            tracing::info!(position, "resuming the reports from a snapshot");
            Ok(Some(practice))
        }
        Ok(_) => {
            tracing::warn!(
                position,
                "a snapshot's state is at another position; not resumed from"
            );
            Ok(None)
        }
        Err(error) => {
            tracing::warn!(%error, position, "a snapshot is unreadable; not resumed from");
            Ok(None)
        }
    }
}

/// Loads the saved checkpoint. Returns the live reports (served at once) and the
/// follower that keeps them current, to be run supervised ([`Follower::run`]).
pub async fn start(
    store: Store,
    settings: ProjectionSettings,
    metrics: Metrics,
    committed: watch::Receiver<i64>,
    feed: CommitFeed,
    leadership: Leadership,
    snapshot_every: i64,
) -> Result<(Arc<LiveReports>, Follower), ProjectionError> {
    let digest = settings.digest();
    // The checkpoint's position first, and its text only when no newer snapshot is
    // resumed from: each text is the whole state, and a start that held both at
    // once would need that much more memory than the instance runs in.
    let checkpointed = store.checkpoint_position(REPORTS).await?.unwrap_or(-1);
    let resumed = resume_from_snapshot(&store, &digest, checkpointed).await?;
    let checkpoint = match resumed {
        Some(_) => None,
        None => store.load_checkpoint(REPORTS).await?,
    };
    // Another leader may have saved a newer one meanwhile: the one read is resumed from.
    let checkpointed = checkpoint
        .as_ref()
        .map_or(checkpointed, |(position, _)| *position);
    let (practice, stale) = match (resumed, checkpoint) {
        (Some(practice), _) => (practice, false),
        (None, None) => (Practice::new(settings.alert_rules), false),
        (None, Some((_, text))) => match read_checkpoint(&text, &digest) {
            Ok(practice) => (practice, false),
            Err((why, old)) => {
                tracing::warn!(
                    reason = %why,
                    serving = if old.is_some() { "the old state" } else { "nothing" },
                    "rebuilding the reports from position 0 in the background"
                );
                (
                    old.map_or_else(|| Practice::new(settings.alert_rules), |old| *old),
                    true,
                )
            }
        },
    };
    // Report the projection from the start, before its first step has run.
    metrics.observe_projection(
        REPORTS,
        practice.position,
        store.head_position().await?,
        None,
    );
    let snapshots = as_of::Snapshots::new(snapshot_every, practice.position, &digest);
    let (position, _) = watch::channel(practice.position);
    let live = Arc::new(LiveReports {
        practice: RwLock::new(Arc::new(practice)),
        position,
        stale: AtomicBool::new(stale),
    });
    let follower = Follower {
        store,
        live: live.clone(),
        metrics,
        committed,
        feed,
        leadership,
        settings,
        digest,
        snapshots,
        checkpointed,
    };
    Ok((live, follower))
}

/// Keeps [`LiveReports`] current from the log. Every instance follows; only the
/// leader saves the checkpoint, fenced by its lease.
#[derive(Clone)]
pub struct Follower {
    store: Store,
    live: Arc<LiveReports>,
    metrics: Metrics,
    committed: watch::Receiver<i64>,
    /// This instance's own commits, folded without reading them back.
    feed: CommitFeed,
    leadership: Leadership,
    settings: ProjectionSettings,
    digest: String,
    /// `as_of` snapshots of the state built under the current settings.
    snapshots: as_of::Snapshots,
    /// The position of the checkpoint found at start (-1: none), which may be
    /// behind the state when it resumed from a snapshot.
    checkpointed: i64,
}

impl Follower {
    /// Follows until `stop`, then catches up with the log once more and, when
    /// leading, saves the checkpoint.
    pub async fn run(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut saved_position = self.live.position();
        // The last checkpoint's own position (saved_position also moves with the
        // snapshots): a stop saves the checkpoint beyond it, as the operators'
        // runbook and the shutdown order expect.
        let mut checkpointed = self.checkpointed;
        let mut saved_at = Instant::now();
        let mut save_took = Duration::ZERO;
        let mut last_recorded_at: Option<DateTime<Utc>> = None;
        let mut observed_at: Option<Instant> = None;
        let mut rebuild = self
            .live
            .rebuilding()
            .then(|| Practice::new(self.settings.alert_rules));
        // A keeper sees every event of the fold it snapshots, from where it starts.
        let every = self.snapshots.every();
        self.snapshots = as_of::Snapshots::new(every, self.live.position(), &self.digest);
        let mut fresh_snapshots = as_of::Snapshots::new(every, 0, &self.digest);
        // The newest position this instance's appender had announced at the last step.
        let mut announced = 0;
        while !stop.is_cancelled() {
            let step = async {
                // Only the leader keeps snapshots, and only of the current settings' state.
                let leading = self.leadership.fence().is_some();
                let keep = leading && rebuild.is_none();
                // Marked seen before the feed is read: a commit after this wakes us again.
                announced = *self.committed.borrow_and_update();
                let applied = step(
                    (&self.store, &self.feed),
                    &self.live,
                    &mut last_recorded_at,
                    (&mut self.snapshots, keep),
                )
                .await?;
                if let Some(fresh) = rebuild.as_mut() {
                    // One page of the rebuild per step; the old state stays live.
                    fold_page(&self.store, fresh, (&mut fresh_snapshots, leading)).await?;
                    if fresh.position >= self.live.position() {
                        self.switch_over(rebuild.take().unwrap_or_default());
                        self.snapshots = fresh_snapshots.clone();
                        saved_position = -1;
                        checkpointed = -1;
                    }
                }
                Ok::<_, ProjectionError>(applied)
            }
            .instrument(tracing::debug_span!("projector.step", projection = REPORTS))
            .await;
            match step {
                Ok(step) => {
                    if let Some(kept) = step.kept {
                        // A snapshot of the live state under the current settings is
                        // as good a resume point as a checkpoint (see
                        // `resume_from_snapshot`): the next checkpoint is due from it.
                        saved_position = saved_position.max(kept.position);
                        saved_at = Instant::now();
                        save_took = kept.took;
                        self.metrics.checkpoint_saved(REPORTS);
                    }
                    let position = self.live.position();
                    let waits = step.waits(position, announced);
                    let catching_up = step.full_page();
                    let due = checkpoint_due(
                        (position, saved_position),
                        catching_up,
                        (saved_at.elapsed(), save_took),
                        self.snapshots.next_due(),
                    );
                    if due && rebuild.is_none() {
                        let started = Instant::now();
                        if self.save().await {
                            saved_position = position;
                            checkpointed = position;
                            saved_at = Instant::now();
                            save_took = started.elapsed();
                            tracing::debug!(
                                position,
                                took_ms = save_took.as_millis() as u64,
                                "checkpoint saved"
                            );
                        }
                    }
                    if position == saved_position && self.leadership.fence().is_some() {
                        self.metrics.checkpoint_saved(REPORTS);
                    }
                    if observed_at.is_none_or(|at| at.elapsed() >= OBSERVE_EVERY) {
                        self.observe(position, last_recorded_at).await;
                        observed_at = Some(Instant::now());
                    }
                    if waits && rebuild.is_none() {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            changed = self.committed.changed() => {
                                if changed.is_err() {
                                    tokio::time::sleep(IDLE_POLL).await;
                                }
                            }
                            _ = tokio::time::sleep(IDLE_POLL) => {}
                        }
                    }
                }
                Err(error) => {
                    self.metrics.projection_failed(REPORTS);
                    tracing::error!(error = %ErrorChain(&error), "reports projection stalled; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        // Stopping: everything the appender drained is in the log; take it in and save.
        let keep = self.leadership.fence().is_some() && rebuild.is_none();
        while step(
            (&self.store, &self.feed),
            &self.live,
            &mut last_recorded_at,
            (&mut self.snapshots, keep),
        )
        .await?
        .events
            > 0
        {}
        if rebuild.is_none() && self.live.position() > checkpointed {
            self.save().await;
        }
        Ok(())
    }

    fn switch_over(&self, fresh: Practice) {
        let position = fresh.position;
        *self
            .live
            .practice
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        self.live.stale.store(false, Ordering::Relaxed);
        self.live.position.send_replace(position);
        tracing::info!(
            position,
            "reports rebuilt under the current settings; switched over"
        );
    }

    /// Saves the checkpoint when this instance leads; true when saved.
    async fn save(&self) -> bool {
        let Some(fence) = self.leadership.fence() else {
            return false;
        };
        let (position, state) = self
            .live
            .read(|practice| (practice.position, write_checkpoint(practice, &self.digest)));
        let outcome = match state {
            Ok(state) => self
                .store
                .save_checkpoint(REPORTS, position, &state, Some(&fence))
                .await
                .map_err(ProjectionError::from),
            Err(error) => Err(error),
        };
        // The checkpoint's text was the size of the whole state: give it back.
        crate::alloc::release_free_memory();
        match outcome {
            Ok(true) => {
                self.metrics.checkpoint_saved(REPORTS);
                true
            }
            Ok(false) => {
                tracing::info!(
                    epoch = fence.epoch,
                    "checkpoint not saved: the lease has moved on"
                );
                false
            }
            Err(error) => {
                self.metrics.projection_failed(REPORTS);
                tracing::warn!(error = %ErrorChain(&error), "saving the reports checkpoint failed; will retry");
                false
            }
        }
    }

    async fn observe(&self, position: i64, last_recorded_at: Option<DateTime<Utc>>) {
        if let Ok(head) = self.store.head_position().await {
            self.metrics
                .observe_projection(REPORTS, position, head, last_recorded_at);
        }
    }
}

/// Whether the live checkpoint is due at `position`, the last save (checkpoint or
/// snapshot) being at `saved_position`, `since` ago, and having taken `took`; the
/// next snapshot falls due at `next_snapshot`.
///
/// - Every [`SAVE_EVERY_EVENTS`], whatever else.
/// - Otherwise not while catching up (full pages), and no more often than
///   [`SAVE_EVERY`] and [`SAVE_DUTY`] allow.
/// - And not when, at the pace the log has grown since the last save, the next
///   snapshot comes within that interval again: under load the snapshots are the
///   saves, and a checkpoint between them would write the whole state once more. As
///   the log goes quiet the pace falls, and the checkpoint comes on the timer. After
///   a switch-over (`saved_position` -1) it is saved at once, under the new settings.
fn checkpoint_due(
    (position, saved_position): (i64, i64),
    catching_up: bool,
    (since, took): (Duration, Duration),
    next_snapshot: i64,
) -> bool {
    let interval = SAVE_EVERY.max(took * SAVE_DUTY);
    // (next - position) / pace <= interval, with pace = events since / since.
    let snapshot_soon = saved_position >= 0
        && (next_snapshot - position) as f64 * since.as_secs_f64()
            <= (position - saved_position) as f64 * interval.as_secs_f64();
    position - saved_position >= SAVE_EVERY_EVENTS
        || (!catching_up && position > saved_position && !snapshot_soon && since >= interval)
}

/// What one step applied: how many events, and whether they came from the
/// [`CommitFeed`] rather than the log.
#[derive(Debug)]
struct Applied {
    events: usize,
    fed: bool,
    /// The last snapshot the step kept, if any.
    kept: Option<Kept>,
}

/// A snapshot saved to the store: its position and what taking and saving it cost.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Kept {
    position: i64,
    took: Duration,
}

impl Applied {
    /// Whether the follower, now at `position`, waits for the next commit (or the idle
    /// poll) before its next step, `announced` being the newest position this
    /// instance's appender had announced when the step began. It waits when the log
    /// had nothing new, or after a page of its own commits that reached everything
    /// announced: it does not ask the log again at once, since another instance's
    /// events show as a gap before this instance's next commit (or are read on the
    /// idle poll). A fed page that stopped short of `announced` stopped at a gap
    /// (another instance's event, or a token's): the next step reads the log at once.
    fn waits(&self, position: i64, announced: i64) -> bool {
        self.events == 0 || (self.fed && !self.full_page() && position >= announced)
    }

    /// A whole page: the follower is catching up, and more is likely waiting.
    fn full_page(&self) -> bool {
        self.events as i64 >= PAGE
    }
}

/// Applies one page of new events, keeping the snapshots that fall due when told
/// to. The page is this instance's own commits when they follow the position
/// without a gap, else read from the log.
async fn step(
    (store, feed): (&Store, &CommitFeed),
    live: &LiveReports,
    last_recorded_at: &mut Option<DateTime<Utc>>,
    snapshots: (&mut as_of::Snapshots, bool),
) -> Result<Applied, ProjectionError> {
    let (facts, fed) = match feed.after(live.position(), PAGE as usize) {
        Some(page) => (
            page.into_iter().map(fact).collect::<Result<Vec<_>, _>>()?,
            true,
        ),
        None => (read_facts(store, live.position()).await?, false),
    };
    let Some(last) = facts.last() else {
        return Ok(Applied {
            events: 0,
            fed,
            kept: None,
        });
    };
    // Set before the snapshots are saved, as the page is in even if a save fails.
    *last_recorded_at = Some(last.recorded_at);
    let kept = apply_page(store, &mut &*live, &facts, snapshots).await?;
    Ok(Applied {
        events: facts.len(),
        fed,
        kept,
    })
}

/// Applies one page of the log beyond `practice.position`; returns how many.
async fn fold_page(
    store: &Store,
    practice: &mut Practice,
    snapshots: (&mut as_of::Snapshots, bool),
) -> Result<usize, ProjectionError> {
    let facts = read_facts(store, practice.position).await?;
    // The rebuild's snapshots are no resume point of the live state it replaces.
    apply_page(store, practice, &facts, snapshots).await?;
    Ok(facts.len())
}

/// A state pages are applied to: the live reports, behind their lock, or a state
/// being rebuilt, which nobody else reads.
trait Folding {
    /// Applies `facts` in order until one brings a snapshot due, and stops there so
    /// that it is taken at its exact position (snapshots do not depend on how the
    /// log was paged). Returns how many facts it went through, and that snapshot.
    fn apply_until_snapshot(
        &mut self,
        facts: &[Fact],
        snapshots: (&mut as_of::Snapshots, bool),
    ) -> (usize, Option<as_of::DueSnapshot>);

    /// Serializes the snapshot that fell due, from the state as it now stands.
    fn take(&self, due: as_of::DueSnapshot) -> Result<Snapshot, ProjectionError>;
}

impl Folding for Practice {
    fn apply_until_snapshot(
        &mut self,
        facts: &[Fact],
        (snapshots, keep): (&mut as_of::Snapshots, bool),
    ) -> (usize, Option<as_of::DueSnapshot>) {
        for (i, fact) in facts.iter().enumerate() {
            if fact.position <= self.position {
                continue;
            }
            self.apply(fact);
            if let Some(due) = snapshots.due(self, fact.recorded_at, keep) {
                return (i + 1, Some(due));
            }
        }
        (facts.len(), None)
    }

    fn take(&self, due: as_of::DueSnapshot) -> Result<Snapshot, ProjectionError> {
        due.take(self)
    }
}

/// The lock is held for writing only while events are applied; a snapshot is
/// serialized under a read lock, beside the readers.
impl Folding for &LiveReports {
    fn apply_until_snapshot(
        &mut self,
        facts: &[Fact],
        snapshots: (&mut as_of::Snapshots, bool),
    ) -> (usize, Option<as_of::DueSnapshot>) {
        let (applied, due, position) = {
            let mut practice = self.practice.write().unwrap_or_else(|p| p.into_inner());
            let practice = Arc::make_mut(&mut practice);
            let (applied, due) = practice.apply_until_snapshot(facts, snapshots);
            (applied, due, practice.position)
        };
        self.position.send_replace(position);
        (applied, due)
    }

    fn take(&self, due: as_of::DueSnapshot) -> Result<Snapshot, ProjectionError> {
        self.read(|practice| due.take(practice))
    }
}

/// Applies `facts`, serializing each snapshot that falls due on the way before
/// applying the rest; they are saved to the store once the whole page is in (and
/// published), so a reader waiting for a position in it does not wait for the
/// database as well. Returns the last one the store now holds under these settings.
async fn apply_page(
    store: &Store,
    state: &mut impl Folding,
    facts: &[Fact],
    (snapshots, keep): (&mut as_of::Snapshots, bool),
) -> Result<Option<Kept>, ProjectionError> {
    let mut taken = Vec::new();
    let mut took = Duration::ZERO;
    let mut rest = facts;
    while !rest.is_empty() {
        let (applied, due) = state.apply_until_snapshot(rest, (&mut *snapshots, keep));
        rest = &rest[applied..];
        if let Some(due) = due {
            let started = Instant::now();
            taken.push(state.take(due)?);
            took += started.elapsed();
        }
    }
    if taken.is_empty() {
        return Ok(None);
    }
    let started = Instant::now();
    for snapshot in &taken {
        store.save_snapshot(snapshot).await?;
    }
    let kept = taken.last().map(|snapshot| snapshot.position);
    drop(taken);
    // A snapshot's text is the size of the whole state: give it back.
    crate::alloc::release_free_memory();
    Ok(kept.map(|position| Kept {
        position,
        took: took + started.elapsed(),
    }))
}

/// One page of the log after `after`, decoded whole before anything is applied.
async fn read_facts(store: &Store, after: i64) -> Result<Vec<Fact>, ProjectionError> {
    let page = store.read_raw(after, PAGE).await?;
    page.into_iter().map(fact).collect()
}

/// Rebuilds the reports from position 0 and saves the result as the checkpoint.
/// For `circle replay`, with the instances stopped: the save is not fenced.
pub async fn rebuild(
    store: &Store,
    settings: &ProjectionSettings,
    progress: impl FnMut(i64, i64),
) -> Result<Practice, ProjectionError> {
    let mut practice = Practice::new(settings.alert_rules);
    fold(store, &mut practice, None, progress).await?;
    let state = write_checkpoint(&practice, &settings.digest())?;
    store
        .save_checkpoint(REPORTS, practice.position, &state, None)
        .await?;
    Ok(practice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(absences: u32) -> ProjectionSettings {
        ProjectionSettings {
            alert_rules: AlertRules {
                consecutive_absences: absences,
            },
            reporter_min_count: 5,
        }
    }

    #[test]
    fn a_checkpoint_is_resumed_only_under_the_settings_it_was_built_with() {
        let built = settings(2);
        let mut practice = Practice::new(built.alert_rules);
        practice.position = 42;
        let text = write_checkpoint(&practice, &built.digest()).unwrap();
        assert_eq!(
            read_checkpoint(&text, &built.digest()).unwrap().position,
            42
        );

        let (why, old) = read_checkpoint(&text, &settings(3).digest()).unwrap_err();
        assert!(why.contains("settings"), "{why}");
        assert_eq!(
            old.map(|p| p.position),
            Some(42),
            "the old state is served meanwhile"
        );
    }

    #[test]
    fn a_checkpoint_of_another_format_or_shape_is_rebuilt_not_misread() {
        let digest = settings(2).digest();
        let future = format!(r#"{{"format":99,"settings":"{digest}","state":{{"new":true}}}}"#);
        let (why, old) = read_checkpoint(&future, &digest).unwrap_err();
        assert!(why.contains("format is 99"), "{why}");
        assert!(old.is_none());

        let bare = serde_json::to_string(&Practice::new(AlertRules::default())).unwrap();
        let (why, old) = read_checkpoint(&bare, &digest).unwrap_err();
        assert!(why.contains("no format version"), "{why}");
        assert!(old.is_some());
    }

    #[test]
    fn after_its_own_commits_the_follower_waits_only_once_it_has_all_it_was_told_of() {
        let fed = |events| Applied {
            events,
            fed: true,
            kept: None,
        };
        let read = |events| Applied {
            events,
            fed: false,
            kept: None,
        };
        // Nothing new: wait for the next commit.
        assert!(read(0).waits(10, 10));
        // Its own commits, up to what the appender announced: wait.
        assert!(fed(3).waits(10, 10));
        // Its own 6 of [6, 8] (7 is another instance's): read the log at once.
        assert!(!fed(1).waits(6, 8));
        // A page read from the log, or a full page: step again at once.
        assert!(!read(3).waits(10, 10));
        assert!(!fed(PAGE as usize).waits(10, 10));
    }

    fn revoked(position: i64) -> Fact {
        Fact {
            position,
            recorded_at: DateTime::from_timestamp(1_000 + position, 0).unwrap_or_default(),
            aggregate_id: "tokens".into(),
            event: AnyEvent::Token(circle_events::token::TokenEvent::TokenRevoked {
                token_id: format!("t{position}"),
            }),
        }
    }

    #[test]
    fn the_live_reports_take_a_page_in_stretches_that_end_where_a_snapshot_falls_due() {
        let live = LiveReports {
            practice: RwLock::new(Arc::new(Practice::new(AlertRules::default()))),
            position: watch::channel(0).0,
            stale: AtomicBool::new(false),
        };
        let page: Vec<Fact> = (1..=25).map(revoked).collect();
        let mut leader = as_of::Snapshots::new(10, 0, "d1g3st");
        let mut state = &live;

        let (applied, due) = state.apply_until_snapshot(&page, (&mut leader, true));
        assert_eq!(applied, 10);
        assert_eq!(live.position(), 10, "what was applied is published");
        // Taken from the state as it stands there, with the write lock released.
        let snapshot = state.take(due.expect("a snapshot at 10")).unwrap();
        assert_eq!(snapshot.position, 10);
        assert_eq!(snapshot.settings.as_deref(), Some("d1g3st"));
        let kept: Practice = serde_json::from_str(&snapshot.state).unwrap();
        assert_eq!(kept.position, 10);

        let (applied, due) = state.apply_until_snapshot(&page[10..], (&mut leader, true));
        assert_eq!((applied, live.position()), (10, 20));
        assert_eq!(state.take(due.unwrap()).unwrap().position, 20);
        let (applied, due) = state.apply_until_snapshot(&page[20..], (&mut leader, true));
        assert_eq!((applied, live.position(), due.is_none()), (5, 25, true));

        // A follower keeps no snapshots: the page goes in at once.
        let mut follower = as_of::Snapshots::new(10, 0, "d1g3st");
        let mut fresh = Practice::new(AlertRules::default());
        let (applied, due) = fresh.apply_until_snapshot(&page, (&mut follower, false));
        assert_eq!((applied, fresh.position, due.is_none()), (25, 25, true));
    }

    #[test]
    fn under_load_the_snapshots_are_the_saves_and_a_trickle_is_saved_on_the_timer() {
        let secs = Duration::from_secs;
        let took = Duration::from_millis(10); // the interval is SAVE_EVERY, 2 s
        let due = |position, saved, since| {
            checkpoint_due((position, saved), false, (since, took), 50_000)
        };
        // A trickle: 5 events in 30 s since the last save, the next snapshot far off.
        assert!(due(1_005, 1_000, secs(30)));
        assert!(
            !due(1_005, 1_000, Duration::from_millis(10)),
            "not before SAVE_EVERY"
        );
        assert!(!due(1_000, 1_000, secs(30)), "nothing new");
        // Since the snapshot at 30,000, with the next one due at 50,000.
        // 15,000 events in 3 s: the next snapshot is 1 s away, the interval 2 s.
        assert!(!due(45_000, 30_000, secs(3)));
        // 10,000 events in 3 s: the next snapshot is 6 s away.
        assert!(due(40_000, 30_000, secs(3)));
        // A burst that stopped: the same 15,000 events, 60 s ago.
        assert!(due(45_000, 30_000, secs(60)));
        // Still every SAVE_EVERY_EVENTS, and at once after a switch-over.
        assert!(due(30_000 + SAVE_EVERY_EVENTS, 30_000, Duration::ZERO));
        assert!(due(10, -1, secs(30)));
        // Not on the timer while catching up.
        assert!(!checkpoint_due(
            (1_005, 1_000),
            true,
            (secs(30), took),
            50_000
        ));
    }

    #[test]
    fn the_checkpoint_form_is_pinned() {
        let practice = Practice::new(AlertRules::default());
        let text = write_checkpoint(&practice, "d1g3st").unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["format"], 5);
        assert_eq!(value["settings"], "d1g3st");
        assert_eq!(value["state"]["position"], 0);
        assert_eq!(value["state"]["rules"]["consecutive_absences"], 2);
        // Format 3: each client's consent decisions, by scope.
        assert_eq!(value["state"]["consents"], serde_json::json!({}));
    }
}

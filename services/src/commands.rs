//! The command path: load aggregate state, let the aggregate decide, append.
//!
//! Aggregate state is cached in memory per aggregate and advanced with the events the
//! aggregate itself produced, so a command never re-reads its history: the cost of a
//! command does not grow with the stream. Commands on one aggregate are serialized by
//! a per-aggregate lock; commands on different aggregates run concurrently and meet in
//! the [`Appender`], which commits them together.
//!
//! The cache is only an optimization. The store checks every append against the
//! stream's real version; if another process appended first, the cache is brought
//! forward from the log and the command is decided again, a bounded number of times.
//! Unlike cqrs-es 0.5's snapshot stores, state is never advanced twice: `handle`
//! applies the new events to a clone, and that clone replaces the cache only after
//! the commit.
//!
//! The cache is bounded: past `aggregate_cache_capacity` aggregates the least
//! recently used one is dropped and, when next needed, loaded again from its stream.
//! A slot whose lock is held or awaited is never dropped (see [`SlotCache`]).

use chrono::{DateTime, Utc};
use circle_events::upcast::{self, DecodeError};
use circle_events::Command;
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde_json::Value;
use uuid::Uuid;

use crate::appender::{Appender, SharedStoreError};
use crate::auth::Principal;
use crate::cache::{Lease, SlotCache};
use crate::metrics::Metrics;
use crate::store::{
    write_response, Append, AppendResult, EventMetadata, IdempotencyRecord, KeyAction, NewEvent,
    RecordedEvent, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    #[error(transparent)]
    Rejected(E),
    #[error("not allowed for this caller")]
    Forbidden,
    #[error("expected version {expected}, but the current version is {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("too many concurrent changes to this record; try again")]
    Contended,
    /// A client the command names was erased before it could commit.
    #[error("this client's data has been erased")]
    ClientErased { client_id: String },
    /// The caller's token was revoked (or expired) before the command could commit.
    #[error("the caller's token is no longer valid")]
    TokenNotLive,
    #[error(transparent)]
    Store(#[from] SharedStoreError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at position {position} is unreadable")]
    Decode {
        position: i64,
        #[source]
        source: DecodeError,
    },
}

/// Everything about a command that is not the command itself.
#[derive(Clone, Debug)]
pub struct CommandContext {
    pub principal: Principal,
    /// Stable across retries of a request: groups the events of one user action.
    pub correlation_id: Uuid,
    /// Domain time supplied by the caller for back-filled records; defaults to now.
    pub occurred_at: Option<DateTime<Utc>>,
    pub idempotency: Option<IdempotencyRequest>,
    pub if_match: Option<u64>,
    pub key_action: Option<KeyAction>,
    /// The SHA-256 of the caller's token, for the commit to check that it is still
    /// live ([`Append::token_hash`]); `None` when it was read for this request.
    pub check_token: Option<String>,
}

impl CommandContext {
    /// `principal`'s command with a fresh correlation id and nothing else: no
    /// back-dating, idempotency record, version check, key action or token to check.
    pub fn new(principal: Principal) -> CommandContext {
        CommandContext {
            principal,
            correlation_id: Uuid::new_v4(),
            occurred_at: None,
            idempotency: None,
            if_match: None,
            key_action: None,
            check_token: None,
        }
    }
}

/// How a command's success is answered, from the command itself: the `id` reported
/// back (the record it created or wrote to, else the aggregate) and the HTTP status,
/// remembered for idempotent replays.
struct Answer {
    id: String,
    status: u16,
}

impl Answer {
    fn of(command: &impl Command, aggregate_id: &str) -> Answer {
        Answer {
            id: command.record_id().unwrap_or(aggregate_id).to_string(),
            status: if command.creates() { 201 } else { 200 },
        }
    }
}

#[derive(Clone, Debug)]
pub struct IdempotencyRequest {
    pub key: String,
    pub request_hash: Vec<u8>,
    /// The caller has just looked the key up and found no answer stored (the import
    /// looks its rows' keys up a batch at a time), so the command skips its own
    /// lookup. The append still checks the key and answers a stored one.
    pub found_absent: bool,
}

/// A command's answer, or why it has none.
type Answered<E> = Result<Receipt, CommandError<E>>;

/// Each step's events with the step's domain time, in order.
type Decided<E> = Vec<(Vec<E>, Option<DateTime<Utc>>)>;

/// One command of a change and the domain time it happened (now when `None`).
#[derive(Clone, Debug)]
pub struct Step<C> {
    pub command: C,
    pub occurred_at: Option<DateTime<Utc>>,
}

/// The answer to a successful write: `{id, version, position}` and its status.
#[derive(Clone, Debug, PartialEq)]
pub struct Receipt {
    pub status: u16,
    pub body: Value,
    /// The commit that made this answer found the caller's token live
    /// ([`CommandContext::check_token`]): nothing more need be read before it leaves.
    pub token_checked: bool,
}

/// Aggregate state at a known stream version.
#[derive(Clone, Debug, PartialEq)]
pub struct Cached<A> {
    pub aggregate: A,
    pub version: u64,
    pub last_position: i64,
}

impl<A: Aggregate> Cached<A> {
    /// A stream with no events yet.
    fn empty() -> Cached<A> {
        Cached {
            aggregate: A::default(),
            version: 0,
            last_position: 0,
        }
    }

    /// Applies `events` (the stream's next ones, in order).
    fn fold(&mut self, events: impl IntoIterator<Item = RecordedEvent>) -> Result<(), LoadError> {
        for recorded in events {
            let event = upcast::decode::<A::Event>(
                &recorded.event_type,
                recorded.event_version,
                recorded.payload,
            )
            .map_err(|source| LoadError::Decode {
                position: recorded.position,
                source,
            })?;
            self.aggregate.apply(event);
            self.version = recorded.sequence as u64;
            self.last_position = recorded.position;
        }
        Ok(())
    }
}

type Slot<A> = tokio::sync::Mutex<Option<Cached<A>>>;

/// Cached aggregates of one type, each behind its own lock, at most `capacity` of
/// them idle at a time.
pub struct Repository<A: Aggregate> {
    store: Store,
    slots: SlotCache<Slot<A>>,
    metrics: Metrics,
}

impl<A: Aggregate + Clone> Repository<A> {
    pub fn new(store: Store, capacity: usize, metrics: Metrics) -> Repository<A> {
        Repository {
            store,
            slots: SlotCache::new(capacity),
            metrics,
        }
    }

    fn slot(&self, id: &str) -> Lease<'_, Slot<A>> {
        let (slot, hit) = self.slots.get(id);
        self.metrics.observe_aggregate_cache(A::TYPE, hit);
        slot
    }

    /// Aggregates currently held in memory.
    pub fn cached(&self) -> usize {
        self.slots.len()
    }

    /// Brings cached state forward with whatever the log holds beyond it.
    async fn catch_up(&self, id: &str, cached: &mut Option<Cached<A>>) -> Result<(), LoadError> {
        let state = cached.get_or_insert_with(Cached::empty);
        let events = self.store.load_stream(A::TYPE, id, state.version).await?;
        state.fold(events)
    }

    /// Current state, read through the cache and checked against the log.
    pub async fn load(&self, id: &str) -> Result<Cached<A>, LoadError> {
        let slot = self.slot(id);
        let mut cached = slot.lock().await;
        self.catch_up(id, &mut cached).await?;
        Ok(cached.clone().unwrap_or_else(Cached::empty))
    }

    /// The aggregate as it stood at `as_of`, bypassing the cache: its stream's events
    /// recorded by then, folded in order. The fold stops at the first event recorded
    /// later: each event was decided from the state of all before it, so a later one
    /// without an earlier one (clocks of two instances apart) is a state that never was.
    pub async fn as_of(&self, id: &str, as_of: DateTime<Utc>) -> Result<Cached<A>, LoadError> {
        let mut state = Cached::empty();
        let events = self.store.load_stream(A::TYPE, id, 0).await?;
        state.fold(events.into_iter().take_while(|e| e.recorded_at <= as_of))?;
        Ok(state)
    }

    /// State rebuilt from the full log, bypassing the cache (for verification).
    pub async fn replay(&self, id: &str) -> Result<Cached<A>, LoadError> {
        let mut fresh = None;
        self.catch_up(id, &mut fresh).await?;
        Ok(fresh.unwrap_or_else(Cached::empty))
    }
}

pub struct CommandService {
    appender: Appender,
    store: Store,
    metrics: Metrics,
    max_attempts: u32,
}

impl CommandService {
    /// See [`Appender::disk_full`].
    pub fn disk_full(&self) -> bool {
        self.appender.disk_full()
    }

    pub fn new(store: Store, appender: Appender, metrics: Metrics, max_attempts: u32) -> Self {
        CommandService {
            appender,
            store,
            metrics,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Runs one command against one aggregate. `allowed` sees the current state and
    /// says whether this caller may act on it (a clinician's own groups, say).
    pub async fn execute<A>(
        &self,
        repository: &Repository<A>,
        aggregate_id: &str,
        command: A::Command,
        ctx: &CommandContext,
        allowed: impl Fn(&A) -> bool,
    ) -> Result<Receipt, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone,
        A::Command: Command + Clone,
    {
        let step = Step {
            command,
            occurred_at: ctx.occurred_at,
        };
        self.execute_steps(repository, aggregate_id, vec![step], ctx, allowed)
            .await
    }

    /// Runs several commands on one aggregate as one change: each is decided on the
    /// state the ones before it leave, and their events are appended together or not
    /// at all (an imported membership period is a join and a departure). The first
    /// command names the change and its answer; each step carries its own domain time.
    #[tracing::instrument(name = "command", skip_all, fields(command = steps.first().map_or("none", |s| s.command.name()), aggregate = A::TYPE, aggregate_id = %aggregate_id))]
    pub async fn execute_steps<A>(
        &self,
        repository: &Repository<A>,
        aggregate_id: &str,
        steps: Vec<Step<A::Command>>,
        ctx: &CommandContext,
        allowed: impl Fn(&A) -> bool,
    ) -> Result<Receipt, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone,
        A::Command: Command + Clone,
    {
        let started = std::time::Instant::now();
        let name = steps.first().map_or("none", |s| s.command.name());
        let outcome = self
            .execute_inner(repository, aggregate_id, steps, ctx, allowed)
            .await;
        self.observe(name, &outcome, started);
        outcome
    }

    fn observe<E: std::error::Error>(
        &self,
        name: &str,
        outcome: &Answered<E>,
        started: std::time::Instant,
    ) {
        let label = match outcome {
            Ok(_) => "accepted",
            Err(CommandError::Rejected(_) | CommandError::ClientErased { .. }) => "rejected",
            Err(CommandError::Forbidden | CommandError::TokenNotLive) => "forbidden",
            Err(CommandError::VersionMismatch { .. } | CommandError::IdempotencyKeyReused) => {
                "conflict"
            }
            Err(CommandError::Contended) => "contended",
            Err(CommandError::Store(_) | CommandError::Load(_)) => "error",
        };
        self.metrics.observe_command(name, label, started.elapsed());
    }

    /// Runs independent changes on one aggregate in order, each decided on the state
    /// the ones before it leave, each with its own answer and idempotency record, as
    /// [`execute_steps`](Self::execute_steps) would one after another, but with one
    /// wait for the store instead of one per change: their appends are queued together
    /// as a chain. A refused change leaves the state to the next as it was. When an
    /// append does not commit (another process wrote first, a key was answered
    /// meanwhile), that change and every one after it run again alone, as the
    /// store also refuses the chain's later links. `circle import` runs an
    /// aggregate's queued rows this way.
    #[tracing::instrument(name = "command_chain", skip_all, fields(aggregate = A::TYPE, aggregate_id = %aggregate_id, links = links.len()))]
    pub async fn execute_chain<A>(
        &self,
        repository: &Repository<A>,
        aggregate_id: &str,
        links: Vec<Link<A::Command>>,
        allowed: impl Fn(&A) -> bool,
    ) -> Vec<Answered<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone,
        A::Command: Command + Clone,
    {
        let mut results: Vec<Option<Answered<A::Error>>> = links.iter().map(|_| None).collect();
        let started = std::time::Instant::now();
        let alone_from = self
            .run_chain(repository, aggregate_id, &links, &allowed, &mut results)
            .await;
        let mut answers = Vec::with_capacity(links.len());
        for (index, (link, result)) in links.into_iter().zip(results).enumerate() {
            answers.push(match result {
                Some(outcome) if index < alone_from => {
                    let name = link.steps.first().map_or("none", |s| s.command.name());
                    self.observe(name, &outcome, started);
                    outcome
                }
                _ => {
                    self.execute_steps(repository, aggregate_id, link.steps, &link.ctx, &allowed)
                        .await
                }
            });
        }
        answers
    }

    /// The chain under the aggregate's lock: settles `results` before the index it
    /// returns; the links from there on must run alone.
    async fn run_chain<A>(
        &self,
        repository: &Repository<A>,
        aggregate_id: &str,
        links: &[Link<A::Command>],
        allowed: &impl Fn(&A) -> bool,
        results: &mut [Option<Answered<A::Error>>],
    ) -> usize
    where
        A: Aggregate<Services = ()> + Clone,
        A::Command: Command + Clone,
    {
        // A caller's expected version is checked against the log by the lone path.
        if links.iter().any(|link| link.ctx.if_match.is_some()) {
            return 0;
        }
        let slot = repository.slot(aggregate_id);
        let mut cached = slot.lock().await;
        if cached.is_none()
            && repository
                .catch_up(aggregate_id, &mut cached)
                .await
                .is_err()
        {
            // Each link meets the failure on its own and answers it.
            return 0;
        }
        let Some(mut state) = cached.clone() else {
            return 0;
        };
        let before_chain = state.last_position;
        let mut appends = Vec::new();
        // Each appended link's index and answer, in order.
        let mut appended = Vec::new();
        // Links that write nothing: index, answer, version, and how many appended
        // links come before them (their position is the last of those).
        let mut unwritten = Vec::new();
        // The keys this chain stores: a link whose key is among them is a second row
        // for the same key, answered by the first once that has committed.
        let mut keys = std::collections::HashSet::new();
        let mut alone_from = links.len();
        for (index, link) in links.iter().enumerate() {
            let Some(first) = link.steps.first() else {
                results[index] = Some(Err(CommandError::Contended));
                continue;
            };
            let answer = Answer::of(&first.command, aggregate_id);
            if !allowed(&state.aggregate) {
                results[index] = Some(Err(CommandError::Forbidden));
                continue;
            }
            if let Some(idem) = link.ctx.idempotency.as_ref() {
                if keys.contains(idem.key.as_str()) {
                    alone_from = index;
                    break;
                }
            }
            if let Some(idem) = link.ctx.idempotency.as_ref().filter(|i| !i.found_absent) {
                match self.store.find_response(&idem.key).await {
                    Ok(Some(stored)) => {
                        results[index] = Some(replay_answer(
                            idem,
                            stored.request_hash,
                            stored.status,
                            stored.body,
                        ));
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        results[index] = Some(Err(LoadError::Store(error).into()));
                        continue;
                    }
                }
            }
            let mut next = state.aggregate.clone();
            let decided = match decide(&mut next, &link.steps).await {
                Ok(decided) => decided,
                Err(error) => {
                    results[index] = Some(Err(CommandError::Rejected(error)));
                    continue;
                }
            };
            let count = event_count(&decided);
            if count == 0 {
                unwritten.push((index, answer, state.version, appended.len()));
                continue;
            }
            if let Some(idem) = link.ctx.idempotency.as_ref() {
                keys.insert(idem.key.as_str());
            }
            let mut append =
                self.append_for::<A>(aggregate_id, state.version, decided, &link.ctx, &answer);
            append.chained = !appends.is_empty();
            appends.push(append);
            state.aggregate = next;
            state.version += count;
            appended.push((index, answer));
        }
        // Each committed link's last position, in order.
        let mut positions = Vec::with_capacity(appended.len());
        if !appends.is_empty() {
            let outcomes = self.appender.append_chain(appends).await;
            let count = appended.len();
            for ((index, answer), outcome) in appended.into_iter().zip(outcomes) {
                match outcome {
                    Ok(AppendResult::Committed {
                        version,
                        last_position,
                    }) => {
                        positions.push(last_position);
                        results[index] = Some(Ok(Receipt {
                            status: answer.status,
                            body: write_response(&answer.id, version, last_position),
                            token_checked: false,
                        }));
                    }
                    // Decided on a state that is not the stream's: this link and all
                    // after it (whose outcomes depended on it) run again alone.
                    _ => {
                        alone_from = alone_from.min(index);
                        break;
                    }
                }
            }
            *cached = if positions.len() == count {
                Some(Cached {
                    aggregate: state.aggregate,
                    version: state.version,
                    last_position: positions.last().copied().unwrap_or(before_chain),
                })
            } else if positions.is_empty() {
                // Nothing committed: the state before the chain still holds (or is
                // caught up by the lone path).
                cached.take()
            } else {
                // Part committed: the state after it was not kept; read it again.
                None
            };
        }
        for (index, answer, version, before) in unwritten {
            if index < alone_from {
                let position = before
                    .checked_sub(1)
                    .and_then(|last| positions.get(last).copied())
                    .unwrap_or(before_chain);
                results[index] = Some(Ok(Receipt {
                    status: 200,
                    body: write_response(&answer.id, version, position),
                    token_checked: false,
                }));
            }
        }
        results[alone_from..].iter_mut().for_each(|r| *r = None);
        alone_from
    }

    async fn execute_inner<A>(
        &self,
        repository: &Repository<A>,
        aggregate_id: &str,
        steps: Vec<Step<A::Command>>,
        ctx: &CommandContext,
        allowed: impl Fn(&A) -> bool,
    ) -> Result<Receipt, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Clone,
        A::Command: Command + Clone,
    {
        let Some(first) = steps.first() else {
            return Err(CommandError::Contended);
        };
        let answer = Answer::of(&first.command, aggregate_id);
        let slot = repository.slot(aggregate_id);
        let mut cached = slot.lock().await;
        if cached.is_none() {
            repository.catch_up(aggregate_id, &mut cached).await?;
        }
        // Authorized before the replay lookup: a caller who may not act here learns
        // nothing from the idempotency records.
        if let Some(current) = cached.as_ref() {
            if !allowed(&current.aggregate) {
                return Err(CommandError::Forbidden);
            }
        }
        // Checked under the aggregate's lock: a retry racing its original waits for
        // it here and then gets its answer, instead of being decided a second time.
        if let Some(idem) = ctx.idempotency.as_ref().filter(|idem| !idem.found_absent) {
            let stored = self
                .store
                .find_response(&idem.key)
                .await
                .map_err(LoadError::Store)?;
            if let Some(stored) = stored {
                return replay_answer(idem, stored.request_hash, stored.status, stored.body);
            }
        }
        for _attempt in 0..self.max_attempts {
            // One clone per attempt: it becomes the next state if the append commits.
            let Some(current) = cached.clone() else {
                repository.catch_up(aggregate_id, &mut cached).await?;
                continue;
            };
            if let Some(expected) = ctx.if_match {
                if expected != current.version {
                    // The cache may trail another process: check the log before refusing.
                    repository.catch_up(aggregate_id, &mut cached).await?;
                    let actual = cached.as_ref().map_or(0, |c| c.version);
                    if expected != actual {
                        return Err(CommandError::VersionMismatch { expected, actual });
                    }
                    continue;
                }
            }
            if !allowed(&current.aggregate) {
                return Err(CommandError::Forbidden);
            }
            let mut next = current.aggregate;
            let decided = decide(&mut next, &steps)
                .await
                .map_err(CommandError::Rejected)?;
            let count = event_count(&decided);
            if count == 0 {
                return Ok(Receipt {
                    status: 200,
                    body: write_response(&answer.id, current.version, current.last_position),
                    token_checked: false,
                });
            }
            let append = self.append_for::<A>(aggregate_id, current.version, decided, ctx, &answer);
            match self.appender.append(append).await? {
                AppendResult::Committed {
                    version,
                    last_position,
                } => {
                    debug_assert_eq!(version, current.version + count);
                    *cached = Some(Cached {
                        aggregate: next,
                        version,
                        last_position,
                    });
                    return Ok(Receipt {
                        status: answer.status,
                        body: write_response(&answer.id, version, last_position),
                        token_checked: ctx.check_token.is_some(),
                    });
                }
                AppendResult::Conflict { .. } => {
                    repository.catch_up(aggregate_id, &mut cached).await?;
                }
                AppendResult::AlreadyAnswered(stored) => {
                    let idem = ctx.idempotency.as_ref().ok_or(CommandError::Contended)?;
                    return replay_answer(idem, stored.request_hash, stored.status, stored.body);
                }
                AppendResult::ClientErased { client_id } => {
                    return Err(CommandError::ClientErased { client_id });
                }
                AppendResult::TokenNotLive => return Err(CommandError::TokenNotLive),
            }
        }
        Err(CommandError::Contended)
    }

    fn append_for<A: Aggregate>(
        &self,
        aggregate_id: &str,
        expected_version: u64,
        decided: Decided<A::Event>,
        ctx: &CommandContext,
        answer: &Answer,
    ) -> Append {
        let now = Utc::now();
        let mut events = Vec::new();
        for (step_events, occurred_at) in decided {
            let command_id = Uuid::new_v4();
            for event in &step_events {
                let metadata = EventMetadata {
                    event_id: Uuid::new_v4(),
                    occurred_at: occurred_at.unwrap_or(now),
                    actor_id: ctx.principal.actor_id.clone(),
                    actor_role: ctx.principal.role.as_str().to_string(),
                    correlation_id: ctx.correlation_id,
                    causation_id: Some(command_id),
                };
                events.push(NewEvent::encode(event, metadata));
            }
        }
        Append {
            aggregate_type: A::TYPE,
            aggregate_id: aggregate_id.to_string(),
            expected_version,
            events,
            idempotency: ctx.idempotency.as_ref().map(|idem| IdempotencyRecord {
                key: idem.key.clone(),
                request_hash: idem.request_hash.clone(),
                status: answer.status,
                response_id: answer.id.clone(),
            }),
            key_action: ctx.key_action.clone(),
            chained: false,
            token_hash: ctx.check_token.clone(),
        }
    }
}

/// One change of a chain: its commands and context, as for [`CommandService::execute_steps`].
#[derive(Clone, Debug)]
pub struct Link<C> {
    pub steps: Vec<Step<C>>,
    pub ctx: CommandContext,
}

/// Decides `steps` in order on `aggregate`, which each step advances.
async fn decide<A: Aggregate<Services = ()>>(
    aggregate: &mut A,
    steps: &[Step<A::Command>],
) -> Result<Decided<A::Event>, A::Error>
where
    A::Command: Clone,
{
    let mut decided = Vec::with_capacity(steps.len());
    for step in steps {
        let sink = EventSink::default();
        aggregate.handle(step.command.clone(), &(), &sink).await?;
        decided.push((sink.collect().await, step.occurred_at));
    }
    Ok(decided)
}

fn event_count<E>(decided: &Decided<E>) -> u64 {
    decided.iter().map(|(events, _)| events.len() as u64).sum()
}

fn replay_answer<E: std::error::Error>(
    idem: &IdempotencyRequest,
    stored_hash: Vec<u8>,
    status: u16,
    body: Value,
) -> Result<Receipt, CommandError<E>> {
    if stored_hash == idem.request_hash {
        Ok(Receipt {
            status,
            body,
            token_checked: false,
        })
    } else {
        Err(CommandError::IdempotencyKeyReused)
    }
}

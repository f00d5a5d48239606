//! One group's or one client's history: its stream's events in order, each with who
//! recorded it, when, and what it corrected. Paged by log position like
//! `/api/v1/audit/events`. Payloads are the exact stored text parsed, so personal
//! data in them stays sealed (ciphertext) for every caller; the answer is still
//! client-level (who attended, who joined), so the guard records it in the access log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use circle_events::client::Client;
use circle_events::group::{Group, GroupEvent};
use circle_events::ids::{ClientId, GroupId};
use circle_events::upcast;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, Ids, Query};
use super::guard::{authorize_client, authorize_group, client_ids_in, disclose};
use super::{AppState, Problem};
use crate::audit::chain::{to_hex, AuditEvent};
use crate::commands::LoadError;
use crate::policy::Action;

/// Most events in one page; the default page is [`DEFAULT_LIMIT`].
pub(super) const MAX_LIMIT: i64 = 10_000;
const DEFAULT_LIMIT: i64 = 1_000;

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The stream's events with a log position above this (default 0): the previous
    /// page's `next_after`.
    pub(crate) after: Option<i64>,
    /// Most events in a page (1 to 10000, default 1000).
    pub(crate) limit: Option<i64>,
}

impl HistoryQuery {
    fn page(&self) -> Result<(i64, i64), Problem> {
        let after = self.after.unwrap_or(0);
        if after < 0 {
            return Err(Problem::bad_request("after", "must be 0 or more"));
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Problem::bad_request(
                "limit",
                format!("must be 1 to {MAX_LIMIT}"),
            ));
        }
        Ok((after, limit))
    }
}

/// Who recorded an event.
#[derive(Serialize, ToSchema)]
pub struct Actor {
    pub(crate) id: String,
    pub(crate) role: String,
}

/// The earlier event of the same stream an event supersedes.
#[derive(Serialize, ToSchema)]
pub struct Corrects {
    pub(crate) sequence: i64,
    /// Its log position (`null` only if the log no longer holds it, which the
    /// chain check would report).
    pub(crate) position: Option<i64>,
}

/// One event of the stream, as recorded.
#[derive(Serialize, ToSchema)]
pub struct HistoryEntry {
    pub(crate) position: i64,
    /// The event's number within its stream (1, 2, …).
    pub(crate) sequence: i64,
    #[schema(value_type = String)]
    pub(crate) event_id: uuid::Uuid,
    pub(crate) event_type: String,
    pub(crate) event_version: u32,
    pub(crate) actor: Actor,
    /// When the server recorded it (RFC 3339, microseconds, UTC).
    pub(crate) recorded_at: DateTime<Utc>,
    /// When it happened in the domain.
    pub(crate) occurred_at: DateTime<Utc>,
    #[schema(value_type = String)]
    pub(crate) correlation_id: uuid::Uuid,
    #[schema(value_type = Option<String>)]
    pub(crate) causation_id: Option<uuid::Uuid>,
    /// The payload as stored; personal data in it is sealed (AES-256-GCM).
    #[schema(value_type = Object)]
    pub(crate) payload: Value,
    /// The event's chain hash (lowercase hex): find it in `/api/v1/audit/events`.
    pub(crate) hash: String,
    /// For a correction, the event it supersedes.
    pub(crate) corrects: Option<Corrects>,
}

/// A page of one stream's history; `next_after` is the `after` of the next page,
/// absent at the end.
#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) events: Vec<HistoryEntry>,
    pub(crate) next_after: Option<i64>,
}

fn entry(event: AuditEvent, corrects: Option<Corrects>) -> Result<HistoryEntry, Problem> {
    let payload: Value = serde_json::from_str(&event.payload).map_err(|source| {
        Problem::from(LoadError::Store(crate::store::StoreError::Corrupt(
            format!("payload at {}: {source}", event.position),
        )))
    })?;
    Ok(HistoryEntry {
        position: event.position,
        sequence: event.sequence,
        event_id: event.event_id,
        event_type: event.event_type,
        event_version: event.event_version,
        actor: Actor {
            id: event.actor_id,
            role: event.actor_role,
        },
        recorded_at: event.recorded_at,
        occurred_at: event.occurred_at,
        correlation_id: event.correlation_id,
        causation_id: event.causation_id,
        payload,
        hash: to_hex(&event.hash),
        corrects,
    })
}

/// The sequence a group event supersedes, read through the event's own type (so an
/// older stored version is upcast first).
fn group_correction(event: &AuditEvent) -> Result<Option<u64>, Problem> {
    let payload: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
    let decoded = upcast::decode::<GroupEvent>(&event.event_type, event.event_version, payload)
        .map_err(|source| LoadError::Decode {
            position: event.position,
            source,
        })?;
    Ok(decoded.corrects_sequence())
}

/// A page of one stream, each correction resolved to the position it supersedes.
async fn page(
    state: &AppState,
    aggregate_type: &str,
    aggregate_id: &str,
    query: &HistoryQuery,
) -> Result<HistoryPage, Problem> {
    let (after, limit) = query.page()?;
    let events = state
        .store
        .read_stream(aggregate_type, aggregate_id, after, limit)
        .await?;
    if events.is_empty() && after > 0 {
        // An empty page past the end is an answer; a stream that never was is not.
        let first = state
            .store
            .read_stream(aggregate_type, aggregate_id, 0, 1)
            .await?;
        if first.is_empty() {
            return Err(Problem::not_found(format!("{aggregate_type} not found")));
        }
    } else if events.is_empty() {
        return Err(Problem::not_found(format!("{aggregate_type} not found")));
    }
    let corrected: Vec<Option<u64>> = if aggregate_type == Group::TYPE {
        events
            .iter()
            .map(group_correction)
            .collect::<Result<_, _>>()?
    } else {
        vec![None; events.len()]
    };
    let sequences: Vec<i64> = corrected.iter().flatten().map(|s| *s as i64).collect();
    let positions = if sequences.is_empty() {
        Vec::new()
    } else {
        state
            .store
            .stream_positions(aggregate_type, aggregate_id, &sequences)
            .await?
    };
    let next_after = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.position))
        .flatten();
    let events = events
        .into_iter()
        .zip(corrected)
        .map(|(event, corrects)| {
            let corrects = corrects.map(|sequence| Corrects {
                sequence: sequence as i64,
                position: positions
                    .iter()
                    .find(|(s, _)| *s == sequence as i64)
                    .map(|(_, p)| *p),
            });
            entry(event, corrects)
        })
        .collect::<Result<_, _>>()?;
    Ok(HistoryPage {
        aggregate_type: aggregate_type.to_string(),
        aggregate_id: aggregate_id.to_string(),
        events,
        next_after,
    })
}

#[utoipa::path(get, path = "/api/v1/groups/{group_id}/history",
    params(("group_id" = GroupId, Path), HistoryQuery),
    responses((status = 200, body = HistoryPage, description = "The group's events in order, \
        each with its actor, times, payload (personal data sealed), chain hash and, for a \
        correction, the event it supersedes"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn group_history(
    State(state): State<AppState>,
    caller: Caller,
    Ids(group_id): Ids<GroupId>,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, Problem> {
    let (history, disclosed) = read_group_history(&state, &caller, &group_id, &query).await?;
    Ok(disclose(Json(history), disclosed))
}

/// A page of a group's history if the caller may read it, with the clients it names
/// (who joined, attended, was measured) for the access log. The API and the
/// dashboard's auditor view both read it here.
pub(crate) async fn read_group_history(
    state: &AppState,
    caller: &Caller,
    group_id: &GroupId,
    query: &HistoryQuery,
) -> Result<(HistoryPage, Vec<String>), Problem> {
    authorize_group(state, caller, Action::ReadHistory, group_id.as_str()).await?;
    let history = page(state, Group::TYPE, group_id.as_str(), query).await?;
    let payloads = Value::Array(history.events.iter().map(|e| e.payload.clone()).collect());
    let disclosed = client_ids_in(&payloads);
    Ok((history, disclosed))
}

#[utoipa::path(get, path = "/api/v1/clients/{client_id}/history",
    params(("client_id" = ClientId, Path), HistoryQuery),
    responses((status = 200, body = HistoryPage, description = "The client's own stream in \
        order (registration, consents, measures outside groups, erasure), each with its \
        actor, times, payload (personal data sealed) and chain hash"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn client_history(
    State(state): State<AppState>,
    caller: Caller,
    Ids(client_id): Ids<ClientId>,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, Problem> {
    let (history, disclosed) = read_client_history(&state, &caller, &client_id, &query).await?;
    Ok(disclose(Json(history), disclosed))
}

/// A page of a client's own stream if the caller may read it, with the client for
/// the access log (the API and the dashboard's auditor view).
pub(crate) async fn read_client_history(
    state: &AppState,
    caller: &Caller,
    client_id: &ClientId,
    query: &HistoryQuery,
) -> Result<(HistoryPage, Vec<String>), Problem> {
    authorize_client(state, caller, Action::ReadHistory, client_id.as_str()).await?;
    let history = page(state, Client::TYPE, client_id.as_str(), query).await?;
    Ok((history, vec![client_id.to_string()]))
}

/// The time an `as_of` read asks about, checked against the log: a time the
/// description allows but the log cannot speak for (before its first event, or
/// after now) is 422 naming `as_of`.
pub(super) async fn as_of_in_log(
    state: &AppState,
    as_of: Option<&str>,
) -> Result<Option<DateTime<Utc>>, Problem> {
    let Some(text) = as_of else {
        return Ok(None);
    };
    let as_of = super::extract::parse_time("as_of", text)?;
    let out_of_range =
        |message: String| Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "as_of", message);
    let now = Utc::now();
    if as_of > now {
        return Err(out_of_range(format!(
            "is after now ({}): the log does not know that time yet",
            now.to_rfc3339()
        )));
    }
    let first = state
        .store
        .read_audit(0, 1, &crate::store::AuditFilter::default())
        .await?;
    match first.first() {
        Some(first) if as_of >= first.recorded_at => Ok(Some(as_of)),
        Some(first) => Err(out_of_range(format!(
            "is before the log's first event ({})",
            first.recorded_at.to_rfc3339()
        ))),
        None => Err(out_of_range("the log holds no event yet".to_string())),
    }
}

//! Audit routes, auditors and admins only, all read-only: the log with its hashes
//! (paged JSON, or the whole selection as NDJSON in constant memory), signed
//! checkpoints and the key that verifies them, RFC 9162 proofs, and a check of the
//! whole store. Hashes are lowercase hex; a checkpoint is served exactly as signed.
//!
//! Every answer is recorded in the access log (through the guard, [`disclose`]), so
//! "who looked at the log" is answerable: a page of events with the clients it
//! names, an export with the client its filter names (the whole selection is not
//! known before it streams), proofs, checkpoints, the key and verify with none.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use circle_events::calendar;
use circle_events::client::Client;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::Query;
use super::guard::{client_ids_in, disclose};
use super::{AppState, Problem};
use crate::audit::chain::{to_hex, AuditEvent};
use crate::audit::merkle::leaf_hash;
use crate::audit::tree::{self, Verdict};
use crate::store::{AuditFilter, TreeHead};

/// A value the description allows that the log, or another parameter, rules out:
/// 422 naming the parameter (400 is for values the description itself refuses).
fn out_of_range(field: &str, message: impl Into<String>) -> Problem {
    Problem::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
}
const NDJSON: &str = "application/x-ndjson";
/// Events per page of the NDJSON stream: memory stays at one page whatever the size.
const STREAM_PAGE: i64 = 5_000;
const PAGE_MAX: i64 = 10_000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events with a position above this (default 0).
    after: Option<i64>,
    /// Most events in a JSON page (1 to 10000, default 1000); NDJSON streams the
    /// whole selection unless this is given.
    limit: Option<i64>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    actor_id: Option<String>,
    /// RFC 3339: events recorded at or after this time.
    from: Option<String>,
    /// RFC 3339: events recorded before this time.
    to: Option<String>,
}

/// A page of the log; `next_after` is the `after` of the next page, absent at the end.
#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    #[schema(value_type = Vec<Object>)]
    events: Vec<AuditEvent>,
    next_after: Option<i64>,
}

fn time(field: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, Problem> {
    value
        .map(|t| {
            let t = DateTime::parse_from_rfc3339(t)
                .map_err(|_| Problem::bad_request(field, "must be an RFC 3339 time with offset"))?;
            calendar::check_time(&t).map_err(|reason| Problem::bad_request(field, reason))?;
            Ok(t.with_timezone(&Utc))
        })
        .transpose()
}

impl EventsQuery {
    fn filter(&self) -> Result<AuditFilter, Problem> {
        let filter = AuditFilter {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            actor_id: self.actor_id.clone(),
            from: time("from", self.from.as_deref())?,
            to: time("to", self.to.as_deref())?,
        };
        if let (Some(from), Some(to)) = (filter.from, filter.to) {
            if from > to {
                return Err(out_of_range("from", "must not be after `to`"));
            }
        }
        Ok(filter)
    }
}

#[utoipa::path(get, path = "/api/v1/audit/events", params(EventsQuery),
    responses((status = 200, body = EventsPage, description = "The log in position order with \
        every field and the chain hash (hex); personal data stays sealed. With `Accept: \
        application/x-ndjson`, one event per line (the export `circle audit verify` reads)."),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "audit")]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, Problem> {
    let filter = query.filter()?;
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(Problem::bad_request("after", "must be 0 or more"));
    }
    let limit = match query.limit {
        Some(n) if !(1..=PAGE_MAX).contains(&n) => {
            return Err(Problem::bad_request("limit", "must be 1 to 10000"))
        }
        other => other,
    };
    let wants_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON));
    if wants_ndjson {
        let named = filter
            .aggregate_id
            .clone()
            .filter(|_| filter.aggregate_type.as_deref() == Some(Client::TYPE));
        let export = stream_events(state, after, limit, filter);
        return Ok(disclose(export, named.into_iter().collect()));
    }
    let limit = limit.unwrap_or(1000);
    let events = state.store.read_audit(after, limit, &filter).await?;
    let next_after = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.position))
        .flatten();
    let disclosed = clients_named(&events);
    Ok(disclose(Json(EventsPage { events, next_after }), disclosed))
}

/// The clients a page of the log names: client streams, and the `client_id`s in
/// other streams' payloads (a group's members, attendance, measures).
fn clients_named(events: &[AuditEvent]) -> Vec<String> {
    let mut named: Vec<String> = Vec::new();
    let mut payloads = Vec::new();
    for event in events {
        if event.aggregate_type == Client::TYPE {
            named.push(event.aggregate_id.clone());
        } else if event.payload.contains("\"client_id\"") {
            payloads.push(serde_json::from_str(&event.payload).unwrap_or(serde_json::Value::Null));
        }
    }
    named.extend(client_ids_in(&serde_json::Value::Array(payloads)));
    named.sort_unstable();
    named.dedup();
    named
}

/// The selection as NDJSON, page by page as the client reads it.
fn stream_events(state: AppState, after: i64, limit: Option<i64>, filter: AuditFilter) -> Response {
    let remaining = limit.unwrap_or(i64::MAX);
    let pages = futures_util::stream::try_unfold(
        (state, after, remaining, filter),
        |(state, after, remaining, filter)| async move {
            if remaining <= 0 {
                return Ok(None);
            }
            let page = state
                .store
                .read_audit(after, STREAM_PAGE.min(remaining), &filter)
                .await
                .map_err(|error| {
                    tracing::error!(error = %crate::errors::ErrorChain(&error), "streaming the audit export");
                    std::io::Error::other("the event store failed mid-export")
                })?;
            let Some(last) = page.last().map(|e| e.position) else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(page.len() * 512);
            for event in &page {
                serde_json::to_writer(&mut out, event).map_err(std::io::Error::other)?;
                out.push(b'\n');
            }
            let remaining = remaining - page.len() as i64;
            Ok::<_, std::io::Error>(Some((Bytes::from(out), (state, last, remaining, filter))))
        },
    );
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(pages)).into_response()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckpointQuery {
    /// A checkpoint of exactly this size; the latest when left out.
    tree_size: Option<i64>,
}

fn signed_note(head: TreeHead) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        head.note,
    )
        .into_response()
}

/// The size of the latest checkpoint: what proofs may be asked about.
async fn signed_size(state: &AppState) -> Result<i64, Problem> {
    Ok(state.store.tree_head(None).await?.map_or(0, |h| h.size))
}

#[utoipa::path(get, path = "/api/v1/audit/checkpoint", params(CheckpointQuery),
    responses((status = 200, content_type = "text/plain", body = String, description = "A C2SP \
        checkpoint (origin, tree size, base64 RFC 6962 root) in a C2SP signed note, Ed25519"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "audit")]
pub async fn checkpoint(
    State(state): State<AppState>,
    Query(query): Query<CheckpointQuery>,
) -> Result<Response, Problem> {
    if let Some(size) = query.tree_size {
        if size < 0 {
            return Err(Problem::bad_request("tree_size", "must be 0 or more"));
        }
        let head = state.store.head_position().await?;
        if size > head {
            return Err(out_of_range(
                "tree_size",
                format!("must be at most {head}, the events in the log"),
            ));
        }
    }
    match state.store.tree_head(query.tree_size).await? {
        Some(head) => Ok(disclose(signed_note(head), Vec::new())),
        None => Err(Problem::not_found(match query.tree_size {
            Some(size) => format!("no checkpoint was signed at tree size {size}"),
            None => "no checkpoint has been signed yet".to_string(),
        })),
    }
}

#[utoipa::path(get, path = "/api/v1/audit/key",
    responses((status = 200, content_type = "text/plain", body = String,
        description = "The checkpoints' signed-note verifier key: name+id+base64(0x01 ‖ Ed25519 key)"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "audit")]
pub async fn key(State(state): State<AppState>) -> Result<Response, Problem> {
    match &state.audit_key {
        Some(key) => Ok(disclose(
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{key}\n"),
            ),
            Vec::new(),
        )),
        None => Err(Problem::not_found(
            "this Circle signs no checkpoints: no key is configured",
        )),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// The event's log position (its leaf index is position − 1).
    position: i64,
    /// The tree size, at most the latest checkpoint's; that size when left out.
    tree_size: Option<i64>,
}

/// RFC 9162 §2.1.3 inclusion proof; every hash is lowercase hex.
#[derive(Serialize, ToSchema)]
pub struct InclusionProof {
    position: i64,
    tree_size: i64,
    leaf_index: i64,
    /// The event's chain hash.
    chain_hash: String,
    /// SHA-256(0x00 ‖ chain hash).
    leaf_hash: String,
    /// The audit path, from the leaf upwards.
    proof: Vec<String>,
    /// The root this proof leads to: compare it with a signed checkpoint's.
    root: String,
}

#[utoipa::path(get, path = "/api/v1/audit/proof/inclusion", params(InclusionQuery),
    responses((status = 200, body = InclusionProof, description = "RFC 9162 §2.1.3 inclusion \
        proof, hashes in lowercase hex"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "audit")]
pub async fn inclusion(
    State(state): State<AppState>,
    Query(query): Query<InclusionQuery>,
) -> Result<Response, Problem> {
    if query.position < 1 {
        return Err(Problem::bad_request("position", "must be 1 or more"));
    }
    if query.tree_size.is_some_and(|size| size < 1) {
        return Err(Problem::bad_request("tree_size", "must be 1 or more"));
    }
    let signed = signed_size(&state).await?;
    let size = query.tree_size.unwrap_or(signed);
    if !(1..=signed).contains(&size) {
        return Err(out_of_range(
            "tree_size",
            format!("must be 1 to {signed}, the latest checkpoint's size"),
        ));
    }
    if query.position > size {
        return Err(out_of_range(
            "position",
            format!("must be at most {size}, the tree size"),
        ));
    }
    let index = query.position as u64 - 1;
    let proof = tree::inclusion_proof(&state.store, index, size as u64).await?;
    let root = tree::root(&state.store, size as u64).await?;
    let chain_hash = state
        .store
        .chain_hashes(&[query.position])
        .await?
        .first()
        .map(|(_, h)| *h)
        .ok_or_else(|| Problem::not_found("that position is missing from the log"))?;
    let proof = Json(InclusionProof {
        position: query.position,
        tree_size: size,
        leaf_index: index as i64,
        chain_hash: to_hex(&chain_hash),
        leaf_hash: to_hex(&leaf_hash(&chain_hash)),
        proof: proof.iter().map(|h| to_hex(h)).collect(),
        root: to_hex(&root),
    });
    Ok(disclose(proof, Vec::new()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// The older tree size (1 or more).
    from: i64,
    /// The newer tree size, at most the latest checkpoint's.
    to: i64,
}

/// RFC 9162 §2.1.4 consistency proof; every hash is lowercase hex.
#[derive(Serialize, ToSchema)]
pub struct ConsistencyProof {
    from: i64,
    to: i64,
    proof: Vec<String>,
    from_root: String,
    to_root: String,
}

#[utoipa::path(get, path = "/api/v1/audit/proof/consistency", params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyProof, description = "RFC 9162 §2.1.4 consistency \
        proof, hashes in lowercase hex"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "audit")]
pub async fn consistency(
    State(state): State<AppState>,
    Query(query): Query<ConsistencyQuery>,
) -> Result<Response, Problem> {
    for (field, value) in [("from", query.from), ("to", query.to)] {
        if value < 1 {
            return Err(Problem::bad_request(field, "must be 1 or more"));
        }
    }
    let signed = signed_size(&state).await?;
    if query.to > signed {
        return Err(out_of_range(
            "to",
            format!("must be at most {signed}, the latest checkpoint's size"),
        ));
    }
    if query.from > query.to {
        return Err(out_of_range("from", "must not be above `to`"));
    }
    let (from, to) = (query.from as u64, query.to as u64);
    let proof = tree::consistency_proof(&state.store, from, to).await?;
    let from_root = tree::root(&state.store, from).await?;
    let to_root = tree::root(&state.store, to).await?;
    let proof = Json(ConsistencyProof {
        from: query.from,
        to: query.to,
        proof: proof.iter().map(|h| to_hex(h)).collect(),
        from_root: to_hex(&from_root),
        to_root: to_hex(&to_root),
    });
    Ok(disclose(proof, Vec::new()))
}

#[utoipa::path(get, path = "/api/v1/audit/verify",
    responses((status = 200, body = Verdict, description = "The whole log checked: chain from \
        position 1 and the root at every signed checkpoint"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "audit")]
pub async fn verify(State(state): State<AppState>) -> Result<Response, Problem> {
    let verdict = tree::verify_store(&state.store, |_, _| {}).await?;
    Ok(disclose((StatusCode::OK, Json(verdict)), Vec::new()))
}

//! Where HTTP meets the access policy ([`crate::policy`]).
//!
//! The router's [`guard`] runs before any handler: it finds the route's entry in
//! the policy's table (a route without one is refused), authenticates the caller
//! (401) and refuses a role that no record could allow (403), before the body is
//! read or any record is loaded. Handlers then ask about the record itself with
//! [`authorize`], which gathers the facts the rule needs (from the care-team index,
//! never from whether the record exists) and asks [`policy::check`].
//!
//! The guard also keeps the access log ([`crate::access_log`]): a refusal (401,
//! 403) and an answer a handler marked with [`disclose`] are recorded, durably,
//! before the answer leaves; if the log cannot be written the answer is 503.

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use circle_events::client::Client;
use cqrs_es::Aggregate;

use serde_json::Value;

use super::extract::Caller;
use super::{AppState, Problem};
use crate::access_log::{self, AccessEntry};
use crate::auth::{Liveness, Role};
use crate::policy::{self, Action, Denial, Entry, Resource, View};

impl From<Denial> for Problem {
    fn from(denial: Denial) -> Problem {
        match denial.field {
            Some(field) => Problem::field(StatusCode::FORBIDDEN, field, denial.reason),
            None => Problem::forbidden(denial.reason),
        }
    }
}

/// Every `/api/v1` request passes here first (see the module comment); what it
/// answers is recorded in the access log when it refuses (401, 403) or discloses
/// client-level data ([`disclose`]), before the answer leaves.
pub(crate) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(route) = request.extensions().get::<MatchedPath>() else {
        return next.run(request).await; // no route: the fallback answers 404
    };
    let route = route.as_str().to_string();
    let action = match policy::entry(request.method().as_str(), &route) {
        Entry::Action(action) => action,
        Entry::OtherMethod => return next.run(request).await, // 405 with Allow
        Entry::Missing => {
            tracing::error!(route, "a route without an access policy entry");
            return Problem::forbidden("this route has no access policy entry").into_response();
        }
    };
    if policy::is_public(action) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let mut record = Record {
        method: parts.method.to_string(),
        route,
        principal: None,
        token_id: None,
        purpose: None,
        correlation_id: parts
            .headers
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| uuid::Uuid::parse_str(v.trim()).ok())
            .unwrap_or_else(uuid::Uuid::new_v4),
    };
    let authenticated = if policy::commits_only(action) {
        Caller::authenticate_for_commit(&parts, &state).await
    } else {
        Caller::authenticate(&parts, &state).await
    };
    let caller = match authenticated {
        Ok(caller) => caller,
        Err(problem) => return record.answer(&state, problem.into_response()).await,
    };
    record.token_id = Some(caller.0.token_id.clone());
    record.principal = Some(caller.0.clone());
    let purpose = parts.headers.get(PURPOSE).map(|v| v.as_bytes());
    record.purpose = match access_log::parse_purpose(purpose) {
        Ok(purpose) => purpose,
        Err(message) => {
            let refused = Problem::bad_request(PURPOSE, message).into_response();
            return confirm_token(&state, &caller.1, refused).await;
        }
    };
    if let Err(denial) = policy::role_may(caller.0.role, action) {
        let refused = Problem::from(denial).into_response();
        let refused = confirm_token(&state, &caller.1, refused).await;
        return record.answer(&state, refused).await;
    }
    let liveness = caller.1.clone();
    parts.extensions.insert(caller);
    let response = next.run(Request::from_parts(parts, body)).await;
    let response = confirm_token(&state, &liveness, response).await;
    record.answer(&state, response).await
}

/// A caller let in on a token read live before ([`Liveness::AtCommit`]) gets an
/// answer only once the token is known live now: from the commit that made the
/// answer ([`TokenChecked`]), or else read here. A token revoked meanwhile gets the
/// 401 every refused token gets, not what its request would have been told (a
/// validation error, a replayed answer, a refusal that names a record).
async fn confirm_token(state: &AppState, liveness: &Liveness, response: Response) -> Response {
    let Liveness::AtCommit { token_hash } = liveness else {
        return response;
    };
    if response.extensions().get::<TokenChecked>().is_some() {
        return response;
    }
    match state.auth.still_live(token_hash).await {
        Ok(true) => response,
        Ok(false) => Problem::unauthorized().into_response(),
        Err(error) => Problem::from(error).into_response(),
    }
}

/// Marks an answer made by a commit that found the caller's token live.
#[derive(Clone, Copy)]
pub(crate) struct TokenChecked;

/// The header a caller states their purpose in; recorded with what they see.
pub(super) const PURPOSE: &str = "Circle-Purpose";

/// The clients a successful answer discloses; the guard records them before the
/// answer leaves. An empty list still records the read (the access log's own).
#[derive(Clone)]
struct Disclosed(Vec<String>);

/// Marks an answer as disclosing these clients' data.
pub(crate) fn disclose(answer: impl IntoResponse, client_ids: Vec<String>) -> Response {
    let mut response = answer.into_response();
    if response.status().is_success() {
        response.extensions_mut().insert(Disclosed(client_ids));
    }
    response
}

/// Every `client_id` in a JSON answer: the member rows of a report, a group's
/// members, alerts.
pub(super) fn client_ids_in(value: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("client_id", Value::String(id)) => out.push(id.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out.sort_unstable();
    out.dedup();
    out
}

/// What the guard knows about a request, for its access-log entry.
struct Record {
    method: String,
    route: String,
    principal: Option<crate::auth::Principal>,
    token_id: Option<String>,
    purpose: Option<String>,
    correlation_id: uuid::Uuid,
}

impl Record {
    /// The answer, once its entry (if it needs one) is durably written; 503 if it
    /// cannot be: nothing is disclosed or refused unrecorded.
    async fn answer(self, state: &AppState, response: Response) -> Response {
        let status = response.status();
        let disclosed = response.extensions().get::<Disclosed>().cloned();
        let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
        if (!refused && disclosed.is_none()) || !state.access_log.is_on() {
            return response;
        }
        let entry = AccessEntry {
            recorded: chrono::Utc::now(),
            principal: self.principal,
            token_id: self.token_id,
            method: self.method,
            route: self.route,
            status: status.as_u16(),
            client_ids: disclosed.map(|d| d.0).unwrap_or_default(),
            purpose: self.purpose,
            correlation_id: self.correlation_id,
        };
        match state.access_log.record(entry).await {
            Ok(()) => response,
            Err(error) => {
                tracing::error!(error = %crate::errors::ErrorChain(&error), "refusing to answer unrecorded");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the access log cannot be written, so nothing is disclosed; try again shortly",
                )
                .retry_after(1)
                .into_response()
            }
        }
    }
}

/// The caller's clinician id, when the facts about records matter (clinicians only:
/// the other roles' rules do not depend on them, so nothing is looked up).
fn clinician(caller: &Caller) -> Option<&str> {
    match caller.0.role {
        Role::Clinician => caller.0.clinician_id.as_deref(),
        _ => None,
    }
}

/// Whether the caller facilitates `group_id` now.
pub(crate) async fn group_facilitated(
    state: &AppState,
    caller: &Caller,
    group_id: &str,
) -> Result<bool, Problem> {
    match clinician(caller) {
        Some(me) => Ok(state.auth.clinician_facilitates(me, group_id).await?),
        None => Ok(false),
    }
}

/// Whether `client_id` is or was a member of a group the caller facilitates.
pub(crate) async fn client_in_care(
    state: &AppState,
    caller: &Caller,
    client_id: &str,
) -> Result<bool, Problem> {
    match clinician(caller) {
        Some(me) => Ok(state.auth.clinician_knows_client(me, client_id).await?),
        None => Ok(false),
    }
}

/// In the caller's care, or registered by the caller: the clients a clinician may
/// bring into a group of theirs. Anyone else's client comes only by an admin's
/// referral (an admin's `JoinGroup`, recorded as its event).
pub(super) async fn client_known(
    state: &AppState,
    caller: &Caller,
    client_id: &str,
) -> Result<bool, Problem> {
    let Some(me) = clinician(caller) else {
        return Ok(false);
    };
    if state.auth.clinician_knows_client(me, client_id).await? {
        return Ok(true);
    }
    // Only on the path that would otherwise refuse: the client's first event.
    let stream = state.store.load_stream(Client::TYPE, client_id, 0).await?;
    Ok(stream
        .first()
        .is_some_and(|e| e.actor_role == Role::Clinician.as_str() && e.actor_id == me))
}

/// Asks the policy; a refusal is a 403 problem.
pub(crate) fn allow(
    caller: &Caller,
    action: Action,
    resource: Resource<'_>,
) -> Result<View, Problem> {
    Ok(policy::check(&caller.0, action, resource)?)
}

/// The policy's answer for an action on one group.
pub(crate) async fn authorize_group(
    state: &AppState,
    caller: &Caller,
    action: Action,
    group_id: &str,
) -> Result<View, Problem> {
    let facilitated = group_facilitated(state, caller, group_id).await?;
    allow(caller, action, Resource::Group { facilitated })
}

/// The policy's answer for an action on one client.
pub(crate) async fn authorize_client(
    state: &AppState,
    caller: &Caller,
    action: Action,
    client_id: &str,
) -> Result<View, Problem> {
    let in_care = client_in_care(state, caller, client_id).await?;
    allow(caller, action, Resource::Client { in_care })
}

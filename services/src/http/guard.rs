//! Where HTTP meets the access policy ([`crate::policy`]).
//!
//! The router's [`guard`] runs before any handler: it finds the route's entry in
//! the policy's table (a route without one is refused), authenticates the caller
//! (401) and refuses a role that no record could allow (403), before the body is
//! read or any record is loaded. Handlers then ask about the record itself with
//! [`authorize`], which gathers the facts the rule needs (from the care-team index,
//! never from whether the record exists) and asks [`policy::check`].

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use circle_events::client::Client;
use cqrs_es::Aggregate;

use super::extract::Caller;
use super::{AppState, Problem};
use crate::auth::Role;
use crate::policy::{self, Action, Denial, Entry, Resource, View};

impl From<Denial> for Problem {
    fn from(denial: Denial) -> Problem {
        match denial.field {
            Some(field) => Problem::field(StatusCode::FORBIDDEN, field, denial.reason),
            None => Problem::forbidden(denial.reason),
        }
    }
}

/// Every `/api/v1` request passes here first (see the module comment).
pub(super) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(route) = request.extensions().get::<MatchedPath>() else {
        return next.run(request).await; // no route: the fallback answers 404
    };
    let action = match policy::entry(request.method().as_str(), route.as_str()) {
        Entry::Action(action) => action,
        Entry::OtherMethod => return next.run(request).await, // 405 with Allow
        Entry::Missing => {
            tracing::error!(
                route = route.as_str(),
                "a route without an access policy entry"
            );
            return Problem::forbidden("this route has no access policy entry").into_response();
        }
    };
    if policy::is_public(action) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::authenticate(&parts, &state).await {
        Ok(caller) => caller,
        Err(problem) => return problem.into_response(),
    };
    if let Err(denial) = policy::role_may(caller.0.role, action) {
        return Problem::from(denial).into_response();
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
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
pub(super) async fn group_facilitated(
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
pub(super) async fn client_in_care(
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
pub(super) fn allow(
    caller: &Caller,
    action: Action,
    resource: Resource<'_>,
) -> Result<View, Problem> {
    Ok(policy::check(&caller.0, action, resource)?)
}

/// The policy's answer for an action on one group.
pub(super) async fn authorize_group(
    state: &AppState,
    caller: &Caller,
    action: Action,
    group_id: &str,
) -> Result<View, Problem> {
    let facilitated = group_facilitated(state, caller, group_id).await?;
    allow(caller, action, Resource::Group { facilitated })
}

/// The policy's answer for an action on one client.
pub(super) async fn authorize_client(
    state: &AppState,
    caller: &Caller,
    action: Action,
    client_id: &str,
) -> Result<View, Problem> {
    let in_care = client_in_care(state, caller, client_id).await?;
    allow(caller, action, Resource::Client { in_care })
}

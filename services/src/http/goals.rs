//! Goal routes (DOMAIN.md "Goals and accountability"): set a goal, check in, close it,
//! and the group check-in form for a session.
//!
//! A goal lives in the group it was set in (see `circle_events::group::goals`); the
//! routes under `/clients/{id}/goals/{goal_id}` find that group through the care-team
//! index, which also refuses a goal of another client by name. Titles are sealed
//! here, with the client's own key, before the command is built.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use circle_events::group::{GoalClosure, GoalLevel, GroupCommand};
use serde::Deserialize;
use utoipa::ToSchema;

use super::clients::require_active_client;
use super::extract::{Caller, JsonBody, Path, WriteHeaders};
use super::groups::execute;
use super::{id_or_new, path_id, AppState, Problem, Write, WRITERS};
use crate::store::ClientKey;

/// Longest goal title, in characters: a sentence, like other personal fields.
pub const MAX_GOAL_TITLE: usize = 200;
const DEFAULT_WEIGHT: u8 = 1;
/// DOMAIN.md: a goal starts "somewhat less than expected" unless said otherwise.
const DEFAULT_START_LEVEL: i8 = -1;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetGoalRequest {
    /// Generated when absent; unique across the practice.
    goal_id: Option<String>,
    /// Personal data: stored sealed with the client's key, gone on erasure.
    title: String,
    /// 1 to 3; defaults to 1.
    weight: Option<u8>,
    /// -2 to 2; defaults to -1.
    start_level: Option<i8>,
    /// The group the goal is set in; the client must be a member on `set_on`.
    group_id: Option<String>,
    set_on: NaiveDate,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInRequest {
    /// -2 (much less than expected) to 2 (much more).
    level: i8,
    /// The session the check-in was made at; the member must not be marked absent.
    session_id: Option<String>,
    /// If given, must be the goal's group.
    group_id: Option<String>,
    /// Defaults to the session's start, or now outside a session.
    checked_in_at: Option<DateTime<FixedOffset>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseGoalRequest {
    reason: GoalClosure,
    /// Required for `revised`: the member's goal that replaces this one.
    replaced_by: Option<String>,
    /// Defaults to today (UTC).
    closed_on: Option<NaiveDate>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCheckInsRequest {
    check_ins: Vec<SessionCheckIn>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCheckIn {
    client_id: String,
    goal_id: String,
    level: i8,
}

fn check_title(title: &str) -> Result<&str, Problem> {
    let title = title.trim();
    if title.is_empty() || title.chars().count() > MAX_GOAL_TITLE {
        return Err(Problem::bad_request(
            "title",
            format!("must be 1 to {MAX_GOAL_TITLE} characters"),
        ));
    }
    Ok(title)
}

/// The group a goal of this client lives in. A goal of another client is refused
/// naming `goal_id`; a `group_id` the caller gave must agree.
async fn goal_group(
    state: &AppState,
    client_id: &str,
    goal_id: &str,
    given_group: Option<&str>,
) -> Result<String, Problem> {
    let home = state
        .auth
        .goal_home(goal_id)
        .await?
        .ok_or_else(|| Problem::not_found("no goal with that id"))?;
    if home.client_id != client_id {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "goal_id",
            "is not a goal of this client",
        ));
    }
    if let Some(given) = given_group.filter(|g| *g != home.group_id) {
        path_id("group_id", given)?;
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "group_id",
            "is not the group this goal was set in",
        ));
    }
    Ok(home.group_id)
}

/// A write on one goal of one client, decided by the goal's group.
async fn write_goal(
    state: &AppState,
    write: Write<'_>,
    (client_id, goal_id): (&str, &str),
    given_group: Option<&str>,
    command: GroupCommand,
    name: &'static str,
) -> Result<Response, Problem> {
    path_id("client_id", client_id)?;
    path_id("goal_id", goal_id)?;
    write.caller.require(WRITERS)?;
    let group_id = goal_group(state, client_id, goal_id, given_group).await?;
    execute(
        state,
        write,
        &group_id,
        command,
        name,
        goal_id,
        StatusCode::OK,
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/goals", request_body = SetGoalRequest,
    params(("client_id" = String, Path)),
    responses((status = 201, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "goals")]
pub async fn set_goal(
    State(state): State<AppState>,
    caller: Caller,
    headers: WriteHeaders,
    Path(client_id): Path<String>,
    body: JsonBody<SetGoalRequest>,
) -> Result<Response, Problem> {
    path_id("client_id", &client_id)?;
    caller.require(WRITERS)?;
    let request = body.value;
    let title = check_title(&request.title)?;
    let group_id = request.group_id.ok_or_else(|| {
        Problem::bad_request(
            "group_id",
            "is required: a goal is set within a group, whose members hold it to account",
        )
    })?;
    path_id("group_id", &group_id)?;
    let goal_id = id_or_new("goal_id", request.goal_id, "goal")?;
    if state.auth.goal_home(&goal_id).await?.is_some() {
        return Err(Problem::field(
            StatusCode::CONFLICT,
            "goal_id",
            "a goal with this id already exists",
        ));
    }
    require_active_client(&state, &client_id).await?;
    let ClientKey::Wrapped(wrapped) = state.store.client_key(&client_id).await? else {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "client_id",
            "this client has no key to seal personal data with",
        ));
    };
    let title = state
        .vault
        .seal_goal_title(&wrapped, &client_id, &goal_id, title)
        .map_err(|error| {
            tracing::error!(%client_id, error = %crate::errors::ErrorChain(&error), "the client's key is unreadable");
            Problem::unavailable()
        })?;
    let command = GroupCommand::SetGoal {
        goal_id: goal_id.clone(),
        client_id,
        title,
        weight: request.weight.unwrap_or(DEFAULT_WEIGHT),
        start_level: request.start_level.unwrap_or(DEFAULT_START_LEVEL),
        set_on: request.set_on,
    };
    let write = Write::new(&caller, &headers, &body.request_hash);
    execute(
        &state,
        write,
        &group_id,
        command,
        "set_goal",
        &goal_id,
        StatusCode::CREATED,
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/goals/{goal_id}/check-ins", request_body = CheckInRequest,
    params(("client_id" = String, Path), ("goal_id" = String, Path)),
    responses((status = 200, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "goals")]
pub async fn check_in(
    State(state): State<AppState>,
    caller: Caller,
    headers: WriteHeaders,
    Path((client_id, goal_id)): Path<(String, String)>,
    body: JsonBody<CheckInRequest>,
) -> Result<Response, Problem> {
    let request = body.value;
    if let Some(session_id) = &request.session_id {
        path_id("session_id", session_id)?;
    }
    let checked_in_at = match (&request.session_id, request.checked_in_at) {
        (None, None) => Some(Utc::now().fixed_offset()),
        (_, given) => given,
    };
    let command = GroupCommand::CheckIn {
        goal_id: goal_id.clone(),
        client_id: client_id.clone(),
        level: request.level,
        session_id: request.session_id,
        checked_in_at,
    };
    let write = Write::new(&caller, &headers, &body.request_hash);
    let given_group = request.group_id.as_deref();
    let ids = (client_id.as_str(), goal_id.as_str());
    write_goal(&state, write, ids, given_group, command, "check_in").await
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/goals/{goal_id}/closure", request_body = CloseGoalRequest,
    params(("client_id" = String, Path), ("goal_id" = String, Path)),
    responses((status = 200, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "goals")]
pub async fn close_goal(
    State(state): State<AppState>,
    caller: Caller,
    headers: WriteHeaders,
    Path((client_id, goal_id)): Path<(String, String)>,
    body: JsonBody<CloseGoalRequest>,
) -> Result<Response, Problem> {
    let request = body.value;
    let command = GroupCommand::CloseGoal {
        goal_id: goal_id.clone(),
        client_id: client_id.clone(),
        reason: request.reason,
        replaced_by: request.replaced_by,
        closed_on: request.closed_on.unwrap_or_else(|| Utc::now().date_naive()),
    };
    let write = Write::new(&caller, &headers, &body.request_hash);
    let ids = (client_id.as_str(), goal_id.as_str());
    write_goal(&state, write, ids, None, command, "close_goal").await
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/sessions/{session_id}/goal-check-ins", request_body = SessionCheckInsRequest,
    params(("group_id" = String, Path), ("session_id" = String, Path)),
    responses((status = 200, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "goals")]
pub async fn session_check_ins(
    State(state): State<AppState>,
    caller: Caller,
    headers: WriteHeaders,
    Path((group_id, session_id)): Path<(String, String)>,
    body: JsonBody<SessionCheckInsRequest>,
) -> Result<Response, Problem> {
    path_id("group_id", &group_id)?;
    path_id("session_id", &session_id)?;
    let command = GroupCommand::CheckInSession {
        session_id: session_id.clone(),
        check_ins: body
            .value
            .check_ins
            .into_iter()
            .map(|c| GoalLevel {
                client_id: c.client_id,
                goal_id: c.goal_id,
                level: c.level,
            })
            .collect(),
    };
    let write = Write::new(&caller, &headers, &body.request_hash);
    execute(
        &state,
        write,
        &group_id,
        command,
        "session_check_ins",
        &session_id,
        StatusCode::OK,
    )
    .await
}

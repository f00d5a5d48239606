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
use circle_events::ids::{ClientId, GoalId, GroupId, SessionId};
use serde::Deserialize;
use utoipa::ToSchema;

use super::extract::{whole, whole_or_none};
use super::guard::authorize_client;
use super::write::{Write, Writer};
use super::{new_id, AppState, Problem};
use crate::policy::Action;
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
    goal_id: Option<GoalId>,
    /// Personal data: stored sealed with the client's key, gone on erasure.
    title: String,
    /// 1 to 3; defaults to 1.
    #[serde(default, deserialize_with = "whole_or_none")]
    weight: Option<u8>,
    /// -2 to 2; defaults to -1.
    #[serde(default, deserialize_with = "whole_or_none")]
    start_level: Option<i8>,
    /// The group the goal is set in, whose members hold it to account; the client
    /// must be a member on `set_on`.
    group_id: GroupId,
    set_on: NaiveDate,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInRequest {
    /// -2 (much less than expected) to 2 (much more).
    #[serde(deserialize_with = "whole")]
    level: i8,
    /// The session the check-in was made at; the member must not be marked absent.
    session_id: Option<SessionId>,
    /// If given, must be the goal's group.
    group_id: Option<GroupId>,
    /// Defaults to the session's start, or now outside a session.
    checked_in_at: Option<DateTime<FixedOffset>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseGoalRequest {
    reason: GoalClosure,
    /// Required for `revised`: the member's goal that replaces this one.
    replaced_by: Option<GoalId>,
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
    client_id: ClientId,
    goal_id: GoalId,
    #[serde(deserialize_with = "whole")]
    level: i8,
}

/// Counted as sent, then trimmed: the description's length is the sent text's.
fn check_title(title: &str) -> Result<&str, Problem> {
    let sent = title.chars().count();
    let title = title.trim();
    if title.is_empty() || sent > MAX_GOAL_TITLE {
        return Err(Problem::bad_request(
            "title",
            format!("must be 1 to {MAX_GOAL_TITLE} characters"),
        ));
    }
    Ok(title)
}

/// The group a goal of this client lives in, once the caller may write about the
/// client (asked first, so a caller learns nothing of which goals exist). A goal of
/// another client is refused naming `goal_id`; a `group_id` the caller gave must agree.
async fn goal_group(
    state: &AppState,
    writer: &Writer,
    client_id: &ClientId,
    goal_id: &GoalId,
    given_group: Option<&GroupId>,
) -> Result<GroupId, Problem> {
    let client = client_id.as_str();
    authorize_client(state, &writer.caller, Action::WriteClient, client).await?;
    let home = state
        .auth
        .goal_home(goal_id.as_str())
        .await?
        .ok_or_else(|| Problem::not_found("no goal with that id"))?;
    if home.client_id != client_id.as_str() {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "goal_id",
            "is not a goal of this client",
        ));
    }
    let home_group = GroupId::try_from(home.group_id).map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a stored group id is unreadable",
        )
    })?;
    if given_group.is_some_and(|given| *given != home_group) {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "group_id",
            "is not the group this goal was set in",
        ));
    }
    Ok(home_group)
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/goals", request_body = SetGoalRequest,
    params(("client_id" = ClientId, Path)),
    responses((status = 201, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "goals")]
pub async fn set_goal(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<ClientId, SetGoalRequest>,
) -> Result<Response, Problem> {
    // Before any lookup, so that a caller learns nothing of which goals exist.
    authorize_client(&state, &writer.caller, Action::WriteClient, ids.as_str()).await?;
    let title = check_title(&body.title)?;
    let group_id = body.group_id;
    let goal_id = body.goal_id.unwrap_or_else(|| new_id("goal"));
    if state.auth.goal_home(goal_id.as_str()).await?.is_some() {
        return Err(Problem::field(
            StatusCode::CONFLICT,
            "goal_id",
            "a goal with this id already exists",
        ));
    }
    let wrapped = match state.store.client_key(ids.as_str()).await? {
        ClientKey::Wrapped(wrapped) => wrapped,
        ClientKey::Missing => return Err(Problem::not_found("client not found")),
        ClientKey::Destroyed => {
            return Err(Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "client_id",
                "this client's data has been erased",
            ))
        }
    };
    let title = state
        .vault
        .seal_goal_title(&wrapped, ids.as_str(), goal_id.as_str(), title)
        .map_err(|error| {
            tracing::error!(client_id = %ids, error = %crate::errors::ErrorChain(&error), "the client's key is unreadable");
            Problem::unavailable()
        })?;
    let command = GroupCommand::SetGoal {
        goal_id: goal_id.to_string(),
        client_id: ids.to_string(),
        title,
        weight: body.weight.unwrap_or(DEFAULT_WEIGHT),
        start_level: body.start_level.unwrap_or(DEFAULT_START_LEVEL),
        set_on: body.set_on,
    };
    writer.run(&state, &group_id, command).await
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/goals/{goal_id}/check-ins", request_body = CheckInRequest,
    params(("client_id" = ClientId, Path), ("goal_id" = GoalId, Path)),
    responses((status = 200, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "goals")]
pub async fn check_in(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<(ClientId, GoalId), CheckInRequest>,
) -> Result<Response, Problem> {
    let (client_id, goal_id) = ids;
    let given_group = body.group_id.as_ref();
    let group_id = goal_group(&state, &writer, &client_id, &goal_id, given_group).await?;
    let checked_in_at = match (&body.session_id, body.checked_in_at) {
        (None, None) => Some(Utc::now().fixed_offset()),
        (_, given) => given,
    };
    let command = GroupCommand::CheckIn {
        goal_id: goal_id.to_string(),
        client_id: client_id.to_string(),
        level: body.level,
        session_id: body.session_id.map(String::from),
        checked_in_at,
    };
    writer.run(&state, &group_id, command).await
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/goals/{goal_id}/closure", request_body = CloseGoalRequest,
    params(("client_id" = ClientId, Path), ("goal_id" = GoalId, Path)),
    responses((status = 200, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "goals")]
pub async fn close_goal(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<(ClientId, GoalId), CloseGoalRequest>,
) -> Result<Response, Problem> {
    let (client_id, goal_id) = ids;
    let group_id = goal_group(&state, &writer, &client_id, &goal_id, None).await?;
    let command = GroupCommand::CloseGoal {
        goal_id: goal_id.to_string(),
        client_id: client_id.to_string(),
        reason: body.reason,
        replaced_by: body.replaced_by.map(String::from),
        closed_on: body.closed_on.unwrap_or_else(|| Utc::now().date_naive()),
    };
    writer.run(&state, &group_id, command).await
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/sessions/{session_id}/goal-check-ins", request_body = SessionCheckInsRequest,
    params(("group_id" = GroupId, Path), ("session_id" = SessionId, Path)),
    responses((status = 200, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "goals")]
pub async fn session_check_ins(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<(GroupId, SessionId), SessionCheckInsRequest>,
) -> Result<Response, Problem> {
    let (group_id, session_id) = ids;
    let command = GroupCommand::CheckInSession {
        session_id: session_id.to_string(),
        check_ins: body
            .check_ins
            .into_iter()
            .map(|c| GoalLevel {
                client_id: c.client_id.to_string(),
                goal_id: c.goal_id.to_string(),
                level: c.level,
            })
            .collect(),
    };
    writer.run(&state, &group_id, command).await
}

//! Client routes: registration with sealed personal data, consent, erasure,
//! measures outside sessions.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, FixedOffset, Utc};
use circle_events::client::{Client, ClientCommand, ConsentScope, ErasureReason};
use circle_events::group::{DepartureReason, GroupCommand};
use circle_events::ids::{ClientId, GroupId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::extract::{whole_or_none, Caller, Ids, Query};
use super::groups::{parse_items, WriteResponse};
use super::guard::{authorize_client, disclose, TokenChecked};
use super::history::as_of_in_log;
use super::write::{Write, Writer};
use super::{new_id, AppState, Problem};
use crate::commands::CommandContext;
use crate::crypto::PersonalData;
use crate::policy::{Action, View};
use crate::store::{ClientKey, KeyAction};

pub(super) use crate::crypto::MAX_PERSONAL_FIELD;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterClientRequest {
    /// A pseudonymous id; generated when absent. Never a name.
    client_id: Option<ClientId>,
    /// Stored encrypted with the client's own key.
    display_name: Option<String>,
    #[serde(default, deserialize_with = "whole_or_none")]
    birth_year: Option<i32>,
    /// Stored encrypted with the client's own key.
    contact: Option<String>,
}

fn check_personal(request: &RegisterClientRequest) -> Result<PersonalData, Problem> {
    let personal = PersonalData {
        display_name: request.display_name.clone(),
        contact: request.contact.clone(),
        birth_year: request.birth_year,
    };
    personal
        .check()
        .map_err(|(field, reason)| Problem::bad_request(field, reason))?;
    Ok(personal)
}

#[utoipa::path(post, path = "/api/v1/clients", request_body = RegisterClientRequest,
    responses((status = 201, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn register_client(
    State(state): State<AppState>,
    Write { body, writer, .. }: Write<(), RegisterClientRequest>,
) -> Result<Response, Problem> {
    let client_id: ClientId = body.client_id.clone().unwrap_or_else(|| new_id("cli"));
    let personal = check_personal(&body)?;
    let key = state.vault.new_client_key(client_id.as_str());
    let sealed =
        (!personal.is_empty()).then(|| state.vault.seal(&key, client_id.as_str(), &personal));
    let command = ClientCommand::RegisterClient {
        client_id: client_id.to_string(),
        personal: sealed,
    };
    let key_action = KeyAction::Store {
        client_id: client_id.to_string(),
        wrapped_key: key.wrapped.clone(),
    };
    writer
        .with_key(key_action)
        .run(&state, &client_id, command)
        .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    scope: ConsentScope,
    /// `true` grants, `false` withdraws.
    granted: bool,
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/consents", request_body = ConsentRequest,
    params(("client_id" = ClientId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn change_consent(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<ClientId, ConsentRequest>,
) -> Result<Response, Problem> {
    let scope = body.scope;
    let command = if body.granted {
        ClientCommand::GrantConsent { scope }
    } else {
        ClientCommand::WithdrawConsent { scope }
    };
    writer.run(&state, &ids, command).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    reason: ErasureReason,
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/erasure", request_body = ErasureRequest,
    params(("client_id" = ClientId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn erase_client(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<ClientId, ErasureRequest>,
) -> Result<Response, Problem> {
    // The policy's guard has let only admins through, before anything is written.
    let token_read = writer.caller.token_to_check().is_none();
    end_memberships(&state, &writer, ids.as_str()).await?;
    let command = ClientCommand::EraseClient {
        reason: body.reason,
    };
    let key_action = KeyAction::Destroy {
        client_id: ids.to_string(),
    };
    let answer = writer
        .with_key(key_action)
        .run(&state, &ids, command)
        .await?;
    // The key is destroyed in the log's transaction; this makes the key table's files
    // forget its bytes too. Failing that is for the operator, not the caller: the
    // erasure itself has committed. Only for a caller whose token is known live now:
    // a replayed answer to a token known from before waits for the guard's read.
    let token_live = token_read || answer.extensions().get::<TokenChecked>().is_some();
    if !token_live {
        return Ok(answer);
    }
    if let Err(error) = state.store.compact_keys().await {
        tracing::warn!(client_id = %ids, error = %crate::errors::ErrorChain(&error), "the key table was not compacted after an erasure");
    }
    Ok(answer)
}

/// Ends the client's open memberships (reason `other`, under the erasure's
/// correlation id) before the erasure commits: afterwards no command naming the
/// client can commit (see [`crate::store::KeyAction::RequireLive`]), this one included.
async fn end_memberships(
    state: &AppState,
    writer: &Writer,
    client_id: &str,
) -> Result<(), Problem> {
    let today = Utc::now().date_naive();
    let ctx = CommandContext {
        correlation_id: writer.headers.correlation_id,
        check_token: writer.caller.token_to_check(),
        ..CommandContext::new(writer.caller.0.clone())
    };
    for group_id in state.auth.groups_of_client(client_id).await? {
        let group = state.groups.load(&group_id).await?.aggregate;
        let open = group
            .memberships
            .get(client_id)
            .and_then(|periods| periods.last())
            .filter(|period| period.left_on.is_none());
        let (Some(period), None) = (open, group.closed_on) else {
            continue;
        };
        let command = GroupCommand::LeaveGroup {
            client_id: client_id.to_string(),
            left_on: today.max(period.joined_on),
            reason: DepartureReason::Other,
        };
        match state
            .commands
            .execute(&state.groups, &group_id, command, &ctx, |_| true)
            .await
        {
            Ok(_) => {}
            // A rule of the group's refused the departure: the erasure goes ahead, and
            // the erasure check refuses every later write naming the client anyway.
            Err(crate::commands::CommandError::Rejected(rejection)) => {
                tracing::warn!(%group_id, error = %rejection, "an erased client's membership could not be ended")
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordMeasureRequest {
    instrument: String,
    #[schema(value_type = Vec<f64>)]
    items: Vec<Value>,
    administered_at: DateTime<FixedOffset>,
    /// The group whose care this measure belongs to; the client must have been a
    /// member on the day it was administered.
    group_id: Option<GroupId>,
}

/// A measure within a group's care is the group's record (the client must have been
/// a member that day); without a group it is the client's own.
#[utoipa::path(post, path = "/api/v1/clients/{client_id}/measures", request_body = RecordMeasureRequest,
    params(("client_id" = ClientId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn record_measure(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<ClientId, RecordMeasureRequest>,
) -> Result<Response, Problem> {
    let items = parse_items(&body.items)?;
    let Some(group_id) = body.group_id else {
        let command = ClientCommand::RecordMeasure {
            instrument: body.instrument,
            items,
            administered_at: body.administered_at,
        };
        return writer.run(&state, &ids, command).await;
    };
    let command = GroupCommand::RecordFeedback {
        client_id: ids.to_string(),
        session_id: None,
        instrument: body.instrument,
        items,
        administered_at: Some(body.administered_at),
    };
    writer.run(&state, &group_id, command).await
}

#[derive(Serialize, ToSchema)]
pub struct ClientView {
    client_id: String,
    /// True once the client's key is destroyed: personal data is gone for good.
    erased: bool,
    /// The scopes given now: `reporting` from registration until withdrawn
    /// (opt-out), `treatment` and `research` once granted (opt-in); none after
    /// erasure.
    consents: Vec<ConsentScope>,
    /// Decrypted for admins and the client's clinicians; `null` for others and
    /// after erasure.
    personal: Option<PersonalData>,
    measures_recorded: u32,
    version: u64,
    position: i64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    /// RFC 3339: the client as they stood then (their events recorded by that time);
    /// 422 before the log's first event or after now. Personal data is shown only
    /// while the client's key still exists.
    as_of: Option<String>,
}

/// Whether the client is erased, and their personal data decrypted when the
/// caller's view is the full one (admins, their clinicians); `None` otherwise.
/// `client` is the client now, or (`past`) as of an earlier time: then erased means
/// erased by then, though the data shows only while the key still exists.
pub(crate) async fn personal_data(
    state: &AppState,
    client: &Client,
    client_id: &str,
    view: View,
    past: bool,
) -> Result<(bool, Option<PersonalData>), Problem> {
    let key = state.store.client_key(client_id).await?;
    // Now, also a key destroyed without its event.
    let erased = client.erased.is_some() || (!past && key == ClientKey::Destroyed);
    let personal = match (&client.personal, key, view == View::Full) {
        (Some(sealed), ClientKey::Wrapped(wrapped), true) => {
            match state.vault.open(&wrapped, client_id, sealed) {
                Ok(personal) => Some(personal),
                Err(error) => {
                    tracing::error!(%client_id, error = %crate::errors::ErrorChain(&error), "personal data unreadable");
                    None
                }
            }
        }
        _ => None,
    };
    Ok((erased, personal))
}

#[utoipa::path(get, path = "/api/v1/clients/{client_id}", params(("client_id" = ClientId, Path), ClientQuery),
    responses((status = 200, body = ClientView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn get_client(
    State(state): State<AppState>,
    caller: Caller,
    Ids(client_id): Ids<ClientId>,
    Query(query): Query<ClientQuery>,
) -> Result<Response, Problem> {
    let client_id = String::from(client_id);
    let view = authorize_client(&state, &caller, Action::ReadClient, &client_id).await?;
    let as_of = as_of_in_log(&state, query.as_of.as_deref()).await?;
    let cached = match as_of {
        Some(as_of) => {
            let _slot = state.as_of_limit.try_enter()?;
            state.clients.as_of(&client_id, as_of).await?
        }
        None => state.clients.load(&client_id).await?,
    };
    let client: Client = cached.aggregate;
    if !client.exists() {
        return Err(Problem::not_found("client not found"));
    }
    let (erased, personal) =
        personal_data(&state, &client, &client_id, view, as_of.is_some()).await?;
    let disclosed = vec![client_id.clone()];
    let view = Json(ClientView {
        client_id,
        erased,
        consents: client.consents.into_iter().collect(),
        personal,
        measures_recorded: client.measures_recorded,
        version: cached.version,
        position: cached.last_position,
    });
    Ok(disclose(view, disclosed))
}

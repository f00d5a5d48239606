//! Client routes: registration with sealed personal data, consent, erasure,
//! measures outside sessions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Datelike, FixedOffset, Utc};
use circle_events::client::{Client, ClientCommand, ConsentScope, ErasureReason};
use circle_events::group::GroupCommand;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::extract::{Caller, JsonBody, Path, WriteHeaders};
use super::groups::parse_items;
use super::{
    id_or_new, may_write_group, path_id, receipt_response, AppState, Problem, Write, READERS,
    WRITERS,
};
use crate::auth::Role;
use crate::crypto::PersonalData;
use crate::store::{ClientKey, KeyAction};

const MAX_PERSONAL_FIELD: usize = 200;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterClientRequest {
    /// A pseudonymous id; generated when absent. Never a name.
    client_id: Option<String>,
    /// Stored encrypted with the client's own key.
    display_name: Option<String>,
    birth_year: Option<i32>,
    /// Stored encrypted with the client's own key.
    contact: Option<String>,
}

/// Whether a clinician facilitates a group this client is or was a member of
/// (answered by an index kept from the log, see [`crate::care_teams`]).
async fn clinician_knows_client(
    state: &AppState,
    caller: &Caller,
    client_id: &str,
) -> Result<bool, Problem> {
    let Some(clinician) = caller.0.clinician_id.as_ref() else {
        return Ok(false);
    };
    Ok(state
        .auth
        .clinician_knows_client(clinician, client_id)
        .await?)
}

/// Admins always; clinicians for clients in their groups; auditors only to read.
async fn require_client_access(
    state: &AppState,
    caller: &Caller,
    client_id: &str,
    roles: &[Role],
) -> Result<(), Problem> {
    caller.require(roles)?;
    if caller.0.role == Role::Clinician && !clinician_knows_client(state, caller, client_id).await?
    {
        return Err(Problem::forbidden(
            "this client is not a member of a group you facilitate",
        ));
    }
    Ok(())
}

/// A client that exists and is not erased, for writes that name one in a group.
pub(super) async fn require_active_client(
    state: &AppState,
    client_id: &str,
) -> Result<Client, Problem> {
    let client = state.clients.load(client_id).await?.aggregate;
    if !client.exists() {
        return Err(Problem::not_found("client not found"));
    }
    if client.erased.is_some() {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "client_id",
            "this client's data has been erased",
        ));
    }
    Ok(client)
}

async fn execute(
    state: &AppState,
    write: Write<'_>,
    client_id: &str,
    command: ClientCommand,
    name: &'static str,
    success: StatusCode,
    key_action: Option<KeyAction>,
) -> Result<Response, Problem> {
    let ctx = write.context(name, client_id, success, key_action);
    let receipt = state
        .commands
        .execute(&state.clients, client_id, command, &ctx, |_| true)
        .await?;
    Ok(receipt_response(receipt))
}

fn check_personal(request: &RegisterClientRequest) -> Result<PersonalData, Problem> {
    for (field, value) in [
        ("display_name", &request.display_name),
        ("contact", &request.contact),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.trim().is_empty() || v.chars().count() > MAX_PERSONAL_FIELD)
        {
            return Err(Problem::bad_request(
                field,
                format!("must be 1 to {MAX_PERSONAL_FIELD} characters"),
            ));
        }
    }
    let this_year = Utc::now().year();
    if request
        .birth_year
        .is_some_and(|y| !(1900..=this_year).contains(&y))
    {
        return Err(Problem::bad_request(
            "birth_year",
            format!("must be from 1900 to {this_year}"),
        ));
    }
    Ok(PersonalData {
        display_name: request.display_name.clone(),
        contact: request.contact.clone(),
        birth_year: request.birth_year,
    })
}

#[utoipa::path(post, path = "/api/v1/clients", request_body = RegisterClientRequest,
    responses((status = 201, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn register_client(
    State(state): State<AppState>,
    caller: Caller,
    headers: WriteHeaders,
    body: JsonBody<RegisterClientRequest>,
) -> Result<Response, Problem> {
    caller.require(WRITERS)?;
    let request = body.value;
    let client_id = id_or_new("client_id", request.client_id.clone(), "cli")?;
    let personal = check_personal(&request)?;
    let key = state.vault.new_client_key(&client_id);
    let sealed = (!personal.is_empty()).then(|| state.vault.seal(&key, &client_id, &personal));
    let command = ClientCommand::RegisterClient {
        client_id: client_id.clone(),
        personal: sealed,
    };
    let key_action = KeyAction::Store {
        client_id: client_id.clone(),
        wrapped_key: key.wrapped.clone(),
    };
    let write = Write::new(&caller, &headers, &body.request_hash);
    execute(
        &state,
        write,
        &client_id,
        command,
        "register_client",
        StatusCode::CREATED,
        Some(key_action),
    )
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
    params(("client_id" = String, Path)),
    responses((status = 200, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn change_consent(
    State(state): State<AppState>,
    caller: Caller,
    headers: WriteHeaders,
    Path(client_id): Path<String>,
    body: JsonBody<ConsentRequest>,
) -> Result<Response, Problem> {
    path_id("client_id", &client_id)?;
    require_client_access(&state, &caller, &client_id, WRITERS).await?;
    let scope = body.value.scope;
    let (command, name) = if body.value.granted {
        (ClientCommand::GrantConsent { scope }, "grant_consent")
    } else {
        (ClientCommand::WithdrawConsent { scope }, "withdraw_consent")
    };
    let write = Write::new(&caller, &headers, &body.request_hash);
    execute(
        &state,
        write,
        &client_id,
        command,
        name,
        StatusCode::OK,
        None,
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    reason: ErasureReason,
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/erasure", request_body = ErasureRequest,
    params(("client_id" = String, Path)),
    responses((status = 200, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn erase_client(
    State(state): State<AppState>,
    caller: Caller,
    headers: WriteHeaders,
    Path(client_id): Path<String>,
    body: JsonBody<ErasureRequest>,
) -> Result<Response, Problem> {
    caller.require(&[Role::Admin])?;
    path_id("client_id", &client_id)?;
    let command = ClientCommand::EraseClient {
        reason: body.value.reason,
    };
    let key_action = KeyAction::Destroy {
        client_id: client_id.clone(),
    };
    let write = Write::new(&caller, &headers, &body.request_hash);
    execute(
        &state,
        write,
        &client_id,
        command,
        "erase_client",
        StatusCode::OK,
        Some(key_action),
    )
    .await
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
    group_id: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/clients/{client_id}/measures", request_body = RecordMeasureRequest,
    params(("client_id" = String, Path)),
    responses((status = 200, body = super::groups::WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn record_measure(
    State(state): State<AppState>,
    caller: Caller,
    headers: WriteHeaders,
    Path(client_id): Path<String>,
    body: JsonBody<RecordMeasureRequest>,
) -> Result<Response, Problem> {
    path_id("client_id", &client_id)?;
    let request = body.value;
    let items = parse_items(&request.items)?;
    let write = Write::new(&caller, &headers, &body.request_hash);
    let Some(group_id) = request.group_id else {
        require_client_access(&state, &caller, &client_id, WRITERS).await?;
        let command = ClientCommand::RecordMeasure {
            instrument: request.instrument,
            items,
            administered_at: request.administered_at,
        };
        return execute(
            &state,
            write,
            &client_id,
            command,
            "record_measure",
            StatusCode::OK,
            None,
        )
        .await;
    };
    caller.require(WRITERS)?;
    path_id("group_id", &group_id)?;
    require_active_client(&state, &client_id).await?;
    let command = GroupCommand::RecordFeedback {
        client_id: client_id.clone(),
        session_id: None,
        instrument: request.instrument,
        items,
        administered_at: Some(request.administered_at),
    };
    let ctx = write.context("record_measure", &client_id, StatusCode::OK, None);
    let receipt = state
        .commands
        .execute(&state.groups, &group_id, command, &ctx, |group| {
            may_write_group(&caller, group)
        })
        .await?;
    Ok(receipt_response(receipt))
}

#[derive(Serialize, ToSchema)]
pub struct ClientView {
    client_id: String,
    /// True once the client's key is destroyed: personal data is gone for good.
    erased: bool,
    consents: Vec<ConsentScope>,
    /// Decrypted for admins and the client's clinicians; `null` for others and
    /// after erasure.
    personal: Option<PersonalData>,
    measures_recorded: u32,
    version: u64,
    position: i64,
}

#[utoipa::path(get, path = "/api/v1/clients/{client_id}", params(("client_id" = String, Path)),
    responses((status = 200, body = ClientView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "clients")]
pub async fn get_client(
    State(state): State<AppState>,
    caller: Caller,
    Path(client_id): Path<String>,
) -> Result<Json<ClientView>, Problem> {
    path_id("client_id", &client_id)?;
    require_client_access(&state, &caller, &client_id, READERS).await?;
    let cached = state.clients.load(&client_id).await?;
    let client: Client = cached.aggregate;
    if !client.exists() {
        return Err(Problem::not_found("client not found"));
    }
    let sees_personal = matches!(caller.0.role, Role::Admin | Role::Clinician);
    let key = state.store.client_key(&client_id).await?;
    let erased = client.erased.is_some() || key == ClientKey::Destroyed;
    let personal = match (&client.personal, key, sees_personal) {
        (Some(sealed), ClientKey::Wrapped(wrapped), true) => {
            match state.vault.open(&wrapped, &client_id, sealed) {
                Ok(personal) => Some(personal),
                Err(error) => {
                    tracing::error!(%client_id, error = %crate::errors::ErrorChain(&error), "personal data unreadable");
                    None
                }
            }
        }
        _ => None,
    };
    Ok(Json(ClientView {
        client_id,
        erased,
        consents: client.consents.into_iter().collect(),
        personal,
        measures_recorded: client.measures_recorded,
        version: cached.version,
        position: cached.last_position,
    }))
}

//! Token management for admins: list, issue (the secret is answered once) and
//! revoke. The rules are in [`crate::tokens`]; this only speaks HTTP.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, FixedOffset, Utc};
use circle_events::calendar;
use circle_events::ids::{ClinicianId, TokenId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{Caller, Ids, JsonBody};
use super::{AppState, Problem};
use crate::auth::Role;
use crate::store::{EventMetadata, Revocation, StoredToken};
use crate::tokens::{self, Grant, TokenError};

/// A token's record; never its secret.
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    token_id: String,
    role: Role,
    clinician_id: Option<String>,
    label: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TokenView {
    fn of(token: StoredToken) -> Result<TokenView, Problem> {
        let role = Role::parse(&token.role).ok_or_else(|| {
            Problem::from(crate::store::StoreError::Corrupt(format!(
                "token {} has an unknown role",
                token.token_id
            )))
        })?;
        Ok(TokenView {
            token_id: token.token_id,
            role,
            clinician_id: token.clinician_id,
            label: token.label,
            created_at: token.created_at,
            expires_at: token.expires_at,
            revoked_at: token.revoked_at,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    /// Every token, revoked and expired ones too, oldest first.
    tokens: Vec<TokenView>,
}

/// A new token: `token` is the secret, answered this once and stored nowhere.
#[derive(Serialize, ToSchema)]
pub struct IssuedToken {
    token: String,
    #[serde(flatten)]
    record: TokenView,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    role: Role,
    /// Required for clinicians (the id groups list among their facilitators), and
    /// refused for every other role.
    clinician_id: Option<ClinicianId>,
    /// What or whom the token is for.
    label: Option<String>,
    /// When the token stops working; without it, it works until revoked.
    expires_at: Option<DateTime<FixedOffset>>,
}

/// The admin as the actor of the token's event, under the request's correlation id.
fn actor(caller: &Caller, headers: &HeaderMap) -> EventMetadata {
    let mut by = EventMetadata::system(&caller.0.actor_id, caller.0.role.as_str());
    if let Some(id) = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v.trim()).ok())
    {
        by.correlation_id = id;
    }
    by
}

fn refusal(error: TokenError) -> Problem {
    match (error.field(), error) {
        (_, TokenError::Store(e)) => Problem::from(e),
        // Rules between fields, or against the clock: what no schema can state.
        (Some(field), e @ (TokenError::ClinicianIdMismatch | TokenError::AlreadyExpired)) => {
            Problem::field(StatusCode::UNPROCESSABLE_ENTITY, field, e.to_string())
        }
        (field, e) => Problem::bad_request(field.unwrap_or("body"), e.to_string()),
    }
}

#[utoipa::path(get, path = "/api/v1/tokens",
    responses((status = 200, body = TokenList), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "tokens")]
pub async fn list_tokens(State(state): State<AppState>) -> Result<Json<TokenList>, Problem> {
    let tokens = state
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(TokenView::of)
        .collect::<Result<_, _>>()?;
    Ok(Json(TokenList { tokens }))
}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = IssuedToken), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "tokens")]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<CreateTokenRequest>,
) -> Result<Response, Problem> {
    if let Some(at) = &body.expires_at {
        calendar::check_time(at).map_err(|reason| Problem::bad_request("expires_at", reason))?;
    }
    if body.label.as_ref().is_some_and(|l| l.trim().is_empty()) {
        return Err(Problem::bad_request("label", "must not be blank"));
    }
    let grant = Grant {
        expires_at: body.expires_at.map(|at| at.with_timezone(&Utc)),
        ..Grant::new(
            body.role,
            body.clinician_id.map(String::from),
            body.label.unwrap_or_default(),
        )
    };
    let (token, record) = tokens::issue(&state.store, &grant, actor(&caller, &headers))
        .await
        .map_err(refusal)?;
    let issued = IssuedToken {
        token,
        record: TokenView::of(record)?,
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// Revokes a token: from the commit on, no instance accepts it. Revoking a revoked
/// token answers its record again and writes nothing.
#[utoipa::path(post, path = "/api/v1/tokens/{token_id}/revocation",
    params(("token_id" = TokenId, Path)),
    responses((status = 200, body = TokenView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "tokens")]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Ids(token_id): Ids<TokenId>,
) -> Result<Json<TokenView>, Problem> {
    match tokens::revoke(&state.store, token_id.as_str(), actor(&caller, &headers))
        .await
        .map_err(refusal)?
    {
        Revocation::Revoked(token) | Revocation::AlreadyRevoked(token) => {
            Ok(Json(TokenView::of(token)?))
        }
        Revocation::Unknown => Err(Problem::not_found("no token has this id")),
    }
}

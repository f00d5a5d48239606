//! The write skeleton: every write route is parse, build a command, [`Writer::run`].
//!
//! [`Write`] extracts, in this order and once: the caller (401), the write headers
//! (`Idempotency-Key`, `If-Match`, `X-Correlation-Id`), the typed ids of the path
//! ([`Ids`]) and the JSON body, each refusal naming its field. A handler turns the
//! body into a command and hands it to [`Writer::run`], which takes everything else
//! from the command and the aggregate it is for ([`Writable`]): who may send it, the
//! name used in metrics and logs, the id and status answered (201 for a command that
//! creates), and the idempotency record. A dashboard form or another transport
//! builds a [`Writer`] from its own request and calls the same `run`.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use circle_events::client::{Client, ClientCommand};
use circle_events::group::{Group, GroupCommand};
use circle_events::ids::{ClientId, GroupId};
use circle_events::{Command, Rejection};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::extract::{Caller, Ids, JsonBody, PathIds, WriteHeaders};
use super::guard::{
    allow, authorize_client, authorize_group, client_known, group_facilitated, TokenChecked,
};
use super::{AppState, Problem, Services};
use crate::commands::{CommandContext, IdempotencyRequest, Receipt, Repository};
use crate::policy::{Action, Resource};
use crate::store::KeyAction;

/// A write request over HTTP: the path's typed ids, the JSON body, and the
/// [`Writer`] that runs the command built from them.
pub struct Write<P, B> {
    pub ids: P,
    pub body: B,
    pub writer: Writer,
}

impl<P, B> FromRequest<AppState> for Write<P, B>
where
    P: PathIds + Send,
    B: DeserializeOwned + Send,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Problem> {
        let (mut parts, body) = request.into_parts();
        let caller = Caller::from_request_parts(&mut parts, state).await?;
        let headers = WriteHeaders::from_request_parts(&mut parts, state).await?;
        let Ids(ids) = Ids::<P>::from_request_parts(&mut parts, state).await?;
        let body = JsonBody::<B>::from_request(Request::from_parts(parts, body), state).await?;
        Ok(Write {
            ids,
            body: body.value,
            writer: Writer {
                caller,
                headers,
                request_hash: body.request_hash,
                key_action: None,
            },
        })
    }
}

/// Who writes, with which headers, and the request's hash: everything about a
/// write that is not the command.
pub struct Writer {
    pub caller: Caller,
    pub headers: WriteHeaders,
    /// Method, path and body, hashed; with the caller it identifies a request for
    /// `Idempotency-Key` replays.
    pub request_hash: Vec<u8>,
    key_action: Option<KeyAction>,
}

impl Writer {
    /// A key to store or destroy in the same transaction as the command's events.
    pub fn with_key(mut self, action: KeyAction) -> Writer {
        self.key_action = Some(action);
        self
    }

    /// A writer for a request that arrived by another way than the JSON API (a
    /// dashboard form): the same checks and records follow.
    pub fn new(caller: Caller, headers: WriteHeaders, request_hash: Vec<u8>) -> Writer {
        Writer {
            caller,
            headers,
            request_hash,
            key_action: None,
        }
    }

    /// Authorizes, decides and appends `command` on the aggregate `id` names, and
    /// answers `{id, version, position}` with the command's own status.
    pub async fn run<I: AggregateId>(
        self,
        state: &AppState,
        id: &I,
        command: <I::Aggregate as cqrs_es::Aggregate>::Command,
    ) -> Result<Response, Problem> {
        let receipt = self.execute(state, id, command).await?;
        let status = StatusCode::from_u16(receipt.status).unwrap_or(StatusCode::OK);
        let mut response = (status, Json(receipt.body)).into_response();
        if receipt.token_checked {
            response.extensions_mut().insert(TokenChecked);
        }
        Ok(response)
    }

    /// [`Writer::run`], answering the receipt itself.
    pub async fn execute<I: AggregateId>(
        self,
        state: &AppState,
        id: &I,
        command: <I::Aggregate as cqrs_es::Aggregate>::Command,
    ) -> Result<Receipt, Problem> {
        I::Aggregate::authorize(state, &self.caller, id.as_ref(), &command).await?;
        let mut ctx = self.context();
        let named = I::Aggregate::clients_named(&command);
        if ctx.key_action.is_none() && !named.is_empty() {
            ctx.key_action = Some(KeyAction::RequireLive { client_ids: named });
        }
        let caller = &self.caller;
        let receipt = state
            .commands
            .execute(
                I::Aggregate::repository(state),
                id.as_ref(),
                command,
                &ctx,
                |current| I::Aggregate::may_write(caller, current),
            )
            .await?;
        Ok(receipt)
    }

    fn context(&self) -> CommandContext {
        let principal = self.caller.0.clone();
        // Keys are scoped per caller: the same key from another caller is another
        // key, never a conflict with (or a replay of) someone else's request.
        let idempotency = self.headers.idempotency_key.as_ref().map(|key| {
            let mut hasher = Sha256::new();
            hasher.update(&self.request_hash);
            hasher.update(principal.actor_id.as_bytes());
            IdempotencyRequest {
                key: scoped_key(&principal.actor_id, key),
                request_hash: hasher.finalize().to_vec(),
                found_absent: false,
            }
        });
        CommandContext {
            principal,
            correlation_id: self.headers.correlation_id,
            occurred_at: None,
            idempotency,
            if_match: self.headers.if_match,
            key_action: self.key_action.clone(),
            check_token: self.caller.token_to_check(),
        }
    }
}

/// The stored form of a caller's `Idempotency-Key`: the actor id (`[A-Za-z0-9_-]`,
/// so it cannot hold the separator) and the key.
fn scoped_key(actor_id: &str, key: &str) -> String {
    format!("{actor_id}:{key}")
}

/// The id type that names an aggregate of one kind: a `GroupId` can only be written
/// to as a group.
pub trait AggregateId: AsRef<str> {
    type Aggregate: Writable;
}

impl AggregateId for GroupId {
    type Aggregate = Group;
}

impl AggregateId for ClientId {
    type Aggregate = Client;
}

/// An aggregate the API writes to, with its write policy in one place.
pub trait Writable:
    cqrs_es::Aggregate<Services = (), Command: Command + Clone, Error: Rejection> + Clone
{
    fn repository(services: &Services) -> &Repository<Self>;

    /// Who may send this command, before state is loaded: roles, care teams.
    async fn authorize(
        state: &AppState,
        caller: &Caller,
        id: &str,
        command: &Self::Command,
    ) -> Result<(), Problem>;

    /// Whether the caller may act on the aggregate as it stands.
    fn may_write(caller: &Caller, current: &Self) -> bool;

    /// Other aggregates' clients the command writes about: it commits only while none
    /// of them is erased (a client's own stream refuses by itself).
    fn clients_named(_: &Self::Command) -> Vec<String> {
        Vec::new()
    }
}

impl Writable for Group {
    fn repository(services: &Services) -> &Repository<Group> {
        &services.groups
    }

    /// By the policy: a clinician creates only groups they facilitate, writes only
    /// to those, and brings in only clients in their care or registered by them.
    /// Only once allowed: a client the command brings in must be registered and not
    /// erased (joining names it in the body, 422; a measure or a goal is about it, 404).
    async fn authorize(
        state: &AppState,
        caller: &Caller,
        id: &str,
        command: &GroupCommand,
    ) -> Result<(), Problem> {
        match command {
            GroupCommand::CreateGroup { facilitators, .. } => {
                allow(
                    caller,
                    Action::CreateGroup,
                    Resource::NewGroup { facilitators },
                )?;
                Ok(())
            }
            GroupCommand::JoinGroup { client_id, .. } => {
                let membership = Resource::Membership {
                    group_facilitated: group_facilitated(state, caller, id).await?,
                    client_known: client_known(state, caller, client_id).await?,
                };
                allow(caller, Action::JoinGroup, membership)?;
                let missing = Problem::field(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "client_id",
                    "no client is registered with this id",
                );
                require_live_client(state, client_id, missing).await
            }
            GroupCommand::RecordFeedback {
                session_id: None,
                client_id,
                ..
            }
            | GroupCommand::SetGoal { client_id, .. } => {
                authorize_group(state, caller, Action::WriteGroup, id).await?;
                authorize_client(state, caller, Action::WriteClient, client_id).await?;
                require_live_client(state, client_id, Problem::not_found("client not found")).await
            }
            _ => authorize_group(state, caller, Action::WriteGroup, id)
                .await
                .map(drop),
        }
    }

    /// Checked again under the aggregate's lock, from the group as it stands. A group
    /// that does not exist is let through so the aggregate can answer 404 (or create
    /// it): who may name it was decided by `authorize`.
    fn may_write(caller: &Caller, group: &Group) -> bool {
        let facilitated = caller
            .0
            .clinician_id
            .as_ref()
            .is_some_and(|id| group.facilitators.contains(id));
        !group.exists()
            || allow(caller, Action::WriteGroup, Resource::Group { facilitated }).is_ok()
    }

    fn clients_named(command: &GroupCommand) -> Vec<String> {
        command
            .clients_named()
            .into_iter()
            .map(String::from)
            .collect()
    }
}

impl Writable for Client {
    fn repository(services: &Services) -> &Repository<Client> {
        &services.clients
    }

    /// By the policy: erasure is an admin's; registering any writer's; everything
    /// else needs the client in the caller's care.
    async fn authorize(
        state: &AppState,
        caller: &Caller,
        id: &str,
        command: &ClientCommand,
    ) -> Result<(), Problem> {
        let action = match command {
            ClientCommand::EraseClient { .. } => Action::EraseClient,
            ClientCommand::RegisterClient { .. } => {
                return allow(caller, Action::RegisterClient, Resource::Practice).map(drop)
            }
            _ => Action::WriteClient,
        };
        authorize_client(state, caller, action, id).await.map(drop)
    }

    fn may_write(_: &Caller, _: &Client) -> bool {
        true
    }
}

/// Refuses a client that is not registered (with `missing`) or whose data is erased.
async fn require_live_client(
    state: &AppState,
    client_id: &str,
    missing: Problem,
) -> Result<(), Problem> {
    let client = state.clients.load(client_id).await?.aggregate;
    if !client.exists() {
        return Err(missing);
    }
    if client.erased.is_some() {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "client_id",
            "this client's data has been erased",
        ));
    }
    Ok(())
}

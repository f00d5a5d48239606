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
use super::{AppState, Problem, Services};
use crate::auth::Role;
use crate::commands::{CommandContext, IdempotencyRequest, Repository};
use crate::store::KeyAction;

pub(super) const WRITERS: &[Role] = &[Role::Admin, Role::Clinician];

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

    /// Authorizes, decides and appends `command` on the aggregate `id` names, and
    /// answers `{id, version, position}` with the command's own status.
    pub async fn run<I: AggregateId>(
        self,
        state: &AppState,
        id: &I,
        command: <I::Aggregate as cqrs_es::Aggregate>::Command,
    ) -> Result<Response, Problem> {
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
        let status = StatusCode::from_u16(receipt.status).unwrap_or(StatusCode::OK);
        Ok((status, Json(receipt.body)).into_response())
    }

    fn context(&self) -> CommandContext {
        let principal = self.caller.0.clone();
        // The same key from another caller is another request.
        let idempotency = self.headers.idempotency_key.clone().map(|key| {
            let mut hasher = Sha256::new();
            hasher.update(&self.request_hash);
            hasher.update(principal.actor_id.as_bytes());
            IdempotencyRequest {
                key,
                request_hash: hasher.finalize().to_vec(),
            }
        });
        CommandContext {
            principal,
            correlation_id: self.headers.correlation_id,
            occurred_at: None,
            idempotency,
            if_match: self.headers.if_match,
            key_action: self.key_action.clone(),
        }
    }
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

    /// Writers only; a clinician creates only groups they facilitate. A client the
    /// command brings in must be registered and not erased: joining names it in the
    /// body (422), a measure or a goal is about it (404).
    async fn authorize(
        state: &AppState,
        caller: &Caller,
        _: &str,
        command: &GroupCommand,
    ) -> Result<(), Problem> {
        caller.require(WRITERS)?;
        match command {
            GroupCommand::CreateGroup { facilitators, .. } => {
                let lists_self = || {
                    facilitators
                        .iter()
                        .any(|f| Some(f) == caller.0.clinician_id.as_ref())
                };
                if caller.0.role == Role::Clinician && !lists_self() {
                    return Err(Problem::field(
                        StatusCode::FORBIDDEN,
                        "facilitators",
                        "a clinician may only create groups they facilitate",
                    ));
                }
                Ok(())
            }
            GroupCommand::JoinGroup { client_id, .. } => {
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
                require_live_client(state, client_id, Problem::not_found("client not found")).await
            }
            _ => Ok(()),
        }
    }

    /// Admins always, clinicians when they facilitate it. A group that does not
    /// exist is let through so the aggregate can answer 404 (or create it).
    fn may_write(caller: &Caller, group: &Group) -> bool {
        match caller.0.role {
            Role::Admin => true,
            Role::Clinician => {
                !group.exists()
                    || caller
                        .0
                        .clinician_id
                        .as_ref()
                        .is_some_and(|id| group.facilitators.contains(id))
            }
            Role::Auditor | Role::Reporter => false,
        }
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

    /// Erasure is for admins; any writer may register a new client; everything else
    /// needs access to the client (admins, or clinicians of the client's groups).
    async fn authorize(
        state: &AppState,
        caller: &Caller,
        id: &str,
        command: &ClientCommand,
    ) -> Result<(), Problem> {
        match command {
            ClientCommand::EraseClient { .. } => caller.require(&[Role::Admin]),
            ClientCommand::RegisterClient { .. } => caller.require(WRITERS),
            _ => super::clients::require_client_access(state, caller, id, WRITERS).await,
        }
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

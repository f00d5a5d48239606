//! The HTTP API (`/api/v1`, described by the generated OpenAPI at `/api/v1/openapi.json`), health, readiness and metrics.
//!
//! Handlers are thin: a write parses its request into typed ids and a body, builds a
//! command and runs it through the one write skeleton ([`write`]); a read asks the
//! access policy ([`crate::policy`], through [`guard`]) and answers a view. Every
//! refusal is a [`Problem`].

mod access;
mod audit;
pub(crate) mod clients;
mod exact;
mod exports;
pub(crate) mod extract;
mod fhir;
mod goals;
pub(crate) mod groups;
pub(crate) mod guard;
pub(crate) mod history;
pub mod openapi;
mod problem;
mod reports;
mod tokens;
pub(crate) mod write;

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use circle_events::client::Client;
use circle_events::group::Group;
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use problem::{FieldError, Problem};

use crate::auth::Authenticator;
use crate::commands::{CommandService, Repository};
use crate::crypto::Vault;
use crate::errors::ErrorChain;
use crate::metrics::Metrics;
use crate::projector::{LiveReports, ProjectionSettings};
use crate::store::Store;
use crate::supervisor::Health;

/// How reports are served.
#[derive(Clone, Debug)]
pub struct Reporting {
    /// The settings the reports are folded under: the alert rules and the reporter
    /// form's k (a value computed from fewer people is `null`); their digest names
    /// the snapshots an `as_of` fold may start from.
    pub projection: ProjectionSettings,
    /// Longest wait for `min_position`.
    pub read_wait_max: std::time::Duration,
}

pub struct Services {
    pub store: Store,
    pub reports: Arc<LiveReports>,
    pub reporting: Reporting,
    pub commands: CommandService,
    pub groups: Repository<Group>,
    pub clients: Repository<Client>,
    pub auth: Authenticator,
    pub access_log: crate::access_log::AccessLog,
    pub vault: Vault,
    pub metrics: Metrics,
    pub health: Health,
    pub limits: Limits,
    pub as_of_limit: crate::slots::Slots,
    /// Exports streaming at once: each may hold a copy of the practice while it
    /// streams (a snapshot the projector must copy around if it moves on).
    pub export_limit: crate::slots::Slots,
    /// The checkpoint verifier key (signed-note form), when checkpoints are signed.
    pub audit_key: Option<String>,
    /// FHIR Bulk Data export jobs of this instance.
    pub fhir_jobs: crate::fhir::Jobs,
    /// Cancelled when the process begins to shut down: long-lived answers (the
    /// dashboard's event streams) end on it so that HTTP can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Bounds on the API: requests at once and the time each may take.
pub struct Limits {
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    timeout: Duration,
}

impl Limits {
    pub fn new(max_in_flight: usize, timeout: Duration) -> Limits {
        Limits {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            timeout,
        }
    }
}

#[derive(Clone)]
pub struct AppState(pub Arc<Services>);

impl Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

pub fn router(state: AppState, body_limit: usize) -> Router {
    let api = Router::new()
        .route(
            "/groups",
            post(groups::create_group).get(groups::list_groups),
        )
        .route("/groups/{group_id}", get(groups::get_group))
        .route("/groups/{group_id}/history", get(history::group_history))
        .route(
            "/groups/{group_id}/facilitators",
            post(groups::assign_facilitator),
        )
        .route("/groups/{group_id}/members", post(groups::join_group))
        .route(
            "/groups/{group_id}/members/{client_id}/departure",
            post(groups::leave_group),
        )
        .route(
            "/groups/{group_id}/sessions",
            post(groups::schedule_session),
        )
        .route(
            "/groups/{group_id}/sessions/{session_id}/cancellation",
            post(groups::cancel_session),
        )
        .route(
            "/groups/{group_id}/sessions/{session_id}/attendance",
            post(groups::record_attendance),
        )
        .route(
            "/groups/{group_id}/sessions/{session_id}/feedback",
            post(groups::record_feedback),
        )
        .route(
            "/groups/{group_id}/sessions/{session_id}/goal-check-ins",
            post(goals::session_check_ins),
        )
        .route("/groups/{group_id}/closure", post(groups::close_group))
        .route("/clients", post(clients::register_client))
        .route("/clients/{client_id}", get(clients::get_client))
        .route("/clients/{client_id}/history", get(history::client_history))
        .route(
            "/clients/{client_id}/consents",
            post(clients::change_consent),
        )
        .route("/clients/{client_id}/erasure", post(clients::erase_client))
        .route(
            "/clients/{client_id}/measures",
            post(clients::record_measure),
        )
        .route("/clients/{client_id}/goals", post(goals::set_goal))
        .route(
            "/clients/{client_id}/goals/{goal_id}/check-ins",
            post(goals::check_in),
        )
        .route(
            "/clients/{client_id}/goals/{goal_id}/closure",
            post(goals::close_goal),
        )
        .route("/reports/attendance", get(reports::attendance))
        .route("/reports/retention", get(reports::retention))
        .route("/reports/outcomes", get(reports::outcomes))
        .route("/reports/goals", get(reports::goals))
        .route("/alerts", get(reports::alerts))
        .route("/exports/outcomes.csv", get(exports::outcomes_csv))
        .route("/exports/outcomes.ndjson", get(exports::outcomes_ndjson))
        .route("/exports/attendance.csv", get(exports::attendance_csv))
        .route(
            "/exports/attendance.ndjson",
            get(exports::attendance_ndjson),
        )
        .route("/exports/retention.csv", get(exports::retention_csv))
        .route("/exports/retention.ndjson", get(exports::retention_ndjson))
        .route("/exports/alerts.csv", get(exports::alerts_csv))
        .route("/exports/alerts.ndjson", get(exports::alerts_ndjson))
        .route("/fhir/Group/{group_id}/$export", get(fhir::kick_off))
        .route(
            "/fhir/jobs/{job_id}",
            get(fhir::status).delete(fhir::delete),
        )
        .route("/fhir/jobs/{job_id}/files/{resource_type}", get(fhir::file))
        .route("/audit/events", get(audit::events))
        .route("/audit/checkpoint", get(audit::checkpoint))
        .route("/audit/key", get(audit::key))
        .route("/audit/proof/inclusion", get(audit::inclusion))
        .route("/audit/proof/consistency", get(audit::consistency))
        .route("/audit/verify", get(audit::verify))
        .route(
            "/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/tokens/{token_id}/revocation", post(tokens::revoke_token))
        .route("/audit/access", get(access::access_log))
        .route("/openapi.json", get(openapi::serve))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(middleware::from_fn_with_state(state.clone(), limit));
    Router::new()
        .nest("/api/v1", api)
        // The root opens on the dashboard (which asks for a sign-in when needed).
        .route("/", get(|| async { axum::response::Redirect::to("/app") }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::router(state.clone()))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

const CORRELATION_ID: &str = "x-correlation-id";

/// Runs every request in a span (method, route template, correlation id, status),
/// counts and times it by route template, never by concrete path, and answers the
/// correlation id back. A request without one gets a fresh one, which its events carry.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = crate::metrics::method_label(request.method().as_str());
    let given = request
        .headers()
        .get(CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v.trim()).ok());
    let correlation_id = given.unwrap_or_else(uuid::Uuid::new_v4);
    let header =
        HeaderValue::from_str(&correlation_id.to_string()).expect("a UUID is a header value");
    if !request.headers().contains_key(CORRELATION_ID) {
        request.headers_mut().insert(CORRELATION_ID, header.clone());
    }
    let span = tracing::info_span!(
        "request",
        method,
        route = %route,
        correlation_id = %correlation_id,
        status = tracing::field::Empty,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    response.headers_mut().insert(CORRELATION_ID, header);
    state
        .metrics
        .observe_http(&route, method, status, started.elapsed());
    response
}

/// Bounds the API: beyond `max_concurrent_requests` at once, or past
/// `request_timeout_ms`, the answer is 503 with `Retry-After`, never a queue that grows.
pub(crate) async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limits = &state.limits;
    let Ok(_permit) = limits.in_flight.clone().try_acquire_owned() else {
        tracing::warn!(
            limit = limits.max_in_flight,
            "overloaded: refusing a request"
        );
        return Problem::overloaded(limits.max_in_flight).into_response();
    };
    match tokio::time::timeout(limits.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                timeout_ms = limits.timeout.as_millis() as u64,
                "request timed out"
            );
            Problem::timed_out(limits.timeout).into_response()
        }
    }
}

/// Readiness must answer fast even when the database does not.
const READY_CHECK: Duration = Duration::from_secs(1);

/// Any path no route matches, under `/api/v1` too.
async fn no_route() -> Problem {
    Problem::not_found("no resource at this path")
}

/// A known path with a method it does not take; the router adds `Allow`.
async fn method_not_allowed(method: Method) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed here; the Allow header lists what is"),
    )
}

/// Ready when the store answers within a second, its last commit did not fail for
/// want of disk, and every required task runs.
async fn readyz(State(state): State<AppState>) -> Response {
    let down = state.health.down();
    if !down.is_empty() {
        tracing::warn!(tasks = ?down, "not ready: required tasks are down");
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {} not running", down.join(", ")),
        )
        .retry_after(1)
        .into_response();
    }
    if state.commands.disk_full() {
        tracing::warn!("not ready: the event store's disk is full");
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the event store's disk is full; writes fail until space is freed",
        )
        .retry_after(5)
        .into_response();
    }
    match tokio::time::timeout(READY_CHECK, state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(error)) => {
            tracing::warn!(error = %ErrorChain(&error), "not ready");
            Problem::unavailable().into_response()
        }
        Err(_) => {
            tracing::warn!("not ready: the event store did not answer within a second");
            Problem::unavailable().into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// A fresh id for a record the caller did not name: `{prefix}_` and a UUID's hex.
fn new_id<I: TryFrom<String>>(prefix: &str) -> I {
    match I::try_from(format!("{prefix}_{}", uuid::Uuid::new_v4().simple())) {
        Ok(id) => id,
        Err(_) => unreachable!("a prefix and hex digits make a valid id"),
    }
}

//! The OpenAPI 3 description, generated from the handlers and types themselves.

use axum::Json;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    access, audit, clients, exact, exports, fhir, goals, groups, history, reports, tokens,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Circle",
        version = "1",
        description = "Attendance and outcomes for group therapy practices. Every write \
            answers {id, version, position}; every refusal is application/problem+json."
    ),
    paths(
        groups::create_group,
        groups::list_groups,
        groups::get_group,
        history::group_history,
        groups::assign_facilitator,
        groups::join_group,
        groups::leave_group,
        groups::schedule_session,
        groups::cancel_session,
        groups::record_attendance,
        groups::record_feedback,
        groups::close_group,
        clients::register_client,
        clients::get_client,
        history::client_history,
        clients::change_consent,
        clients::erase_client,
        clients::record_measure,
        goals::set_goal,
        goals::check_in,
        goals::close_goal,
        goals::session_check_ins,
        reports::attendance,
        reports::retention,
        reports::outcomes,
        reports::goals,
        reports::alerts,
        exports::outcomes_csv,
        exports::outcomes_ndjson,
        exports::attendance_csv,
        exports::attendance_ndjson,
        exports::retention_csv,
        exports::retention_ndjson,
        exports::alerts_csv,
        exports::alerts_ndjson,
        fhir::kick_off,
        fhir::status,
        fhir::delete,
        fhir::file,
        tokens::list_tokens,
        tokens::create_token,
        tokens::revoke_token,
        access::access_log,
        audit::events,
        audit::checkpoint,
        audit::key,
        audit::inclusion,
        audit::consistency,
        audit::verify,
    ),
    components(schemas(circle_events::ids::TokenId)),
    modifiers(&BearerAuth),
    tags(
        (name = "groups", description = "Groups, members, sessions, attendance, feedback"),
        (name = "clients", description = "Clients, consent, erasure, measures"),
        (name = "goals", description = "Members' goals (Goal Attainment Scaling) and check-ins"),
        (name = "reports", description = "Attendance, retention, outcomes, goals, alerts; live or as_of"),
        (name = "exports", description = "The reports' rows for reporting teams as CSV (RFC 4180) \
            or NDJSON, streamed; the reporter form and consent apply"),
        (name = "fhir", description = "FHIR R4 Bulk Data export of a group: kick-off with \
            Prefer: respond-async, status, NDJSON files"),
        (name = "tokens", description = "API tokens: issue, list, revoke (admins)"),
        (name = "audit", description = "The log with its hash chain, signed checkpoints and RFC 9162 \
            proofs (hex), and the access log: who saw or was refused whose data (auditors and admins)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Served without a token: it describes the API and holds no data.
pub async fn serve() -> Json<Value> {
    Json(description())
}

/// The description as served: what utoipa generates from the handlers, made exact
/// where Rust types cannot say it (see [`exact`]).
pub fn description() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    exact::constrain(&mut doc);
    doc
}

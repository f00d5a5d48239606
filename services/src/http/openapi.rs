//! The OpenAPI 3 description, generated from the handlers and types themselves.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, clients, groups, reports};

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
        clients::change_consent,
        clients::erase_client,
        clients::record_measure,
        reports::attendance,
        reports::retention,
        reports::outcomes,
        reports::alerts,
        audit::events,
        audit::checkpoint,
        audit::key,
        audit::inclusion,
        audit::consistency,
        audit::verify,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "groups", description = "Groups, members, sessions, attendance, feedback"),
        (name = "clients", description = "Clients, consent, erasure, measures"),
        (name = "reports", description = "Attendance, retention, outcomes, alerts; live or as_of"),
        (name = "audit", description = "The log with its hash chain, signed checkpoints, RFC 9162 \
            proofs (hex); auditors and admins only"),
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
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

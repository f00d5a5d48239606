//! `GET /api/v1/exports/{outcomes,attendance,retention,alerts}.{csv,ndjson}`: the
//! reports' rows for reporting teams, streamed (see [`crate::exports`]).
//!
//! The form is the report's, by the policy ([`Action::ReadReport`], also for alerts:
//! their reporter form is counts by kind): full, with member rows, or the reporter
//! form. `purpose=research` holds only clients who granted research consent; the
//! reporter form leaves out clients who withdrew reporting consent. How many were
//! left out is in the `Circle-Left-Out` header (and the NDJSON header line). Every
//! export is recorded in the access log with the clients its rows name.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use circle_events::ids::GroupId;
use circle_projections::exports::{self, ExportKind, ExportRequest, Purpose, Scope};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{parse_time, Caller, Query};
use super::guard::disclose;
use super::reports::{form_for, not_found, parse_focus, snapshot_at, Form};
use super::{AppState, Problem};
use crate::exports::{encode, Encoding};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// One group; leave out (with `focus` or alone) for several.
    group_id: Option<GroupId>,
    /// All groups of one focus.
    focus: Option<String>,
    /// RFC 3339: the rows as the log stood at this time.
    as_of: Option<String>,
    /// `research`: only clients who granted research consent.
    purpose: Option<String>,
    /// Wait (bounded) until the live projection has applied this log position.
    min_position: Option<i64>,
}

/// The response headers an export answers with, beside its content type.
pub const LEFT_OUT: &str = "circle-left-out";
pub const POSITION: &str = "circle-position";
pub const FORM: &str = "circle-export-form";

async fn export(
    state: AppState,
    caller: Caller,
    query: ExportQuery,
    kind: ExportKind,
    encoding: Encoding,
) -> Result<Response, Problem> {
    let as_of = query
        .as_of
        .as_deref()
        .map(|t| parse_time("as_of", t))
        .transpose()?;
    let purpose = match query.purpose.as_deref() {
        None => Purpose::Operations,
        Some("research") => Purpose::Research,
        Some(_) => {
            return Err(Problem::bad_request(
                "purpose",
                "must be research or left out",
            ))
        }
    };
    let scope = match (query.group_id.as_ref(), query.focus.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "focus",
                "give group_id or focus, not both",
            ))
        }
        (Some(group_id), None) => Scope::Group(group_id.as_str().to_string()),
        (None, Some(focus)) => Scope::Focus(parse_focus(focus)?),
        (None, None) => Scope::Practice,
    };
    let group_id = match &scope {
        Scope::Group(id) => Some(id.as_str()),
        _ => None,
    };
    let form = match form_for(&state, &caller, group_id).await? {
        Form::Full => exports::Form::Full,
        Form::Reporter => exports::Form::Reporter,
    };
    let snapshot = snapshot_at(&state, as_of, query.min_position).await?;
    // Held until the body ends: a slow reader's snapshot counts against the bound.
    let export_slot = state.export_limit.try_enter()?;
    let request = ExportRequest {
        kind,
        form,
        purpose,
        scope,
        as_of: snapshot.as_of,
        k: state.reporting.projection.reporter_min_count,
    };
    let practice = snapshot.practice;
    // The first pass walks every row in scope: off the runtime's threads.
    let export = tokio::task::spawn_blocking(move || exports::export(practice, &request))
        .await
        .map_err(|error| {
            tracing::error!(error = %error, "computing an export");
            Problem::unavailable()
        })?
        .ok_or_else(|| not_found("group"))?;
    let disclosed = export.client_ids.clone();
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(encoding.content_type()),
        ),
        (
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&format!(
                "attachment; filename=\"{}.{}\"",
                kind.name(),
                encoding.extension()
            ))
            .unwrap_or(HeaderValue::from_static("attachment")),
        ),
        (
            HeaderName::from_static(LEFT_OUT),
            number(export.left_out as i64),
        ),
        (HeaderName::from_static(POSITION), number(export.position)),
        (
            HeaderName::from_static(FORM),
            HeaderValue::from_static(match form {
                exports::Form::Full => "full",
                exports::Form::Reporter => "reporter",
            }),
        ),
    ];
    let slots = (snapshot.slot, export_slot);
    let body = Body::from_stream(futures_util::StreamExt::map(
        encode(export, encoding),
        move |chunk| {
            let _held_until_the_body_ends = &slots;
            Ok::<_, std::convert::Infallible>(chunk)
        },
    ));
    // Every export is recorded, the clients its rows name with it (none in the
    // reporter form).
    Ok(disclose((headers, body).into_response(), disclosed))
}

fn number(n: i64) -> HeaderValue {
    HeaderValue::from(n)
}

macro_rules! handler {
    ($(#[$attr:meta])* $name:ident, $kind:expr, $encoding:expr) => {
        $(#[$attr])*
        pub async fn $name(
            State(state): State<AppState>,
            caller: Caller,
            Query(query): Query<ExportQuery>,
        ) -> Result<Response, Problem> {
            export(state, caller, query, $kind, $encoding).await
        }
    };
}

// Each route's columns are added to its description by `exact.rs`, from
// `exports::columns`.
handler!(
    #[utoipa::path(get, path = "/api/v1/exports/outcomes.csv", params(ExportQuery),
        responses((status = 200, description = "Outcomes as CSV", content_type = "text/csv",
            headers(("Circle-Left-Out" = u32, description = "Clients consent kept out of the rows"),
                    ("Circle-Position" = i64, description = "The log position the rows reflect"),
                    ("Circle-Export-Form" = String, description = "full or reporter"))),
                  (status = "4XX", body = Problem, content_type = "application/problem+json")),
        security(("bearer" = [])), tag = "exports")]
    outcomes_csv,
    ExportKind::Outcomes,
    Encoding::Csv
);
handler!(
    #[utoipa::path(get, path = "/api/v1/exports/outcomes.ndjson", params(ExportQuery),
        responses((status = 200, description = "Outcomes as NDJSON", content_type = "application/x-ndjson",
            headers(("Circle-Left-Out" = u32, description = "Clients consent kept out of the rows"),
                    ("Circle-Position" = i64, description = "The log position the rows reflect"),
                    ("Circle-Export-Form" = String, description = "full or reporter"))),
                  (status = "4XX", body = Problem, content_type = "application/problem+json")),
        security(("bearer" = [])), tag = "exports")]
    outcomes_ndjson,
    ExportKind::Outcomes,
    Encoding::Ndjson
);
handler!(
    #[utoipa::path(get, path = "/api/v1/exports/attendance.csv", params(ExportQuery),
        responses((status = 200, description = "Attendance as CSV", content_type = "text/csv",
            headers(("Circle-Left-Out" = u32, description = "Clients consent kept out of the rows"),
                    ("Circle-Position" = i64, description = "The log position the rows reflect"),
                    ("Circle-Export-Form" = String, description = "full or reporter"))),
                  (status = "4XX", body = Problem, content_type = "application/problem+json")),
        security(("bearer" = [])), tag = "exports")]
    attendance_csv,
    ExportKind::Attendance,
    Encoding::Csv
);
handler!(
    #[utoipa::path(get, path = "/api/v1/exports/attendance.ndjson", params(ExportQuery),
        responses((status = 200, description = "Attendance as NDJSON", content_type = "application/x-ndjson",
            headers(("Circle-Left-Out" = u32, description = "Clients consent kept out of the rows"),
                    ("Circle-Position" = i64, description = "The log position the rows reflect"),
                    ("Circle-Export-Form" = String, description = "full or reporter"))),
                  (status = "4XX", body = Problem, content_type = "application/problem+json")),
        security(("bearer" = [])), tag = "exports")]
    attendance_ndjson,
    ExportKind::Attendance,
    Encoding::Ndjson
);
handler!(
    #[utoipa::path(get, path = "/api/v1/exports/retention.csv", params(ExportQuery),
        responses((status = 200, description = "Retention as CSV", content_type = "text/csv",
            headers(("Circle-Left-Out" = u32, description = "Clients consent kept out of the rows"),
                    ("Circle-Position" = i64, description = "The log position the rows reflect"),
                    ("Circle-Export-Form" = String, description = "full or reporter"))),
                  (status = "4XX", body = Problem, content_type = "application/problem+json")),
        security(("bearer" = [])), tag = "exports")]
    retention_csv,
    ExportKind::Retention,
    Encoding::Csv
);
handler!(
    #[utoipa::path(get, path = "/api/v1/exports/retention.ndjson", params(ExportQuery),
        responses((status = 200, description = "Retention as NDJSON", content_type = "application/x-ndjson",
            headers(("Circle-Left-Out" = u32, description = "Clients consent kept out of the rows"),
                    ("Circle-Position" = i64, description = "The log position the rows reflect"),
                    ("Circle-Export-Form" = String, description = "full or reporter"))),
                  (status = "4XX", body = Problem, content_type = "application/problem+json")),
        security(("bearer" = [])), tag = "exports")]
    retention_ndjson,
    ExportKind::Retention,
    Encoding::Ndjson
);
handler!(
    #[utoipa::path(get, path = "/api/v1/exports/alerts.csv", params(ExportQuery),
        responses((status = 200, description = "Alerts as CSV", content_type = "text/csv",
            headers(("Circle-Left-Out" = u32, description = "Clients consent kept out of the rows"),
                    ("Circle-Position" = i64, description = "The log position the rows reflect"),
                    ("Circle-Export-Form" = String, description = "full or reporter"))),
                  (status = "4XX", body = Problem, content_type = "application/problem+json")),
        security(("bearer" = [])), tag = "exports")]
    alerts_csv,
    ExportKind::Alerts,
    Encoding::Csv
);
handler!(
    #[utoipa::path(get, path = "/api/v1/exports/alerts.ndjson", params(ExportQuery),
        responses((status = 200, description = "Alerts as NDJSON", content_type = "application/x-ndjson",
            headers(("Circle-Left-Out" = u32, description = "Clients consent kept out of the rows"),
                    ("Circle-Position" = i64, description = "The log position the rows reflect"),
                    ("Circle-Export-Form" = String, description = "full or reporter"))),
                  (status = "4XX", body = Problem, content_type = "application/problem+json")),
        security(("bearer" = [])), tag = "exports")]
    alerts_ndjson,
    ExportKind::Alerts,
    Encoding::Ndjson
);

/// Every export route: `(path under /api/v1, kind, encoding)`, for the router, the
/// policy's table test and the description.
pub const ROUTES: [(&str, ExportKind, Encoding); 8] = [
    ("/exports/outcomes.csv", ExportKind::Outcomes, Encoding::Csv),
    (
        "/exports/outcomes.ndjson",
        ExportKind::Outcomes,
        Encoding::Ndjson,
    ),
    (
        "/exports/attendance.csv",
        ExportKind::Attendance,
        Encoding::Csv,
    ),
    (
        "/exports/attendance.ndjson",
        ExportKind::Attendance,
        Encoding::Ndjson,
    ),
    (
        "/exports/retention.csv",
        ExportKind::Retention,
        Encoding::Csv,
    ),
    (
        "/exports/retention.ndjson",
        ExportKind::Retention,
        Encoding::Ndjson,
    ),
    ("/exports/alerts.csv", ExportKind::Alerts, Encoding::Csv),
    (
        "/exports/alerts.ndjson",
        ExportKind::Alerts,
        Encoding::Ndjson,
    ),
];

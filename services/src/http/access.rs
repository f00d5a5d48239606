//! `GET /api/v1/audit/access`: the access log, for auditors and admins — who saw,
//! or was refused, whose data, when, and for which stated purpose. Each call is
//! itself recorded (the guard), with the clients its page names.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use circle_events::ids::{ClientId, ClinicianId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::extract::{parse_time, Query};
use super::guard::{client_ids_in, disclose};
use super::{AppState, Problem};
use crate::store::access::AccessFilter;

/// Entries per page when the caller does not say.
const DEFAULT_LIMIT: i64 = 100;
/// The most entries one page answers.
pub(super) const MAX_LIMIT: i64 = 1000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccessQuery {
    /// Entries that disclosed this client's data ("who saw this person").
    client_id: Option<ClientId>,
    /// Entries by this actor: a clinician id, `<role>-<token fingerprint>`, or
    /// `anonymous` for requests without a valid token.
    actor_id: Option<ClinicianId>,
    /// RFC 3339: entries recorded at or after this time.
    from: Option<String>,
    /// RFC 3339: entries recorded before this time.
    to: Option<String>,
    /// Entries after this `seq`: the previous page's `next_after`.
    after: Option<i64>,
    /// Entries per page: 1 to 1000, default 100.
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AccessPage {
    /// Entries in chain order, each with its `seq` and `hash` (hex): FHIR
    /// AuditEvent's `recorded`, `type`, `action`, `outcome`, `agent`, `entity`,
    /// `purpose_of_event`, and the route, status and correlation id.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<Value>,
    /// Pass as `after` for the next page; `null` on the last page.
    next_after: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit/access", params(AccessQuery),
    responses((status = 200, body = AccessPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "audit")]
pub async fn access_log(
    State(state): State<AppState>,
    Query(query): Query<AccessQuery>,
) -> Result<Response, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(
            "limit",
            format!("must be from 1 to {MAX_LIMIT}"),
        ));
    }
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(Problem::bad_request("after", "must be 0 or more"));
    }
    let filter = AccessFilter {
        client_id: query.client_id.map(String::from),
        actor_id: query.actor_id.map(String::from),
        from: query
            .from
            .as_deref()
            .map(|t| parse_time("from", t))
            .transpose()?,
        to: query
            .to
            .as_deref()
            .map(|t| parse_time("to", t))
            .transpose()?,
        after,
        limit,
    };
    let rows = state.store.read_access(&filter).await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let entries: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            let mut entry = serde_json::from_str(&row.entry).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut entry {
                let hash: String = row.hash.iter().map(|b| format!("{b:02x}")).collect();
                map.insert("seq".into(), Value::from(row.seq));
                map.insert("hash".into(), Value::String(hash));
            }
            entry
        })
        .collect();
    let page = AccessPage {
        entries,
        next_after,
    };
    let disclosed = page
        .entries
        .iter()
        .flat_map(|e| client_ids_in(&e["entity"]))
        .collect();
    Ok(disclose(Json(page), disclosed))
}

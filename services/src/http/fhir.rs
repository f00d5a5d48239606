//! FHIR R4 Bulk Data export of a group (the async pattern of the Bulk Data Access
//! IG): `GET /api/v1/fhir/Group/{group_id}/$export` with `Prefer: respond-async`
//! answers 202 with `Content-Location`, the job's status URL; the status answers 202
//! while it runs, then 200 with the manifest listing one NDJSON file per resource
//! type, each served under the same authorization to the caller who asked.
//!
//! Who may export a group is who may read it ([`Action::ReadGroup`]). Patients carry
//! their opaque id only; a name only for a clinician of the group who asks for it
//! with `_elements` (`name` or `Patient.name`). Jobs: [`crate::fhir::Jobs`].

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use circle_events::client::Client;
use circle_events::ids::GroupId;
use circle_projections::fhir::resources::ResourceType;
use circle_projections::fhir::ExportOptions;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{parse_time, Caller, Ids, Query};
use super::guard::{authorize_group, disclose};
use super::{AppState, Problem};
use crate::auth::Role;
use crate::fhir::{export_group, JobState};
use crate::policy::{Action, View};
use crate::store::ClientKey;

pub const NDJSON: &str = "application/fhir+ndjson";
/// The output formats `_outputFormat` accepts (the Bulk Data IG's names for NDJSON).
pub const OUTPUT_FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];
/// `_type`: resource types separated by commas.
pub fn type_pattern() -> String {
    let names: Vec<&str> = ResourceType::ALL.iter().map(|t| t.name()).collect();
    let one = format!("({})", names.join("|"));
    format!("^{one}(,{one})*$")
}
/// `_elements`: element names (optionally `Type.element`) separated by commas.
pub const ELEMENTS_PATTERN: &str = "^[A-Za-z]+(\\.[A-Za-z]+)?(,[A-Za-z]+(\\.[A-Za-z]+)?)*$";

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Resource types to export, separated by commas; all when left out.
    #[serde(rename = "_type")]
    types: Option<String>,
    /// FHIR instant: only resources changed after it.
    #[serde(rename = "_since")]
    since: Option<String>,
    /// Elements asked for; `name` (or `Patient.name`) adds members' names for a
    /// clinician of the group, and is otherwise ignored.
    #[serde(rename = "_elements")]
    elements: Option<String>,
    /// NDJSON only: `application/fhir+ndjson` (the default), `application/ndjson`
    /// or `ndjson`.
    #[serde(rename = "_outputFormat")]
    output_format: Option<String>,
}

fn parse_types(text: &str) -> Result<std::collections::BTreeSet<ResourceType>, Problem> {
    text.split(',')
        .map(|name| {
            ResourceType::parse(name.trim()).ok_or_else(|| {
                Problem::bad_request(
                    "_type",
                    format!("{name} is not a resource type Circle exports"),
                )
            })
        })
        .collect()
}

/// Whether `_elements` asks for the Patient's name.
fn asks_for_names(elements: &str) -> Result<bool, Problem> {
    let mut names = false;
    for element in elements.split(',') {
        let valid = !element.is_empty()
            && element.split('.').count() <= 2
            && element
                .split('.')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphabetic()));
        if !valid {
            return Err(Problem::bad_request(
                "_elements",
                "must be element names, optionally Type.element, separated by commas",
            ));
        }
        names |= element == "name" || element == "Patient.name";
    }
    Ok(names)
}

/// The scheme and host the caller reached us at, for absolute URLs.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

#[utoipa::path(get, path = "/api/v1/fhir/Group/{group_id}/$export", params(("group_id" = GroupId, Path), ExportQuery,
        ("Prefer" = String, Header, description = "Must be `respond-async`: the export runs as a job")),
    responses((status = 202, description = "Kicked off: the job's status URL is in Content-Location",
               headers(("Content-Location" = String, description = "The job's status URL"))),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "fhir")]
pub async fn kick_off(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Ids(group_id): Ids<GroupId>,
    Query(query): Query<ExportQuery>,
) -> Result<Response, Problem> {
    let group_id = String::from(group_id);
    let view = authorize_group(&state, &caller, Action::ReadGroup, &group_id).await?;
    let prefer = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !prefer.split(',').any(|p| p.trim() == "respond-async") {
        return Err(Problem::bad_request(
            "Prefer",
            "must be respond-async: a bulk export runs as a job",
        ));
    }
    let types = query
        .types
        .as_deref()
        .map(parse_types)
        .transpose()?
        .unwrap_or_default();
    let since = query
        .since
        .as_deref()
        .map(|t| parse_time("_since", t))
        .transpose()?;
    if let Some(format) = query.output_format.as_deref() {
        if !OUTPUT_FORMATS.contains(&format) {
            return Err(Problem::bad_request(
                "_outputFormat",
                "must be application/fhir+ndjson, application/ndjson or ndjson",
            ));
        }
    }
    let wants_names = query
        .elements
        .as_deref()
        .map(asks_for_names)
        .transpose()?
        .unwrap_or(false);
    // Names only to a clinician of the group (the policy's full view) who asked.
    let names_allowed = wants_names && caller.0.role == Role::Clinician && view == View::Full;
    let group = state.groups.load(&group_id).await?;
    if !group.aggregate.exists() {
        return Err(Problem::not_found("no group with that id"));
    }
    let base = base_url(&headers);
    // The manifest's `request`: the kick-off's full URL, parameters included.
    let query_text = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let request = format!("{base}/api/v1/fhir/Group/{group_id}/$export{query_text}");
    let job = state
        .fhir_jobs
        .start(&caller.0.actor_id, &group_id, request)
        .map_err(|e| {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).retry_after(30)
        })?;
    let task_state = state.clone();
    tokio::spawn(async move {
        let state = task_state;
        let mut options = ExportOptions {
            types,
            since,
            names: Default::default(),
        };
        let transaction_time = Utc::now();
        let outcome = async {
            if names_allowed {
                options.names = member_names(&state, &group_id).await?;
            }
            export_group(&state.store, &group_id, &options)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let finished = match outcome {
            Ok(Some((files, client_ids))) => JobState::Done {
                transaction_time,
                files,
                client_ids,
            },
            Ok(None) => JobState::Failed("the group has no events".into()),
            Err(error) => {
                tracing::error!(%group_id, error, "a FHIR export failed");
                JobState::Failed(error)
            }
        };
        state.fhir_jobs.finish(job, finished);
    });
    let status_url = format!("{base}/api/v1/fhir/jobs/{job}");
    let location = HeaderValue::from_str(&status_url)
        .map_err(|_| Problem::bad_request("Host", "is not a valid host"))?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LOCATION, location)]).into_response())
}

/// Each member's display name, decrypted (only for a clinician of the group).
async fn member_names(
    state: &AppState,
    group_id: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let group = state
        .groups
        .load(group_id)
        .await
        .map_err(|e| e.to_string())?;
    let mut names = std::collections::BTreeMap::new();
    for client_id in group.aggregate.memberships.keys() {
        let client: Client = state
            .clients
            .load(client_id)
            .await
            .map_err(|e| e.to_string())?
            .aggregate;
        let key = state
            .store
            .client_key(client_id)
            .await
            .map_err(|e| e.to_string())?;
        if let (Some(sealed), ClientKey::Wrapped(wrapped)) = (&client.personal, key) {
            if let Ok(personal) = state.vault.open(&wrapped, client_id, sealed) {
                if let Some(name) = personal.display_name {
                    names.insert(client_id.clone(), name);
                }
            }
        }
    }
    Ok(names)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// The job's id, from the kick-off's Content-Location.
    job_id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FilePath {
    /// The job's id, from the kick-off's Content-Location.
    job_id: String,
    /// One of the manifest's files: its resource type.
    resource_type: String,
}

/// The caller's own job, authorized again against its group (a facilitator
/// removed since loses it). A job that does not exist, expired, or is another
/// caller's is 404 to those who may read every group, else 403, as for groups.
async fn own_job(
    state: &AppState,
    caller: &Caller,
    job_id: &str,
) -> Result<(uuid::Uuid, crate::fhir::Job), Problem> {
    let missing = || match caller.0.role {
        Role::Admin | Role::Auditor => Problem::not_found("no export job with that id"),
        _ => Problem::forbidden("this export job is not one you started"),
    };
    let id = uuid::Uuid::parse_str(job_id)
        .map_err(|_| Problem::bad_request("job_id", "must be a job id (a UUID)"))?;
    let job = state.fhir_jobs.get(id).ok_or_else(missing)?;
    if job.owner != caller.0.actor_id {
        return Err(missing());
    }
    authorize_group(state, caller, Action::ReadGroup, &job.group_id).await?;
    Ok((id, job))
}

/// The Bulk Data manifest.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    transaction_time: String,
    request: String,
    requires_access_token: bool,
    output: Vec<ManifestFile>,
    error: Vec<ManifestFile>,
}

#[derive(Serialize, ToSchema)]
pub struct ManifestFile {
    #[serde(rename = "type")]
    resource_type: String,
    url: String,
    count: usize,
}

#[utoipa::path(get, path = "/api/v1/fhir/jobs/{job_id}", params(JobPath),
    responses((status = 200, body = Manifest, description = "Done: the files, one per resource type"),
              (status = 202, description = "Still running", headers(("X-Progress" = String))),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "fhir")]
pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    axum::extract::Path(path): axum::extract::Path<JobPath>,
) -> Result<Response, Problem> {
    let (id, job) = own_job(&state, &caller, &path.job_id).await?;
    match job.state {
        JobState::Running => Ok((
            StatusCode::ACCEPTED,
            [("x-progress", "running"), ("retry-after", "1")],
        )
            .into_response()),
        JobState::Failed(_) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the export failed; kick it off again",
        )
        .retry_after(5)),
        JobState::Done {
            transaction_time,
            files,
            ..
        } => {
            let base = base_url(&headers);
            let output = files
                .iter()
                .map(|file| ManifestFile {
                    resource_type: file.resource_type.name().to_string(),
                    url: format!(
                        "{base}/api/v1/fhir/jobs/{id}/files/{}",
                        file.resource_type.name()
                    ),
                    count: file.count,
                })
                .collect();
            Ok(Json(Manifest {
                transaction_time: instant(transaction_time),
                request: job.request,
                requires_access_token: true,
                output,
                error: Vec::new(),
            })
            .into_response())
        }
    }
}

fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[utoipa::path(delete, path = "/api/v1/fhir/jobs/{job_id}", params(JobPath),
    responses((status = 202, description = "The job and its files are gone"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "fhir")]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(path): axum::extract::Path<JobPath>,
) -> Result<Response, Problem> {
    let (id, _) = own_job(&state, &caller, &path.job_id).await?;
    // A running job finishes into nothing: `finish` finds no entry.
    state.fhir_jobs.remove(id);
    Ok(StatusCode::ACCEPTED.into_response())
}

#[utoipa::path(get, path = "/api/v1/fhir/jobs/{job_id}/files/{resource_type}", params(FilePath),
    responses((status = 200, description = "The resources of one type, one per line", content_type = "application/fhir+ndjson"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "fhir")]
pub async fn file(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(path): axum::extract::Path<FilePath>,
) -> Result<Response, Problem> {
    let (_, job) = own_job(&state, &caller, &path.job_id).await?;
    let resource_type = ResourceType::parse(&path.resource_type).ok_or_else(|| {
        Problem::bad_request("resource_type", "is not a resource type Circle exports")
    })?;
    let JobState::Done {
        files, client_ids, ..
    } = job.state
    else {
        return Err(Problem::not_found("the export has no files (yet)"));
    };
    let file = files
        .into_iter()
        .find(|f| f.resource_type == resource_type)
        .ok_or_else(|| Problem::not_found("the export has no file of that type"))?;
    let body = ([(header::CONTENT_TYPE, NDJSON)], Body::from(file.ndjson));
    // Every file names the group's members.
    Ok(disclose(body, client_ids))
}

//! Report routes: attendance, retention, outcomes, goals and alerts, live or `as_of` a past
//! time, with `min_position` for read-your-writes.
//!
//! Live reports come from the projection kept by [`crate::projector`]; `as_of`
//! reports fold the log up to that time (from a snapshot of an earlier fold when
//! one exists, see [`crate::as_of`]), so they are computed from history, not from
//! anything that could have been changed since.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use circle_events::group::{Focus, Sensitivity};
use circle_events::ids::GroupId;
use circle_projections::consent::{self, sensitivity_in, SENSITIVITY_HEADER};
use circle_projections::practice::{Alert, Practice};
use circle_projections::reports::{self, ReporterForm, RetentionScope};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;
use utoipa::{IntoParams, ToSchema};

use super::extract::{parse_time, Caller, Query};
use super::guard::{allow, authorize_group, client_ids_in, disclose};
use super::{AppState, Problem};
use crate::as_of;
use crate::policy::{Action, Resource, View};
use crate::projector::ProjectionError;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// The group to report on (for retention, leave out for the whole practice).
    group_id: Option<GroupId>,
    /// Retention only: all groups of one focus.
    focus: Option<String>,
    /// Outcomes only: `PHQ-9`, `GAD-7`, `ORS`, `SRS` or `GSRS`.
    instrument: Option<String>,
    /// RFC 3339: the report as the log stood at this time.
    as_of: Option<String>,
    /// Wait (bounded) until the live projection has applied this log position.
    min_position: Option<i64>,
}

/// Which view of a report the caller gets.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Form {
    Full,
    Reporter,
}

impl ReportQuery {
    fn as_of(&self) -> Result<Option<DateTime<Utc>>, Problem> {
        self.as_of
            .as_deref()
            .map(|t| parse_time("as_of", t))
            .transpose()
    }

    fn group_id(&self) -> Result<Option<&str>, Problem> {
        Ok(self.group_id.as_ref().map(GroupId::as_str))
    }

    fn required_group(&self) -> Result<&str, Problem> {
        self.group_id()?
            .ok_or_else(|| Problem::bad_request("group_id", "is required"))
    }
}

/// The caller's form, by the policy: the full report, or the aggregate form
/// (reporters; clinicians for scopes wider than one group of theirs).
pub(super) async fn form_for(
    state: &AppState,
    caller: &Caller,
    group_id: Option<&str>,
) -> Result<Form, Problem> {
    let view = match group_id {
        Some(group_id) => authorize_group(state, caller, Action::ReadReport, group_id).await?,
        None => allow(caller, Action::ReadReport, Resource::Practice)?,
    };
    Ok(match view {
        View::Full | View::Withheld => Form::Full,
        View::Aggregate => Form::Reporter,
    })
}

/// Runs `report` on the practice the query asks for: live (after waiting for
/// `min_position`) or folded from the log up to `as_of`.
async fn with_practice<T>(
    state: &AppState,
    query: &ReportQuery,
    report: impl FnOnce(&Practice, DateTime<Utc>) -> T,
) -> Result<T, Problem> {
    with_practice_at(state, query.as_of()?, query.min_position, report).await
}

/// [`with_practice`] for a time and position already parsed.
pub(super) async fn with_practice_at<T>(
    state: &AppState,
    as_of: Option<DateTime<Utc>>,
    min_position: Option<i64>,
    report: impl FnOnce(&Practice, DateTime<Utc>) -> T,
) -> Result<T, Problem> {
    if as_of.is_some() {
        let snapshot = snapshot_at(state, as_of, min_position).await?;
        return Ok(report(&snapshot.practice, snapshot.as_of));
    }
    // Live reads run under the read lock rather than on a snapshot, so a report
    // never makes the projector copy the practice.
    wait_for_position(state, min_position).await?;
    Ok(state.reports.read(|practice| report(practice, Utc::now())))
}

/// The practice [`with_practice_at`] reads, as a snapshot that stays put while an
/// export streams its rows from it (see [`crate::projector::LiveReports`]).
pub(super) struct PracticeSnapshot {
    pub practice: Arc<Practice>,
    /// The time the snapshot stands at.
    pub as_of: DateTime<Utc>,
    /// For an `as_of` snapshot, its fold slot: whoever streams from the snapshot
    /// holds it until the stream ends, so a slow reader's folded state still counts
    /// against `as_of_max_concurrent`.
    pub slot: Option<OwnedSemaphorePermit>,
}

pub(super) async fn snapshot_at(
    state: &AppState,
    as_of: Option<DateTime<Utc>>,
    min_position: Option<i64>,
) -> Result<PracticeSnapshot, Problem> {
    if let Some(as_of) = as_of {
        // A fold costs memory and seconds: a bounded number at once, the rest 503.
        let slot = Some(state.as_of_limit.try_enter()?);
        if let Some(position) = live_position_as_of(state, as_of).await? {
            let live = state.reports.snapshot();
            // Unless the live state moved on since it was checked.
            if live.position == position {
                return Ok(PracticeSnapshot {
                    practice: live,
                    as_of,
                    slot,
                });
            }
        }
        let practice = Arc::new(fold_to(state, as_of).await?);
        return Ok(PracticeSnapshot {
            practice,
            as_of,
            slot,
        });
    }
    wait_for_position(state, min_position).await?;
    Ok(PracticeSnapshot {
        practice: state.reports.snapshot(),
        as_of: Utc::now(),
        slot: None,
    })
}

fn as_of_unavailable(error: ProjectionError) -> Problem {
    tracing::error!(error = %crate::errors::ErrorChain(&error), "folding the log for an as_of report");
    Problem::unavailable()
}

/// The live state's position if it is the log as of `as_of`.
async fn live_position_as_of(
    state: &AppState,
    as_of: DateTime<Utc>,
) -> Result<Option<i64>, Problem> {
    as_of::live_position_as_of(&state.reports, &state.store, as_of)
        .await
        .map_err(as_of_unavailable)
}

/// The practice folded from the log up to `as_of`.
async fn fold_to(state: &AppState, as_of: DateTime<Utc>) -> Result<Practice, Problem> {
    as_of::practice_as_of(&state.store, &state.reporting.projection, as_of)
        .await
        .map_err(as_of_unavailable)
}

/// Waits (bounded) until the live state has applied `min_position`.
async fn wait_for_position(state: &AppState, min_position: Option<i64>) -> Result<(), Problem> {
    let Some(position) = min_position else {
        return Ok(());
    };
    if position < 0 {
        return Err(Problem::bad_request("min_position", "must be 0 or more"));
    }
    // A position the log has not reached is no write of the caller's: waiting
    // cannot help, so it is refused rather than answered 503.
    if state.reports.position() < position {
        let head = state.store.head_position().await?;
        if position > head {
            return Err(Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "min_position",
                format!("is beyond the log's last position, {head}"),
            ));
        }
    }
    let wait = state.reporting.read_wait_max;
    if !state.reports.caught_up(position, wait).await {
        return Err(Problem::field(
            StatusCode::SERVICE_UNAVAILABLE,
            "min_position",
            format!(
                "reports have reached position {} of {position}; try again shortly",
                state.reports.position()
            ),
        )
        .retry_after(1));
    }
    Ok(())
}

/// A report on one group, in the caller's form; `None` from `report` is a 404.
async fn group_report<T: Serialize + ReporterForm>(
    state: &AppState,
    caller: &Caller,
    query: &ReportQuery,
    group_id: &str,
    report: impl FnOnce(&Practice, DateTime<Utc>) -> Option<T>,
) -> Result<Response, Problem> {
    let form = form_for(state, caller, Some(group_id)).await?;
    let scope = RetentionScope::Group(group_id.to_string());
    let report = in_form(state, query, form, &scope, report)
        .await?
        .ok_or_else(|| not_found("group"))?;
    Ok(respond(&report, form))
}

/// Runs `report` in the caller's form. The reporter form leaves out the clients
/// whose latest reporting decision, as of now, is a withdrawal (also in an `as_of`
/// report: a withdrawal applies to every report made after it).
async fn in_form<T: ReporterForm>(
    state: &AppState,
    query: &ReportQuery,
    form: Form,
    scope: &RetentionScope,
    report: impl FnOnce(&Practice, DateTime<Utc>) -> Option<T>,
) -> Result<Option<T>, Problem> {
    match form {
        Form::Full => with_practice(state, query, report).await,
        Form::Reporter => {
            let k = state.reporting.projection.reporter_min_count;
            // A live report reads the decisions from the practice it reports on (it
            // has waited for `min_position`); an `as_of` fold, from the live one.
            let live = query
                .as_of
                .is_some()
                .then(|| state.reports.read(consent::withdrawn_from_reporting));
            with_practice(state, query, |p, as_of| {
                let withdrawn = live.unwrap_or_else(|| consent::withdrawn_from_reporting(p));
                consent::reporter_form(p, &withdrawn, scope, k, |p| report(p, as_of))
            })
            .await
        }
    }
}

/// A report as answered: the full form's member rows are client-level data,
/// recorded in the access log as disclosed; a report with a `sensitivity` says it
/// in `Circle-Sensitivity` too.
fn respond<T: Serialize>(report: &T, form: Form) -> Response {
    // The body as the report serializes (field order kept); the ids and the label
    // from its value, so the header cannot differ from the field.
    let encoded = serde_json::to_value(report).and_then(|v| Ok((serde_json::to_vec(report)?, v)));
    match encoded {
        Ok((body, value)) => {
            let json = ("content-type", "application/json");
            let label = sensitivity_in(&value).map(|s| (SENSITIVITY_HEADER, s.as_str()));
            let response = (
                AppendHeaders([Some(json), label].into_iter().flatten()),
                body,
            );
            match form {
                Form::Full => disclose(response, client_ids_in(&value)),
                Form::Reporter => response.into_response(),
            }
        }
        Err(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the report could not be encoded",
        )
        .into_response(),
    }
}

pub(super) fn not_found(what: &str) -> Problem {
    Problem::not_found(format!("no {what} with that id"))
}

#[utoipa::path(get, path = "/api/v1/reports/attendance", params(ReportQuery),
    responses((status = 200, description = "Attendance by session and by member"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "reports")]
pub async fn attendance(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ReportQuery>,
) -> Result<Response, Problem> {
    let group_id = query.required_group()?.to_string();
    group_report(&state, &caller, &query, &group_id, |p, as_of| {
        reports::attendance(p, &group_id, as_of)
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/reports/retention", params(ReportQuery),
    responses((status = 200, description = "Counts by exit reason and Kaplan–Meier retention"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "reports")]
pub async fn retention(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ReportQuery>,
) -> Result<Response, Problem> {
    let scope = match (query.group_id()?, query.focus.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "focus",
                "give group_id or focus, not both",
            ))
        }
        (Some(group_id), None) => RetentionScope::Group(group_id.to_string()),
        (None, Some(focus)) => RetentionScope::Focus(parse_focus(focus)?),
        (None, None) => RetentionScope::Practice,
    };
    let group_id = match &scope {
        RetentionScope::Group(id) => Some(id.as_str()),
        _ => None,
    };
    let form = form_for(&state, &caller, group_id).await?;
    if let RetentionScope::Group(id) = &scope {
        if !state.reports.read(|p| p.groups.contains_key(id)) && query.as_of.is_none() {
            return Err(not_found("group"));
        }
    }
    let report = in_form(&state, &query, form, &scope, |p, as_of| {
        Some(reports::retention(p, &scope, as_of))
    })
    .await?
    .ok_or_else(|| not_found("group"))?;
    Ok(respond(&report, form))
}

pub(super) fn parse_focus(text: &str) -> Result<Focus, Problem> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
        Problem::bad_request(
            "focus",
            "must be one of anxiety, depression, grief, trauma, relationships, addiction_recovery, personal_growth",
        )
    })
}

#[utoipa::path(get, path = "/api/v1/reports/outcomes", params(ReportQuery),
    responses((status = 200, description = "Per-member change and classification, group summary"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "reports")]
pub async fn outcomes(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ReportQuery>,
) -> Result<Response, Problem> {
    let group_id = query.required_group()?.to_string();
    let instrument = query
        .instrument
        .clone()
        .ok_or_else(|| Problem::bad_request("instrument", "is required"))?;
    if circle_events::instruments::Catalogue::builtin()
        .current(&instrument)
        .is_none()
    {
        return Err(Problem::bad_request(
            "instrument",
            "is not in the instrument catalogue",
        ));
    }
    group_report(&state, &caller, &query, &group_id, |p, as_of| {
        reports::outcomes(p, &group_id, &instrument, as_of)
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/reports/goals", params(ReportQuery),
    responses((status = 200, description = "Per member: baseline and latest GAS T-score, change, check-in rate, stalled goals; per group: mean T, share at T >= 50, check-in rate"),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "reports")]
pub async fn goals(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ReportQuery>,
) -> Result<Response, Problem> {
    let group_id = query.required_group()?.to_string();
    group_report(&state, &caller, &query, &group_id, |p, as_of| {
        circle_projections::goals::goals(p, &group_id, as_of)
    })
    .await
}

#[derive(Serialize, ToSchema)]
pub struct AlertView {
    kind: String,
    group_id: String,
    client_id: String,
    raised_at: DateTime<Utc>,
    position: i64,
    detail: String,
    /// `part2` when the alert's group is under 42 CFR Part 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    sensitivity: Option<Sensitivity>,
}

impl AlertView {
    fn of(alert: &Alert, practice: &Practice) -> AlertView {
        AlertView {
            kind: serde_json::to_value(alert.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            group_id: alert.group_id.clone(),
            client_id: alert.client_id.clone(),
            raised_at: alert.raised_at,
            position: alert.position,
            detail: alert.detail.clone(),
            sensitivity: reports::group_sensitivity(practice, &alert.group_id),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/alerts", params(ReportQuery),
    responses((status = 200, body = Vec<AlertView>),
              (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "reports")]
pub async fn alerts(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ReportQuery>,
) -> Result<Response, Problem> {
    // Alerts name members: the policy never allows them in an aggregate form.
    let group_id = query.group_id()?.map(String::from);
    match group_id.as_deref() {
        Some(group) => authorize_group(&state, &caller, Action::ReadAlerts, group).await?,
        None => allow(&caller, Action::ReadAlerts, Resource::Practice)?,
    };
    let scope = group_id
        .clone()
        .map_or(RetentionScope::Practice, RetentionScope::Group);
    let (views, label): (Vec<AlertView>, _) = with_practice(&state, &query, |p, _| {
        let views = reports::alerts(p, group_id.as_deref())
            .into_iter()
            .map(|alert| AlertView::of(alert, p))
            .collect();
        (views, consent::sensitivity(p, &scope))
    })
    .await?;
    let disclosed = views.iter().map(|v| v.client_id.clone()).collect();
    let label = label.map(|s| (SENSITIVITY_HEADER, s.as_str()));
    Ok(disclose((AppendHeaders(label), Json(views)), disclosed))
}

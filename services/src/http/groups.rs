//! Group routes: the group itself, its members, sessions, attendance and feedback.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, FixedOffset, NaiveDate};
use circle_events::group::{
    AttendanceMark, AttendanceStatus, DepartureReason, Focus, Format, Group, GroupCommand,
};
use circle_events::ids::{ClientId, ClinicianId, GroupId, SessionId};
use circle_events::instruments::Score;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::extract::{whole, whole_or_none, Caller, Ids, Query};
use super::guard::{allow, authorize_group, disclose};
use super::history::as_of_in_log;
use super::write::Write;
use super::{new_id, AppState, Problem};
use crate::commands::Cached;
use crate::policy::{Action, Resource};

const DEFAULT_CAPACITY: u32 = 10;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// Generated when absent.
    group_id: Option<GroupId>,
    name: String,
    focus: Focus,
    format: Format,
    /// Defaults to 10.
    #[serde(default, deserialize_with = "whole_or_none")]
    capacity: Option<u32>,
    /// A clinician creating a group must list themselves.
    facilitators: Vec<ClinicianId>,
    starts_on: Option<NaiveDate>,
}

#[derive(Serialize, ToSchema)]
pub struct WriteResponse {
    /// The created resource, or the record written to.
    id: String,
    /// Aggregate version after the write; pass as `If-Match` to guard the next one.
    version: u64,
    /// Global log position of the write's last event; pass as `min_position` to read
    /// your own write from reports.
    position: i64,
}

#[utoipa::path(post, path = "/api/v1/groups", request_body = CreateGroupRequest,
    responses((status = 201, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn create_group(
    State(state): State<AppState>,
    Write { body, writer, .. }: Write<(), CreateGroupRequest>,
) -> Result<Response, Problem> {
    let group_id = body.group_id.unwrap_or_else(|| new_id("grp"));
    let command = GroupCommand::CreateGroup {
        group_id: group_id.to_string(),
        name: body.name,
        focus: body.focus,
        format: body.format,
        capacity: body.capacity.unwrap_or(DEFAULT_CAPACITY),
        facilitators: body.facilitators.into_iter().map(String::from).collect(),
        starts_on: body.starts_on,
    };
    writer.run(&state, &group_id, command).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignFacilitatorRequest {
    clinician_id: ClinicianId,
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/facilitators", request_body = AssignFacilitatorRequest,
    params(("group_id" = GroupId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn assign_facilitator(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<GroupId, AssignFacilitatorRequest>,
) -> Result<Response, Problem> {
    let clinician_id = body.clinician_id.into();
    let command = GroupCommand::AssignFacilitator { clinician_id };
    writer.run(&state, &ids, command).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinGroupRequest {
    client_id: ClientId,
    joined_on: NaiveDate,
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/members", request_body = JoinGroupRequest,
    params(("group_id" = GroupId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn join_group(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<GroupId, JoinGroupRequest>,
) -> Result<Response, Problem> {
    let command = GroupCommand::JoinGroup {
        client_id: body.client_id.into(),
        joined_on: body.joined_on,
    };
    writer.run(&state, &ids, command).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaveGroupRequest {
    left_on: NaiveDate,
    reason: DepartureReason,
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/members/{client_id}/departure", request_body = LeaveGroupRequest,
    params(("group_id" = GroupId, Path), ("client_id" = ClientId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn leave_group(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<(GroupId, ClientId), LeaveGroupRequest>,
) -> Result<Response, Problem> {
    let (group_id, client_id) = ids;
    let command = GroupCommand::LeaveGroup {
        client_id: client_id.into(),
        left_on: body.left_on,
        reason: body.reason,
    };
    writer.run(&state, &group_id, command).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSessionRequest {
    /// Generated when absent.
    session_id: Option<SessionId>,
    /// RFC 3339 with offset; its local date decides who was a member that day.
    starts_at: DateTime<FixedOffset>,
    #[serde(deserialize_with = "whole")]
    duration_minutes: u32,
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/sessions", request_body = ScheduleSessionRequest,
    params(("group_id" = GroupId, Path)),
    responses((status = 201, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn schedule_session(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<GroupId, ScheduleSessionRequest>,
) -> Result<Response, Problem> {
    let session_id = body.session_id.unwrap_or_else(|| new_id("ses"));
    let command = GroupCommand::ScheduleSession {
        session_id: session_id.into(),
        starts_at: body.starts_at,
        duration_minutes: body.duration_minutes,
    };
    writer.run(&state, &ids, command).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelSessionRequest {
    reason: String,
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/sessions/{session_id}/cancellation", request_body = CancelSessionRequest,
    params(("group_id" = GroupId, Path), ("session_id" = SessionId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn cancel_session(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<(GroupId, SessionId), CancelSessionRequest>,
) -> Result<Response, Problem> {
    let (group_id, session_id) = ids;
    let command = GroupCommand::CancelSession {
        session_id: session_id.into(),
        reason: body.reason,
    };
    writer.run(&state, &group_id, command).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttendanceRecord {
    client_id: ClientId,
    status: AttendanceStatus,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordAttendanceRequest {
    /// One mark per member; marking a member again is recorded as a correction.
    records: Vec<AttendanceRecord>,
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/sessions/{session_id}/attendance", request_body = RecordAttendanceRequest,
    params(("group_id" = GroupId, Path), ("session_id" = SessionId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn record_attendance(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<(GroupId, SessionId), RecordAttendanceRequest>,
) -> Result<Response, Problem> {
    let (group_id, session_id) = ids;
    let records = body.records.into_iter().map(|r| AttendanceMark {
        client_id: r.client_id.into(),
        status: r.status,
    });
    let command = GroupCommand::RecordAttendance {
        session_id: session_id.into(),
        records: records.collect(),
    };
    writer.run(&state, &group_id, command).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordFeedbackRequest {
    client_id: ClientId,
    /// `PHQ-9`, `GAD-7`, `ORS`, `SRS` or `GSRS`.
    instrument: String,
    /// Item scores in the instrument's order: integers 0–3 for PHQ-9 and GAD-7,
    /// 0.0–10.0 with at most one decimal for ORS, SRS and GSRS.
    #[schema(value_type = Vec<f64>)]
    items: Vec<Value>,
    /// Defaults to the session's start.
    administered_at: Option<DateTime<FixedOffset>>,
}

/// Reads item scores exactly, naming the first bad one.
pub(super) fn parse_items(items: &[Value]) -> Result<Vec<Score>, Problem> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Score::from_json(v)
                .map_err(|e| Problem::bad_request(format!("items[{i}]"), e.to_string()))
        })
        .collect()
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/sessions/{session_id}/feedback", request_body = RecordFeedbackRequest,
    params(("group_id" = GroupId, Path), ("session_id" = SessionId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn record_feedback(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<(GroupId, SessionId), RecordFeedbackRequest>,
) -> Result<Response, Problem> {
    let (group_id, session_id) = ids;
    let command = GroupCommand::RecordFeedback {
        client_id: body.client_id.into(),
        session_id: Some(session_id.into()),
        instrument: body.instrument,
        items: parse_items(&body.items)?,
        administered_at: body.administered_at,
    };
    writer.run(&state, &group_id, command).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseGroupRequest {
    closed_on: NaiveDate,
}

#[utoipa::path(post, path = "/api/v1/groups/{group_id}/closure", request_body = CloseGroupRequest,
    params(("group_id" = GroupId, Path)),
    responses((status = 200, body = WriteResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn close_group(
    State(state): State<AppState>,
    Write { ids, body, writer }: Write<GroupId, CloseGroupRequest>,
) -> Result<Response, Problem> {
    let command = GroupCommand::CloseGroup {
        closed_on: body.closed_on,
    };
    writer.run(&state, &ids, command).await
}

// ---- reads ----

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    client_id: String,
    joined_on: NaiveDate,
    left_on: Option<NaiveDate>,
    reason: Option<DepartureReason>,
}

#[derive(Serialize, ToSchema)]
pub struct AttendanceView {
    client_id: String,
    status: AttendanceStatus,
}

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    session_id: String,
    starts_at: DateTime<FixedOffset>,
    duration_minutes: u32,
    cancelled: bool,
    attendance: Vec<AttendanceView>,
    feedback_recorded: u32,
}

#[derive(Serialize, ToSchema)]
pub struct GroupView {
    group_id: String,
    name: String,
    focus: Focus,
    format: Format,
    capacity: u32,
    facilitators: Vec<String>,
    starts_on: Option<NaiveDate>,
    closed_on: Option<NaiveDate>,
    active_members: usize,
    /// Every membership period, past and present.
    members: Vec<MemberView>,
    /// One page of sessions in the order they start (see `sessions_limit`).
    sessions: Vec<SessionView>,
    /// All sessions of the group, cancelled ones included.
    sessions_total: usize,
    /// Pass as `sessions_after` for the next page; `null` on the last page.
    next_sessions_after: Option<String>,
    version: u64,
    position: i64,
}

#[derive(Serialize, ToSchema)]
pub struct GroupSummary {
    group_id: String,
    name: String,
    focus: Focus,
    format: Format,
    capacity: u32,
    active_members: usize,
    closed_on: Option<NaiveDate>,
}

/// Sessions a group read answers when the caller does not say.
const DEFAULT_SESSIONS_LIMIT: usize = 500;
/// The most sessions one group read answers.
pub(super) const MAX_SESSIONS_LIMIT: usize = 1000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupQuery {
    /// Start the page after this session (the previous page's `next_sessions_after`).
    sessions_after: Option<SessionId>,
    /// Sessions per page: 1 to 1000, default 500.
    sessions_limit: Option<usize>,
    /// RFC 3339: the group as it stood then (its events recorded by that time); 422
    /// before the log's first event or after now.
    as_of: Option<String>,
}

/// Which sessions a read answers: in start order, after a cursor, at most a limit.
struct SessionPage<'a> {
    after: Option<&'a str>,
    limit: usize,
}

impl GroupQuery {
    fn page(&self) -> Result<SessionPage<'_>, Problem> {
        let limit = self.sessions_limit.unwrap_or(DEFAULT_SESSIONS_LIMIT);
        if !(1..=MAX_SESSIONS_LIMIT).contains(&limit) {
            return Err(Problem::bad_request(
                "sessions_limit",
                format!("must be from 1 to {MAX_SESSIONS_LIMIT}"),
            ));
        }
        let after = self.sessions_after.as_ref().map(SessionId::as_str);
        Ok(SessionPage { after, limit })
    }
}

/// Whether the caller may read this group, by the policy.
fn may_read_group(caller: &Caller, group: &Group) -> bool {
    let facilitated = caller
        .0
        .clinician_id
        .as_ref()
        .is_some_and(|id| group.facilitators.contains(id));
    allow(caller, Action::ReadGroup, Resource::Group { facilitated }).is_ok()
}

fn group_view(cached: Cached<Group>, page: &SessionPage) -> Result<GroupView, Problem> {
    let group = cached.aggregate;
    let profile = group
        .profile
        .clone()
        .ok_or_else(|| Problem::not_found("group not found"))?;
    let active_members = group.active_members().count();
    let members = group
        .memberships
        .iter()
        .flat_map(|(client_id, periods)| {
            periods.iter().map(move |p| MemberView {
                client_id: client_id.clone(),
                joined_on: p.joined_on,
                left_on: p.left_on,
                reason: p.reason,
            })
        })
        .collect();
    // Order by start, then id; only the page's sessions are turned into views.
    let mut order: Vec<(&DateTime<FixedOffset>, &String)> = group
        .sessions
        .iter()
        .map(|(session_id, s)| (&s.starts_at, session_id))
        .collect();
    order.sort_unstable();
    let first = match page.after {
        None => 0,
        Some(after) => {
            let (id, session) = group.sessions.get_key_value(after).ok_or_else(|| {
                Problem::field(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "sessions_after",
                    "no session with this id in the group",
                )
            })?;
            order.partition_point(|key| *key <= (&session.starts_at, id))
        }
    };
    let last = first.saturating_add(page.limit).min(order.len());
    let page_order = order.get(first..last).unwrap_or_default();
    let next_sessions_after = page_order
        .last()
        .filter(|_| last < order.len())
        .map(|(_, id)| (*id).clone());
    let sessions = page_order
        .iter()
        .filter_map(|(_, session_id)| {
            let s = group.sessions.get(*session_id)?;
            Some(SessionView {
                session_id: (*session_id).clone(),
                starts_at: s.starts_at,
                duration_minutes: s.duration_minutes,
                cancelled: s.cancelled.is_some(),
                attendance: s
                    .attendance
                    .iter()
                    .map(|(client_id, mark)| AttendanceView {
                        client_id: client_id.clone(),
                        status: mark.status,
                    })
                    .collect(),
                feedback_recorded: s.feedback_recorded,
            })
        })
        .collect();
    Ok(GroupView {
        group_id: profile.group_id,
        name: profile.name,
        focus: profile.focus,
        format: profile.format,
        capacity: profile.capacity,
        sessions_total: group.sessions.len(),
        facilitators: group.facilitators.into_iter().collect(),
        starts_on: profile.starts_on,
        closed_on: group.closed_on,
        active_members,
        members,
        sessions,
        next_sessions_after,
        version: cached.version,
        position: cached.last_position,
    })
}

#[utoipa::path(get, path = "/api/v1/groups/{group_id}", params(("group_id" = GroupId, Path), GroupQuery),
    responses((status = 200, body = GroupView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn get_group(
    State(state): State<AppState>,
    caller: Caller,
    Ids(group_id): Ids<GroupId>,
    Query(query): Query<GroupQuery>,
) -> Result<Response, Problem> {
    authorize_group(&state, &caller, Action::ReadGroup, group_id.as_str()).await?;
    let page = query.page()?;
    let cached = match as_of_in_log(&state, query.as_of.as_deref()).await? {
        Some(as_of) => {
            let _slot = state.as_of_limit.try_enter()?;
            state.groups.as_of(group_id.as_str(), as_of).await?
        }
        None => state.groups.load(group_id.as_str()).await?,
    };
    let view = group_view(cached, &page)?;
    // Members and their attendance are client-level data.
    let disclosed = view.members.iter().map(|m| m.client_id.clone()).collect();
    Ok(disclose(Json(view), disclosed))
}

#[utoipa::path(get, path = "/api/v1/groups",
    responses((status = 200, body = Vec<GroupSummary>), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])), tag = "groups")]
pub async fn list_groups(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<GroupSummary>>, Problem> {
    let mut summaries = Vec::new();
    for group_id in state
        .store
        .aggregate_ids(<Group as cqrs_es::Aggregate>::TYPE)
        .await?
    {
        let cached = state.groups.load(&group_id).await?;
        if !may_read_group(&caller, &cached.aggregate) {
            continue;
        }
        let group = &cached.aggregate;
        if let Some(profile) = &group.profile {
            summaries.push(GroupSummary {
                group_id: profile.group_id.clone(),
                name: profile.name.clone(),
                focus: profile.focus,
                format: profile.format,
                capacity: profile.capacity,
                active_members: group.active_members().count(),
                closed_on: group.closed_on,
            });
        }
    }
    Ok(Json(summaries))
}

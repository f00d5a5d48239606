//! The weekly forms: plain HTML forms that work with JavaScript off, each posting
//! through the same write skeleton as the API ([`Writer::execute`]): the same policy,
//! checks, events and idempotency. A hidden `idempotency_key` (fresh with each form
//! shown) makes a double submit record once. A refusal re-renders the form with the
//! server's message beside the field it names.

use std::collections::BTreeMap;

use axum::body::to_bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Utc};
use circle_events::group::{AttendanceMark, AttendanceStatus, DepartureReason, GroupCommand};
use circle_events::ids::{ClientId, GroupId, SessionId};
use circle_events::instruments::{Catalogue, Score};
use circle_projections::practice::{GroupRecord, SessionRecord};
use maud::{html, Markup};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::layout::{csrf, page, Frame};
use super::pages::{status_label, status_value};
use super::Viewer;
use crate::http::extract::{Ids, WriteHeaders};
use crate::http::guard::authorize_group;
use crate::http::write::Writer;
use crate::http::{AppState, Problem};
use crate::policy::Action;

const IDEMPOTENCY_FIELD: &str = "idempotency_key";
const STATUSES: [AttendanceStatus; 5] = [
    AttendanceStatus::Present,
    AttendanceStatus::Late,
    AttendanceStatus::LeftEarly,
    AttendanceStatus::Excused,
    AttendanceStatus::NoShow,
];
const REASONS: [(DepartureReason, &str); 5] = [
    (DepartureReason::Completed, "completed"),
    (DepartureReason::DroppedOut, "dropped out"),
    (DepartureReason::Transferred, "transferred"),
    (DepartureReason::Discharged, "discharged"),
    (DepartureReason::Other, "other"),
];

/// A posted form: its fields, and the request's hash for idempotency (method, path
/// and fields, without the CSRF token and the idempotency key, as the API hashes a
/// body without its headers).
pub(super) struct FormBody {
    fields: BTreeMap<String, String>,
    hash: Vec<u8>,
}

impl FromRequest<AppState> for FormBody {
    type Rejection = Response;

    async fn from_request(request: Request, _: &AppState) -> Result<Self, Response> {
        let mut hasher = Sha256::new();
        hasher.update(request.method().as_str().as_bytes());
        hasher.update(b" ");
        hasher.update(request.uri().path().as_bytes());
        hasher.update(b"\n");
        // The browser layer has already read (and bounded) the body.
        let bytes = to_bytes(request.into_body(), super::FORM_LIMIT)
            .await
            .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE.into_response())?;
        let fields: BTreeMap<String, String> = form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (name, value) in &fields {
            if name != super::session::CSRF_FIELD && name != IDEMPOTENCY_FIELD {
                hasher.update(name.as_bytes());
                hasher.update(b"=");
                hasher.update(value.as_bytes());
                hasher.update(b"\n");
            }
        }
        Ok(FormBody {
            fields,
            hash: hasher.finalize().to_vec(),
        })
    }
}

impl FormBody {
    fn get(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", |v| v.trim())
    }

    fn required(&self, name: &str) -> Result<&str, Problem> {
        match self.get(name) {
            "" => Err(Problem::bad_request(name, "is required")),
            value => Ok(value),
        }
    }

    fn date(&self, name: &str) -> Result<NaiveDate, Problem> {
        self.required(name)?
            .parse()
            .map_err(|_| Problem::bad_request(name, "must be a date (YYYY-MM-DD)"))
    }

    fn id<I: TryFrom<String>>(&self, name: &str) -> Result<I, Problem> {
        I::try_from(self.required(name)?.to_string())
            .map_err(|_| Problem::bad_request(name, circle_events::ids::INVALID_ID))
    }

    /// The write, as the API would run it for this caller with these headers.
    fn writer(&self, viewer: &Viewer) -> Result<Writer, Problem> {
        let key = match self.get(IDEMPOTENCY_FIELD) {
            "" => None,
            key if key.len() > 255 => {
                return Err(Problem::bad_request(IDEMPOTENCY_FIELD, "is too long"))
            }
            key => Some(key.to_string()),
        };
        let headers = WriteHeaders {
            idempotency_key: key,
            if_match: None,
            correlation_id: uuid::Uuid::new_v4(),
        };
        Ok(Writer::new(
            viewer.caller.clone(),
            headers,
            self.hash.clone(),
        ))
    }
}

/// Runs a group command from a form: on success, back to the group page once the
/// projection shows the write; on a refusal, `again` re-renders the form with it.
async fn submit(
    state: &AppState,
    viewer: &Viewer,
    group_id: &GroupId,
    form: &FormBody,
    command: Result<GroupCommand, Problem>,
    again: impl FnOnce(&Problem) -> Markup,
) -> Response {
    let outcome = match (command, form.writer(viewer)) {
        (Ok(command), Ok(writer)) => writer.execute(state, group_id, command).await,
        (Err(problem), _) | (_, Err(problem)) => Err(problem),
    };
    match outcome {
        Ok(receipt) => {
            let position = receipt.body.get("position").and_then(|p| p.as_i64());
            let mut to = format!("/app/groups/{group_id}");
            if let Some(position) = position {
                to.push_str(&format!("?after={position}"));
            }
            Redirect::to(&to).into_response()
        }
        Err(problem) if problem.status == 401 || problem.status == 403 => problem.into_response(),
        Err(problem) => {
            let status =
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            let frame = Frame {
                viewer: Some(viewer),
                title: "Not recorded",
                live: false,
            };
            (status, page(frame, again(&problem))).into_response()
        }
    }
}

/// The messages a refusal gives, by field; the ones naming no form field go on top.
struct Errors<'a>(&'a Problem);

impl Errors<'_> {
    fn for_field(&self, field: &str) -> Option<&str> {
        self.0
            .errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }

    fn summary(&self) -> Markup {
        html! {
            div.error-summary role="alert" {
                p { strong { "Nothing was recorded. " } (self.0.detail) }
            }
        }
    }
}

fn field_error(errors: Option<&Errors>, field: &str) -> Markup {
    html! {
        @if let Some(message) = errors.and_then(|e| e.for_field(field)) {
            span.field-error id={ (field_id(field)) "-error" } { (message) }
        }
    }
}

fn field_id(field: &str) -> String {
    field
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn idempotency() -> Markup {
    html! { input type="hidden" name=(IDEMPOTENCY_FIELD) value=(uuid::Uuid::new_v4().to_string()); }
}

// ---- the group page's forms ----

/// The forms at the foot of a group page: this week's sessions, scheduling, members.
pub(super) fn group_forms(
    viewer: &Viewer,
    group_id: &str,
    group: &GroupRecord,
    upcoming: &[(&String, &SessionRecord)],
    now: DateTime<Utc>,
) -> Markup {
    let mut recent: Vec<(&String, &SessionRecord)> = group
        .sessions
        .iter()
        .filter(|(_, s)| s.starts_at.to_utc() <= now)
        .collect();
    recent.sort_by_key(|(_, s)| std::cmp::Reverse(s.starts_at));
    recent.truncate(3);
    recent.reverse();
    recent.extend(upcoming.iter().take(3).copied());
    let today = now.date_naive();
    let active: Vec<&String> = group
        .members
        .iter()
        .filter(|(_, p)| p.last().is_some_and(|p| p.left_on.is_none()))
        .map(|(c, _)| c)
        .collect();
    html! {
        section.card.no-print {
            h2 { "Sessions" }
            table {
                thead { tr { th { "When" } th { "Status" } th { "Record" } th { "Cancel" } } }
                tbody { @for (session_id, session) in &recent {
                    tr {
                        td { (session.starts_at.format("%a %Y-%m-%d %H:%M")) }
                        td { @if session.cancelled { "cancelled" } @else if session.held() { "held" } @else { "scheduled" } }
                        td { @if !session.cancelled {
                            a href={ "/app/groups/" (group_id) "/sessions/" (session_id) "/attendance" } { "Attendance" }
                            " · "
                            a href={ "/app/groups/" (group_id) "/sessions/" (session_id) "/feedback" } { "Questionnaire" }
                        } }
                        td { @if !session.cancelled && !session.held() {
                            form.inline method="post" action={ "/app/groups/" (group_id) "/sessions/" (session_id) "/cancellation" } {
                                (csrf(viewer)) (idempotency())
                                label for={ "reason-" (session_id) } { "Reason " }
                                input id={ "reason-" (session_id) } name="reason" required maxlength="500";
                                " " button type="submit" { "Cancel session" }
                            }
                        } }
                    }
                } }
            }
            (schedule_form(viewer, group_id, None))
        }
        section.card.no-print {
            h2 { "Members" }
            (join_form(viewer, group_id, today, None))
            @if !active.is_empty() { (discharge_form(viewer, group_id, &active, today, None)) }
        }
    }
}

fn schedule_form(viewer: &Viewer, group_id: &str, errors: Option<&Errors>) -> Markup {
    html! {
        h3 { "Schedule a session" }
        @if let Some(errors) = errors { (errors.summary()) }
        form.stack method="post" action={ "/app/groups/" (group_id) "/sessions" } {
            (csrf(viewer)) (idempotency())
            label for="starts_at" { "Starts at (date and time)" }
            input #starts_at type="datetime-local" name="starts_at" required;
            (field_error(errors, "starts_at"))
            label for="utc_offset" { "UTC offset of that time" }
            input #utc_offset name="utc_offset" value="+00:00" pattern="[+\\-][0-9]{2}:[0-9]{2}" required;
            label for="duration_minutes" { "Duration (minutes)" }
            input #duration_minutes type="number" name="duration_minutes" min="1" max="600" value="90" required;
            (field_error(errors, "duration_minutes"))
            button type="submit" { "Schedule" }
        }
    }
}

fn join_form(viewer: &Viewer, group_id: &str, today: NaiveDate, errors: Option<&Errors>) -> Markup {
    html! {
        h3 { "Add a member" }
        @if let Some(errors) = errors { (errors.summary()) }
        form.stack method="post" action={ "/app/groups/" (group_id) "/members" } {
            (csrf(viewer)) (idempotency())
            label for="join-client" { "Client id" }
            input #join-client name="client_id" required maxlength="64" pattern="[A-Za-z0-9_-]+";
            (field_error(errors, "client_id"))
            label for="joined_on" { "Joined on" }
            input #joined_on type="date" name="joined_on" value=(today) required;
            (field_error(errors, "joined_on"))
            button type="submit" { "Add member" }
        }
    }
}

fn discharge_form(
    viewer: &Viewer,
    group_id: &str,
    active: &[&String],
    today: NaiveDate,
    errors: Option<&Errors>,
) -> Markup {
    html! {
        h3 { "Discharge a member" }
        @if let Some(errors) = errors { (errors.summary()) }
        form.stack method="post" action={ "/app/groups/" (group_id) "/departures" } {
            (csrf(viewer)) (idempotency())
            label for="leave-client" { "Member" }
            select #leave-client name="client_id" required {
                @for client in active { option value=(client) { (client) } }
            }
            (field_error(errors, "client_id"))
            label for="left_on" { "Left on" }
            input #left_on type="date" name="left_on" value=(today) required;
            (field_error(errors, "left_on"))
            label for="leave-reason" { "Reason" }
            select #leave-reason name="reason" {
                @for (reason, label) in REASONS { option value=(reason_value(reason)) selected[reason == DepartureReason::Discharged] { (label) } }
            }
            button type="submit" { "Record departure" }
        }
    }
}

fn reason_value(reason: DepartureReason) -> &'static str {
    match reason {
        DepartureReason::Completed => "completed",
        DepartureReason::DroppedOut => "dropped_out",
        DepartureReason::Transferred => "transferred",
        DepartureReason::Discharged => "discharged",
        DepartureReason::Other => "other",
    }
}

/// Reads the group the form is for from the live projection, if the caller may write it.
async fn group_record(
    state: &AppState,
    viewer: &Viewer,
    group_id: &GroupId,
) -> Result<GroupRecord, Problem> {
    authorize_group(state, &viewer.caller, Action::WriteGroup, group_id.as_str()).await?;
    state
        .reports
        .read(|p| p.groups.get(group_id.as_str()).cloned())
        .ok_or_else(|| Problem::not_found("group not found"))
}

pub(super) async fn schedule(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids(group_id): Ids<GroupId>,
    form: FormBody,
) -> Response {
    let command = (|| {
        let text = format!(
            "{}:00{}",
            form.required("starts_at")?,
            form.get("utc_offset")
        );
        let starts_at = DateTime::<FixedOffset>::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%:z")
            .or_else(|_| {
                NaiveDateTime::parse_from_str(form.get("starts_at"), "%Y-%m-%dT%H:%M:%S")
                    .map(|t| t.and_utc().fixed_offset())
            })
            .map_err(|_| Problem::bad_request("starts_at", "must be a date and time"))?;
        let duration_minutes = form
            .required("duration_minutes")?
            .parse()
            .map_err(|_| Problem::bad_request("duration_minutes", "must be a whole number"))?;
        Ok(GroupCommand::ScheduleSession {
            session_id: format!("ses_{}", uuid::Uuid::new_v4().simple()),
            starts_at,
            duration_minutes,
        })
    })();
    let id = group_id.to_string();
    submit(&state, &viewer, &group_id, &form, command, |p| {
        schedule_form(&viewer, &id, Some(&Errors(p)))
    })
    .await
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids((group_id, session_id)): Ids<(GroupId, SessionId)>,
    form: FormBody,
) -> Response {
    let command = form
        .required("reason")
        .map(|reason| GroupCommand::CancelSession {
            session_id: session_id.to_string(),
            reason: reason.to_string(),
        });
    let back = format!("/app/groups/{group_id}");
    submit(&state, &viewer, &group_id, &form, command, |p| {
        html! { (Errors(p).summary()) p { a href=(back) { "Back to the group" } } }
    })
    .await
}

pub(super) async fn join(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids(group_id): Ids<GroupId>,
    form: FormBody,
) -> Response {
    let command = (|| {
        Ok(GroupCommand::JoinGroup {
            client_id: form.id::<ClientId>("client_id")?.to_string(),
            joined_on: form.date("joined_on")?,
        })
    })();
    let id = group_id.to_string();
    let today = Utc::now().date_naive();
    submit(&state, &viewer, &group_id, &form, command, |p| {
        join_form(&viewer, &id, today, Some(&Errors(p)))
    })
    .await
}

pub(super) async fn discharge(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids(group_id): Ids<GroupId>,
    form: FormBody,
) -> Response {
    let command = (|| {
        let reason = REASONS
            .iter()
            .map(|(r, _)| *r)
            .find(|r| reason_value(*r) == form.get("reason"))
            .ok_or_else(|| Problem::bad_request("reason", "is not a departure reason"))?;
        Ok(GroupCommand::LeaveGroup {
            client_id: form.id::<ClientId>("client_id")?.to_string(),
            left_on: form.date("left_on")?,
            reason,
        })
    })();
    let id = group_id.to_string();
    let today = Utc::now().date_naive();
    let active: Vec<String> = state.reports.read(|p| {
        p.groups.get(group_id.as_str()).map_or(Vec::new(), |g| {
            g.members
                .iter()
                .filter(|(_, p)| p.last().is_some_and(|p| p.left_on.is_none()))
                .map(|(c, _)| c.clone())
                .collect()
        })
    });
    let active: Vec<&String> = active.iter().collect();
    submit(&state, &viewer, &group_id, &form, command, |p| {
        discharge_form(&viewer, &id, &active, today, Some(&Errors(p)))
    })
    .await
}

pub(super) async fn review_risk(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids((group_id, client_id)): Ids<(GroupId, ClientId)>,
    form: FormBody,
) -> Response {
    let command = Ok(GroupCommand::ReviewRisk {
        client_id: client_id.to_string(),
    });
    submit(&state, &viewer, &group_id, &form, command, |p| {
        html! { (Errors(p).summary()) p { a href="/app" { "Back to Today" } } }
    })
    .await
}

/// The "mark reviewed" button on a risk row.
pub(super) fn review_button(viewer: &Viewer, group_id: &str, client_id: &str) -> Markup {
    html! {
        form.inline.no-print method="post" action={ "/app/groups/" (group_id) "/members/" (client_id) "/risk-review" } {
            (csrf(viewer)) (idempotency())
            // The accessible name starts with the visible text (WCAG 2.5.3, label in name).
            button type="submit" aria-label={ "Mark reviewed: the risk item of " (client_id) } { "Mark reviewed" }
        }
    }
}

// ---- attendance ----

/// Members on the session's date, with their recorded marks.
fn members_on(
    group: &GroupRecord,
    session: &SessionRecord,
) -> Vec<(String, Option<AttendanceStatus>)> {
    group
        .members
        .keys()
        .filter(|c| group.is_member_on(c, session.date()))
        .map(|c| (c.clone(), session.marks.get(c).copied()))
        .collect()
}

pub(super) async fn attendance_form(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids((group_id, session_id)): Ids<(GroupId, SessionId)>,
) -> Result<Response, Problem> {
    let group = group_record(&state, &viewer, &group_id).await?;
    let body = attendance_markup(&viewer, &group_id, &session_id, &group, None)?;
    Ok(form_page(&viewer, "Attendance", &group, body))
}

/// A form page about a group's members: recorded in the access log as showing them.
fn form_page(viewer: &Viewer, title: &str, group: &GroupRecord, body: Markup) -> Response {
    let shown = group.members.keys().cloned().collect();
    let frame = Frame {
        viewer: Some(viewer),
        title,
        live: false,
    };
    crate::http::guard::disclose(page(frame, body), shown)
}

fn attendance_markup(
    viewer: &Viewer,
    group_id: &GroupId,
    session_id: &SessionId,
    group: &GroupRecord,
    errors: Option<&Errors>,
) -> Result<Markup, Problem> {
    let session = group
        .sessions
        .get(session_id.as_str())
        .ok_or_else(|| Problem::not_found("session not found"))?;
    let members = members_on(group, session);
    Ok(html! {
        h1 { "Attendance · " (group.name) }
        p.muted { (session.starts_at.format("%A %Y-%m-%d %H:%M")) " · every member on that date is listed. Changing a recorded mark records a correction; the earlier mark stays in the history." }
        @if let Some(errors) = errors { (errors.summary()) }
        form method="post" action={ "/app/groups/" (group_id) "/sessions/" (session_id) "/attendance" } {
            (csrf(viewer)) (idempotency())
            table.marks {
                thead { tr { th { "Member" } @for status in STATUSES { th { (status_label(status)) } } th { "Recorded" } } }
                tbody { @for (client_id, recorded) in &members {
                    tr {
                        th scope="row" id={ "m-" (client_id) } { (client_id) }
                        @for status in STATUSES {
                            td {
                                input type="radio" id={ "s-" (client_id) "-" (status_label(status).replace(' ', "-")) }
                                    name={ "status:" (client_id) } value=(status_value(status))
                                    checked[recorded.map_or(status == AttendanceStatus::Present, |r| r == status)]
                                    aria-labelledby={ "m-" (client_id) " l-" (status_value(status)) };
                                label.skip for={ "s-" (client_id) "-" (status_label(status).replace(' ', "-")) } { (client_id) " " (status_label(status)) }
                            }
                        }
                        td { @match recorded { Some(r) => { (status_label(*r)) }, None => span.muted { "not yet" } } }
                    }
                } }
            }
            span #l-present hidden { "present" } span #l-late hidden { "late" } span #l-left_early hidden { "left early" }
            span #l-excused hidden { "excused" } span #l-no_show hidden { "no-show" }
            p { button type="submit" { "Record attendance" } " " a href={ "/app/groups/" (group_id) } { "Back" } }
        }
    })
}

pub(super) async fn attendance(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids((group_id, session_id)): Ids<(GroupId, SessionId)>,
    form: FormBody,
) -> Response {
    let records: Result<Vec<AttendanceMark>, Problem> = form
        .fields
        .iter()
        .filter_map(|(name, value)| Some((name.strip_prefix("status:")?, value)))
        .map(|(client_id, value)| {
            let status = STATUSES
                .into_iter()
                .find(|s| status_value(*s) == value)
                .ok_or_else(|| {
                    Problem::bad_request(
                        format!("status:{client_id}"),
                        "is not an attendance status",
                    )
                })?;
            Ok(AttendanceMark {
                client_id: client_id.to_string(),
                status,
            })
        })
        .collect();
    let command = records.map(|records| GroupCommand::RecordAttendance {
        session_id: session_id.to_string(),
        records,
    });
    let group = state
        .reports
        .read(|p| p.groups.get(group_id.as_str()).cloned())
        .unwrap_or_default();
    submit(&state, &viewer, &group_id, &form, command, |p| {
        attendance_markup(&viewer, &group_id, &session_id, &group, Some(&Errors(p)))
            .unwrap_or_else(|_| Errors(p).summary())
    })
    .await
}

// ---- questionnaires ----

#[derive(Deserialize, Default)]
pub(super) struct InstrumentQuery {
    instrument: Option<String>,
}

pub(super) async fn feedback_form(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids((group_id, session_id)): Ids<(GroupId, SessionId)>,
    Query(query): Query<InstrumentQuery>,
) -> Result<Response, Problem> {
    let group = group_record(&state, &viewer, &group_id).await?;
    let instrument = query.instrument.unwrap_or_else(|| "PHQ-9".to_string());
    let body = feedback_markup(
        &viewer,
        &group_id,
        &session_id,
        &group,
        &instrument,
        None,
        None,
    )?;
    Ok(form_page(&viewer, "Questionnaire", &group, body))
}

fn feedback_markup(
    viewer: &Viewer,
    group_id: &GroupId,
    session_id: &SessionId,
    group: &GroupRecord,
    instrument: &str,
    sent: Option<&FormBody>,
    errors: Option<&Errors>,
) -> Result<Markup, Problem> {
    let session = group
        .sessions
        .get(session_id.as_str())
        .ok_or_else(|| Problem::not_found("session not found"))?;
    let definition = Catalogue::builtin()
        .current(instrument)
        .ok_or_else(|| Problem::bad_request("instrument", "is not in the instrument catalogue"))?;
    let step = if definition.decimals == 0 { "1" } else { "0.1" };
    let members = members_on(group, session);
    let chosen = sent.map_or("", |f| f.get("client_id"));
    Ok(html! {
        h1 { (definition.instrument) " · " (group.name) }
        p.muted { (definition.title) " · " (session.starts_at.format("%A %Y-%m-%d")) }
        nav aria-label="Instrument" {
            @for other in ["PHQ-9", "GAD-7", "ORS", "SRS", "GSRS"] {
                @if other == instrument { strong { (other) } } @else {
                    a href={ "/app/groups/" (group_id) "/sessions/" (session_id) "/feedback?instrument=" (other) } { (other) }
                }
                " "
            }
        }
        @if let Some(errors) = errors { (errors.summary()) }
        form.stack method="post" action={ "/app/groups/" (group_id) "/sessions/" (session_id) "/feedback" } {
            (csrf(viewer)) (idempotency())
            input type="hidden" name="instrument" value=(definition.instrument);
            label for="client_id" { "Member" }
            select #client_id name="client_id" required {
                @for (client_id, _) in &members { option value=(client_id) selected[client_id == chosen] { (client_id) } }
            }
            (field_error(errors, "client_id"))
            @for i in 0..definition.items {
                @let field = format!("items[{i}]");
                label for=(field_id(&field)) {
                    "Item " (i + 1) " (" (definition.item_min) "–" (definition.item_max) ")"
                    @if definition.risk_items.contains(&(i + 1)) { " · risk item" }
                }
                input id=(field_id(&field)) type="number" name=(field) required
                    min=(definition.item_min) max=(definition.item_max) step=(step)
                    value=[sent.map(|f| f.get(&field).to_string()).filter(|v| !v.is_empty())]
                    aria-describedby=[errors.and_then(|e| e.for_field(&field)).map(|_| format!("{}-error", field_id(&field)))];
                (field_error(errors, &field))
            }
            p { button type="submit" { "Record " (definition.instrument) } " " a href={ "/app/groups/" (group_id) } { "Back" } }
        }
    })
}

pub(super) async fn feedback(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids((group_id, session_id)): Ids<(GroupId, SessionId)>,
    form: FormBody,
) -> Response {
    let instrument = form.get("instrument").to_string();
    let command = (|| {
        let count = Catalogue::builtin()
            .current(&instrument)
            .map_or(0, |d| d.items);
        let items = (0..count)
            .map(|i| {
                let field = format!("items[{i}]");
                let text = form.required(&field)?;
                serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .filter(serde_json::Value::is_number)
                    .and_then(|v| Score::from_json(&v).ok())
                    .ok_or_else(|| Problem::bad_request(field, "must be a number"))
            })
            .collect::<Result<Vec<Score>, Problem>>()?;
        Ok(GroupCommand::RecordFeedback {
            client_id: form.id::<ClientId>("client_id")?.to_string(),
            session_id: Some(session_id.to_string()),
            instrument: instrument.clone(),
            items,
            administered_at: None,
        })
    })();
    let group = state
        .reports
        .read(|p| p.groups.get(group_id.as_str()).cloned())
        .unwrap_or_default();
    submit(&state, &viewer, &group_id, &form, command, |p| {
        feedback_markup(
            &viewer,
            &group_id,
            &session_id,
            &group,
            &instrument,
            Some(&form),
            Some(&Errors(p)),
        )
        .unwrap_or_else(|_| Errors(p).summary())
    })
    .await
}

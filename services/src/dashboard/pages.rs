//! The pages, each answering one question. Handlers are thin: ask the policy, read
//! the live projection, hand the data to a view function, mark the clients shown for
//! the access log.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, NaiveDate, Utc};
use circle_events::client::ConsentScope;
use circle_events::group::AttendanceStatus;
use circle_events::ids::{ClientId, GroupId};
use circle_events::instruments::{Catalogue, Score};
use circle_projections::caseload::{MemberNeed, NeedKind, Triage};
use circle_projections::practice::{GroupRecord, Practice};
use circle_projections::reports::{self, RetentionReport, RetentionScope};
use maud::{html, Markup};
use serde::Deserialize;

use super::charts::{self, Step, Trajectory};
use super::layout::{self, page, svg, Frame};
use super::session::{self, Session};
use super::Viewer;
use crate::auth::Role;
use crate::http::extract::{Caller, Ids};
use crate::http::guard::{allow, authorize_client, authorize_group, disclose};
use crate::http::{AppState, Problem};
use crate::policy::{Action, Resource, View};

/// The outcome measures a chart and a classification are drawn for, then alliance.
const OUTCOME_INSTRUMENTS: [&str; 3] = ["PHQ-9", "GAD-7", "ORS"];
const ALLIANCE_INSTRUMENTS: [&str; 2] = ["SRS", "GSRS"];
/// Sessions the group page's grids show: the latest ones.
const GRID_SESSIONS: usize = 16;

/// `?after=N`: the position of a write the page must show (read-your-writes).
#[derive(Deserialize, Default)]
pub(super) struct After {
    after: Option<i64>,
}

impl After {
    /// Waits (bounded) until the projection has applied the caller's write.
    async fn wait(&self, state: &AppState) {
        if let Some(position) = self.after {
            let wait = state.reporting.read_wait_max;
            state.reports.caught_up(position, wait).await;
        }
    }
}

/// Whether the caller may read a group, by the policy, from the projection's facts.
fn may_read(caller: &Caller, group: &GroupRecord) -> bool {
    let facilitated = caller
        .0
        .clinician_id
        .as_ref()
        .is_some_and(|me| group.facilitators.contains(me));
    allow(caller, Action::ReadGroup, Resource::Group { facilitated }).is_ok()
}

fn html_page(frame: Frame, body: Markup, shown: Vec<String>) -> Response {
    disclose(page(frame, body), shown)
}

// ---- sign-in ----

#[derive(Deserialize)]
pub(super) struct SignInLink {
    token: Option<String>,
}

/// The sign-in form; with `?token=` (the demo's one-click links) it signs in at once.
pub(super) async fn sign_in_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(link): Query<SignInLink>,
) -> Response {
    match link.token {
        Some(token) => start_session(&state, &headers, token).await,
        None => sign_in_form(&headers, None),
    }
}

#[derive(Deserialize)]
pub(super) struct SignInForm {
    token: String,
    csrf: String,
}

pub(super) async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !session::signin_csrf_matches(&headers, &form.csrf) {
        return sign_in_form(
            &headers,
            Some("This form has expired: sign in again from this page."),
        );
    }
    start_session(&state, &headers, form.token).await
}

async fn start_session(state: &AppState, headers: &HeaderMap, token: String) -> Response {
    let token = token.trim().to_string();
    match state.auth.principal(&token).await {
        Ok(Some(principal)) => {
            let session = Session::new(token, Utc::now());
            let home = match principal.role {
                Role::Reporter => "/app/practice",
                _ => "/app",
            };
            let secure = session::behind_tls(headers);
            let mut response = Redirect::to(home).into_response();
            let cookies = response.headers_mut();
            cookies.append(header::SET_COOKIE, session.set_cookie(secure));
            cookies.append(header::SET_COOKIE, session::clear_signin_cookie(secure));
            response
        }
        Ok(None) => sign_in_form(
            headers,
            Some("This token is not valid: it is unknown, revoked or expired."),
        ),
        Err(error) => {
            tracing::error!(error = %crate::errors::ErrorChain(&error), "signing in");
            layout::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Circle cannot check tokens just now. Try again in a moment.",
            )
        }
    }
}

fn sign_in_form(headers: &HeaderMap, error: Option<&str>) -> Response {
    let token = crate::crypto::random_token();
    let body = html! {
        h1 { "Sign in" }
        form.stack method="post" action="/app/sign-in" {
            input type="hidden" name="csrf" value=(token);
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="off" required
                aria-describedby="token-help" aria-invalid=[error.map(|_| "true")];
            @if let Some(error) = error { p.field-error #token-error role="alert" { (error) } }
            p.muted #token-help { "Your token comes from your practice's administrator (" code { "circle token create" } ")." }
            button type="submit" { "Sign in" }
        }
    };
    let frame = Frame {
        viewer: None,
        title: "Sign in",
        live: false,
    };
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let cookie = session::signin_cookie(&token, session::behind_tls(headers));
    (status, [(header::SET_COOKIE, cookie)], page(frame, body)).into_response()
}

/// Ends the browser's session (the token itself stays valid: revoke it to end it).
pub(super) async fn sign_out(headers: HeaderMap) -> Response {
    let mut response = Redirect::to("/app/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(session::behind_tls(&headers)),
    );
    response
}

// ---- Today ----

/// "Who needs me now?": the caller's groups with their next session, and each
/// group's members by need.
pub(super) async fn today(State(state): State<AppState>, viewer: Viewer) -> Response {
    let now = Utc::now();
    let (body, shown) = state
        .reports
        .read(|practice| today_view(practice, &viewer, now));
    let frame = Frame {
        viewer: Some(&viewer),
        title: "Today",
        live: true,
    };
    html_page(frame, body, shown)
}

fn today_view(practice: &Practice, viewer: &Viewer, now: DateTime<Utc>) -> (Markup, Vec<String>) {
    let triage = Triage::new(practice);
    let today = now.date_naive();
    let groups: Vec<(&String, &GroupRecord, Vec<MemberNeed>)> = practice
        .groups
        .iter()
        .filter(|(_, g)| g.closed_on.is_none() && may_read(&viewer.caller, g))
        .filter_map(|(id, g)| Some((id, g, triage.group(id, today)?)))
        .collect();
    let shown = groups
        .iter()
        .flat_map(|(_, _, rows)| rows.iter().map(|r| r.client_id.clone()))
        .collect();
    let body = html! {
        h1 { "Today" }
        @if groups.is_empty() { p.notice { "You facilitate no open groups." } }
        @for (group_id, group, rows) in &groups {
            section.card aria-labelledby={ "g-" (group_id) } {
                h2 #{ "g-" (group_id) } { a href={ "/app/groups/" (group_id) } { (group.name) } }
                p.muted { (next_session(group, now)) " · " (rows.len()) " members" }
                @if rows.is_empty() { p.muted { "No current members." } }
                table {
                    thead { tr { th { "Member" } th { "Needs" } th { "Why" } th { "When" } } }
                    tbody {
                        @for row in rows {
                            tr {
                                td { a href={ "/app/clients/" (row.client_id) } { (row.client_id) } }
                                @match &row.need {
                                    Some(need) => {
                                        td {
                                            span class={ "chip need-" (kind_class(need.kind)) } { (need.kind.label()) }
                                            @if need.kind == NeedKind::Risk && viewer.caller.0.role != Role::Auditor {
                                                " " (super::forms::review_button(viewer, group_id, &row.client_id))
                                            }
                                        }
                                        td { (need.detail) }
                                        td { time datetime=(need.at.to_rfc3339()) { (need.at.format("%Y-%m-%d")) } }
                                    }
                                    None => {
                                        td { span.chip.need-none { "No rule fired" } }
                                        td.muted { "—" } td.muted { "—" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    (body, shown)
}

fn kind_class(kind: circle_projections::caseload::NeedKind) -> &'static str {
    use circle_projections::caseload::NeedKind::*;
    match kind {
        Risk => "risk",
        Deterioration => "deterioration",
        Alliance => "alliance",
        Absences => "absences",
    }
}

fn next_session(group: &GroupRecord, now: DateTime<Utc>) -> String {
    group
        .sessions
        .values()
        .filter(|s| !s.cancelled && s.starts_at.to_utc() >= now)
        .map(|s| s.starts_at)
        .min()
        .map_or("No session scheduled".to_string(), |at| {
            format!("Next session {}", at.format("%a %Y-%m-%d %H:%M"))
        })
}

// ---- Group ----

pub(super) async fn group(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids(group_id): Ids<GroupId>,
    Query(after): Query<After>,
) -> Result<Response, Problem> {
    authorize_group(&state, &viewer.caller, Action::ReadGroup, group_id.as_str()).await?;
    after.wait(&state).await;
    let now = Utc::now();
    let view = state
        .reports
        .read(|p| group_view(p, group_id.as_str(), &viewer, now));
    let (title, body, shown) = view.ok_or_else(|| Problem::not_found("group not found"))?;
    let frame = Frame {
        viewer: Some(&viewer),
        title: &title,
        live: true,
    };
    Ok(html_page(frame, body, shown))
}

fn group_view(
    practice: &Practice,
    group_id: &str,
    viewer: &Viewer,
    now: DateTime<Utc>,
) -> Option<(String, Markup, Vec<String>)> {
    let group = practice.groups.get(group_id)?;
    let members: Vec<&String> = group.members.keys().collect();
    let mut sessions: Vec<(&String, &circle_projections::practice::SessionRecord)> =
        group.sessions.iter().collect();
    sessions.sort_by(|a, b| a.1.starts_at.cmp(&b.1.starts_at).then(a.0.cmp(b.0)));
    let past: Vec<_> = sessions
        .iter()
        .filter(|(_, s)| s.starts_at.to_utc() <= now || s.held())
        .copied()
        .collect();
    let grid = &past[past.len().saturating_sub(GRID_SESSIONS)..];
    let upcoming: Vec<_> = sessions
        .iter()
        .filter(|(_, s)| s.starts_at.to_utc() > now && !s.held())
        .copied()
        .collect();
    let outcomes: Vec<_> = OUTCOME_INSTRUMENTS
        .iter()
        .filter_map(|i| reports::outcomes(practice, group_id, i, now))
        .filter(|r| r.clients.as_ref().is_some_and(|c| !c.is_empty()))
        .collect();
    let retention = reports::retention(practice, &RetentionScope::Group(group_id.into()), now);
    let alerts = reports::alerts(practice, Some(group_id));
    let facilitators: Vec<&str> = group.facilitators.iter().map(String::as_str).collect();
    let title = group.name.clone();
    let body = html! {
        h1 { (group.name) }
        p.muted {
            (group.focus.map_or("", focus_label)) " group · facilitated by " (facilitators.join(", "))
            " · " (next_session(group, now))
            @if let Some(closed) = group.closed_on { " · closed on " (closed) }
        }
        section.card {
            h2 { "Attendance" }
            p.muted { "Latest " (grid.len()) " sessions. Unrecorded marks count as no-shows; a blank cell is a date the client was not a member." }
            (attendance_grid(group, &members, grid))
        }
        section.card {
            h2 { "Latest scores" }
            @if outcomes.is_empty() { p.muted { "No member has two scores on an outcome measure yet." } }
            @for report in &outcomes {
                h3 { (report.instrument) }
                table {
                    thead { tr { th { "Member" } th.num { "Baseline" } th.num { "Latest" } th.num { "Change" } th { "Classification" } } }
                    tbody {
                        @for row in report.clients.iter().flatten() {
                            @let class = serde_label(&row.classification);
                            tr {
                                td { a href={ "/app/clients/" (row.client_id) } { (row.client_id) } }
                                td.num { (row.baseline) } td.num { (row.latest) }
                                td.num { (signed(row.change)) }
                                td { span class={ "chip cls-" (class) } { (class.replace('_', " ")) } }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Alliance per session" }
            p.muted { "SRS/GSRS totals; a fall since the member's previous session, or a total below the cutoff, is flagged in words." }
            (alliance_grid(group, &members, grid))
        }
        section.card {
            h2 { "Retention" }
            (retention_block(&retention))
        }
        section.card {
            h2 { "Alerts" }
            @if alerts.is_empty() { p.muted { "No alerts." } }
            table {
                tbody {
                    @for alert in alerts.iter().rev().take(30) {
                        tr {
                            td { span class={ "chip need-" (alert_class(alert.kind)) } { (serde_label(&alert.kind).replace('_', " ")) } }
                            td { a href={ "/app/clients/" (alert.client_id) } { (alert.client_id) } }
                            td { (alert.detail) }
                            td { (alert.raised_at.format("%Y-%m-%d")) }
                        }
                    }
                }
            }
        }
        @if viewer.caller.0.role != Role::Auditor {
            (super::forms::group_forms(viewer, group_id, group, &upcoming, now))
        }
    };
    let shown = members.into_iter().cloned().collect();
    Some((title, body, shown))
}

fn attendance_grid(
    group: &GroupRecord,
    members: &[&String],
    sessions: &[(&String, &circle_projections::practice::SessionRecord)],
) -> Markup {
    html! {
        table.grid {
            thead {
                tr {
                    th scope="col" { "Member" }
                    @for (_, session) in sessions {
                        th scope="col" { (session.starts_at.format("%m-%d")) }
                    }
                }
            }
            tbody {
                @for client_id in members {
                    tr {
                        th scope="row" { a href={ "/app/clients/" (client_id) } { (client_id) } (membership_note(group, client_id)) }
                        @for (_, session) in sessions {
                            (attendance_cell(group, client_id, session))
                        }
                    }
                }
            }
        }
    }
}

fn membership_note(group: &GroupRecord, client_id: &str) -> Markup {
    let periods = group.members.get(client_id.to_string().as_str());
    html! {
        @if let Some(period) = periods.and_then(|p| p.last()) {
            br;
            span.muted {
                "joined " (period.joined_on)
                @if let Some(left) = period.left_on {
                    " · left " (left)
                    @if let Some(reason) = period.reason { " (" (serde_label(&reason).replace('_', " ")) ")" }
                }
            }
        }
    }
}

fn attendance_cell(
    group: &GroupRecord,
    client_id: &str,
    session: &circle_projections::practice::SessionRecord,
) -> Markup {
    let (class, text, title) = if session.cancelled {
        ("cancelled", "—", "cancelled".to_string())
    } else if !group.is_member_on(client_id, session.date()) {
        ("outside", "", "not a member on this date".to_string())
    } else {
        match session.marks.get(client_id) {
            Some(status) => {
                let label = status_label(*status);
                (
                    status_value(*status),
                    status_letter(*status),
                    label.to_string(),
                )
            }
            None if session.held() => (
                "unrecorded",
                "?",
                "unrecorded: counted as a no-show".to_string(),
            ),
            None => ("outside", "", "not recorded yet".to_string()),
        }
    };
    html! {
        td class={ "att-" (class) } title=(title) {
            (text) span.skip { (title) }
        }
    }
}

/// The status as the API names it (form values, CSS classes).
pub(super) fn status_value(status: AttendanceStatus) -> &'static str {
    match status {
        AttendanceStatus::Present => "present",
        AttendanceStatus::Late => "late",
        AttendanceStatus::LeftEarly => "left_early",
        AttendanceStatus::Excused => "excused",
        AttendanceStatus::NoShow => "no_show",
    }
}

pub(super) fn status_label(status: AttendanceStatus) -> &'static str {
    match status {
        AttendanceStatus::Present => "present",
        AttendanceStatus::Late => "late",
        AttendanceStatus::LeftEarly => "left early",
        AttendanceStatus::Excused => "excused",
        AttendanceStatus::NoShow => "no-show",
    }
}

fn status_letter(status: AttendanceStatus) -> &'static str {
    match status {
        AttendanceStatus::Present => "P",
        AttendanceStatus::Late => "L",
        AttendanceStatus::LeftEarly => "E",
        AttendanceStatus::Excused => "X",
        AttendanceStatus::NoShow => "N",
    }
}

fn alliance_grid(
    group: &GroupRecord,
    members: &[&String],
    sessions: &[(&String, &circle_projections::practice::SessionRecord)],
) -> Markup {
    let catalogue = Catalogue::builtin();
    html! {
        @for instrument in ALLIANCE_INSTRUMENTS {
            @if group.measures.contains_key(instrument) {
                h3 { (instrument) }
                table.grid {
                    thead { tr { th { "Member" } @for (_, s) in sessions { th { (s.starts_at.format("%m-%d")) } } } }
                    tbody {
                        @for client_id in members {
                            @let scores = group.scores(instrument, client_id);
                            @if !scores.is_empty() {
                                tr {
                                    th scope="row" { (client_id) }
                                    @for (_, s) in sessions {
                                        @let day = s.date();
                                        @let at = scores.iter().position(|r| r.administered_at.date_naive() == day);
                                        @match at {
                                            Some(i) => {
                                                @let value = scores[i].total;
                                                @let below = catalogue.current(instrument).and_then(|d| d.is_clinical(value)) == Some(true);
                                                @let fell = i > 0 && value < scores[i - 1].total;
                                                td {
                                                    (value)
                                                    @if fell { br; span.drop { "▼ drop" } }
                                                    @if below { br; span.drop { "below cutoff" } }
                                                }
                                            }
                                            None => td.muted { "" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn retention_block(report: &RetentionReport) -> Markup {
    let steps: Vec<Step> = report
        .kaplan_meier
        .iter()
        .map(|r| Step {
            t_days: r.t_days,
            survival: r.survival,
            std_err: r.std_err,
        })
        .collect();
    html! {
        (svg(charts::retention_svg(&steps, report.median_days)))
        p {
            "Joined " (count(report.joined)) " · active " (count(report.active))
            " · completed " (count(report.completed)) " · dropped out " (count(report.dropped_out))
            " · dropout rate " (rate(report.dropout_rate))
            " · median time in group: " (report.median_days.map_or("not reached".to_string(), |d| format!("{d} days")))
        }
    }
}

fn alert_class(kind: circle_projections::practice::AlertKind) -> &'static str {
    use circle_projections::practice::AlertKind::*;
    match kind {
        Risk => "risk",
        Deterioration => "deterioration",
        Alliance => "alliance",
        Attendance | StalledGoal => "absences",
    }
}

// ---- Member ----

pub(super) async fn member(
    State(state): State<AppState>,
    viewer: Viewer,
    Ids(client_id): Ids<ClientId>,
    Query(after): Query<After>,
) -> Result<Response, Problem> {
    let client_id = client_id.as_str();
    let view = authorize_client(&state, &viewer.caller, Action::ReadClient, client_id).await?;
    after.wait(&state).await;
    let client = state.clients.load(client_id).await?.aggregate;
    if !client.exists() {
        return Err(Problem::not_found("client not found"));
    }
    let (erased, personal) =
        crate::http::clients::personal_data(&state, &client, client_id, view).await?;
    let name = personal.and_then(|p| p.display_name);
    let measures = item_history(&state, client_id).await?;
    let body = state.reports.read(|p| {
        let body = member_view(p, client_id, name.as_deref(), erased, view, &viewer);
        html! { (body) (item_tables(&measures)) }
    });
    let frame = Frame {
        viewer: Some(&viewer),
        title: client_id,
        live: true,
    };
    Ok(html_page(frame, body, vec![client_id.to_string()]))
}

/// The member's questionnaires with their items, from the streams of their groups
/// (the live projection keeps totals only): only this member's events are decoded.
async fn item_history(
    state: &AppState,
    client_id: &str,
) -> Result<Vec<circle_events::group::Measure>, Problem> {
    use circle_events::group::{Group, GroupEvent};
    use cqrs_es::Aggregate;
    let groups: Vec<String> = state.reports.read(|p| {
        p.groups
            .iter()
            .filter(|(_, g)| g.members.contains_key(client_id))
            .map(|(id, _)| id.clone())
            .collect()
    });
    let mut measures = Vec::new();
    for group_id in groups {
        for event in state.store.load_stream(Group::TYPE, &group_id, 0).await? {
            let theirs = event.event_type == "FeedbackRecorded"
                && event.payload.get("client_id").and_then(|c| c.as_str()) == Some(client_id);
            if !theirs {
                continue;
            }
            let decoded = circle_events::upcast::decode::<GroupEvent>(
                &event.event_type,
                event.event_version,
                event.payload,
            );
            if let Ok(GroupEvent::FeedbackRecorded { measure, .. }) = decoded {
                measures.push(measure);
            }
        }
    }
    measures.sort_by_key(|m| m.administered_at);
    Ok(measures)
}

/// Administrations an item table shows: the latest ones.
const ITEM_COLUMNS: usize = 6;

/// Per outcome instrument, each item's score at the latest administrations, and how
/// far it moved from the first (in words: better or worse, by how much).
fn item_tables(measures: &[circle_events::group::Measure]) -> Markup {
    let catalogue = Catalogue::builtin();
    html! {
        @for instrument in OUTCOME_INSTRUMENTS {
            @let taken: Vec<_> = measures.iter().filter(|m| m.instrument == instrument).collect();
            @if let (Some(definition), Some(first), Some(latest)) = (catalogue.current(instrument), taken.first(), taken.last()) {
                @let shown = &taken[taken.len().saturating_sub(ITEM_COLUMNS)..];
                section.card {
                    h2 { (instrument) " items" }
                    table.grid {
                        thead { tr {
                            th scope="col" { "Item" }
                            @for m in shown { th scope="col" { (m.administered_at.format("%m-%d")) } }
                            th scope="col" { "Since the first" }
                        } }
                        tbody { @for i in 0..definition.items {
                            @let moved = match (first.items.get(i), latest.items.get(i)) {
                                (Some(a), Some(b)) => definition.improvement(*a, *b),
                                _ => Score::whole(0),
                            };
                            tr {
                                th scope="row" {
                                    "Item " (i + 1)
                                    @if definition.risk_items.contains(&(i + 1)) { " (risk item)" }
                                }
                                @for m in shown { td { (m.items.get(i).map(|s| s.to_string()).unwrap_or_default()) } }
                                td {
                                    @if moved.as_f64() > 0.0 { "better by " (moved) }
                                    @else if moved.as_f64() < 0.0 { span.drop { "worse by " (Score::from_tenths(-moved.tenths())) } }
                                    @else { span.muted { "unchanged" } }
                                }
                            }
                        } }
                    }
                }
            }
        }
    }
}

fn member_view(
    practice: &Practice,
    client_id: &str,
    name: Option<&str>,
    erased: bool,
    view: View,
    viewer: &Viewer,
) -> Markup {
    let catalogue = Catalogue::builtin();
    // Only this member's rows, from every group they were in: never another member's.
    let groups: Vec<(&String, &GroupRecord)> = practice
        .groups
        .iter()
        .filter(|(_, g)| g.members.contains_key(client_id))
        .collect();
    let absences: Vec<NaiveDate> = groups
        .iter()
        .flat_map(|(_, g)| {
            g.held_sessions()
                .into_iter()
                .filter(|(_, s)| g.is_member_on(client_id, s.date()))
                .filter(|(_, s)| !s.marks.get(client_id).is_some_and(|m| m.attended()))
                .map(|(_, s)| s.date())
                .collect::<Vec<_>>()
        })
        .collect();
    let charts: Vec<String> = OUTCOME_INSTRUMENTS
        .iter()
        .chain(ALLIANCE_INSTRUMENTS.iter())
        .filter_map(|instrument| {
            let definition = catalogue.current(instrument)?;
            let mut scores: Vec<(NaiveDate, f64)> = groups
                .iter()
                .flat_map(|(_, g)| g.scores(instrument, client_id))
                .map(|s| (s.administered_at.date_naive(), s.total.as_f64()))
                .collect();
            if scores.is_empty() {
                return None;
            }
            scores.sort_by_key(|(day, _)| *day);
            Some(charts::trajectory_svg(&Trajectory {
                definition,
                scores,
                absences: absences.clone(),
            }))
        })
        .collect();
    let alerts: Vec<_> = practice
        .alerts
        .iter()
        .filter(|a| a.client_id == client_id)
        .collect();
    let _ = viewer;
    html! {
        h1 {
            (client_id)
            @if let Some(name) = name { " · " (name) }
        }
        @if erased { p.notice { "This client's personal data has been erased." } }
        @if view == View::Withheld { p.muted { "Personal data withheld (auditor view)." } }
        section.card {
            h2 { "Scores" }
            @if charts.is_empty() { p.muted { "No questionnaires recorded yet." } }
            div.charts { @for chart in charts { figure { (svg(chart)) } } }
            p.muted { "Shaded bands are the instrument's severity ranges (named at the right); the dashed red line is the clinical cutoff; the blue band is the reliable-change range around the first score; triangles on the time axis are missed sessions." }
        }
        section.card {
            h2 { "Alert history" }
            @if alerts.is_empty() { p.muted { "No alerts." } }
            table { tbody { @for alert in alerts.iter().rev() {
                tr {
                    td { span class={ "chip need-" (alert_class(alert.kind)) } { (serde_label(&alert.kind).replace('_', " ")) } }
                    td { (alert.detail) }
                    td { (alert.raised_at.format("%Y-%m-%d")) }
                }
            } } }
        }
        section.card {
            h2 { "Consents" }
            ul { @for scope in [ConsentScope::Treatment, ConsentScope::Reporting, ConsentScope::Research] {
                li { (serde_label(&scope)) ": " (if practice.has_consent(client_id, scope) { "given" } else { "not given" }) }
            } }
        }
        section.card {
            h2 { "Groups" }
            ul { @for (group_id, group) in &groups {
                li {
                    @if may_read(&viewer.caller, group) { a href={ "/app/groups/" (group_id) } { (group.name) } } @else { (group_id) }
                    (membership_note(group, client_id))
                }
            } }
        }
    }
}

// ---- Practice ----

pub(super) async fn practice(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Response, Problem> {
    let view = allow(&viewer.caller, Action::ReadReport, Resource::Practice)?;
    let k = state.reporting.reporter_min_count;
    let now = Utc::now();
    let body = state.reports.read(|p| practice_view(p, view, k, now));
    let frame = Frame {
        viewer: Some(&viewer),
        title: "Practice",
        live: true,
    };
    // Aggregates only: no client is shown.
    Ok(page(frame, body).into_response())
}

/// One row of outcome counts: by group, focus or facilitator.
#[derive(Default)]
struct Counts {
    people: u32,
    recovered: u32,
    improved: u32,
    unchanged: u32,
    deteriorated: u32,
}

fn add(total: &mut Counts, counts: &Counts) {
    total.people += counts.people;
    total.recovered += counts.recovered;
    total.improved += counts.improved;
    total.unchanged += counts.unchanged;
    total.deteriorated += counts.deteriorated;
}

fn practice_view(practice: &Practice, view: View, k: u32, now: DateTime<Utc>) -> Markup {
    let aggregate = view == View::Aggregate;
    let mut retention = reports::retention(practice, &RetentionScope::Practice, now);
    if aggregate {
        use circle_projections::reports::ReporterForm;
        retention = retention.for_reporters(k);
    }
    let mut by_group = Vec::new();
    let mut by_focus: std::collections::BTreeMap<String, Counts> = Default::default();
    let mut by_facilitator: std::collections::BTreeMap<String, Counts> = Default::default();
    for (group_id, group) in &practice.groups {
        let mut counts = Counts::default();
        for instrument in ["PHQ-9", "GAD-7"] {
            if let Some(report) = reports::outcomes(practice, group_id, instrument, now) {
                let s = &report.summary;
                counts.people += s.clients_with_two_or_more.unwrap_or(0);
                counts.recovered += s.recovered.unwrap_or(0);
                counts.improved += s.improved.unwrap_or(0);
                counts.unchanged += s.unchanged.unwrap_or(0);
                counts.deteriorated += s.deteriorated.unwrap_or(0);
            }
        }
        let attendance =
            reports::attendance(practice, group_id, now).and_then(|a| a.attendance_rate);
        let focus = group.focus.map_or("", focus_label).to_string();
        add(by_focus.entry(focus).or_default(), &counts);
        for facilitator in &group.facilitators {
            add(
                by_facilitator.entry(facilitator.clone()).or_default(),
                &counts,
            );
        }
        by_group.push((group.name.clone(), counts, attendance));
    }
    let shown = |n: u32, people: u32| -> String {
        if aggregate && !reports::shown_to_reporters(people, k) {
            format!("fewer than {k}")
        } else {
            n.to_string()
        }
    };
    let table = |title: &str, rows: Vec<(String, &Counts, Option<f64>)>| {
        html! {
            h3 { (title) }
            table {
                thead { tr { th { "" } th.num { "Measured twice" } th.num { "Recovered" } th.num { "Improved" } th.num { "Unchanged" } th.num { "Deteriorated" } @if title == "By group" { th.num { "Attendance" } } } }
                tbody { @for (name, c, attendance) in rows {
                    tr {
                        td { (name) }
                        td.num { (shown(c.people, c.people)) }
                        td.num { (shown(c.recovered, c.people)) } td.num { (shown(c.improved, c.people)) }
                        td.num { (shown(c.unchanged, c.people)) } td.num { (shown(c.deteriorated, c.people)) }
                        @if title == "By group" { td.num { (rate(attendance)) } }
                    }
                } }
            }
        }
    };
    html! {
        h1 { "Practice" }
        @if aggregate { p.notice { "The aggregate form: no member rows, and no number computed from fewer than " (k) " people." } }
        section.card {
            h2 { "Retention (Kaplan–Meier, 95% band)" }
            (retention_block(&retention))
        }
        section.card {
            h2 { "Outcomes on PHQ-9 and GAD-7" }
            p.muted { "Reliable and clinically significant change from each member's first to latest score." }
            (table("By group", by_group.iter().map(|(n, c, a)| (n.clone(), c, *a)).collect()))
            (table("By focus", by_focus.iter().map(|(n, c)| (n.replace('_', " "), c, None)).collect()))
            (table("By facilitator", by_facilitator.iter().map(|(n, c)| (n.clone(), c, None)).collect()))
        }
    }
}

// ---- Audit ----

#[derive(Deserialize)]
pub(super) struct AsOf {
    as_of: Option<NaiveDate>,
}

/// The auditor's view: read-only, no personal data: the practice's figures as the
/// log stood at the end of a chosen day, and where the log and its proofs are.
pub(super) async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<AsOf>,
) -> Result<Response, Problem> {
    allow(&viewer.caller, Action::ReadAuditTrail, Resource::Practice)?;
    let head = state.store.head_position().await?;
    let figures = match query.as_of {
        Some(day) => {
            let at = day
                .and_hms_opt(23, 59, 59)
                .map(|t| t.and_utc())
                .unwrap_or_else(Utc::now);
            let _slot = state.as_of_limit.try_enter()?;
            let practice = crate::as_of::practice_as_of(&state.store, state.reporting.alert_rules, at)
                .await
                .map_err(|error| {
                    tracing::error!(error = %crate::errors::ErrorChain(&error), "folding the log for the audit page");
                    Problem::unavailable()
                })?;
            Some((
                day,
                reports::retention(&practice, &RetentionScope::Practice, at),
            ))
        }
        None => None,
    };
    let body = html! {
        h1 { "Audit" }
        p { "The log holds " (head) " events. Personal data stays sealed here." }
        section.card {
            h2 { "The practice as of a date" }
            form method="get" action="/app/audit" {
                label for="as_of" { "As of the end of " }
                input #as_of type="date" name="as_of" value=[query.as_of.map(|d| d.to_string())] required;
                " " button type="submit" { "Show" }
            }
            @if let Some((day, report)) = &figures {
                h3 { "As of " (day) }
                (retention_block(report))
            }
        }
        section.card {
            h2 { "Verify it yourself" }
            ul {
                li { code { "GET /api/v1/audit/checkpoint" } " — the signed checkpoint" }
                li { code { "GET /api/v1/audit/events" } " — the log with its hash chain (NDJSON with Accept: application/x-ndjson)" }
                li { code { "GET /api/v1/audit/access" } " — who saw whose data, and why" }
            }
        }
    };
    let frame = Frame {
        viewer: Some(&viewer),
        title: "Audit",
        live: false,
    };
    Ok(page(frame, body).into_response())
}

// ---- small views ----

fn serde_label<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn focus_label(focus: circle_events::group::Focus) -> &'static str {
    use circle_events::group::Focus::*;
    match focus {
        Anxiety => "Anxiety",
        Depression => "Depression",
        Grief => "Grief",
        Trauma => "Trauma",
        Relationships => "Relationships",
        AddictionRecovery => "Addiction recovery",
        PersonalGrowth => "Personal growth",
    }
}

fn signed(score: circle_events::instruments::Score) -> String {
    if score.as_f64() > 0.0 {
        format!("+{score}")
    } else {
        score.to_string()
    }
}

fn count(n: Option<u32>) -> String {
    n.map_or("—".to_string(), |n| n.to_string())
}

fn rate(r: Option<f64>) -> String {
    r.map_or("—".to_string(), |r| format!("{:.0}%", r * 100.0))
}

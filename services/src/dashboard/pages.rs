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
use circle_projections::practice::{
    alliance_concern, AllianceConcern, GroupRecord, ItemHistory, Practice,
};
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

/// Groups one Today page shows (an admin sees every group of the practice).
const GROUPS_PER_PAGE: usize = 20;
/// Rows the practice-wide "needs you now" list shows beyond its risk items (every
/// unreviewed risk item is always listed).
const URGENT_ROWS: usize = 25;

#[derive(Deserialize, Default)]
pub(super) struct TodayPage {
    page: Option<usize>,
}

/// "Who needs me now?": the caller's groups with their next session, and each
/// group's members by need. Groups are paged, the most urgent first; when there is
/// more than one page, the members who need someone now, from every group, come
/// first.
pub(super) async fn today(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(page_asked): Query<TodayPage>,
) -> Response {
    let now = Utc::now();
    let page = page_asked.page.unwrap_or(1).max(1);
    let (body, shown) = state
        .reports
        .read(|practice| today_view(practice, &viewer, now, page));
    let frame = Frame {
        viewer: Some(&viewer),
        title: "Today",
        live: true,
    };
    html_page(frame, body, shown)
}

/// The order needs rank in: the rule's rank, then the most recent first.
fn by_need(a: &MemberNeed, b: &MemberNeed) -> std::cmp::Ordering {
    match (&a.need, &b.need) {
        (Some(x), Some(y)) => x.kind.cmp(&y.kind).then(y.at.cmp(&x.at)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

fn today_view(
    practice: &Practice,
    viewer: &Viewer,
    now: DateTime<Utc>,
    page: usize,
) -> (Markup, Vec<String>) {
    let triage = Triage::new(practice);
    let today = now.date_naive();
    let mut groups: Vec<(&String, &GroupRecord, Vec<MemberNeed>)> = practice
        .groups
        .iter()
        .filter(|(_, g)| g.closed_on.is_none() && may_read(&viewer.caller, g))
        .filter_map(|(id, g)| Some((id, g, triage.group(id, today)?)))
        .collect();
    // The group whose neediest member ranks first comes first (rows are sorted).
    groups.sort_by(|a, b| {
        let neediest = |rows: &[MemberNeed]| rows.first().cloned();
        match (neediest(&a.2), neediest(&b.2)) {
            (Some(x), Some(y)) => by_need(&x, &y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
        .then(a.1.name.cmp(&b.1.name))
        .then(a.0.cmp(b.0))
    });
    let pages = groups.len().div_ceil(GROUPS_PER_PAGE).max(1);
    let page = page.min(pages);
    let mut urgent: Vec<(&String, &GroupRecord, &MemberNeed)> = Vec::new();
    if pages > 1 {
        urgent = groups
            .iter()
            .flat_map(|(id, g, rows)| {
                rows.iter()
                    .filter(|r| r.need.is_some())
                    .map(move |r| (*id, *g, r))
            })
            .collect();
        urgent.sort_by(|a, b| by_need(a.2, b.2).then(a.2.client_id.cmp(&b.2.client_id)));
        let risks = urgent
            .iter()
            .filter(|(_, _, r)| r.need.as_ref().is_some_and(|n| n.kind == NeedKind::Risk))
            .count();
        urgent.truncate(risks + URGENT_ROWS);
    }
    let with_a_need: usize = groups
        .iter()
        .map(|(_, _, rows)| rows.iter().filter(|r| r.need.is_some()).count())
        .sum();
    let on_page = &groups[((page - 1) * GROUPS_PER_PAGE).min(groups.len())
        ..(page * GROUPS_PER_PAGE).min(groups.len())];
    let shown = on_page
        .iter()
        .flat_map(|(_, _, rows)| rows.iter().map(|r| r.client_id.clone()))
        .chain(urgent.iter().map(|(_, _, r)| r.client_id.clone()))
        .collect();
    let body = html! {
        h1 { "Today" }
        @if groups.is_empty() { p.notice { "You facilitate no open groups." } }
        @if !urgent.is_empty() {
            section.card aria-labelledby="urgent" {
                h2 #urgent { "Needs someone now" }
                p.muted {
                    "Across all " (groups.len()) " groups, by the caseload rule: every unreviewed risk item, then the "
                    (URGENT_ROWS) " most pressing others (" (with_a_need) " members have a rule fired in all)."
                }
                table.stack {
                    thead { tr { th { "Member" } th { "Group" } th { "Needs" } th { "Why" } th { "When" } } }
                    tbody {
                        @for (group_id, group, row) in &urgent {
                            tr {
                                td data-label="Member" { a href={ "/app/clients/" (row.client_id) } { (row.client_id) } }
                                td data-label="Group" { a href={ "/app/groups/" (group_id) } { (group.name) } }
                                (need_cells(viewer, group_id, row))
                            }
                        }
                    }
                }
            }
        }
        @if pages > 1 { (page_links(page, pages, "Groups, page by page")) }
        @for (group_id, group, rows) in on_page {
            section.card aria-labelledby={ "g-" (group_id) } {
                h2 #{ "g-" (group_id) } { a href={ "/app/groups/" (group_id) } { (group.name) } }
                p.muted { (next_session(group, now)) " · " (rows.len()) " members" }
                @if rows.is_empty() { p.muted { "No current members." } } @else {
                    table.stack {
                        thead { tr { th { "Member" } th { "Needs" } th { "Why" } th { "When" } } }
                        tbody {
                            @for row in rows {
                                tr {
                                    td data-label="Member" { a href={ "/app/clients/" (row.client_id) } { (row.client_id) } }
                                    (need_cells(viewer, group_id, row))
                                }
                            }
                        }
                    }
                }
            }
        }
        @if pages > 1 { (page_links(page, pages, "Groups, more pages")) }
    };
    (body, shown)
}

/// A Today row's need: the rule that fired (with the review button for a risk item),
/// why, and when.
fn need_cells(viewer: &Viewer, group_id: &str, row: &MemberNeed) -> Markup {
    html! {
        @match &row.need {
            Some(need) => {
                td data-label="Needs" {
                    span class={ "chip need-" (kind_class(need.kind)) } { (need.kind.label()) }
                    @if need.kind == NeedKind::Risk && viewer.caller.0.role != Role::Auditor {
                        " " (super::forms::review_button(viewer, group_id, &row.client_id))
                    }
                }
                td data-label="Why" { (need.detail) }
                td data-label="When" { time datetime=(need.at.to_rfc3339()) { (need.at.format("%Y-%m-%d")) } }
            }
            None => {
                td data-label="Needs" { span.chip.need-none { "No rule fired" } }
                td.muted data-label="Why" { "—" } td.muted data-label="When" { "—" }
            }
        }
    }
}

/// Plain links to each page of groups (no script needed).
fn page_links(page: usize, pages: usize, label: &str) -> Markup {
    html! {
        nav.pages aria-label=(label) {
            @if page > 1 { a href={ "/app?page=" (page - 1) } rel="prev" { "← Previous" } " " }
            @for n in 1..=pages {
                @if n == page { span aria-current="page" { (n) } } @else { a href={ "/app?page=" (n) } { (n) } }
                " "
            }
            @if page < pages { a href={ "/app?page=" (page + 1) } rel="next" { "Next →" } }
        }
    }
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
            p.muted { "Latest " (grid.len()) " sessions. Unrecorded marks count as no-shows; a blank cell is a date the client was not a member; a small \"c\" marks a corrected mark (its title says what it replaced)." }
            p.muted.phone-only { "On a narrow screen: the latest six sessions." }
            (attendance_grid(group, &members, grid))
        }
        section.card {
            h2 { "Latest scores" }
            @if outcomes.is_empty() { p.muted { "No member has two scores on an outcome measure yet." } }
            @for report in &outcomes {
                h3 { (report.instrument) }
                table.stack {
                    thead { tr { th scope="col" { "Member" } th.num scope="col" { "Baseline" } th.num scope="col" { "Latest" } th.num scope="col" { "Change" } th scope="col" { "Classification" } } }
                    tbody {
                        @for row in report.clients.iter().flatten() {
                            @let class = serde_label(&row.classification);
                            tr {
                                td data-label="Member" { a href={ "/app/clients/" (row.client_id) } { (row.client_id) } }
                                td.num data-label="Baseline" { (row.baseline) } td.num data-label="Latest" { (row.latest) }
                                td.num data-label="Change" { (signed(row.change)) }
                                td data-label="Classification" { span class={ "chip cls-" (class) } { (class.replace('_', " ")) } }
                            }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { "Alliance per session" }
            p.muted { "SRS/GSRS totals; a total below the cutoff, or else a fall since the member's previous one, is flagged in words (the rule the alerts use)." }
            (alliance_grid(group, &members, grid))
        }
        section.card {
            h2 { "Retention" }
            (retention_block(&retention))
        }
        section.card {
            h2 { "Alerts" }
            @if alerts.is_empty() { p.muted { "No alerts." } }
            table.stack {
                thead { tr { th scope="col" { "Alert" } th scope="col" { "Member" } th scope="col" { "Why" } th scope="col" { "When it happened" } } }
                tbody {
                    @for alert in alerts.iter().rev().take(30) {
                        tr {
                            td data-label="Alert" { span class={ "chip need-" (alert_class(alert.kind)) } { (serde_label(&alert.kind).replace('_', " ")) } }
                            td data-label="Member" { a href={ "/app/clients/" (alert.client_id) } { (alert.client_id) } }
                            td data-label="Why" { (alert.detail) }
                            td data-label="When" { (alert_date(alert)) }
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
    // A correction shows as one: the mark now, "corrected", and what it replaced.
    let earlier = session
        .corrected
        .get(client_id)
        .filter(|_| !session.cancelled);
    let title = match earlier {
        Some(earlier) => {
            let earlier: Vec<&str> = earlier.iter().map(|s| status_label(*s)).collect();
            format!(
                "{title}, corrected: recorded earlier as {}",
                earlier.join(", then ")
            )
        }
        None => title,
    };
    html! {
        td class={ "att-" (class) } title=(title) {
            (text)
            @if earlier.is_some() { sup.corrected aria-hidden="true" { "c" } }
            span.skip { (title) }
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
                                                @let previous = i.checked_sub(1).map(|p| scores[p].total);
                                                @let concern = catalogue.current(instrument).and_then(|d| alliance_concern(d, previous, value));
                                                td {
                                                    (value)
                                                    @match concern {
                                                        Some(AllianceConcern::Fell { from, .. }) => { br; span.drop title={ "fell from " (from) } { "▼ drop" } }
                                                        Some(AllianceConcern::BelowCutoff { cutoff, .. }) => { br; span.drop title={ "below " (cutoff) } { "below cutoff" } }
                                                        None => {}
                                                    }
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
        crate::http::clients::personal_data(&state, &client, client_id, view, false).await?;
    let name = personal.and_then(|p| p.display_name);
    let body = state.reports.read(|p| {
        let body = member_view(p, client_id, name.as_deref(), erased, view, &viewer);
        html! { (body) (item_tables(p, client_id)) }
    });
    let frame = Frame {
        viewer: Some(&viewer),
        title: client_id,
        live: true,
    };
    Ok(html_page(frame, body, vec![client_id.to_string()]))
}

/// Per outcome instrument, each item's score at the latest administrations, and how
/// far it moved from the first (in words: better or worse, by how much). Read from
/// the projection, which keeps each member's first and latest items.
fn item_tables(practice: &Practice, client_id: &str) -> Markup {
    let catalogue = Catalogue::builtin();
    let history = |instrument: &str| {
        ItemHistory::merged(
            practice
                .groups
                .values()
                .filter_map(|g| g.item_history(instrument, client_id)),
        )
    };
    html! {
        @for instrument in OUTCOME_INSTRUMENTS {
            @let history = history(instrument);
            @if let (Some(definition), Some(first), Some(latest)) = (catalogue.current(instrument), history.first.as_ref(), history.latest.last()) {
                @let shown = &history.latest;
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
            table.stack {
                thead { tr { th scope="col" { "Alert" } th scope="col" { "Why" } th scope="col" { "When it happened" } } }
                tbody { @for alert in alerts.iter().rev() {
                tr {
                    td data-label="Alert" { span class={ "chip need-" (alert_class(alert.kind)) } { (serde_label(&alert.kind).replace('_', " ")) } }
                    td data-label="Why" { (alert.detail) }
                    td data-label="When" { (alert_date(alert)) }
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
    let k = state.reporting.projection.reporter_min_count;
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
    // Every outcome measure (one with a reliable-change value) some member took.
    let catalogue = Catalogue::builtin();
    let instruments: std::collections::BTreeSet<&str> = practice
        .groups
        .values()
        .flat_map(|g| g.measures.keys())
        .filter(|i| {
            catalogue
                .current(i)
                .is_some_and(|d| d.reliable_change.is_some())
        })
        .map(String::as_str)
        .collect();
    let mut attendance = Vec::new();
    for (group_id, group) in &practice.groups {
        let rate = reports::attendance(practice, group_id, now).and_then(|a| a.attendance_rate);
        attendance.push((group.name.clone(), rate));
    }
    let shown = |n: u32, people: u32| -> String {
        if aggregate && !reports::shown_to_reporters(people, k) {
            format!("fewer than {k}")
        } else {
            n.to_string()
        }
    };
    let table = |title: &str, first: &str, rows: Vec<(String, &Counts)>| {
        html! {
            h4 { (title) }
            table.stack {
                thead { tr { th scope="col" { (first) } th.num scope="col" { "Measured twice" } th.num scope="col" { "Recovered" } th.num scope="col" { "Improved" } th.num scope="col" { "Unchanged" } th.num scope="col" { "Deteriorated" } } }
                tbody { @for (name, c) in rows {
                    tr {
                        td data-label=(first) { (name) }
                        td.num data-label="Measured twice" { (shown(c.people, c.people)) }
                        td.num data-label="Recovered" { (shown(c.recovered, c.people)) }
                        td.num data-label="Improved" { (shown(c.improved, c.people)) }
                        td.num data-label="Unchanged" { (shown(c.unchanged, c.people)) }
                        td.num data-label="Deteriorated" { (shown(c.deteriorated, c.people)) }
                    }
                } }
            }
        }
    };
    let by_instrument = |instrument: &str| {
        let mut by_group = Vec::new();
        let mut by_focus: std::collections::BTreeMap<String, Counts> = Default::default();
        let mut by_facilitator: std::collections::BTreeMap<String, Counts> = Default::default();
        for (group_id, group) in &practice.groups {
            let Some(report) = reports::outcomes(practice, group_id, instrument, now) else {
                continue;
            };
            let s = &report.summary;
            let counts = Counts {
                people: s.clients_with_two_or_more.unwrap_or(0),
                recovered: s.recovered.unwrap_or(0),
                improved: s.improved.unwrap_or(0),
                unchanged: s.unchanged.unwrap_or(0),
                deteriorated: s.deteriorated.unwrap_or(0),
            };
            if counts.people == 0 {
                continue;
            }
            let focus = group.focus.map_or("", focus_label).to_string();
            add(by_focus.entry(focus).or_default(), &counts);
            for facilitator in &group.facilitators {
                add(
                    by_facilitator.entry(facilitator.clone()).or_default(),
                    &counts,
                );
            }
            by_group.push((group.name.clone(), counts));
        }
        html! {
            h3 { (instrument) }
            (table("By focus", "Focus", by_focus.iter().map(|(n, c)| (n.clone(), c)).collect()))
            (table("By facilitator", "Facilitator", by_facilitator.iter().map(|(n, c)| (n.clone(), c)).collect()))
            details {
                summary { "By group (" (by_group.len()) " groups)" }
                (table("By group", "Group", by_group.iter().map(|(n, c)| (n.clone(), c)).collect()))
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
            h2 { "Outcomes on every measure taken" }
            p.muted { "Reliable and clinically significant change from each member's first to latest score, per measure: " (instruments.iter().copied().collect::<Vec<_>>().join(", ")) "." }
            @if instruments.is_empty() { p.muted { "No outcome measure recorded yet." } }
            @for instrument in &instruments { (by_instrument(instrument)) }
        }
        section.card {
            h2 { "Attendance by group" }
            details {
                summary { "Attendance rates (" (attendance.len()) " groups)" }
                table.stack {
                    thead { tr { th scope="col" { "Group" } th.num scope="col" { "Attendance" } } }
                    tbody { @for (name, rate_) in &attendance {
                        tr { td data-label="Group" { (name) } td.num data-label="Attendance" { (rate(*rate_)) } }
                    } }
                }
            }
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
            let practice = crate::as_of::practice_as_of(&state.store, &state.reporting.projection, at)
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
    let groups: Vec<(String, String)> = state.reports.read(|p| {
        p.groups
            .iter()
            .map(|(id, g)| (id.clone(), g.name.clone()))
            .collect()
    });
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
            h2 { "A group's or a member's history" }
            p.muted { "Every event of the stream in order: who recorded it, when it happened and when it was recorded, and what a correction replaced. Personal data stays sealed." }
            form method="get" action="/app/audit/history" {
                label for="history-group" { "Group" }
                select #history-group name="group_id" {
                    option value="" { "— choose a group —" }
                    @for (id, name) in &groups { option value=(id) { (name) " (" (id) ")" } }
                }
                " " label for="history-client" { "or member (client id)" }
                input #history-client type="text" name="client_id" autocomplete="off";
                " " button type="submit" { "Show history" }
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

#[derive(Deserialize)]
pub(super) struct HistoryAsked {
    group_id: Option<String>,
    client_id: Option<String>,
    after: Option<i64>,
}

/// Events of the history page.
const HISTORY_PAGE: i64 = 200;

/// A group's or a member's history for the auditor: the stream's events read by the
/// history API's own query (personal data sealed), access-logged like every page
/// that names clients.
pub(super) async fn history(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(asked): Query<HistoryAsked>,
) -> Result<Response, Problem> {
    use crate::http::history::{read_client_history, read_group_history, HistoryQuery};
    let query = HistoryQuery {
        after: asked.after,
        limit: Some(HISTORY_PAGE),
    };
    let nonempty = |id: &Option<String>| {
        id.as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(String::from)
    };
    let (title, link, (history, disclosed)) =
        match (nonempty(&asked.group_id), nonempty(&asked.client_id)) {
            (Some(group_id), _) => {
                let id = GroupId::try_from(group_id.clone())
                    .map_err(|_| Problem::bad_request("group_id", "is not a group id"))?;
                let link = format!("/app/audit/history?group_id={group_id}");
                (
                    format!("Group {group_id}: history"),
                    link,
                    read_group_history(&state, &viewer.caller, &id, &query).await?,
                )
            }
            (None, Some(client_id)) => {
                let id = ClientId::try_from(client_id.clone())
                    .map_err(|_| Problem::bad_request("client_id", "is not a client id"))?;
                let link = format!("/app/audit/history?client_id={client_id}");
                (
                    format!("Member {client_id}: history"),
                    link,
                    read_client_history(&state, &viewer.caller, &id, &query).await?,
                )
            }
            (None, None) => {
                return Err(Problem::bad_request(
                    "group_id",
                    "choose a group or give a client id",
                ))
            }
        };
    let body = html! {
        h1 { (title) }
        p.muted { "Read-only. Personal data stays sealed: a sealed field shows as “sealed”. " a href="/app/audit" { "Back to Audit" } }
        table.stack.history {
            thead { tr {
                th scope="col" { "Position" } th scope="col" { "#" } th scope="col" { "Event" }
                th scope="col" { "Happened" } th scope="col" { "Recorded" } th scope="col" { "By" }
                th scope="col" { "Facts" } th scope="col" { "Corrects" }
            } }
            tbody { @for e in &history.events {
                tr {
                    td data-label="Position" { (e.position) }
                    td data-label="#" { (e.sequence) }
                    td data-label="Event" { (e.event_type) " v" (e.event_version) }
                    td data-label="Happened" { time datetime=(e.occurred_at.to_rfc3339()) { (e.occurred_at.format("%Y-%m-%d %H:%M")) } }
                    td data-label="Recorded" { time datetime=(e.recorded_at.to_rfc3339()) { (e.recorded_at.format("%Y-%m-%d %H:%M")) } }
                    td data-label="By" { (e.actor.role) " " (e.actor.id) }
                    td data-label="Facts" { (payload_facts(&e.payload)) }
                    td data-label="Corrects" {
                        @if let Some(c) = &e.corrects {
                            "event #" (c.sequence)
                            @if let Some(at) = c.position { " (position " (at) ")" }
                        } @else { span.muted { "—" } }
                    }
                }
            } }
        }
        @if let Some(next) = history.next_after {
            p { a href={ (link) "&after=" (next) } { "Later events →" } }
        }
    };
    let frame = Frame {
        viewer: Some(&viewer),
        title: &title,
        live: false,
    };
    Ok(html_page(frame, body, disclosed))
}

/// An event's payload as `field: value` pairs; a sealed field says so, never its
/// ciphertext (which is no use to a reader, and not theirs to keep).
fn payload_facts(payload: &serde_json::Value) -> Markup {
    use serde_json::Value;
    fn text(value: &Value) -> String {
        match value {
            Value::Object(o) if o.contains_key("sealed") => "sealed".to_string(),
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .iter()
                .map(|(k, v)| format!("{k}: {}", text(v)))
                .collect::<Vec<_>>()
                .join(", "),
            Value::Array(a) => format!("[{}]", a.iter().map(text).collect::<Vec<_>>().join(", ")),
            other => other.to_string(),
        }
    }
    // Stored as `{"EventType": {fields}}`: the fields are what matter.
    let fields = match payload {
        Value::Object(o) if o.len() == 1 => o.values().next().unwrap_or(payload),
        _ => payload,
    };
    html! {
        @match fields {
            Value::Object(o) => { ul.facts { @for (k, v) in o { li { span.muted { (k) ": " } (text(v)) } } } }
            other => { (text(other)) }
        }
    }
}

// ---- small views ----

/// When an alert's event happened (a questionnaire's or session's date), with when
/// it was recorded in the title when that was another day.
fn alert_date(alert: &circle_projections::practice::Alert) -> Markup {
    let happened = alert.occurred_at.date_naive();
    let recorded = alert.raised_at.date_naive();
    html! {
        @if happened == recorded {
            time datetime=(alert.occurred_at.to_rfc3339()) { (happened) }
        } @else {
            time datetime=(alert.occurred_at.to_rfc3339()) title={ "recorded " (recorded) } { (happened) }
        }
    }
}

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

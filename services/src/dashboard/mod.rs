//! The clinician dashboard: server-rendered HTML under `/app`, from the same binary
//! and the same state as the API.
//!
//! Pages read the live projection ([`crate::projector::LiveReports`]) and ask the one
//! access policy through the same guard as `/api/v1` (every `/app` route has its entry
//! in [`crate::policy::ROUTES`]); pages that show client data are recorded in the
//! access log as the JSON reads are ([`crate::http::guard::disclose`]). Forms post
//! through the one write skeleton ([`crate::http::write::Writer`]).
//!
//! The browser layer ([`browser`]) sits in front: it turns the session cookie into the
//! caller's bearer token (so the guard authenticates it like any API request, and a
//! revoked token is refused at once), checks the CSRF token of every form, and turns a
//! refusal into a page: 401 into the sign-in form, others into an HTML error page.
//!
//! - [`session`]: the cookie and the CSRF token.
//! - [`layout`]: the one page layout, the stylesheet, htmx.
//! - [`pages`]: Today, Group, Member, Practice, Audit.
//! - [`forms`]: the weekly forms.
//! - [`charts`]: report data to SVG, pure.
//! - [`live`]: Server-Sent Events keyed by log position.

pub mod charts;
mod forms;
mod layout;
mod live;
mod pages;
pub mod session;

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;

use crate::http::extract::Caller;
use crate::http::AppState;
use session::Session;

/// The most a dashboard form may send.
const FORM_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/app", get(pages::today))
        .route(
            "/app/sign-in",
            get(pages::sign_in_page).post(pages::sign_in),
        )
        .route("/app/sign-out", post(pages::sign_out))
        .route("/app/assets/{file}", get(layout::asset))
        .route("/app/events", get(live::events))
        .route("/app/practice", get(pages::practice))
        .route("/app/audit", get(pages::audit))
        .route("/app/audit/history", get(pages::history))
        .route("/app/clients/{client_id}", get(pages::member))
        .route("/app/groups/{group_id}", get(pages::group))
        .route("/app/groups/{group_id}/sessions", post(forms::schedule))
        .route(
            "/app/groups/{group_id}/sessions/{session_id}/cancellation",
            post(forms::cancel),
        )
        .route(
            "/app/groups/{group_id}/sessions/{session_id}/attendance",
            get(forms::attendance_form).post(forms::attendance),
        )
        .route(
            "/app/groups/{group_id}/sessions/{session_id}/feedback",
            get(forms::feedback_form).post(forms::feedback),
        )
        .route("/app/groups/{group_id}/members", post(forms::join))
        .route("/app/groups/{group_id}/departures", post(forms::discharge))
        .route(
            "/app/groups/{group_id}/members/{client_id}/risk-review",
            post(forms::review_risk),
        )
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::http::guard::guard,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::http::limit,
        ))
        .layer(middleware::from_fn(browser))
}

/// Cookie to bearer token, the CSRF check of every form but sign-in's (which checks
/// its own), and refusals as pages (see the module comment).
async fn browser(mut request: Request, next: Next) -> Response {
    let session = Session::from_headers(request.headers(), Utc::now());
    let headers = request.headers_mut();
    // The dashboard authenticates by its cookie only: a bearer header from a page
    // would bypass the CSRF check.
    headers.remove(header::AUTHORIZATION);
    if let Some(session) = &session {
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", session.token)) {
            headers.insert(header::AUTHORIZATION, value);
        }
        request.extensions_mut().insert(session.clone());
    }
    if request.method() == Method::POST && request.uri().path() != "/app/sign-in" {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = to_bytes(body, FORM_LIMIT).await else {
            return layout::error_page(StatusCode::PAYLOAD_TOO_LARGE, "This form is too large.");
        };
        let submitted = form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == session::CSRF_FIELD)
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        match &session {
            Some(session) if session.csrf_matches(&submitted) => {}
            Some(_) => {
                return layout::error_page(
                    StatusCode::FORBIDDEN,
                    "This form has expired or did not come from this dashboard: nothing was recorded. Go back, reload the page and send it again.",
                )
            }
            None => return Redirect::to("/app/sign-in").into_response(),
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    let response = next.run(request).await;
    protect(as_page(response))
}

/// What every dashboard answer carries: pages hold client data, so no cache keeps
/// them (assets set their own long cache), and no other site may frame or post into
/// them. Styles may be inline (htmx adds its indicator style).
fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A refusal from the guard or a handler (problem+json) as a page.
fn as_page(response: Response) -> Response {
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !is_problem {
        return response;
    }
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        let mut redirect = Redirect::to("/app/sign-in").into_response();
        redirect
            .headers_mut()
            .insert(header::SET_COOKIE, session::clear_cookie(false));
        return redirect;
    }
    let message = match status {
        StatusCode::FORBIDDEN => "You do not have access to this page. A clinician sees the groups they facilitate and those groups' members.",
        StatusCode::NOT_FOUND => "There is nothing at this address.",
        StatusCode::SERVICE_UNAVAILABLE => "Circle cannot answer just now (nothing was shown or recorded). Try again in a moment.",
        _ => "Circle could not answer this request.",
    };
    let mut page = layout::error_page(status, message);
    if let Some(retry) = response.headers().get(header::RETRY_AFTER) {
        page.headers_mut()
            .insert(header::RETRY_AFTER, retry.clone());
    }
    page
}

/// Who is looking, with their session: what every signed-in page is given.
pub struct Viewer {
    pub caller: Caller,
    pub session: Session,
    /// The page's path and query, which live updates fetch again.
    pub path: String,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let caller = Caller::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or_else(|| Redirect::to("/app/sign-in").into_response())?;
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/app".to_string(), |p| p.as_str().to_string());
        Ok(Viewer {
            caller,
            session,
            path,
        })
    }
}

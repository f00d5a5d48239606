//! The one page layout, error pages, and the static assets served with the binary.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::Viewer;
use crate::auth::Role;

/// htmx 2.0.11 (`htmx.org` on the npm registry, `dist/htmx.min.js`, fetched with
/// `npm pack htmx.org@2`), and its SSE extension 2.2.4 (`htmx-ext-sse`,
/// `dist/sse.min.js`): vendored, served from the binary, never from a CDN.
const HTMX: &str = include_str!("../../assets/htmx-2.0.11.min.js");
const HTMX_SSE: &str = include_str!("../../assets/htmx-ext-sse-2.2.4.min.js");
const STYLESHEET: &str = include_str!("../../assets/circle.css");
/// Bumped with the stylesheet, so its long cache never serves a stale copy.
const STYLESHEET_NAME: &str = "circle-2.css";
/// The page icon: a ring, in the stylesheet's link blue.
const ICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><circle cx="16" cy="16" r="11" fill="none" stroke="#1f5fa8" stroke-width="6"/></svg>"##;
const ICON_NAME: &str = "circle-icon-1.svg";

/// Serves a vendored asset; the names carry their version, so they are cached for a year.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx-2.0.11.min.js" => (HTMX, "text/javascript"),
        "htmx-ext-sse-2.2.4.min.js" => (HTMX_SSE, "text/javascript"),
        STYLESHEET_NAME => (STYLESHEET, "text/css"),
        ICON_NAME => (ICON, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// How a page is framed: who is looking, and whether it follows the log live.
pub(super) struct Frame<'a> {
    pub viewer: Option<&'a Viewer>,
    pub title: &'a str,
    /// Refetch the page's `#live` part whenever the log moves (not on forms, which
    /// would lose what is being typed).
    pub live: bool,
}

/// The page around `body`: navigation by role, sign-out, stylesheet, htmx.
pub(super) fn page(frame: Frame, body: Markup) -> Markup {
    let role = frame.viewer.map(|v| v.caller.0.role);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · Circle" }
                // Without an icon of its own a browser asks for /favicon.ico (a 404);
                // served like the other assets, as the Content-Security-Policy wants.
                link rel="icon" type="image/svg+xml" href={ "/app/assets/" (ICON_NAME) };
                link rel="stylesheet" href={ "/app/assets/" (STYLESHEET_NAME) };
                script src="/app/assets/htmx-2.0.11.min.js" defer {}
                script src="/app/assets/htmx-ext-sse-2.2.4.min.js" defer {}
            }
            body hx-ext=[frame.live.then_some("sse")] sse-connect=[frame.live.then_some("/app/events")] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/app" { "Circle" }
                    @if let Some(viewer) = frame.viewer {
                        nav aria-label="Main" {
                            @if role != Some(Role::Reporter) { a href="/app" { "Today" } }
                            a href="/app/practice" { "Practice" }
                            @if matches!(role, Some(Role::Admin | Role::Auditor)) { a href="/app/audit" { "Audit" } }
                        }
                        div.who {
                            span { (who(viewer)) }
                            form.inline method="post" action="/app/sign-out" {
                                (csrf(viewer))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main {
                    @if frame.live {
                        div #live hx-get=(frame.viewer.map_or("/app", |v| v.path.as_str())) hx-trigger="sse:log" hx-select="#live" hx-swap="outerHTML" {
                            (body)
                        }
                    } @else {
                        (body)
                    }
                }
            }
        }
    }
}

fn who(viewer: &Viewer) -> String {
    let principal = &viewer.caller.0;
    match &principal.clinician_id {
        Some(id) => format!("{id} (clinician)"),
        None => format!("signed in as {}", principal.role.as_str()),
    }
}

/// The hidden CSRF field every form carries.
pub(super) fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name=(super::session::CSRF_FIELD) value=(viewer.session.csrf()); }
}

/// A whole page saying why a request was refused.
pub(super) fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (status.as_u16()) " · " (title) }
        p.notice { (message) }
        p { a href="/app" { "Back to Today" } }
    };
    let frame = Frame {
        viewer: None,
        title,
        live: false,
    };
    (status, page(frame, body)).into_response()
}

/// An inline SVG chart (drawn by [`super::charts`], which escapes its text).
pub(super) fn svg(chart: String) -> Markup {
    PreEscaped(chart)
}

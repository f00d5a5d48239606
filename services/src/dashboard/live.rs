//! Live pages: a Server-Sent Events stream of log positions.
//!
//! Each event is `event: log`, `id:` and `data:` the projection's position once it
//! has applied new events; an open page's htmx refetches its `#live` part on it. A
//! browser reconnecting sends `Last-Event-ID`, and a position it has not seen is sent
//! at once, so nothing moves unseen across a reconnect. Bursts are coalesced (one
//! event per [`COALESCE`] at most); positions say nothing about any client, so the
//! stream is not an access-log disclosure (the pages it prompts are).
//!
//! Streams end when the process begins to shut down ([`crate::http::Services::shutdown`]),
//! so open browsers never hold up a SIGTERM (axum issue 2673).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http::extract::Caller;
use crate::http::AppState;

/// Events closer together than this are sent as one (the latest position).
const COALESCE: Duration = Duration::from_millis(100);

struct Follow {
    positions: watch::Receiver<i64>,
    /// The last position the browser has seen.
    seen: Option<i64>,
    stop: CancellationToken,
}

pub(super) async fn events(
    State(state): State<AppState>,
    _caller: Caller,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let follow = Follow {
        positions: state.reports.subscribe(),
        seen,
        stop: state.shutdown.clone(),
    };
    Sse::new(stream::unfold(follow, next_event)).keep_alive(KeepAlive::default())
}

async fn next_event(mut follow: Follow) -> Option<(Result<Event, Infallible>, Follow)> {
    let Some(seen) = follow.seen else {
        // A first connection: the page is current; tell the browser where it stands.
        let now = *follow.positions.borrow_and_update();
        follow.seen = Some(now);
        return Some((Ok(position_event("ready", now)), follow));
    };
    loop {
        if follow.stop.is_cancelled() {
            return None;
        }
        let now = *follow.positions.borrow_and_update();
        if now > seen {
            follow.seen = Some(now);
            return Some((Ok(position_event("log", now)), follow));
        }
        tokio::select! {
            _ = follow.stop.cancelled() => return None,
            changed = follow.positions.changed() => {
                if changed.is_err() {
                    return None;
                }
                tokio::time::sleep(COALESCE).await;
            }
        }
    }
}

fn position_event(name: &str, position: i64) -> Event {
    Event::default()
        .event(name)
        .id(position.to_string())
        .data(position.to_string())
}

//! RFC 9457 problem details: every refusal says what is wrong and, where it can,
//! which field.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use circle_events::{Rejection, RejectionKind};
use serde::Serialize;

use crate::commands::{CommandError, LoadError};
use crate::errors::ErrorChain;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        let title = status.canonical_reason().unwrap_or("Error").to_string();
        Problem {
            kind: format!(
                "https://circle.example/problems/{}",
                title.to_lowercase().replace(' ', "-")
            ),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn field(
        status: StatusCode,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Problem {
        let message = message.into();
        let field = field.into();
        let mut problem = Problem::new(status, format!("{field}: {message}"));
        problem.errors.push(FieldError { field, message });
        problem
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem::field(StatusCode::BAD_REQUEST, field, message)
    }

    pub fn unauthorized() -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn unavailable() -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the event store is unavailable; try again shortly",
        )
        .retry_after(1)
    }

    /// The answer to a store failure, logged here with its whole cause chain (`error`
    /// is the outermost error, `cause` the store's own).
    fn store_failed(cause: &crate::store::StoreError, error: &dyn std::error::Error) -> Problem {
        tracing::warn!(error = %ErrorChain(error), "event store failed");
        match cause {
            crate::store::StoreError::DiskFull(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the event store's disk is full: nothing was written; writes resume once an \
                 operator frees space",
            )
            .retry_after(5),
            _ => Problem::unavailable(),
        }
    }

    pub fn overloaded(limit: usize) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is answering its limit of {limit} requests at once; try again shortly"
            ),
        )
        .retry_after(1)
    }

    pub fn timed_out(limit: std::time::Duration) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {} ms; if it was a write with an Idempotency-Key, retry it with the same key",
                limit.as_millis()
            ),
        )
        .retry_after(1)
    }

    /// Adds a `Retry-After` header (seconds).
    pub fn retry_after(mut self, seconds: u32) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    pub fn from_rejection(rejection: &(impl Rejection + ?Sized)) -> Problem {
        let message = rejection.to_string();
        match rejection.kind() {
            RejectionKind::Invalid { field } => {
                // The aggregate's message may lead with the field; keep only the reason.
                let reason = message
                    .strip_prefix(&format!("{field}: "))
                    .unwrap_or(&message)
                    .to_string();
                Problem::field(StatusCode::BAD_REQUEST, field, reason)
            }
            RejectionKind::NotFound => Problem::new(StatusCode::NOT_FOUND, message),
            RejectionKind::Conflict => Problem::new(StatusCode::CONFLICT, message),
            RejectionKind::Rule { field: Some(field) } => {
                Problem::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
            }
            RejectionKind::Rule { field: None } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, message)
            }
        }
    }
}

impl From<LoadError> for Problem {
    fn from(error: LoadError) -> Problem {
        match error {
            LoadError::Store(e) => Problem::store_failed(&e, &e),
            LoadError::Decode { .. } => {
                tracing::error!(error = %ErrorChain(&error), "stored event unreadable");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "a stored event could not be read; operators have been alerted in the log",
                )
            }
        }
    }
}

impl From<crate::slots::Saturated> for Problem {
    fn from(error: crate::slots::Saturated) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).retry_after(1)
    }
}

impl From<crate::appender::SharedStoreError> for Problem {
    fn from(error: crate::appender::SharedStoreError) -> Problem {
        Problem::store_failed(&error.0, &error)
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(error: crate::store::StoreError) -> Problem {
        Problem::from(LoadError::Store(error))
    }
}

impl<E: Rejection> From<CommandError<E>> for Problem {
    fn from(error: CommandError<E>) -> Problem {
        match error {
            CommandError::Rejected(rejection) => Problem::from_rejection(&rejection),
            CommandError::Forbidden => Problem::forbidden("this caller may not change this record"),
            // The same answer as any refused token: whether it ever existed stays unsaid.
            CommandError::TokenNotLive => Problem::unauthorized(),
            e @ CommandError::VersionMismatch { .. } => {
                Problem::field(StatusCode::CONFLICT, "If-Match", e.to_string())
            }
            e @ CommandError::IdempotencyKeyReused => {
                Problem::field(StatusCode::CONFLICT, "Idempotency-Key", e.to_string())
            }
            e @ CommandError::Contended => Problem::new(StatusCode::CONFLICT, e.to_string()),
            e @ CommandError::ClientErased { .. } => {
                Problem::field(StatusCode::UNPROCESSABLE_ENTITY, "client_id", e.to_string())
            }
            CommandError::Store(e) => Problem::store_failed(&e.0, &e),
            CommandError::Load(e) => Problem::from(e),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

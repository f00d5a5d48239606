//! Request extractors that answer in problem+json: the caller, write headers and
//! JSON bodies with the failing field named.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::problem::Problem;
use super::AppState;
use crate::auth::{Principal, Role};

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(Problem::unauthorized)?;
        match state.auth.principal(token).await? {
            Some(principal) => Ok(Caller(principal)),
            None => Err(Problem::unauthorized()),
        }
    }
}

impl Caller {
    pub fn require(&self, roles: &[Role]) -> Result<(), Problem> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "the {} role may not do this",
                self.0.role.as_str()
            )))
        }
    }
}

/// Optional headers every write takes.
pub struct WriteHeaders {
    pub idempotency_key: Option<String>,
    pub if_match: Option<u64>,
    pub correlation_id: Uuid,
}

const MAX_IDEMPOTENCY_KEY: usize = 255;

impl<S: Send + Sync> FromRequestParts<S> for WriteHeaders {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let text = |name: &str| -> Result<Option<String>, Problem> {
            match parts.headers.get(name) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .map(|v| Some(v.trim().to_string()))
                    .map_err(|_| Problem::bad_request(name, "must be visible ASCII")),
            }
        };
        let idempotency_key = text("Idempotency-Key")?;
        if let Some(key) = &idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(Problem::bad_request(
                    "Idempotency-Key",
                    format!("must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
                ));
            }
        }
        let if_match = text("If-Match")?
            .map(|v| {
                v.trim_matches('"').parse::<u64>().map_err(|_| {
                    Problem::bad_request("If-Match", "must be an aggregate version number")
                })
            })
            .transpose()?;
        let correlation_id = text("X-Correlation-Id")?
            .map(|v| {
                Uuid::parse_str(&v)
                    .map_err(|_| Problem::bad_request("X-Correlation-Id", "must be a UUID"))
            })
            .transpose()?
            .unwrap_or_else(Uuid::new_v4);
        Ok(WriteHeaders {
            idempotency_key,
            if_match,
            correlation_id,
        })
    }
}

/// A JSON body parsed with the failing field's path in the error, plus a hash of the
/// request (method, path, body) for idempotency checks.
pub struct JsonBody<T> {
    pub value: T,
    pub request_hash: Vec<u8>,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(Problem::field(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type",
                "must be application/json",
            ));
        }
        let mut hasher = Sha256::new();
        hasher.update(request.method().as_str().as_bytes());
        hasher.update(b" ");
        hasher.update(request.uri().path().as_bytes());
        hasher.update(b"\n");
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(
                        status,
                        "the request body is larger than this server accepts",
                    )
                } else {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "the request body could not be read",
                    )
                }
            })?;
        hasher.update(&bytes);
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let message = error.inner().to_string();
            // "missing field `name`" is reported at the parent; name the field itself.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let field = match (path.as_str(), missing) {
                (".", Some(name)) => name.to_string(),
                (".", None) => "body".to_string(),
                (parent, Some(name)) => format!("{parent}.{name}"),
                (parent, None) => parent.to_string(),
            };
            Problem::bad_request(field, message)
        })?;
        Ok(JsonBody {
            value,
            request_hash: hasher.finalize().to_vec(),
        })
    }
}

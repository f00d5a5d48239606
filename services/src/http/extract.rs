//! Request extractors that answer in problem+json: the caller, write headers, JSON
//! bodies, query strings and the path's typed ids, with the failing field named.

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use circle_events::ids::{ClientId, GoalId, GroupId, SessionId, TokenId, INVALID_ID};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::problem::Problem;
use super::AppState;
use crate::auth::{Liveness, Principal};

/// The authenticated caller, and how its token was found live: put in the request
/// by the router's guard, which authenticates every route that needs a token.
#[derive(Clone)]
pub struct Caller(pub Principal, pub Liveness);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        match parts.extensions.get::<Caller>() {
            Some(caller) => Ok(caller.clone()),
            None => Caller::authenticate(parts, state).await,
        }
    }
}

impl Caller {
    /// The principal of the request's bearer token (401 without a known one).
    pub async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, Problem> {
        match state.auth.principal(bearer(parts)?).await? {
            Some(principal) => Ok(Caller(principal, Liveness::Read)),
            None => Err(Problem::unauthorized()),
        }
    }

    /// [`Caller::authenticate`] for a request whose every effect is a commit that
    /// checks the token ([`crate::auth::Authenticator::caller_for_commit`]).
    pub async fn authenticate_for_commit(
        parts: &Parts,
        state: &AppState,
    ) -> Result<Caller, Problem> {
        match state.auth.caller_for_commit(bearer(parts)?).await? {
            Some((principal, liveness)) => Ok(Caller(principal, liveness)),
            None => Err(Problem::unauthorized()),
        }
    }

    /// The token hash a commit is to check (see [`Liveness::AtCommit`]).
    pub fn token_to_check(&self) -> Option<String> {
        match &self.1 {
            Liveness::Read => None,
            Liveness::AtCommit { token_hash } => Some(token_hash.clone()),
        }
    }
}

/// The bearer token of a request (401 without one).
fn bearer(parts: &Parts) -> Result<&str, Problem> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(Problem::unauthorized)
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
            .is_some_and(is_json_media_type);
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
        if may_hold_control_characters(&bytes) {
            refuse_control_characters(&bytes)?;
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|error| path_problem(error, "body"))?;
        deserializer.end().map_err(|_| {
            Problem::bad_request("body", "must be one JSON value with nothing after it")
        })?;
        Ok(JsonBody {
            value,
            request_hash: hasher.finalize().to_vec(),
        })
    }
}

/// A serde error as a problem naming the field at its path, or `root` for the whole.
fn path_problem<E: std::fmt::Display>(error: serde_path_to_error::Error<E>, root: &str) -> Problem {
    let path = error.path().to_string();
    let message = error.inner().to_string();
    // "missing field `name`" is reported at the parent; name the field itself.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let field = match (path.as_str(), missing) {
        (".", Some(name)) => name.to_string(),
        (".", None) => root.to_string(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (parent, None) => parent.to_string(),
    };
    Problem::bad_request(field, message)
}

/// `application/json` in any case, with optional parameters; a `charset`, if given,
/// must be UTF-8, the only encoding JSON has (RFC 8259).
fn is_json_media_type(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|parameter| match parameter.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            _ => true,
        })
}

/// The characters no text field may hold: C0 controls, DEL and C1 controls, except
/// tab, line feed and carriage return. They smuggle terminal escapes into whatever
/// displays the text, and PostgreSQL's `jsonb` refuses `\u0000` outright.
fn is_refused_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// A fast scan of JSON text for what could carry a refused control character inside
/// a string. Raw C0 bytes are not valid JSON (serde_json refuses them), so only an
/// escape `\u00XX` for a control, a raw DEL byte or a raw C1 character (UTF-8
/// `C2 80`–`C2 9F`) can. Escapes are stepped over whole, so `\\u0000` (an escaped
/// backslash, then text) is not mistaken for one.
fn may_hold_control_characters(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0x7f => return true,
            0xc2 if matches!(bytes.get(i + 1), Some(0x80..=0x9f)) => return true,
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let escaped = bytes
                    .get(i + 2..i + 6)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .and_then(char::from_u32);
                if escaped.is_some_and(is_refused_control) {
                    return true;
                }
                i += 6;
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    false
}

/// Finds the first string (or key) holding a refused control character and names
/// its field. Text that is not JSON is left for the typed parse to report.
fn refuse_control_characters(bytes: &[u8]) -> Result<(), Problem> {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(());
    };
    match control_character_at(&value, String::new()) {
        Some(path) if path.is_empty() => Err(Problem::bad_request(
            "body",
            "must not contain control characters",
        )),
        Some(path) => Err(Problem::bad_request(
            path,
            "must not contain control characters (only tab and line breaks)",
        )),
        None => Ok(()),
    }
}

/// The path of the first value under `value` with a refused control character, in
/// the form serde errors use (`records[0].client_id`). A bad key names its object.
fn control_character_at(value: &Value, path: String) -> Option<String> {
    let dirty = |text: &str| text.chars().any(is_refused_control);
    match value {
        Value::String(text) => dirty(text).then_some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| control_character_at(item, format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            if dirty(key) {
                return Some(path.clone());
            }
            let field = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            control_character_at(item, field)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// A whole number as JSON Schema's `integer` has it: `45` or `45.0`, in `T`'s range.
pub fn whole<'de, D: Deserializer<'de>, T: TryFrom<i64>>(deserializer: D) -> Result<T, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    // Below 2^53 every integral f64 is exact.
    let exact = number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
            .map(|f| f as i64)
    });
    exact
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| D::Error::custom(format!("must be a whole number in range, got {number}")))
}

/// [`whole`] for an optional field (`null` or absent is `None`).
pub fn whole_or_none<'de, D: Deserializer<'de>, T: TryFrom<i64>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    #[derive(Deserialize)]
    struct Whole<T: TryFrom<i64>>(#[serde(deserialize_with = "whole")] T);
    Ok(Option::<Whole<T>>::deserialize(deserializer)?.map(|Whole(n)| n))
}

/// An RFC 3339 time with offset, within the calendar's span, from a query
/// parameter; a refusal names `field`.
pub(super) fn parse_time(
    field: &str,
    text: &str,
) -> Result<chrono::DateTime<chrono::Utc>, Problem> {
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| Problem::bad_request(field, "must be an RFC 3339 time with offset"))?;
    circle_events::calendar::check_time(&t)
        .map_err(|reason| Problem::bad_request(field, reason))?;
    Ok(t.with_timezone(&chrono::Utc))
}

/// Query parameters, refused as a problem naming the parameter.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|error| path_problem(error, "query"))
    }
}

/// The typed ids of the request's path (`GroupId`, `(GroupId, SessionId)`, or `()`),
/// each checked once; a refusal names its parameter.
pub struct Ids<T>(pub T);

/// An id type taken from the path parameter of its name.
pub trait PathId: TryFrom<String> {
    const PARAM: &'static str;
}

impl PathId for GroupId {
    const PARAM: &'static str = "group_id";
}
impl PathId for ClientId {
    const PARAM: &'static str = "client_id";
}
impl PathId for SessionId {
    const PARAM: &'static str = "session_id";
}
impl PathId for GoalId {
    const PARAM: &'static str = "goal_id";
}
impl PathId for TokenId {
    const PARAM: &'static str = "token_id";
}

/// A route's path parameters, percent-decoded, by name.
pub type Params = [(String, String)];

fn path_id<I: PathId>(params: &Params) -> Result<I, Problem> {
    let value = params
        .iter()
        .find_map(|(key, value)| (key == I::PARAM).then_some(value))
        .ok_or_else(|| Problem::bad_request(I::PARAM, "is required"))?;
    I::try_from(value.to_string()).map_err(|_| Problem::bad_request(I::PARAM, INVALID_ID))
}

/// What a route's path holds.
pub trait PathIds: Sized {
    fn from_params(params: &Params) -> Result<Self, Problem>;
}

impl PathIds for () {
    fn from_params(_: &Params) -> Result<(), Problem> {
        Ok(())
    }
}

impl<I: PathId> PathIds for I {
    fn from_params(params: &Params) -> Result<I, Problem> {
        path_id(params)
    }
}

impl<A: PathId, B: PathId> PathIds for (A, B) {
    fn from_params(params: &Params) -> Result<(A, B), Problem> {
        Ok((path_id(params)?, path_id(params)?))
    }
}

impl<T: PathIds, S: Send + Sync> FromRequestParts<S> for Ids<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let params =
            match axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
            {
                Ok(axum::extract::Path(params)) => params,
                Err(PathRejection::FailedToDeserializePathParams(error)) => {
                    let message = error.body_text();
                    return Err(match error.into_kind() {
                        ErrorKind::InvalidUtf8InPathParam { key } => {
                            Problem::bad_request(key, message)
                        }
                        _ => Problem::bad_request("path", message),
                    });
                }
                Err(rejection) => {
                    return Err(Problem::new(rejection.status(), rejection.body_text()))
                }
            };
        T::from_params(&params).map(Ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_application_json_in_any_case_with_utf8_if_a_charset_is_named() {
        for accepted in [
            "application/json",
            "APPLICATION/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json; boundary=x",
        ] {
            assert!(is_json_media_type(accepted), "{accepted}");
        }
        for refused in [
            "application/jsonxyz",
            "application/json-seq",
            "application/x-json",
            "text/json",
            "",
            "application/json; charset=latin1",
        ] {
            assert!(!is_json_media_type(refused), "{refused}");
        }
    }

    #[test]
    fn the_scan_finds_every_way_json_carries_a_control_character() {
        for suspicious in [
            r#"{"a": "\u0000"}"#,
            r#"{"a": "\u001B[31m"}"#,
            r#"{"a": "\u007f"}"#,
            r#"{"a": "\u0085"}"#,
            r#"{"a": "\u009F"}"#,
            "{\"a\": \"\u{7f}\"}",
            "{\"a\": \"\u{85}\"}",
        ] {
            assert!(
                may_hold_control_characters(suspicious.as_bytes()),
                "{suspicious}"
            );
        }
        for clean in [
            r#"{"a": "tab\t line\n return\r"}"#,
            r#"{"a": "\\u0000 is text after an escaped backslash"}"#,
            r#"{"a": "\u00e9\u0100\ud83d\ude00 \"quoted\""}"#,
            "{\"a\": \"é ü 中\"}",
            r#"{"a": "truncated \u00"#,
        ] {
            assert!(!may_hold_control_characters(clean.as_bytes()), "{clean}");
        }
    }

    #[test]
    fn a_control_character_is_found_at_its_field_path() {
        let at = |text: &str| {
            let value: Value = serde_json::from_str(text).unwrap();
            control_character_at(&value, String::new())
        };
        assert_eq!(at(r#"{"name": "a\u0007"}"#).as_deref(), Some("name"));
        assert_eq!(
            at(r#"{"records": [{"client_id": "ok"}, {"client_id": "\u0000"}]}"#).as_deref(),
            Some("records[1].client_id")
        );
        assert_eq!(at(r#"{"a\u0000": 1}"#).as_deref(), Some(""));
        assert_eq!(at(r#"{"reason": "line\nbreak\ttab"}"#), None);
    }
}

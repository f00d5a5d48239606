//! Browser sessions: a cookie that carries the API token, and a CSRF token bound to it.
//!
//! The cookie (`circle_session`) holds the time the session began and the API token the
//! user signed in with, base64url-encoded; it is HttpOnly, SameSite=Strict, scoped to
//! `/app`, Secure behind TLS (`X-Forwarded-Proto: https` from the proxy), and expires
//! after [`SESSION_TTL`], which the server also checks. Nothing is kept server-side:
//! every request authenticates the token again, so a revoked token ends its sessions
//! at once, on every instance. The cookie holds no more than its holder already had:
//! whoever can read it could use the token directly.
//!
//! Every form carries a CSRF token: an HMAC of the session's start keyed by the API
//! token, so it is bound to the session and needs no storage. The sign-in form, before
//! any session exists, uses a double-submit cookie (`circle_signin`).

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ring::hmac;

/// How long a session lasts from sign-in.
pub const SESSION_TTL: chrono::Duration = chrono::Duration::hours(12);
const SESSION_COOKIE: &str = "circle_session";
const SIGNIN_COOKIE: &str = "circle_signin";
/// The form field every dashboard form carries.
pub const CSRF_FIELD: &str = "csrf";

/// A signed-in browser: the API token and when the session began.
#[derive(Clone)]
pub struct Session {
    pub token: String,
    pub began: DateTime<Utc>,
}

impl Session {
    pub fn new(token: String, now: DateTime<Utc>) -> Session {
        Session { token, began: now }
    }

    /// The session a request's cookie carries, unless it is malformed or expired.
    pub fn from_headers(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Session> {
        let value = cookie(headers, SESSION_COOKIE)?;
        let (began, token) = value.split_once('.')?;
        let began = DateTime::from_timestamp(began.parse().ok()?, 0)?;
        let token = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let live = began <= now + chrono::Duration::minutes(5) && now < began + SESSION_TTL;
        (live && !token.is_empty()).then_some(Session { token, began })
    }

    /// The CSRF token of this session's forms.
    pub fn csrf(&self) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.token.as_bytes());
        let tag = hmac::sign(
            &key,
            format!("circle-csrf:{}", self.began.timestamp()).as_bytes(),
        );
        URL_SAFE_NO_PAD.encode(&tag.as_ref()[..20])
    }

    /// Whether a submitted CSRF token is this session's.
    pub fn csrf_matches(&self, submitted: &str) -> bool {
        constant_time_eq(self.csrf().as_bytes(), submitted.as_bytes())
    }

    /// The `Set-Cookie` that starts this session.
    pub fn set_cookie(&self, secure: bool) -> HeaderValue {
        let value = format!(
            "{}.{}",
            self.began.timestamp(),
            URL_SAFE_NO_PAD.encode(self.token.as_bytes())
        );
        cookie_header(SESSION_COOKIE, &value, SESSION_TTL.num_seconds(), secure)
    }
}

/// The `Set-Cookie` that ends a session.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    cookie_header(SESSION_COOKIE, "", 0, secure)
}

/// The sign-in form's double-submit token: the cookie and the form field must match.
pub fn signin_cookie(token: &str, secure: bool) -> HeaderValue {
    cookie_header(SIGNIN_COOKIE, token, 3600, secure)
}

/// The `Set-Cookie` that drops the sign-in form's token once it has served.
pub fn clear_signin_cookie(secure: bool) -> HeaderValue {
    cookie_header(SIGNIN_COOKIE, "", 0, secure)
}

/// Whether a sign-in form's CSRF field matches its cookie.
pub fn signin_csrf_matches(headers: &HeaderMap, submitted: &str) -> bool {
    cookie(headers, SIGNIN_COOKIE)
        .is_some_and(|c| !c.is_empty() && constant_time_eq(c.as_bytes(), submitted.as_bytes()))
}

/// Whether the request came through TLS (the proxy says so): then cookies are Secure.
pub fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn cookie_header(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text =
        format!("{name}={value}; Path=/app; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    // Names and values are base64url, digits and dots: always a header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with(cookie: &HeaderValue) -> HeaderMap {
        let pair = cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        headers
    }

    #[test]
    fn a_session_cookie_reads_back_until_it_expires() {
        let now = Utc::now();
        let session = Session::new("circle_abc-_1".into(), now);
        let cookie = session.set_cookie(true);
        let text = cookie.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(text.contains("Secure") && text.contains("Path=/app"));
        let headers = headers_with(&cookie);
        let read = Session::from_headers(&headers, now).expect("a live session");
        assert_eq!(read.token, "circle_abc-_1");
        assert!(Session::from_headers(&headers, now + SESSION_TTL).is_none());
    }

    #[test]
    fn the_csrf_token_is_bound_to_the_session() {
        let now = Utc::now();
        let one = Session::new("token-one".into(), now);
        let other = Session::new("token-two".into(), now);
        assert!(one.csrf_matches(&one.csrf()));
        assert!(!one.csrf_matches(&other.csrf()));
        assert!(!one.csrf_matches(""));
    }
}

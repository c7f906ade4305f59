//! Bridge as the control plane of a Boundary fleet (docs/CONTROL_PLANE.md is the contract).
//!
//! - [`agents`]: enrolment. An admin creates an agent credential bound to one template (and
//!   optionally a workspace); only its SHA-256 is stored. Every agent request is authenticated
//!   with it, and the template and workspace of a request come from it, never from the body.
//! - [`policies`]: Boundary policies per template, as append-only versions validated with the
//!   `boundary-policy` crate (the very code the agent enforces them with).
//! - [`sessions`]: the sessions agents register, and the check of the per-session credential
//!   (`x-bridge-session-token`) on the gateway's hot path.
//! - [`api`]: the agents' HTTP API under `/boundary/v1/` on the main listener.
//!
//! Store queries live here, written once in PostgreSQL syntax (`$N`), like `store.rs`'s.

pub mod agents;
pub mod api;
pub mod policies;
pub mod sessions;

use chrono::{DateTime, TimeZone, Utc};
use http::{header, HeaderValue, Response, StatusCode};

use crate::proxy::ProxyBody;

pub use api::ControlPlane;

/// An answer of the agent API that is not a success: a status and a reason a human can act
/// on, sent as `{"error": "..."}` (never an empty body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// The store could not answer: the agent retries later (and keeps its last good policy).
    pub fn store(e: crate::error::Error) -> ApiError {
        tracing::warn!(error = %e, "control plane: store unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("control plane store unavailable ({e}); retry later"),
        )
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut r = json_response(
            self.status,
            serde_json::json!({ "error": self.message }).to_string(),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"boundary\""),
            );
        }
        r
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

/// A JSON response with `body`.
pub(crate) fn json_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An empty response (`204`, `304`).
pub(crate) fn empty_response(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(bytes::Bytes::new()));
    *r.status_mut() = status;
    r
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// A template name: it goes into ETags (`"T:V"`), headers and file names on the agent, so
/// letters, digits, `.`, `_` and `-` only, at most 128 characters.
pub fn validate_template(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a template name must not be empty".into());
    }
    if name.len() > 128 {
        return Err(format!(
            "template name {name:?} is longer than 128 characters"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "template name {name:?}: use letters, digits, `.`, `_` and `-` only"
        ));
    }
    Ok(())
}

/// A workspace or agent name: free text, but one line of at most 200 printable characters.
pub fn validate_label(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > 200 || value.chars().any(char::is_control) {
        return Err(format!(
            "{what} {value:?}: one line of at most 200 characters, no control characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_are_restricted_to_etag_and_file_safe_characters() {
        assert!(validate_template("python-dev_2.1").is_ok());
        for bad in ["", "a:b", "a\"b", "a b", "ä", &"x".repeat(129)] {
            assert!(validate_template(bad).is_err(), "{bad:?}");
        }
        assert!(validate_label("workspace", "ws 42").is_ok());
        assert!(validate_label("workspace", "a\nb").is_err());
        assert!(validate_label("workspace", " ").is_err());
    }
}

//! Who is calling: extracting the bridge token from a request and asking who owns it.
//!
//! Clients send their bridge token where their SDK sends a provider key: `x-api-key`
//! (Anthropic SDKs, Claude Code) or `Authorization: Bearer` (OpenAI SDKs, Codex, and Anthropic
//! SDKs configured with an auth token). Verification is behind [`Authenticate`] so the request
//! path does not depend on how tokens are stored (the production implementation is
//! [`crate::keys::Authenticator`]; benchmarks use a fixed token).

use std::future::Future;
use std::pin::Pin;

use http::HeaderMap;

use crate::error::Error;
use crate::keys::Identity;

/// Boxed future returned by [`Authenticate::authenticate`].
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Identity>, Error>> + Send + 'a>>;

/// Resolves a bridge token to an identity: `Ok(None)` for unknown or revoked tokens, `Err`
/// when the answer cannot be known right now (store down and token never seen).
pub trait Authenticate: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

impl Authenticate for crate::keys::Authenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(crate::keys::Authenticator::authenticate(self, token))
    }
}

/// Accepts exactly one token, for benchmarks and tests that have no store.
pub struct FixedToken {
    pub token: String,
    pub identity: Identity,
}

impl Authenticate for FixedToken {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        let ok = constant_time_eq(token.as_bytes(), self.token.as_bytes());
        let identity = ok.then(|| self.identity.clone());
        Box::pin(async move { Ok(identity) })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bridge token of a request: `x-api-key`, else `Authorization: Bearer <token>`.
/// Empty values count as absent.
pub fn bridge_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty() {
            return Some(v);
        }
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn token_is_taken_from_x_api_key_or_bearer_authorization() {
        assert_eq!(
            bridge_token(&headers(&[("x-api-key", "brk_a")])),
            Some("brk_a")
        );
        assert_eq!(
            bridge_token(&headers(&[("authorization", "Bearer brk_b")])),
            Some("brk_b")
        );
        assert_eq!(
            bridge_token(&headers(&[("authorization", "bearer  brk_c ")])),
            Some("brk_c")
        );
    }

    #[test]
    fn missing_empty_or_non_bearer_credentials_yield_no_token() {
        assert_eq!(bridge_token(&headers(&[])), None);
        assert_eq!(bridge_token(&headers(&[("x-api-key", " ")])), None);
        assert_eq!(
            bridge_token(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            bridge_token(&headers(&[("authorization", "Bearer ")])),
            None
        );
    }
}

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
use sha2::{Digest, Sha256};

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

/// The bearer token a metrics scraper must send for `/metrics` (`metrics.token_file`). Only
/// its SHA-256 is kept, so neither `Debug` nor a memory dump of the config shows it, and the
/// comparison takes the same time whatever the length or content of the guess.
#[derive(Clone)]
pub struct MetricsToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(<redacted>)")
    }
}

impl MetricsToken {
    pub fn new(token: &str) -> MetricsToken {
        MetricsToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Reads the token from a file (surrounding whitespace and the final newline ignored, as
    /// Prometheus does with `bearer_token_file`).
    pub fn from_file(path: &std::path::Path) -> Result<MetricsToken, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("{} is empty: put the token in it", path.display()));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{}: the token must be one line without spaces (it is sent as `Authorization: Bearer TOKEN`)",
                path.display()
            ));
        }
        Ok(MetricsToken::new(token))
    }

    /// True when the request carries `Authorization: Bearer <this token>`.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
        else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(&presented, &self.digest)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bridge token of a request: `x-api-key`, else `x-goog-api-key` (Google's SDKs), else
/// `Authorization: Bearer <token>`, else the `key` parameter of `query` (Google's REST
/// examples; the gateway passes the query only on Gemini routes and strips `key` before
/// forwarding). Empty values count as absent.
pub fn bridge_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    let from_query = || {
        query?
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, v)| *k == "key" && !v.is_empty())
            .map(|(_, v)| v)
    };
    let Some(auth) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return from_query();
    };
    let bearer = auth
        .trim()
        .split_once(' ')
        .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
        .map(|(_, t)| t.trim());
    bearer.or_else(from_query)
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

    fn bridge_token_of(h: &HeaderMap) -> Option<&str> {
        bridge_token(h, None)
    }

    #[test]
    fn gemini_clients_send_the_token_as_x_goog_api_key_or_the_key_parameter() {
        let h = headers(&[("x-goog-api-key", "brg_g")]);
        assert_eq!(bridge_token(&h, None), Some("brg_g"));
        let none = HeaderMap::new();
        assert_eq!(
            bridge_token(&none, Some("alt=sse&key=brg_q")),
            Some("brg_q")
        );
        assert_eq!(bridge_token(&none, Some("alt=sse&key=")), None);
        assert_eq!(bridge_token(&none, Some("monkey=brg_x")), None);
        // A header wins over the query.
        assert_eq!(bridge_token(&h, Some("key=brg_q")), Some("brg_g"));
        let bad_auth = headers(&[("authorization", "Basic abc")]);
        assert_eq!(bridge_token(&bad_auth, Some("key=brg_q")), Some("brg_q"));
    }

    #[test]
    fn token_is_taken_from_x_api_key_or_bearer_authorization() {
        assert_eq!(
            bridge_token_of(&headers(&[("x-api-key", "brk_a")])),
            Some("brk_a")
        );
        assert_eq!(
            bridge_token_of(&headers(&[("authorization", "Bearer brk_b")])),
            Some("brk_b")
        );
        assert_eq!(
            bridge_token_of(&headers(&[("authorization", "bearer  brk_c ")])),
            Some("brk_c")
        );
    }

    #[test]
    fn the_metrics_token_admits_only_its_own_bearer_value() {
        let t = MetricsToken::new("s3cret-scrape");
        assert!(t.admits(&headers(&[("authorization", "Bearer s3cret-scrape")])));
        assert!(t.admits(&headers(&[("authorization", "bearer  s3cret-scrape ")])));
        assert!(!t.admits(&headers(&[("authorization", "Bearer s3cret-scrap")])));
        assert!(!t.admits(&headers(&[("authorization", "Basic s3cret-scrape")])));
        assert!(!t.admits(&headers(&[("x-api-key", "s3cret-scrape")])));
        assert!(!t.admits(&headers(&[])));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn missing_empty_or_non_bearer_credentials_yield_no_token() {
        assert_eq!(bridge_token_of(&headers(&[])), None);
        assert_eq!(bridge_token_of(&headers(&[("x-api-key", " ")])), None);
        assert_eq!(
            bridge_token_of(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            bridge_token_of(&headers(&[("authorization", "Bearer ")])),
            None
        );
    }
}

//! Who may see the audit page: the admin token, login sessions, and the limits on guessing.
//!
//! An admin logs in by POSTing the token of `control_plane.admin_token_file`; the page then
//! sets a cookie holding a random session id (256 bits, HttpOnly, SameSite=Strict, Secure over
//! TLS) that expires on the server 12 hours after login. Only SHA-256 digests of the token and
//! of session ids are kept, and comparisons take the same time whatever the guess. Failed logins
//! are limited per client address and in total, so the token cannot be guessed at line rate.
//! Sessions live in this process: behind a load balancer, route `/ui/` to one replica (or
//! log in again after a switch).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
pub const COOKIE: &str = "bridge_ui_session";
/// Failed logins allowed from one address per [`FAILURE_WINDOW`].
const MAX_FAILURES_PER_CLIENT: u32 = 5;
/// Failed logins allowed from all addresses together per [`FAILURE_WINDOW`].
const MAX_FAILURES_TOTAL: u32 = 50;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Most sessions alive at once (the oldest goes when a new one would pass it).
const MAX_SESSIONS: usize = 1000;

/// The admin token (only its digest is kept).
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Tokens shorter than this are refused: the page is reachable by whoever reaches the
    /// gateway.
    pub const MIN_LEN: usize = 16;

    pub fn new(token: &str) -> Result<AdminToken, String> {
        if token.len() < Self::MIN_LEN {
            return Err(format!(
                "the admin token must be at least {} characters (e.g. `openssl rand -base64 32`)",
                Self::MIN_LEN
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the admin token must be one line without spaces".into());
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Reads the token from a file (surrounding whitespace and the final newline ignored).
    pub fn from_file(path: &Path) -> Result<AdminToken, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        AdminToken::new(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// True when `presented` is the token; the time taken does not depend on where a guess
    /// differs (both sides are hashed to 32 bytes first).
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(&presented, &self.digest)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Logged-in sessions and recent failed logins.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// SHA-256 of the session id → expiry.
    live: HashMap<[u8; 32], Instant>,
    failures: HashMap<IpAddr, (Instant, u32)>,
    total_failures: (Option<Instant>, u32),
}

/// Why a login was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefusal {
    WrongToken,
    /// Too many failures lately: try again after this long.
    TooMany(Duration),
}

impl Sessions {
    /// Checks a login attempt and, when the token matches, opens a session and returns its id
    /// (the cookie value).
    pub fn login(
        &self,
        token: &AdminToken,
        presented: &str,
        client: IpAddr,
        now: Instant,
    ) -> Result<String, LoginRefusal> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.failures
            .retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
        if let (Some(since), _) = s.total_failures {
            if now.duration_since(since) >= FAILURE_WINDOW {
                s.total_failures = (None, 0);
            }
        }
        if let Some((since, n)) = s.failures.get(&client) {
            if *n >= MAX_FAILURES_PER_CLIENT {
                return Err(LoginRefusal::TooMany(
                    FAILURE_WINDOW.saturating_sub(now.duration_since(*since)),
                ));
            }
        }
        if let (Some(since), n) = s.total_failures {
            if n >= MAX_FAILURES_TOTAL {
                return Err(LoginRefusal::TooMany(
                    FAILURE_WINDOW.saturating_sub(now.duration_since(since)),
                ));
            }
        }
        if !token.matches(presented) {
            let entry = s.failures.entry(client).or_insert((now, 0));
            entry.1 += 1;
            let total = &mut s.total_failures;
            total.0.get_or_insert(now);
            total.1 += 1;
            return Err(LoginRefusal::WrongToken);
        }
        s.failures.remove(&client);
        s.live.retain(|_, expiry| *expiry > now);
        if s.live.len() >= MAX_SESSIONS {
            if let Some(oldest) = s.live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                s.live.remove(&oldest);
            }
        }
        let id = new_session_id().map_err(|_| LoginRefusal::WrongToken)?;
        s.live
            .insert(Sha256::digest(id.as_bytes()).into(), now + SESSION_LIFETIME);
        Ok(id)
    }

    /// True when `id` names a session that has not expired.
    pub fn is_valid(&self, id: &str, now: Instant) -> bool {
        let digest: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.live.get(&digest).is_some_and(|expiry| *expiry > now)
    }

    /// Ends a session (logout).
    pub fn end(&self, id: &str) {
        let digest: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.live.remove(&digest);
    }
}

/// 32 random bytes, base64url without padding.
fn new_session_id() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b)?;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(43);
    for chunk in b.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    Ok(out)
}

/// The session id in the request's `Cookie` header, if any.
pub fn session_cookie(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value that opens (`Some(id)`) or clears (`None`) the session.
pub fn set_cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// A state-changing request must come from a page of this server. Browsers say where a
/// request comes from in `Sec-Fetch-Site` (which no page can forge) and in `Origin`; with the
/// page's `Referrer-Policy: no-referrer`, Chromium sends `Origin: null` on a form POST, so
/// `Sec-Fetch-Site: same-origin` is the answer that counts when present. Without it (older
/// browsers, scripts), `Origin` must name the host the request was sent to. Together with the
/// SameSite=Strict cookie this stops cross-site request forgery.
pub fn same_origin(headers: &http::HeaderMap, tls: bool) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let origin_matches = || {
        let (Some(origin), Some(host)) = (header("origin"), header("host")) else {
            return false;
        };
        let scheme = if tls { "https" } else { "http" };
        origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
    };
    match header("sec-fetch-site") {
        Some(site) => {
            site == "same-origin"
                && match header("origin") {
                    None | Some("null") => true,
                    Some(_) => origin_matches(),
                }
        }
        None => origin_matches(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "admin-token-for-unit-tests";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_right_token_opens_a_session_that_expires_after_12_hours() {
        let token = AdminToken::new(TOKEN).unwrap();
        let sessions = Sessions::default();
        let now = Instant::now();
        let id = sessions.login(&token, TOKEN, ip("127.0.0.1"), now).unwrap();
        assert_eq!(id.len(), 43);
        assert!(sessions.is_valid(&id, now + Duration::from_secs(3600)));
        assert!(!sessions.is_valid(&id, now + SESSION_LIFETIME));
        assert!(!sessions.is_valid("made-up", now));
        sessions.end(&id);
        assert!(!sessions.is_valid(&id, now));
    }

    #[test]
    fn failed_logins_are_limited_per_client_and_forgotten_after_the_window() {
        let token = AdminToken::new(TOKEN).unwrap();
        let sessions = Sessions::default();
        let now = Instant::now();
        let a = ip("127.0.0.2");
        for _ in 0..MAX_FAILURES_PER_CLIENT {
            assert_eq!(
                sessions.login(&token, "wrong-guess-000000", a, now),
                Err(LoginRefusal::WrongToken)
            );
        }
        // Even the right token is refused while the client is over its limit.
        assert!(matches!(
            sessions.login(&token, TOKEN, a, now),
            Err(LoginRefusal::TooMany(_))
        ));
        // Another client is not affected.
        assert!(sessions.login(&token, TOKEN, ip("127.0.0.3"), now).is_ok());
        assert!(sessions
            .login(&token, TOKEN, a, now + FAILURE_WINDOW)
            .is_ok());
    }

    #[test]
    fn failed_logins_from_many_clients_are_limited_in_total() {
        let token = AdminToken::new(TOKEN).unwrap();
        let sessions = Sessions::default();
        let now = Instant::now();
        for i in 0..MAX_FAILURES_TOTAL {
            let client = IpAddr::from([127, 1, (i / 250) as u8, (i % 250) as u8]);
            let _ = sessions.login(&token, "wrong", client, now);
        }
        assert!(matches!(
            sessions.login(&token, TOKEN, ip("127.9.9.9"), now),
            Err(LoginRefusal::TooMany(_))
        ));
    }

    #[test]
    fn short_or_spaced_tokens_are_refused_and_debug_hides_the_token() {
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in it 1234").is_err());
        let t = AdminToken::new(TOKEN).unwrap();
        assert!(!format!("{t:?}").contains(TOKEN));
        assert!(t.matches(TOKEN) && !t.matches("admin-token-for-unit-test"));
    }

    #[test]
    fn the_origin_must_be_this_host() {
        let mut h = http::HeaderMap::new();
        h.insert("host", "127.0.0.1:8787".parse().unwrap());
        assert!(!same_origin(&h, false));
        h.insert("origin", "http://127.0.0.1:8787".parse().unwrap());
        assert!(same_origin(&h, false));
        assert!(!same_origin(&h, true));
        h.insert("origin", "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h, false));
        // A browser's own word: same-origin with a null Origin (no-referrer pages) is fine,
        // cross-site is refused whatever Origin says.
        h.insert("origin", "null".parse().unwrap());
        assert!(!same_origin(&h, false));
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h, false));
        h.insert("origin", "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h, false));
        h.insert("origin", "http://127.0.0.1:8787".parse().unwrap());
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!same_origin(&h, false));
    }

    #[test]
    fn the_cookie_is_read_among_others_and_set_strictly() {
        let mut h = http::HeaderMap::new();
        h.insert("cookie", "a=1; bridge_ui_session=abc; b=2".parse().unwrap());
        assert_eq!(session_cookie(&h), Some("abc"));
        let c = set_cookie(Some("abc"), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }
}

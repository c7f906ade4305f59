//! Boundary sessions and their per-session credential.
//!
//! An agent registers each session it starts (`POST /boundary/v1/sessions`) with the SHA-256
//! of the credential it minted for it (`bnd_sess_<session-id>_<secret>`); the credential
//! itself never reaches Bridge's store. The wrapped command sends it to the gateway as
//! `x-bridge-session-token`, and [`SessionGate`] checks it on every request: it must hash to
//! the credential of a live session whose agent is not revoked, and `x-bridge-session` (if
//! sent) must name that session. A request with a valid one is recorded with the session,
//! template and workspace of the agent's enrolment (not from client headers); a bad one is
//! refused (403), never ignored.
//!
//! Verified credentials are cached in memory for [`CACHE_TTL`] (like user keys), so the hot
//! path costs no query per request: a revoked agent or an ended session stops being accepted
//! within those 5 seconds. Unknown credentials are remembered for [`NEGATIVE_CACHE_TTL`]
//! only, so a session registered late is accepted within a second of its registration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::HeaderMap;

use super::agents::AgentIdentity;
use super::{micros, validate_label};
use crate::error::Error;
use crate::keys::hash_token;
use crate::store::{Store, Value};

/// How long a credential check is trusted before asking the store again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// How long an unknown credential stays refused without asking again: short, because an
/// agent whose control plane was unreachable registers its session late (the session starts
/// anyway), and its credential must work soon after the registration lands.
pub const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(1);
/// Beyond this many cached credentials, expired entries are evicted.
const CACHE_MAX: usize = 10_000;

/// `POST /boundary/v1/sessions`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Registration {
    pub session_id: String,
    pub credential_sha256: String,
    pub user_name: Option<String>,
    pub uid: Option<i64>,
    pub command: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
}

/// Why a registration was refused.
#[derive(Debug)]
pub enum RegisterError {
    /// A field is wrong (400).
    Invalid(String),
    /// The session is registered already with another credential (409).
    Conflict(String),
    Store(Error),
}

/// Registers a session of `agent`. Registering the same session again with the same
/// credential is fine (the agent retries a registration it could not confirm).
pub async fn register(
    store: &Store,
    agent: &AgentIdentity,
    r: &Registration,
) -> Result<(), RegisterError> {
    validate_label("session_id", &r.session_id).map_err(RegisterError::Invalid)?;
    if r.session_id.len() > 128 {
        return Err(RegisterError::Invalid(
            "session_id: at most 128 characters".into(),
        ));
    }
    let hash = r.credential_sha256.trim().to_ascii_lowercase();
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(RegisterError::Invalid(
            "credential_sha256: the SHA-256 of the session credential, 64 hex digits".into(),
        ));
    }
    let text = |s: &Option<String>| {
        Value::Text(
            s.as_deref()
                .map(|s| s.chars().filter(|c| !c.is_control()).take(500).collect()),
        )
    };
    let inserted = store
        .execute(
            "INSERT INTO boundary_sessions (agent_id, session_id, credential_sha256, user_name, uid, command, started_at, registered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (agent_id, session_id) DO NOTHING",
            vec![
                Value::Text(Some(agent.id.clone())),
                Value::Text(Some(r.session_id.clone())),
                Value::Text(Some(hash.clone())),
                text(&r.user_name),
                Value::Int(r.uid),
                text(&r.command),
                Value::Int(r.started_at.map(micros)),
                Value::Int(Some(micros(Utc::now()))),
            ],
        )
        .await
        .map_err(RegisterError::Store)?;
    if inserted == 1 {
        return Ok(());
    }
    let rows = store
        .query(
            "SELECT credential_sha256 FROM boundary_sessions WHERE agent_id = $1 AND session_id = $2",
            vec![
                Value::Text(Some(agent.id.clone())),
                Value::Text(Some(r.session_id.clone())),
            ],
        )
        .await
        .map_err(RegisterError::Store)?;
    match rows.first() {
        Some(row) if row[0].text() == hash => Ok(()),
        _ => Err(RegisterError::Conflict(format!(
            "session {:?} is registered already with another credential",
            r.session_id
        ))),
    }
}

/// Ends a session of `agent` (`DELETE /boundary/v1/sessions/ID`, or its
/// `boundary.session.end` event): its credential stops working within [`CACHE_TTL`].
/// Returns false if the agent never registered that session. Ending twice keeps the first
/// time.
pub async fn end(
    store: &Store,
    agent_id: &str,
    session_id: &str,
    at: DateTime<Utc>,
) -> Result<bool, Error> {
    let n = store
        .execute(
            "UPDATE boundary_sessions SET ended_at = COALESCE(ended_at, $1) WHERE agent_id = $2 AND session_id = $3",
            vec![
                Value::Int(Some(micros(at))),
                Value::Text(Some(agent_id.into())),
                Value::Text(Some(session_id.into())),
            ],
        )
        .await?;
    Ok(n > 0)
}

/// Who a valid session credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIdentity {
    pub session_id: String,
    pub agent_id: String,
    pub template: String,
    pub workspace: Option<String>,
}

/// What the gateway makes of a request's session headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// No credential, and none required.
    Absent,
    /// A valid credential: record the request under this session.
    Valid(SessionIdentity),
    /// Refuse with 403; the message says why (it starts with `session credential`).
    Refused(String),
    /// The store cannot answer for a credential never seen: refuse with 503.
    Unavailable(String),
}

struct CacheEntry {
    found: Option<SessionIdentity>,
    fetched: Instant,
}

/// The gateway's check of `x-bridge-session-token` (and `control_plane.require_session`).
/// Cheap to clone.
#[derive(Clone)]
pub struct SessionGate {
    store: Store,
    require_all: bool,
    require_templates: Arc<Vec<String>>,
    cache: Arc<Mutex<HashMap<String, CacheEntry>>>,
    ttl: Duration,
}

impl SessionGate {
    pub fn new(store: Store, require_all: bool, require_templates: Vec<String>) -> SessionGate {
        SessionGate {
            store,
            require_all,
            require_templates: Arc::new(require_templates),
            cache: Arc::new(Mutex::new(HashMap::new())),
            ttl: CACHE_TTL,
        }
    }

    /// Checks a request's headers: `x-bridge-session-token`, `x-bridge-session`, and (for
    /// `require_session_templates`) the `x-bridge-template` a request without a credential
    /// claims.
    pub async fn check(&self, headers: &HeaderMap) -> SessionCheck {
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| v.to_str().map(str::trim).unwrap_or("\u{fffd}"))
                .filter(|v| !v.is_empty())
        };
        let Some(token) = header("x-bridge-session-token") else {
            let template = header("x-bridge-template");
            let required = self.require_all
                || template.is_some_and(|t| self.require_templates.iter().any(|r| r == t));
            if required {
                let scope = if self.require_all {
                    "control_plane.require_session".to_string()
                } else {
                    format!(
                        "control_plane.require_session_templates includes {:?}",
                        template.unwrap_or_default()
                    )
                };
                return SessionCheck::Refused(format!(
                    "session credential required: AI traffic only from governed sessions ({scope}); run the client under `boundary run`, which sets x-bridge-session-token"
                ));
            }
            return SessionCheck::Absent;
        };
        let found = match self.lookup(token).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot verify a session credential: store unavailable");
                return SessionCheck::Unavailable(
                    "bridge cannot verify session credentials right now (store unavailable); retry shortly".into(),
                );
            }
        };
        let Some(session) = found else {
            return SessionCheck::Refused(
                "session credential invalid: unknown, ended, or of a revoked agent (x-bridge-session-token)".into(),
            );
        };
        if let Some(claimed) = header("x-bridge-session") {
            if claimed != session.session_id {
                return SessionCheck::Refused(format!(
                    "session credential does not belong to session {claimed:?} (x-bridge-session)"
                ));
            }
        }
        SessionCheck::Valid(session)
    }

    /// The live session a credential belongs to, from the cache when fresh. On a store error,
    /// a credential seen before keeps its last answer.
    async fn lookup(&self, token: &str) -> Result<Option<SessionIdentity>, Error> {
        let hash = hash_token(token);
        let now = Instant::now();
        let stale = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = |e: &CacheEntry| {
                let ttl = if e.found.is_some() {
                    self.ttl
                } else {
                    self.ttl.min(NEGATIVE_CACHE_TTL)
                };
                now.duration_since(e.fetched) < ttl
            };
            match cache.get(&hash) {
                Some(e) if fresh(e) => return Ok(e.found.clone()),
                Some(e) => Some(e.found.clone()),
                None => None,
            }
        };
        let rows = match self
            .store
            .query(
                "SELECT s.session_id, s.agent_id, a.template, a.workspace FROM boundary_sessions s \
                 JOIN agents a ON a.id = s.agent_id \
                 WHERE s.credential_sha256 = $1 AND s.ended_at IS NULL AND a.revoked_at IS NULL",
                vec![Value::Text(Some(hash.clone()))],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                return match stale {
                    Some(found) => {
                        tracing::warn!(error = %e, "session store unavailable; using the cached credential check");
                        Ok(found)
                    }
                    None => Err(e),
                }
            }
        };
        let found = rows.first().map(|r| SessionIdentity {
            session_id: r[0].text(),
            agent_id: r[1].text(),
            template: r[2].text(),
            workspace: r[3].opt_text(),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            let ttl = self.ttl;
            cache.retain(|_, e| now.duration_since(e.fetched) < ttl);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(
            hash,
            CacheEntry {
                found: found.clone(),
                fetched: now,
            },
        );
        Ok(found)
    }
}

/// Ends the sessions whose `boundary.session.end` event is among `events` (an agent's batch,
/// as `POST /boundary/v1/events` receives it): the contract's "a session ends when its end
/// event is stored". The events ingest calls this after committing a batch. Returns how many
/// sessions it ended.
pub async fn end_sessions_of_events(
    store: &Store,
    agent_id: &str,
    events: &[serde_json::Value],
) -> Result<u64, Error> {
    let mut ended = 0;
    for e in events {
        if e.get("event.name").and_then(|v| v.as_str()) != Some("boundary.session.end") {
            continue;
        }
        let Some(session) = e.get("session.id").and_then(|v| v.as_str()) else {
            continue;
        };
        let at = e
            .get("timestamp")
            .and_then(|v| v.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        if end(store, agent_id, session, at).await? {
            ended += 1;
        }
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stored_session_end_event_ends_the_session_and_its_credential() {
        let dir =
            std::env::temp_dir().join(format!("bridge-sessions-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(dir.join("b.db").to_str().unwrap())
            .await
            .unwrap();
        let agent = super::super::agents::create(&store, "t", None, None, "test")
            .await
            .unwrap();
        let identity = AgentIdentity {
            id: agent.id.clone(),
            template: "t".into(),
            workspace: None,
            name: agent.name.clone(),
        };
        let credential = "bnd_sess_s1_secret";
        let registration = Registration {
            session_id: "s1".into(),
            credential_sha256: hash_token(credential),
            user_name: None,
            uid: None,
            command: None,
            started_at: None,
        };
        assert!(register(&store, &identity, &registration).await.is_ok());
        let gate = SessionGate::new(store.clone(), false, vec![]);
        let mut headers = HeaderMap::new();
        headers.insert("x-bridge-session-token", credential.parse().unwrap());
        assert!(matches!(gate.check(&headers).await, SessionCheck::Valid(_)));
        let events = vec![
            serde_json::json!({"event.name": "boundary.connect", "session.id": "s1"}),
            serde_json::json!({"event.name": "boundary.session.end", "session.id": "s1",
                "timestamp": "2026-11-26T10:00:00Z"}),
            serde_json::json!({"event.name": "boundary.session.end", "session.id": "other"}),
        ];
        assert_eq!(
            end_sessions_of_events(&store, &agent.id, &events)
                .await
                .unwrap(),
            1
        );
        // A new gate (no cache): the ended session's credential is refused.
        let gate = SessionGate::new(store.clone(), false, vec![]);
        assert!(matches!(
            gate.check(&headers).await,
            SessionCheck::Refused(m) if m.starts_with("session credential invalid")
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

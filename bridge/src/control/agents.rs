//! Enrolment: agent credentials bound to a template (and optionally a workspace).
//!
//! A token (`bnd_agent_` + 32 random bytes, base64url: 43 characters) is shown once, at
//! creation; the store keeps its SHA-256 (looked up by hash, never compared as a secret) and
//! an 8-character display prefix, as for user keys. Revoking is immediate for the agent API
//! (every agent request asks the store) and reaches the gateway's session-credential cache
//! within its 5 seconds ([`super::sessions`]).
//!
//! Each authenticated request also records `last_seen_at`, the agent's host and version
//! (`x-boundary-agent-host`, `x-boundary-agent-version`), written at most every
//! [`TOUCH_INTERVAL`] per agent (or at once when they change) to keep writes off busy agents'
//! requests.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::HeaderMap;

use super::{from_micros, micros, validate_label, validate_template, ApiError};
use crate::error::Error;
use crate::keys::{base64url, hash_token, hex, random_bytes};
use crate::store::{Store, Value};

/// Prefix of every agent token, so a leaked one is recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "bnd_agent_";
/// Characters of the token kept for display (`bnd_agent_` is not counted).
const DISPLAY_PREFIX: usize = 8;
/// `last_seen_at` is written at most this often per agent.
const TOUCH_INTERVAL: Duration = Duration::from_secs(10);

/// Who an agent request comes from: its enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub id: String,
    pub template: String,
    pub workspace: Option<String>,
    pub name: String,
}

/// An agent just created: the only time its token is available.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub id: String,
    pub name: String,
    pub template: String,
    pub workspace: Option<String>,
    pub token: String,
}

/// An agent as listed (never the token or its hash): its enrolment and what it last reported.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub template: String,
    pub workspace: Option<String>,
    /// First characters of the token, for recognising it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub host: Option<String>,
    pub agent_version: Option<String>,
    /// The policy version the agent last reported applied.
    pub policy_version: Option<i64>,
    pub policy_sha256: Option<String>,
    /// Sessions running on the agent, as last reported.
    pub sessions: Option<i64>,
    pub events_spooled: Option<i64>,
    pub events_lost: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    /// When the agent last posted its status.
    pub status_at: Option<DateTime<Utc>>,
}

/// Creates an agent credential for `template` and returns its token (the store keeps only
/// its hash). `name` defaults to the id.
pub async fn create(
    store: &Store,
    template: &str,
    workspace: Option<&str>,
    name: Option<&str>,
    created_by: &str,
) -> Result<NewAgent, Error> {
    validate_template(template).map_err(Error::Query)?;
    if let Some(w) = workspace {
        validate_label("workspace", w).map_err(Error::Query)?;
    }
    if let Some(n) = name {
        validate_label("agent name", n).map_err(Error::Query)?;
    }
    let token = format!("{TOKEN_PREFIX}{}", base64url(&random_bytes::<32>()?));
    let id = format!("agt_{}", hex(&random_bytes::<6>()?));
    let prefix: String = token
        .chars()
        .take(TOKEN_PREFIX.len() + DISPLAY_PREFIX)
        .collect();
    let name = name.map(str::trim).unwrap_or(&id).to_string();
    let workspace = workspace.map(|w| w.trim().to_string());
    store
        .execute(
            "INSERT INTO agents (id, name, template, workspace, prefix, token_hash, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            vec![
                Value::Text(Some(id.clone())),
                Value::Text(Some(name.clone())),
                Value::Text(Some(template.into())),
                Value::Text(workspace.clone()),
                Value::Text(Some(prefix)),
                Value::Text(Some(hash_token(&token))),
                Value::Int(Some(micros(Utc::now()))),
                Value::Text(Some(created_by.into())),
            ],
        )
        .await?;
    Ok(NewAgent {
        id,
        name,
        template: template.into(),
        workspace,
        token,
    })
}

const AGENT_COLUMNS: &str = "id, name, template, workspace, prefix, created_at, created_by, \
    revoked_at, last_seen_at, host, agent_version, policy_version, policy_sha256, sessions, \
    events_spooled, events_lost, agent_started_at, status_at";

fn agent_from_row(r: &[Value]) -> AgentRow {
    AgentRow {
        id: r[0].text(),
        name: r[1].text(),
        template: r[2].text(),
        workspace: r[3].opt_text(),
        prefix: r[4].text(),
        created_at: from_micros(r[5].int()),
        created_by: r[6].text(),
        revoked_at: r[7].opt_int().map(from_micros),
        last_seen_at: r[8].opt_int().map(from_micros),
        host: r[9].opt_text(),
        agent_version: r[10].opt_text(),
        policy_version: r[11].opt_int(),
        policy_sha256: r[12].opt_text(),
        sessions: r[13].opt_int(),
        events_spooled: r[14].opt_int(),
        events_lost: r[15].opt_int(),
        started_at: r[16].opt_int().map(from_micros),
        status_at: r[17].opt_int().map(from_micros),
    }
}

/// All agents (of one template if given), oldest first.
pub async fn list(store: &Store, template: Option<&str>) -> Result<Vec<AgentRow>, Error> {
    let rows = match template {
        Some(t) => {
            store
                .query(
                    &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE template = $1 ORDER BY created_at, id"),
                    vec![Value::Text(Some(t.into()))],
                )
                .await?
        }
        None => {
            store
                .query(
                    &format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY created_at, id"),
                    vec![],
                )
                .await?
        }
    };
    Ok(rows.iter().map(|r| agent_from_row(r)).collect())
}

/// Revokes an agent: its token is refused from now on (401 `agent token revoked`), and the
/// credentials of its sessions stop working on the gateway within the session cache's TTL.
/// Revoking twice keeps the first time.
pub async fn revoke(store: &Store, id: &str) -> Result<(), Error> {
    let n = store
        .execute(
            "UPDATE agents SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
            vec![
                Value::Int(Some(micros(Utc::now()))),
                Value::Text(Some(id.into())),
            ],
        )
        .await?;
    if n == 0 {
        return Err(Error::Query(format!(
            "no agent with id {id:?} (see `llm-bridge agents list`)"
        )));
    }
    Ok(())
}

/// The agent token of a request (`Authorization: Bearer bnd_agent_...`).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
        .map(|(_, t)| t.trim())
}

/// Authenticates an agent request: `401` with the reason for a missing, unknown or revoked
/// token, `503` when the store cannot answer. Records `last_seen_at`, host and version (at
/// most every 10 s per agent; a failure to record them does not fail the request).
pub async fn authenticate(store: &Store, headers: &HeaderMap) -> Result<AgentIdentity, ApiError> {
    let Some(token) = bearer(headers) else {
        return Err(ApiError::unauthorized(
            "missing agent token: send `Authorization: Bearer bnd_agent_...` (see `llm-bridge agents create`)",
        ));
    };
    if !token.starts_with(TOKEN_PREFIX) {
        return Err(ApiError::unauthorized("unknown agent token"));
    }
    let rows = store
        .query(
            "SELECT id, template, workspace, name, revoked_at FROM agents WHERE token_hash = $1",
            vec![Value::Text(Some(hash_token(token)))],
        )
        .await
        .map_err(ApiError::store)?;
    let Some(r) = rows.first() else {
        return Err(ApiError::unauthorized("unknown agent token"));
    };
    if r[4].opt_int().is_some() {
        return Err(ApiError::unauthorized("agent token revoked"));
    }
    let identity = AgentIdentity {
        id: r[0].text(),
        template: r[1].text(),
        workspace: r[2].opt_text(),
        name: r[3].text(),
    };
    touch(store, &identity.id, headers).await;
    Ok(identity)
}

/// What was last written for each agent: when, host, version.
type Touched = HashMap<String, (Instant, Option<String>, Option<String>)>;

fn touched() -> &'static Mutex<Touched> {
    static TOUCHED: OnceLock<Mutex<Touched>> = OnceLock::new();
    TOUCHED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A header value as a short, printable string.
fn header_label(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| v.chars().take(200).collect())
}

/// Records that the agent was seen (at most every [`TOUCH_INTERVAL`], unless its host or
/// version changed). Awaited, not spawned: a status report that follows must not be
/// overwritten by it.
async fn touch(store: &Store, agent_id: &str, headers: &HeaderMap) {
    let host = header_label(headers, "x-boundary-agent-host");
    let version = header_label(headers, "x-boundary-agent-version");
    let now = Instant::now();
    {
        let mut t = touched().lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, h, v)) = t.get(agent_id) {
            if now.duration_since(*at) < TOUCH_INTERVAL && *h == host && *v == version {
                return;
            }
        }
        if t.len() > 100_000 {
            t.clear();
        }
        t.insert(agent_id.into(), (now, host.clone(), version.clone()));
    }
    let r = store
        .execute(
            "UPDATE agents SET last_seen_at = $1, host = COALESCE($2, host), agent_version = COALESCE($3, agent_version) WHERE id = $4",
            vec![
                Value::Int(Some(micros(Utc::now()))),
                Value::Text(host),
                Value::Text(version),
                Value::Text(Some(agent_id.into())),
            ],
        )
        .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, agent_id, "could not record that the agent was seen");
    }
}

/// `POST /boundary/v1/status`: what an agent reports every 30 s and after each policy change.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Status {
    pub agent_version: Option<String>,
    pub hostname: Option<String>,
    pub policy_version: Option<i64>,
    pub policy_sha256: Option<String>,
    pub sessions: Option<i64>,
    pub events_spooled: Option<i64>,
    pub events_lost: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
}

/// Stores an agent's status report (and that it was seen).
pub async fn record_status(
    store: &Store,
    agent: &AgentIdentity,
    status: &Status,
) -> Result<(), Error> {
    let label = |s: &Option<String>| {
        Value::Text(
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.chars().take(200).collect()),
        )
    };
    let now = micros(Utc::now());
    store
        .execute(
            "UPDATE agents SET agent_version = COALESCE($1, agent_version), host = COALESCE($2, host), \
             policy_version = $3, policy_sha256 = $4, sessions = $5, events_spooled = $6, \
             events_lost = $7, agent_started_at = $8, status_at = $9, last_seen_at = $9 WHERE id = $10",
            vec![
                label(&status.agent_version),
                label(&status.hostname),
                Value::Int(status.policy_version),
                label(&status.policy_sha256),
                Value::Int(status.sessions),
                Value::Int(status.events_spooled),
                Value::Int(status.events_lost),
                Value::Int(status.started_at.map(micros)),
                Value::Int(Some(now)),
                Value::Text(Some(agent.id.clone())),
            ],
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_authorization_only() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer  bnd_agent_x ".parse().unwrap());
        assert_eq!(bearer(&h), Some("bnd_agent_x"));
        h.insert("authorization", "Basic bnd_agent_x".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}

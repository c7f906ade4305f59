//! The agents' HTTP API under `/boundary/v1/` on Bridge's main listener (docs/CONTROL_PLANE.md).
//!
//! [`handle`] is the one entry point the server routes `/boundary/v1/...` to; each route is
//! one arm of its `match`. Every route authenticates the agent token first (before reading a
//! body, so strangers learn nothing and cannot make the server read), reads at most
//! [`MAX_BODY_BYTES`] of body (the events route: a batch's 4 MiB; 413 beyond) and answers
//! errors as `{"error": "..."}`.
//!
//! `GET /boundary/v1/policy` is a long-poll: an agent whose `If-None-Match` names the current
//! version is held up to `wait` seconds. A push made through any replica (or the CLI) is seen
//! by [`ControlPlane`]'s refresher, which asks the store for the newest version of every
//! template once a second while someone waits (one query per second per replica, however
//! many agents poll), and wakes the pollers of that template.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;

use super::agents::{self, AgentIdentity};
use super::sessions::{self, RegisterError};
use super::{empty_response, json_response, policies, ApiError};
use crate::proxy::ProxyBody;
use crate::store::Store;

/// Largest request body of the status and session routes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest `wait` of the policy long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a replica asks the store for new policy versions while agents wait.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Time a client has to send a body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Newest policy version per template, as last read from the store.
type Versions = Arc<HashMap<String, i64>>;

/// What the agent API needs: the store, the newest policy versions, and the server's
/// shutdown signal (held long-polls answer `304` at once when the server stops).
pub struct ControlPlane {
    store: Store,
    versions: watch::Sender<Versions>,
    stop: watch::Receiver<bool>,
}

impl ControlPlane {
    /// Starts the control plane on `store`; its refresher ends with `stop` or when the
    /// returned value is dropped.
    pub fn start(store: Store, stop: watch::Receiver<bool>) -> Arc<ControlPlane> {
        let (versions, _) = watch::channel(Versions::default());
        let cp = Arc::new(ControlPlane {
            store,
            versions,
            stop,
        });
        tokio::spawn(refresh(Arc::downgrade(&cp), cp.stop.clone()));
        cp
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Reads the newest versions every [`REFRESH_INTERVAL`] while a poller waits.
async fn refresh(cp: Weak<ControlPlane>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(cp) = cp.upgrade() else { return };
        if cp.versions.receiver_count() == 0 {
            continue;
        }
        match policies::latest_versions(&cp.store).await {
            Ok(latest) => {
                cp.versions.send_if_modified(|current| {
                    if **current == latest {
                        return false;
                    }
                    *current = Arc::new(latest);
                    true
                });
            }
            Err(e) => tracing::debug!(error = %e, "control plane: cannot read policy versions"),
        }
    }
}

/// Answers a request under `/boundary/v1/`.
pub async fn handle(req: Request<Incoming>, cp: &ControlPlane) -> Response<ProxyBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let result = match (&method, path.as_str()) {
        (&Method::GET, "/boundary/v1/policy") => get_policy(req, cp).await,
        (&Method::POST, "/boundary/v1/status") => post_status(req, cp).await,
        (&Method::POST, "/boundary/v1/sessions") => post_session(req, cp).await,
        (&Method::POST, "/boundary/v1/events") => post_events(req, cp).await,
        (&Method::DELETE, p) if p.starts_with("/boundary/v1/sessions/") => {
            delete_session(req, cp).await
        }
        (
            _,
            "/boundary/v1/policy"
            | "/boundary/v1/status"
            | "/boundary/v1/sessions"
            | "/boundary/v1/events",
        ) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no control-plane route {method} {path} (see docs/CONTROL_PLANE.md)"),
        )),
    };
    result.unwrap_or_else(|e| {
        let mut r = e.into_response();
        // A refused request's body may be unread (refused before reading, or too large):
        // the connection cannot carry another request, and the client must not reuse it.
        if has_body {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    })
}

/// Reads a request body of at most `limit` bytes: `413` beyond (by `content-length` before
/// reading anything), `408` if it does not arrive within 30 s.
pub async fn read_body(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(
        BODY_TIMEOUT,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Authenticates the agent, then reads and parses its JSON body.
async fn agent_and_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    cp: &ControlPlane,
) -> Result<(AgentIdentity, T), ApiError> {
    let agent = agents::authenticate(&cp.store, req.headers()).await?;
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, &parts.headers, MAX_BODY_BYTES).await?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok((agent, value))
}

/// `If-None-Match: "T:V"` (weak or strong) as `(T, V)`.
fn known_version(req: &Request<Incoming>) -> Option<(String, i64)> {
    let v = req
        .headers()
        .get(header::IF_NONE_MATCH)?
        .to_str()
        .ok()?
        .trim();
    let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
    let (t, n) = v.rsplit_once(':')?;
    Some((t.to_string(), n.parse().ok()?))
}

/// The `wait` query parameter: 0 to 60 seconds, default 0.
fn wait_param(req: &Request<Incoming>) -> Result<Duration, ApiError> {
    let Some(q) = req.uri().query() else {
        return Ok(Duration::ZERO);
    };
    for (k, v) in q.split('&').filter_map(|p| p.split_once('=')) {
        if k == "wait" {
            let secs: u64 = v.parse().map_err(|_| {
                ApiError::bad_request(format!("wait={v}: a number of seconds from 0 to 60"))
            })?;
            if secs > MAX_WAIT.as_secs() {
                return Err(ApiError::bad_request(format!(
                    "wait={secs}: at most {} seconds",
                    MAX_WAIT.as_secs()
                )));
            }
            return Ok(Duration::from_secs(secs));
        }
    }
    Ok(Duration::ZERO)
}

fn policy_response(v: &policies::PolicyVersion) -> Response<ProxyBody> {
    let mut r = json_response(StatusCode::OK, serde_json::to_string(v).unwrap_or_default());
    set_etag(&mut r, v);
    r
}

fn not_modified(v: &policies::PolicyVersion) -> Response<ProxyBody> {
    let mut r = empty_response(StatusCode::NOT_MODIFIED);
    set_etag(&mut r, v);
    r
}

fn set_etag(r: &mut Response<ProxyBody>, v: &policies::PolicyVersion) {
    if let Ok(etag) = HeaderValue::from_str(&v.etag()) {
        r.headers_mut().insert(header::ETAG, etag);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

async fn current_policy(
    cp: &ControlPlane,
    template: &str,
) -> Result<policies::PolicyVersion, ApiError> {
    policies::current(&cp.store, template)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no policy pushed for template {template}"),
            )
        })
}

/// `GET /boundary/v1/policy?wait=S` with `If-None-Match`.
async fn get_policy(
    req: Request<Incoming>,
    cp: &ControlPlane,
) -> Result<Response<ProxyBody>, ApiError> {
    let agent = agents::authenticate(&cp.store, req.headers()).await?;
    let wait = wait_param(&req)?;
    let known = known_version(&req);
    let template = agent.template;
    let current = current_policy(cp, &template).await?;
    let Some(known) = known
        .filter(|(t, _)| *t == template)
        .map(|(_, v)| v)
        .filter(|v| *v == current.version)
    else {
        return Ok(policy_response(&current));
    };
    if wait.is_zero() {
        return Ok(not_modified(&current));
    }
    // Subscribed before waiting: a version stored from here on is seen by the refresher.
    let mut versions = cp.versions.subscribe();
    let mut stop = cp.stop.clone();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let newer = |m: &Versions| m.get(&template).is_some_and(|v| *v > known);
        tokio::select! {
            changed = versions.wait_for(newer) => {
                if changed.is_err() {
                    return Ok(not_modified(&current));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(not_modified(&current)),
            _ = stop.wait_for(|s| *s) => return Ok(not_modified(&current)),
        }
        let latest = current_policy(cp, &template).await?;
        if latest.version != known {
            return Ok(policy_response(&latest));
        }
        // The refresher saw a version this replica's store does not show yet: look again on
        // the next change.
        tokio::time::sleep(REFRESH_INTERVAL).await;
    }
}

/// `POST /boundary/v1/status`.
async fn post_status(
    req: Request<Incoming>,
    cp: &ControlPlane,
) -> Result<Response<ProxyBody>, ApiError> {
    let (agent, status): (_, agents::Status) = agent_and_json(req, cp).await?;
    agents::record_status(&cp.store, &agent, &status)
        .await
        .map_err(ApiError::store)?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// `POST /boundary/v1/sessions`.
async fn post_session(
    req: Request<Incoming>,
    cp: &ControlPlane,
) -> Result<Response<ProxyBody>, ApiError> {
    let (agent, registration): (_, sessions::Registration) = agent_and_json(req, cp).await?;
    match sessions::register(&cp.store, &agent, &registration).await {
        Ok(()) => Ok(empty_response(StatusCode::NO_CONTENT)),
        Err(RegisterError::Invalid(m)) => Err(ApiError::bad_request(m)),
        Err(RegisterError::Conflict(m)) => Err(ApiError::new(StatusCode::CONFLICT, m)),
        Err(RegisterError::Store(e)) => Err(ApiError::store(e)),
    }
}

/// `POST /boundary/v1/events`: a batch of the agent's events, stored (idempotent by
/// `event.id`) before the answer; see [`crate::audit::ingest`].
async fn post_events(
    req: Request<Incoming>,
    cp: &ControlPlane,
) -> Result<Response<ProxyBody>, ApiError> {
    use crate::audit::ingest::{ingest, Origin, MAX_BATCH_BYTES};
    let agent = agents::authenticate(&cp.store, req.headers()).await?;
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, &parts.headers, MAX_BATCH_BYTES).await?;
    let origin = Origin {
        agent_id: agent.id,
        template: agent.template,
        workspace: agent.workspace,
    };
    match ingest(&cp.store, &bytes, &origin).await {
        Ok(Ok((stored, ends))) => {
            // "A session ends when its boundary.session.end event is stored": after the
            // commit. A failure here is a 503, so the agent sends the batch again (then all
            // duplicates) and the sessions are ended then.
            if !ends.is_empty() {
                sessions::end_sessions_of_events(&cp.store, &origin.agent_id, &ends)
                    .await
                    .map_err(ApiError::store)?;
            }
            Ok(super::json_response(
                StatusCode::OK,
                serde_json::json!(stored).to_string(),
            ))
        }
        Ok(Err(refused)) => Err(ApiError::new(
            StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_REQUEST),
            refused.message,
        )),
        Err(e) => Err(ApiError::store(e)),
    }
}

/// `DELETE /boundary/v1/sessions/ID`.
async fn delete_session(
    req: Request<Incoming>,
    cp: &ControlPlane,
) -> Result<Response<ProxyBody>, ApiError> {
    let agent = agents::authenticate(&cp.store, req.headers()).await?;
    let id = req
        .uri()
        .path()
        .trim_start_matches("/boundary/v1/sessions/")
        .to_string();
    if id.is_empty() || id.contains('/') {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "DELETE /boundary/v1/sessions/ID: name one session",
        ));
    }
    let ended = sessions::end(&cp.store, &agent.id, &id, Utc::now())
        .await
        .map_err(ApiError::store)?;
    if !ended {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {id:?} registered by this agent"),
        ));
    }
    Ok(empty_response(StatusCode::NO_CONTENT))
}

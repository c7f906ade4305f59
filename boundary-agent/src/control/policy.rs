//! The template's policy from the control plane: `GET /boundary/v1/policy`, long-polled
//! (`wait=30`, `If-None-Match: "<template>:<version>"`), so a pushed version reaches the agent
//! as soon as the server has it.
//!
//! A version is checked with the very code that enforces it (parse, validate, compile) before
//! it replaces anything: a version the agent cannot apply is a `boundary.policy.rejected`
//! event naming it, and the last good policy stays. A good one is written to
//! `<state>/policy/` (see [`crate::managed`]) and reported as `boundary.policy.applied`; every
//! session of the default policy watches those files and applies it within a second.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{Backoff, OncePerMinute};
use super::Control;
use crate::managed::{self, Meta};
use crate::policy::{self, Mode};

/// Seconds the server may hold a poll.
const WAIT_S: u64 = 30;
/// The request's own limit: the hold plus room for a slow answer.
const POLL_TIMEOUT: Duration = Duration::from_secs(WAIT_S + 15);
/// No policy pushed for the template yet: ask again this often (the server answers at once).
const MISSING_RETRY: Duration = Duration::from_secs(2);

/// The body of a `200` (docs/CONTROL_PLANE.md).
#[derive(Debug, Deserialize)]
struct Version {
    template: String,
    version: u64,
    mode: Mode,
    sha256: String,
    yaml: String,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

pub async fn run(ctl: Arc<Control>) {
    let mut backoff = Backoff::default();
    let mut refused = OncePerMinute::default();
    let mut failing = OncePerMinute::default();
    let mut missing = OncePerMinute::default();
    // What the server last answered (a rejected version too: no point fetching it again).
    let mut etag = ctl.current().etag();
    loop {
        let headers: Vec<(&str, String)> =
            etag.iter().map(|e| ("if-none-match", e.clone())).collect();
        let reply = ctl
            .client
            .send(
                http::Method::GET,
                &format!("/boundary/v1/policy?wait={WAIT_S}"),
                None,
                &headers,
                POLL_TIMEOUT,
            )
            .await;
        match reply {
            Ok(r) if r.status == 200 => {
                backoff.reset();
                match serde_json::from_slice::<Version>(&r.body) {
                    Ok(v) => {
                        etag = Some(format!("\"{}:{}\"", v.template, v.version));
                        accept(&ctl, v);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the control plane sent a policy the agent cannot read");
                        tokio::time::sleep(backoff.next_wait()).await;
                    }
                }
            }
            Ok(r) if r.status == 304 => backoff.reset(),
            Ok(r) if r.status == 404 => {
                if missing.due() {
                    tracing::info!(answer = %r.error_text(), "no policy on the control plane yet; enforcing the local one");
                }
                tokio::time::sleep(MISSING_RETRY).await;
            }
            Ok(r) if r.status == 401 || r.status == 403 => {
                if refused.due() {
                    tracing::error!(status = r.status, error = %r.error_text(),
                        "the control plane refuses this agent's token; the last good policy stays in force");
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
            Ok(r) => {
                if failing.due() {
                    tracing::warn!(status = r.status, error = %r.error_text(), "fetching the policy failed; retrying");
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
            Err(e) => {
                if failing.due() {
                    tracing::warn!(error = %e, "the control plane is unreachable; the last good policy stays in force");
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}

/// Checks a version and, if the agent can enforce it, makes it the policy in force.
fn accept(ctl: &Control, v: Version) {
    let current = ctl.current();
    if current.version == v.version && current.template == v.template && current.sha256 == v.sha256
    {
        return;
    }
    let meta = Meta {
        template: v.template.clone(),
        version: v.version,
        sha256: v.sha256.clone(),
        mode: Some(v.mode),
        author: v.author,
        created_at: v.created_at,
        comment: v.comment,
    };
    let path = ctl.policy_path();
    let checked = if managed::sha256_hex(v.yaml.as_bytes()) != v.sha256 {
        Err(format!(
            "the text does not hash to its sha256 {} (damaged on the way?)",
            v.sha256
        ))
    } else {
        managed::parse(&v.yaml, &meta, &path)
            .and_then(|p| {
                policy::compile(&p, &policy::AddressBook::default(), &[])
                    .map(|_| p)
                    .map_err(crate::error::Error::from)
            })
            .map_err(|e| e.to_string())
    };
    let fields = |extra: Value| {
        let mut m = json!({
            "boundary.policy.template": v.template,
            "boundary.policy.version": v.version,
            "boundary.policy.sha256": v.sha256,
            "boundary.mode": v.mode.as_str(),
            "boundary.policy.source": ctl.client.base(),
        });
        if let (Value::Object(m), Value::Object(extra)) = (&mut m, extra) {
            m.extend(extra);
        }
        m
    };
    match checked {
        Err(why) => {
            tracing::error!(template = %v.template, version = v.version, error = %why,
                "the control plane's policy cannot be applied; the last good policy stays in force");
            ctl.emit(
                "boundary.policy.rejected",
                fields(json!({"error.message": why})),
            );
        }
        Ok(policy) => {
            if let Err(e) = managed::save(ctl.policy_dir(), &v.yaml, &meta) {
                tracing::error!(error = %e, "writing the new policy; the last good policy stays in force");
                ctl.emit(
                    "boundary.policy.rejected",
                    fields(json!({"error.message": format!("writing it: {e}")})),
                );
                return;
            }
            tracing::info!(template = %v.template, version = v.version, mode = v.mode.as_str(),
                rules = policy.rules.len(), "new policy version in force");
            ctl.set_current(meta);
            ctl.emit(
                "boundary.policy.applied",
                fields(json!({"boundary.policy.rules": policy.rules.len()})),
            );
        }
    }
}

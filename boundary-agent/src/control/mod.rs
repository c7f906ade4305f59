//! `boundary agent --control-plane URL`: the agent as a member of a fleet that Bridge governs
//! (see docs/CONTROL_PLANE.md, the wire contract).
//!
//! - [`client`]: HTTPS to the control plane (hyper, rustls with the webpki roots and
//!   `--ca-file`), the agent's token and identity headers on every request;
//! - [`policy`]: long-polls the template's policy, keeps the last good one on disk, points
//!   the default policy's sessions at it, reports status;
//! - [`spool`]: the bounded on-disk queue every event goes through, with its `event.id`;
//! - [`shipper`]: sends the spool in batches, deletes only what the server acknowledged;
//! - [`credential`]: the per-session credential given to the wrapped command.

pub mod client;
pub mod credential;
pub mod policy;
pub mod shipper;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};

use crate::error::{Error, Result};
use crate::events::{SpoolFeed, SpoolQueue, Tap};
use crate::managed::{self, Meta};
use client::{Backoff, ControlPlane, OncePerMinute};
use spool::Spool;

/// Where the agent keeps its state unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/boundary";
/// How often the agent reports its status (and after each policy change).
const STATUS_EVERY: Duration = Duration::from_secs(30);
/// The spool's writes reach the disk at most this long after a quiet moment.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// A session start waits at most this long for its registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// `boundary agent --control-plane ...`.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub url: String,
    pub token_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub spool_max: u64,
}

/// A session's registration (`POST /boundary/v1/sessions`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Registration {
    pub session_id: String,
    pub credential_sha256: String,
    pub user_name: Option<String>,
    pub uid: u32,
    pub command: String,
    pub started_at: String,
}

/// A call about a session that must reach the control plane, retried until it does.
#[derive(Debug, Clone)]
enum SessionCall {
    Register(Registration),
    /// `DELETE /boundary/v1/sessions/<id>`: the session ended, its credential stops working.
    End(String),
}

/// The agent's link to its control plane: the client, the policy in force, the spool and
/// the tasks that move them.
pub struct Control {
    pub client: ControlPlane,
    spool: Mutex<Spool>,
    feed: SpoolFeed,
    shipper_wake: Notify,
    status_wake: Notify,
    policy_dir: PathBuf,
    current: Mutex<Meta>,
    tap: Tap,
    registrations: mpsc::UnboundedSender<SessionCall>,
    /// The receiving end of `registrations`, until [`Control::run`] starts its task.
    pending_calls: Mutex<Option<mpsc::UnboundedReceiver<SessionCall>>>,
    delivered: AtomicU64,
    started_at: String,
}

impl Control {
    /// Opens the state (last good policy, spool). `config`: the `--config` policy, enforced
    /// until the control plane has delivered one. Nothing is fetched or shipped until
    /// [`Control::run`].
    pub fn open(opts: &ControlOptions, config: &Path, tap: Tap) -> Result<Arc<Control>> {
        let client = ControlPlane::new(&opts.url, &opts.token_file, opts.ca_file.as_deref())?;
        use std::os::unix::fs::DirBuilderExt;
        let policy_dir = opts.state_dir.join("policy");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&policy_dir)
            .map_err(|source| Error::File {
                path: policy_dir.clone(),
                source,
            })?;
        let current = last_good_or_local(&policy_dir, config)?;
        let spool = Spool::open(&opts.state_dir.join("spool"), opts.spool_max)?;
        if spool.pending() > 0 {
            tracing::info!(events = spool.pending(), "resuming the event spool");
        }
        let (feed, queue) = SpoolFeed::channel();
        let (reg_tx, reg_rx) = mpsc::unbounded_channel();
        let ctl = Arc::new(Control {
            client,
            spool: Mutex::new(spool),
            feed,
            shipper_wake: Notify::new(),
            status_wake: Notify::new(),
            policy_dir,
            current: Mutex::new(current),
            tap,
            registrations: reg_tx,
            pending_calls: Mutex::new(None),
            delivered: AtomicU64::new(0),
            started_at: crate::events::now_rfc3339(),
        });
        let writer = ctl.clone();
        std::thread::Builder::new()
            .name("boundary-spool".into())
            .spawn(move || write_spool(writer, queue))
            .map_err(Error::Io)?;
        *ctl.pending_calls.lock().unwrap() = Some(reg_rx);
        Ok(ctl)
    }

    /// Starts fetching policies, shipping events and delivering session calls: once whoever
    /// reads the agent's events (its `--events` file, `boundary events`) is listening, so
    /// that they see the first `boundary.policy.applied` too.
    pub fn run(self: &Arc<Control>) {
        let Some(calls) = self.pending_calls.lock().unwrap().take() else {
            return;
        };
        tokio::spawn(shipper::run(self.clone()));
        tokio::spawn(policy::run(self.clone()));
        tokio::spawn(register_queued(self.clone(), calls));
    }

    /// Where sessions send their events.
    pub fn feed(&self) -> SpoolFeed {
        self.feed.clone()
    }

    /// The policy in force (its text: [`Control::policy_path`]).
    pub fn current(&self) -> Meta {
        self.current.lock().unwrap().clone()
    }

    fn set_current(&self, meta: Meta) {
        *self.current.lock().unwrap() = meta;
        self.status_wake.notify_one();
    }

    /// The managed policy file the default policy's sessions run with.
    pub fn policy_path(&self) -> PathBuf {
        self.policy_dir.join(managed::YAML)
    }

    fn policy_dir(&self) -> &Path {
        &self.policy_dir
    }

    /// Events waiting in the spool, and lost since the start.
    pub fn spool_counts(&self) -> (u64, u64) {
        let spool = self.spool.lock().unwrap();
        (spool.pending() + self.feed.queued(), spool.lost())
    }

    fn note_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// An agent-level event (not a session's): to the live view and the spool.
    pub fn emit(&self, name: &str, fields: Value) {
        let mut m = Map::new();
        m.insert("timestamp".into(), crate::events::now_rfc3339().into());
        m.insert("event.name".into(), name.into());
        m.insert("service.name".into(), "boundary".into());
        if let Value::Object(extra) = fields {
            m.extend(extra);
        }
        let _ = self.tap.send(Arc::new(m.clone()));
        let _ = self.feed.send(m);
    }

    /// Registers a session's credential: at most [`REGISTER_TIMEOUT`]; if the control plane
    /// does not answer, the registration is queued and retried and the session starts anyway.
    pub async fn register_session(&self, reg: Registration) {
        match self.post_registration(&reg, REGISTER_TIMEOUT).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(session = %reg.session_id, error = %e,
                    "registering the session with the control plane; queued, it is retried");
                let _ = self.registrations.send(SessionCall::Register(reg));
            }
        }
    }

    /// Tells the control plane a session ended (its credential stops working); queued and
    /// retried if it does not answer. Returns at once.
    pub fn end_session(&self, session_id: &str) {
        let _ = self
            .registrations
            .send(SessionCall::End(session_id.to_string()));
    }

    async fn post_end(&self, session_id: &str, timeout: Duration) -> Result<()> {
        let r = self
            .client
            .send(
                http::Method::DELETE,
                &format!("/boundary/v1/sessions/{session_id}"),
                None,
                &[],
                timeout,
            )
            .await?;
        match r.status {
            // 404: never registered (or already ended): nothing to end.
            200..=299 | 404 => Ok(()),
            s => Err(Error::Agent(format!("{s}: {}", r.error_text()))),
        }
    }

    async fn post_registration(&self, reg: &Registration, timeout: Duration) -> Result<()> {
        let body = serde_json::to_vec(reg).map_err(|e| Error::Agent(e.to_string()))?;
        let r = self
            .client
            .send(
                http::Method::POST,
                "/boundary/v1/sessions",
                Some(body),
                &[],
                timeout,
            )
            .await?;
        match r.status {
            200..=299 => Ok(()),
            s => Err(Error::Agent(format!("{s}: {}", r.error_text()))),
        }
    }

    /// The status report (`POST /boundary/v1/status`).
    pub fn status_body(&self, sessions: usize) -> Value {
        let current = self.current();
        let (spooled, lost) = self.spool_counts();
        json!({
            "agent_version": env!("CARGO_PKG_VERSION"),
            "hostname": self.client.hostname(),
            "policy_version": (current.version > 0).then_some(current.version),
            "policy_sha256": current.sha256,
            "sessions": sessions,
            "events_spooled": spooled,
            "events_lost": lost,
            "started_at": self.started_at,
        })
    }

    /// For `boundary status`.
    pub fn summary(&self) -> Value {
        let current = self.current();
        let (spooled, lost) = self.spool_counts();
        json!({
            "url": self.client.base(),
            "template": (!current.template.is_empty()).then_some(current.template.clone()),
            "policy_version": (current.version > 0).then_some(current.version),
            "policy_sha256": current.sha256,
            "mode": current.mode.map(|m| m.as_str()),
            "events_spooled": spooled,
            "events_lost": lost,
            "events_delivered": self.delivered.load(Ordering::Relaxed),
        })
    }

    /// Waits (at most `limit`) until every event queued for the spool is in it: a stopping
    /// agent loses nothing it had accepted.
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.feed.queued() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Reports the agent's status every [`STATUS_EVERY`] and after each policy change.
pub async fn report_status(ctl: Arc<Control>, sessions: impl Fn() -> usize + Send + 'static) {
    let mut failing = OncePerMinute::default();
    loop {
        let body = serde_json::to_vec(&ctl.status_body(sessions())).unwrap_or_default();
        let r = ctl
            .client
            .send(
                http::Method::POST,
                "/boundary/v1/status",
                Some(body),
                &[],
                Duration::from_secs(10),
            )
            .await;
        match r {
            Ok(r) if (200..300).contains(&r.status) => {}
            Ok(r) => {
                if failing.due() {
                    tracing::warn!(status = r.status, error = %r.error_text(), "reporting status");
                }
            }
            Err(e) => {
                if failing.due() {
                    tracing::debug!(error = %e, "reporting status");
                }
            }
        }
        let _ = tokio::time::timeout(STATUS_EVERY, ctl.status_wake.notified()).await;
    }
}

/// The policy the agent starts with: the last good one from the control plane, else a copy
/// of `--config` (version 0) in the same place, so that the default policy's sessions watch
/// one file from the start and take the control plane's first version like any other.
fn last_good_or_local(dir: &Path, config: &Path) -> Result<Meta> {
    let yaml = dir.join(managed::YAML);
    if let Ok(managed::Load::Ready(policy, meta)) = managed::load(&yaml) {
        if meta.version > 0 {
            tracing::info!(template = %meta.template, version = meta.version,
                rules = policy.rules.len(), "enforcing the last good policy from the control plane");
            return Ok(meta);
        }
    }
    let text = std::fs::read_to_string(config).map_err(|source| Error::File {
        path: config.into(),
        source,
    })?;
    let meta = Meta {
        template: String::new(),
        version: 0,
        sha256: managed::sha256_hex(text.as_bytes()),
        mode: None,
        author: None,
        created_at: None,
        comment: Some(format!("local copy of {}", config.display())),
    };
    managed::save(dir, &text, &meta)?;
    Ok(meta)
}

/// The spool's writer thread: every event queued by a session or the agent goes to disk.
fn write_spool(ctl: Arc<Control>, queue: SpoolQueue) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut complain = OncePerMinute::default();
    // Synced to disk about a second after it was written, busy or quiet.
    let mut unsynced: Option<std::time::Instant> = None;
    loop {
        if unsynced.is_some_and(|t| t.elapsed() >= SYNC_EVERY) {
            ctl.spool.lock().unwrap().sync();
            unsynced = None;
        }
        let event = match queue.rx.recv_timeout(SYNC_EVERY) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        unsynced.get_or_insert_with(std::time::Instant::now);
        let result = ctl.spool.lock().unwrap().append(event);
        queue.queued.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = result {
            ctl.spool.lock().unwrap().count_lost(1);
            if complain.due() {
                tracing::error!(error = %e, "writing to the event spool failed; events are lost and counted");
            }
        }
        ctl.shipper_wake.notify_one();
    }
}

/// Delivers session calls in order: registrations the control plane did not take at session
/// start, and session ends; each retried until the control plane answers.
async fn register_queued(ctl: Arc<Control>, mut rx: mpsc::UnboundedReceiver<SessionCall>) {
    let mut backoff = Backoff::default();
    while let Some(call) = rx.recv().await {
        loop {
            let (session, result) = match &call {
                SessionCall::Register(reg) => (
                    &reg.session_id,
                    ctl.post_registration(reg, Duration::from_secs(10)).await,
                ),
                SessionCall::End(id) => (id, ctl.post_end(id, Duration::from_secs(10)).await),
            };
            match result {
                Ok(()) => {
                    backoff.reset();
                    break;
                }
                // A refusal other than of the token (a 4xx about the call itself) will not
                // change by sending it again.
                Err(e) if e.to_string().starts_with('4') && !e.to_string().starts_with("401") => {
                    tracing::error!(session = %session, error = %e, "the control plane refused a session call");
                    break;
                }
                Err(_) => tokio::time::sleep(backoff.next_wait()).await,
            }
        }
    }
}

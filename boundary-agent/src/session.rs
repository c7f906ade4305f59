//! `boundary run`: one session = one policy, one cgroup, one slot in a shared set of eBPF
//! programs and maps ([`SharedKernel`]), and the wrapped command with all its descendants.
//! The agent loads one set for all its sessions; a single-shot `boundary run` loads a set of
//! its own with one session in it, through the same code.
//!
//! Order matters for fail-closed behaviour: the maps are filled and the programs attached
//! before the command starts, and the command joins the cgroup before it execs, so it never
//! runs a single instruction unconfined. While it runs, a policy task keeps the kernel maps in
//! step with DNS answers and with edits of config.yaml (a bad edit is reported and the last
//! good policy stays in force).

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use boundary_common::{Settings, MODE_AUDIT, MODE_ENFORCE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Map, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::cgroup::{self, Cgroup};

use crate::confine::{Confinement, RunAs};
use crate::dns::{DnsProxy, Learned, LearnedNames, ProxyContext, RunningProxy};
use crate::error::{Error, Result};
use crate::events::{self, Enricher, Sink};
use crate::loader::{self, Enforcer, ProgramSet, Rings};
use crate::managed::{self, Meta};
use crate::policy::AddressBook;
use crate::policy::{self, Mode, Policy};
use crate::resolver::{Resolver, ResolverConfig};
use crate::rings::{Dropped, Router};

/// Exit code when boundary itself fails (bad config, missing privilege, kernel refusal): the
/// command did not run. 126/127 keep their shell meanings (not executable / not found).
pub const EXIT_BOUNDARY_FAILED: i32 = 125;

/// Directory of the per-session files that record which agent owns a session.
const RUN_DIR: &str = "/run/boundary/sessions";

/// How often config.yaml is checked for edits and the loss counters are read. An edit is
/// applied once the file has stayed the same for one more poll: an editor that writes a file
/// in two steps never gets its first half applied.
const POLL: Duration = Duration::from_millis(300);

/// Single-shot `boundary run`: the session and the command to run in it.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub session: SessionSpec,
    pub command: Vec<OsString>,
    /// Who the command runs as.
    pub run_as: Option<RunAs>,
}

/// What a session needs to start: the policy file and the knobs around it. The command
/// itself is started by the caller (single-shot `run`, or the client of the agent daemon).
/// Kept beside the session's owner file so that a restarted agent can adopt it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SessionSpec {
    pub config: PathBuf,
    /// The command as text, for the session events.
    pub command_line: String,
    /// Also write the events here: `-` for stdout, or a file to append to.
    pub events: Option<PathBuf>,
    pub hosts_file: Option<PathBuf>,
    pub dns_server: Option<SocketAddr>,
    pub session_id: Option<String>,
    pub cgroup_root: Option<PathBuf>,
    pub mode: Option<Mode>,
    /// Do not report allowed connections (deny and would_deny events are always reported).
    pub deny_events_only: bool,
    /// The user the session belongs to (its command runs as them).
    pub owner_uid: Option<u32>,
    /// `config` is a policy managed by a control plane (see [`crate::managed`]): its mode
    /// and version come from the metadata file beside it.
    #[serde(default)]
    pub managed: bool,
}

/// Loads the session's policy: the file, or the managed pair (waiting out a pair caught
/// between its two renames), with the mode the spec imposes.
fn load_policy(spec: &SessionSpec) -> Result<(Policy, Option<Meta>)> {
    let (mut policy, meta) = if spec.managed {
        let mut tries = 0;
        loop {
            match managed::load(&spec.config)? {
                managed::Load::Ready(policy, meta) => break (*policy, Some(meta)),
                managed::Load::Pending if tries < 40 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                managed::Load::Pending => {
                    return Err(Error::Agent(format!(
                        "{}: the policy text does not match its metadata ({})",
                        spec.config.display(),
                        managed::META
                    )))
                }
            }
        }
    } else {
        (policy::load(&spec.config)?, None)
    };
    if let Some(mode) = spec.mode {
        policy.mode = mode;
    }
    Ok((policy, meta))
}

/// The fields that name a managed policy's version in events.
fn version_fields(meta: Option<&Meta>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(meta) = meta {
        if meta.version > 0 {
            m.insert("boundary.policy.version".into(), meta.version.into());
            m.insert(
                "boundary.policy.template".into(),
                meta.template.clone().into(),
            );
        }
        m.insert("boundary.policy.sha256".into(), meta.sha256.clone().into());
    }
    m
}

/// Checks a session id: it names a cgroup and files, so it is kept to a safe alphabet.
pub fn validate_session_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::InvalidTarget {
            target: id.to_string(),
            reason: "a session id is 1 to 64 letters, digits, '-' or '_'".into(),
        });
    }
    Ok(())
}

/// A program set and the reader of its rings: what the sessions in it share.
pub struct SharedKernel {
    pub set: Arc<ProgramSet>,
    pub router: Arc<Router>,
}

/// Sets reopened from a dead agent's pins, by id: the sessions adopted from one set share its
/// reader.
static ADOPTED: Mutex<Option<HashMap<u32, Weak<SharedKernel>>>> = Mutex::new(None);

impl SharedKernel {
    /// Loads the programs (the verifier runs here, once) with event rings of `ring_bytes`
    /// each, and starts reading them. Needs a tokio runtime.
    pub fn load(ring_bytes: u32) -> Result<Arc<SharedKernel>> {
        let (set, rings) = ProgramSet::load(ring_bytes)?;
        Ok(Arc::new(SharedKernel {
            set,
            router: Router::start(rings, true),
        }))
    }

    /// The shared kernel of an adopted session's set: new (its reader paused until
    /// [`resume_adopted`]) when `rings` came with it, the one already open otherwise.
    fn adopted(set: &Arc<ProgramSet>, rings: Option<Rings>) -> Result<Arc<SharedKernel>> {
        let mut adopted = ADOPTED.lock().unwrap();
        let adopted = adopted.get_or_insert_with(HashMap::new);
        adopted.retain(|_, k| k.strong_count() > 0);
        match rings {
            Some(rings) => {
                let kernel = Arc::new(SharedKernel {
                    set: set.clone(),
                    router: Router::start(rings, false),
                });
                adopted.insert(set.id(), Arc::downgrade(&kernel));
                Ok(kernel)
            }
            None => adopted
                .get(&set.id())
                .and_then(Weak::upgrade)
                .ok_or_else(|| {
                    Error::Agent(format!(
                        "program set {} is open but its event reader is gone",
                        set.id()
                    ))
                }),
        }
    }
}

/// Lets the readers of the sets reopened by [`Session::adopt`] begin, once every session of
/// theirs that can be adopted has its route (their unread records wait until then).
pub fn resume_adopted() {
    if let Some(adopted) = ADOPTED.lock().unwrap().as_ref() {
        for kernel in adopted.values().filter_map(Weak::upgrade) {
            kernel.router.resume();
        }
    }
}

/// A running session: the policy in the kernel, the cgroup with the programs attached, the
/// event pipeline and the task that keeps the maps in step with DNS and config edits.
pub struct Session {
    pub id: String,
    spec: SessionSpec,
    pub policy_name: String,
    pub policy_source: PathBuf,
    pub started: SystemTime,
    guard: Cleanup,
    enricher: Arc<Enricher>,
    event_tx: events::EventSender,
    stop_tx: watch::Sender<bool>,
    kernel: Arc<SharedKernel>,
    slot: u32,
    policy_task: tokio::task::JoinHandle<Enforcer>,
    refresh: tokio::task::JoinHandle<()>,
    sink_task: tokio::task::JoinHandle<()>,
    /// The session's DNS proxy (stopped when dropped).
    dns: RunningProxy,
}

impl Session {
    /// Loads the policy, fills the maps, creates the cgroup and attaches the programs: when
    /// this returns, a process that joins [`Session::cgroup`] is confined. A set of programs
    /// of its own is loaded for it (single-shot `boundary run`).
    pub async fn start(spec: SessionSpec, outlets: events::Outlets) -> Result<Session> {
        Session::start_in(None, spec, outlets).await
    }

    /// [`Session::start`] in `kernel`, the agent's shared set (a slot, map entries and a
    /// link per hook on the new cgroup: no verifier), or in a set of its own when `None`.
    pub async fn start_in(
        kernel: Option<Arc<SharedKernel>>,
        spec: SessionSpec,
        outlets: events::Outlets,
    ) -> Result<Session> {
        let (policy, meta) = load_policy(&spec)?;
        check_privileges()?;
        for warning in policy.warnings() {
            tracing::warn!("{warning}");
        }
        let root = match &spec.cgroup_root {
            Some(root) => root.clone(),
            None => cgroup::cgroup2_root()?,
        };
        let session_id = spec
            .session_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        validate_session_id(&session_id)?;
        let kernel = match kernel {
            Some(kernel) => kernel,
            None => {
                // Loaded before the policy is compiled: loading may parse the kernel's BTF
                // (~20 MB, freed right after), and doing it while the compiled policy is not
                // yet in memory keeps the peak RSS down.
                let kernel = SharedKernel::load(loader::RING_BYTES_ONE_SESSION)?;
                // The agent owns its sessions; a single-shot run cleans up after dead ones.
                sweep_stale_sessions(&root);
                kernel
            }
        };
        let guard = claim(&root, &session_id)?;
        let mut enforcer = kernel
            .set
            .session(settings(&policy, spec.deny_events_only))?;
        let started = async {
            let proxy = start_dns_proxy(&mut enforcer)?;
            let resolver_config =
                ResolverConfig::new(&policy.dns, spec.dns_server, spec.hosts_file.as_deref())?;
            let mut resolver = Resolver::new(&policy, resolver_config);
            let book = resolver.resolve_initial().await;
            let compiled = policy::compile(&policy, &book, &proxy.listen_addrs())?;
            enforcer.apply(&compiled)?;
            enforcer.attach(guard.cgroup(), &session_id)?;
            Ok::<_, Error>((proxy, resolver, book))
        }
        .await;
        let (proxy, resolver, book) = match started {
            Ok(parts) => parts,
            Err(e) => {
                // The slot and its entries go back; the guard removes cgroup and pins.
                let _ = enforcer.detach();
                return Err(e);
            }
        };
        write_spec(&session_id, &spec);

        let mut start = json!({
            "process.command_line": spec.command_line,
            "boundary.policy.source": spec.config.display().to_string(),
            "boundary.policy.rules": policy.rules.len(),
            "boundary.cgroup.path": guard.cgroup().path().display().to_string(),
            "process.pid": std::process::id(),
        });
        if let Some(uid) = spec.owner_uid {
            start["user.id"] = uid.into();
        }
        if let Value::Object(m) = &mut start {
            m.extend(version_fields(meta.as_ref()));
        }
        let running = Running {
            id: session_id,
            spec,
            policy,
            enforcer,
            kernel,
            resolver,
            book,
            guard,
            proxy,
        };
        running.launch(outlets, "boundary.session.start", start)
    }

    /// Takes over a session whose agent died (a restarted daemon): reopens its pinned maps
    /// and links (it stays confined throughout), reads the events it could not write (once
    /// [`resume_adopted`] is called), and keeps its policy up to date again.
    pub async fn adopt(id: &str, root: &Path, outlets: events::Outlets) -> Result<Session> {
        validate_session_id(id)?;
        let spec: SessionSpec = std::fs::read(spec_path(id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Error::Agent(format!(
                    "session {id}: no readable {} (started by an older boundary?)",
                    spec_path(id).display()
                ))
            })?;
        let cgroup_path = root.join("boundary").join(id);
        let (mut enforcer, rings) = Enforcer::adopt(id, &cgroup_path)?;
        let kernel = SharedKernel::adopted(enforcer.set(), rings)?;
        let session_file = Path::new(RUN_DIR).join(id);
        let _ = std::fs::write(&session_file, std::process::id().to_string());
        let guard = Cleanup {
            cgroup: Some(Cgroup::open(&cgroup_path)?),
            session_file,
            pin_dir: Path::new(loader::PIN_ROOT).join(id),
            permanent: false,
        };
        // The file may have changed or broken while nobody watched: a bad one keeps the
        // policy that is in the maps (fail closed), a good one is applied.
        let (policy, meta) = load_policy(&spec)?;
        let resolver_config =
            ResolverConfig::new(&policy.dns, spec.dns_server, spec.hosts_file.as_deref())?;
        let mut resolver = Resolver::new(&policy, resolver_config);
        let book = resolver.resolve_initial().await;
        enforcer.set_settings(settings(&policy, spec.deny_events_only))?;
        let proxy = start_dns_proxy(&mut enforcer)?;
        let compiled = policy::compile(&policy, &book, &proxy.listen_addrs())?;
        enforcer.apply(&compiled)?;
        let mut fields = json!({
            "boundary.policy.source": spec.config.display().to_string(),
            "boundary.policy.rules": policy.rules.len(),
            "boundary.cgroup.path": guard.cgroup().path().display().to_string(),
            "process.pid": std::process::id(),
        });
        let running = Running {
            id: id.to_string(),
            spec,
            policy,
            enforcer,
            kernel,
            resolver,
            book,
            guard,
            proxy,
        };
        if let Value::Object(m) = &mut fields {
            m.extend(version_fields(meta.as_ref()));
        }
        running.launch(outlets, "boundary.session.adopted", fields)
    }

    /// Whole-workspace mode: confines an existing cgroup (a container's, a systemd slice) and
    /// everything in it, processes already running included, except the `exempt` cgroups (the
    /// workspace's own control processes, this agent). The programs stay attached for good:
    /// neither the end of the agent nor a restart removes them; a restarted agent adopts them.
    pub async fn confine_existing(
        spec: SessionSpec,
        cgroup: &Path,
        exempt: &[PathBuf],
        outlets: events::Outlets,
    ) -> Result<Session> {
        const ID: &str = "workspace";
        let (policy, _) = load_policy(&spec)?;
        check_privileges()?;
        let pinned = Path::new(loader::PIN_ROOT).join(ID).is_dir();
        // A set of its own: its exemptions and its permanence concern it alone.
        let (mut enforcer, kernel) = if pinned {
            let (enforcer, rings) = Enforcer::adopt(ID, cgroup)?;
            let kernel = SharedKernel::adopted(enforcer.set(), rings)?;
            (enforcer, kernel)
        } else {
            let kernel = SharedKernel::load(loader::RING_BYTES_ONE_SESSION)?;
            let enforcer = kernel
                .set
                .session(settings(&policy, spec.deny_events_only))?;
            (enforcer, kernel)
        };
        let mut ids = Vec::new();
        for path in exempt {
            ids.push(loader::cgroup_id(path)?);
        }
        enforcer.set_exempt(&ids)?;
        let resolver_config =
            ResolverConfig::new(&policy.dns, spec.dns_server, spec.hosts_file.as_deref())?;
        let mut resolver = Resolver::new(&policy, resolver_config);
        let book = resolver.resolve_initial().await;
        enforcer.set_settings(settings(&policy, spec.deny_events_only))?;
        let proxy = start_dns_proxy(&mut enforcer)?;
        let compiled = policy::compile(&policy, &book, &proxy.listen_addrs())?;
        enforcer.apply(&compiled)?;
        let guard = Cleanup {
            cgroup: Some(Cgroup::open(cgroup)?),
            session_file: Path::new(RUN_DIR).join(ID),
            pin_dir: Path::new(loader::PIN_ROOT).join(ID),
            permanent: true,
        };
        if !pinned {
            enforcer.attach(guard.cgroup(), ID)?;
        }
        let fields = json!({
            "boundary.policy.source": spec.config.display().to_string(),
            "boundary.policy.rules": policy.rules.len(),
            "boundary.cgroup.path": cgroup.display().to_string(),
            "boundary.exempt.cgroups": exempt.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "process.pid": std::process::id(),
        });
        let running = Running {
            id: ID.to_string(),
            spec,
            policy,
            enforcer,
            kernel: kernel.clone(),
            resolver,
            book,
            guard,
            proxy,
        };
        let session = running.launch(
            outlets,
            if pinned {
                "boundary.session.adopted"
            } else {
                "boundary.session.start"
            },
            fields,
        )?;
        kernel.router.resume();
        Ok(session)
    }

    /// Records the session's first process (pid and command line) for its events, so that
    /// they name it even if it exits before they are read.
    pub fn remember_process(&self, pid: u32, command_line: &str) {
        self.enricher.remember(
            pid,
            events::ProcessInfo {
                command_line: Some(command_line.to_string()),
                ..Default::default()
            },
        );
    }

    /// The enricher, for whoever learns of the session's processes outside it (the daemon).
    pub fn enricher(&self) -> Arc<Enricher> {
        self.enricher.clone()
    }

    /// What supervises the syscall filter of this session's processes.
    pub fn syscall_supervisor(&self) -> SyscallSupervisor {
        SyscallSupervisor {
            enricher: self.enricher.clone(),
            events: self.event_tx.downgrade(),
        }
    }

    pub fn spec(&self) -> &SessionSpec {
        &self.spec
    }

    pub fn cgroup(&self) -> &Cgroup {
        self.guard.cgroup()
    }

    /// The environment every process of the session sees (for the Boundary–Bridge join).
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("BOUNDARY_SESSION_ID", self.id.clone()),
            ("BOUNDARY_POLICY", self.policy_name.clone()),
        ]
    }

    /// Queues a session-level event (`boundary.session.*`, `boundary.policy.*`).
    pub fn emit(&self, name: &str, fields: Value) {
        events::emit(&self.event_tx, self.enricher.session(name, fields));
    }

    /// Ends the session: kills whatever is left in the cgroup, drains the rings, writes
    /// `boundary.session.end` with `end` as its fields, detaches and removes everything.
    pub async fn finish(self, end: Map<String, Value>) {
        let Session {
            guard,
            enricher,
            event_tx,
            stop_tx,
            kernel,
            slot,
            policy_task,
            refresh,
            sink_task,
            dns,
            ..
        } = self;
        // The command is done: nothing else in its cgroup may outlive it.
        refresh.abort();
        drop(dns);
        if let Some(cgroup) = guard.cgroup.as_ref() {
            let _ = cgroup::kill_all(cgroup.path());
            // Its last decisions are in the rings once its processes are gone.
            let deadline = Instant::now() + Duration::from_secs(2);
            while cgroup.populated() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        kernel.router.flush().await;
        kernel.router.unregister(slot);
        let _ = stop_tx.send(true);
        let enforcer = match policy_task.await {
            Ok(enforcer) => Some(enforcer),
            Err(e) => {
                tracing::error!(error = %e, "policy task failed");
                None
            }
        };
        events::emit(
            &event_tx,
            enricher.session("boundary.session.end", Value::Object(end)),
        );
        drop(event_tx);
        let _ = sink_task.await;
        if let Some(enforcer) = enforcer {
            if let Err(e) = enforcer.detach() {
                tracing::warn!(error = %e, "detaching the programs");
            }
        }
        guard.finish();
    }
}

/// Answers the session's syscall-filter refusals and reports each one as a
/// `boundary.decision` event (`boundary.hook: seccomp`); in audit mode the call goes ahead and
/// is reported as `would_deny`. Holds the event channel weakly: a session that ends is never
/// kept open by it.
#[derive(Clone)]
pub struct SyscallSupervisor {
    enricher: Arc<Enricher>,
    events: mpsc::WeakSender<Map<String, Value>>,
}

impl SyscallSupervisor {
    /// Supervises the processes behind `listener` until they are gone (a task of the
    /// runtime, not a thread: an agent serves hundreds of sessions).
    pub fn spawn(&self, listener: std::os::fd::OwnedFd) {
        let me = self.clone();
        tokio::spawn(async move {
            let result = loader::supervise_async(listener, |refusal| {
                let audit = me.enricher.policy.borrow().mode == Mode::Audit;
                if let Some(tx) = me.events.upgrade() {
                    // Never dropped: a full queue gets it a moment later.
                    events::emit(&tx, me.enricher.refusal(&refusal, audit));
                }
                audit
            })
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "supervising the syscall filter stopped");
            }
        });
    }
}

/// Claims the session id (its owner file names this process) and creates its cgroup. The
/// guard removes both (and the session's pins) however the session ends.
fn claim(root: &Path, id: &str) -> Result<Cleanup> {
    // Claim the session before its cgroup exists: a concurrent run's sweep removes cgroups
    // whose owner file is missing or names a dead agent.
    let session_file = Path::new(RUN_DIR).join(id);
    let _ = std::fs::create_dir_all(RUN_DIR);
    if owner_alive(id) || root.join("boundary").join(id).exists() {
        return Err(Error::InvalidTarget {
            target: id.to_string(),
            reason: "a session with this id is already running".into(),
        });
    }
    let _ = std::fs::write(&session_file, std::process::id().to_string());
    let cgroup = match Cgroup::create(root, id) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&session_file);
            return Err(e);
        }
    };
    Ok(Cleanup {
        cgroup: Some(cgroup),
        session_file,
        pin_dir: Path::new(loader::PIN_ROOT).join(id),
        permanent: false,
    })
}

/// A session whose programs are attached, not yet running its event pipeline and policy task.
struct Running {
    id: String,
    spec: SessionSpec,
    policy: Policy,
    enforcer: Enforcer,
    kernel: Arc<SharedKernel>,
    resolver: Resolver,
    book: AddressBook,
    guard: Cleanup,
    proxy: DnsProxy,
}

/// Binds the session's DNS proxy and points the kernel's port-53 redirect at it.
fn start_dns_proxy(enforcer: &mut Enforcer) -> Result<DnsProxy> {
    let proxy = DnsProxy::bind()?;
    enforcer.set_dns_proxy(proxy.addr4(), proxy.port6())?;
    Ok(proxy)
}

impl Running {
    /// Starts the sinks, the ring readers, the resolver refresh and the policy task.
    fn launch(self, outlets: events::Outlets, first: &str, fields: Value) -> Result<Session> {
        let Running {
            id: session_id,
            spec,
            policy,
            enforcer,
            kernel,
            resolver,
            book,
            guard,
            proxy,
        } = self;
        // Events: one sink task fed by the ring readers and the session's own events.
        let mut sink = Sink::new();
        sink.session(&session_id);
        sink.summarize(policy.log_summary_interval);
        let rotation = events::Rotation::of(&policy);
        match spec.events.as_deref() {
            Some(p) if p == Path::new("-") => sink.stdout(),
            Some(p) => sink.rotated_file(p, rotation)?,
            None => {}
        }
        if let Some(dir) = &policy.log_dir {
            sink.rotated_file(&dir.join(format!("boundary-{session_id}.jsonl")), rotation)?;
        }
        if let Some(tap) = outlets.tap {
            sink.tap(tap);
        }
        if let Some(spool) = outlets.spool {
            sink.spool(spool);
        }
        // One shared copy: a 10,000-rule policy is megabytes.
        let policy = Arc::new(policy);
        let (policy_tx, policy_rx) = watch::channel(policy.clone());
        let (book_tx, book_rx) = watch::channel(Arc::new(book));
        let learned = LearnedNames::default();
        let enricher = Arc::new(
            Enricher::new(session_id.clone(), policy_rx.clone(), book_rx.clone())
                .with_resolved(learned.resolved()),
        );
        let (event_tx, event_rx) = mpsc::channel(events::EVENT_QUEUE);
        let sink_task = tokio::spawn(sink.run(event_rx));
        let (stop_tx, stop_rx) = watch::channel(false);
        // The session's first event goes out before any of its decisions can be routed.
        events::emit(&event_tx, enricher.session(first, fields));
        let slot = enforcer.slot();
        let dropped = kernel
            .router
            .register(slot, enricher.clone(), event_tx.clone());

        let refresh = resolver.spawn_refresh(book_tx);
        let policy_name = policy.name.clone();
        let dns_proxy = proxy.listen_addrs();
        let resolver_book = book_rx.borrow().clone();
        let (learned_tx, learned_rx) = mpsc::channel(1024);
        let dns = proxy.spawn(ProxyContext {
            policy: policy_rx,
            dns_server: spec.dns_server,
            learned: learned_tx,
            events: event_tx.downgrade(),
            enricher: enricher.clone(),
            cgroup: Some(guard.cgroup().path().to_path_buf()),
        })?;
        let policy_task = tokio::spawn(policy_loop(PolicyLoop {
            enforcer,
            dropped,
            policy,
            spec: spec.clone(),
            dns_proxy,
            learned,
            learned_rx,
            resolver_book,
            book: book_rx,
            policy_tx,
            events: event_tx.clone(),
            enricher: enricher.clone(),
            stop: stop_rx,
        }));
        Ok(Session {
            id: session_id,
            policy_name,
            policy_source: spec.config.clone(),
            spec,
            started: SystemTime::now(),
            guard,
            enricher,
            event_tx,
            stop_tx,
            kernel,
            slot,
            policy_task,
            refresh,
            sink_task,
            dns,
        })
    }
}

fn spec_path(id: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{id}.json"))
}

/// Saves what a restarted agent needs to adopt the session (root-only directory).
fn write_spec(id: &str, spec: &SessionSpec) {
    if let Ok(bytes) = serde_json::to_vec(spec) {
        let _ = std::fs::write(spec_path(id), bytes);
    }
}

/// Removes a session that has no process and no one to report for (one claimed by an agent
/// or run that died before starting its command).
pub fn remove_unused(root: &Path, id: &str) {
    let dir = root.join("boundary").join(id);
    if cgroup::session_populated(&dir) {
        return;
    }
    loader::remove_pin_dir(&Path::new(loader::PIN_ROOT).join(id));
    let _ = cgroup::remove_dir(&dir);
    let _ = std::fs::remove_file(Path::new(RUN_DIR).join(id));
    let _ = std::fs::remove_file(spec_path(id));
}

/// Whether a session was ever started (a claimed one has no spec until its policy is in).
pub fn was_started(id: &str) -> bool {
    spec_path(id).exists()
}

/// Sessions under `root` whose owner (agent or single-shot run) is gone: what a restarted
/// agent adopts.
pub fn orphaned_sessions(root: &Path) -> Vec<String> {
    cgroup::sessions(root)
        .into_iter()
        .filter_map(|dir| dir.file_name()?.to_str().map(str::to_string))
        .filter(|id| !owner_alive(id))
        .collect()
}

/// Whether the process named in the session's owner file (its agent, or a single-shot
/// `boundary run`) is alive.
fn owner_alive(id: &str) -> bool {
    std::fs::read_to_string(Path::new(RUN_DIR).join(id))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok())
}

/// Single-shot mode: runs the command under the policy (boundary is root) and returns the exit
/// code boundary should exit with.
pub async fn run(opts: RunOptions) -> Result<i32> {
    let run_as = match &opts.run_as {
        Some(r) => r.clone(),
        None => RunAs::decide(None, false)?,
    };
    // Prepared before anything is loaded: a refusal costs nothing and leaves nothing behind.
    let (supervisor_end, child_end) = std::os::unix::net::UnixStream::pair()?;
    let confinement = Confinement::new(&run_as)?.supervised_through(child_end.as_raw_fd());
    let mut spec = opts.session.clone();
    spec.command_line = command_text(&opts.command);
    let session = Session::start(spec, events::Outlets::default()).await?;
    let confinement = match confinement.join_cgroup(&session.cgroup().join_path()) {
        Ok(c) => c,
        Err(e) => {
            session
                .finish(end_fields(EXIT_BOUNDARY_FAILED, None, Some(&e.to_string())))
                .await;
            return Err(e);
        }
    };
    let mut env: Vec<(&str, String)> = session.env().to_vec();
    env.extend(confinement.user_env());
    let signals = ForwardedSignals::install();
    let spawned = spawn(&opts.command, &env, confinement);
    drop(child_end);
    let child = match spawned {
        Ok(child) => child,
        Err((code, message)) => {
            eprintln!("boundary: {message}");
            session.finish(end_fields(code, None, Some(&message))).await;
            return Ok(code);
        }
    };
    // The child sent its filter's listener before exec; a refused call waits for this.
    match crate::confine::receive_listener(&supervisor_end) {
        Ok(listener) => session.syscall_supervisor().spawn(listener),
        Err(e) => {
            tracing::error!(error = %e, "no syscall-filter listener from the command; its refusals are not reported")
        }
    }
    let child_pid = Pid::from_raw(child.id().map(|p| p as i32).unwrap_or(0));
    let status = wait_forwarding_signals(child, child_pid, signals).await;
    let code = exit_code(&status);
    session
        .finish(end_fields(code, status.signal(), None))
        .await;
    Ok(code)
}

/// The fields of `boundary.session.end`.
pub fn end_fields(code: i32, signal: Option<i32>, error: Option<&str>) -> Map<String, Value> {
    let mut end = Map::new();
    end.insert("process.exit.code".into(), code.into());
    if let Some(sig) = signal {
        end.insert("process.exit.signal".into(), sig.into());
    }
    if let Some(message) = error {
        end.insert("error.message".into(), message.into());
    }
    end
}

fn settings(policy: &Policy, deny_events_only: bool) -> Settings {
    Settings {
        mode: match policy.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        },
        report_allows: u32::from(!deny_events_only),
        ..Settings::default()
    }
}

/// Removes the session's cgroup, pins and owner file however `run` ends.
struct Cleanup {
    cgroup: Option<Cgroup>,
    session_file: PathBuf,
    pin_dir: PathBuf,
    /// Whole-workspace mode: the cgroup is not ours and the programs stay attached for good.
    permanent: bool,
}

impl Cleanup {
    fn cgroup(&self) -> &Cgroup {
        self.cgroup.as_ref().expect("cgroup lives until finish")
    }

    fn finish(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if self.permanent {
            return;
        }
        loader::remove_pin_dir(&self.pin_dir);
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(e) = cgroup.remove() {
                tracing::warn!(error = %e, "removing the session cgroup");
            }
        }
        let _ = std::fs::remove_file(&self.session_file);
        let mut spec = self.session_file.clone().into_os_string();
        spec.push(".json");
        let _ = std::fs::remove_file(spec);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Starts the confined command. Errors carry the exit code to use (126/127/125).
pub fn spawn(
    command: &[OsString],
    env: &[(&str, String)],
    confinement: Confinement,
) -> std::result::Result<tokio::process::Child, (i32, String)> {
    let (program, args) = command
        .split_first()
        .ok_or((2, "no command given".to_string()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(false);
    for (k, v) in env {
        cmd.env(k, v);
    }
    confinement.install(&mut cmd);
    cmd.spawn().map_err(|e| {
        let name = program.to_string_lossy();
        match e.kind() {
            std::io::ErrorKind::NotFound => (127, format!("{name}: command not found")),
            std::io::ErrorKind::PermissionDenied if e.raw_os_error() == Some(libc::EACCES) => {
                (126, format!("{name}: permission denied"))
            }
            _ => (
                EXIT_BOUNDARY_FAILED,
                format!("confining and starting {name}: {e}"),
            ),
        }
    })
}

/// The signals a supervisor forwards, caught from the moment this exists. Installed before the
/// command is spawned: a signal that arrived between the spawn and the first wait would
/// otherwise take its default action on boundary itself (SIGQUIT dumps core) instead of
/// reaching the command.
pub struct ForwardedSignals(mpsc::UnboundedReceiver<Signal>);

impl ForwardedSignals {
    pub fn install() -> ForwardedSignals {
        let kinds = [
            (SignalKind::terminate(), Signal::SIGTERM),
            (SignalKind::interrupt(), Signal::SIGINT),
            (SignalKind::hangup(), Signal::SIGHUP),
            (SignalKind::quit(), Signal::SIGQUIT),
            (SignalKind::user_defined1(), Signal::SIGUSR1),
            (SignalKind::user_defined2(), Signal::SIGUSR2),
            (SignalKind::window_change(), Signal::SIGWINCH),
        ];
        let (tx, rx) = mpsc::unbounded_channel();
        for (kind, sig) in kinds {
            // Registration happens here, synchronously: from now on the signal is caught.
            if let Ok(mut stream) = signal(kind) {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if tx.send(sig).is_err() {
                            return;
                        }
                    }
                });
            }
        }
        ForwardedSignals(rx)
    }
}

/// Waits for the child, forwarding the signals a supervisor is expected to forward.
pub async fn wait_forwarding_signals(
    mut child: tokio::process::Child,
    pid: Pid,
    signals: ForwardedSignals,
) -> std::process::ExitStatus {
    let mut rx = signals.0;
    loop {
        tokio::select! {
            status = child.wait() => {
                return status.unwrap_or_else(|_| std::process::ExitStatus::from_raw(EXIT_BOUNDARY_FAILED << 8));
            }
            Some(sig) = rx.recv() => {
                // Ctrl-C and Ctrl-\ at a terminal already reached the command (same foreground
                // process group); forwarding them again would deliver them twice.
                if matches!(sig, Signal::SIGINT | Signal::SIGQUIT) && terminal_delivers_to_us() {
                    continue;
                }
                let _ = kill(pid, sig);
            }
        }
    }
}

fn terminal_delivers_to_us() -> bool {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    match nix::unistd::tcgetpgrp(stdin.as_fd()) {
        Ok(fg) => fg == nix::unistd::getpgrp(),
        Err(_) => false,
    }
}

/// The shell's convention: the command's code, or 128 + the signal that killed it.
pub fn exit_code(status: &std::process::ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => EXIT_BOUNDARY_FAILED,
    }
}

fn command_text(command: &[OsString]) -> String {
    command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

struct PolicyLoop {
    enforcer: Enforcer,
    /// This session's records the ring reader had no room for in its queue.
    dropped: Arc<Dropped>,
    policy: Arc<Policy>,
    spec: SessionSpec,
    /// Where the DNS proxy listens (granted to the session's programs).
    dns_proxy: Vec<SocketAddr>,
    /// What the DNS proxy let through, and its answers on their way to being installed.
    learned: LearnedNames,
    learned_rx: mpsc::Receiver<Learned>,
    /// The resolver's latest book (the policy's exact names).
    resolver_book: Arc<AddressBook>,
    book: watch::Receiver<Arc<AddressBook>>,
    policy_tx: watch::Sender<Arc<Policy>>,
    events: events::EventSender,
    enricher: Arc<Enricher>,
    stop: watch::Receiver<bool>,
}

/// Keeps the kernel maps equal to (policy, addresses), reloads config.yaml on edits, and
/// reports lost events. Returns the enforcer when the session stops.
async fn policy_loop(mut s: PolicyLoop) -> Enforcer {
    let mut lost_reported = (0, 0);
    let mut config_stamp = spec_stamp(&s.spec);
    let mut pending: Option<Option<(Stamp, Option<Stamp>)>> = None;
    let mut extra_resolver: Option<tokio::task::JoinHandle<()>> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut book_rx = s.book.clone();
    let mut stop = s.stop.clone();
    let mut resolver_alive = true;
    loop {
        tokio::select! {
            changed = book_rx.changed(), if resolver_alive => {
                if changed.is_err() {
                    // The resolver stopped; the last addresses stay installed.
                    resolver_alive = false;
                    continue;
                }
                s.resolver_book = book_rx.borrow_and_update().clone();
                install(&mut s, "dns");
            }
            Some(learned) = s.learned_rx.recv() => {
                // Installed before the proxy may release the answers; the answers that arrived
                // meanwhile are taken too, for one recompilation.
                let now = Instant::now();
                let grace = s.policy.dns.grace_period;
                let mut changed = s.learned.record(&learned, now, grace);
                let mut ips = learned.ips.clone();
                let mut waiting = vec![learned.installed];
                while let Ok(more) = s.learned_rx.try_recv() {
                    changed |= s.learned.record(&more, now, grace);
                    ips.extend_from_slice(&more.ips);
                    waiting.push(more.installed);
                }
                if changed {
                    // Only these addresses' host entries can change (removals wait for the
                    // expiry, which recompiles everything).
                    ips.sort();
                    ips.dedup();
                    let books = [&*s.resolver_book, s.learned.book()];
                    let added = policy::compile_hosts(&s.policy, &books, &s.dns_proxy, &ips)
                        .map_err(crate::error::Error::from)
                        .and_then(|entries| s.enforcer.upsert(&entries));
                    if added.is_err() {
                        install(&mut s, "dns proxy");
                    }
                }
                for done in waiting {
                    let _ = done.send(());
                }
            }
            _ = tick.tick() => {
                if s.learned.expire(Instant::now(), s.policy.dns.grace_period) {
                    install(&mut s, "dns expiry");
                }
                let lost = lost(&s);
                if lost != lost_reported {
                    events::emit(&s.events, s.enricher.lost(lost.0 - lost_reported.0, lost.1 - lost_reported.1));
                    lost_reported = lost;
                }
                let now = spec_stamp(&s.spec);
                if now == config_stamp {
                    pending = None;
                    continue;
                }
                // Changed: wait until it is stable (same stamp on two polls in a row). A
                // managed policy is replaced by renames and read only when its text matches
                // its metadata: it is whole as soon as it is seen.
                if pending.as_ref() != Some(&now) && !s.spec.managed {
                    pending = Some(now);
                    continue;
                }
                pending = None;
                config_stamp = now;
                match reload(&mut s).await {
                    Reloaded::Applied(handle, rx) => {
                        if let Some(old) = extra_resolver.replace(handle) {
                            old.abort();
                        }
                        book_rx = rx;
                        resolver_alive = true;
                    }
                    Reloaded::Kept => {}
                    // Caught between the text and its metadata: look again next poll.
                    Reloaded::Pending => config_stamp = None,
                }
            }
            _ = events::stopped(&mut stop) => break,
        }
    }
    if let Some(handle) = extra_resolver {
        handle.abort();
    }
    let lost = lost(&s);
    if lost != lost_reported {
        events::emit(
            &s.events,
            s.enricher
                .lost(lost.0 - lost_reported.0, lost.1 - lost_reported.1),
        );
    }
    s.enforcer
}

/// The session's lost events so far, (deny, allow): the kernel's count for its slot (ring
/// full) and the reader's (its queue full).
fn lost(s: &PolicyLoop) -> (u64, u64) {
    let kernel = s.enforcer.lost();
    let reader = s.dropped.get();
    (kernel.0 + reader.0, kernel.1 + reader.1)
}

fn install(s: &mut PolicyLoop, why: &str) {
    let books = [&*s.resolver_book, s.learned.book()];
    let result = policy::compile_books(&s.policy, &books, &s.dns_proxy)
        .map_err(crate::error::Error::from)
        .and_then(|compiled| s.enforcer.apply(&compiled));
    if let Err(e) = result {
        tracing::error!(error = %e, trigger = why, "updating the kernel policy failed; the previous one stays in force");
    }
}

/// What a reload did.
enum Reloaded {
    /// The new policy is in force; its resolver refresh task and address book.
    Applied(
        tokio::task::JoinHandle<()>,
        watch::Receiver<Arc<AddressBook>>,
    ),
    /// The old one stays (the new one is invalid: reported).
    Kept,
    /// A managed policy in the middle of being replaced.
    Pending,
}

/// Loads the edited config. On success: new resolver, maps and settings; on failure: an
/// event and an error log, and nothing changes.
async fn reload(s: &mut PolicyLoop) -> Reloaded {
    let started = Instant::now();
    let loaded = if s.spec.managed {
        match managed::load(&s.spec.config) {
            Ok(managed::Load::Ready(p, meta)) => Ok((*p, Some(meta))),
            Ok(managed::Load::Pending) => return Reloaded::Pending,
            Err(e) => Err(e),
        }
    } else {
        policy::load(&s.spec.config)
            .map(|p| (p, None))
            .map_err(Error::from)
    };
    let (mut policy, meta) = match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!("boundary: {e}\nboundary: keeping the last good policy in force");
            let mut fields = json!({"error.message": e.to_string(), "boundary.policy.source": s.spec.config.display().to_string()});
            if s.spec.managed {
                // Which version could not be applied (the metadata alone may be readable).
                let meta: Option<Meta> = std::fs::read(managed::meta_path(&s.spec.config))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                if let Value::Object(m) = &mut fields {
                    m.extend(version_fields(meta.as_ref()));
                }
            }
            events::emit(
                &s.events,
                s.enricher.session("boundary.policy.rejected", fields),
            );
            return Reloaded::Kept;
        }
    };
    if let Some(mode) = s.spec.mode {
        policy.mode = mode;
    }
    let config =
        match ResolverConfig::new(&policy.dns, s.spec.dns_server, s.spec.hosts_file.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("boundary: {e}; keeping the last good policy in force");
                return Reloaded::Kept;
            }
        };
    let mut resolver = Resolver::new(&policy, config.clone());
    let book = resolver.resolve_initial().await;
    let compiled = match policy::compile_books(&policy, &[&book, s.learned.book()], &s.dns_proxy) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("boundary: {e}; keeping the last good policy in force");
            return Reloaded::Kept;
        }
    };
    if let Err(e) = s
        .enforcer
        .set_settings(settings(&policy, s.spec.deny_events_only))
        .and_then(|_| s.enforcer.apply(&compiled))
    {
        eprintln!("boundary: applying the reloaded policy: {e}");
        return Reloaded::Kept;
    }
    for warning in policy.warnings() {
        tracing::warn!("{warning}");
    }
    let policy = Arc::new(policy);
    s.policy = policy.clone();
    s.resolver_book = Arc::new(book.clone());
    let rules = policy.rules.len();
    let _ = s.policy_tx.send(policy);
    let (tx, rx) = watch::channel(Arc::new(book));
    let mut fields = json!({"boundary.policy.rules": rules, "boundary.reload.ms": started.elapsed().as_millis() as u64});
    if let Value::Object(m) = &mut fields {
        m.extend(version_fields(meta.as_ref()));
    }
    events::emit(
        &s.events,
        s.enricher.session("boundary.policy.reload", fields),
    );
    Reloaded::Applied(resolver.spawn_refresh(tx), rx)
}

/// What identifies one version of the policy file: an atomic replacement (rename) changes the
/// inode even when size and time look the same.
type Stamp = (SystemTime, u64, u64, u64);

/// The stamp of a session's policy: the file's, and for a managed policy its metadata's too
/// (a new mode for the same text is a new metadata file).
fn spec_stamp(spec: &SessionSpec) -> Option<(Stamp, Option<Stamp>)> {
    let text = stamp(&spec.config)?;
    let meta = spec
        .managed
        .then(|| stamp(&managed::meta_path(&spec.config)))
        .flatten();
    Some((text, meta))
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino(), meta.dev()))
}

/// Removes sessions whose agent is gone and whose processes have all exited. Sessions whose
/// agent died while processes remain are left attached: they stay confined (fail closed).
fn sweep_stale_sessions(root: &Path) {
    for id in orphaned_sessions(root) {
        if cgroup::session_populated(&root.join("boundary").join(&id)) {
            tracing::warn!(session = %id, "the agent of this session is gone; its processes stay confined by its last policy");
            continue;
        }
        remove_unused(root, &id);
    }
}

/// Every privilege `boundary run` needs, checked up front so that the message names all of
/// them and the command never starts unconfined.
pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    const CAP_DAC_OVERRIDE: u32 = 1;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (to load the eBPF programs and maps)");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN (to attach socket programs to a cgroup)");
    }
    if !nix::unistd::geteuid().is_root() && !has(CAP_DAC_OVERRIDE) {
        missing.push(
            "write access to the cgroup v2 hierarchy and /sys/fs/bpf (root, or CAP_DAC_OVERRIDE)",
        );
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingPrivileges(missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(&std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(
            exit_code(&std::process::ExitStatus::from_raw(libc::SIGTERM)),
            128 + 15
        );
    }
}

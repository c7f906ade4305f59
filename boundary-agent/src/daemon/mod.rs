//! `boundary agent`: the root daemon a workspace image starts once. It owns the policies and
//! the sessions; unprivileged users reach it through [`crate::protocol`] to wrap commands.
//!
//! Trust: the daemon believes only the kernel. The caller's uid and pid come from
//! SO_PEERCRED, a pidfd from SO_PEERPIDFD pins the identity of the process it moves, and the
//! policy is the daemon's choice (its default, or one the admin named with `--policy`). A
//! process that is already inside a boundary can start or join nothing (it would leave its
//! own policy for another). Policy and hosts files must be root's and writable by nobody
//! else, or the daemon refuses them.
//!
//! Scale: the daemon loads the eBPF programs once and all its sessions share them (one slot
//! each in the shared maps, a link per hook on each session's cgroup; see
//! [`crate::loader`]), so a session start never waits for the verifier and costs the kernel
//! only its map entries, links and pins.
//!
//! Fail closed: stopping the daemon leaves every session attached (pinned links); the next
//! daemon finds them through their owner files and pins.
//!
//! Beside it: [`protocol`] (the JSON-lines messages and their framing) and [`client`] (the
//! `boundary run` side and the inspection commands).

pub mod client;
pub mod protocol;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::control::{credential, Control};
use crate::error::{Error, Result};
use crate::events::Tap;
use crate::policy;
use crate::session::{self, end_fields, Session, SessionSpec};
use protocol::Request;

/// How many recent events `boundary events` (without --follow) can show.
const RECENT_EVENTS: usize = 2000;
/// Connections served at once (sessions hold one each for their lifetime).
const MAX_CONNECTIONS: usize = 4096;
/// How long a new connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping agent waits for sessions that are ending to finish writing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often a session whose client is gone is checked for remaining processes.
const ORPHAN_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// The default policy: every session gets it unless the caller picks a named one.
    pub config: PathBuf,
    /// Policies users may choose with `boundary run --policy NAME`.
    pub policies: Vec<(String, PathBuf)>,
    pub socket: PathBuf,
    /// Also write every session's events here (`-` for stdout).
    pub events: Option<PathBuf>,
    pub dns_server: Option<SocketAddr>,
    pub hosts_file: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    /// Whole-workspace mode: confine this existing cgroup and everything in it.
    pub confine: Option<PathBuf>,
    /// Cgroups inside `confine` left unconfined (the workspace's control processes).
    pub exempt: Vec<PathBuf>,
    /// A control plane (Bridge) to take the default policy from and ship events to.
    pub control: Option<crate::control::ControlOptions>,
}

struct Agent {
    opts: AgentOptions,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    /// Which uid owns each session, kept after it ends so its events stay readable to them.
    owners: Mutex<VecDeque<(String, u32)>>,
    tap: Tap,
    recent: Mutex<VecDeque<Arc<Map<String, Value>>>>,
    /// Events in the order they entered `recent`, for `boundary events --follow`: fed under
    /// the `recent` lock, so a follower that copies the backlog and subscribes under that
    /// lock misses nothing and sees nothing twice.
    follow: Tap,
    lost: Mutex<(u64, u64)>,
    started: SystemTime,
    /// The programs and maps every session of this agent shares (loaded once, at start).
    kernel: Arc<session::SharedKernel>,
    /// With `--control-plane`: the policy in force, the event spool, session credentials.
    control: Option<Arc<Control>>,
}

/// What the daemon knows of a live session besides the [`Session`] its connection task owns.
struct SessionEntry {
    uid: u32,
    client_pid: Option<i32>,
    policy: String,
    command: Vec<String>,
    started: SystemTime,
    cgroup: PathBuf,
    /// One-time secret the command's own process presents to join; `None` once used.
    token: Option<String>,
    /// To name the joined process in events even if it exits before they are read.
    enricher: Option<Arc<crate::events::Enricher>>,
    /// Reports the joined process's syscall-filter refusals.
    supervisor: Option<session::SyscallSupervisor>,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn serve(opts: AgentOptions) -> Result<()> {
    session::check_privileges()?;
    if std::os::unix::net::UnixStream::connect(&opts.socket).is_ok() {
        return Err(Error::Agent(format!(
            "another agent is already listening on {}",
            opts.socket.display()
        )));
    }
    for path in std::iter::once(&opts.config).chain(opts.policies.iter().map(|(_, p)| p)) {
        trusted_file(path)?;
        let policy = policy::load(path)?;
        if let Some(hosts) = opts.hosts_file.as_ref().or(policy.dns.hosts_file.as_ref()) {
            trusted_file(hosts)?;
        }
    }
    if let Some(control) = &opts.control {
        // The token is the agent's identity: as trusted as its policy files, and secret.
        trusted_file(&control.token_file)?;
        secret_file(&control.token_file)?;
    }
    raise_fd_limit();
    // The verifier runs here, once; a session start is then a slot, a few map updates and a
    // link per hook on its cgroup.
    let kernel = session::SharedKernel::load(crate::loader::RING_BYTES_SHARED)?;
    let (tap, _) = broadcast::channel(4096);
    let (follow, _) = broadcast::channel(4096);
    let control = match &opts.control {
        Some(c) => Some(Control::open(c, &opts.config, tap.clone())?),
        None => None,
    };
    let agent = Arc::new(Agent {
        opts,
        sessions: Mutex::new(HashMap::new()),
        owners: Mutex::new(VecDeque::new()),
        tap,
        recent: Mutex::new(VecDeque::new()),
        follow,
        lost: Mutex::new((0, 0)),
        started: SystemTime::now(),
        kernel,
        control,
    });
    if let Some(control) = agent.control.clone() {
        let weak = Arc::downgrade(&agent);
        tokio::spawn(crate::control::report_status(control, move || {
            weak.upgrade()
                .map(|a| a.sessions.lock().unwrap().len())
                .unwrap_or(0)
        }));
    }
    // Subscribed here, before anything can emit: no event of the start is missed.
    tokio::spawn(collect_recent(agent.clone(), agent.tap.subscribe()));
    if let Some(path) = agent.opts.events.clone() {
        tokio::spawn(write_all_events(agent.tap.subscribe(), path));
    }
    if let Some(control) = &agent.control {
        // Its events now have readers.
        control.run();
    }
    adopt_orphans(&agent).await;
    // Held for the agent's lifetime: dropping it would change nothing in the kernel (the
    // workspace session is permanent), but its tasks keep events and policy flowing.
    let _workspace = match agent.opts.confine.clone() {
        Some(path) => Some(confine_workspace(&agent, &path).await?),
        None => None,
    };
    // Listening means ready: sessions adopted, the workspace (if any) confined.
    let listener = bind(&agent.opts.socket)?;
    let policy_text = match &agent.control {
        Some(c) => {
            let current = c.current();
            if current.version > 0 {
                format!(
                    "policy from {}: template {} version {}",
                    c.client.base(),
                    current.template,
                    current.version
                )
            } else {
                format!(
                    "policy {} until {} sends one",
                    agent.opts.config.display(),
                    c.client.base()
                )
            }
        }
        None => format!("policy {}", agent.opts.config.display()),
    };
    tracing::info!(socket = %agent.opts.socket.display(), "boundary agent listening ({policy_text})");
    eprintln!(
        "boundary agent: listening on {} ({policy_text})",
        agent.opts.socket.display()
    );
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                // Bounded: a local user opening connections by the thousand gets refused
                // ones, the agent keeps its file descriptors and keeps serving sessions.
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::warn!("too many connections to the agent; refusing one");
                    continue;
                };
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(agent, stream).await {
                        tracing::debug!(error = %e, "agent connection ended with an error");
                    }
                    drop(permit);
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&agent.opts.socket);
    // Sessions whose processes are gone are being ended (events written, programs detached):
    // let them finish. Sessions with processes stay attached for the next agent.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while tokio::time::Instant::now() < deadline {
        let finishing = agent
            .sessions
            .lock()
            .unwrap()
            .values()
            .any(|s| !crate::cgroup::session_populated(&s.cgroup));
        if !finishing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(control) = &agent.control {
        // What sessions wrote is in the spool before the agent goes (shipped by the next).
        control.drain(SHUTDOWN_GRACE).await;
    }
    let live = agent.sessions.lock().unwrap().len();
    eprintln!("boundary agent: stopping; {live} session(s) stay confined by their pinned programs");
    // No destructors: they would detach the sessions. The kernel keeps the pinned links.
    std::process::exit(0);
}

/// Each session holds a few descriptors (its client's connection, its cgroup, its DNS proxy's
/// sockets): the soft limit (often 1024) goes up to the hard one, so that hundreds of sessions
/// fit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "raising the descriptor limit");
            }
        }
    }
}

/// Whole-workspace mode: puts the agent itself in an exempt cgroup if it runs inside the one
/// it confines, then attaches the programs to the workspace cgroup.
async fn confine_workspace(agent: &Arc<Agent>, path: &Path) -> Result<Session> {
    let path = std::fs::canonicalize(path).map_err(|source| Error::File {
        path: path.into(),
        source,
    })?;
    let mut exempt = agent.opts.exempt.clone();
    let mount = crate::cgroup::cgroup2_root()?;
    let own = cgroup_of(std::process::id() as i32).unwrap_or_default();
    let own_path = mount.join(own.trim_start_matches('/'));
    let exempted = exempt
        .iter()
        .any(|e| std::fs::canonicalize(e).is_ok_and(|e| own_path.starts_with(e)));
    if own_path.starts_with(&path) && !exempted {
        // The agent must keep its own network (DNS, control plane): it moves itself into a
        // child cgroup of its own, exempt from the policy.
        let own_cgroup = path.join("boundary-agent");
        let _ = std::fs::create_dir(&own_cgroup);
        std::fs::write(
            own_cgroup.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .map_err(|e| {
            Error::Agent(format!(
                "the agent runs inside {} and could not move itself to {}: {e}; start it in an --exempt-cgroup",
                path.display(),
                own_cgroup.display()
            ))
        })?;
        exempt.push(own_cgroup);
    }
    let (config, managed) = agent.default_policy();
    let spec = SessionSpec {
        config,
        managed,
        command_line: format!("(every process in {})", path.display()),
        hosts_file: agent.opts.hosts_file.clone(),
        dns_server: agent.opts.dns_server,
        owner_uid: Some(0),
        ..SessionSpec::default()
    };
    let session = Session::confine_existing(spec, &path, &exempt, agent.outlets()).await?;
    tracing::info!(cgroup = %path.display(), exempt = exempt.len(), "whole-workspace confinement in force");
    eprintln!(
        "boundary agent: confining every process in {} ({} exempt cgroup(s))",
        path.display(),
        exempt.len()
    );
    Ok(session)
}

/// Where this agent's sessions live: `--cgroup-root`, or the cgroup v2 mount.
fn session_root(opts: &AgentOptions) -> Result<PathBuf> {
    match &opts.cgroup_root {
        Some(root) => Ok(root.clone()),
        None => crate::cgroup::cgroup2_root(),
    }
}

/// Takes over the sessions of a dead agent (or of a killed single-shot run): they stayed
/// confined by their pinned programs; now their events are read again (including those
/// written while nobody was reading), their policy follows DNS and edits again, and they end
/// when their last process exits. A session whose processes are all gone is drained and
/// ended at once, with an abnormal `boundary.session.end`.
async fn adopt_orphans(agent: &Arc<Agent>) {
    let Ok(root) = session_root(&agent.opts) else {
        return;
    };
    for id in session::orphaned_sessions(&root) {
        if !session::was_started(&id) {
            // Claimed by a dead agent that never started it: nothing ran in it.
            session::remove_unused(&root, &id);
            continue;
        }
        let session = match Session::adopt(&id, &root, agent.outlets()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "cannot adopt the session; it stays confined by its last policy");
                continue;
            }
        };
        let uid = session.spec().owner_uid.unwrap_or(0);
        let cgroup = session.cgroup().path().to_path_buf();
        agent.sessions.lock().unwrap().insert(
            id.clone(),
            SessionEntry {
                uid,
                client_pid: None,
                policy: session.policy_name.clone(),
                command: vec![session.spec().command_line.clone()],
                started: SystemTime::now(),
                cgroup: cgroup.clone(),
                token: None,
                enricher: None,
                supervisor: None,
            },
        );
        agent.owners.lock().unwrap().push_back((id.clone(), uid));
        tracing::info!(session = %id, "adopted a running session");
        let agent = agent.clone();
        tokio::spawn(async move {
            let reason = if crate::cgroup::session_populated(&cgroup) {
                let mut poll = tokio::time::interval(ORPHAN_POLL);
                while crate::cgroup::session_populated(&cgroup) {
                    poll.tick().await;
                }
                "adopted_session_emptied"
            } else {
                "agent_died"
            };
            let mut end = Map::new();
            end.insert("process.exit.code".into(), Value::Null);
            end.insert("boundary.session.end.reason".into(), reason.into());
            session.finish(end).await;
            agent.sessions.lock().unwrap().remove(&id);
            if let Some(control) = &agent.control {
                control.end_session(&id);
            }
        });
    }
    // Every session that could be adopted has its route: the unread records can flow.
    session::resume_adopted();
}

/// Binds the socket: its directory root's and 0755, the socket itself 0666 (anyone may ask;
/// the daemon decides). A stale socket file from a dead daemon is replaced; a live one is not.
fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.into(),
            source,
        })?;
        // Users must reach the socket; only root may replace it.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::Agent(format!(
            "another agent is already listening on {}",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| Error::File {
        path: path.into(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|source| {
        Error::File {
            path: path.into(),
            source,
        }
    })?;
    Ok(listener)
}

/// Refuses a policy or hosts file that anyone but root could change: a symlink, a file not
/// owned by root or writable by group/others, or one in a directory someone else could
/// rewrite (world-writable sticky directories such as /tmp are fine: others cannot replace
/// root's entries there).
pub fn trusted_file(path: &Path) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::Agent(format!(
            "refusing {}: {why}; the agent only reads policy and hosts files that only root can change",
            path.display()
        )))
    };
    let meta = std::fs::symlink_metadata(path).map_err(|source| Error::File {
        path: path.into(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !meta.is_file() {
        return refuse("it is not a regular file".into());
    }
    if meta.uid() != 0 {
        return refuse(format!("it is owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "it is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    let absolute = std::fs::canonicalize(path).map_err(|source| Error::File {
        path: path.into(),
        source,
    })?;
    for dir in absolute.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(dir) else {
            continue;
        };
        let sticky = m.mode() & 0o1000 != 0;
        if m.uid() != 0 || (m.mode() & 0o022 != 0 && !sticky) {
            return refuse(format!(
                "its directory {} can be changed by uid {} or by group/others (mode {:o})",
                dir.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Refuses a secret (the agent token) that group or others can read.
fn secret_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| Error::File {
        path: path.into(),
        source,
    })?;
    if meta.mode() & 0o077 != 0 {
        return Err(Error::Agent(format!(
            "refusing {}: it holds the agent token and group or others can read it (mode {:o}); \
             `chmod 600` it",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

async fn handle(agent: Arc<Agent>, stream: UnixStream) -> Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        uid: cred.uid(),
        pid: cred.pid(),
        pidfd: peer_pidfd(&stream),
    };
    // The first message may carry a file descriptor (the syscall filter's listener, with a
    // join): it is read with recvmsg, and whatever else came with it is read first.
    let (first, attached) = tokio::time::timeout(REQUEST_TIMEOUT, recv_first(&stream))
        .await
        .map_err(|_| Error::Agent("no request within the time limit".into()))??;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::chain(
        std::io::Cursor::new(first),
        read,
    ));
    let Some(request) = tokio::time::timeout(
        REQUEST_TIMEOUT,
        protocol::read_json::<_, Request>(&mut reader),
    )
    .await
    .map_err(|_| Error::Agent("no complete request within the time limit".into()))??
    else {
        return Ok(());
    };
    match request {
        Request::Start {
            policy,
            command,
            session_id,
            deny_events_only,
            events,
        } => {
            let start = StartRequest {
                policy,
                command,
                session_id,
                deny_events_only,
                events,
            };
            run_session(agent, peer, start, reader, write).await
        }
        Request::Join { session, token } => {
            let reply = match join(&agent, &peer, &session, &token, attached) {
                Ok(()) => "{\"ok\":true}\n".to_string(),
                Err(e) => {
                    tracing::warn!(session = %session, uid = peer.uid, pid = ?peer.pid, error = %e, "join refused");
                    format!("{}\n", json!({"ok": false, "error": e.to_string()}))
                }
            };
            use tokio::io::AsyncWriteExt;
            write.write_all(reply.as_bytes()).await?;
            Ok(())
        }
        Request::Status => protocol::write_json(&mut write, &status(&agent, &peer)).await,
        Request::Sessions => protocol::write_json(&mut write, &sessions(&agent, &peer)).await,
        Request::Events {
            follow,
            action,
            session,
        } => stream_events(&agent, &peer, follow, action, session, &mut write).await,
        Request::Exited { .. } => {
            protocol::write_json(
                &mut write,
                &json!({"ok": false, "error": "`exited` belongs to a session connection"}),
            )
            .await
        }
    }
}

struct Peer {
    uid: u32,
    pid: Option<i32>,
    pidfd: Option<OwnedFd>,
}

struct StartRequest {
    policy: Option<String>,
    command: Vec<String>,
    session_id: Option<String>,
    deny_events_only: bool,
    events: bool,
}

/// Reads the first message on a connection with recvmsg, keeping a file descriptor sent with
/// it (at most one; the kernel closes any extra).
async fn recv_first(stream: &UnixStream) -> Result<(Vec<u8>, Option<OwnedFd>)> {
    loop {
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || {
            crate::confine::recv_with_fd(stream.as_raw_fd(), 64 * 1024)
        }) {
            Ok(got) => return Ok(got),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// SO_PEERPIDFD (Linux 6.5): a pidfd of the process that connected, immune to pid reuse.
fn peer_pidfd(stream: &UnixStream) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel installed a new fd that we now own.
    (rc == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks that the process still exists.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// The cgroup v2 path of a process, as /proc/PID/cgroup shows it ("/boundary/ID").
fn cgroup_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Whether a process already runs inside a boundary session: under the default session
/// parent (`/boundary/...`) or under this agent's own (`--cgroup-root`).
fn inside_boundary(pid: i32, own_prefix: &str) -> bool {
    match cgroup_of(pid) {
        Some(path) => {
            let path = format!("{path}/");
            path.starts_with("/boundary/") || path.starts_with(own_prefix)
        }
        // Unknown: treat as inside, so nothing is granted on a guess.
        None => true,
    }
}

/// Whole-workspace mode: whether the process is under the confined cgroup and not exempt.
fn inside_workspace(agent: &Agent, pid: i32) -> bool {
    let Some(confined) = &agent.opts.confine else {
        return false;
    };
    let Ok(mount) = crate::cgroup::cgroup2_root() else {
        return true;
    };
    let Some(own) = cgroup_of(pid) else {
        return true;
    };
    let path = mount.join(own.trim_start_matches('/'));
    let confined = std::fs::canonicalize(confined).unwrap_or_else(|_| confined.clone());
    let exempt = agent
        .opts
        .exempt
        .iter()
        .any(|e| std::fs::canonicalize(e).is_ok_and(|e| path.starts_with(e)))
        || path.starts_with(confined.join("boundary-agent"));
    path.starts_with(&confined) && !exempt
}

/// The cgroup path prefix (as /proc/PID/cgroup shows it) of this agent's sessions.
fn session_prefix(opts: &AgentOptions) -> String {
    let Some(root) = &opts.cgroup_root else {
        return "/boundary/".into();
    };
    let mount = crate::cgroup::cgroup2_root().unwrap_or_default();
    let relative = root.strip_prefix(&mount).unwrap_or(root);
    let relative = relative.to_string_lossy();
    let relative = relative.trim_matches('/');
    if relative.is_empty() {
        "/boundary/".into()
    } else {
        format!("/{relative}/boundary/")
    }
}

fn refuse_if_confined(agent: &Agent, peer: &Peer) -> Result<()> {
    let Some(pid) = peer.pid else {
        return Err(Error::Agent(
            "the kernel did not report the caller's pid".into(),
        ));
    };
    if inside_boundary(pid, &session_prefix(&agent.opts)) || inside_workspace(agent, pid) {
        return Err(Error::Agent(
            "this process already runs inside a boundary; it cannot start or join another session"
                .into(),
        ));
    }
    Ok(())
}

async fn run_session<R>(
    agent: Arc<Agent>,
    peer: Peer,
    start: StartRequest,
    mut reader: R,
    mut write: tokio::net::unix::OwnedWriteHalf,
) -> Result<()>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    // Subscribed before the session exists, so its first events reach the client too.
    let mut events = start.events.then(|| agent.tap.subscribe());
    let started = async {
        refuse_if_confined(&agent, &peer)?;
        let (policy_name, path) = choose_policy(&agent.opts, start.policy.as_deref())?;
        // The default policy comes from the control plane when there is one.
        let (path, managed) = if start.policy.is_none() {
            agent.default_policy()
        } else {
            (path, false)
        };
        trusted_file(&path)?;
        if let Some(id) = &start.session_id {
            session::validate_session_id(id)?;
        }
        let spec = SessionSpec {
            config: path,
            command_line: start.command.join(" "),
            events: None,
            hosts_file: agent.opts.hosts_file.clone(),
            dns_server: agent.opts.dns_server,
            session_id: start.session_id.clone(),
            cgroup_root: agent.opts.cgroup_root.clone(),
            mode: None,
            deny_events_only: start.deny_events_only,
            owner_uid: Some(peer.uid),
            managed,
        };
        let session = Session::start_in(Some(agent.kernel.clone()), spec, agent.outlets()).await?;
        Ok::<_, Error>((policy_name, session))
    }
    .await;
    let (policy_name, session) = match started {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(uid = peer.uid, error = %e, "session refused");
            return protocol::write_json(&mut write, &json!({"ok": false, "error": e.to_string()}))
                .await;
        }
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    let id = session.id.clone();
    agent.sessions.lock().unwrap().insert(
        id.clone(),
        SessionEntry {
            uid: peer.uid,
            client_pid: peer.pid,
            policy: policy_name.clone(),
            command: start.command.clone(),
            started: SystemTime::now(),
            cgroup: session.cgroup().path().to_path_buf(),
            token: Some(token.clone()),
            enricher: Some(session.enricher()),
            supervisor: Some(session.syscall_supervisor()),
        },
    );
    {
        let mut owners = agent.owners.lock().unwrap();
        owners.push_back((id.clone(), peer.uid));
        if owners.len() > 10_000 {
            owners.pop_front();
        }
    }
    tracing::info!(session = %id, uid = peer.uid, policy = %policy_name, "session started");
    let mut env: Map<String, Value> = session
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect();
    // With a control plane: the session's credential, registered before the client hears
    // of the session (the command's first request to Bridge must find it).
    let mut headers = Vec::new();
    if let Some(control) = &agent.control {
        let credential = credential::mint(&id);
        control
            .register_session(crate::control::Registration {
                session_id: id.clone(),
                credential_sha256: crate::managed::sha256_hex(credential.as_bytes()),
                user_name: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name),
                uid: peer.uid,
                command: start.command.join(" "),
                started_at: rfc3339(SystemTime::now()),
            })
            .await;
        let template = (policy_name == "default")
            .then(|| control.current().template)
            .filter(|t| !t.is_empty());
        headers = credential::headers(&id, &credential, template.as_deref(), None);
        env.insert("BOUNDARY_SESSION_TOKEN".into(), credential.into());
    }
    protocol::write_json(
        &mut write,
        &json!({"ok": true, "session": id, "policy": policy_name, "token": token, "env": env, "headers": headers}),
    )
    .await?;

    // Until the client says the command exited, or goes away and the cgroup empties.
    let cgroup = session.cgroup().path().to_path_buf();
    let mut client_gone = false;
    let mut poll = tokio::time::interval(ORPHAN_POLL);
    let end = loop {
        tokio::select! {
            line = protocol::read_json::<_, Request>(&mut reader), if !client_gone => {
                match line {
                    Ok(Some(Request::Exited { code, signal })) => break end_fields(code, signal, None),
                    Ok(Some(_)) => {
                        let _ = protocol::write_json(&mut write, &json!({"ok": false, "error": "only `exited` is expected on a session connection"})).await;
                    }
                    Ok(None) | Err(_) => {
                        client_gone = true;
                        events = None;
                    }
                }
            }
            event = recv_event(&mut events) => {
                match event {
                    Ok(e) if e.get("session.id").and_then(Value::as_str) == Some(id.as_str()) => {
                        if protocol::write_json(&mut write, &json!({"event": &*e})).await.is_err() {
                            events = None;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = protocol::write_json(&mut write, &json!({"events_skipped": n})).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => events = None,
                }
            }
            _ = poll.tick(), if client_gone => {
                if !crate::cgroup::session_populated(&cgroup) {
                    let mut end = Map::new();
                    end.insert("process.exit.code".into(), Value::Null);
                    end.insert("boundary.session.end.reason".into(), "client_gone".into());
                    break end;
                }
            }
        }
    };
    session.finish(end).await;
    agent.sessions.lock().unwrap().remove(&id);
    if let Some(control) = &agent.control {
        control.end_session(&id);
    }
    tracing::info!(session = %id, "session ended");
    // Events written by the end of the session that the client has not seen yet.
    if let Some(rx) = events.as_mut() {
        while let Ok(e) = rx.try_recv() {
            if e.get("session.id").and_then(Value::as_str) == Some(id.as_str()) {
                let _ = protocol::write_json(&mut write, &json!({"event": &*e})).await;
            }
        }
    }
    let _ = protocol::write_json(&mut write, &json!({"ok": true, "done": true})).await;
    Ok(())
}

async fn recv_event(
    rx: &mut Option<broadcast::Receiver<Arc<Map<String, Value>>>>,
) -> std::result::Result<Arc<Map<String, Value>>, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn choose_policy(opts: &AgentOptions, wanted: Option<&str>) -> Result<(String, PathBuf)> {
    match wanted {
        None => Ok(("default".into(), opts.config.clone())),
        Some(name) => opts
            .policies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(n, p)| (n.clone(), p.clone()))
            .ok_or_else(|| {
                let names: Vec<&str> = opts.policies.iter().map(|(n, _)| n.as_str()).collect();
                Error::Agent(format!(
                    "no policy named `{name}`; the admin offers: {}",
                    if names.is_empty() {
                        "only the default".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            }),
    }
}

/// Moves the connecting process into the session, after checking it is who may join.
fn join(
    agent: &Agent,
    peer: &Peer,
    session: &str,
    token: &str,
    listener: Option<OwnedFd>,
) -> Result<()> {
    refuse_if_confined(agent, peer)?;
    let pid = peer.pid.expect("checked by refuse_if_confined");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    if field("NoNewPrivs:").as_deref() != Some("1") {
        return Err(Error::Agent(
            "the joining process must have no_new_privs set".into(),
        ));
    }
    // Seccomp mode 2: a filter is installed, and the listener it sent is a seccomp one.
    if field("Seccomp:").as_deref() != Some("2") {
        return Err(Error::Agent(
            "the joining process must run under the session's syscall filter".into(),
        ));
    }
    let listener = listener.ok_or_else(|| {
        Error::Agent("the join request carries no syscall-filter listener".into())
    })?;
    let kind = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !kind.contains("seccomp") {
        return Err(Error::Agent(format!(
            "the descriptor sent with the join is not a seccomp listener ({kind})"
        )));
    }
    let mut sessions = agent.sessions.lock().unwrap();
    let entry = sessions
        .get_mut(session)
        .ok_or_else(|| Error::Agent(format!("no session `{session}`")))?;
    if entry.uid != peer.uid {
        return Err(Error::Agent("the session belongs to another user".into()));
    }
    match &entry.token {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => {}
        _ => return Err(Error::Agent("invalid or already used join token".into())),
    }
    entry.token = None;
    std::fs::write(entry.cgroup.join("cgroup.procs"), pid.to_string()).map_err(|source| {
        Error::File {
            path: entry.cgroup.join("cgroup.procs"),
            source,
        }
    })?;
    // The peer waits for our answer, so it is alive unless killed; if it died, its pid may
    // have been reused by another process we just moved: then nothing may exec on our word.
    if let Some(pidfd) = &peer.pidfd {
        if !pidfd_alive(pidfd) {
            return Err(Error::Agent("the joining process exited".into()));
        }
    }
    if let Some(supervisor) = &entry.supervisor {
        supervisor.spawn(listener);
    }
    if let Some(enricher) = &entry.enricher {
        enricher.remember(
            pid as u32,
            crate::events::ProcessInfo {
                command_line: Some(entry.command.join(" ")),
                ..Default::default()
            },
        );
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the peer may see a session: root sees all, a user their own; a process inside a
/// boundary session only that session (a confined agent cannot read its user's other
/// sessions).
fn visible(agent: &Agent, peer: &Peer, session: &str) -> bool {
    if let Some(own) = peer_session(peer) {
        return own == session;
    }
    peer.uid == 0
        || agent
            .owners
            .lock()
            .unwrap()
            .iter()
            .any(|(id, uid)| id == session && *uid == peer.uid)
}

/// The session a peer runs in, if it runs in one (its cgroup is `.../boundary/<id>[/...]`).
fn peer_session(peer: &Peer) -> Option<String> {
    let path = cgroup_of(peer.pid?)?;
    let mut parts = path.split('/');
    while let Some(part) = parts.next() {
        if part == "boundary" {
            return parts.next().map(str::to_string);
        }
    }
    None
}

fn status(agent: &Agent, peer: &Peer) -> Value {
    let sessions = agent.sessions.lock().unwrap();
    let mine = sessions.values().filter(|s| s.uid == peer.uid).count();
    let (lost_deny, lost_allow) = *agent.lock_lost();
    let (default, managed) = agent.default_policy();
    let mut policies = vec![policy_summary("default", &default, managed)];
    for (name, path) in &agent.opts.policies {
        policies.push(policy_summary(name, path, false));
    }
    json!({
        "ok": true,
        "agent": {
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "socket": agent.opts.socket.display().to_string(),
            "uptime_s": agent.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        },
        "policies": policies,
        "sessions": {"running": sessions.len(), "yours": mine},
        "events_lost": {"deny": lost_deny, "allow": lost_allow},
        // Records of the shared rings no running session claimed (a decision in a cgroup
        // whose attachment holds no slot yet, denied; or one read after its session ended).
        "events_unrouted": agent.kernel.router.unrouted(),
        "control_plane": agent.control.as_ref().map(|c| c.summary()),
        "landlock_abi": crate::confine::landlock_abi(),
    })
}

impl Agent {
    /// The default policy's file, and whether it is managed by the control plane.
    fn default_policy(&self) -> (PathBuf, bool) {
        match &self.control {
            Some(c) => (c.policy_path(), true),
            None => (self.opts.config.clone(), false),
        }
    }

    /// Where every session's events go besides its own files.
    fn outlets(&self) -> crate::events::Outlets {
        crate::events::Outlets {
            tap: Some(self.tap.clone()),
            spool: self.control.as_ref().map(|c| c.feed()),
        }
    }

    fn lock_lost(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.lost.lock().unwrap()
    }
}

fn policy_summary(name: &str, path: &Path, managed: bool) -> Value {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .map(rfc3339);
    // A managed policy's mode is its template's, from the metadata beside it.
    let loaded = if managed {
        match crate::managed::load(path) {
            Ok(crate::managed::Load::Ready(p, _)) => Ok(*p),
            Ok(crate::managed::Load::Pending) => policy::load(path).map_err(Error::from),
            Err(e) => Err(e),
        }
    } else {
        policy::load(path).map_err(Error::from)
    };
    match loaded {
        Ok(p) => json!({
            "name": name, "policy.name": p.name, "source": path.display().to_string(),
            "rules": p.rules.len(), "mode": p.mode.as_str(), "modified": modified,
        }),
        Err(e) => json!({
            "name": name, "source": path.display().to_string(), "modified": modified,
            "error": e.to_string(),
        }),
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn sessions(agent: &Agent, peer: &Peer) -> Value {
    let sessions = agent.sessions.lock().unwrap();
    let mut list: Vec<Value> = sessions
        .iter()
        .filter(|(id, _)| visible(agent, peer, id))
        .map(|(id, s)| {
            let processes = std::fs::read_to_string(s.cgroup.join("cgroup.procs"))
                .map(|t| t.lines().count())
                .unwrap_or(0);
            json!({
                "session.id": id,
                "policy": s.policy,
                "user.id": s.uid,
                "user.name": nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(s.uid)).ok().flatten().map(|u| u.name),
                "client.pid": s.client_pid,
                "command": s.command.join(" "),
                "started": rfc3339(s.started),
                "processes": processes,
            })
        })
        .collect();
    list.sort_by(|a, b| a["started"].as_str().cmp(&b["started"].as_str()));
    json!({"ok": true, "sessions": list})
}

async fn stream_events(
    agent: &Agent,
    peer: &Peer,
    follow: bool,
    action: Option<String>,
    session: Option<String>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> Result<()> {
    let wanted = |e: &Map<String, Value>| {
        let sid = e.get("session.id").and_then(Value::as_str).unwrap_or("");
        if session.as_deref().is_some_and(|s| s != sid) {
            return false;
        }
        if let Some(a) = &action {
            if e.get("event.action").and_then(Value::as_str) != Some(a.as_str()) {
                return false;
            }
        }
        visible(agent, peer, sid)
    };
    // Backlog and subscription under one lock (see `Agent::follow`).
    let (backlog, mut rx) = {
        let recent = agent.recent.lock().unwrap();
        let backlog: Vec<Arc<Map<String, Value>>> = recent.iter().cloned().collect();
        (backlog, agent.follow.subscribe())
    };
    for e in backlog.iter().filter(|e| wanted(e)) {
        protocol::write_json(write, &**e).await?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        match rx.recv().await {
            Ok(e) if wanted(&e) => protocol::write_json(write, &*e).await?,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                protocol::write_json(
                    write,
                    &json!({"event.name": "boundary.follow.skipped", "boundary.events_skipped": n}),
                )
                .await?
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Keeps the recent-events window and the loss totals for `status`.
async fn collect_recent(agent: Arc<Agent>, mut rx: broadcast::Receiver<Arc<Map<String, Value>>>) {
    loop {
        match rx.recv().await {
            Ok(e) => {
                if e.get("event.name").and_then(Value::as_str) == Some("boundary.events_lost") {
                    let n = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0);
                    let mut lost = agent.lock_lost();
                    lost.0 += n("boundary.events_lost.deny");
                    lost.1 += n("boundary.events_lost.allow");
                }
                let mut recent = agent.recent.lock().unwrap();
                recent.push_back(e.clone());
                if recent.len() > RECENT_EVENTS {
                    recent.pop_front();
                }
                // No follower is fine.
                let _ = agent.follow.send(e);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `boundary agent --events`: every session's events in one stream.
async fn write_all_events(mut rx: broadcast::Receiver<Arc<Map<String, Value>>>, path: PathBuf) {
    let mut sink = crate::events::Sink::new();
    if path == Path::new("-") {
        sink.stdout();
    } else if let Err(e) = sink.file(&path) {
        tracing::error!(error = %e, "cannot open the agent's events file");
        return;
    }
    loop {
        match rx.recv().await {
            // Never blocks: the sink's writer has its own thread and queue.
            Ok(e) => sink.write(&e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "the agent's events file fell behind");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_others_can_change_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("config.yaml");
        std::fs::write(&good, "name: x\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
        if nix::unistd::geteuid().is_root() {
            trusted_file(&good).unwrap();
        }
        let writable = dir.path().join("w.yaml");
        std::fs::write(&writable, "name: x\n").unwrap();
        std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(trusted_file(&writable)
            .unwrap_err()
            .to_string()
            .contains("writable by group or others"));
        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(trusted_file(&link)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
    }

    #[test]
    fn an_agent_token_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("agent-token");
        std::fs::write(&token, "bnd_agent_x\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = secret_file(&token).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        secret_file(&token).unwrap();
    }

    #[test]
    fn tokens_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

//! `boundary run`: one session = one policy, one cgroup, one copy of the eBPF programs, and the
//! wrapped command with all its descendants.
//!
//! Order matters for fail-closed behaviour: the maps are filled and the programs attached
//! before the command starts, and the command joins the cgroup before it execs, so it never
//! runs a single instruction unconfined. While it runs, a policy task keeps the kernel maps in
//! step with DNS answers and with edits of config.yaml (a bad edit is reported and the last
//! good policy stays in force).

use std::ffi::{CString, OsString};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boundary_common::{Settings, MODE_AUDIT, MODE_ENFORCE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Map, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::cgroup::{self, Cgroup};
use crate::config;
use crate::error::{Error, Result};
use crate::events::{self, Enricher, Sink};
use crate::loader::{self, Enforcer};
use crate::policy::{self, Mode, Policy};
use crate::resolver::{AddressBook, Resolver, ResolverConfig};

/// Exit code when boundary itself fails (bad config, missing privilege, kernel refusal): the
/// command did not run. 126/127 keep their shell meanings (not executable / not found).
pub const EXIT_BOUNDARY_FAILED: i32 = 125;

/// Directory of the per-session files that record which agent owns a session.
const RUN_DIR: &str = "/run/boundary/sessions";

/// How often config.yaml is checked for edits and the loss counters are read.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    pub command: Vec<OsString>,
    /// `-` for stdout, or a file to append to.
    pub events: Option<PathBuf>,
    pub hosts_file: Option<PathBuf>,
    pub dns_server: Option<SocketAddr>,
    pub session_id: Option<String>,
    pub cgroup_root: Option<PathBuf>,
    pub mode: Option<Mode>,
    /// Do not report allowed connections (deny and would_deny events are always reported).
    pub deny_events_only: bool,
}

/// Runs the command under the policy and returns the exit code boundary should exit with.
pub async fn run(opts: RunOptions) -> Result<i32> {
    let mut policy = config::load(&opts.config)?;
    if let Some(mode) = opts.mode {
        policy.mode = mode;
    }
    check_privileges()?;
    for warning in policy.warnings() {
        tracing::warn!("{warning}");
    }
    let session_id = opts
        .session_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if !session_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || session_id.is_empty()
        || session_id.len() > 64
    {
        return Err(Error::InvalidTarget {
            target: session_id,
            reason: "a session id is 1 to 64 letters, digits, '-' or '_'".into(),
        });
    }

    // Loaded before the policy is compiled: loading parses the kernel's BTF (~20 MB, freed
    // right after), and doing it while the compiled policy is not yet in memory keeps the
    // agent's peak RSS down. Nothing is attached yet, and the maps start empty (deny all).
    let (mut enforcer, rings) = Enforcer::load(settings(&policy, &opts))?;

    let resolver_config =
        ResolverConfig::new(&policy.dns, opts.dns_server, opts.hosts_file.as_deref())?;
    let mut resolver = Resolver::new(&policy, resolver_config.clone());
    let book = resolver.resolve_initial().await;
    let compiled = policy::compile(&policy, &book, &resolver_config.nameservers)?;
    enforcer.apply(&compiled)?;

    let root = match &opts.cgroup_root {
        Some(root) => root.clone(),
        None => cgroup::cgroup2_root()?,
    };
    sweep_stale_sessions(&root);
    // Claim the session before its cgroup exists: a concurrent run's sweep removes cgroups
    // whose owner file is missing or names a dead agent.
    let session_file = Path::new(RUN_DIR).join(&session_id);
    let _ = std::fs::create_dir_all(RUN_DIR);
    let _ = std::fs::write(&session_file, std::process::id().to_string());
    let cgroup = match Cgroup::create(&root, &session_id) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&session_file);
            return Err(e);
        }
    };
    let guard = Cleanup {
        cgroup: Some(cgroup),
        session_file: session_file.clone(),
        pin_dir: Path::new(loader::PIN_ROOT).join(&session_id),
    };
    if let Err(e) = enforcer.attach(guard.cgroup(), &session_id) {
        guard.finish();
        return Err(e);
    }

    // Events: one sink task fed by the ring readers and the session's own events.
    let mut sink = Sink::new();
    match opts.events.as_deref() {
        Some(p) if p == Path::new("-") => sink.stdout(),
        Some(p) => sink.file(p)?,
        None => {}
    }
    if let Some(dir) = &policy.log_dir {
        sink.file(&dir.join(format!("boundary-{session_id}.jsonl")))?;
    }
    // One shared copy: a 10,000-rule policy is megabytes.
    let policy = Arc::new(policy);
    let (policy_tx, policy_rx) = watch::channel(policy.clone());
    let (book_tx, book_rx) = watch::channel(Arc::new(book));
    let enricher = Arc::new(Enricher::new(
        session_id.clone(),
        policy_rx,
        book_rx.clone(),
    ));
    let (event_tx, event_rx) = mpsc::channel(events::EVENT_QUEUE);
    let sink_task = tokio::spawn(sink.run(event_rx));
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers = [rings.deny, rings.allow].map(|ring| {
        tokio::spawn(events::read_ring(
            ring,
            enricher.clone(),
            event_tx.clone(),
            stop_rx.clone(),
        ))
    });

    events::emit(
        &event_tx,
        enricher.session(
            "boundary.session.start",
            json!({
                "process.command_line": command_text(&opts.command),
                "boundary.policy.source": opts.config.display().to_string(),
                "boundary.policy.rules": policy.rules.len(),
                "boundary.cgroup.path": guard.cgroup().path().display().to_string(),
                "process.pid": std::process::id(),
            }),
        ),
    );

    let child = match spawn(&opts, guard.cgroup(), &session_id, &policy.name) {
        Ok(child) => child,
        Err((code, message)) => {
            eprintln!("boundary: {message}");
            let _ = stop_tx.send(true);
            for r in readers {
                let _ = r.await;
            }
            events::emit(
                &event_tx,
                enricher.session(
                    "boundary.session.end",
                    json!({"process.exit.code": code, "error.message": message}),
                ),
            );
            drop(event_tx);
            let _ = sink_task.await;
            let _ = enforcer.detach();
            guard.finish();
            return Ok(code);
        }
    };
    let child_pid = Pid::from_raw(child.id().map(|p| p as i32).unwrap_or(0));

    let refresh = resolver.spawn_refresh(book_tx);
    let policy_task = tokio::spawn(policy_loop(PolicyLoop {
        enforcer,
        policy,
        opts: opts.clone(),
        resolver_config,
        book: book_rx,
        policy_tx,
        events: event_tx.clone(),
        enricher: enricher.clone(),
        stop: stop_rx.clone(),
    }));

    let status = wait_forwarding_signals(child, child_pid).await;
    let code = exit_code(&status);

    // The command is done: nothing else in its cgroup may outlive it.
    let _ = stop_tx.send(true);
    refresh.abort();
    if let Some(cgroup) = guard.cgroup.as_ref() {
        let _ = cgroup::kill_all(cgroup.path());
    }
    for r in readers {
        match r.await {
            Ok(Err(e)) => tracing::error!(error = %e, "event reader failed"),
            Err(e) => tracing::error!(error = %e, "event reader panicked"),
            Ok(Ok(())) => {}
        }
    }
    let enforcer = match policy_task.await {
        Ok(enforcer) => Some(enforcer),
        Err(e) => {
            tracing::error!(error = %e, "policy task failed");
            None
        }
    };
    let mut end = Map::new();
    end.insert("process.exit.code".into(), code.into());
    if let Some(sig) = status.signal() {
        end.insert("process.exit.signal".into(), sig.into());
    }
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
    Ok(code)
}

fn settings(policy: &Policy, opts: &RunOptions) -> Settings {
    Settings {
        mode: match policy.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        },
        report_allows: u32::from(!opts.deny_events_only),
        ..Settings::default()
    }
}

/// Removes the session's cgroup, pins and owner file however `run` ends.
struct Cleanup {
    cgroup: Option<Cgroup>,
    session_file: PathBuf,
    pin_dir: PathBuf,
}

impl Cleanup {
    fn cgroup(&self) -> &Cgroup {
        self.cgroup.as_ref().expect("cgroup lives until finish")
    }

    fn finish(mut self) {
        self.cleanup();
    }

    fn cleanup(&mut self) {
        loader::remove_pin_dir(&self.pin_dir);
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(e) = cgroup.remove() {
                tracing::warn!(error = %e, "removing the session cgroup");
            }
        }
        let _ = std::fs::remove_file(&self.session_file);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Starts the command inside the cgroup. Errors carry the exit code to use (126/127).
fn spawn(
    opts: &RunOptions,
    cgroup: &Cgroup,
    session_id: &str,
    policy_name: &str,
) -> std::result::Result<tokio::process::Child, (i32, String)> {
    let (program, args) = opts
        .command
        .split_first()
        .ok_or((2, "no command given".to_string()))?;
    let procs = CString::new(cgroup.join_path().as_os_str().as_bytes())
        .map_err(|_| (EXIT_BOUNDARY_FAILED, "cgroup path contains NUL".to_string()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("BOUNDARY_SESSION_ID", session_id)
        .env("BOUNDARY_POLICY", policy_name)
        .kill_on_drop(false);
    // SAFETY: the closure only calls async-signal-safe functions (open, write, close) on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                // Never exec outside the cgroup: the command would run unconfined.
                return Err(err);
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        let name = program.to_string_lossy();
        match e.kind() {
            std::io::ErrorKind::NotFound => (127, format!("{name}: command not found")),
            std::io::ErrorKind::PermissionDenied => (126, format!("{name}: permission denied")),
            _ => (EXIT_BOUNDARY_FAILED, format!("starting {name}: {e}")),
        }
    })
}

/// Waits for the child, forwarding the signals a supervisor is expected to forward.
async fn wait_forwarding_signals(
    mut child: tokio::process::Child,
    pid: Pid,
) -> std::process::ExitStatus {
    let kinds = [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::quit(), Signal::SIGQUIT),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
        (SignalKind::window_change(), Signal::SIGWINCH),
    ];
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (kind, sig) in kinds {
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
fn exit_code(status: &std::process::ExitStatus) -> i32 {
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
    policy: Arc<Policy>,
    opts: RunOptions,
    resolver_config: ResolverConfig,
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
    let mut config_stamp = stamp(&s.opts.config);
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
                let book = book_rx.borrow_and_update().clone();
                install(&mut s, &book, "dns");
            }
            _ = tick.tick() => {
                let lost = s.enforcer.lost();
                if lost != lost_reported {
                    events::emit(&s.events, s.enricher.lost(lost.0 - lost_reported.0, lost.1 - lost_reported.1));
                    lost_reported = lost;
                }
                let now = stamp(&s.opts.config);
                if now != config_stamp {
                    config_stamp = now;
                    if let Some((handle, rx)) = reload(&mut s).await {
                        if let Some(old) = extra_resolver.replace(handle) {
                            old.abort();
                        }
                        book_rx = rx;
                        resolver_alive = true;
                    }
                }
            }
            _ = events::stopped(&mut stop) => break,
        }
    }
    if let Some(handle) = extra_resolver {
        handle.abort();
    }
    let lost = s.enforcer.lost();
    if lost != lost_reported {
        events::emit(
            &s.events,
            s.enricher
                .lost(lost.0 - lost_reported.0, lost.1 - lost_reported.1),
        );
    }
    s.enforcer
}

fn install(s: &mut PolicyLoop, book: &AddressBook, why: &str) {
    let result = policy::compile(&s.policy, book, &s.resolver_config.nameservers)
        .and_then(|compiled| s.enforcer.apply(&compiled));
    if let Err(e) = result {
        tracing::error!(error = %e, trigger = why, "updating the kernel policy failed; the previous one stays in force");
    }
}

/// Loads the edited config. On success: new resolver, maps and settings; on failure: an
/// event and an error log, and nothing changes.
async fn reload(
    s: &mut PolicyLoop,
) -> Option<(
    tokio::task::JoinHandle<()>,
    watch::Receiver<Arc<AddressBook>>,
)> {
    let started = Instant::now();
    let mut policy = match config::load(&s.opts.config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("boundary: {e}\nboundary: keeping the last good policy in force");
            events::emit(&s.events, s.enricher.session(
                "boundary.policy.rejected",
                json!({"error.message": e.to_string(), "boundary.policy.source": s.opts.config.display().to_string()}),
            ));
            return None;
        }
    };
    if let Some(mode) = s.opts.mode {
        policy.mode = mode;
    }
    let config =
        match ResolverConfig::new(&policy.dns, s.opts.dns_server, s.opts.hosts_file.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("boundary: {e}; keeping the last good policy in force");
                return None;
            }
        };
    let mut resolver = Resolver::new(&policy, config.clone());
    let book = resolver.resolve_initial().await;
    let compiled = match policy::compile(&policy, &book, &config.nameservers) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("boundary: {e}; keeping the last good policy in force");
            return None;
        }
    };
    if let Err(e) = s
        .enforcer
        .set_settings(settings(&policy, &s.opts))
        .and_then(|_| s.enforcer.apply(&compiled))
    {
        eprintln!("boundary: applying the reloaded policy: {e}");
        return None;
    }
    for warning in policy.warnings() {
        tracing::warn!("{warning}");
    }
    let policy = Arc::new(policy);
    s.policy = policy.clone();
    s.resolver_config = config;
    let rules = policy.rules.len();
    let _ = s.policy_tx.send(policy);
    let (tx, rx) = watch::channel(Arc::new(book));
    events::emit(&s.events, s.enricher.session(
        "boundary.policy.reload",
        json!({"boundary.policy.rules": rules, "boundary.reload.ms": started.elapsed().as_millis() as u64}),
    ));
    Some((resolver.spawn_refresh(tx), rx))
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Removes sessions whose agent is gone and whose processes have all exited. Sessions whose
/// agent died while processes remain are left attached: they stay confined (fail closed).
fn sweep_stale_sessions(root: &Path) {
    for dir in cgroup::sessions(root) {
        let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let owner = std::fs::read_to_string(Path::new(RUN_DIR).join(&id))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if owner.is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok()) {
            continue;
        }
        if cgroup::session_populated(&dir) {
            tracing::warn!(session = %id, "the agent of this session is gone; its processes stay confined by its last policy");
            continue;
        }
        loader::remove_pin_dir(&Path::new(loader::PIN_ROOT).join(&id));
        let _ = cgroup::remove_dir(&dir);
        let _ = std::fs::remove_file(Path::new(RUN_DIR).join(&id));
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

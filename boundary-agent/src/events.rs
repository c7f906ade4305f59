//! Audit events: kernel decisions enriched with what a security engineer needs (domain, rule as
//! written, process, user, session) and written as JSON lines with OpenTelemetry field names.
//!
//! Field names follow the OpenTelemetry semantic conventions where one exists
//! (`destination.address`, `process.pid`, `user.name`, `network.transport`, `session.id`, ...);
//! Boundary's own fields are under `boundary.`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use boundary_common::{
    Event, ACTION_ALLOW, ACTION_DENY, ACTION_WOULD_DENY, AF_INET, AF_INET6, HOOK_CONNECT4,
    HOOK_CONNECT6, HOOK_SENDMSG4, HOOK_SENDMSG6, HOOK_SOCK_CREATE, PROTO_TCP, PROTO_UDP, RULE_NONE,
};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::policy::AddressBook;
use crate::policy::Policy;

pub mod file;
pub mod summary;
pub mod writer;

use file::EventFile;
pub use file::Rotation;
use summary::Summarizer;
use writer::{Line, Writer};

/// What every event of a session shares, and what enrichment reads.
pub struct Enricher {
    pub session_id: String,
    pub policy: watch::Receiver<Arc<Policy>>,
    pub book: watch::Receiver<Arc<AddressBook>>,
    /// The name this session's DNS proxy last answered for an address (connection events
    /// name it rather than every name that shares the address).
    resolved: Option<crate::dns::learned::ResolvedNames>,
    clock: Clock,
    users: Mutex<HashMap<u32, Option<String>>>,
    processes: Mutex<ProcessCache>,
}

/// What /proc said about a process the first time one of its events was read, so that its
/// later events (read after it exited, as short-lived processes do) still say who it was.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessInfo {
    pub name: Option<String>,
    pub executable: Option<String>,
    pub command_line: Option<String>,
    pub parent_pid: Option<u32>,
}

/// Bounded: the oldest entries go first.
#[derive(Default)]
struct ProcessCache {
    entries: HashMap<u32, ProcessInfo>,
    order: std::collections::VecDeque<u32>,
}

const PROCESS_CACHE: usize = 4096;

impl ProcessCache {
    fn insert(&mut self, pid: u32, info: ProcessInfo) {
        if self.entries.insert(pid, info).is_none() {
            self.order.push_back(pid);
            if self.order.len() > PROCESS_CACHE {
                if let Some(old) = self.order.pop_front() {
                    self.entries.remove(&old);
                }
            }
        }
    }
}

/// Reads what /proc says of `pid` now; `None` when the process is gone.
fn read_process(pid: u32) -> Option<ProcessInfo> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let executable = fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let name = fs::read_to_string(dir.join("comm"))
        .ok()
        .map(|n| n.trim_end().to_string());
    let info = ProcessInfo {
        name,
        executable,
        command_line: command_line(&dir),
        parent_pid: parent_pid(&dir),
    };
    (info.name.is_some() || info.executable.is_some()).then_some(info)
}

impl Enricher {
    pub fn new(
        session_id: String,
        policy: watch::Receiver<Arc<Policy>>,
        book: watch::Receiver<Arc<AddressBook>>,
    ) -> Self {
        Enricher {
            session_id,
            policy,
            book,
            resolved: None,
            clock: Clock::now(),
            users: Mutex::new(HashMap::new()),
            processes: Mutex::new(ProcessCache::default()),
        }
    }

    /// Names addresses by what the session's DNS proxy answered (see [`crate::dns::learned`]).
    pub fn with_resolved(mut self, resolved: crate::dns::learned::ResolvedNames) -> Self {
        self.resolved = Some(resolved);
        self
    }

    /// The domain(s) a destination stands for: the name this session resolved through its DNS
    /// proxy to reach it, else every policy name that currently resolves to it.
    fn domains_for(&self, ip: std::net::IpAddr) -> Vec<String> {
        let asked = self.resolved.as_ref().and_then(|r| {
            let ip = match ip {
                std::net::IpAddr::V6(v6) => {
                    v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip)
                }
                v4 => v4,
            };
            r.read().ok()?.get(&ip).cloned()
        });
        match asked {
            Some(name) => vec![name],
            None => self.book.borrow().domains_for(ip),
        }
    }

    /// Records what is known of a process before its events arrive (the session's first
    /// process: its command line is known even if it exits at once).
    pub fn remember(&self, pid: u32, info: ProcessInfo) {
        self.processes.lock().unwrap().insert(pid, info);
    }

    /// The process facts for an event: /proc while the process lives (cached), the cache after.
    fn process(&self, pid: u32) -> ProcessInfo {
        let cached = self.processes.lock().unwrap().entries.get(&pid).cloned();
        match (read_process(pid), cached) {
            (Some(mut now), cached) => {
                // A process that has exec'd since keeps its new facts; a remembered command line
                // fills a gap only.
                if now.command_line.is_none() {
                    now.command_line = cached.and_then(|c| c.command_line);
                }
                self.processes.lock().unwrap().insert(pid, now.clone());
                now
            }
            (None, Some(cached)) => cached,
            (None, None) => ProcessInfo::default(),
        }
    }

    /// The JSON object for one kernel decision.
    pub fn decision(&self, e: &Event) -> Map<String, Value> {
        let policy = self.policy.borrow().clone();
        self.enrich(e, &policy)
    }

    /// The summary of a flood of identical kernel records (see [`summary::RecordFold`]).
    pub fn folded(&self, f: &summary::FoldedRecords) -> Map<String, Value> {
        let mut m = self.decision(&f.last);
        let at = |ns| Value::from(self.clock.wall(ns).format(&Rfc3339).unwrap_or_default());
        summary::mark(&mut m, f.count, at(f.first_ns), at(f.last_ns), f.interval);
        m
    }

    fn enrich(&self, e: &Event, policy: &Policy) -> Map<String, Value> {
        let mut m = self.base("boundary.decision", self.clock.wall(e.ktime_ns), policy);
        let action = match e.action {
            ACTION_ALLOW => "allow",
            ACTION_DENY => "deny",
            ACTION_WOULD_DENY => "would_deny",
            _ => "unknown",
        };
        m.insert("event.action".into(), action.into());
        m.insert("boundary.hook".into(), hook_name(e.hook).into());
        if e.action != ACTION_ALLOW {
            m.insert("boundary.deny.reason".into(), reason_name(e.reason).into());
        }
        // A record may stand for several identical decisions (allow dedup window, egress
        // deny rate limit): never fewer than one.
        m.insert("boundary.event.count".into(), e.count.max(1).into());
        if e.hook == HOOK_SOCK_CREATE || e.hook == boundary_common::HOOK_LSM_SOCKET {
            m.insert(
                "boundary.socket.type".into(),
                socket_type(e.family, e.sock_type).into(),
            );
            m.insert("boundary.socket.family".into(), e.family.into());
            m.insert("network.protocol.number".into(), e.ip_protocol.into());
        } else if e.hook == boundary_common::HOOK_SETSOCKOPT {
            // ip_protocol carries the option level, detail the option name.
            m.insert("boundary.socket.option.level".into(), e.ip_protocol.into());
            m.insert("boundary.socket.option.name".into(), e.detail.into());
            if let Some(name) = option_name(e.ip_protocol, e.detail) {
                m.insert("boundary.socket.option".into(), name.into());
            }
        } else if e.hook == boundary_common::HOOK_BPF {
            m.insert("boundary.bpf.command".into(), e.detail.into());
        } else if e.hook == boundary_common::HOOK_USERNS {
            // Nothing but who: the attempt to create a user namespace.
        } else {
            let ip = address(e);
            m.insert(
                "network.transport".into(),
                match e.protocol {
                    PROTO_TCP => "tcp".into(),
                    PROTO_UDP => "udp".into(),
                    _ => Value::from(format!("ip_protocol_{}", e.ip_protocol)),
                },
            );
            m.insert(
                "network.type".into(),
                if ip.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
            );
            m.insert("destination.address".into(), ip.to_string().into());
            m.insert("destination.port".into(), e.port.into());
            let domains = self.domains_for(ip);
            m.insert("boundary.destination.domains".into(), domains.into());
        }
        m.insert(
            "boundary.rule".into(),
            match e.rule_id {
                RULE_NONE => "none".into(),
                id => policy
                    .rule_text(id)
                    .unwrap_or("unknown (policy reloaded)")
                    .into(),
            },
        );
        m.insert(
            "boundary.rule.id".into(),
            match e.rule_id {
                RULE_NONE => Value::Null,
                id if id >= boundary_common::RULE_DNS => Value::Null,
                id => id.into(),
            },
        );
        let pid = (e.pid_tgid >> 32) as u32;
        let uid = e.uid_gid as u32;
        m.insert("process.pid".into(), pid.into());
        m.insert("thread.id".into(), (e.pid_tgid as u32).into());
        // The kernel reports the name of the *thread* that connected (Claude Code's Bun
        // runtime calls it "HTTP Client"); the process is named as /proc/PID/comm names its
        // main thread (OpenTelemetry's process.executable.name), the thread gets its own field.
        let thread = comm(&e.comm);
        let process = self.process(pid);
        let name = process
            .name
            .clone()
            .or_else(|| {
                let exe = process.executable.as_deref()?;
                Some(Path::new(exe).file_name()?.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| thread.clone());
        m.insert("process.executable.name".into(), name.into());
        m.insert("thread.name".into(), thread.into());
        m.insert("process.executable.path".into(), process.executable.into());
        m.insert("process.command_line".into(), process.command_line.into());
        m.insert("process.parent_pid".into(), process.parent_pid.into());
        m.insert("user.id".into(), uid.into());
        m.insert("user.name".into(), self.user_name(uid).into());
        m.insert("group.id".into(), ((e.uid_gid >> 32) as u32).into());
        m.insert("boundary.cgroup.id".into(), e.cgroup_id.into());
        m
    }

    /// A system call the session's syscall filter stopped (see `loader::seccomp`): refused,
    /// or in audit mode let through and reported as `would_deny`.
    pub fn refusal(&self, r: &crate::loader::Refusal, audit: bool) -> Map<String, Value> {
        let policy = self.policy.borrow().clone();
        let mut m = self.base("boundary.decision", OffsetDateTime::now_utc(), &policy);
        m.insert(
            "event.action".into(),
            if audit { "would_deny" } else { "deny" }.into(),
        );
        m.insert("boundary.hook".into(), "seccomp".into());
        m.insert("boundary.syscall".into(), r.syscall.into());
        match r.syscall {
            "socket" | "socketpair" => {
                let (family, sock_type) = (r.args[0] as u8, (r.args[1] & 0xf) as u8);
                m.insert("boundary.socket.family".into(), r.args[0].into());
                m.insert(
                    "boundary.socket.type".into(),
                    socket_type(family, sock_type).into(),
                );
                m.insert("network.protocol.number".into(), r.args[2].into());
            }
            "unshare" | "clone" => {
                m.insert("boundary.syscall.flags".into(), r.args[0].into());
            }
            "bpf" => {
                m.insert("boundary.bpf.command".into(), r.args[0].into());
            }
            _ => {}
        }
        m.insert("boundary.rule".into(), "none".into());
        m.insert("boundary.rule.id".into(), Value::Null);
        // The notification names the thread; its process is the thread group.
        let tid = r.pid;
        let pid = fs::read_to_string(format!("/proc/{tid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Tgid:"))
                    .and_then(|v| v.trim().parse::<u32>().ok())
            })
            .unwrap_or(tid);
        let thread = fs::read_to_string(format!("/proc/{tid}/comm"))
            .map(|t| t.trim_end().to_string())
            .unwrap_or_default();
        let process = self.process(pid);
        m.insert("process.pid".into(), pid.into());
        m.insert("thread.id".into(), tid.into());
        m.insert(
            "process.executable.name".into(),
            process
                .name
                .clone()
                .unwrap_or_else(|| thread.clone())
                .into(),
        );
        m.insert("thread.name".into(), thread.into());
        m.insert("process.executable.path".into(), process.executable.into());
        m.insert("process.command_line".into(), process.command_line.into());
        m.insert("process.parent_pid".into(), process.parent_pid.into());
        if let Ok(meta) = fs::metadata(format!("/proc/{tid}")) {
            use std::os::unix::fs::MetadataExt;
            m.insert("user.id".into(), meta.uid().into());
            m.insert("user.name".into(), self.user_name(meta.uid()).into());
            m.insert("group.id".into(), meta.gid().into());
        }
        m
    }

    /// Events the kernel could not queue: never lost silently.
    pub fn lost(&self, deny: u64, allow: u64) -> Map<String, Value> {
        let policy = self.policy.borrow().clone();
        let mut m = self.base("boundary.events_lost", OffsetDateTime::now_utc(), &policy);
        m.insert("boundary.events_lost.reason".into(), "ring_full".into());
        m.insert("boundary.events_lost.deny".into(), deny.into());
        m.insert("boundary.events_lost.allow".into(), allow.into());
        m
    }

    /// A session-level event (`boundary.session.start`, `.end`, `boundary.policy.reload`, ...).
    pub fn session(&self, name: &str, fields: Value) -> Map<String, Value> {
        let policy = self.policy.borrow().clone();
        let mut m = self.base(name, OffsetDateTime::now_utc(), &policy);
        if let Value::Object(extra) = fields {
            m.extend(extra);
        }
        m
    }

    fn base(&self, name: &str, at: OffsetDateTime, policy: &Policy) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "timestamp".into(),
            at.format(&Rfc3339).unwrap_or_default().into(),
        );
        m.insert("event.name".into(), name.into());
        m.insert("service.name".into(), "boundary".into());
        m.insert("session.id".into(), self.session_id.clone().into());
        m.insert("boundary.policy.name".into(), policy.name.clone().into());
        m.insert("boundary.mode".into(), policy.mode.as_str().into());
        m
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }
}

/// Converts `bpf_ktime_get_ns` (CLOCK_MONOTONIC) to wall-clock time.
struct Clock {
    offset_ns: i128,
}

impl Clock {
    fn now() -> Clock {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0);
        let wall = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Clock {
            offset_ns: wall - mono,
        }
    }

    fn wall(&self, ktime_ns: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.offset_ns + ktime_ns as i128)
            .unwrap_or_else(|_| OffsetDateTime::now_utc())
    }
}

fn address(e: &Event) -> IpAddr {
    if e.family == AF_INET {
        let v4 = Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]);
        // The kernel judged an IPv4-mapped IPv6 destination by its IPv4 address; show it as
        // the program wrote it.
        if matches!(e.hook, HOOK_CONNECT6 | HOOK_SENDMSG6) {
            return IpAddr::V6(v4.to_ipv6_mapped());
        }
        IpAddr::V4(v4)
    } else {
        IpAddr::V6(Ipv6Addr::from(e.addr))
    }
}

fn hook_name(hook: u8) -> &'static str {
    match hook {
        HOOK_CONNECT4 => "connect4",
        HOOK_CONNECT6 => "connect6",
        HOOK_SENDMSG4 => "sendmsg4",
        HOOK_SENDMSG6 => "sendmsg6",
        HOOK_SOCK_CREATE => "sock_create",
        boundary_common::HOOK_LSM_SOCKET => "lsm.socket_create",
        boundary_common::HOOK_SETSOCKOPT => "setsockopt",
        boundary_common::HOOK_EGRESS => "egress",
        boundary_common::HOOK_BPF => "lsm.bpf",
        boundary_common::HOOK_USERNS => "lsm.userns_create",
        _ => "unknown",
    }
}

fn reason_name(reason: u8) -> &'static str {
    match reason {
        boundary_common::REASON_POLICY => "policy",
        boundary_common::REASON_SOCKET_KIND => "socket_kind",
        boundary_common::REASON_SOCKET_OPTION => "socket_option",
        boundary_common::REASON_IP_OPTIONS => "ip_options",
        boundary_common::REASON_ROUTING_HEADER => "routing_header",
        boundary_common::REASON_PROTOCOL => "protocol",
        boundary_common::REASON_MALFORMED => "malformed",
        boundary_common::REASON_FORBIDDEN => "forbidden",
        _ => "unknown",
    }
}

/// Names of the routing and redirection options the setsockopt program refuses.
fn option_name(level: u32, name: u32) -> Option<&'static str> {
    const SOL_IP: u32 = 0;
    const SOL_SOCKET: u32 = 1;
    const SOL_TCP: u32 = 6;
    const SOL_IPV6: u32 = 41;
    Some(match (level, name) {
        (SOL_IP, 3) => "IP_HDRINCL",
        (SOL_IP, 4) => "IP_OPTIONS",
        (SOL_IP, 16) => "IP_IPSEC_POLICY",
        (SOL_IP, 17) => "IP_XFRM_POLICY",
        (SOL_IP, 19) => "IP_TRANSPARENT",
        (SOL_SOCKET, 36) => "SO_MARK",
        (SOL_TCP, 19) => "TCP_REPAIR",
        (SOL_IPV6, 1) => "IPV6_ADDRFORM",
        (SOL_IPV6, 54) => "IPV6_HOPOPTS",
        (SOL_IPV6, 55) => "IPV6_RTHDRDSTOPTS",
        (SOL_IPV6, 57) => "IPV6_RTHDR",
        (SOL_IPV6, 59) => "IPV6_DSTOPTS",
        (SOL_IPV6, 3) => "IPV6_2292HOPOPTS",
        (SOL_IPV6, 4) => "IPV6_2292DSTOPTS",
        (SOL_IPV6, 5) => "IPV6_2292RTHDR",
        (SOL_IPV6, 75) => "IPV6_TRANSPARENT",
        _ => return None,
    })
}

fn socket_type(family: u8, sock_type: u8) -> String {
    match (family, sock_type) {
        (17, _) => "packet".into(),
        (AF_INET | AF_INET6, 3) => "raw".into(),
        (f, t) => format!("family_{f}_type_{t}"),
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn command_line(proc_dir: &Path) -> Option<String> {
    let raw = fs::read(proc_dir.join("cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

fn parent_pid(proc_dir: &Path) -> Option<u32> {
    let stat = fs::read_to_string(proc_dir.join("stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: the length is checked; Event is plain old data valid for any bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Events on their way to the sink.
pub type EventSender = mpsc::Sender<Map<String, Value>>;

/// Events queued between the ring readers and the sink.
pub const EVENT_QUEUE: usize = 4096;

/// Queues a session-level event without waiting and without dropping it when the queue is
/// momentarily full.
pub fn emit(tx: &EventSender, event: Map<String, Value>) {
    if let Err(mpsc::error::TrySendError::Full(event)) = tx.try_send(event) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(event).await;
        });
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A fan-out of every event of a session (the agent daemon's live view: `boundary events
/// --follow`). A receiver that falls behind loses events and is told how many; the session
/// never waits for it.
pub type Tap = tokio::sync::broadcast::Sender<Arc<Map<String, Value>>>;

/// Where the agent's spool takes events (see `control::spool`): an unbounded channel, so the
/// session never waits for the disk and nothing is dropped on the way (the spool itself is
/// bounded and counts what it drops).
#[derive(Clone)]
pub struct SpoolFeed {
    tx: std::sync::mpsc::Sender<Map<String, Value>>,
    /// Events sent and not yet written (a stopping agent waits for this to reach zero).
    queued: Arc<std::sync::atomic::AtomicU64>,
}

/// The spool's end of a [`SpoolFeed`].
pub struct SpoolQueue {
    pub rx: std::sync::mpsc::Receiver<Map<String, Value>>,
    pub queued: Arc<std::sync::atomic::AtomicU64>,
}

impl SpoolFeed {
    pub fn channel() -> (SpoolFeed, SpoolQueue) {
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        (
            SpoolFeed {
                tx,
                queued: queued.clone(),
            },
            SpoolQueue { rx, queued },
        )
    }

    /// Queues an event; `false` only when the spool's writer is gone.
    pub fn send(&self, event: Map<String, Value>) -> bool {
        use std::sync::atomic::Ordering;
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(event).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Events queued and not yet in the spool.
    pub fn queued(&self) -> u64 {
        self.queued.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a daemon's session hands its events to besides its own files: the daemon's live view
/// ([`Tap`], may lag) and the control plane's spool (never drops).
#[derive(Clone, Default)]
pub struct Outlets {
    pub tap: Option<Tap>,
    pub spool: Option<SpoolFeed>,
}

/// Where events go: any of stdout, a file given with `--events`, `log_dir`, and taps.
///
/// Each writer has its own thread and a bounded queue (see [`writer`]): a stalled reader of
/// `--events -` or a full disk never blocks enforcement, policy reloads, signal forwarding or
/// the other sinks, and what a writer could not write is counted and reported as one
/// `boundary.events_lost` event once it can write again. Files are written whole lines only,
/// rotated and capped (see [`file`]). Floods of identical decisions are summarised before
/// they reach any writer or tap (see [`summary`]).
pub struct Sink {
    writers: Vec<Writer>,
    taps: Vec<Tap>,
    spool: Option<SpoolFeed>,
    session: Option<String>,
    summary: Option<Summarizer>,
}

/// Standard output without Rust's line buffer, which splits lines longer than its 1 KiB
/// into several writes: the wrapped command shares this stdout, and one `write` per event
/// line keeps the two from interleaving mid-line (a pipe write of up to 4 KiB is atomic).
pub fn raw_stdout() -> File {
    use std::os::fd::AsFd;
    match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        // No stdout to duplicate: a read-only /dev/null, so that writes fail and are counted
        // like any failed write.
        Err(_) => File::open("/dev/null").expect("/dev/null"),
    }
}

/// Now, as events write it.
pub(crate) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

impl Sink {
    pub fn new() -> Self {
        Sink {
            writers: Vec::new(),
            taps: Vec::new(),
            spool: None,
            session: None,
            summary: None,
        }
    }

    /// Names the session in the events the sink writes itself (losses, rotations). Call
    /// before adding writers.
    pub fn session(&mut self, id: &str) {
        self.session = Some(id.to_string());
    }

    /// Summarises floods of identical decisions per `interval` (zero: never).
    pub fn summarize(&mut self, interval: std::time::Duration) {
        self.summary = (!interval.is_zero()).then(|| Summarizer::new(interval));
    }

    pub fn tap(&mut self, tap: Tap) {
        self.taps.push(tap);
    }

    /// Every event (as written to the files: after flood summaries) also goes to the spool.
    pub fn spool(&mut self, feed: SpoolFeed) {
        self.spool = Some(feed);
    }

    pub fn stdout(&mut self) {
        self.writers.push(Writer::start(
            "stdout".into(),
            Box::new(raw_stdout()),
            self.session.clone(),
        ));
    }

    /// Appends to `path` with the default rotation.
    pub fn file(&mut self, path: &Path) -> Result<()> {
        self.rotated_file(path, Rotation::default())
    }

    /// Appends to `path`, creating it (and its directory) if needed, rotating it as `rotation`
    /// says.
    pub fn rotated_file(&mut self, path: &Path, rotation: Rotation) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Events hold command lines and destinations: a directory Boundary creates is not
            // listable by others (an existing one keeps its mode).
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|source| Error::File {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let file = EventFile::open(path, rotation, self.session.clone()).map_err(|source| {
            Error::File {
                path: path.to_path_buf(),
                source,
            }
        })?;
        self.writers.push(Writer::start(
            path.display().to_string(),
            Box::new(file),
            self.session.clone(),
        ));
        Ok(())
    }

    /// Hands the event (or, in a flood, nothing until the summary) to every tap and writer
    /// without waiting for any of them.
    pub fn write(&mut self, event: &Map<String, Value>) {
        match &mut self.summary {
            Some(summary) => {
                for e in summary.admit(event, std::time::Instant::now()) {
                    self.publish(&e);
                }
            }
            None => self.publish(event),
        }
    }

    /// Writes the summaries of flood windows that have ended.
    fn summaries_due(&mut self, all: bool) {
        let Some(summary) = &mut self.summary else {
            return;
        };
        let due = if all {
            summary.flush()
        } else {
            summary.due(std::time::Instant::now())
        };
        for e in due {
            self.publish(&e);
        }
    }

    fn publish(&mut self, event: &Map<String, Value>) {
        if let Some(feed) = &self.spool {
            if !feed.send(event.clone()) {
                // The spool's writer is gone (the agent is stopping): say so once.
                tracing::warn!("the event spool is closed; events of this session are not shipped");
                self.spool = None;
            }
        }
        if !self.taps.is_empty() {
            let shared = Arc::new(event.clone());
            for tap in &self.taps {
                // No receiver is fine: nobody is following right now.
                let _ = tap.send(shared.clone());
            }
        }
        if self.writers.is_empty() {
            return;
        }
        let line = Arc::new(Line::of(event));
        for w in &self.writers {
            w.offer(&line);
        }
    }

    /// Writes the pending summaries, closes the queues and gives the writers until `grace`
    /// to write what they hold; a writer still stuck then (a reader that never reads) is left
    /// behind, never waited for.
    pub fn close(mut self, grace: std::time::Duration) {
        self.summaries_due(true);
        let deadline = std::time::Instant::now() + grace;
        for w in &mut self.writers {
            w.close_queue();
        }
        for w in &mut self.writers {
            let Some(thread) = w.take_thread() else {
                continue;
            };
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!(sink = %w.name, "an event sink did not finish writing in time");
            }
        }
    }

    /// Writes events until every sender is gone, then closes the writers.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Map<String, Value>>) {
        let every = self
            .summary
            .as_ref()
            .map(Summarizer::tick)
            .unwrap_or(std::time::Duration::from_secs(3600));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => self.write(&event),
                    None => break,
                },
                _ = tick.tick() => self.summaries_due(false),
            }
        }
        let _ = tokio::task::spawn_blocking(move || self.close(SINK_GRACE)).await;
    }
}

/// How long the writers get to finish when a session ends.
pub const SINK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for Sink {
    fn default() -> Self {
        Sink::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_gets_every_event_even_when_the_tap_has_no_room() {
        let (feed, queue) = SpoolFeed::channel();
        let (tap, _rx) = tokio::sync::broadcast::channel(4);
        let mut sink = Sink::new();
        sink.tap(tap);
        sink.spool(feed.clone());
        for i in 0..10_000u64 {
            let mut m = Map::new();
            m.insert("event.name".into(), "boundary.session.start".into());
            m.insert("n".into(), i.into());
            sink.write(&m);
        }
        // The tap's receiver lagged long ago; the spool's channel holds all of them, in order.
        assert_eq!(feed.queued(), 10_000);
        let got: Vec<u64> = queue
            .rx
            .try_iter()
            .map(|m| m["n"].as_u64().unwrap())
            .collect();
        assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn parent_pid_survives_parentheses_in_comm() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("stat"), "42 (a) b) c) S 7 42 42 0 -1").unwrap();
        assert_eq!(parent_pid(dir.path()), Some(7));
    }

    #[test]
    fn mapped_addresses_are_shown_as_the_program_wrote_them() {
        let mut e = Event {
            family: AF_INET,
            hook: HOOK_CONNECT6,
            ..Event::default()
        };
        e.addr[..4].copy_from_slice(&[127, 0, 0, 3]);
        assert_eq!(address(&e).to_string(), "::ffff:127.0.0.3");
        e.hook = HOOK_CONNECT4;
        assert_eq!(address(&e).to_string(), "127.0.0.3");
    }

    #[test]
    fn decode_rejects_short_records() {
        assert!(decode(&[0u8; 8]).is_none());
        let e = Event {
            port: 8080,
            ..Event::default()
        };
        // SAFETY: viewing a POD struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        };
        assert_eq!(decode(bytes).unwrap().port, 8080);
    }
}

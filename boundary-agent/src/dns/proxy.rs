//! The proxy's sockets: one UDP socket and one TCP listener on 127.0.0.1 (and on ::1 when the
//! host has it), same ephemeral port, per session. Runs on the agent's runtime (in-process
//! for single-shot `boundary run`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};

use super::answer::{judge, normalize, truncated, Question};
use super::Learned;
use crate::error::{Error, Result};
use crate::events::{self, Enricher};
use crate::policy::{Mode, Policy};
use crate::resolver::ResolverConfig;

/// How long one upstream nameserver gets to answer before the next one is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// At most this many TCP clients at once; more wait for the kernel's backlog.
const TCP_CLIENTS: usize = 256;
/// At most this many UDP queries in progress; more are dropped (the asker retries), so a
/// flood from the session costs it its own DNS, not the agent's memory.
const UDP_IN_FLIGHT: usize = 4096;

/// The bound, not yet running, proxy of one session.
pub struct DnsProxy {
    udp4: std::net::UdpSocket,
    tcp4: std::net::TcpListener,
    v6: Option<(std::net::UdpSocket, std::net::TcpListener)>,
}

/// What the proxy needs from its session.
pub struct ProxyContext {
    pub policy: watch::Receiver<Arc<Policy>>,
    /// `--dns-server`: overrides the policy's and resolv.conf's nameservers.
    pub dns_server: Option<SocketAddr>,
    /// To the policy task, which installs an answer's addresses before it is released.
    pub learned: mpsc::Sender<Learned>,
    /// Held weakly: a session that ends is never kept open by its proxy.
    pub events: mpsc::WeakSender<serde_json::Map<String, Value>>,
    pub enricher: Arc<Enricher>,
    /// The session's cgroup, to name the process behind a query.
    pub cgroup: Option<PathBuf>,
}

impl DnsProxy {
    /// Binds UDP and TCP on the same ephemeral port of 127.0.0.1, and of ::1 if possible.
    pub fn bind() -> Result<DnsProxy> {
        let (udp4, tcp4) = bind_pair(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .map_err(|e| Error::Dns(format!("binding the DNS proxy on 127.0.0.1: {e}")))?;
        let v6 = bind_pair(IpAddr::V6(Ipv6Addr::LOCALHOST)).ok();
        Ok(DnsProxy { udp4, tcp4, v6 })
    }

    /// Where IPv4 (and v4-mapped) port 53 goes.
    pub fn addr4(&self) -> SocketAddrV4 {
        match self.udp4.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            _ => SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        }
    }

    /// The port on ::1, 0 when there is none.
    pub fn port6(&self) -> u16 {
        self.v6
            .as_ref()
            .and_then(|(u, _)| u.local_addr().ok())
            .map_or(0, |a| a.port())
    }

    /// The addresses the session's programs must be able to reach (UDP and TCP).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mut out = vec![SocketAddr::V4(self.addr4())];
        if self.port6() != 0 {
            out.push(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.port6()));
        }
        out
    }

    /// Serves until the returned handle is dropped. Must run inside the tokio runtime.
    pub fn spawn(self, ctx: ProxyContext) -> Result<RunningProxy> {
        let shared = Arc::new(Shared {
            ctx,
            upstreams: Mutex::new(None),
            allowed_seen: Mutex::new(HashMap::new()),
            tcp_clients: Arc::new(tokio::sync::Semaphore::new(TCP_CLIENTS)),
            udp_in_flight: Arc::new(tokio::sync::Semaphore::new(UDP_IN_FLIGHT)),
        });
        let mut pairs = vec![(self.udp4, self.tcp4)];
        pairs.extend(self.v6);
        let mut tasks = Vec::new();
        for (udp, tcp) in pairs {
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            let udp = Arc::new(UdpSocket::from_std(udp)?);
            let tcp = TcpListener::from_std(tcp)?;
            tasks.push(tokio::spawn(serve_udp(udp, shared.clone())));
            tasks.push(tokio::spawn(serve_tcp(tcp, shared.clone())));
        }
        Ok(RunningProxy { servers: tasks })
    }
}

/// A running proxy: it stops when this is dropped (however its session ends).
pub struct RunningProxy {
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

fn bind_pair(ip: IpAddr) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last = None;
    for _ in 0..32 {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind(SocketAddr::new(ip, port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// The policy the upstream nameservers were worked out for, and those nameservers.
type Upstreams = (Arc<Policy>, Arc<Vec<SocketAddr>>);

struct Shared {
    ctx: ProxyContext,
    /// The nameservers of the policy in force (resolv.conf is read once per policy).
    upstreams: Mutex<Option<Upstreams>>,
    /// Allow events: one per name per TTL.
    allowed_seen: Mutex<HashMap<String, Instant>>,
    tcp_clients: Arc<tokio::sync::Semaphore>,
    udp_in_flight: Arc<tokio::sync::Semaphore>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Udp,
    Tcp,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Udp => "udp",
            Via::Tcp => "tcp",
        }
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    loop {
        // The 64 KiB a datagram may need is allocated once one is waiting, not held by every
        // idle session (an agent serves hundreds).
        if let Err(e) = sock.readable().await {
            tracing::debug!(error = %e, "DNS proxy: waiting for a query");
            continue;
        }
        let mut buf = vec![0u8; 65_535];
        let (n, peer) = match sock.try_recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "DNS proxy: receiving");
                continue;
            }
        };
        let Ok(permit) = shared.udp_in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (sock, shared) = (sock.clone(), shared.clone());
        tokio::spawn(async move {
            let mut after = None;
            if let Some(reply) = shared.answer(&query, Via::Udp, peer, &mut after).await {
                let _ = sock.send_to(&reply, peer).await;
            }
            shared.report_allowed(after, Via::Udp, peer);
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let permit = match shared.tcp_clients.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "DNS proxy: accepting");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_tcp_client(stream, peer, &shared).await;
            drop(permit);
        });
    }
}

/// Length-prefixed queries, one after the other, until the client closes or goes quiet.
async fn serve_tcp_client(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
            Ok(Ok(q)) => q,
            _ => return,
        };
        let mut after = None;
        let Some(reply) = shared.answer(&query, Via::Tcp, peer, &mut after).await else {
            return;
        };
        let written = write_framed(&mut stream, &reply).await;
        shared.report_allowed(after, Via::Tcp, peer);
        if written.is_err() {
            return;
        }
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

impl Shared {
    /// The reply to one query (None: no reply at all).
    /// `after`: an allow event to report once the reply is sent.
    async fn answer(
        &self,
        bytes: &[u8],
        via: Via,
        peer: SocketAddr,
        after: &mut Option<AllowReport>,
    ) -> Option<Vec<u8>> {
        let q = match Question::parse(bytes) {
            Ok(q) => q,
            Err(reply) => return reply,
        };
        let policy = self.ctx.policy.borrow().clone();
        let audit = policy.mode == Mode::Audit;
        let refused_action = if audit { "would_deny" } else { "deny" };
        let rule = policy.match_domain(&q.name, None).map(|r| r.text.clone());
        if rule.is_none() {
            self.report(&q, refused_action, via, peer, Report::Refused { by: None });
            if !audit {
                return Some(q.refusal(policy.dns.refuse_with));
            }
        }
        let upstreams = self.upstreams(&policy);
        let Some(reply) = forward(&upstreams, bytes, via).await else {
            return Some(q.server_failure());
        };
        let Ok(response) = Message::from_vec(&reply) else {
            return Some(q.server_failure());
        };
        // An answer to another question is not an answer (error replies may carry none).
        if response.queries.first().is_some_and(|asked| {
            normalize(&asked.name().to_ascii()) != q.name || asked.query_type() != q.qtype
        }) {
            return Some(q.server_failure());
        }
        let judged = judge(&response, |n| policy.match_domain(n, None).is_some());
        if let Some(rule) = rule {
            if let Some(bad) = &judged.forbidden {
                self.report(
                    &q,
                    refused_action,
                    via,
                    peer,
                    Report::Refused {
                        by: Some(bad.as_str()),
                    },
                );
                if !audit {
                    return Some(q.refusal(policy.dns.refuse_with));
                }
            } else {
                let ttl = Duration::from_secs(judged.ttl.into()).clamp(
                    policy.dns.min_ttl,
                    policy.dns.max_ttl.max(policy.dns.min_ttl),
                );
                if !judged.ips.is_empty() {
                    let (installed, done) = oneshot::channel();
                    let learned = Learned {
                        asked: q.name.clone(),
                        names: judged.names.clone(),
                        ips: judged.ips.clone(),
                        ttl,
                        installed,
                    };
                    // Released only once the addresses are in the kernel maps. If the policy
                    // task is gone the answer goes out, but its addresses stay denied.
                    if self.ctx.learned.send(learned).await.is_ok() {
                        let _ = done.await;
                    }
                }
                if self.first_in_ttl(&q.name, ttl) {
                    // Reported once the answer is on its way: naming the process reads /proc,
                    // which the program should not wait for.
                    *after = Some(AllowReport {
                        question: q.clone(),
                        rule,
                        ips: judged.ips,
                    });
                }
            }
        }
        if via == Via::Udp && reply.len() > q.max_udp_payload() {
            return Some(truncated(&response));
        }
        Some(reply)
    }

    fn report_allowed(&self, report: Option<AllowReport>, via: Via, peer: SocketAddr) {
        if let Some(r) = report {
            self.report(
                &r.question,
                "allow",
                via,
                peer,
                Report::Allowed {
                    rule: &r.rule,
                    ips: &r.ips,
                },
            );
        }
    }

    fn upstreams(&self, policy: &Arc<Policy>) -> Arc<Vec<SocketAddr>> {
        let mut cached = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, servers)) = cached.as_ref() {
            if Arc::ptr_eq(p, policy) {
                return servers.clone();
            }
        }
        let servers = Arc::new(
            ResolverConfig::new(&policy.dns, self.ctx.dns_server, None)
                .map(|c| c.nameservers)
                .unwrap_or_default(),
        );
        *cached = Some((policy.clone(), servers.clone()));
        servers
    }

    fn first_in_ttl(&self, name: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut seen = self.allowed_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(name).is_some_and(|until| *until > now) {
            return false;
        }
        if seen.len() >= 65_536 {
            seen.retain(|_, until| *until > now);
            if seen.len() >= 65_536 {
                // Bounded memory over exact dedup: some names get a second allow event.
                seen.clear();
            }
        }
        seen.insert(name.to_string(), now + ttl);
        true
    }

    fn report(&self, q: &Question, action: &str, via: Via, peer: SocketAddr, what: Report) {
        let Some(tx) = self.ctx.events.upgrade() else {
            return;
        };
        let mut fields = json!({
            "event.action": action,
            "dns.question.name": q.name,
            "dns.question.type": q.qtype.to_string(),
            "network.transport": via.as_str(),
            "network.protocol.name": "dns",
            "source.address": peer.ip().to_string(),
            "source.port": peer.port(),
        });
        match what {
            Report::Refused { by } => {
                fields["boundary.rule"] = "none".into();
                fields["boundary.dns.reason"] =
                    if by.is_some() { "cname" } else { "policy" }.into();
                if let Some(name) = by {
                    fields["boundary.dns.refused_name"] = name.into();
                }
            }
            Report::Allowed { rule, ips } => {
                fields["boundary.rule"] = rule.into();
                fields["dns.resolved_ip"] = ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect::<Vec<_>>()
                    .into();
            }
        }
        if let Some(pid) = self
            .ctx
            .cgroup
            .as_deref()
            .and_then(|cg| socket_owner(cg, via, peer))
        {
            fields["process.pid"] = pid.into();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            fields["process.executable.name"] = comm.trim_end().into();
        }
        events::emit(&tx, self.ctx.enricher.session("boundary.dns", fields));
    }
}

/// An allowed name, to report after its answer went out.
struct AllowReport {
    question: Question,
    rule: String,
    ips: Vec<IpAddr>,
}

enum Report<'a> {
    Refused { by: Option<&'a str> },
    Allowed { rule: &'a str, ips: &'a [IpAddr] },
}

/// Asks the upstream nameservers in order until one answers. UDP queries are retried over TCP
/// when the answer is truncated, so that every address of it can be installed.
async fn forward(servers: &[SocketAddr], query: &[u8], via: Via) -> Option<Vec<u8>> {
    for server in servers {
        let reply = match via {
            Via::Udp => match udp_query(*server, query).await {
                Ok(r) if r.len() > 2 && r[2] & 0x02 != 0 => tcp_query(*server, query).await,
                other => other,
            },
            Via::Tcp => tcp_query(*server, query).await,
        };
        match reply {
            Ok(r) => return Some(r),
            Err(e) => tracing::debug!(server = %server, error = %e, "DNS proxy: upstream failed"),
        }
    }
    None
}

async fn udp_query(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        // Same id, and a response (QR): anything else is not our answer.
        if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_query(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        write_framed(&mut stream, query).await?;
        read_framed(&mut stream).await
    };
    let reply = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if reply.len() < 12 || reply[..2] != query[..2] {
        return Err(std::io::Error::other("answer does not match the query"));
    }
    Ok(reply)
}

/// The process of the session (by its cgroup) that owns the socket a query came from: found
/// through the socket's inode in /proc/net/{udp,tcp}{,6} and the processes' descriptors.
/// Only the session's own processes are searched, so this stays cheap.
fn socket_owner(cgroup: &std::path::Path, via: Via, peer: SocketAddr) -> Option<u32> {
    let table = match (via, peer.is_ipv4()) {
        (Via::Udp, true) => "/proc/net/udp",
        (Via::Udp, false) => "/proc/net/udp6",
        (Via::Tcp, true) => "/proc/net/tcp",
        (Via::Tcp, false) => "/proc/net/tcp6",
    };
    let port = format!(":{:04X}", peer.port());
    let text = std::fs::read_to_string(table).ok()?;
    let inode = text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local_address is field 1; for TCP the client's side is the local one too.
        (fields.get(1)?.ends_with(&port)).then(|| fields.get(9).map(|s| s.to_string()))?
    })?;
    let target = format!("socket:[{inode}]");
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

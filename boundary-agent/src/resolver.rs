//! Turning the policy's domains into addresses, and keeping them fresh.
//!
//! Names are looked up in the hosts file first, then asked of the nameservers, exactly those of
//! the policy (or /etc/resolv.conf): no system resolver library decides behind our back where a
//! query goes. Each name is asked again before its TTL runs out (clamped to
//! `dns.min_ttl..=dns.max_ttl`); an address that a name stops resolving to stays allowed for
//! `dns.grace_period`, so open connections and answers cached by programs keep working.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::policy::{AddressBook, DnsSettings, Policy};

/// How often hosts-file answers (which have no TTL) are looked at again.
const HOSTS_TTL: Duration = Duration::from_secs(5);
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Where names are resolved: the policy's `dns:` section, overridden from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    pub nameservers: Vec<SocketAddr>,
    pub hosts_file: PathBuf,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub grace_period: Duration,
}

impl ResolverConfig {
    /// Reads /etc/resolv.conf only when the policy and the overrides name no nameserver.
    pub fn new(
        settings: &DnsSettings,
        dns_server: Option<SocketAddr>,
        hosts_file: Option<&Path>,
    ) -> Result<Self> {
        let nameservers = match (dns_server, &settings.nameservers) {
            (Some(server), _) => vec![server],
            (None, Some(list)) => list.clone(),
            (None, None) => system_nameservers(Path::new("/etc/resolv.conf"))?,
        };
        let hosts_file = hosts_file
            .map(Path::to_path_buf)
            .or_else(|| settings.hosts_file.clone())
            .unwrap_or_else(|| PathBuf::from("/etc/hosts"));
        Ok(ResolverConfig {
            nameservers,
            hosts_file,
            min_ttl: settings.min_ttl,
            max_ttl: settings.max_ttl,
            grace_period: settings.grace_period,
        })
    }
}

/// `nameserver` lines of a resolv.conf.
pub fn system_nameservers(path: &Path) -> Result<Vec<SocketAddr>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::File {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

/// Addresses of `name` in a hosts file. The parsed file is cached until it changes, so a
/// policy with thousands of names reads it once, not once per name.
pub fn hosts_lookup(path: &Path, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    hosts_table(path).get(&name).cloned().unwrap_or_default()
}

type HostsTable = Arc<HashMap<String, Vec<IpAddr>>>;
/// The file it was read from, its (mtime, size) when read, and the parsed table.
type HostsCache = Option<(PathBuf, Option<(SystemTime, u64)>, HostsTable)>;

fn hosts_table(path: &Path) -> HostsTable {
    static CACHE: Mutex<HostsCache> = Mutex::new(None);
    let stamp = std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())));
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((p, s, table)) = cache.as_ref() {
        if p == path && *s == stamp && stamp.is_some() {
            return table.clone();
        }
    }
    let table: HostsTable = Arc::new(parse_hosts(
        &std::fs::read_to_string(path).unwrap_or_default(),
    ));
    *cache = Some((path.to_path_buf(), stamp, table.clone()));
    table
}

fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut out: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|f| f.parse::<IpAddr>().ok()) else {
            continue;
        };
        for host in fields {
            let ips = out
                .entry(host.trim_end_matches('.').to_ascii_lowercase())
                .or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    out
}

/// Resolves the policy's exact domains and keeps the answers fresh.
pub struct Resolver {
    config: ResolverConfig,
    names: Vec<String>,
    book: AddressBook,
    next_refresh: BTreeMap<String, Instant>,
}

impl Resolver {
    pub fn new(policy: &Policy, config: ResolverConfig) -> Self {
        Resolver {
            config,
            names: policy.exact_domains(),
            book: AddressBook::default(),
            next_refresh: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Resolves every name once. Names that do not resolve are reported and retried later.
    /// Hosts-file names are answered inline; DNS lookups run at most 32 at a time, so a policy
    /// with thousands of domains neither floods the nameserver nor holds thousands of tasks.
    pub async fn resolve_initial(&mut self) -> AddressBook {
        let now = Instant::now();
        let mut pending = Vec::new();
        for name in self.names.clone() {
            let from_hosts = hosts_lookup(&self.config.hosts_file, &name);
            if from_hosts.is_empty() {
                pending.push(name);
            } else {
                self.apply(&name, Ok((from_hosts, HOSTS_TTL)), now);
            }
        }
        let mut queue = pending.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < 32 {
                let Some(name) = queue.next() else { break };
                let config = self.config.clone();
                running.spawn(async move {
                    let answer = resolve(&config, &name).await;
                    (name, answer)
                });
            }
            match running.join_next().await {
                Some(Ok((name, answer))) => {
                    self.apply(&name, answer, now);
                }
                Some(Err(e)) => tracing::error!(error = %e, "resolver task failed"),
                None => break,
            }
        }
        self.book.clone()
    }

    fn apply(&mut self, name: &str, answer: Result<(Vec<IpAddr>, Duration)>, now: Instant) -> bool {
        let (changed, ttl) = match answer {
            Ok((ips, ttl)) => {
                if ips.is_empty() {
                    tracing::warn!(
                        domain = name,
                        "does not resolve; nothing is allowed for it yet"
                    );
                }
                (
                    self.book.update(name, &ips, now, self.config.grace_period),
                    ttl,
                )
            }
            Err(e) => {
                // Keep what we had: an unreachable nameserver must not cut working connections.
                tracing::warn!(domain = name, error = %e, "resolution failed; keeping previous addresses");
                (false, self.config.min_ttl)
            }
        };
        let ttl = ttl.clamp(self.config.min_ttl, self.config.max_ttl);
        // Ask again when 80% of the TTL has passed, so the new answer is in place before
        // programs' cached answers (which expire at 100%) are refreshed.
        self.next_refresh
            .insert(name.to_string(), now + ttl.mul_f32(0.8));
        changed
    }

    /// Re-resolves names as their TTLs run out and publishes each changed book.
    pub fn spawn_refresh(
        mut self,
        tx: watch::Sender<Arc<AddressBook>>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let now = Instant::now();
                let due = self
                    .next_refresh
                    .values()
                    .min()
                    .copied()
                    .unwrap_or(now + self.config.max_ttl);
                let grace_due = now + Duration::from_secs(1);
                let wake = due.min(grace_due);
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    _ = tx.closed() => return,
                }
                let now = Instant::now();
                let mut changed = self.book.expire(now);
                let names: Vec<String> = self
                    .next_refresh
                    .iter()
                    .filter(|(_, t)| **t <= now)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in names {
                    let answer = resolve(&self.config, &name).await;
                    changed |= self.apply(&name, answer, Instant::now());
                }
                if changed && tx.send(Arc::new(self.book.clone())).is_err() {
                    return;
                }
            }
        })
    }
}

/// Hosts file first; then A and AAAA from the first nameserver that answers.
pub async fn resolve(config: &ResolverConfig, name: &str) -> Result<(Vec<IpAddr>, Duration)> {
    let from_hosts = hosts_lookup(&config.hosts_file, name);
    if !from_hosts.is_empty() {
        return Ok((from_hosts, HOSTS_TTL));
    }
    if config.nameservers.is_empty() {
        return Err(Error::Dns(format!(
            "no nameserver configured to resolve {name}"
        )));
    }
    let mut last_error = None;
    for server in &config.nameservers {
        let mut ips = Vec::new();
        let mut ttl: Option<u32> = None;
        let mut ok = true;
        for qtype in [wire::TYPE_A, wire::TYPE_AAAA] {
            match query(*server, name, qtype).await {
                Ok(answer) => {
                    ips.extend(answer.addresses);
                    if let Some(t) = answer.min_ttl {
                        ttl = Some(ttl.map_or(t, |old| old.min(t)));
                    }
                }
                Err(e) => {
                    ok = false;
                    last_error = Some(e);
                    break;
                }
            }
        }
        if ok {
            return Ok((ips, Duration::from_secs(ttl.unwrap_or(30).into())));
        }
    }
    Err(last_error.unwrap_or_else(|| Error::Dns("no answer".into())))
}

async fn query(server: SocketAddr, name: &str, qtype: u16) -> Result<wire::Answer> {
    let id: u16 = rand_id();
    let request = wire::build_query(id, name, qtype)?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(&request).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| {
                Error::Dns(format!(
                    "{server} did not answer about {name} within {QUERY_TIMEOUT:?}"
                ))
            })??;
        match wire::parse_answer(&buf[..n], id) {
            Ok(answer) if answer.truncated => return query_tcp(server, &request, id).await,
            Ok(answer) => return Ok(answer),
            // A stray datagram (wrong id): keep waiting for ours.
            Err(wire::WireError::WrongId) => continue,
            Err(e) => return Err(Error::Dns(format!("{server}: {e}"))),
        }
    }
}

async fn query_tcp(server: SocketAddr, request: &[u8], id: u16) -> Result<wire::Answer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(server).await?;
        let mut framed = (request.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(request);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        wire::parse_answer(&buf, id).map_err(|e| Error::Dns(format!("{server}: {e}")))
    };
    tokio::time::timeout(QUERY_TIMEOUT, work)
        .await
        .map_err(|_| Error::Dns(format!("{server} did not answer over TCP")))?
}

fn rand_id() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// The queries boundary's resolver sends and the answers it reads, with the wire format left to
/// hickory-proto (as in the DNS proxy).
pub mod wire {
    use std::net::IpAddr;

    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};

    pub const TYPE_A: u16 = 1;
    pub const TYPE_AAAA: u16 = 28;

    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum WireError {
        #[error("answer is truncated or malformed")]
        Malformed,
        #[error("answer is for another query")]
        WrongId,
        #[error("server failure (rcode {0})")]
        ServerFailure(u8),
    }

    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct Answer {
        pub addresses: Vec<IpAddr>,
        /// Smallest TTL among the address records.
        pub min_ttl: Option<u32>,
        pub truncated: bool,
    }

    /// A recursive query for `name` (A, AAAA, ... by number).
    pub fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, crate::error::Error> {
        let invalid = || crate::error::Error::Dns(format!("`{name}` is not a valid name"));
        let bare = name.trim_end_matches('.');
        if bare.is_empty() || bare.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return Err(invalid());
        }
        let fqdn = Name::from_ascii(format!("{bare}.")).map_err(|_| invalid())?;
        let mut message = Message::query();
        message.metadata.id = id;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(fqdn, RecordType::from(qtype)));
        message
            .to_vec()
            .map_err(|e| crate::error::Error::Dns(format!("encoding a query for {name}: {e}")))
    }

    /// Collects the A/AAAA records of the answer section (CNAME chains included by servers).
    pub fn parse_answer(msg: &[u8], id: u16) -> Result<Answer, WireError> {
        if msg.len() < 12 {
            return Err(WireError::Malformed);
        }
        if u16::from_be_bytes([msg[0], msg[1]]) != id {
            return Err(WireError::WrongId);
        }
        // A truncated answer may end mid-record: only its TC bit matters (ask over TCP).
        if msg[2] & 0x02 != 0 {
            return Ok(Answer {
                truncated: true,
                ..Answer::default()
            });
        }
        let message = Message::from_vec(msg).map_err(|_| WireError::Malformed)?;
        let rcode = message.metadata.response_code;
        // NXDOMAIN is an answer: the name has no address.
        if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
            return Err(WireError::ServerFailure(u16::from(rcode) as u8));
        }
        let mut answer = Answer::default();
        for record in &message.answers {
            let ip = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            answer.addresses.push(ip);
            answer.min_ttl = Some(answer.min_ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DomainPattern;
    use std::net::UdpSocket;

    /// A one-name DNS server on 127.0.0.1 answering A queries from a shared, changeable list.
    fn dns_server(answers: Arc<std::sync::Mutex<(Vec<[u8; 4]>, u32)>>) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let q = &buf[..n];
                let mut resp = q.to_vec();
                resp[2] = 0x81;
                resp[3] = 0x80;
                let qtype = u16::from_be_bytes([q[n - 4], q[n - 3]]);
                let (ips, ttl) = answers.lock().unwrap().clone();
                let ips = if qtype == 1 { ips } else { Vec::new() };
                resp[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
                for ip in ips {
                    resp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
                    resp.extend_from_slice(&ttl.to_be_bytes());
                    resp.extend_from_slice(&[0, 4]);
                    resp.extend_from_slice(&ip);
                }
                socket.send_to(&resp, peer).unwrap();
            }
        });
        addr
    }

    fn config(server: SocketAddr, hosts: &Path) -> ResolverConfig {
        ResolverConfig {
            nameservers: vec![server],
            hosts_file: hosts.to_path_buf(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            grace_period: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn resolves_through_the_configured_nameserver_with_ttl() {
        let answers = Arc::new(std::sync::Mutex::new((vec![[127, 0, 0, 2]], 42)));
        let server = dns_server(answers);
        let dir = tempfile::tempdir().unwrap();
        let (ips, ttl) = resolve(&config(server, &dir.path().join("none")), "allowed.test")
            .await
            .unwrap();
        assert_eq!(ips, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(ttl, Duration::from_secs(42));
    }

    #[tokio::test]
    async fn hosts_file_wins_over_dns() {
        let answers = Arc::new(std::sync::Mutex::new((vec![[127, 0, 0, 9]], 42)));
        let server = dns_server(answers);
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &hosts,
            "# comment\n127.0.0.2 Allowed.Test other\n::1 allowed.test\n",
        )
        .unwrap();
        let (ips, _) = resolve(&config(server, &hosts), "allowed.test.")
            .await
            .unwrap();
        assert_eq!(
            ips,
            vec![
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn refresh_publishes_new_addresses_and_keeps_old_ones_for_the_grace_period() {
        let answers = Arc::new(std::sync::Mutex::new((vec![[127, 0, 0, 2]], 1)));
        let server = dns_server(answers.clone());
        let dir = tempfile::tempdir().unwrap();
        let policy = crate::policy::parse("t.yaml", "allowlist: [\"domain=moving.test\"]").unwrap();
        let mut resolver = Resolver::new(&policy, config(server, &dir.path().join("none")));
        let book = resolver.resolve_initial().await;
        let old: IpAddr = "127.0.0.2".parse().unwrap();
        let new: IpAddr = "127.0.0.4".parse().unwrap();
        assert_eq!(book.domains_for(old), vec!["moving.test"]);
        answers.lock().unwrap().0 = vec![[127, 0, 0, 4]];
        let (tx, mut rx) = watch::channel(Arc::new(book));
        let _task = resolver.spawn_refresh(tx);
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let book = rx.borrow_and_update().clone();
        let pattern = DomainPattern::Exact("moving.test".into());
        assert_eq!(
            book.addresses_matching(&pattern),
            vec![old, new],
            "old address kept during grace"
        );
        // After the 2 s grace period the old address goes.
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            tokio::time::timeout(Duration::from_secs(6), rx.changed())
                .await
                .unwrap()
                .unwrap();
            let book = rx.borrow_and_update().clone();
            if book.addresses_matching(&pattern) == vec![new] {
                break;
            }
            assert!(Instant::now() < deadline, "old address never expired");
        }
    }

    #[test]
    fn reads_nameservers_from_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "search x\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n",
        )
        .unwrap();
        assert_eq!(
            system_nameservers(&path).unwrap(),
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn parses_answers_and_rejects_garbage() {
        assert_eq!(
            wire::parse_answer(&[0; 5], 1),
            Err(wire::WireError::Malformed)
        );
        let q = wire::build_query(7, "a.test", wire::TYPE_A).unwrap();
        assert_eq!(wire::parse_answer(&q, 8), Err(wire::WireError::WrongId));
        assert_eq!(
            wire::parse_answer(&q, 7).unwrap().addresses,
            Vec::<IpAddr>::new()
        );
    }
}

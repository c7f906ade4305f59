//! Escape tests: every technique an unprivileged process inside a boundary might use to get
//! data to a forbidden destination, tried for real, with the negative proved the strong way.
//!
//! Each test creates two private network namespaces joined by a veth pair and nothing else
//! (no default route, no other interface): the client side `C` (10.231.0.1, fd00:231::1) where
//! `boundary run` and the confined program run, and the peer side `P` holding the allowed
//! addresses (10.231.0.2, fd00:231::2) and the forbidden ones (10.231.0.3, fd00:231::3). On
//! `P` the test holds an AF_PACKET sniffer that counts every frame addressed to a forbidden
//! address or carrying IPv4 options or an IPv6 routing header, and TCP/UDP listeners that
//! count the bytes they receive. The assertion is that the forbidden side received zero
//! bytes, not merely that a call failed; and that the events tell the truth (a denial with
//! the real destination, never an "allow" to a forbidden address).
//!
//! The confined program runs unprivileged: `boundary run -- <shim> setpriv --reuid=65534
//! --regid=65534 --clear-groups --no-new-privs -- python3 -c ...`, where the shim (this test
//! binary, re-executed) installs the session's syscall filter ([`SyscallFilter`]) first, as
//! the session does before exec. Some techniques are also tried as root inside the boundary,
//! which is documented as not a security boundary, but whose sockets must still be held.
//!
//! A few techniques are first run *outside* any boundary as a control: they do reach the
//! forbidden side there, which shows the sniffer and listeners would have seen a leak.
//!
//! Network rule: only addresses inside the namespaces these tests create, and loopback.
//! Namespaces are deleted however a test ends. Needs root.

use std::collections::HashSet;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use boundary_agent::loader::SyscallFilter;
use serde_json::Value;

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");
const PYTHON: &str = "/usr/bin/python3";
const SHIM_ENV: &str = "BOUNDARY_ESCAPE_SHIM_ARGV";
const PORT: u16 = 7777;

const ALLOWED_V4: &str = "10.231.0.2";
const FORBIDDEN_V4: &str = "10.231.0.3";
const ALLOWED_V6: &str = "fd00:231::2";
const FORBIDDEN_V6: &str = "fd00:231::3";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Flags `boundary run` needs here. The test starts the command as root and drops to nobody
/// itself (setpriv), so that it can also run techniques as root inside; where `run` refuses
/// root callers without `--root` (or `--user`), `--root` says so.
fn run_flags() -> &'static [&'static str] {
    static FLAGS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        let help = Command::new(BOUNDARY)
            .args(["run", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if help.contains("--root") {
            vec!["--root"]
        } else {
            Vec::new()
        }
    })
}

/// The shim: when this test binary is re-executed with `SHIM_ENV` set, this "test" installs
/// the session's syscall filter and execs the command (run normally, it does nothing).
#[test]
fn syscall_filter_shim() {
    let Ok(argv) = std::env::var(SHIM_ENV) else {
        return;
    };
    let argv: Vec<&str> = argv.split('\u{1f}').collect();
    let filter = SyscallFilter::new();
    filter.install().expect("installing the syscall filter");
    let err = Command::new(argv[0])
        .args(&argv[1..])
        .env_remove(SHIM_ENV)
        .exec();
    panic!("exec {}: {err}", argv[0]);
}

/// Two namespaces and a veth pair between them; deleted on drop.
struct Net {
    client: String,
    peer: String,
}

impl Net {
    fn new() -> Net {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let net = Net {
            client: format!("bnd-esc-{tag}-c"),
            peer: format!("bnd-esc-{tag}-p"),
        };
        let (c, p) = (&net.client, &net.peer);
        let (vc, vp) = (format!("ec{tag}"), format!("ep{tag}"));
        sh(&["ip", "netns", "add", c]);
        sh(&["ip", "netns", "add", p]);
        sh(&[
            "ip", "link", "add", &vc, "netns", c, "type", "veth", "peer", "name", &vp, "netns", p,
        ]);
        for (ns, dev, addrs) in [
            (c, &vc, vec!["10.231.0.1/24", "fd00:231::1/64"]),
            (
                p,
                &vp,
                vec![
                    "10.231.0.2/24",
                    "10.231.0.3/24",
                    "fd00:231::2/64",
                    "fd00:231::3/64",
                ],
            ),
        ] {
            for a in addrs {
                let mut args = vec!["ip", "-n", ns, "addr", "add", a, "dev", dev];
                if a.contains(':') {
                    args.push("nodad");
                }
                sh(&args);
            }
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        // Both ends must have carrier before anything is sent (a frame sent earlier is lost,
        // and a control would wrongly see nothing).
        for (ns, dev) in [(c, &vc), (p, &vp)] {
            let mut up = false;
            for _ in 0..100 {
                let out = Command::new("ip")
                    .args(["-n", ns, "link", "show", "dev", dev])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&out.stdout).contains("LOWER_UP") {
                    up = true;
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            assert!(up, "{dev} in {ns} has no carrier");
        }
        // Ping sockets for every group, as most distributions configure them (inside the
        // client namespace only).
        sh(&[
            "ip",
            "netns",
            "exec",
            c,
            "sysctl",
            "-qw",
            "net.ipv4.ping_group_range=0 2147483647",
        ]);
        net
    }

    /// Runs `f` on a thread that has entered the peer namespace (sockets it creates live there).
    fn on_peer<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.peer);
        thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .unwrap()
    }

    fn on_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.client);
        thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.client, &self.peer] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: plain setns on a valid namespace fd, for this thread only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the peer side saw.
#[derive(Default)]
struct Seen {
    /// Frames (and their bytes) addressed to a forbidden address, or with IPv4 options or an
    /// IPv6 routing header, whatever their address.
    forbidden_frames: AtomicU64,
    forbidden_bytes: AtomicU64,
    /// Payload bytes received by the listeners on forbidden addresses.
    forbidden_payload: AtomicU64,
    /// Payload bytes received by the listeners on allowed addresses.
    allowed_payload: AtomicU64,
    /// Settle markers the sniffer has seen (see [`Seen::settle`]).
    markers: AtomicU64,
    /// The client namespace, where settle markers are sent from.
    client_netns: std::sync::OnceLock<String>,
    stop: AtomicBool,
}

/// Starts the sniffer and listeners on the peer side.
fn watch_peer(net: &Net) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let _ = seen.client_netns.set(format!("/run/netns/{}", net.client));
    let sockets = net.on_peer(move || {
        // SAFETY: plain socket call; ETH_P_ALL in network order.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET sniffer: {}",
            std::io::Error::last_os_error()
        );
        let tcp: Vec<(TcpListener, bool)> = [
            (ALLOWED_V4, true),
            (FORBIDDEN_V4, false),
            (ALLOWED_V6, true),
            (FORBIDDEN_V6, false),
        ]
        .iter()
        .map(|(a, ok)| {
            (
                TcpListener::bind(SocketAddr::new(a.parse().unwrap(), PORT)).unwrap(),
                *ok,
            )
        })
        .collect();
        let udp: Vec<(UdpSocket, bool)> = [
            (ALLOWED_V4, true),
            (FORBIDDEN_V4, false),
            (ALLOWED_V6, true),
            (FORBIDDEN_V6, false),
        ]
        .iter()
        .map(|(a, ok)| {
            (
                UdpSocket::bind(SocketAddr::new(a.parse().unwrap(), PORT)).unwrap(),
                *ok,
            )
        })
        .collect();
        (fd, tcp, udp)
    });
    let (fd, tcp, udp) = sockets;
    {
        let seen = seen.clone();
        thread::spawn(move || sniff(fd, &seen));
    }
    for (listener, allowed) in tcp {
        let seen = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let seen = seen.clone();
                thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let counter = if allowed {
                            &seen.allowed_payload
                        } else {
                            &seen.forbidden_payload
                        };
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
    }
    for (socket, allowed) in udp {
        let seen = seen.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let counter = if allowed {
                    &seen.allowed_payload
                } else {
                    &seen.forbidden_payload
                };
                counter.fetch_add(n as u64, Ordering::Relaxed);
                let _ = socket.send_to(&buf[..n], from);
            }
        });
    }
    seen
}

fn sniff(fd: i32, seen: &Seen) {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: valid fd and option.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let forbidden_v4: [u8; 4] = FORBIDDEN_V4.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let forbidden_v6: [u8; 16] = FORBIDDEN_V6.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let mut buf = vec![0u8; 1 << 16];
    while !seen.stop.load(Ordering::Relaxed) {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let f = &buf[..n as usize];
        if f.len() < 14 {
            continue;
        }
        if f.windows(SETTLE_MARKER.len()).any(|w| w == SETTLE_MARKER) {
            seen.markers.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        let ip = &f[14..];
        let bad = match ethertype {
            0x0800 if ip.len() >= 20 => ip[16..20] == forbidden_v4 || ip[0] & 0x0f > 5,
            0x86dd if ip.len() >= 40 => ip[24..40] == forbidden_v6 || has_routing_header(ip),
            _ => false,
        };
        if bad {
            seen.forbidden_frames.fetch_add(1, Ordering::Relaxed);
            seen.forbidden_bytes
                .fetch_add(f.len() as u64, Ordering::Relaxed);
        }
    }
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
}

fn has_routing_header(ip: &[u8]) -> bool {
    let mut next = ip[6];
    let mut off = 40usize;
    for _ in 0..8 {
        match next {
            43 => return true,
            0 | 60 if ip.len() >= off + 2 => {
                next = ip[off];
                off += (ip[off + 1] as usize + 1) * 8;
            }
            _ => return false,
        }
    }
    false
}

/// Payload of the datagram that closes a test's traffic (see [`Seen::settle`]).
const SETTLE_MARKER: &[u8] = b"boundary-escape-test-settle-marker";

impl Seen {
    /// Waits until everything the client side sent before now has reached the sniffer: a
    /// marker datagram is sent last over the same veth (which keeps order), and the sniffer
    /// reads frames in order. Proving "nothing arrived" then needs no guessed grace period.
    fn settle(&self) {
        let before = self.markers.load(Ordering::SeqCst);
        let netns = self.client_netns.get().expect("watch_peer sets it").clone();
        thread::spawn(move || {
            enter_netns(&netns);
            let s = UdpSocket::bind("10.231.0.1:0").unwrap();
            s.send_to(SETTLE_MARKER, (ALLOWED_V4, 9)).unwrap();
        })
        .join()
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.markers.load(Ordering::SeqCst) <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the sniffer never saw the settle marker"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn assert_nothing_forbidden(&self, what: &str) {
        self.settle();
        assert_eq!(
            (
                self.forbidden_frames.load(Ordering::Relaxed),
                self.forbidden_bytes.load(Ordering::Relaxed),
                self.forbidden_payload.load(Ordering::Relaxed)
            ),
            (0, 0, 0),
            "{what}: the forbidden side received (frames, frame bytes, payload bytes)"
        );
    }
}

impl Drop for Seen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A policy file and an events file in a temporary directory.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.yaml"),
            format!(
                "name: escape\nallow_loopback: false\nallowlist:\n  - \"ip={ALLOWED_V4}\"\n  - \"ip={ALLOWED_V6}\"\n"
            ),
        )
        .unwrap();
        Case { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn decisions(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event.name"] == "boundary.decision")
            .collect()
    }
}

/// Who runs the program inside the boundary.
#[derive(Clone, Copy, PartialEq)]
enum As {
    Nobody,
    Root,
}

/// Runs `python3 -c code` in the client namespace: inside a boundary (through the shim that
/// installs the syscall filter) or, with `case == None`, outside any boundary as a control.
fn run(net: &Net, case: Option<&Case>, who: As, code: &str) -> Output {
    let program = format!("{PRELUDE}\n{code}");
    let mut inner: Vec<String> = Vec::new();
    if who == As::Nobody {
        inner.extend(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--no-new-privs",
                "--",
            ]
            .map(String::from),
        );
    }
    inner.extend([PYTHON.to_string(), "-c".into(), program]);
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", net.client));
    match case {
        Some(case) => {
            let me = std::env::current_exe().unwrap();
            cmd.arg(BOUNDARY)
                .args(["run", "--config"])
                .arg(case.path("config.yaml"))
                .arg("--events")
                .arg(case.path("events.jsonl"))
                .args(["--dns-server", "127.0.0.1:9"])
                .args(run_flags())
                .arg("--")
                .arg(me)
                .args(["syscall_filter_shim", "--exact", "--nocapture", "--quiet"])
                .env(SHIM_ENV, inner.join("\u{1f}"));
        }
        None => {
            cmd.args(&inner);
        }
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// `RESULT key=value` lines the program printed.
fn results(out: &Output) -> std::collections::HashMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const PRELUDE: &str = r#"
import socket, struct, os, errno, ctypes
A2, A3, B2, B3, PORT = "10.231.0.2", "10.231.0.3", "fd00:231::2", "fd00:231::3", 7777
def out(k, v): print("RESULT %s=%s" % (k, v), flush=True)
def attempt(k, f):
    try:
        r = f()
        out(k, "ok")
        return r
    except OSError as e:
        out(k, "err:" + errno.errorcode.get(e.errno, str(e.errno)))
def lsrr(hop, final):
    # LSRR: type 131, length 7, pointer 4, the hop; the final destination is the address used
    # with sendto. Padded with a NOP (1) to a multiple of 4 bytes.
    return bytes([1, 131, 7, 4]) + socket.inet_aton(hop)
def srh(hop):
    # IPv6 segment routing header (type 4): two segments, the packet goes to `hop` first.
    return bytes([0, 4, 4, 1, 1, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, B2) + socket.inet_pton(socket.AF_INET6, hop)
def rthdr2(hop):
    # Type 2 routing header (Mobile IPv6): one address.
    return bytes([0, 2, 2, 1, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, hop)
libc = ctypes.CDLL(None, use_errno=True)
def raw_syscall(k, nr, *args):
    r = libc.syscall(nr, *args)
    e = ctypes.get_errno()
    out(k, "ok" if r >= 0 else "err:" + errno.errorcode.get(e, str(e)))
"#;

/// Asserts what every escape test asserts about the events: nothing "allow"ed to a
/// forbidden address, and (when given) a denial from `hook` whose destination is `dest`.
fn assert_truthful_events(case: &Case, hook: Option<&str>, dest: Option<&str>) {
    let decisions = case.decisions();
    let forbidden: HashSet<IpAddr> = [FORBIDDEN_V4, FORBIDDEN_V6]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    for d in &decisions {
        if d["event.action"] == "allow" {
            if let Some(a) = d["destination.address"].as_str() {
                let ip: IpAddr = a.parse().unwrap();
                assert!(
                    !forbidden.contains(&ip),
                    "an allow event names a forbidden address: {d}"
                );
            }
        }
    }
    if let Some(hook) = hook {
        let found = decisions.iter().any(|d| {
            d["event.action"] == "deny"
                && d["boundary.hook"] == hook
                && dest.is_none_or(|a| d["destination.address"] == a)
        });
        assert!(
            found,
            "no deny event from {hook} (destination {dest:?}) in {decisions:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Controls: outside any boundary these techniques do reach the forbidden side.

#[test]
fn controls_outside_a_boundary_reach_the_forbidden_side() {
    let net = Net::new();
    let seen = watch_peer(&net);
    let out = run(
        &net,
        None,
        As::Nobody,
        r#"
s = attempt("udplite", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136))
attempt("udplite_send", lambda: s.sendto(b"u" * 100, (A3, PORT)))
"#,
    );
    assert_eq!(results(&out)["udplite_send"], "ok", "{}", text(&out));
    seen.settle();
    let after_udplite = seen.forbidden_frames.load(Ordering::Relaxed);
    assert!(
        after_udplite >= 1,
        "no leak seen outside a boundary (UDP-Lite)"
    );
    let out = run(
        &net,
        None,
        As::Nobody,
        r#"
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("rthdr_setsockopt", lambda: s.setsockopt(socket.IPPROTO_IPV6, 57, srh(B3)))
attempt("rthdr_send", lambda: s.sendto(b"r" * 100, (B2, PORT)))
"#,
    );
    assert_eq!(results(&out)["rthdr_send"], "ok", "{}", text(&out));
    seen.settle();
    let after_rthdr = seen.forbidden_frames.load(Ordering::Relaxed);
    assert!(
        after_rthdr > after_udplite,
        "no leak seen outside a boundary (IPV6_RTHDR)"
    );
    // IPv4 source routing needs CAP_NET_RAW on this kernel: root.
    let out = run(
        &net,
        None,
        As::Root,
        r#"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("cmsg", lambda: s.sendmsg([b"c" * 100], [(socket.IPPROTO_IP, 7, lsrr(A3, A2))], 0, (A2, PORT)))
"#,
    );
    assert_eq!(results(&out)["cmsg"], "ok", "{}", text(&out));
    seen.settle();
    assert!(
        seen.forbidden_frames.load(Ordering::Relaxed) > after_rthdr,
        "no leak seen outside a boundary (IP_RETOPTS)"
    );
}

// ---------------------------------------------------------------------------------------
// Socket kinds refused at creation

#[test]
fn udplite_is_refused_at_socket_creation_with_a_deny_event() {
    let net = Net::new();
    let seen = watch_peer(&net);
    let case = Case::new();
    let out = run(
        &net,
        Some(&case),
        As::Nobody,
        r#"
s = attempt("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136))
s6 = attempt("socket6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, 136))
"#,
    );
    let r = results(&out);
    assert_eq!(r["socket"], "err:EPERM", "{}", text(&out));
    assert_eq!(r["socket6"], "err:EPERM", "{}", text(&out));
    seen.assert_nothing_forbidden("UDP-Lite");
    assert_truthful_events(&case, Some("sock_create"), None);
    assert!(case
        .decisions()
        .iter()
        .any(|d| d["network.protocol.number"] == 136));
}

#[test]
fn icmp_ping_sockets_are_refused_even_where_ping_group_range_allows_them() {
    let net = Net::new();
    let seen = watch_peer(&net);
    let case = Case::new();
    let out = run(
        &net,
        Some(&case),
        As::Nobody,
        r#"
echo = bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"p" * 64
s = attempt("icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))
if s: attempt("icmp_send", lambda: s.sendto(echo, (A3, 0)))
s = attempt("icmp6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6))
if s: attempt("icmp6_send", lambda: s.sendto(bytes([128]) + echo[1:], (B3, 0)))
"#,
    );
    let r = results(&out);
    assert_eq!(r["icmp"], "err:EPERM", "{}", text(&out));
    assert_eq!(r["icmp6"], "err:EPERM", "{}", text(&out));
    seen.assert_nothing_forbidden("ICMP ping sockets");
    assert_truthful_events(&case, Some("sock_create"), None);
}

#[test]
fn raw_sockets_are_refused_for_nobody_and_for_root_inside() {
    let net = Net::new();
    let seen = watch_peer(&net);
    let code = r#"
s = attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP))
s6 = attempt("raw6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP))
"#;
    for who in [As::Nobody, As::Root] {
        let case = Case::new();
        let out = run(&net, Some(&case), who, code);
        let r = results(&out);
        assert_eq!(r["raw"], "err:EPERM", "{}", text(&out));
        assert_eq!(r["raw6"], "err:EPERM", "{}", text(&out));
        // Nobody is refused by the kernel itself (no CAP_NET_RAW) before any hook runs; root
        // inside is refused by sock_create, with an event.
        let hook = (who == As::Root).then_some("sock_create");
        assert_truthful_events(&case, hook, None);
    }
    seen.assert_nothing_forbidden("raw sockets");
}

#[test]
fn non_inet_families_are_refused_for_nobody_and_for_root_inside() {
    let net = Net::new();
    let seen = watch_peer(&net);
    // AF_PACKET (17), AF_VSOCK (40, creation only: never connected), AF_XDP (44),
    // AF_ALG (38), AF_KEY (15), AF_BLUETOOTH (31), AF_CAN (29), AF_TIPC (30), AF_RDS (21),
    // AF_SMC (43), AF_PPPOX (24), AF_QIPCRTR (42).
    let code = r#"
for name, fam, typ, proto in [("packet", 17, socket.SOCK_RAW, 0x0300), ("packet_dgram", 17, socket.SOCK_DGRAM, 0x0300),
        ("vsock", 40, socket.SOCK_STREAM, 0), ("vsock_dgram", 40, socket.SOCK_DGRAM, 0), ("xdp", 44, socket.SOCK_RAW, 0),
        ("alg", 38, socket.SOCK_SEQPACKET, 0), ("key", 15, socket.SOCK_RAW, 2), ("bluetooth", 31, socket.SOCK_RAW, 0),
        ("can", 29, socket.SOCK_RAW, 1), ("tipc", 30, socket.SOCK_RDM, 0), ("rds", 21, socket.SOCK_SEQPACKET, 0),
        ("smc", 43, socket.SOCK_STREAM, 0), ("pppox", 24, socket.SOCK_STREAM, 0), ("qipcrtr", 42, socket.SOCK_DGRAM, 0)]:
    s = attempt(name, lambda: socket.socket(fam, typ, proto))
    if s is not None and fam == 17:
        attempt(name + "_send", lambda: s.sendto(b"\xff" * 64, ("ec0", 0)))
attempt("socketpair_inet", lambda: socket.socketpair(socket.AF_INET, socket.SOCK_STREAM))
# SOCK_PACKET on AF_INET: the kernel turns it into an AF_PACKET socket.
attempt("inet_sock_packet", lambda: socket.socket(socket.AF_INET, 10, 0x0300))
attempt("inet_seqpacket", lambda: socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, 0))
attempt("inet_dccp", lambda: socket.socket(socket.AF_INET, 6, 33))
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
"#;
    for who in [As::Nobody, As::Root] {
        let case = Case::new();
        let out = run(&net, Some(&case), who, code);
        let r = results(&out);
        for name in [
            "packet",
            "packet_dgram",
            "vsock",
            "vsock_dgram",
            "xdp",
            "alg",
            "key",
            "bluetooth",
            "can",
            "tipc",
            "rds",
            "smc",
            "pppox",
            "qipcrtr",
            "socketpair_inet",
            "inet_sock_packet",
            "inet_seqpacket",
            "inet_dccp",
        ] {
            assert_eq!(
                r.get(name).map(String::as_str),
                Some("err:EPERM"),
                "{name} as {}: {}",
                if who == As::Root { "root" } else { "nobody" },
                text(&out)
            );
        }
        assert_eq!(r["unix"], "ok", "{}", text(&out));
        assert_eq!(r["netlink"], "ok", "{}", text(&out));
        assert_truthful_events(&case, None, None);
    }
    seen.assert_nothing_forbidden("non-inet families");
}

// ---------------------------------------------------------------------------------------
// Source routing: options and routing headers, as socket options and as control messages

#[test]
fn ip_options_source_routing_is_refused_as_a_socket_option() {
    let net = Net::new();
    let seen = watch_peer(&net);
    for who in [As::Nobody, As::Root] {
        let case = Case::new();
        let out = run(
            &net,
            Some(&case),
            who,
            r#"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("lsrr", lambda: s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr(A3, A2)))
ssrr = bytes([1, 137, 7, 4]) + socket.inet_aton(A3)
attempt("ssrr", lambda: s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ssrr))
attempt("send", lambda: s.sendto(b"s" * 100, (A2, PORT)))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
attempt("tcp_lsrr", lambda: t.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr(A3, A2)))
"#,
        );
        let r = results(&out);
        assert_eq!(r["lsrr"], "err:EPERM", "{}", text(&out));
        assert_eq!(r["ssrr"], "err:EPERM", "{}", text(&out));
        assert_eq!(r["tcp_lsrr"], "err:EPERM", "{}", text(&out));
        // The datagram itself went where it said, without options.
        assert_eq!(r["send"], "ok", "{}", text(&out));
        // The setsockopt program runs before the kernel's own checks: an event either way.
        assert_truthful_events(&case, Some("setsockopt"), None);
    }
    seen.assert_nothing_forbidden("IP_OPTIONS setsockopt");
}

#[test]
fn ip_options_source_routing_as_a_control_message_is_dropped_at_egress() {
    let net = Net::new();
    let seen = watch_peer(&net);
    let code = r#"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(20):
    attempt("cmsg", lambda: s.sendmsg([b"c" * 100], [(socket.IPPROTO_IP, 7, lsrr(A3, A2))], 0, (A2, PORT)))
"#;
    // Nobody: the kernel itself refuses source routing without CAP_NET_RAW.
    let case = Case::new();
    let out = run(&net, Some(&case), As::Nobody, code);
    assert_eq!(results(&out)["cmsg"], "err:EPERM", "{}", text(&out));
    assert_truthful_events(&case, None, None);
    // Root inside: the kernel builds the packet; egress drops it.
    let case = Case::new();
    let out = run(&net, Some(&case), As::Root, code);
    assert_eq!(results(&out)["cmsg"], "err:EPERM", "{}", text(&out));
    seen.assert_nothing_forbidden("IP_RETOPTS control message");
    // The packet's real destination is its first hop.
    assert_truthful_events(&case, Some("egress"), Some(FORBIDDEN_V4));
    // Twenty attempts within a second: one egress event (the others are counted in it).
    let egress: Vec<Value> = case
        .decisions()
        .into_iter()
        .filter(|d| d["boundary.hook"] == "egress")
        .collect();
    assert_eq!(egress.len(), 1, "rate limit: {egress:#?}");
}

#[test]
fn ipv6_routing_headers_are_refused_as_socket_options_and_dropped_as_control_messages() {
    let net = Net::new();
    let seen = watch_peer(&net);
    let case = Case::new();
    let out = run(
        &net,
        Some(&case),
        As::Nobody,
        r#"
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("rthdr", lambda: s.setsockopt(socket.IPPROTO_IPV6, 57, srh(B3)))
attempt("rthdr2292", lambda: s.setsockopt(socket.IPPROTO_IPV6, 5, srh(B3)))
attempt("hopopts", lambda: s.setsockopt(socket.IPPROTO_IPV6, 54, bytes([0, 0, 1, 4, 0, 0, 0, 0])))
attempt("dstopts", lambda: s.setsockopt(socket.IPPROTO_IPV6, 59, bytes([0, 0, 1, 4, 0, 0, 0, 0])))
attempt("addrform", lambda: s.setsockopt(socket.IPPROTO_IPV6, 1, 2))
attempt("send", lambda: s.sendto(b"s" * 100, (B2, PORT)))
attempt("cmsg_srh", lambda: s.sendmsg([b"c" * 100], [(socket.IPPROTO_IPV6, 57, srh(B3))], 0, (B2, PORT)))
attempt("cmsg_type2", lambda: s.sendmsg([b"c" * 100], [(socket.IPPROTO_IPV6, 57, rthdr2(B3))], 0, (B2, PORT)))
"#,
    );
    let r = results(&out);
    for k in ["rthdr", "rthdr2292", "hopopts", "dstopts", "addrform"] {
        assert_eq!(r[k], "err:EPERM", "{k}: {}", text(&out));
    }
    assert_eq!(r["send"], "ok", "{}", text(&out));
    // As control messages the kernel accepts only type 2 routing headers, and only with
    // CONFIG_IPV6_MIP6; either the kernel refuses them (EINVAL) or egress drops them (EPERM).
    for k in ["cmsg_srh", "cmsg_type2"] {
        assert!(r[k].starts_with("err:"), "{k}: {}", text(&out));
    }
    seen.assert_nothing_forbidden("IPv6 routing headers");
    assert_truthful_events(&case, Some("setsockopt"), None);
}

#[test]
fn routing_and_repair_options_are_refused() {
    let net = Net::new();
    let case = Case::new();
    // As root inside: these options need CAP_NET_ADMIN, which only root has.
    let out = run(
        &net,
        Some(&case),
        As::Root,
        r#"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
attempt("transparent", lambda: s.setsockopt(socket.IPPROTO_IP, 19, 1))
attempt("repair", lambda: s.setsockopt(socket.IPPROTO_TCP, 19, 1))
attempt("mark", lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 7))
attempt("nodelay", lambda: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
attempt("bindtodevice", lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo"))
"#,
    );
    let r = results(&out);
    for k in ["transparent", "repair", "mark"] {
        assert_eq!(r[k], "err:EPERM", "{k}: {}", text(&out));
    }
    assert_eq!(r["nodelay"], "ok", "{}", text(&out));
    assert_eq!(r["bindtodevice"], "ok", "{}", text(&out));
    assert_truthful_events(&case, Some("setsockopt"), None);
}

#[test]
fn audit_mode_lets_everything_through_and_reports_what_enforce_would_deny() {
    let net = Net::new();
    let seen = watch_peer(&net);
    let case = Case::new();
    let config = std::fs::read_to_string(case.path("config.yaml")).unwrap();
    std::fs::write(case.path("config.yaml"), format!("mode: audit\n{config}")).unwrap();
    // Root inside, for the IPv4 source route.
    let out = run(
        &net,
        Some(&case),
        As::Root,
        r#"
s = attempt("udplite", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136))
if s: attempt("udplite_send", lambda: s.sendto(b"u" * 100, (A3, PORT)))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("cmsg", lambda: u.sendmsg([b"c" * 100], [(socket.IPPROTO_IP, 7, lsrr(A3, A2))], 0, (A2, PORT)))
v = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("rthdr", lambda: v.setsockopt(socket.IPPROTO_IPV6, 57, srh(B3)))
attempt("rthdr_send", lambda: v.sendto(b"r" * 100, (B2, PORT)))
"#,
    );
    let r = results(&out);
    for k in ["udplite", "udplite_send", "cmsg", "rthdr", "rthdr_send"] {
        assert_eq!(r[k], "ok", "{k}: {}", text(&out));
    }
    seen.settle();
    assert!(seen.forbidden_frames.load(Ordering::Relaxed) >= 3);
    let decisions = case.decisions();
    for hook in ["sock_create", "setsockopt", "egress"] {
        assert!(
            decisions
                .iter()
                .any(|d| d["boundary.hook"] == hook && d["event.action"] == "would_deny"),
            "no would_deny from {hook}: {decisions:#?}"
        );
    }
    assert!(!decisions.iter().any(|d| d["event.action"] == "deny"));
}

// ---------------------------------------------------------------------------------------
// Operations: bpf() and user namespaces

#[test]
fn bpf_syscall_and_user_namespaces_are_refused_for_nobody_and_for_root_inside() {
    let net = Net::new();
    let code = r#"
import ctypes
SYS_bpf, SYS_unshare = 321, 272
# BPF_PROG_LOAD of a socket filter: r0 = 0; exit.
insns = (ctypes.c_uint64 * 2)(0x00000000000000b7, 0x0000000000000095)
lic = ctypes.create_string_buffer(b"GPL")
attr = (ctypes.c_uint8 * 128)()
struct.pack_into("<IIQQ", attr, 0, 1, 2, ctypes.addressof(insns), ctypes.addressof(lic))
raw_syscall("prog_load", SYS_bpf, 5, attr, 128)
path = ctypes.create_string_buffer(("/sys/fs/bpf/boundary/%s/connect4" % os.environ.get("BOUNDARY_SESSION_ID", "x")).encode())
attr = (ctypes.c_uint8 * 128)()
struct.pack_into("<Q", attr, 0, ctypes.addressof(path))
raw_syscall("obj_get", SYS_bpf, 7, attr, 128)
raw_syscall("unshare_user", SYS_unshare, 0x10000000)
raw_syscall("unshare_user_net", SYS_unshare, 0x10000000 | 0x40000000)
pid = os.fork() if hasattr(os, "fork") else -1
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
out("fork", "ok")
"#;
    for who in [As::Nobody, As::Root] {
        let case = Case::new();
        let out = run(&net, Some(&case), who, code);
        let r = results(&out);
        for k in ["prog_load", "obj_get", "unshare_user", "unshare_user_net"] {
            assert_eq!(
                r.get(k).map(String::as_str),
                Some("err:EPERM"),
                "{k}: {}",
                text(&out)
            );
        }
        // Plain fork (clone without CLONE_NEWUSER) still works.
        assert_eq!(r["fork"], "ok", "{}", text(&out));
        assert_truthful_events(&case, None, None);
    }
}

// ---------------------------------------------------------------------------------------
// What must keep working

#[test]
fn mptcp_and_bulk_tcp_to_an_allowed_peer_work_and_nothing_reaches_the_forbidden_side() {
    let net = Net::new();
    let seen = watch_peer(&net);
    let case = Case::new();
    let out = run(
        &net,
        Some(&case),
        As::Nobody,
        r#"
def bulk(fam, proto, addr, n):
    s = socket.socket(fam, socket.SOCK_STREAM, proto)
    s.connect((addr, PORT))
    chunk = b"b" * 65536
    for _ in range(n // 65536):
        s.sendall(chunk)
    s.close()
attempt("mptcp", lambda: bulk(socket.AF_INET, 262, A2, 1 << 20))
attempt("tcp", lambda: bulk(socket.AF_INET, 0, A2, 32 << 20))
attempt("tcp6", lambda: bulk(socket.AF_INET6, 0, B2, 8 << 20))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("udp", lambda: u.sendto(b"d" * 1000, (A2, PORT)))
u.settimeout(2)
attempt("udp_reply", lambda: u.recvfrom(2000))
attempt("tcp_forbidden", lambda: bulk(socket.AF_INET, 0, A3, 65536))
attempt("mptcp_forbidden", lambda: bulk(socket.AF_INET, 262, A3, 65536))
attempt("udp_forbidden", lambda: u.sendto(b"d" * 1000, (A3, PORT)))
# Datagrams larger than the veth MTU: egress sees them before fragmentation.
attempt("udp_big", lambda: u.sendto(b"f" * 8000, (A2, PORT)))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("udp6_big", lambda: u6.sendto(b"f" * 8000, (B2, PORT)))
attempt("udp6_big_forbidden", lambda: u6.sendto(b"f" * 8000, (B3, PORT)))
# TCP Fast Open: the connect happens inside sendto().
f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
attempt("fastopen_forbidden", lambda: f.sendto(b"t" * 1000, socket.MSG_FASTOPEN, (A3, PORT)))
"#,
    );
    let r = results(&out);
    for k in [
        "mptcp",
        "tcp",
        "tcp6",
        "udp",
        "udp_reply",
        "udp_big",
        "udp6_big",
    ] {
        assert_eq!(r[k], "ok", "{k}: {}", text(&out));
    }
    for k in [
        "tcp_forbidden",
        "mptcp_forbidden",
        "udp_forbidden",
        "udp6_big_forbidden",
        "fastopen_forbidden",
    ] {
        assert_eq!(r[k], "err:EPERM", "{k}: {}", text(&out));
    }
    seen.settle();
    let expected = (1u64 << 20) + (32 << 20) + (8 << 20) + 1000 + 8000 + 8000;
    assert_eq!(seen.allowed_payload.load(Ordering::Relaxed), expected);
    seen.assert_nothing_forbidden("allowed traffic");
    assert_truthful_events(&case, Some("connect4"), Some(FORBIDDEN_V4));
}

/// An MPTCP listener on the allowed address that announces the forbidden one (ADD_ADDR): the
/// client's path manager then opens an extra subflow there by itself, from kernel context.
fn mptcp_peer(net: &Net, seen: &Arc<Seen>) -> u16 {
    const MPTCP_PORT: u16 = 7778;
    for (ns, args) in [
        (
            &net.peer,
            vec!["limits", "set", "subflows", "4", "add_addr_accepted", "4"],
        ),
        (
            &net.client,
            vec!["limits", "set", "subflows", "4", "add_addr_accepted", "4"],
        ),
    ] {
        let mut cmd = vec!["ip", "-n", ns.as_str(), "mptcp"];
        cmd.extend(args);
        sh(&cmd);
    }
    let dev = Command::new("ip")
        .args(["-n", &net.peer, "-o", "link", "show", "type", "veth"])
        .output()
        .unwrap();
    let dev = String::from_utf8_lossy(&dev.stdout)
        .split(": ")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    sh(&[
        "ip",
        "-n",
        &net.peer,
        "mptcp",
        "endpoint",
        "add",
        FORBIDDEN_V4,
        "dev",
        &dev,
        "signal",
    ]);
    let listener = net.on_peer(|| {
        // SAFETY: plain socket calls on our own fd.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 262);
            assert!(fd >= 0, "MPTCP socket: {}", std::io::Error::last_os_error());
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                4,
            );
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: MPTCP_PORT.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(
                        ALLOWED_V4.parse::<std::net::Ipv4Addr>().unwrap().octets(),
                    ),
                },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(
                libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len),
                0
            );
            assert_eq!(libc::listen(fd, 16), 0);
            use std::os::fd::FromRawFd;
            TcpListener::from_raw_fd(fd)
        }
    });
    let seen = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let seen = seen.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.allowed_payload.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    MPTCP_PORT
}

#[test]
fn mptcp_extra_subflows_to_an_announced_forbidden_address_never_leave() {
    let code = |port: u16| {
        format!(
            r#"
import time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
attempt("connect", lambda: s.connect((A2, {port})))
for i in range(20):
    s.sendall(b"m" * 65536)
    time.sleep(0.05)
out("sent", "ok")
s.close()
"#
        )
    };
    // Control: outside a boundary the path manager does open the subflow to the forbidden
    // address.
    let net = Net::new();
    let seen = watch_peer(&net);
    let port = mptcp_peer(&net, &seen);
    let out = run(&net, None, As::Nobody, &code(port));
    assert_eq!(
        results(&out).get("sent").map(String::as_str),
        Some("ok"),
        "{}",
        text(&out)
    );
    seen.settle();
    assert!(
        seen.forbidden_frames.load(Ordering::Relaxed) > 0,
        "control: no MPTCP subflow to the announced address"
    );
    drop(seen);
    drop(net);

    let net = Net::new();
    let seen = watch_peer(&net);
    let port = mptcp_peer(&net, &seen);
    let case = Case::new();
    let out = run(&net, Some(&case), As::Nobody, &code(port));
    let r = results(&out);
    assert_eq!(r["connect"], "ok", "{}", text(&out));
    assert_eq!(r["sent"], "ok", "{}", text(&out));
    seen.settle();
    assert_eq!(seen.allowed_payload.load(Ordering::Relaxed), 20 * 65536);
    seen.assert_nothing_forbidden("MPTCP subflow to an announced address");
    assert_truthful_events(&case, None, None);
    let decisions = case.decisions();
    assert!(
        decisions
            .iter()
            .any(|d| d["event.action"] == "deny" && d["destination.address"] == FORBIDDEN_V4),
        "no deny event for the subflow: {decisions:#?}"
    );
}

#[test]
fn a_server_inside_answers_clients_outside_whatever_their_address() {
    let net = Net::new();
    let case = Case::new();
    // The client connects from the forbidden address: replies to an inbound connection are
    // not new destinations.
    let client = {
        let path = format!("/run/netns/{}", net.peer);
        thread::spawn(move || {
            enter_netns(&path);
            // Retried until the server inside listens (bounded).
            for _ in 0..150 {
                let s = socket2_bind_connect(FORBIDDEN_V4, "10.231.0.1");
                if let Some(mut s) = s {
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got);
                    return got.len();
                }
                thread::sleep(Duration::from_millis(100));
            }
            0
        })
    };
    let out = run(
        &net,
        Some(&case),
        As::Nobody,
        r#"
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("10.231.0.1", PORT))
l.listen(1)
l.settimeout(10)
c, peer = l.accept()
out("peer", peer[0])
attempt("reply", lambda: c.sendall(b"r" * 200000))
c.close()
"#,
    );
    let got = client.join().unwrap();
    let r = results(&out);
    assert_eq!(
        r.get("peer").map(String::as_str),
        Some(FORBIDDEN_V4),
        "{}",
        text(&out)
    );
    assert_eq!(r["reply"], "ok", "{}", text(&out));
    assert_eq!(got, 200000);
}

/// A TCP connection from `from` to `to`:PORT (blocking, 1 s timeout).
fn socket2_bind_connect(from: &str, to: &str) -> Option<std::net::TcpStream> {
    // SAFETY: plain socket calls on our own fd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mk = |a: &str, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.parse::<std::net::Ipv4Addr>().unwrap().octets()),
            },
            sin_zero: [0; 8],
        };
        let local = mk(from, 0);
        let remote = mk(to, PORT);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0
        {
            libc::close(fd);
            return None;
        }
        use std::os::fd::FromRawFd;
        Some(std::net::TcpStream::from_raw_fd(fd))
    }
}

#[test]
fn dns_over_udp_and_ipv6_loopback_keep_working_with_the_new_programs() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    // A loopback nameserver in the client namespace that answers every query with NXDOMAIN,
    // and a TCP listener on ::1.
    let (dns_port, tcp_port, got) = net.on_client(|| {
        let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = TcpListener::bind("[::1]:0").unwrap();
        let ports = (
            dns.local_addr().unwrap().port(),
            tcp.local_addr().unwrap().port(),
        );
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = dns.recv_from(&mut buf) {
                let mut reply = buf[..n].to_vec();
                reply[2] |= 0x80;
                reply[3] = (reply[3] & 0xf0) | 3;
                let _ = dns.send_to(&reply, from);
            }
        });
        let got = Arc::new(AtomicU64::new(0));
        let g = got.clone();
        thread::spawn(move || {
            for s in tcp.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                g.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        });
        (ports.0, ports.1, got)
    });
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "name: dns\nallow_loopback: false\ndns:\n  nameservers: [\"127.0.0.1:{dns_port}\"]\nallowlist:\n  - \"ip=::1 port={tcp_port}\"\n  - \"domain=example.test\"\n"
        ),
    )
    .unwrap();
    let code = format!(
        r#"{PRELUDE}
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x04test\x00" + struct.pack(">HH", 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
attempt("query", lambda: u.sendto(q, ("127.0.0.1", 53)))  # via boundary's DNS proxy
r = attempt("answer", lambda: u.recvfrom(512))
if r: out("rcode", r[0][3] & 15)
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
attempt("tcp6", lambda: t.connect(("::1", {tcp_port})))
attempt("tcp6_send", lambda: t.sendall(b"x" * 100000))
t.close()
attempt("other_port", lambda: socket.create_connection(("::1", {tcp_port} + 1), timeout=2))
"#
    );
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.client))
        .arg(BOUNDARY)
        .args(["run", "--config"])
        .arg(dir.path().join("config.yaml"))
        .arg("--events")
        .arg(dir.path().join("events.jsonl"))
        .args(run_flags())
        .args([
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
            "--",
            PYTHON,
            "-c",
            &code,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r = results(&out);
    assert_eq!(
        r.get("answer").map(String::as_str),
        Some("ok"),
        "{}",
        text(&out)
    );
    assert_eq!(r["rcode"], "3", "{}", text(&out));
    assert_eq!(r["tcp6_send"], "ok", "{}", text(&out));
    assert_eq!(r["other_port"], "err:EPERM", "{}", text(&out));
    // The listener counts what it read: wait for it to catch up with what was sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.load(Ordering::Relaxed) < 100_000 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(got.load(Ordering::Relaxed), 100_000);
}

// ---------------------------------------------------------------------------------------
// The enforcer's own guarantees: adoption by a restarted agent, exemptions in
// whole-workspace mode, allow-event dedup. These drive the library API on loopback
// (127.0.0.2 allowed, 127.0.0.3 forbidden; UDP connect() only, nothing is sent).

mod enforcer {
    use super::*;
    use boundary_agent::cgroup;
    use boundary_agent::loader::{self, Enforcer, Rings};
    use boundary_agent::policy::{CompiledPolicy, PortGrant, PrefixEntry};
    use boundary_common::{
        Event, Settings, ACTION_ALLOW, ACTION_DENY, HOOK_CONNECT4, MODE_ENFORCE, PROTO_TCP,
        PROTO_UDP,
    };
    use std::net::Ipv4Addr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;

    fn allowing(addrs: &[Ipv4Addr]) -> CompiledPolicy {
        CompiledPolicy {
            v4: addrs
                .iter()
                .map(|a| PrefixEntry {
                    addr: *a,
                    prefix_len: 32,
                    grants: vec![PortGrant {
                        lo: 1,
                        hi: u16::MAX,
                        protocols: PROTO_TCP | PROTO_UDP,
                        rule_id: 1,
                    }],
                })
                .collect(),
            v6: Vec::new(),
        }
    }

    /// UDP connect() results from a process in `dir` (a cgroup directory), one per address.
    fn connects(dir: &Path, addrs: &[&str]) -> Vec<String> {
        let code = format!(
            "import socket, errno\nfor a in {addrs:?}:\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    try:\n        s.connect((a, 9)); print('ok')\n    except OSError as e:\n        print(errno.errorcode[e.errno])\n"
        );
        let out = in_cgroup(dir, &code);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }

    fn in_cgroup(dir: &Path, code: &str) -> Output {
        let out = spawn_in_cgroup(dir, code).wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        out
    }

    fn spawn_in_cgroup(dir: &Path, code: &str) -> std::process::Child {
        let procs =
            std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        let mut cmd = Command::new(PYTHON);
        cmd.args(["-c", code]);
        // SAFETY: only open/write/close between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        cmd.stdout(Stdio::piped()).spawn().unwrap()
    }

    fn drain(rings: &mut Rings) -> Vec<Event> {
        let mut out = Vec::new();
        for ring in [&mut rings.deny, &mut rings.allow] {
            while let Some(item) = ring.next() {
                // SAFETY: the kernel writes whole `Event`s; read_unaligned copes with alignment.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
        }
        out
    }

    fn addr(e: &Event) -> Ipv4Addr {
        Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3])
    }

    /// A cgroup for one test, removed on drop (with anything left in it). Not under the
    /// `boundary/` parent of real sessions: a concurrent `boundary run` sweeps directories
    /// there that no agent owns.
    struct TestCgroup {
        path: PathBuf,
        dir: std::fs::File,
        name: String,
    }

    impl TestCgroup {
        fn new(name: &str) -> TestCgroup {
            let name = format!("esc-{name}-{}", std::process::id());
            let path = cgroup::cgroup2_root()
                .unwrap()
                .join("boundary-escape-tests")
                .join(&name);
            std::fs::create_dir_all(&path).unwrap();
            let dir = std::fs::File::open(&path).unwrap();
            TestCgroup { path, dir, name }
        }
        fn path(&self) -> &Path {
            &self.path
        }
    }

    impl std::os::fd::AsFd for TestCgroup {
        fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
            self.dir.as_fd()
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            loader::remove_pin_dir(&Path::new(loader::PIN_ROOT).join(&self.name));
            for sub in ["work", "control", ""] {
                let dir = self.path.join(sub);
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                for _ in 0..100 {
                    if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
            // The shared parent goes with the last test that used it.
            if let Some(parent) = self.path.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    fn settings() -> Settings {
        Settings {
            mode: MODE_ENFORCE,
            report_allows: 1,
            ..Settings::default()
        }
    }

    #[test]
    fn a_restarted_agent_adopts_the_pinned_session_its_maps_and_its_unread_events() {
        let two: Ipv4Addr = "127.0.0.2".parse().unwrap();
        let three: Ipv4Addr = "127.0.0.3".parse().unwrap();
        let t = TestCgroup::new("adopt");
        let dir = t.path().to_path_buf();
        {
            let (mut enforcer, _rings) = Enforcer::load(settings()).unwrap();
            enforcer.apply(&allowing(&[two])).unwrap();
            enforcer.attach(&t, &t.name).unwrap();
            assert_eq!(connects(&dir, &["127.0.0.2", "127.0.0.3"]), ["ok", "EPERM"]);
            // The agent goes away without detaching (killed): nothing is read, nothing unpinned.
        }
        // Still confined with no agent at all.
        assert_eq!(connects(&dir, &["127.0.0.2", "127.0.0.3"]), ["ok", "EPERM"]);

        let (mut enforcer, rings) = Enforcer::adopt(&t.name, &dir).unwrap();
        // The first session adopted from a set brings its rings.
        let mut rings = rings.expect("the set's rings");
        let events = drain(&mut rings);
        let denies = events
            .iter()
            .filter(|e| e.action == ACTION_DENY && addr(e) == three)
            .count();
        assert_eq!(
            denies, 2,
            "unread deny events survive the agent: {events:#?}"
        );
        // `apply` diffs against what the maps hold: 127.0.0.2 is removed, 127.0.0.3 added.
        enforcer.apply(&allowing(&[three])).unwrap();
        assert_eq!(connects(&dir, &["127.0.0.2", "127.0.0.3"]), ["EPERM", "ok"]);
        assert!(drain(&mut rings)
            .iter()
            .any(|e| e.action == ACTION_DENY && addr(e) == two));
        enforcer.detach().unwrap();
        assert!(!Path::new(loader::PIN_ROOT).join(&t.name).exists());
        assert_eq!(connects(&dir, &["127.0.0.2", "127.0.0.3"]), ["ok", "ok"]);
    }

    #[test]
    fn sessions_sharing_one_set_keep_their_own_policies_and_are_adopted_together() {
        let two: Ipv4Addr = "127.0.0.2".parse().unwrap();
        let three: Ipv4Addr = "127.0.0.3".parse().unwrap();
        let a = TestCgroup::new("share-a");
        let b = TestCgroup::new("share-b");
        let (slot_a, slot_b) = {
            let (set, _rings) = loader::ProgramSet::load(loader::RING_BYTES_ONE_SESSION).unwrap();
            let mut ea = set.session(settings()).unwrap();
            ea.apply(&allowing(&[two])).unwrap();
            ea.attach(&a, &a.name).unwrap();
            let mut eb = set.session(settings()).unwrap();
            eb.apply(&allowing(&[three])).unwrap();
            eb.attach(&b, &b.name).unwrap();
            assert_ne!(ea.slot(), eb.slot());
            assert_eq!(
                connects(a.path(), &["127.0.0.2", "127.0.0.3"]),
                ["ok", "EPERM"]
            );
            assert_eq!(
                connects(b.path(), &["127.0.0.2", "127.0.0.3"]),
                ["EPERM", "ok"]
            );
            // The agent dies: nothing is detached, nothing read.
            (ea.slot(), eb.slot())
        };
        let (mut ea, rings) = Enforcer::adopt(&a.name, a.path()).unwrap();
        let (eb, again) = Enforcer::adopt(&b.name, b.path()).unwrap();
        assert_eq!((ea.slot(), eb.slot()), (slot_a, slot_b));
        assert_eq!(ea.set().id(), eb.set().id(), "one set, reopened once");
        assert!(again.is_none(), "one reader per ring: the rings come once");
        // Every denial carries the slot of the session it belongs to.
        let events = drain(&mut rings.expect("the set's rings"));
        let denied = |slot: u32| -> Vec<Ipv4Addr> {
            events
                .iter()
                .filter(|e| e.action == ACTION_DENY && e.slot == slot)
                .map(addr)
                .collect()
        };
        assert_eq!(denied(slot_a), [three], "{events:#?}");
        assert_eq!(denied(slot_b), [two], "{events:#?}");
        // A policy change of one session leaves the other's alone.
        ea.apply(&allowing(&[])).unwrap();
        assert_eq!(
            connects(a.path(), &["127.0.0.2", "127.0.0.3"]),
            ["EPERM", "EPERM"]
        );
        assert_eq!(
            connects(b.path(), &["127.0.0.2", "127.0.0.3"]),
            ["EPERM", "ok"]
        );
        ea.detach().unwrap();
        assert_eq!(connects(a.path(), &["127.0.0.3"]), ["ok"]);
        assert_eq!(connects(b.path(), &["127.0.0.2"]), ["EPERM"]);
        eb.detach().unwrap();
    }

    #[test]
    fn a_reused_slot_carries_nothing_of_the_session_that_had_it() {
        let two: Ipv4Addr = "127.0.0.2".parse().unwrap();
        let a = TestCgroup::new("reuse-a");
        let b = TestCgroup::new("reuse-b");
        let (set, _rings) = loader::ProgramSet::load(loader::RING_BYTES_ONE_SESSION).unwrap();
        let mut first = set.session(settings()).unwrap();
        first.apply(&allowing(&[two])).unwrap();
        first.attach(&a, &a.name).unwrap();
        assert_eq!(connects(a.path(), &["127.0.0.2"]), ["ok"]);
        let old = first.slot();
        first.detach().unwrap();
        // Not handed out again at once (records of the old session could still be folding).
        let next = set.session(settings()).unwrap();
        assert_ne!(next.slot(), old);
        thread::sleep(Duration::from_millis(2100));
        let mut reused = set.session(settings()).unwrap();
        assert_eq!(
            reused.slot(),
            old,
            "the slot is reused after its quarantine"
        );
        reused.attach(&b, &b.name).unwrap();
        // The old session's grant went with it.
        assert_eq!(connects(b.path(), &["127.0.0.2"]), ["EPERM"]);
        assert_eq!(reused.lost(), (0, 0));
        reused.detach().unwrap();
        next.detach().unwrap();
    }

    #[test]
    fn an_existing_cgroup_is_confined_except_its_exempt_control_cgroup() {
        let t = TestCgroup::new("workspace");
        let top = t.path().to_path_buf();
        let (work, control) = (top.join("work"), top.join("control"));
        std::fs::create_dir(&work).unwrap();
        std::fs::create_dir(&control).unwrap();
        let (mut enforcer, mut rings) = Enforcer::load(settings()).unwrap();
        enforcer
            .apply(&allowing(&["127.0.0.2".parse().unwrap()]))
            .unwrap();
        enforcer.attach(&t, &t.name).unwrap();
        enforcer
            .set_exempt(&[loader::cgroup_id(&control).unwrap()])
            .unwrap();
        assert_eq!(
            connects(&work, &["127.0.0.2", "127.0.0.3"]),
            ["ok", "EPERM"]
        );
        assert_eq!(connects(&top, &["127.0.0.3"]), ["EPERM"]);
        assert_eq!(connects(&control, &["127.0.0.3"]), ["ok"]);
        // A datagram actually sent from the exempt cgroup passes sendmsg4 and egress too; from
        // the confined one it does not.
        let send = "import socket, errno\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n    s.sendto(b'x', ('127.0.0.3', 9)); print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n";
        let said = |dir: &Path| {
            String::from_utf8_lossy(&in_cgroup(dir, send).stdout)
                .trim()
                .to_string()
        };
        assert_eq!(said(&control), "ok");
        assert_eq!(said(&work), "EPERM");
        // Exempt processes pass untouched: no events.
        let control_id = loader::cgroup_id(&control).unwrap();
        assert!(!drain(&mut rings).iter().any(|e| e.cgroup_id == control_id));
        enforcer.set_exempt(&[]).unwrap();
        assert_eq!(connects(&control, &["127.0.0.3"]), ["EPERM"]);
        enforcer.detach().unwrap();
    }

    #[test]
    fn allow_events_are_deduplicated_per_process_and_destination_and_denials_never() {
        let t = TestCgroup::new("dedup");
        let dir = t.path().to_path_buf();
        let (mut enforcer, mut rings) = Enforcer::load(Settings {
            allow_window_ms: 500,
            ..settings()
        })
        .unwrap();
        enforcer
            .apply(&allowing(&["127.0.0.2".parse().unwrap()]))
            .unwrap();
        enforcer.attach(&t, &t.name).unwrap();
        in_cgroup(
            &dir,
            // One CPU: the dedup cache is per CPU, and a migration between connects would
            // (rightly) start a new record there; this test is about one cache's arithmetic.
            "import os, socket, time\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\ndef c(a):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    try: s.connect((a, 9))\n    except OSError: pass\nfor _ in range(50): c('127.0.0.2'); c('127.0.0.3')\ntime.sleep(0.7)\nc('127.0.0.2')\n",
        );
        let events = drain(&mut rings);
        let allows: Vec<&Event> = events
            .iter()
            .filter(|e| e.action == ACTION_ALLOW && e.hook == HOOK_CONNECT4)
            .collect();
        let counts: Vec<u32> = allows.iter().map(|e| e.count).collect();
        assert_eq!(counts, [1, 50], "{allows:#?}");
        let denies = events.iter().filter(|e| e.action == ACTION_DENY).count();
        assert_eq!(denies, 50);
        assert_eq!(enforcer.suppressed(), (49, 0));
        assert_eq!(enforcer.lost(), (0, 0));
        enforcer.detach().unwrap();
    }

    #[test]
    fn egress_holds_a_connected_udp_socket_to_a_revoked_destination() {
        use std::io::{BufRead, BufReader};
        let two: Ipv4Addr = "127.0.0.2".parse().unwrap();
        let t = TestCgroup::new("revoke");
        let dir = t.path().to_path_buf();
        let flag = tempfile::tempdir().unwrap();
        let go = flag.path().join("go");
        let (mut enforcer, mut rings) = Enforcer::load(settings()).unwrap();
        enforcer.apply(&allowing(&[two])).unwrap();
        enforcer.attach(&t, &t.name).unwrap();
        // connect() is judged once (connect4); send() on a connected UDP socket runs no
        // sock_addr program at all: only egress sees it.
        let code = format!(
            "import socket, errno, os, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('127.0.0.2', 9))\nprint('connected', flush=True)\nwhile not os.path.exists({go:?}): time.sleep(0.01)\ntry:\n    s.send(b'after'); print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n",
            go = go.display().to_string()
        );
        let mut child = spawn_in_cgroup(&dir, &code);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "connected");
        enforcer.apply(&allowing(&[])).unwrap();
        std::fs::write(&go, "").unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "EPERM");
        assert!(child.wait().unwrap().success());
        let events = drain(&mut rings);
        assert!(
            events.iter().any(|e| e.action == ACTION_DENY
                && e.hook == boundary_common::HOOK_EGRESS
                && addr(e) == two
                && e.port == 9),
            "{events:#?}"
        );
        enforcer.detach().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The syscall filter's notifying variant: refusals reach a supervisor (which can report
// them), and are still refused.

#[test]
fn syscall_filter_refusals_reach_a_supervisor_and_stay_refused() {
    use boundary_agent::loader::{supervise, Refusal};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut pair = [0i32; 2];
    // SAFETY: valid array for two fds.
    assert_eq!(
        unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        },
        0
    );
    // SAFETY: fresh fds we own.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    let filter = SyscallFilter::new();
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(PYTHON);
    cmd.args([
        "-c",
        r#"
import socket, errno, ctypes, os
def attempt(k, f):
    try:
        f(); print(k, "ok")
    except OSError as e:
        print(k, errno.errorcode[e.errno])
attempt("vsock", lambda: socket.socket(40, socket.SOCK_STREAM))
attempt("packet", lambda: socket.socket(17, socket.SOCK_RAW, 0))
attempt("tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
libc = ctypes.CDLL(None, use_errno=True)
r = libc.syscall(272, 0x10000000)
print("unshare", "ok" if r == 0 else errno.errorcode[ctypes.get_errno()])
"#,
    ])
    .stdout(Stdio::piped());
    // SAFETY: only syscalls between fork and exec (seccomp, sendmsg, close).
    unsafe {
        cmd.pre_exec(move || {
            let listener = filter.install_notifying()?;
            send_fd(theirs_fd, listener.as_raw_fd())?;
            drop(listener);
            libc::close(theirs_fd);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(theirs);
    let listener = recv_fd(ours.as_raw_fd());
    let refusals = thread::spawn(move || {
        let mut seen: Vec<Refusal> = Vec::new();
        supervise(listener, |r| {
            seen.push(r);
            false
        })
        .unwrap();
        seen
    });
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["vsock EPERM", "packet EPERM", "tcp ok", "unshare EPERM"],
        "{text}"
    );
    let refusals = refusals.join().unwrap();
    let kinds: Vec<(&str, u64)> = refusals.iter().map(|r| (r.syscall, r.args[0])).collect();
    assert_eq!(
        kinds,
        [("socket", 40), ("socket", 17), ("unshare", 0x1000_0000)],
        "{refusals:#?}"
    );
}

fn send_fd(sock: i32, fd: i32) -> std::io::Result<()> {
    // SAFETY: a well-formed msghdr with one SCM_RIGHTS control message.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut cmsg = [0u64; 4];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fd(sock: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: a well-formed msghdr with room for one SCM_RIGHTS control message.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut cmsg = [0u64; 4];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        assert!(
            libc::recvmsg(sock, &mut msg, 0) >= 0,
            "{}",
            std::io::Error::last_os_error()
        );
        let c = libc::CMSG_FIRSTHDR(&msg);
        assert!(!c.is_null() && (*c).cmsg_type == libc::SCM_RIGHTS);
        std::os::fd::OwnedFd::from_raw_fd(std::ptr::read_unaligned(
            libc::CMSG_DATA(c).cast::<i32>(),
        ))
    }
}

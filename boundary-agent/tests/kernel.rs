//! End-to-end tests against the real kernel: `boundary run` loads the eBPF programs, and real
//! processes (curl, python3, sh) are allowed or refused with EPERM.
//!
//! Network rule: everything stays on loopback. Allowed listeners are on 127.0.0.2, "blocked"
//! ones on 127.0.0.3 (harmless if enforcement failed); names come from a hosts file or from a
//! DNS server these tests start on 127.0.0.1. Needs root (CI runs as root).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");

/// The same TCP port on 127.0.0.2 (allowed) and 127.0.0.3 (blocked), answering like HTTP.
struct Listeners {
    port: u16,
}

impl Listeners {
    fn start() -> Listeners {
        for _ in 0..50 {
            let a = TcpListener::bind("127.0.0.2:0").unwrap();
            let port = a.local_addr().unwrap().port();
            let Ok(b) = TcpListener::bind(("127.0.0.3", port)) else {
                continue;
            };
            // Same port on ::1 for the IPv6 tests (may be taken; then those tests use another).
            let c = TcpListener::bind(("::1", port)).ok();
            for l in [Some(a), Some(b), c].into_iter().flatten() {
                thread::spawn(move || serve_http(l));
            }
            return Listeners { port };
        }
        panic!("no free port on both 127.0.0.2 and 127.0.0.3");
    }
}

fn serve_http(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        });
    }
}

/// UDP echo on the same port of 127.0.0.2 and 127.0.0.3.
fn udp_echo() -> u16 {
    for _ in 0..50 {
        let a = UdpSocket::bind("127.0.0.2:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let Ok(b) = UdpSocket::bind(("127.0.0.3", port)) else {
            continue;
        };
        for s in [a, b] {
            thread::spawn(move || {
                let mut buf = [0u8; 512];
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            });
        }
        return port;
    }
    panic!("no free UDP port");
}

/// A test directory with a config, a hosts file and an events file.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(config: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        // The wrapped commands run as `nobody`: they must be able to write marker files here
        // (sticky, like /tmp, so nobody cannot replace root's config).
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        std::fs::write(
            dir.path().join("hosts"),
            "127.0.0.2 allowed.test\n127.0.0.3 blocked.test\n",
        )
        .unwrap();
        Case { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, extra: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(BOUNDARY);
        c.arg("run")
            .arg("--config")
            .arg(self.path("config.yaml"))
            .arg("--hosts-file")
            .arg(self.path("hosts"))
            .arg("--events")
            .arg(self.path("events.jsonl"))
            .args(self.dns_override())
            .args(if extra.contains(&"--root") {
                &[][..]
            } else {
                &["--user", "nobody"][..]
            })
            .args(extra)
            .arg("--")
            .args(cmd)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// Unless the config names its own nameserver, point boundary at a loopback port with no
    /// server: the machine's resolver is never used, and it is the only nameserver the
    /// wrapped programs may reach.
    fn dns_override(&self) -> Vec<String> {
        let config = std::fs::read_to_string(self.path("config.yaml")).unwrap();
        if config.contains("nameservers") {
            Vec::new()
        } else {
            vec!["--dns-server".into(), "127.0.0.1:9".into()]
        }
    }

    fn run(&self, cmd: &[&str]) -> Output {
        self.run_with(&[], cmd)
    }

    fn run_with(&self, extra: &[&str], cmd: &[&str]) -> Output {
        self.command(extra, cmd).output().unwrap()
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn decisions(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event.name"] == "boundary.decision")
            .collect()
    }
}

fn deny_config() -> String {
    "name: test-policy\nallow_loopback: false\nallowlist:\n  - \"domain=allowed.test\"\n".into()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(out: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// curl with the test names pinned (`--resolve`): curl never asks a resolver.
fn curl(url: &str) -> Vec<String> {
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    let mut args: Vec<String> = [
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ]
    .map(String::from)
    .to_vec();
    for (name, ip) in [("allowed.test", "127.0.0.2"), ("blocked.test", "127.0.0.3")] {
        args.push("--resolve".into());
        args.push(format!("{name}:{port}:{ip}"));
    }
    args.push(url.into());
    args
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn curl_reaches_the_allowed_domain_and_is_refused_elsewhere_with_full_events() {
    let l = Listeners::start();
    let case = Case::new(&deny_config());
    let ok = case.run(&refs(&curl(&format!("http://allowed.test:{}/", l.port))));
    assert_eq!(code(&ok), 0, "{}", text(&ok));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200");

    let case = Case::new(&deny_config());
    let denied = case.run(&refs(&curl(&format!("http://blocked.test:{}/", l.port))));
    assert_eq!(
        code(&denied),
        7,
        "curl exits 7 (could not connect): {}",
        text(&denied)
    );

    let events = case.events();
    let start = events
        .iter()
        .find(|e| e["event.name"] == "boundary.session.start")
        .unwrap();
    let session = start["session.id"].as_str().unwrap().to_string();
    let deny = case
        .decisions()
        .into_iter()
        .find(|e| e["event.action"] == "deny")
        .expect("a deny event");
    assert_eq!(deny["destination.address"], "127.0.0.3");
    assert_eq!(deny["destination.port"], l.port);
    assert_eq!(deny["network.transport"], "tcp");
    assert_eq!(deny["boundary.rule"], "none");
    assert_eq!(deny["boundary.policy.name"], "test-policy");
    assert_eq!(deny["session.id"], session.as_str());
    assert_eq!(deny["process.executable.name"], "curl");
    assert!(deny["process.executable.path"]
        .as_str()
        .unwrap()
        .ends_with("/curl"));
    assert!(deny["process.pid"].as_u64().unwrap() > 0);
    // The command runs unprivileged, as the user boundary was told to run it as.
    assert_eq!(deny["user.id"], 65534);
    assert_eq!(deny["user.name"], "nobody");
    // RFC 3339 with nanoseconds, UTC.
    let ts = deny["timestamp"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.contains('T') && ts.split('.').nth(1).unwrap().len() >= 7,
        "{ts}"
    );
    let end = events
        .iter()
        .find(|e| e["event.name"] == "boundary.session.end")
        .unwrap();
    assert_eq!(end["process.exit.code"], 7);
}

#[test]
fn allowed_events_name_the_domain_and_the_rule_as_written() {
    let l = Listeners::start();
    let case = Case::new(&deny_config());
    let out = case.run(&refs(&curl(&format!("http://allowed.test:{}/", l.port))));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let allow = case
        .decisions()
        .into_iter()
        .find(|e| e["event.action"] == "allow")
        .expect("an allow event");
    assert_eq!(allow["destination.address"], "127.0.0.2");
    assert_eq!(
        allow["boundary.destination.domains"],
        serde_json::json!(["allowed.test"])
    );
    assert_eq!(allow["boundary.rule"], "domain=allowed.test");
    assert_eq!(allow["boundary.rule.id"], 1);
}

#[test]
fn python_gets_permission_error_and_its_exit_code_is_boundarys() {
    let l = Listeners::start();
    let case = Case::new(&deny_config());
    let script = format!(
        "import socket, errno, sys\n\
         s = socket.socket()\n\
         try:\n    s.connect(('127.0.0.3', {port}))\nexcept PermissionError as e:\n    \
         assert e.errno == errno.EPERM, e\n    sys.exit(42)\nsys.exit(1)\n",
        port = l.port
    );
    let out = case.run(&["python3", "-c", &script]);
    assert_eq!(code(&out), 42, "{}", text(&out));
}

#[test]
fn audit_mode_lets_everything_through_and_reports_would_deny() {
    let l = Listeners::start();
    let case = Case::new(&format!("mode: audit\n{}", deny_config()));
    let out = case.run(&refs(&curl(&format!("http://127.0.0.3:{}/", l.port))));
    assert_eq!(code(&out), 0, "{}", text(&out));
    let d = case.decisions();
    let would = d
        .iter()
        .find(|e| e["event.action"] == "would_deny")
        .expect("would_deny");
    assert_eq!(would["destination.address"], "127.0.0.3");
    assert_eq!(would["boundary.mode"], "audit");

    // --mode overrides the file.
    let case = Case::new(&deny_config());
    let out = case.run_with(
        &["--mode", "audit"],
        &refs(&curl(&format!("http://127.0.0.3:{}/", l.port))),
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let d = case.decisions();
    assert!(
        d.iter().any(|e| e["event.action"] == "would_deny"
            && e["destination.address"] == "127.0.0.3"
            && e["boundary.mode"] == "audit"),
        "{d:#?}"
    );
    assert!(!d.iter().any(|e| e["event.action"] == "deny"), "{d:#?}");
}

#[test]
fn children_grandchildren_and_daemons_stay_under_the_policy() {
    let l = Listeners::start();
    let case = Case::new(&deny_config());
    let p = l.port;
    let out_file = case.path("daemon.out");
    // A grandchild through two shells, and a daemon (setsid, reparented to init) whose parent
    // has exited before it connects.
    let script = format!(
        "sh -c 'curl -s -o /dev/null --max-time 5 http://127.0.0.3:{p}/; echo grandchild=$?'\n\
         (setsid sh -c 'sleep 0.3; curl -s -o /dev/null --max-time 5 http://127.0.0.3:{p}/; echo daemon=$? > {out}; \
          curl -s -o /dev/null --max-time 5 http://127.0.0.2:{p}/; echo allowed=$? >> {out}' &)\n\
         for i in $(seq 100); do grep -q allowed {out} 2>/dev/null && break; sleep 0.05; done\n",
        out = out_file.display()
    );
    let out = case.run(&["sh", "-c", &script]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("grandchild=7"),
        "{}",
        text(&out)
    );
    let daemon = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        daemon.contains("daemon=7") && daemon.contains("allowed=0"),
        "{daemon}"
    );
}

#[test]
fn exit_codes_and_signals_are_propagated_and_forwarded() {
    let case = Case::new(&deny_config());
    assert_eq!(code(&case.run(&["sh", "-c", "exit 42"])), 42);
    assert_eq!(code(&case.run(&["sh", "-c", "kill -TERM $$"])), 128 + 15);
    assert_eq!(code(&case.run(&["/nonexistent/command"])), 127);

    // SIGTERM to boundary reaches the command, which exits; boundary reports its status.
    let mut child = case
        .command(
            &[],
            &[
                "sh",
                "-c",
                &format!(
                    "trap 'exit 3' TERM; touch {}; while :; do sleep 0.05; done",
                    case.path("trapped").display()
                ),
            ],
        )
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !case.path("trapped").exists() {
        assert!(Instant::now() < deadline, "the command did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn every_forwarded_signal_reaches_the_command_and_failures_have_their_codes() {
    let case = Case::new(&deny_config());
    // A file that exists but cannot be executed: 126.
    let not_executable = case.path("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
    assert_eq!(code(&case.run(&[not_executable.to_str().unwrap()])), 126);
    // Bad arguments: 125 and nothing runs.
    let marker = case.path("ran");
    let out = Command::new(BOUNDARY)
        .args(["run", "--no-such-flag", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(code(&out), 125, "{}", text(&out));
    assert!(!marker.exists());
    let out = Command::new(BOUNDARY).args(["run"]).output().unwrap();
    assert_eq!(code(&out), 125, "{}", text(&out));

    // Each signal boundary forwards, sent to boundary (not a terminal: SIGINT and SIGQUIT are
    // forwarded too), reaches the command: its trap exits with a code naming the signal.
    for (signal, name, exit) in [
        (nix::sys::signal::SIGINT, "INT", 10),
        (nix::sys::signal::SIGHUP, "HUP", 11),
        (nix::sys::signal::SIGQUIT, "QUIT", 12),
        (nix::sys::signal::SIGUSR1, "USR1", 13),
        (nix::sys::signal::SIGUSR2, "USR2", 14),
        (nix::sys::signal::SIGWINCH, "WINCH", 15),
    ] {
        let ready = case.path(&format!("ready-{name}"));
        let script = format!(
            "trap 'exit {exit}' {name}; touch {}; while :; do sleep 0.05; done",
            ready.display()
        );
        let mut child = case
            .command(&[], &["sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "{name}: the command did not start"
            );
            thread::sleep(Duration::from_millis(20));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(exit), "SIG{name} was not forwarded");
    }
}

#[test]
fn the_session_cgroup_and_pins_are_removed_and_leftovers_killed() {
    let case = Case::new(&deny_config());
    // A background process outlives the command: it is killed with the cgroup. While the
    // command runs, the cgroup and the pins exist (so "removed" below means something).
    let (ready, go) = (case.path("ready"), case.path("go"));
    let script = format!(
        "sleep 300 & echo $!; touch {}; while [ ! -e {} ]; do sleep 0.02; done",
        ready.display(),
        go.display()
    );
    let child = case
        .command(&[], &["sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the command did not start");
        thread::sleep(Duration::from_millis(20));
    }
    // The start event is written by the sink's own thread: it may trail `ready` a little.
    let start = loop {
        let found = case
            .events()
            .into_iter()
            .find(|e| e["boundary.cgroup.path"].is_string() && e["session.id"].is_string());
        if let Some(e) = found {
            break e;
        }
        if Instant::now() > deadline {
            std::fs::write(&go, "").unwrap(); // let the command end before failing
            panic!("no session start event: {:?}", case.events());
        }
        thread::sleep(Duration::from_millis(20));
    };
    let session = start["session.id"].as_str().unwrap().to_string();
    let cgroup = start["boundary.cgroup.path"].as_str().unwrap().to_string();
    let pins = Path::new("/sys/fs/bpf/boundary").join(&session);
    assert!(
        Path::new(&cgroup).is_dir(),
        "no cgroup {cgroup} while running"
    );
    assert!(pins.join("connect4").exists(), "no pins while running");
    std::fs::write(&go, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(!Path::new(&cgroup).exists(), "cgroup {cgroup} left behind");
    assert!(!pins.exists(), "pins {} left behind", pins.display());
    // Killed: gone, or a zombie waiting for init to reap it.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = state
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("");
    assert!(
        state.is_empty() || state == "Z",
        "background process {pid} survived (state {state})"
    );
}

#[test]
fn ipv6_loopback_and_ipv4_mapped_addresses() {
    let l = Listeners::start();
    let case = Case::new(&format!("{}  - \"cidr=::1/128\"\n", deny_config()));
    let p = l.port;
    let script = format!(
        "import socket, sys\n\
         def attempt(addr):\n    s = socket.socket(socket.AF_INET6)\n    try:\n        \
         s.connect((addr, {p}))\n        return 'ok'\n    except PermissionError:\n        return 'eperm'\n    \
         except OSError as e:\n        return 'err%d' % e.errno\n\
         print(attempt('::1'), attempt('::ffff:127.0.0.3'), attempt('::ffff:127.0.0.2'))\n"
    );
    let out = case.run(&["python3", "-c", &script]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let got = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = got.split_whitespace().collect();
    // ::1 may have no listener on this port (it was taken): refused by the peer, not by us.
    assert!(parts[0] == "ok" || parts[0] == "err111", "{got}");
    assert_eq!(parts[1], "eperm", "{got}");
    assert_eq!(parts[2], "ok", "{got}");
    let deny = case
        .decisions()
        .into_iter()
        .find(|e| e["event.action"] == "deny")
        .unwrap();
    assert_eq!(deny["destination.address"], "::ffff:127.0.0.3");
    assert_eq!(deny["boundary.hook"], "connect6");
}

#[test]
fn udp_datagrams_are_judged_per_destination() {
    let port = udp_echo();
    let case = Case::new(&deny_config());
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(3)\n\
         s.sendto(b'hi', ('127.0.0.2', {port}))\n\
         print(s.recvfrom(16)[0].decode())\n\
         try:\n    s.sendto(b'hi', ('127.0.0.3', {port}))\n    print('sent')\n\
         except PermissionError:\n    print('eperm')\n"
    );
    let out = case.run(&["python3", "-c", &script]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\neperm\n");
    let deny = case
        .decisions()
        .into_iter()
        .find(|e| e["event.action"] == "deny")
        .unwrap();
    assert_eq!(deny["network.transport"], "udp");
    assert_eq!(deny["boundary.hook"], "sendmsg4");

    // A tcp-only rule does not open UDP.
    let case = Case::new(
        "allow_loopback: false\nallowlist:\n  - domain: allowed.test\n    protocol: tcp\n",
    );
    let tcp_only = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         try:\n    s.sendto(b'hi', ('127.0.0.2', {port}))\n    print('sent')\n\
         except PermissionError:\n    print('eperm')\n"
    );
    let out = case.run(&["python3", "-c", &tcp_only]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "eperm\n",
        "{}",
        text(&out)
    );
}

#[test]
fn raw_sockets_are_refused() {
    let case = Case::new(&deny_config());
    let script = "import socket\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n    \
                  print('created')\nexcept PermissionError:\n    print('eperm')\n";
    // As root (CAP_NET_RAW), so that the refusal is the program's and not the capability check.
    let out = case.run_with(&["--root"], &["python3", "-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "eperm\n",
        "{}",
        text(&out)
    );
    assert!(case
        .decisions()
        .iter()
        .any(|e| e["boundary.hook"] == "sock_create" && e["boundary.socket.type"] == "raw"));
}

/// A Python script that waits for `go` to exist, then connects to 127.0.0.2 and 127.0.0.3 on
/// `port`, collects `ok`/`eperm` in `r`, and runs `report`.
/// A script that announces it runs (a `<go>.ready-<pid>` file), waits for `go`, then tries
/// 127.0.0.2 and 127.0.0.3.
fn try_both_when(go: &Path, port: u16, report: &str) -> String {
    format!(
        "import socket, os, time\n\
         open('{go}.ready-%d' % os.getpid(), 'w').close()\n\
         while not os.path.exists('{go}'): time.sleep(0.02)\n\
         r = []\n\
         for ip in ('127.0.0.2', '127.0.0.3'):\n    s = socket.socket()\n    try:\n        \
         s.connect((ip, {port}))\n        r.append('ok')\n    except PermissionError:\n        r.append('eperm')\n\
         {report}\n",
        go = go.display()
    )
}

/// Waits (bounded) until `n` scripts of [`try_both_when`] announced themselves.
fn wait_ready(go: &Path, n: usize) {
    let dir = go.parent().unwrap();
    let prefix = format!("{}.ready-", go.file_name().unwrap().to_string_lossy());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count();
        if ready >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{ready} of {n} commands started");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_sessions_with_different_policies_run_side_by_side() {
    let l = Listeners::start();
    let a = Case::new("allow_loopback: false\nallowlist:\n  - \"ip=127.0.0.2\"\n");
    let b = Case::new("allow_loopback: false\nallowlist:\n  - \"ip=127.0.0.3\"\n");
    let go = a.path("go");
    // Both sessions are up before either tries: each waits for the `go` file.
    let script = try_both_when(&go, l.port, "print(' '.join(r))");
    let ca = a
        .command(&[], &["python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let cb = b
        .command(&[], &["python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Both commands run (each in its session) before either tries.
    wait_ready(&go, 2);
    std::fs::write(&go, "").unwrap();
    let oa = ca.wait_with_output().unwrap();
    let ob = cb.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&oa.stdout),
        "ok eperm\n",
        "{}",
        text(&oa)
    );
    assert_eq!(
        String::from_utf8_lossy(&ob.stdout),
        "eperm ok\n",
        "{}",
        text(&ob)
    );
}

/// A DNS server on 127.0.0.1 answering A queries from a table the test can change.
struct Dns {
    addr: SocketAddr,
    table: Arc<Mutex<HashMap<String, (Ipv4Addr, u32)>>>,
}

impl Dns {
    fn start() -> Dns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let table: Arc<Mutex<HashMap<String, (Ipv4Addr, u32)>>> = Arc::default();
        let t = table.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if let Some(reply) = dns_reply(&buf[..n], &t.lock().unwrap()) {
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        Dns { addr, table }
    }

    fn set(&self, name: &str, ip: Ipv4Addr, ttl: u32) {
        self.table.lock().unwrap().insert(name.into(), (ip, ttl));
    }
}

fn dns_reply(q: &[u8], table: &HashMap<String, (Ipv4Addr, u32)>) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    while i < q.len() && q[i] != 0 {
        let len = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).to_ascii_lowercase());
        i += 1 + len;
    }
    let qend = i + 5;
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let name = labels.join(".");
    let answer = table.get(&name).filter(|_| qtype == 1);
    let mut r = Vec::from(&q[..2]);
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..qend)?);
    if let Some((ip, ttl)) = answer {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

#[test]
fn addresses_follow_dns_answers_as_their_ttl_runs_out() {
    let l = Listeners::start();
    let dns = Dns::start();
    dns.set("moving.test", Ipv4Addr::new(127, 0, 0, 2), 1);
    let case = Case::new(&format!(
        "allow_loopback: false\nallowlist:\n  - \"domain=moving.test\"\n\
         dns:\n  nameservers: [\"{}\"]\n  min_ttl: 1s\n  grace_period: 1s\n",
        dns.addr
    ));
    std::fs::write(case.path("hosts"), "").unwrap();
    let ready = case.path("ready");
    let script = format!(
        "import socket, time, os, sys\n\
         def ok(ip):\n    s = socket.socket()\n    try:\n        s.connect((ip, {p}))\n        return True\n    \
         except PermissionError:\n        return False\n\
         assert ok('127.0.0.2') and not ok('127.0.0.3')\n\
         open('{ready}', 'w').close()\n\
         deadline = time.time() + 15\n\
         while not ok('127.0.0.3'):\n    assert time.time() < deadline, 'new address never allowed'\n    time.sleep(0.1)\n\
         print('new-allowed')\n\
         while ok('127.0.0.2'):\n    assert time.time() < deadline, 'old address never expired'\n    time.sleep(0.1)\n\
         print('old-expired')\n",
        p = l.port,
        ready = ready.display()
    );
    let child = case
        .command(&[], &["python3", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    dns.set("moving.test", Ipv4Addr::new(127, 0, 0, 3), 1);
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "new-allowed\nold-expired\n"
    );
}

#[test]
fn a_bad_config_never_starts_the_command() {
    let case =
        Case::new("allowlist:\n  - \"domain=ok.test\"\n  - \"domian=typo.test\"\nmode: enforced\n");
    let marker = case.path("ran");
    let out = case.run(&["touch", marker.to_str().unwrap()]);
    assert_eq!(code(&out), 125, "{}", text(&out));
    assert!(!marker.exists(), "the command ran despite a bad config");
    let err = String::from_utf8_lossy(&out.stderr);
    let file = case.path("config.yaml");
    assert!(err.contains(&format!("{}:3:", file.display())), "{err}");
    assert!(
        err.contains("domian") && err.contains("domain"),
        "did-you-mean: {err}"
    );
    assert!(
        err.contains(&format!("{}:4:", file.display())) && err.contains("mode"),
        "{err}"
    );
}

#[test]
fn without_privileges_it_names_them_and_does_not_run_the_command() {
    let case = Case::new(&deny_config());
    let marker = case.path("ran");
    // Run boundary as `nobody` with no capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            BOUNDARY,
            "run",
            "--config",
        ])
        .arg(case.path("config.yaml"))
        .args(["--", "touch"])
        .arg(&marker)
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(code(&out), 125, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(err.contains("not started"), "{err}");
    assert!(!marker.exists());
}

#[test]
fn if_the_agent_dies_the_command_stays_confined() {
    let l = Listeners::start();
    let case = Case::new(&deny_config());
    let go = case.path("go");
    let script = try_both_when(
        &go,
        l.port,
        &format!("open('{}.result', 'w').write(' '.join(r))", go.display()),
    );
    let mut agent = case
        .command(&[], &["python3", "-c", &script])
        .spawn()
        .unwrap();
    wait_ready(&go, 1);
    agent.kill().unwrap(); // SIGKILL: no cleanup runs.
    agent.wait().unwrap();
    std::fs::write(&go, "").unwrap();
    let result = case.path("go.result");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !result.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "ok eperm");
    // The orphaned session is cleaned up by the next run once its processes are gone.
    let cgroup = case.events()[0]["boundary.cgroup.path"]
        .as_str()
        .unwrap()
        .to_string();
    let _ = std::fs::write(Path::new(&cgroup).join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(Path::new(&cgroup).join("cgroup.events"))
        .is_ok_and(|t| t.contains("populated 1"))
    {
        assert!(
            Instant::now() < deadline,
            "the orphan's processes did not die"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let out = case.run(&["true"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        !Path::new(&cgroup).exists(),
        "stale session {cgroup} not swept"
    );
}

#[test]
fn config_edits_apply_live_and_bad_edits_keep_the_last_good_policy() {
    let l = Listeners::start();
    let case = Case::new(&deny_config());
    let step = case.path("step");
    let script = format!(
        "import socket, os, time\n\
         def ok(ip):\n    s = socket.socket()\n    try:\n        s.connect((ip, {p}))\n        return 'ok'\n    \
         except PermissionError:\n        return 'eperm'\n\
         def wait(n):\n    while not os.path.exists('{step}.%d' % n): time.sleep(0.02)\n\
         print(ok('127.0.0.2'), ok('127.0.0.3'), flush=True)\n\
         open('{step}.0', 'w').close()\n\
         wait(1)\n\
         print(ok('127.0.0.2'), ok('127.0.0.3'), flush=True)\n\
         open('{step}.2', 'w').close()\n\
         wait(3)\n\
         print(ok('127.0.0.2'), ok('127.0.0.3'), flush=True)\n",
        p = l.port,
        step = step.display()
    );
    let child = case
        .command(&[], &["python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let wait = |n: u32| {
        let f = PathBuf::from(format!("{}.{n}", step.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    };
    let config = case.path("config.yaml");
    wait(0);
    // The README promises an edit is picked up within a second (once the file is stable):
    // wait for the event it produces, with that bound (plus slack for a loaded machine).
    let wait_event = |name: &str| {
        let started = Instant::now();
        while !case.events().iter().any(|e| e["event.name"] == name) {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "no {name} event within 2 s of the edit (promised: about a second)"
            );
            thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    };
    std::fs::write(
        &config,
        "allowlist:\n  - \"domain=allowed.test port=notaport\"\n",
    )
    .unwrap();
    let rejected_after = wait_event("boundary.policy.rejected");
    std::fs::write(format!("{}.1", step.display()), "").unwrap();
    wait(2);
    std::fs::write(&config, format!("{}  - \"ip=127.0.0.3\"\n", deny_config())).unwrap();
    let reloaded_after = wait_event("boundary.policy.reload");
    eprintln!("edit seen after {rejected_after:?} (bad) and {reloaded_after:?} (good)");
    std::fs::write(format!("{}.3", step.display()), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok eperm\nok eperm\nok ok\n",
        "{}",
        text(&out)
    );
    let events = case.events();
    let rejected = events
        .iter()
        .find(|e| e["event.name"] == "boundary.policy.rejected")
        .expect("rejected event");
    assert!(
        rejected["error.message"].as_str().unwrap().contains(":2:"),
        "{rejected}"
    );
    assert!(events
        .iter()
        .any(|e| e["event.name"] == "boundary.policy.reload"));
}

#[test]
fn check_and_validate() {
    let case = Case::new(
        "allow_loopback: false\nallowlist:\n  - \"domain=allowed.test\"\n  - \"cidr=10.0.0.0/8 port=443\"\n  \
         - \"domain=*.example.test\"\n",
    );
    let check = |target: &str| {
        Command::new(BOUNDARY)
            .args(["check", "--config"])
            .arg(case.path("config.yaml"))
            .arg("--hosts-file")
            .arg(case.path("hosts"))
            .arg("--dns-server")
            .arg("127.0.0.1:9") // discard port: a name not in hosts just fails to resolve
            .arg(target)
            .output()
            .unwrap()
    };
    let out = check("allowed.test:8080");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rule 1 `domain=allowed.test`"));
    assert_eq!(code(&check("10.1.2.3:443")), 0);
    assert_eq!(code(&check("10.1.2.3:80")), 1);
    assert_eq!(code(&check("127.0.0.3:80")), 1);
    assert_eq!(
        code(&check("127.0.0.2:80")),
        0,
        "allowed.test resolves to it"
    );
    assert_eq!(code(&check("api.example.test")), 0);
    assert_eq!(
        code(&check("example.test")),
        1,
        "a wildcard does not match its apex"
    );
    assert_eq!(code(&check("bad target!")), 2);

    let ok = Command::new(BOUNDARY)
        .args(["validate"])
        .arg(case.path("config.yaml"))
        .output()
        .unwrap();
    assert_eq!(code(&ok), 0, "{}", text(&ok));
    std::fs::write(
        case.path("bad.yaml"),
        "allowlist:\n  - \"domain=ok.test port=99999\"\n",
    )
    .unwrap();
    let bad = Command::new(BOUNDARY)
        .args(["validate"])
        .arg(case.path("bad.yaml"))
        .output()
        .unwrap();
    assert_eq!(code(&bad), 1);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bad.yaml:2:"),
        "{}",
        text(&bad)
    );
}

/// A domain named by a rule for another port or protocol: `check` names that rule, its line
/// and why it does not apply, instead of claiming no rule names the domain.
#[test]
fn check_names_the_rule_that_names_a_domain_on_another_port() {
    let case = Case::new(
        "allow_loopback: false\nallowlist:\n  - \"domain=allowed.test proto=tcp port=443\"\n  \
         - \"domain=allowed.test proto=udp port=8000-8100\"\n  - \"ip=127.0.0.2 port=8081\"\n",
    );
    let check = |args: &[&str]| {
        let out = Command::new(BOUNDARY)
            .args(["check", "--config"])
            .arg(case.path("config.yaml"))
            .arg("--hosts-file")
            .arg(case.path("hosts"))
            .args(["--dns-server", "127.0.0.1:9"])
            .args(args)
            .output()
            .unwrap();
        (
            code(&out),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            text(&out),
        )
    };
    let config = case.path("config.yaml").display().to_string();
    let rule1 = format!("rule 1 `domain=allowed.test proto=tcp port=443` ({config}:3)");
    let rule2 = format!("rule 2 `domain=allowed.test proto=udp port=8000-8100` ({config}:4)");

    let (status, stdout, all) = check(&["allowed.test:8080"]);
    assert_eq!(status, 1, "{all}");
    assert!(!stdout.contains("no rule names it"), "{all}");
    assert!(
        stdout.contains(&format!("{rule1} names it for port 443 only")),
        "{all}"
    );
    assert!(
        stdout.contains(&format!("{rule2} names it for udp only")),
        "{all}"
    );
    let (status, stdout, all) = check(&["--udp", "allowed.test:443"]);
    assert_eq!(status, 1, "{all}");
    assert!(
        stdout.contains(&format!("{rule1} names it for tcp only")),
        "{all}"
    );
    assert!(
        stdout.contains(&format!("{rule2} names it for ports 8000-8100 only")),
        "{all}"
    );
    let (status, stdout, all) = check(&["--udp", "allowed.test:9000"]);
    assert_eq!(status, 1, "{all}");
    assert!(
        stdout.contains(&format!("{rule1} names it for port 443 tcp only")),
        "{all}"
    );

    // Allowed by address, while the name's own rules name other ports: the DNS proxy still
    // answers the name (a rule names it), and check says which rule limits it.
    let (status, stdout, all) = check(&["allowed.test:8081"]);
    assert_eq!(status, 0, "{all}");
    assert!(
        stdout.contains(&format!(
            "rule 3 `ip=127.0.0.2 port=8081` ({config}:5); by address only: boundary's DNS \
             proxy answers this name ({rule1} names it for port 443 only"
        )),
        "{all}"
    );

    // Each rule on its own terms: allowed.
    assert_eq!(check(&["allowed.test:443"]).0, 0);
    assert_eq!(check(&["--udp", "allowed.test:8050"]).0, 0);

    // A name no rule names still says so.
    let (status, stdout, all) = check(&["other.test:443"]);
    assert_eq!(status, 1, "{all}");
    assert!(stdout.contains("no rule names it"), "{all}");
}

#[test]
fn a_stalled_events_reader_never_holds_the_command_or_the_exit() {
    let port = udp_echo();
    // Summaries off: every one of the 20,000 denied connects is a line, far more than a pipe
    // holds, and nobody reads the pipe.
    let case = Case::new(
        "name: flood\nallow_loopback: false\nallowlist:\n  - \"ip=127.0.0.2\"\nlog_summary_interval: 0\n",
    );
    let script = format!(
        "import socket\n\
         for _ in range(20000):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
         try:\n        s.connect(('127.0.0.3', {port}))\n    except PermissionError:\n        pass\n    s.close()\n\
         raise SystemExit(3)\n"
    );
    let mut cmd = Command::new(BOUNDARY);
    cmd.arg("run")
        .arg("--config")
        .arg(case.path("config.yaml"))
        .args([
            "--dns-server",
            "127.0.0.1:9",
            "--user",
            "nobody",
            "--events",
            "-",
        ])
        .args(["--", "python3", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    // Hold the pipe open without ever reading it.
    let _stalled = child.stdout.take();
    let deadline = started + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("boundary did not exit with a stalled events reader");
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3));
    eprintln!("exited after {:?} with a stalled reader", started.elapsed());
}

#[test]
fn deny_events_only_reports_denials_and_never_allows() {
    let l = Listeners::start();
    let case = Case::new(&deny_config());
    let out = case.run_with(
        &["--deny-events-only"],
        &refs(&[
            "sh".into(),
            "-c".into(),
            format!(
                "curl -s -m 2 -o /dev/null --resolve allowed.test:{p}:127.0.0.2 http://allowed.test:{p}/; \
                 curl -s -m 2 -o /dev/null http://127.0.0.3:{p}/; true",
                p = l.port
            ),
        ]),
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let decisions = case.decisions();
    assert!(
        decisions.iter().any(|e| e["event.action"] == "deny"),
        "{decisions:#?}"
    );
    assert!(
        !decisions.iter().any(|e| e["event.action"] == "allow"),
        "{decisions:#?}"
    );
}

#[test]
fn every_denial_is_written_or_counted_as_lost_when_the_agent_cannot_keep_up() {
    const ATTEMPTS: usize = 30_000;
    let port = udp_echo();
    let case = Case::new(&deny_config());
    let (go, done, end, ready) = (
        case.path("go"),
        case.path("done"),
        case.path("end"),
        case.path("ready"),
    );
    let script = format!(
        "import socket, os, time\n\
         open('{ready}', 'w').close()\n\
         while not os.path.exists('{go}'): time.sleep(0.01)\n\
         for _ in range({ATTEMPTS}):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
         try:\n        s.connect(('127.0.0.3', {port}))\n    except PermissionError:\n        pass\n    s.close()\n\
         open('{done}', 'w').close()\n\
         while not os.path.exists('{end}'): time.sleep(0.01)\n",
        ready = ready.display(),
        go = go.display(),
        done = done.display(),
        end = end.display(),
    );
    let mut child = case
        .command(&[], &["python3", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait = |p: &Path| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !p.exists() {
            assert!(Instant::now() < deadline, "waiting for {}", p.display());
            thread::sleep(Duration::from_millis(10));
        }
    };
    wait(&ready);
    // The agent is stopped while the flood runs: the kernel ring fills, the rest is counted.
    let agent = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(agent, nix::sys::signal::SIGSTOP).unwrap();
    std::fs::write(&go, "").unwrap();
    wait(&done);
    nix::sys::signal::kill(agent, nix::sys::signal::SIGCONT).unwrap();
    std::fs::write(&end, "").unwrap();
    assert!(child.wait().unwrap().success());
    let events = case.events();
    // Written in full or folded into a flood summary's count.
    let written: u64 = events
        .iter()
        .filter(|e| {
            e["event.action"] == "deny"
                && e["destination.address"] == "127.0.0.3"
                && e["destination.port"] == port
        })
        .map(|e| e["boundary.event.count"].as_u64().unwrap())
        .sum();
    let lost: u64 = events
        .iter()
        .filter(|e| e["event.name"] == "boundary.events_lost")
        .map(|e| e["boundary.events_lost.deny"].as_u64().unwrap_or(0))
        .sum();
    assert!(lost > 0, "the ring never overflowed: {written} written");
    assert_eq!(
        written + lost,
        ATTEMPTS as u64,
        "{written} written + {lost} reported lost"
    );
}

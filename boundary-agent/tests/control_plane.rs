//! End to end: a real `boundary agent --control-plane` (real kernel, sessions as `nobody`)
//! against a real `llm-bridge serve` (SQLite), through the wire contract of
//! docs/CONTROL_PLANE.md.
//!
//! - a pushed policy version reaches a RUNNING session within seconds (a destination becomes
//!   denied: its listener receives no byte), and the push→applied latency is measured;
//! - a revoked agent token is refused; the agent keeps enforcing its last good policy, and
//!   enforces it again when restarted with the control plane down;
//! - events are spooled while Bridge is down and delivered exactly once after it comes back,
//!   and after an agent restart with a non-empty spool (counted by `event.id` in the store);
//! - the session's environment carries its credential, Bridge accepts it (the request is
//!   recorded with the Boundary session) and refuses a tampered one.
//!
//! Network rule: loopback only. Bridge on 127.0.0.1, the fake upstream on 127.0.0.1, the
//! allowed listener on 127.0.0.2, the one that becomes forbidden on 127.0.0.3. Needs root and
//! the `llm-bridge` and `fake-upstream` binaries (built by `cargo test --workspace`, or
//! `cargo build -p bridge --bins`; `BRIDGE_BIN` overrides where `llm-bridge` is).

mod support;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use support::Counted;

use serde_json::Value;

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");

/// A binary of the bridge package, next to this test's own target directory.
fn bridge_binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/control_plane-HASH -> target/debug/NAME
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p bridge --bins` (or set {env})",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `llm-bridge serve` on 127.0.0.1 with a SQLite store in its own directory.
struct Bridge {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// The PostgreSQL store's URL (SQLite in `dir` when `None`).
    postgres: Option<String>,
}

impl Bridge {
    fn start(extra_yaml: &str) -> Bridge {
        Bridge::start_on(None, extra_yaml)
    }

    /// With TLS: a certificate for 127.0.0.1 from a CA made here (its PEM: `tls/ca.pem`).
    fn start_tls() -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&tls)
                .output()
                .expect("openssl makes the test certificates");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=cp-test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            tls.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        // PKCS#8, as Bridge reads it.
        openssl(&[
            "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-out", "key8.pem",
        ]);
        let t = tls.display();
        Bridge::start_in(
            dir,
            None,
            &format!("tls:\n  cert_file: {t}/cert.pem\n  key_file: {t}/key8.pem\n"),
        )
    }

    fn start_on(postgres: Option<String>, extra_yaml: &str) -> Bridge {
        Bridge::start_in(tempfile::tempdir().unwrap(), postgres, extra_yaml)
    }

    fn start_in(dir: tempfile::TempDir, postgres: Option<String>, extra_yaml: &str) -> Bridge {
        let port = free_port();
        let d = dir.path().display();
        let store = match &postgres {
            Some(url) => url.clone(),
            None => format!("sqlite://{d}/bridge.db"),
        };
        std::fs::write(
            dir.path().join("bridge.yaml"),
            format!("listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {d}/spool\n{extra_yaml}"),
        )
        .unwrap();
        let mut b = Bridge {
            dir,
            port,
            child: None,
            postgres,
        };
        b.serve();
        b
    }

    fn serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let child = Command::new(bridge_binary("llm-bridge", "BRIDGE_BIN"))
            .arg("serve")
            .arg("-c")
            .arg(self.dir.path().join("bridge.yaml"))
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .env_remove("BRIDGE_STORE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "llm-bridge serve did not listen: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        let scheme = if self.dir.path().join("tls").exists() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// An `llm-bridge` admin command on this bridge's store.
    fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(bridge_binary("llm-bridge", "BRIDGE_BIN"))
            .args(args)
            .arg("-c")
            .arg(self.dir.path().join("bridge.yaml"))
            .current_dir(self.dir.path())
            .env_remove("BRIDGE_STORE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "llm-bridge {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Enrols an agent for `template`: its token and id.
    fn create_agent(&self, template: &str) -> (String, String) {
        let out = self.cli(&["agents", "create", "--template", template]);
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(token.starts_with("bnd_agent_"), "{token}");
        let list = self.cli(&["agents", "list", "--format", "json"]);
        let list: Value = serde_json::from_slice(&list.stdout).unwrap();
        let rows = list
            .as_array()
            .cloned()
            .unwrap_or_else(|| list["agents"].as_array().cloned().unwrap_or_default());
        let id = rows
            .iter()
            .find(|a| a["template"] == template)
            .and_then(|a| a["id"].as_str())
            .unwrap_or_else(|| panic!("no agent of {template} in {list}"))
            .to_string();
        (token, id)
    }

    fn push(&self, template: &str, yaml: &str, mode: &str) {
        let file = self.dir.path().join(format!("push-{template}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        self.cli(&[
            "policy",
            "push",
            "--template",
            template,
            file.to_str().unwrap(),
            "--mode",
            mode,
        ]);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop();
    }
}

static AGENTS: AtomicUsize = AtomicUsize::new(0);

/// `boundary agent --control-plane` with its own socket, state, events file and cgroup root.
struct Agent {
    dir: tempfile::TempDir,
    child: Option<Child>,
    cgroup_root: PathBuf,
    url: String,
    state: Option<PathBuf>,
    /// More `boundary agent` arguments.
    extra: Vec<String>,
}

impl Agent {
    fn start(local_policy: &str, url: &str, token: &str) -> Agent {
        Agent::start_with_state(local_policy, url, token, None)
    }

    /// With more `boundary agent` arguments.
    fn start_with_args(local_policy: &str, url: &str, token: &str, args: &[&str]) -> Agent {
        Agent::launch(local_policy, url, token, None, args)
    }

    /// With `state`: that state directory (default: `state/` in the agent's directory).
    fn start_with_state(
        local_policy: &str,
        url: &str,
        token: &str,
        state: Option<&std::path::Path>,
    ) -> Agent {
        Agent::launch(local_policy, url, token, state, &[])
    }

    fn launch(
        local_policy: &str,
        url: &str,
        token: &str,
        state: Option<&std::path::Path>,
        extra: &[&str],
    ) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        // Sticky and world-writable like /tmp: `nobody` can leave files here, not replace
        // root's.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(dir.path().join("config.yaml"), local_policy).unwrap();
        let token_file = dir.path().join("agent-token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("hosts"), "127.0.0.2 allowed.test\n").unwrap();
        let cgroup_root = boundary_agent::cgroup::cgroup2_root()
            .unwrap()
            .join(format!(
                "boundary-cp-test-{}-{}",
                std::process::id(),
                AGENTS.fetch_add(1, Ordering::SeqCst)
            ));
        std::fs::create_dir_all(&cgroup_root).unwrap();
        let mut agent = Agent {
            dir,
            child: None,
            cgroup_root,
            url: url.to_string(),
            state: state.map(|p| p.to_path_buf()),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("agent.log"))
            .unwrap();
        let child = Command::new(BOUNDARY)
            .arg("agent")
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--config")
            .arg(d.join("config.yaml"))
            .arg("--socket")
            .arg(d.join("agent.sock"))
            .arg("--hosts-file")
            .arg(d.join("hosts"))
            .args(["--dns-server", "127.0.0.1:9"])
            .arg("--events")
            .arg(d.join("all-events.jsonl"))
            .args(["--control-plane", &self.url])
            .arg("--token-file")
            .arg(d.join("agent-token"))
            .arg("--state-dir")
            .arg(self.state.clone().unwrap_or_else(|| d.join("state")))
            .args(&self.extra)
            .env("BOUNDARY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent did not listen: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// `boundary run` as `nobody` (environment reset, plus `env`), through this agent.
    fn nobody(&self, env: &[(&str, &str)], cmd: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--reset-env",
            "env",
        ]);
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(BOUNDARY)
            .arg("run")
            .arg("--socket")
            .arg(self.socket())
            .arg("--")
            .args(cmd)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("all-events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn wait_event(&self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event; agent log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let parent = self.cgroup_root.join("boundary");
        // A test that failed may leave a session's command running: end it.
        if let Ok(dirs) = std::fs::read_dir(&parent) {
            for dir in dirs.flatten().filter(|d| d.path().is_dir()) {
                let _ = std::fs::write(dir.path().join("cgroup.kill"), "1");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_dir(&parent)
            .is_ok_and(|d| d.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir())))
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        if let Ok(dirs) = std::fs::read_dir(&parent) {
            for dir in dirs.flatten().filter(|d| d.path().is_dir()) {
                let id = dir.file_name().to_string_lossy().into_owned();
                boundary_agent::session::remove_unused(&self.cgroup_root, &id);
            }
        }
        let _ = std::fs::remove_dir(&parent);
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

/// A policy allowing these addresses only (loopback is not allowed by itself).
fn allow(ips: &[&str]) -> String {
    let mut p = String::from("name: cp-test\nallow_loopback: false\nallowlist:\n");
    for ip in ips {
        p.push_str(&format!("  - \"ip={ip}\"\n"));
    }
    p
}

/// A Python command for a session: connects to 127.0.0.3:PORT and sends bytes each time the
/// file `ask-N` appears (N = 1, 2, ...), answering in `got-N` ("ok" or the errno), until
/// `done` appears (or 90 s have passed: a failed test leaves nothing running). So the test
/// decides when the running session tries.
const PROBE: &str = r#"
import os, socket, sys, time
port = int(sys.argv[1]); n = 1; start = time.time()
while not os.path.exists('done') and time.time() - start < 90:
    if os.path.exists('ask-%d' % n):
        s = socket.socket()
        try:
            s.connect(('127.0.0.3', port)); s.sendall(b'probe'); r = 'ok'
        except OSError as e:
            r = str(e.errno)
        s.close()
        open('got-%d.tmp' % n, 'w').write(r); os.rename('got-%d.tmp' % n, 'got-%d' % n)
        n += 1
    time.sleep(0.02)
"#;

/// Asks the probe of a running session to connect once more; its answer.
fn probe(agent: &Agent, n: u32) -> String {
    std::fs::write(agent.path(&format!("ask-{n}")), "").unwrap();
    let got = agent.path(&format!("got-{n}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.exists() {
        assert!(Instant::now() < deadline, "the probe did not answer");
        thread::sleep(Duration::from_millis(10));
    }
    std::fs::read_to_string(got).unwrap()
}

fn is(e: &Value, name: &str) -> bool {
    e["event.name"] == name
}

#[test]
fn a_pushed_version_reaches_a_running_session_within_seconds() {
    let bridge = Bridge::start("");
    let (token, _) = bridge.create_agent("cp-push");
    let forbidden = Counted::start("127.0.0.3");
    // Version 1 allows both listeners.
    bridge.push("cp-push", &allow(&["127.0.0.2", "127.0.0.3"]), "enforce");
    let agent = Agent::start(&allow(&["127.0.0.2"]), &bridge.url(), &token);
    agent.wait_event("policy applied v1", 15, |e| {
        is(e, "boundary.policy.applied") && e["boundary.policy.version"] == 1
    });
    // The status report (at start and after each change) reaches the fleet view.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = bridge.cli(&["agents", "list", "--format", "json"]);
        let list: Value = serde_json::from_slice(&list.stdout).unwrap();
        let me = list
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["template"] == "cp-push");
        if me.is_some_and(|a| a["policy_version"] == 1 && a["agent_version"].is_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no status with version 1: {list}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let state = agent.path("state/policy/current.json");
    let meta: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["mode"], "enforce");

    let port = forbidden.port.to_string();
    let mut session = agent
        .nobody(&[], &["python3", "-c", PROBE, &port])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = agent.wait_event("session start", 15, |e| is(e, "boundary.session.start"));
    assert_eq!(start["boundary.policy.version"], 1, "{start}");
    let session_id = start["session.id"].as_str().unwrap().to_string();
    assert_eq!(probe(&agent, 1), "ok", "version 1 allows 127.0.0.3");
    let deadline = Instant::now() + Duration::from_secs(5);
    while forbidden.received() == 0 {
        assert!(
            Instant::now() < deadline,
            "the allowed probe's bytes never arrived"
        );
        thread::sleep(Duration::from_millis(10));
    }

    // Versions 2..=6 alternate: deny 127.0.0.3, allow it, ...; each must reach the running
    // session. Measured from the push command's start to the session's reload event.
    let mut latencies = Vec::new();
    let mut ask = 2;
    for version in 2..=6u64 {
        let denies = version % 2 == 0;
        let policy = if denies {
            allow(&["127.0.0.2"])
        } else {
            allow(&["127.0.0.2", "127.0.0.3"])
        };
        let pushed = Instant::now();
        bridge.push("cp-push", &policy, "enforce");
        let stored = pushed.elapsed();
        agent.wait_event("agent applied", 15, |e| {
            is(e, "boundary.policy.applied") && e["boundary.policy.version"] == version
        });
        let at_agent = pushed.elapsed();
        agent.wait_event("session reload", 15, |e| {
            is(e, "boundary.policy.reload")
                && e["session.id"] == session_id.as_str()
                && e["boundary.policy.version"] == version
        });
        latencies.push(pushed.elapsed());
        eprintln!(
            "version {version}: push command {stored:?}, agent has it {at_agent:?}, running session {:?}",
            pushed.elapsed()
        );
        let before = forbidden.received();
        let got = probe(&agent, ask);
        ask += 1;
        if denies {
            assert_eq!(got, "1", "version {version}: EPERM expected");
            thread::sleep(Duration::from_millis(100));
            assert_eq!(
                forbidden.received(),
                before,
                "the forbidden listener got bytes"
            );
        } else {
            assert_eq!(got, "ok", "version {version} allows 127.0.0.3 again");
        }
    }
    // An audit switch is a new version with the same text: the session follows the mode.
    bridge.cli(&["policy", "audit", "--template", "cp-push"]);
    let reload = agent.wait_event("audit reload", 15, |e| {
        is(e, "boundary.policy.reload") && e["boundary.policy.version"] == 7
    });
    assert_eq!(reload["boundary.mode"], "audit");
    assert_eq!(probe(&agent, ask), "ok", "audit lets everything through");
    std::fs::write(agent.path("done"), "").unwrap();
    let status = session.wait().unwrap();
    assert!(status.success());
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!("push -> applied in a running session: {latencies:?}, median {median:?}");
    assert!(median < Duration::from_secs(2), "median {median:?}");
}

#[test]
fn a_version_the_agent_cannot_apply_is_rejected_and_the_last_good_one_stays() {
    let bridge = Bridge::start("");
    let (token, _) = bridge.create_agent("cp-reject");
    bridge.push("cp-reject", &allow(&["127.0.0.2"]), "enforce");
    let agent = Agent::start(&allow(&["127.0.0.2"]), &bridge.url(), &token);
    agent.wait_event("applied v1", 15, |e| {
        is(e, "boundary.policy.applied") && e["boundary.policy.version"] == 1
    });
    // Bridge validates pushes with the same code, so a bad version cannot be pushed: write one
    // straight into the store as an older or tampered server would serve it.
    let db = bridge.dir.path().join("bridge.db");
    let bad = "name: x\nallowlist: 3\n";
    let sha = boundary_agent::managed::sha256_hex(bad.as_bytes());
    let sql = format!(
        "INSERT INTO policies (template, version, yaml, sha256, mode, author, created_at, comment) \
         SELECT template, version + 1, '{bad}', '{sha}', mode, 'test', created_at, 'bad' FROM policies \
         WHERE template = 'cp-reject' ORDER BY version DESC LIMIT 1;"
    );
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg(&sql)
        .output()
        .expect("sqlite3 (the Debian package) writes the bad version into the store");
    assert!(
        out.status.success(),
        "writing a bad version into the store: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rejected = agent.wait_event("policy rejected", 15, |e| {
        is(e, "boundary.policy.rejected") && e["boundary.policy.version"] == 2
    });
    assert!(
        rejected["error.message"]
            .as_str()
            .unwrap()
            .contains("allowlist"),
        "{rejected}"
    );
    let meta: Value =
        serde_json::from_slice(&std::fs::read(agent.path("state/policy/current.json")).unwrap())
            .unwrap();
    assert_eq!(meta["version"], 1, "the last good version stays");
}

#[test]
fn a_revoked_agent_keeps_enforcing_its_last_good_policy_also_after_a_restart() {
    let mut bridge = Bridge::start("");
    let (token, id) = bridge.create_agent("cp-revoke");
    let forbidden = Counted::start("127.0.0.3");
    bridge.push("cp-revoke", &allow(&["127.0.0.2"]), "enforce");
    // The local policy would allow 127.0.0.3: only the control plane's version denies it.
    let mut agent = Agent::start(&allow(&["127.0.0.2", "127.0.0.3"]), &bridge.url(), &token);
    agent.wait_event("applied v1", 15, |e| {
        is(e, "boundary.policy.applied") && e["boundary.policy.version"] == 1
    });
    bridge.cli(&["agents", "revoke", &id]);
    // The agent's next poll (after the one held when the token was revoked) is refused; it
    // says so, and a version pushed from then on never arrives.
    let deadline = Instant::now() + Duration::from_secs(45);
    while !agent.log().contains("refuses this agent's token") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged: {}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    bridge.push("cp-revoke", &allow(&["127.0.0.2", "127.0.0.3"]), "enforce");
    thread::sleep(Duration::from_secs(3));
    let run = |agent: &Agent| {
        let port = forbidden.port.to_string();
        let script = format!(
            "import socket\ns=socket.socket()\ntry:\n  s.connect(('127.0.0.3',{port})); s.sendall(b'x'); print('ok')\nexcept OSError as e:\n  print(e.errno)\n"
        );
        let out = agent
            .nobody(&[], &["python3", "-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(&agent), "1", "still version 1: EPERM");
    assert!(!agent
        .events()
        .iter()
        .any(|e| e["boundary.policy.version"] == 2));

    // Control plane down, agent restarted: the last good version, not the local file.
    bridge.stop();
    agent.restart();
    assert_eq!(
        run(&agent),
        "1",
        "after a restart without the control plane: EPERM"
    );
    let starts: Vec<Value> = agent
        .events()
        .into_iter()
        .filter(|e| is(e, "boundary.session.start"))
        .collect();
    assert_eq!(starts.last().unwrap()["boundary.policy.version"], 1);
    assert_eq!(forbidden.received(), 0, "the forbidden listener got bytes");
}

#[test]
fn the_session_credential_is_accepted_by_bridge_and_a_tampered_one_refused() {
    let upstream_port = free_port();
    let up = Command::new(bridge_binary("fake-upstream", "FAKE_UPSTREAM_BIN"))
        .args(["--listen", &format!("127.0.0.1:{upstream_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _up = Kill(up);
    let bridge = Bridge::start(&format!(
        "providers:\n  anthropic:\n    base_url: http://127.0.0.1:{upstream_port}\n    api_key: sk-ant-fake-upstream-key\n"
    ));
    let (token, _) = bridge.create_agent("cp-cred");
    let out = bridge.cli(&["keys", "create", "--user", "alice"]);
    let user_key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    bridge.push("cp-cred", &allow(&["127.0.0.1"]), "enforce");
    let agent = Agent::start(&allow(&["127.0.0.1"]), &bridge.url(), &token);
    agent.wait_event("applied v1", 15, |e| {
        is(e, "boundary.policy.applied") && e["boundary.policy.version"] == 1
    });
    // As Claude Code does: every line of ANTHROPIC_CUSTOM_HEADERS is a header.
    let script = format!(
        r#"
import json, os, urllib.request, urllib.error
headers = {{}}
for line in os.environ['ANTHROPIC_CUSTOM_HEADERS'].splitlines():
    k, v = line.split(':', 1); headers[k.strip()] = v.strip()
print(json.dumps({{'headers': headers, 'token': os.environ['BOUNDARY_SESSION_TOKEN'],
                  'id': os.environ['BOUNDARY_SESSION_ID']}}))
def ask(h):
    body = json.dumps({{'model': 'claude-sonnet-4-6', 'max_tokens': 5,
                       'messages': [{{'role': 'user', 'content': 'hi'}}]}}).encode()
    req = urllib.request.Request('http://127.0.0.1:{port}/anthropic/v1/messages', data=body,
        headers=dict(h, **{{'x-api-key': '{user_key}', 'anthropic-version': '2023-06-01',
                           'content-type': 'application/json'}}))
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
print(ask(headers))
t = dict(headers); tok = t['x-bridge-session-token']
t['x-bridge-session-token'] = tok[:-1] + ('A' if tok[-1] != 'A' else 'B')
print(ask(t))
"#,
        port = bridge.port
    );
    let out = agent
        .nobody(
            &[("ANTHROPIC_CUSTOM_HEADERS", "X-Team: search")],
            &["python3", "-c", &script],
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let seen: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let id = seen["id"].as_str().unwrap();
    assert!(seen["token"]
        .as_str()
        .unwrap()
        .starts_with(&format!("bnd_sess_{id}_")));
    assert_eq!(
        seen["headers"]["X-Team"], "search",
        "the user's header stays"
    );
    assert_eq!(seen["headers"]["x-bridge-session"], id);
    assert_eq!(seen["headers"]["x-bridge-session-token"], seen["token"]);
    assert_eq!(seen["headers"]["x-bridge-template"], "cp-cred");
    assert_eq!(lines.next(), Some("200"), "the valid credential: {stdout}");
    assert_eq!(
        lines.next(),
        Some("403"),
        "the tampered credential: {stdout}"
    );
    // The accepted request is recorded with the Boundary session.
    // The session is over: the agent ended it on Bridge, and its credential stops working
    // (Bridge trusts a checked credential for up to 5 s).
    let after = format!(
        r#"
import json, sys, urllib.request, urllib.error
h = json.loads(sys.argv[1])
body = json.dumps({{'model': 'claude-sonnet-4-6', 'max_tokens': 5,
                   'messages': [{{'role': 'user', 'content': 'hi'}}]}}).encode()
req = urllib.request.Request('http://127.0.0.1:{port}/anthropic/v1/messages', data=body,
    headers=dict(h, **{{'x-api-key': '{user_key}', 'anthropic-version': '2023-06-01',
                       'content-type': 'application/json'}}))
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
"#,
        port = bridge.port
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("python3")
            .args(["-c", &after, &seen["headers"].to_string()])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "403" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ended session's credential still works: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        thread::sleep(Duration::from_millis(500));
    }
    // Records are written off the request path: wait for it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = bridge.cli(&["interceptions", "list", "--format", "json"]);
        let text = String::from_utf8_lossy(&list.stdout).to_string();
        let records: Value = serde_json::from_str(&text).unwrap();
        let rows = records.as_array().cloned().unwrap_or_default();
        let ok = rows.iter().any(|r| {
            r["context"]["session"] == id
                && r["context"]["template"] == "cp-cred"
                && r["status"] == 200
        });
        let refused = rows.iter().any(|r| {
            r["status"] == 403
                && r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("session credential"))
        });
        if ok && refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no record with session {id}: {text}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Every stored event of `agent_id` (its JSON body), read straight from the SQLite store.
fn stored_events(bridge: &Bridge, agent_id: &str) -> Vec<Value> {
    let sql = format!("SELECT id, body FROM events WHERE agent_id = '{agent_id}';");
    let out = match &bridge.postgres {
        Some(url) => Command::new(pg_bin().join("psql"))
            .args([url.as_str(), "-At", "-F", "|", "-c", &sql])
            .output()
            .expect("psql reads the store"),
        None => Command::new("sqlite3")
            .arg(bridge.dir.path().join("bridge.db"))
            .arg(&sql)
            .output()
            .expect("sqlite3 (the Debian package) reads the store"),
    };
    if !out.status.success() {
        // The table appears with the first ingest.
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (id, body) = l.split_once('|').unwrap();
            let mut v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["event.id"], id, "the row's id is the event's");
            v["stored.id"] = id.into();
            v
        })
        .collect()
}

/// What identifies an event in both the agent's events file (no ids there) and the store.
fn key(e: &Value) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        e["event.name"], e["session.id"], e["timestamp"], e["destination.port"], e["process.pid"]
    )
}

/// A session that connects `n` times to the allowed listener (`pause` seconds apart), then
/// tries [`DENIED_PORTS`] ports of a denied address (each refused: one event each).
/// Denied destinations per session (distinct ports: distinct events, none folded).
const DENIED_PORTS: u16 = 300;

fn connect_command(agent: &Agent, allowed: u16, denied: u16, n: usize, pause: f32) -> Command {
    let script = format!(
        "import socket, time\nfor i in range({n}):\n  s=socket.socket(); s.connect(('127.0.0.2',{allowed})); s.sendall(b'x'); s.close(); time.sleep({pause})\nrefused=set()\nfor p in range({denied}, {denied}+{DENIED_PORTS}):\n  s=socket.socket()\n  try:\n    s.connect(('127.0.0.3',p))\n  except OSError as e:\n    refused.add(e.errno)\n  s.close()\nprint(*refused)\n"
    );
    let mut c = agent.nobody(&[], &["python3", "-c", &script]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn connect_session(agent: &Agent, allowed: u16, denied: u16, n: usize) {
    let out = connect_command(agent, allowed, denied, n, 0.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

fn agent_status(agent: &Agent) -> Value {
    let out = Command::new(BOUNDARY)
        .args(["status", "--json", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn events_reach_the_store_exactly_once_across_bridge_outages_and_agent_restarts() {
    events_exactly_once(Bridge::start(""));
}

#[test]
fn events_reach_a_postgresql_store_exactly_once_across_bridge_outages_and_agent_restarts() {
    let pg = Postgres::start();
    events_exactly_once(Bridge::start_on(Some(pg.url()), ""));
}

fn events_exactly_once(mut bridge: Bridge) {
    let (token, agent_id) = bridge.create_agent("cp-events");
    let allowed = Counted::start("127.0.0.2");
    // Ports on 127.0.0.3 from here on: nothing listens there, and the policy denies them.
    let denied = 20_000 + (std::process::id() % 20_000) as u16;
    bridge.push("cp-events", &allow(&["127.0.0.2"]), "enforce");
    let mut agent = Agent::start(&allow(&["127.0.0.2"]), &bridge.url(), &token);
    agent.wait_event("applied v1", 15, |e| {
        is(e, "boundary.policy.applied") && e["boundary.policy.version"] == 1
    });
    // Until the store holds the same events as the agent's own events file (both are
    // written asynchronously: either may be ahead for a moment).
    let all_delivered = |agent: &Agent, bridge: &Bridge, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let mut written: Vec<String> = agent.events().iter().map(key).collect();
            let stored = stored_events(bridge, &agent_id);
            let mut got: Vec<String> = stored.iter().map(key).collect();
            written.sort();
            got.sort();
            if got == written && !written.is_empty() {
                return stored;
            }
            if Instant::now() > deadline {
                let missing: Vec<&String> = written.iter().filter(|k| !got.contains(k)).collect();
                let extra: Vec<&String> = got.iter().filter(|k| !written.contains(k)).collect();
                panic!(
                    "the store must hold exactly the events the agent wrote: {} stored, {} \
                     written; missing {missing:?}; not in the agent's file {extra:?}; agent log:\n{}",
                    got.len(),
                    written.len(),
                    agent.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    };

    // 1. Bridge up: shipped as they come.
    connect_session(&agent, allowed.port, denied, 20);
    all_delivered(&agent, &bridge, 30);

    // 2. Bridge stops in the middle of a session: the rest of its events wait in the spool.
    let running = connect_command(&agent, allowed.port, denied, 30, 0.05)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent
        .events()
        .iter()
        .filter(|e| is(e, "boundary.session.start"))
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the second session did not start"
        );
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    bridge.stop();
    let out = running.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = agent_status(&agent);
        if s["control_plane"]["events_spooled"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing spooled: {s}");
        thread::sleep(Duration::from_millis(100));
    }

    // 3. The agent restarts with a non-empty spool (Bridge still down), and runs more.
    agent.restart();
    connect_session(&agent, allowed.port, denied, 10);
    assert!(
        std::fs::read_dir(agent.path("state/spool"))
            .unwrap()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "jsonl")
                && e.metadata().unwrap().len() > 0),
        "the spool is on disk"
    );

    // 4. Bridge back: everything arrives, each event once.
    bridge.serve();
    let stored = all_delivered(&agent, &bridge, 60);
    let mut ids: Vec<&str> = stored
        .iter()
        .map(|e| e["stored.id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), stored.len(), "ids are unique");
    // Three sessions, each with its start, its end, its denied connection.
    let count = |name: &str| stored.iter().filter(|e| is(e, name)).count();
    assert_eq!(count("boundary.session.start"), 3);
    assert_eq!(count("boundary.session.end"), 3);
    let denied_decisions: u64 = stored
        .iter()
        .filter(|e| e["event.action"] == "deny")
        .map(|e| e["boundary.event.count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(denied_decisions, 3 * DENIED_PORTS as u64);
    let status = agent_status(&agent);
    assert_eq!(status["control_plane"]["events_lost"], 0, "{status}");
    eprintln!(
        "{} events stored once each across a Bridge outage and an agent restart",
        stored.len()
    );
}

/// Debian's PostgreSQL binaries (the newest installed version).
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .expect("PostgreSQL (Debian package postgresql) is not installed")
}

/// A private PostgreSQL server on 127.0.0.1, run as the `postgres` user; removed on drop.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        assert!(Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .unwrap()
            .success());
        let data = dir.path().join("data");
        let pg = |tool: &str| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin().join(tool));
            c
        };
        let out = pg("initdb")
            .args([
                "-U",
                "bridge",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let opts = format!(
            "-h 127.0.0.1 -p {port} -k {} -c fsync=off",
            dir.path().display()
        );
        let out = pg("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .args(["-w", "-t", "30", "-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Postgres { dir, port }
    }

    fn url(&self) -> String {
        format!("postgres://bridge@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-m", "immediate", "stop"])
            .output();
    }
}

#[test]
fn a_batch_bridge_refuses_is_set_aside_and_shipping_goes_on() {
    let bridge = Bridge::start("");
    let (token, agent_id) = bridge.create_agent("cp-refused");
    bridge.push("cp-refused", &allow(&["127.0.0.2"]), "enforce");
    // A spool left by an earlier agent holds an event Bridge refuses (a port out of range).
    let state = tempfile::tempdir().unwrap();
    let bad_id = "01890a5d-ac96-774b-bcce-b302099a8057";
    let spool = state.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(
        spool.join("00000000000000000001.jsonl"),
        format!(
            "{{\"event.id\":\"{bad_id}\",\"event.name\":\"boundary.decision\",\"destination.port\":70000}}\n"
        ),
    )
    .unwrap();
    let agent = Agent::start_with_state(
        &allow(&["127.0.0.2"]),
        &bridge.url(),
        &token,
        Some(state.path()),
    );
    agent.wait_event("applied v1", 15, |e| {
        is(e, "boundary.policy.applied") && e["boundary.policy.version"] == 1
    });
    // The refused batch is kept aside, with why; what came after it is delivered.
    let rejected = state.path().join("spool/rejected");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = stored_events(&bridge, &agent_id);
        let kept: Vec<PathBuf> = std::fs::read_dir(&rejected)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        if !kept.is_empty() && stored.iter().any(|e| is(e, "boundary.policy.applied")) {
            let body = kept
                .iter()
                .find(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| std::fs::read_to_string(p).unwrap())
                .unwrap_or_default();
            assert!(body.contains(bad_id), "{body}");
            assert!(!stored.iter().any(|e| e["stored.id"] == bad_id));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kept aside: {kept:?}, stored: {}; log:\n{}",
            stored.len(),
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.log().contains("refused a batch of events"),
        "{}",
        agent.log()
    );
    let status = agent_status(&agent);
    assert_eq!(status["control_plane"]["events_lost"], 1, "{status}");
}

#[test]
fn a_burst_of_events_is_shipped_in_batches_and_measured() {
    let bridge = Bridge::start("");
    let (token, agent_id) = bridge.create_agent("cp-burst");
    bridge.push("cp-burst", &allow(&["127.0.0.2"]), "enforce");
    let agent = Agent::start(&allow(&["127.0.0.2"]), &bridge.url(), &token);
    agent.wait_event("applied v1", 15, |e| {
        is(e, "boundary.policy.applied") && e["boundary.policy.version"] == 1
    });
    // 5,000 denied destinations (distinct ports: one event each), as fast as Python goes.
    let n = 5000;
    let script = format!(
        "import socket\nfor p in range(20000, 20000+{n}):\n  s=socket.socket()\n  try:\n    s.connect(('127.0.0.3',p))\n  except OSError:\n    pass\n  s.close()\n"
    );
    let started = Instant::now();
    let out = agent
        .nobody(&[], &["python3", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ran = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored = loop {
        let stored = stored_events(&bridge, &agent_id);
        // Every decision is reported: as an event, or counted in a `boundary.events_lost`
        // (the kernel's fair share of the rings caps a flooding session; see README).
        let denied: u64 = stored
            .iter()
            .filter(|e| e["event.action"] == "deny")
            .map(|e| e["boundary.event.count"].as_u64().unwrap_or(1))
            .sum();
        let lost: u64 = stored
            .iter()
            .filter(|e| is(e, "boundary.events_lost"))
            .map(|e| e["boundary.events_lost.deny"].as_u64().unwrap_or(0))
            .sum();
        if denied + lost >= n && stored.iter().any(|e| is(e, "boundary.session.end")) {
            eprintln!("{denied} denied decisions as events, {lost} counted lost by the kernel");
            assert_eq!(denied + lost, n);
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "{denied} of {n} denied decisions stored, {lost} counted lost; log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    };
    let all = started.elapsed();
    eprintln!(
        "{} events ({n} denied decisions): session ran {ran:?}, all stored {all:?} after its start ({:.0} events/s end to end)",
        stored.len(),
        stored.len() as f64 / all.as_secs_f64()
    );
    let status = agent_status(&agent);
    assert_eq!(status["control_plane"]["events_lost"], 0, "{status}");
}

#[test]
fn the_control_plane_over_tls_is_trusted_through_ca_file_and_refused_without() {
    let bridge = Bridge::start_tls();
    assert!(bridge.url().starts_with("https://"));
    let (token, _) = bridge.create_agent("cp-tls");
    bridge.push("cp-tls", &allow(&["127.0.0.2"]), "enforce");
    let ca = bridge.dir.path().join("tls/ca.pem");
    let agent = Agent::start_with_args(
        &allow(&["127.0.0.2"]),
        &bridge.url(),
        &token,
        &["--ca-file", ca.to_str().unwrap()],
    );
    agent.wait_event("applied over TLS", 15, |e| {
        is(e, "boundary.policy.applied") && e["boundary.policy.version"] == 1
    });
    // Without the CA, the certificate does not verify: nothing is taken from that server.
    let untrusting = Agent::start(&allow(&["127.0.0.2"]), &bridge.url(), &token);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !untrusting.log().contains("unreachable") {
        assert!(
            Instant::now() < deadline,
            "no TLS failure logged: {}",
            untrusting.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        untrusting.log().to_lowercase().contains("certificate"),
        "{}",
        untrusting.log()
    );
    assert!(!untrusting
        .events()
        .iter()
        .any(|e| is(e, "boundary.policy.applied")));
}

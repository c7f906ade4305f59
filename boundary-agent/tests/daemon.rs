//! End-to-end tests of the agent daemon against the real kernel: a root `boundary agent`, and
//! an unprivileged user (`nobody`, through `setpriv`) wrapping real commands with
//! `boundary run`. Every escape is tried from inside as that user and must fail, and the
//! strong way: the forbidden listener counts the bytes it received and must count zero.
//!
//! Network rule: loopback only (allowed listener on 127.0.0.2, forbidden on 127.0.0.3);
//! names come from a hosts file; the nameserver given to the agent is 127.0.0.1:9 where
//! nothing listens. Needs root (CI runs as root).

mod support;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::Counted;

use serde_json::Value;

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");
const NOBODY: u32 = 65534;

/// A running `boundary agent` with its own socket, policy, log directory and cgroup root
/// (so that agents of tests running side by side never adopt each other's sessions).
struct Agent {
    dir: tempfile::TempDir,
    child: Child,
    cgroup_root: PathBuf,
}

static AGENTS: AtomicUsize = AtomicUsize::new(0);

impl Agent {
    fn start(config: &str) -> Agent {
        Agent::start_with(config, &[])
    }

    fn start_with(config: &str, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        // Sticky and world-writable like /tmp: `nobody` can leave marker files, but cannot
        // replace root's policy (the agent accepts that, as it accepts /tmp).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let config = config.replace("LOG_DIR", &dir.path().join("logs").display().to_string());
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        std::fs::write(
            dir.path().join("hosts"),
            "127.0.0.2 allowed.test\n127.0.0.3 blocked.test\n",
        )
        .unwrap();
        let cgroup_root = boundary_agent::cgroup::cgroup2_root()
            .unwrap()
            .join(format!(
                "boundary-test-{}-{}",
                std::process::id(),
                AGENTS.fetch_add(1, Ordering::SeqCst)
            ));
        std::fs::create_dir_all(&cgroup_root).unwrap();
        let child = Agent::spawn(dir.path(), &cgroup_root, extra);
        let agent = Agent {
            dir,
            child,
            cgroup_root,
        };
        agent.wait_listening();
        agent
    }

    fn spawn(dir: &Path, cgroup_root: &Path, extra: &[&str]) -> Child {
        Command::new(BOUNDARY)
            .arg("agent")
            .arg("--cgroup-root")
            .arg(cgroup_root)
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .arg("--socket")
            .arg(dir.join("agent.sock"))
            .arg("--hosts-file")
            .arg(dir.join("hosts"))
            .args(["--dns-server", "127.0.0.1:9"])
            .arg("--events")
            .arg(dir.join("all-events.jsonl"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts a new agent on the same files (after the old one died).
    fn restart(&mut self) {
        self.child = Agent::spawn(self.dir.path(), &self.cgroup_root, &[]);
        self.wait_listening();
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent did not start listening"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `boundary run` as `nobody`, through this agent.
    fn run_as_nobody(&self, extra: &[&str], cmd: &[&str]) -> Output {
        self.nobody_command(extra, cmd).output().unwrap()
    }

    fn nobody_command(&self, extra: &[&str], cmd: &[&str]) -> Command {
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
        .arg(self.socket())
        .args(extra)
        .arg("--")
        .args(cmd)
        .current_dir(self.dir.path())
        .stdin(Stdio::null());
        c
    }

    /// Every event the agent wrote (its `--events` file), after the session ended.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("all-events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until the agent's events file has an event matching `pred`.
    fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event; events: {:#?}",
                self.events()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // Sessions end with their commands; then their parent and our root can go.
        let deadline = Instant::now() + Duration::from_secs(5);
        let parent = self.cgroup_root.join("boundary");
        while std::fs::read_dir(&parent)
            .is_ok_and(|d| d.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir())))
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        // A session claimed by an agent that was killed before it started has no process:
        // remove it as a restarted agent would.
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

/// Waits (bounded) until a marker file a confined command writes exists.
fn wait_for_file(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn policy(extra_rules: &str) -> String {
    format!(
        "name: daemon-test\nallow_loopback: false\nlog_dir: LOG_DIR\nallowlist:\n  - \"domain=allowed.test\"\n{extra_rules}"
    )
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn python(script: &str) -> Vec<String> {
    vec!["python3".into(), "-c".into(), script.into()]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn an_unprivileged_user_wraps_a_command_through_the_agent() {
    let allowed = Counted::start("127.0.0.2");
    let blocked = Counted::start("127.0.0.3");
    let agent = Agent::start(&policy(""));
    let script = format!(
        "import socket, os\n\
         s = socket.create_connection(('127.0.0.2', {a})); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print('allowed', s.recv(100).endswith(b'hello'))\n\
         try:\n    socket.create_connection(('127.0.0.3', {b}), timeout=2).sendall(b'secret'); print('blocked reached')\n\
         except PermissionError:\n    print('blocked eperm')\n\
         st = open('/proc/self/status').read()\n\
         print([l.split()[1] for l in st.splitlines() if l.startswith(('NoNewPrivs', 'CapEff', 'CapAmb'))])\n\
         print(open('/proc/self/cgroup').read().strip().splitlines()[-1])\n\
         print(os.getuid(), os.environ['BOUNDARY_SESSION_ID'] != '', os.environ['BOUNDARY_POLICY'])\n",
        a = allowed.port,
        b = blocked.port
    );
    let started = Instant::now();
    let out = agent.run_as_nobody(&["--events", "-"], &refs(&python(&script)));
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let o = stdout(&out);
    assert!(o.contains("allowed True\n"), "{}", text(&out));
    assert!(o.contains("blocked eperm\n"), "{}", text(&out));
    assert!(
        o.contains("['0000000000000000', '0000000000000000', '1']"),
        "{}",
        text(&out)
    );
    assert!(o.contains("/boundary/"), "{}", text(&out));
    assert!(o.contains("65534 True daemon-test\n"), "{}", text(&out));
    assert_eq!(blocked.received(), 0, "the forbidden listener got bytes");
    assert!(allowed.received() > 0);
    // The events streamed to the client's stdout tell the truth about who and where.
    let streamed: Vec<Value> = o
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let deny = streamed
        .iter()
        .find(|e| e["event.action"] == "deny")
        .unwrap_or_else(|| panic!("no deny event streamed: {}", text(&out)));
    assert_eq!(deny["destination.address"], "127.0.0.3");
    assert_eq!(deny["destination.port"], blocked.port);
    assert_eq!(deny["user.id"], NOBODY);
    assert_eq!(deny["user.name"], "nobody");
    // The allow event is read after the process exited (allow events are collected in
    // batches): it still names the process and its command line.
    let allow = streamed
        .iter()
        .find(|e| e["event.action"] == "allow")
        .unwrap_or_else(|| panic!("no allow event streamed: {}", text(&out)));
    assert_eq!(allow["thread.name"], "python3");
    assert_eq!(allow["process.executable.name"], "python3");
    assert!(
        allow["process.command_line"]
            .as_str()
            .is_some_and(|c| c.starts_with("python3 -c import socket")),
        "{allow}"
    );
    assert!(streamed
        .iter()
        .any(|e| e["event.name"] == "boundary.session.start"));
    assert!(streamed
        .iter()
        .any(|e| e["event.name"] == "boundary.session.end" && e["process.exit.code"] == 0));
    // And the policy's log_dir has the session's file, readable by root only.
    let session = deny["session.id"].as_str().unwrap();
    let file = agent.path("logs").join(format!("boundary-{session}.jsonl"));
    assert!(std::fs::read_to_string(&file).unwrap().contains("\"deny\""));
    // Events name users and command lines: not world-readable.
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "{file:?} has mode {mode:o}");
    eprintln!("boundary run through the agent took {elapsed:?}");
}

#[test]
fn without_an_agent_an_unprivileged_user_is_told_so_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let marker = dir.path().join("ran");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(BOUNDARY)
        .args(["run", "--socket"])
        .arg(dir.path().join("none.sock"))
        .args(["--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the boundary agent is not running"),
        "{}",
        text(&out)
    );
    assert!(!marker.exists());
}

#[test]
fn the_agent_refuses_policy_files_others_could_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "name: x\nallowlist: []\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = |path: &Path| {
        Command::new(BOUNDARY)
            .arg("agent")
            .arg("--config")
            .arg(path)
            .arg("--socket")
            .arg(dir.path().join("a.sock"))
            .output()
            .unwrap()
    };
    let out = run(&config);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable by group or others"),
        "{}",
        text(&out)
    );
    // A symlink (to a file root owns) is refused too: it could be pointed anywhere, and
    // the agent would print what it read there.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("link.yaml");
    std::os::unix::fs::symlink(&config, &link).unwrap();
    let out = run(&link);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    // Owned by someone else.
    std::os::unix::fs::chown(&config, Some(NOBODY), None).unwrap();
    let out = run(&config);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534"));
}

#[test]
fn a_confined_process_cannot_start_or_join_another_session() {
    let blocked = Counted::start("127.0.0.3");
    let agent = Agent::start(&policy(""));
    // From inside, ask the agent for a new session (which would have its own cgroup): refused.
    let inner = format!(
        "{BOUNDARY} run --socket {} -- python3 -c \"import socket; socket.create_connection(('127.0.0.3', {}), timeout=2).sendall(b'x'); print('escaped')\"; echo inner=$?",
        agent.socket().display(),
        blocked.port
    );
    let out = agent.run_as_nobody(&[], &["sh", "-c", &inner]);
    let o = stdout(&out);
    assert!(o.contains("inner=125"), "{}", text(&out));
    assert!(!o.contains("escaped"), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already runs inside a boundary"),
        "{}",
        text(&out)
    );
    assert_eq!(blocked.received(), 0);
}

#[test]
fn escapes_through_the_host_fail_from_inside() {
    let blocked = Counted::start("127.0.0.3");
    let agent = Agent::start(&policy(""));
    let cgroup_root = boundary_agent::cgroup::cgroup2_root().unwrap();
    // A process of the same user, outside any boundary: the confined one must not be able to
    // ptrace it, signal it, or talk to its abstract Unix socket.
    let mut outside = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([
            // Absolute: the caller's PATH may point at interpreters nobody cannot run.
            "/usr/bin/python3",
            "-c",
            "import socket, time\n\
             s = socket.socket(socket.AF_UNIX); s.bind('\\0boundary-test-outside'); s.listen(1)\n\
             s.settimeout(8)\n\
             try:\n    c, _ = s.accept(); print('accepted', flush=True)\nexcept OSError:\n    pass\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Listening once its abstract address is in the kernel's table.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .contains("@boundary-test-outside")
    {
        assert!(
            Instant::now() < deadline,
            "the outside listener did not start"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let pid = outside.id();
    let script = format!(
        r#"
import ctypes, os, signal, socket, errno
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, f):
    try:
        r = f()
        print(name, "ok" if r is None or r == 0 else "fail:%s" % os.strerror(ctypes.get_errno() or 1))
    except OSError as e:
        print(name, "fail:%s" % e.strerror)
# ptrace(PTRACE_ATTACH=16)
attempt("ptrace", lambda: libc.ptrace(16, {pid}, 0, 0) and -1 or 0)
attempt("signal", lambda: os.kill({pid}, 0))
def abstract():
    s = socket.socket(socket.AF_UNIX); s.connect('\0boundary-test-outside')
attempt("abstract_unix", abstract)
def cgroup_escape():
    with open('{root}/cgroup.procs', 'w') as f: f.write(str(os.getpid()))
attempt("cgroup_procs_root", cgroup_escape)
def cgroup_mkdir():
    os.mkdir('{root}/boundary/escape-test')
attempt("cgroup_mkdir", cgroup_mkdir)
def unpin():
    for d in os.listdir('/sys/fs/bpf/boundary'):
        os.unlink('/sys/fs/bpf/boundary/%s/connect4' % d)
attempt("unpin", unpin)
attempt("kill_agent", lambda: os.kill({agent}, signal.SIGKILL))
def policy_edit():
    open('{config}', 'a').write('\n  - "ip=127.0.0.3"\n')
attempt("policy_edit", policy_edit)
def hosts_edit():
    open('{hosts}', 'a').write('127.0.0.3 allowed.test\n')
attempt("hosts_edit", hosts_edit)
attempt("setuid0", lambda: os.setuid(0))
try:
    socket.create_connection(('127.0.0.3', {port}), timeout=2).sendall(b'x'); print("connect ok")
except OSError as e:
    print("connect fail:%s" % e.strerror)
"#,
        pid = pid,
        root = cgroup_root.display(),
        agent = agent.child.id(),
        config = agent.path("config.yaml").display(),
        hosts = agent.path("hosts").display(),
        port = blocked.port,
    );
    let out = agent.run_as_nobody(&[], &refs(&python(&script)));
    let o = stdout(&out);
    for technique in [
        "ptrace",
        "signal",
        "abstract_unix",
        "cgroup_procs_root",
        "cgroup_mkdir",
        "unpin",
        "kill_agent",
        "policy_edit",
        "hosts_edit",
        "setuid0",
        "connect",
    ] {
        let line = o
            .lines()
            .find(|l| l.starts_with(&format!("{technique} ")))
            .unwrap_or_else(|| panic!("{technique} not tried: {}", text(&out)));
        assert!(
            line.contains(" fail:"),
            "{technique} succeeded from inside: {line}\n{}",
            text(&out)
        );
    }
    assert_eq!(blocked.received(), 0);
    // The outside process was never reached, and is alive.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut heard = String::new();
    let _ = BufReader::new(outside.stdout.take().unwrap()).read_line(&mut heard);
    let _ = outside.wait();
    assert!(
        !heard.contains("accepted"),
        "the abstract socket was reached"
    );
    // The agent survived and still serves.
    assert!(agent.child.try_wait_alive());
}

trait AliveExt {
    fn try_wait_alive(&self) -> bool;
}

impl AliveExt for Child {
    fn try_wait_alive(&self) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.id() as i32), None).is_ok()
    }
}

#[test]
fn setuid_programs_inside_cannot_regain_root() {
    let agent = Agent::start(&policy(""));
    // A setuid-root copy of `id` (what sudo or su would rely on): no_new_privs makes the
    // kernel ignore the bit.
    let suid = agent.path("suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let outside = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&suid)
        .arg("-u")
        .output()
        .unwrap();
    // Outside a boundary the bit works (this is what the test would catch inside).
    assert_eq!(stdout(&outside).trim(), "0", "{}", text(&outside));
    let out = agent.run_as_nobody(&[], &[suid.to_str().unwrap(), "-u"]);
    assert_eq!(stdout(&out).trim(), "65534", "{}", text(&out));
}

#[test]
fn root_callers_must_name_the_user_and_sudo_drops_to_the_invoker() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, "name: c\nallowlist: []\n").unwrap();
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut c = Command::new(BOUNDARY);
        c.arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--dns-server", "127.0.0.1:9"])
            .args(extra)
            .args(["--", "id", "-u"])
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&[], &[]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to run the command as root"));
    let out = run(&[("SUDO_UID", "65534"), ("SUDO_GID", "65534")], &[]);
    assert_eq!(stdout(&out).trim(), "65534", "{}", text(&out));
    let out = run(&[], &["--user", "nobody"]);
    assert_eq!(stdout(&out).trim(), "65534", "{}", text(&out));
    let out = run(&[], &["--root"]);
    assert_eq!(stdout(&out).trim(), "0", "{}", text(&out));
}

#[test]
fn status_sessions_and_events_show_what_the_agent_does() {
    let blocked = Counted::start("127.0.0.3");
    let agent = Agent::start(&policy(""));
    // Unique on the machine: another test run may be going on at the same time.
    let inspect = format!("inspect-me-{}", std::process::id());
    let ready = agent.path("ready");
    let script = format!(
        "import socket, time, os\n\
         try:\n    socket.create_connection(('127.0.0.3', {}), timeout=2)\nexcept OSError:\n    pass\n\
         open('{}', 'w').close()\n\
         time.sleep(30)\n",
        blocked.port,
        ready.display()
    );
    let mut session = agent
        .nobody_command(&["--session-id", &inspect], &refs(&python(&script)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&ready, "the session did not start");
    let ask = |args: &[&str], as_nobody: bool| {
        let mut c = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(BOUNDARY);
            c
        } else {
            Command::new(BOUNDARY)
        };
        c.args(args)
            .arg("--socket")
            .arg(agent.socket())
            .output()
            .unwrap()
    };
    let status = ask(&["status"], true);
    assert!(status.status.success(), "{}", text(&status));
    let s = stdout(&status);
    assert!(s.contains("agent      running"), "{s}");
    assert!(s.contains("daemon-test"), "{s}");
    assert!(s.contains("1 running (1 yours)"), "{s}");
    let sessions = ask(&["sessions"], true);
    assert!(stdout(&sessions).contains(&inspect), "{}", text(&sessions));
    assert!(stdout(&sessions).contains("nobody"), "{}", text(&sessions));
    let events = ask(&["events", "--action", "deny", "--session", &inspect], true);
    let e = stdout(&events);
    assert!(e.contains("deny"), "{}", text(&events));
    assert!(e.contains(&format!("127.0.0.3:{}", blocked.port)), "{e}");
    // Another unprivileged user sees neither the session nor its events.
    let other = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups"])
        .arg(BOUNDARY)
        .args(["sessions", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert!(other.status.success(), "{}", text(&other));
    assert!(!stdout(&other).contains(&inspect), "{}", text(&other));
    let other_events = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups"])
        .arg(BOUNDARY)
        .args(["events", "--json", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert!(!stdout(&other_events).contains(&inspect));
    // --follow sees new events as they happen.
    let mut follow = Command::new(BOUNDARY)
        .args(["events", "--follow", "--json", "--socket"])
        .arg(agent.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(session.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = session.wait();
    // Read on a thread, waited for with a deadline: a follower that never prints must fail
    // the test, not hang it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout_of_follow = follow.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout_of_follow).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_end = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if line.contains("boundary.session.end") && line.contains(&inspect) {
            saw_end = true;
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(saw_end, "events --follow did not show the session end");
    agent.wait_event("session end", |e| {
        e["event.name"] == "boundary.session.end" && e["session.id"] == inspect.as_str()
    });
}

#[test]
fn a_killed_agent_leaves_sessions_confined_and_a_new_one_adopts_them() {
    let blocked = Counted::start("127.0.0.3");
    let mut agent = Agent::start(&policy(""));
    let id = format!("adopt-me-{}", std::process::id());
    let go = agent.path("go");
    let go2 = agent.path("go2");
    let ready = agent.path("ready");
    let script = format!(
        "import socket, time, os\n\
         def attempt():\n\
         \x20   try:\n\
         \x20       socket.create_connection(('127.0.0.3', {port}), timeout=2).sendall(b'x'); print('reached', flush=True)\n\
         \x20   except OSError as e:\n\
         \x20       print('refused', e.errno, flush=True)\n\
         open('{ready}', 'w').close()\n\
         while not os.path.exists('{go}'): time.sleep(0.02)\n\
         attempt()\n\
         open('{go}.done', 'w').close()\n\
         while not os.path.exists('{go2}'): time.sleep(0.02)\n\
         attempt()\n",
        ready = ready.display(),
        go = go.display(),
        go2 = go2.display(),
        port = blocked.port
    );
    let session = agent
        .nobody_command(&["--session-id", &id], &refs(&python(&script)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_file(&ready, "the session did not start");
    // SIGKILL: no chance to clean anything up. The attempt made while no agent runs is
    // refused by the pinned programs, and its event waits in the pinned ring.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    std::fs::write(&go, "").unwrap();
    // The first attempt is made (and refused) while no agent is running.
    wait_for_file(
        &agent.path("go.done"),
        "the attempt without an agent did not happen",
    );
    agent.restart();
    agent.wait_event("adoption", |e| {
        e["event.name"] == "boundary.session.adopted" && e["session.id"] == id.as_str()
    });
    std::fs::write(&go2, "").unwrap();
    let out = session.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "refused 1\nrefused 1\n", "{}", text(&out));
    assert_eq!(blocked.received(), 0);
    let end = agent.wait_event("session end", |e| {
        e["event.name"] == "boundary.session.end" && e["session.id"] == id.as_str()
    });
    assert_eq!(
        end["boundary.session.end.reason"],
        "adopted_session_emptied"
    );
    // Both denials were recorded: the one made while no agent was running too.
    let denies = agent
        .events()
        .into_iter()
        .filter(|e| e["session.id"] == id.as_str() && e["event.action"] == "deny")
        .count();
    assert_eq!(denies, 2, "{:#?}", agent.events());
}

/// Starts `script` (python) as `nobody` inside the cgroup directory `cgroup`.
fn python_in_cgroup(cgroup: &Path, script: &str) -> Child {
    let procs = cgroup.join("cgroup.procs");
    let mut c = Command::new("python3");
    c.args(["-c", script]).stdout(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec (write to a file by path via
    // std::fs would allocate, so the path is prepared before).
    let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).unwrap();
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.spawn().unwrap()
}

#[test]
fn whole_workspace_mode_confines_running_processes_except_exempt_cgroups() {
    let workload_target = Counted::start("127.0.0.3");
    let control_target = Counted::start("127.0.0.3");
    let mount = boundary_agent::cgroup::cgroup2_root().unwrap();
    let workspace = mount.join(format!("boundary-ws-test-{}", std::process::id()));
    let control = workspace.join("control");
    std::fs::create_dir_all(&control).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let go = dir.path().join("go");
    let attempt = |port: u16| {
        format!(
            "import socket, time, os\n\
             while not os.path.exists('{go}'): time.sleep(0.02)\n\
             try:\n    socket.create_connection(('127.0.0.3', {port}), timeout=2).sendall(b'x'); print('reached', flush=True)\n\
             except OSError as e:\n    print('refused', e.errno, flush=True)\n",
            go = go.display()
        )
    };
    // Both started before the agent: whole-workspace mode confines what already runs.
    let workload = python_in_cgroup(&workspace, &attempt(workload_target.port));
    let control_process = python_in_cgroup(&control, &attempt(control_target.port));
    std::fs::write(
        dir.path().join("config.yaml"),
        "name: workspace-test\nallow_loopback: false\nallowlist:\n  - \"ip=127.0.0.2\"\n",
    )
    .unwrap();
    let mut agent = Command::new(BOUNDARY)
        .arg("agent")
        .arg("--config")
        .arg(dir.path().join("config.yaml"))
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .args(["--dns-server", "127.0.0.1:9"])
        .arg("--events")
        .arg(dir.path().join("events.jsonl"))
        .arg("--confine-cgroup")
        .arg(&workspace)
        .arg("--exempt-cgroup")
        .arg(&control)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(dir.path().join("agent.sock")).is_err() {
        assert!(Instant::now() < deadline, "the agent did not start");
        thread::sleep(Duration::from_millis(20));
    }
    // The agent dies; the workspace stays confined (pinned for good).
    let agent_pid = agent.id().to_string();
    agent.kill().unwrap();
    agent.wait().unwrap();
    // Any session it had claimed without a process in it is removed, as a restarted agent
    // would.
    for dir in std::fs::read_dir(mount.join("boundary")).unwrap().flatten() {
        let id = dir.file_name().to_string_lossy().into_owned();
        let owner = std::fs::read_to_string(format!("/run/boundary/sessions/{id}"));
        if owner.is_ok_and(|o| o.trim() == agent_pid) {
            boundary_agent::session::remove_unused(&mount, &id);
        }
    }
    std::fs::write(&go, "").unwrap();
    let workload_out = workload.wait_with_output().unwrap();
    let control_out = control_process.wait_with_output().unwrap();
    let pinned = Path::new("/sys/fs/bpf/boundary/workspace").is_dir();
    // Clean up before asserting: detach (remove the pins) and remove the cgroups.
    boundary_agent::loader::remove_pin_dir(Path::new("/sys/fs/bpf/boundary/workspace"));
    let _ = std::fs::remove_file("/run/boundary/sessions/workspace");
    let _ = std::fs::remove_dir(&control);
    let _ = std::fs::remove_dir(workspace.join("boundary-agent"));
    let _ = std::fs::remove_dir(&workspace);
    assert!(pinned, "the workspace programs were not pinned");
    assert_eq!(
        stdout(&workload_out),
        "refused 1\n",
        "{}",
        text(&workload_out)
    );
    assert_eq!(workload_target.received(), 0);
    assert_eq!(stdout(&control_out), "reached\n", "{}", text(&control_out));
    assert!(control_target.received() > 0);
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    assert!(events.contains("\"session.id\":\"workspace\""), "{events}");
}

#[test]
fn refused_system_calls_fail_with_eperm_and_each_is_an_event() {
    let agent = Agent::start(&policy(""));
    let script = r#"
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, f):
    try:
        f(); print(name, "ok")
    except OSError as e:
        print(name, "fail:%d" % e.errno)
attempt("packet", lambda: socket.socket(17, socket.SOCK_RAW, 0))
attempt("vsock", lambda: socket.socket(40, socket.SOCK_STREAM, 0))
attempt("alg", lambda: socket.socket(38, socket.SOCK_SEQPACKET, 0))
def userns():
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
attempt("userns", userns)
def bpf():
    if libc.syscall(321, 0, None, 0) < 0:
        raise OSError(ctypes.get_errno(), "bpf")
attempt("bpf", bpf)
"#;
    let out = agent.run_as_nobody(&["--events", "-"], &["python3", "-c", script]);
    let o = stdout(&out);
    for technique in ["packet", "vsock", "alg", "userns", "bpf"] {
        assert!(
            o.contains(&format!("{technique} fail:1\n")),
            "{technique}: {}",
            text(&out)
        );
    }
    let refusals: Vec<Value> = o
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["boundary.hook"] == "seccomp")
        .collect();
    let calls: Vec<(&str, Option<u64>)> = refusals
        .iter()
        .map(|e| {
            assert_eq!(e["event.action"], "deny", "{e}");
            assert_eq!(e["user.name"], "nobody", "{e}");
            assert_eq!(e["process.executable.name"], "python3", "{e}");
            (
                e["boundary.syscall"].as_str().unwrap(),
                e["boundary.socket.family"].as_u64(),
            )
        })
        .collect();
    for expected in [
        ("socket", Some(17)),
        ("socket", Some(40)),
        ("socket", Some(38)),
        ("unshare", None),
        ("bpf", None),
    ] {
        assert!(
            calls.contains(&expected),
            "no event for {expected:?}; got {calls:?}\n{}",
            text(&out)
        );
    }
}

#[test]
fn a_confined_process_sees_only_its_own_session() {
    let agent = Agent::start(&policy(""));
    let (other_id, looking_id) = (
        format!("other-session-{}", std::process::id()),
        format!("looking-session-{}", std::process::id()),
    );
    let ready = agent.path("ready-other");
    let other_script = format!(
        "import time\nopen('{}', 'w').close()\ntime.sleep(30)\n",
        ready.display()
    );
    let mut other = agent
        .nobody_command(&["--session-id", &other_id], &refs(&python(&other_script)))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&ready, "the other session did not start");
    let inner = format!(
        "{BOUNDARY} sessions --json --socket {s}; {BOUNDARY} events --json --socket {s}",
        s = agent.socket().display()
    );
    let out = agent.run_as_nobody(&["--session-id", &looking_id], &["sh", "-c", &inner]);
    // The other session's command, not just its client: its session then ends.
    let _ = boundary_agent::cgroup::kill_all(&agent.cgroup_root.join("boundary").join(&other_id));
    let _ = other.kill();
    let _ = other.wait();
    let o = stdout(&out);
    assert!(o.contains(&looking_id), "{}", text(&out));
    assert!(!o.contains(&other_id), "{}", text(&out));
}

/// A TCP listener that records what each connection sent (everything, until EOF).
struct Recording {
    port: u16,
    received: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recording {
    fn start(ip: &str) -> Recording {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let sink = sink.clone();
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf);
                    sink.lock().unwrap().extend_from_slice(&buf);
                });
            }
        });
        Recording { port, received }
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

#[test]
fn fifty_concurrent_sessions_with_their_own_policies_never_cross_talk() {
    const N: usize = 50;
    let ip = |i: usize| format!("127.0.0.{}", 10 + i);
    let listeners: Vec<Recording> = (0..N).map(|i| Recording::start(&ip(i))).collect();
    // One named policy per session, each allowing its own listener's address only; each
    // session also writes its own log (lossless, unlike the streams shared through the agent).
    let policies = tempfile::tempdir().unwrap();
    let logs = policies.path().join("logs");
    let mut extra = Vec::new();
    for i in 0..N {
        let path = policies.path().join(format!("s{i}.yaml"));
        std::fs::write(
            &path,
            format!(
                "name: s{i}\nallow_loopback: false\nlog_dir: {}\nallowlist:\n  - \"ip={}\"\n",
                logs.display(),
                ip(i)
            ),
        )
        .unwrap();
        extra.push(format!("--policy=s{i}={}", path.display()));
    }
    let agent = Agent::start_with(&policy(""), &refs(&extra));
    let targets: Vec<(String, u16)> = (0..N).map(|i| (ip(i), listeners[i].port)).collect();
    let go = agent.path("go");
    // Every session starts, says it is ready, waits until all are, then tries every listener,
    // sending its own tag to each one it reaches.
    let children: Vec<Child> = (0..N)
        .map(|i| {
            let script = format!(
                "import socket, os, time, errno\n\
                 open({ready:?}, 'w').close()\n\
                 while not os.path.exists({go:?}): time.sleep(0.02)\n\
                 print('session', os.environ['BOUNDARY_SESSION_ID'])\n\
                 for ip, port in {targets:?}:\n\
                 \x20   try:\n\
                 \x20       s = socket.create_connection((ip, port), timeout=5); s.sendall(b's{i:02}.'); s.close(); print(ip, 'ok')\n\
                 \x20   except OSError as e:\n\
                 \x20       print(ip, errno.errorcode.get(e.errno, e.errno))\n",
                ready = agent.path(&format!("ready-{i}")).display().to_string(),
                go = go.display().to_string(),
            );
            agent
                .nobody_command(
                    &["--policy", &format!("s{i}"), "--events", "-"],
                    &refs(&python(&script)),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..N {
        while !agent.path(&format!("ready-{i}")).exists() {
            assert!(Instant::now() < deadline, "session {i} did not start");
            thread::sleep(Duration::from_millis(20));
        }
    }
    // All fifty are running at once now.
    std::fs::write(&go, "").unwrap();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();

    let mut sessions = std::collections::HashMap::new();
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(out.status.code(), Some(0), "session {i}: {}", text(out));
        let o = stdout(out);
        let id = o
            .lines()
            .find_map(|l| l.strip_prefix("session "))
            .unwrap_or_else(|| panic!("session {i}: {}", text(out)))
            .to_string();
        for (j, (target, _)) in targets.iter().enumerate() {
            let want = if i == j { "ok" } else { "EPERM" };
            assert!(
                o.lines().any(|l| l == format!("{target} {want}")),
                "session {i} to {target}: expected {want}\n{}",
                text(out)
            );
        }
        // The events streamed to this session's client are its own.
        assert!(o
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .all(|e| e["session.id"] == id.as_str()));
        // Its log says exactly what happened to it: one deny per other session's listener,
        // one allow for its own, nothing lost.
        let log = session_log(&logs, &id);
        assert!(log.iter().all(|e| e["session.id"] == id.as_str()));
        let decided = |action: &str| -> Vec<String> {
            let mut v: Vec<String> = log
                .iter()
                .filter(|e| e["event.action"] == action)
                .map(|e| e["destination.address"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        let mut others: Vec<String> = (0..N).filter(|&j| j != i).map(&ip).collect();
        others.sort();
        assert_eq!(decided("deny"), others, "session {i}");
        assert_eq!(decided("allow"), [ip(i)], "session {i}");
        assert!(
            !log.iter()
                .any(|e| e["event.name"] == "boundary.events_lost"),
            "session {i} lost events"
        );
        sessions.insert(id, i);
    }
    assert_eq!(sessions.len(), N, "session ids are distinct");
    // Each listener heard from its own session only.
    for (j, l) in listeners.iter().enumerate() {
        assert_eq!(
            String::from_utf8_lossy(&l.received()),
            format!("s{j:02}."),
            "listener {j}"
        );
    }
    // The agent's own stream of every session's events: each decision carries the session
    // it belongs to, and that session's policy decided it.
    for d in agent
        .events()
        .iter()
        .filter(|e| e["event.name"] == "boundary.decision")
    {
        let i = sessions[d["session.id"].as_str().unwrap()];
        let dest = d["destination.address"].as_str().unwrap();
        match d["event.action"].as_str().unwrap() {
            "deny" => assert_ne!(dest, ip(i), "{d}"),
            "allow" => assert_eq!(dest, ip(i), "{d}"),
            other => panic!("unexpected action {other}: {d}"),
        }
    }
}

/// A session's own log file (its policy's `log_dir`), once it holds the session's end.
fn session_log(dir: &Path, id: &str) -> Vec<Value> {
    let path = dir.join(format!("boundary-{id}.jsonl"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if events
            .iter()
            .any(|e| e["event.name"] == "boundary.session.end")
        {
            return events;
        }
        assert!(Instant::now() < deadline, "session {id} did not end");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_session_flooding_the_shared_rings_costs_another_session_no_event() {
    // Summaries off: the flood must reach the rings record by record (folded, the reader
    // keeps up and nothing overflows).
    let agent = Agent::start(&policy("log_summary_interval: 0\n"));
    let go = agent.path("go-flood");
    // The hostile session: two processes denied as fast as they can for three seconds, each
    // counting its attempts.
    let flood = format!(
        "import socket, os, time\n\
         while not os.path.exists({go:?}): time.sleep(0.01)\n\
         def flood():\n\
         \x20   n = 0\n\
         \x20   end = time.time() + 3\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   while time.time() < end:\n\
         \x20       for _ in range(100):\n\
         \x20           try: s.connect(('127.0.0.3', 9))\n\
         \x20           except OSError: n += 1\n\
         \x20   return n\n\
         r, w = os.pipe()\n\
         if os.fork() == 0:\n\
         \x20   os.write(w, str(flood()).encode()); os._exit(0)\n\
         mine = flood(); os.wait()\n\
         print('attempts', mine + int(os.read(r, 64)))\n\
         print('session', os.environ['BOUNDARY_SESSION_ID'])\n",
        go = go.display().to_string()
    );
    // The quiet one: a hundred denials, spread over the flood.
    let quiet = format!(
        "import socket, os, time\n\
         while not os.path.exists({go:?}): time.sleep(0.01)\n\
         time.sleep(0.5)\n\
         for i in range(100):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   try: s.connect(('127.0.0.3', 10))\n\
         \x20   except OSError: pass\n\
         \x20   s.close(); time.sleep(0.02)\n\
         print('session', os.environ['BOUNDARY_SESSION_ID'])\n",
        go = go.display().to_string()
    );
    let hostile = agent
        .nobody_command(&["--deny-events-only"], &refs(&python(&flood)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let calm = agent
        .nobody_command(&[], &refs(&python(&quiet)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(500));
    std::fs::write(&go, "").unwrap();
    let hostile = hostile.wait_with_output().unwrap();
    let calm = calm.wait_with_output().unwrap();
    assert_eq!(hostile.status.code(), Some(0), "{}", text(&hostile));
    assert_eq!(calm.status.code(), Some(0), "{}", text(&calm));
    let field = |out: &Output, name: &str| {
        stdout(out)
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name}: {}", text(out)))
    };
    let attempts: u64 = field(&hostile, "attempts").parse().unwrap();
    let (hostile_id, calm_id) = (field(&hostile, "session"), field(&calm, "session"));
    let log = |id: &str| session_log(&agent.path("logs"), id);
    let lost = |events: &[Value]| -> u64 {
        events
            .iter()
            .filter(|e| e["event.name"] == "boundary.events_lost")
            .map(|e| {
                e["boundary.events_lost.deny"].as_u64().unwrap_or(0)
                    + e["boundary.events_lost.count"].as_u64().unwrap_or(0)
            })
            .sum()
    };
    let denials = |events: &[Value], port: u64| {
        events
            .iter()
            .filter(|e| e["event.action"] == "deny" && e["destination.port"] == port)
            .map(|e| e["boundary.event.count"].as_u64().unwrap_or(1))
            .sum::<u64>()
    };
    let hostile_log = log(&hostile_id);
    let calm_log = log(&calm_id);
    // The flood did overflow its share: some of its own events were lost, and counted.
    let hostile_lost = lost(&hostile_log);
    assert!(
        hostile_lost > 0,
        "the flood ({attempts} attempts, {} events) never filled the rings: the test proves nothing; {:#?}",
        denials(&hostile_log, 9),
        hostile_log.iter().filter(|e| e["event.name"] != "boundary.decision").collect::<Vec<_>>()
    );
    // Exact for the flooder: every attempt is an event or counted as lost.
    assert_eq!(denials(&hostile_log, 9) + hostile_lost, attempts);
    // The quiet session lost nothing.
    assert_eq!(denials(&calm_log, 10), 100, "{calm_log:#?}");
    assert_eq!(lost(&calm_log), 0);
}

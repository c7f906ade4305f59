//! The packages' install test: install both `.deb`s on a throwaway copy of this machine, check
//! what dpkg and the maintainer scripts left on disk, then start both services the way their
//! systemd units say and use them.
//!
//! The copy is an overlay of `/` whose writes land on a tmpfs, inside private mount, network
//! and pid namespaces (`unshare`): `dpkg -i` runs for real (postinst creates the `llm-bridge`
//! user in the copy's /etc/passwd), the host's own root is never written, and the only network
//! is the namespace's own loopback (plus 10.240.0.0/16 routed to it, so a "denied" address
//! exists without any route out). systemd cannot run here, so the test reads each installed
//! unit and starts its ExecStart as the unit would: its User/Group, WorkingDirectory, UMask,
//! and the directories the unit asks systemd for.
//!
//! The agent sees what it would see in a container: a cgroup namespace rooted at a fresh
//! cgroup of its own (with its own cgroup2 mount), a bpffs of its own and an empty /run. It
//! must not see the host's sessions: an agent adopts or sweeps every session it finds under
//! its cgroup root whose owner it cannot see, and those would be other agents' sessions.
//!
//! The outer half (`run`) re-executes xtask inside the namespaces (`inside`); when that
//! process, pid 1 of its namespace, exits, everything it started dies with it. The outer
//! half then removes the cgroup it made.

use crate::dist::Dist;
use crate::shell::{self, capture, step};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the copy of the machine is assembled (a tmpfs over /mnt, in the private mount
/// namespace only).
const SCRATCH: &str = "/mnt";
/// Routed to the namespace's loopback: reachable unconfined, not allowed by the default policy.
const DENIED_NET: &str = "10.240.0.0/16";
const DENIED_IP: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);
const NOBODY: &str = "65534";

pub fn run(dist: &Dist) -> Result<()> {
    step("install test: dpkg -i both packages in a private copy of this machine, start both services")?;
    let exe = std::env::current_exe().context("finding xtask's own executable")?;
    // The root of the test's cgroup namespace: a fresh cgroup, so that the agent inside sees
    // its own sessions and nobody else's.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let cgroup = cgroup2_mount()?.join(format!("boundary-install-test-{stamp}"));
    std::fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
    let mut cmd = Command::new("sh");
    // Into the fresh cgroup first: a cgroup namespace is rooted where its creator is.
    cmd.arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && shift && exec \"$@\"")
        .arg(&cgroup)
        .arg("--")
        .args([
            "unshare",
            "--cgroup",
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "--",
        ])
        .arg(exe)
        .arg("install-test-inside")
        .arg("--release-dir")
        .arg(&dist.release_dir)
        .args(&dist.packages);
    let result = shell::run(&mut cmd).context("the install test failed");
    remove_cgroup_tree(&cgroup);
    if cgroup.exists() {
        eprintln!("warning: could not remove {}", cgroup.display());
    }
    result
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
/// hybrid host).
fn cgroup2_mount() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 file system is mounted")
}

/// Removes a cgroup and its descendants (empty by now: every process of the namespace is gone).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    // Processes of a killed namespace may take a moment to leave their cgroup.
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs as pid 1 of fresh mount, network and pid namespaces.
pub fn inside(release_dir: &Path, packages: &[PathBuf]) -> Result<()> {
    let root = assemble_root()?;
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["route", "add", "local", DENIED_NET, "dev", "lo"],
    ] {
        capture(Command::new("ip").args(&args))?;
    }

    // The packages go into the copy's /tmp: the target dir may be on a file system the
    // overlay does not show.
    let mut in_root = Vec::new();
    for deb in packages {
        let name = deb.file_name().context("a package file name")?;
        std::fs::copy(deb, root.join("tmp").join(name))?;
        in_root.push(Path::new("/tmp").join(name));
    }
    eprintln!("dpkg -i {}", names(&in_root));
    let dpkg = |root: &Path| {
        capture(
            chroot(root)
                .args(["dpkg", "-i"])
                .args(&in_root)
                .env("DEBIAN_FRONTEND", "noninteractive")
                // dpkg wants ldconfig and start-stop-daemon on the PATH.
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        )
    };
    dpkg(&root)?;
    // A second install is an upgrade to the same version: the maintainer scripts must cope
    // with a user, directories and conffiles that already exist.
    dpkg(&root).context("installing the packages a second time (upgrade path)")?;

    check_files(&root)?;
    eprintln!("installed files: owners and modes as specified");

    let mut started = Started::default();
    let result = use_services(&root, release_dir, &mut started);
    started.stop();
    result
}

/// An overlay of `/` over a tmpfs, with /proc, /dev and /sys (cgroups, bpffs) of its own.
fn assemble_root() -> Result<PathBuf> {
    let scratch = Path::new(SCRATCH);
    mount(&["-t", "tmpfs", "-o", "mode=0755", "tmpfs", SCRATCH])?;
    for dir in ["upper", "work", "root"] {
        std::fs::create_dir(scratch.join(dir))?;
    }
    let root = scratch.join("root");
    mount(&[
        "-t",
        "overlay",
        "overlay",
        "-o",
        &format!("lowerdir=/,upperdir={SCRATCH}/upper,workdir={SCRATCH}/work"),
        &root.to_string_lossy(),
    ])?;
    let at = |p: &str| root.join(p).to_string_lossy().into_owned();
    mount(&["-t", "proc", "proc", &at("proc")])?;
    mount(&["--rbind", "/dev", &at("dev")])?;
    mount(&["--rbind", "/sys", &at("sys")])?;
    // The cgroup namespace's own view (its root is the fresh cgroup `run` made), with this
    // process moved below the root, as a container's init would be: the agent puts its
    // sessions beside it. And a bpffs of its own: pins and sessions of the host stay unseen.
    let cgroup2 = cgroup2_mount()?;
    let cgroup2 = cgroup2.strip_prefix("/")?;
    let cgroup2_at = at(&cgroup2.to_string_lossy());
    capture(Command::new("umount").arg(&cgroup2_at))?;
    mount(&["-t", "cgroup2", "boundary-test-cgroup2", &cgroup2_at])?;
    let init = root.join(cgroup2).join("init");
    std::fs::create_dir(&init)?;
    std::fs::write(init.join("cgroup.procs"), std::process::id().to_string())
        .context("moving the test into its cgroup namespace's init cgroup")?;
    mount(&["-t", "bpf", "bpf", &at("sys/fs/bpf")])?;
    // A fresh /run (no systemd, no other agent's socket) and /tmp.
    mount(&["-t", "tmpfs", "-o", "mode=0755", "tmpfs", &at("run")])?;
    mount(&["-t", "tmpfs", "-o", "mode=1777", "tmpfs", &at("tmp")])?;
    Ok(root)
}

fn mount(args: &[&str]) -> Result<()> {
    capture(Command::new("mount").args(args)).map(drop)
}

fn chroot(root: &Path) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root);
    c
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A user or group of the installed copy, by name.
fn id_of(root: &Path, db: &str, name: &str) -> Result<(u32, Vec<String>)> {
    let text = std::fs::read_to_string(root.join("etc").join(db))?;
    for line in text.lines() {
        let fields: Vec<String> = line.split(':').map(str::to_string).collect();
        if fields.first().map(String::as_str) == Some(name) {
            let id = fields
                .get(2)
                .and_then(|f| f.parse().ok())
                .context("an id")?;
            return Ok((id, fields));
        }
    }
    bail!("no {name} in the installed /etc/{db}")
}

fn check_files(root: &Path) -> Result<()> {
    let (bridge_uid, passwd) = id_of(root, "passwd", "llm-bridge")?;
    let (bridge_gid, _) = id_of(root, "group", "llm-bridge")?;
    ensure!(
        bridge_uid < 1000,
        "llm-bridge is not a system user: {passwd:?}"
    );
    ensure!(
        passwd[5] == "/var/lib/llm-bridge" && passwd[6].ends_with("nologin"),
        "llm-bridge's home or shell: {passwd:?}"
    );
    // (path, mode, uid, gid, directory?)
    let expected: [(&str, u32, u32, u32, bool); 11] = [
        ("usr/bin/boundary", 0o755, 0, 0, false),
        ("usr/sbin/boundary-entrypoint", 0o755, 0, 0, false),
        ("etc/boundary", 0o755, 0, 0, true),
        ("etc/boundary/config.yaml", 0o644, 0, 0, false),
        ("var/log/boundary", 0o750, 0, 0, true),
        (
            "lib/systemd/system/boundary-agent.service",
            0o644,
            0,
            0,
            false,
        ),
        ("usr/bin/llm-bridge", 0o755, 0, 0, false),
        ("lib/systemd/system/llm-bridge.service", 0o644, 0, 0, false),
        ("etc/llm-bridge", 0o755, 0, 0, true),
        ("etc/llm-bridge/bridge.yaml", 0o640, 0, bridge_gid, false),
        ("var/lib/llm-bridge", 0o700, bridge_uid, bridge_gid, true),
    ];
    let mut wrong = Vec::new();
    for (path, mode, uid, gid, dir) in expected {
        let meta = std::fs::symlink_metadata(root.join(path))
            .with_context(|| format!("/{path} was not installed"))?;
        let got = (meta.mode() & 0o7777, meta.uid(), meta.gid(), meta.is_dir());
        if got != (mode, uid, gid, dir) {
            wrong.push(format!(
                "/{path}: mode {:o} owner {}:{} dir {} (expected {mode:o} {uid}:{gid} dir {dir})",
                got.0, got.1, got.2, got.3
            ));
        }
    }
    ensure!(wrong.is_empty(), "installed files:\n{}", wrong.join("\n"));

    let conffiles = capture(chroot(root).args([
        "dpkg-query",
        "-W",
        "-f=${Conffiles}\n",
        "boundary",
        "llm-bridge",
    ]))?;
    for c in ["/etc/boundary/config.yaml", "/etc/llm-bridge/bridge.yaml"] {
        ensure!(conffiles.contains(c), "{c} is not a conffile:\n{conffiles}");
    }
    // The units as systemd reads them: an unknown or misspelt directive is only a warning
    // there, and a hardening line silently lost; here it fails.
    if root.join("usr/bin/systemd-analyze").exists() {
        for unit in ["boundary-agent.service", "llm-bridge.service"] {
            let out = chroot(root)
                .args(["systemd-analyze", "verify"])
                .arg(format!("/lib/systemd/system/{unit}"))
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            ensure!(
                out.status.success() && text.trim().is_empty(),
                "systemd-analyze verify {unit}: {}\n{text}",
                out.status
            );
        }
    }
    for bin in ["usr/bin/boundary", "usr/bin/llm-bridge"] {
        let sections = capture(
            Command::new("readelf")
                .args(["-S", "-W"])
                .arg(root.join(bin)),
        )?;
        ensure!(
            !sections.contains(".debug_info"),
            "/{bin} still has debug info"
        );
        ensure!(sections.contains(".symtab"), "/{bin} lost its symbol table");
    }
    Ok(())
}

/// The [Service] settings of an installed unit that matter for starting it by hand.
struct Unit {
    settings: HashMap<String, Vec<String>>,
}

impl Unit {
    fn read(root: &Path, name: &str) -> Result<Unit> {
        let path = root.join("lib/systemd/system").join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut settings: HashMap<String, Vec<String>> = HashMap::new();
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
            } else if in_service && !line.starts_with('#') {
                if let Some((k, v)) = line.split_once('=') {
                    settings
                        .entry(k.to_string())
                        .or_default()
                        .push(v.to_string());
                }
            }
        }
        Ok(Unit { settings })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Does what systemd does for RuntimeDirectory=, StateDirectory= and LogsDirectory=.
    fn make_directories(&self, root: &Path) -> Result<()> {
        for (key, base) in [
            ("RuntimeDirectory", "run"),
            ("StateDirectory", "var/lib"),
            ("LogsDirectory", "var/log"),
        ] {
            if let Some(name) = self.get(key) {
                let mode = self.get(&format!("{key}Mode")).unwrap_or("0755");
                let owner = format!(
                    "{}:{}",
                    self.get("User").unwrap_or("root"),
                    self.get("Group").unwrap_or("root")
                );
                capture(chroot(root).args([
                    "install",
                    "-d",
                    "-m",
                    mode,
                    "-o",
                    owner.split(':').next().unwrap_or("root"),
                    "-g",
                    owner.split(':').nth(1).unwrap_or("root"),
                    &format!("/{base}/{name}"),
                ]))?;
            }
        }
        Ok(())
    }

    /// A command line of the unit (ExecStart, ExecStartPre) run as the unit runs it.
    fn command(&self, root: &Path, key: &str) -> Result<Command> {
        let line = self
            .get(key)
            .with_context(|| format!("the unit has no {key}"))?;
        let mut c = chroot(root);
        if let Some(user) = self.get("User") {
            let group = self.get("Group").unwrap_or(user);
            c.args([
                "setpriv",
                &format!("--reuid={user}"),
                &format!("--regid={group}"),
                "--init-groups",
                "--",
            ]);
        }
        let umask = self.get("UMask").unwrap_or("0022");
        let dir = self.get("WorkingDirectory").unwrap_or("/");
        c.args([
            "sh",
            "-c",
            &format!("umask {umask} && cd {dir} && exec \"$@\""),
            "unit",
        ]);
        c.args(line.split_whitespace());
        c.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for env in self.settings.get("Environment").into_iter().flatten() {
            if let Some((k, v)) = env.split_once('=') {
                c.env(k, v);
            }
        }
        Ok(c)
    }
}

/// Processes started by the test, stopped (SIGTERM, then waited for) at the end.
#[derive(Default)]
struct Started {
    children: Vec<(String, Child)>,
}

impl Started {
    fn spawn(&mut self, what: &str, mut cmd: Command, log: &Path) -> Result<()> {
        let file = std::fs::File::create(log)?;
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.children.push((what.to_string(), child));
        Ok(())
    }

    /// Fails with the log if the named process already exited.
    fn alive(&mut self, what: &str, log: &Path) -> Result<()> {
        if let Some((_, child)) = self.children.iter_mut().find(|(w, _)| w == what) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{what} exited ({status}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    fn stop_one(&mut self, what: &str) {
        if let Some(i) = self.children.iter().position(|(w, _)| w == what) {
            let (_, mut child) = self.children.remove(i);
            terminate(&mut child);
        }
    }

    fn stop(&mut self) {
        // Newest first: the agent outlives the sessions it serves.
        while let Some((_, mut child)) = self.children.pop() {
            terminate(&mut child);
        }
    }
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_for(what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready()? {
        ensure!(Instant::now() < deadline, "{what}: not ready after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn use_services(root: &Path, release_dir: &Path, started: &mut Started) -> Result<()> {
    agent_allows_and_denies(root, started)?;
    entrypoint_confines_the_workspace_user(root)?;
    bridge_serves(root, release_dir, started)
}

/// The container pattern: /usr/sbin/boundary-entrypoint as pid 1 of a workspace starts the
/// agent, then the workspace's command as the workspace user, whose `boundary run` is confined.
fn entrypoint_confines_the_workspace_user(root: &Path) -> Result<()> {
    capture(chroot(root).args(["useradd", "--create-home", "coder"]))?;
    let port = serve_on_both(Ipv4Addr::LOCALHOST, DENIED_IP)?;
    let script = format!(
        "id -un; \
         boundary run -- curl -sS -o /dev/null --max-time 5 http://127.0.0.1:{port}/; \
         echo \"loopback $?\"; \
         boundary run -- curl -sS -o /dev/null --max-time 5 http://{DENIED_IP}:{port}/; \
         echo \"denied $?\""
    );
    // Files, not pipes: the agent the entrypoint starts keeps them open after the command ends.
    let stdout_file = root.join("tmp/entrypoint.out");
    let stderr_file = root.join("tmp/entrypoint.err");
    let status = chroot(root)
        .args(["/usr/sbin/boundary-entrypoint", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("WORKSPACE_USER", "coder")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_file)?)
        .stderr(std::fs::File::create(&stderr_file)?)
        .status()?;
    let stdout = std::fs::read_to_string(&stdout_file)?;
    ensure!(
        status.success() && stdout.ends_with("\ncoder\nloopback 0\ndenied 7\n"),
        "boundary-entrypoint sh -c '...': {status}\n{stdout}{}",
        std::fs::read_to_string(&stderr_file).unwrap_or_default()
    );
    // The agent it started keeps running, as in a container, until this namespace ends.
    eprintln!("boundary-entrypoint: agent started, command run as coder, 127.0.0.1 allowed, {DENIED_IP} refused");
    Ok(())
}

fn agent_allows_and_denies(root: &Path, started: &mut Started) -> Result<()> {
    let unit = Unit::read(root, "boundary-agent.service")?;
    unit.make_directories(root)?;
    capture(&mut unit.command(root, "ExecStartPre")?)
        .context("the unit's ExecStartPre (validate the installed policy)")?;
    let log = root.join("tmp/boundary-agent.log");
    started.spawn("boundary agent", unit.command(root, "ExecStart")?, &log)?;
    let socket = root.join("run/boundary/agent.sock");
    wait_for("the agent's socket", || {
        started.alive("boundary agent", &log)?;
        Ok(std::os::unix::net::UnixStream::connect(&socket).is_ok())
    })?;
    eprintln!("boundary agent: listening with the installed default policy");

    let port = serve_on_both(Ipv4Addr::LOCALHOST, DENIED_IP)?;
    let curl = |ip: Ipv4Addr| -> Vec<String> {
        vec![
            "curl".into(),
            "-sS".into(),
            "--max-time".into(),
            "5".into(),
            format!("http://{ip}:{port}/"),
        ]
    };
    // Unconfined, the "denied" address answers: a refusal below is Boundary's doing.
    let direct = capture(Command::new("curl").args(&curl(DENIED_IP)[1..]))?;
    ensure!(direct.contains("hello"), "unconfined curl got {direct:?}");

    let as_nobody = |args: &[String]| {
        let mut c = chroot(root);
        c.args([
            "setpriv",
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "/usr/bin/boundary",
            "run",
            "--",
        ])
        .args(args);
        c
    };
    let allowed = as_nobody(&curl(Ipv4Addr::LOCALHOST)).output()?;
    ensure!(
        allowed.status.success() && String::from_utf8_lossy(&allowed.stdout).contains("hello"),
        "boundary run -- curl 127.0.0.1 (loopback is allowed by default): {:?}\n{}",
        allowed.status,
        String::from_utf8_lossy(&allowed.stderr)
    );
    let denied = as_nobody(&curl(DENIED_IP)).output()?;
    ensure!(
        denied.status.code() == Some(7),
        "boundary run -- curl {DENIED_IP}: expected curl's exit 7 (connect refused with EPERM), \
         got {:?}\n{}",
        denied.status,
        String::from_utf8_lossy(&denied.stderr)
    );
    eprintln!("boundary run (as nobody): 127.0.0.1 answered, {DENIED_IP} refused (curl exit 7)");

    // The denial is on record in the installed log_dir.
    let logs = root.join("var/log/boundary");
    wait_for("the deny event in /var/log/boundary", || {
        for entry in std::fs::read_dir(&logs)? {
            let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
            if text.lines().any(|l| {
                l.contains("\"event.action\":\"deny\"") && l.contains(&DENIED_IP.to_string())
            }) {
                return Ok(true);
            }
        }
        Ok(false)
    })?;
    started.stop_one("boundary agent");
    // Both sessions ended with their commands: nothing of theirs is left pinned in the
    // (host's) bpffs.
    let mut sessions = Vec::new();
    for entry in std::fs::read_dir(&logs)? {
        let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line)?;
            if let Some(id) = event["session.id"].as_str() {
                if !sessions.iter().any(|s| s == id) {
                    sessions.push(id.to_string());
                }
            }
        }
    }
    ensure!(sessions.len() >= 2, "sessions in the events: {sessions:?}");
    for id in &sessions {
        let pins = root.join("sys/fs/bpf/boundary").join(id);
        ensure!(!pins.exists(), "{} was left behind", pins.display());
    }
    Ok(())
}

fn bridge_serves(root: &Path, release_dir: &Path, started: &mut Started) -> Result<()> {
    let unit = Unit::read(root, "llm-bridge.service")?;
    unit.make_directories(root)?;
    let log = root.join("tmp/llm-bridge.log");
    let listen = "127.0.0.1:8787";
    // An admin command as the README says to run it: as the service's user, in its directory,
    // with its umask, on the installed config.
    let admin = |args: &[&str]| -> Result<String> {
        let service = unit.command(root, "ExecStart")?;
        let mut argv: Vec<String> = service
            .get_args()
            .map(|a| a.to_string_lossy().into())
            .collect();
        let at = argv
            .iter()
            .position(|a| a == "/usr/bin/llm-bridge")
            .context("ExecStart runs /usr/bin/llm-bridge")?;
        argv.truncate(at + 1);
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.extend(["--config".into(), "/etc/llm-bridge/bridge.yaml".into()]);
        capture(
            Command::new("chroot")
                .args(&argv)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        )
    };
    let token = admin(&["keys", "create", "--user", "alice"])?
        .trim()
        .to_string();
    ensure!(token.starts_with("brg_"), "keys create printed {token:?}");
    let healthy = |started: &mut Started| -> Result<()> {
        wait_for("llm-bridge /healthz", || {
            started.alive("llm-bridge", &log)?;
            Ok(
                http(&["-o", "/dev/null", &format!("http://{listen}/healthz")])
                    .is_ok_and(|s| s == "200"),
            )
        })
    };
    let body = root.join("tmp/answer.json");
    let ask = || {
        http(&[
            "-o",
            &body.to_string_lossy(),
            &format!("http://{listen}/anthropic/v1/messages"),
            "-H",
            &format!("x-api-key: {token}"),
            "-H",
            "anthropic-version: 2023-06-01",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
        ])
    };

    // First with the installed config as it is: it serves, and no provider is configured yet.
    started.spawn("llm-bridge", unit.command(root, "ExecStart")?, &log)?;
    healthy(started)?;
    let unconfigured = ask()?;
    ensure!(
        unconfigured == "503",
        "with the shipped config (no provider), a request got {unconfigured}: {}",
        std::fs::read_to_string(&body).unwrap_or_default()
    );
    started.stop_one("llm-bridge");
    eprintln!("llm-bridge: serves with the installed config (/healthz 200, no provider: 503)");

    // Then as an admin would: the fake upstream as Anthropic, restart, a request.
    let upstream_log = root.join("tmp/fake-upstream.log");
    let mut upstream = Command::new(release_dir.join("fake-upstream"));
    upstream.args(["--listen", "127.0.0.1:9900"]);
    started.spawn("fake-upstream", upstream, &upstream_log)?;
    wait_for("fake-upstream on 127.0.0.1:9900", || {
        started.alive("fake-upstream", &upstream_log)?;
        Ok(std::net::TcpStream::connect("127.0.0.1:9900").is_ok())
    })?;
    let config = root.join("etc/llm-bridge/bridge.yaml");
    let edited = std::fs::read_to_string(&config)?
        + "providers:\n  anthropic:\n    base_url: http://127.0.0.1:9900\n    \
           api_key: sk-ant-fake-upstream-key\n";
    // Written in place: the file keeps its owner and mode, as an editor would leave them.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&config)?
        .write_all(edited.as_bytes())?;
    started.spawn("llm-bridge", unit.command(root, "ExecStart")?, &log)?;
    healthy(started)?;
    let status = ask()?;
    let answer = std::fs::read_to_string(&body).unwrap_or_default();
    ensure!(
        status == "200" && answer.contains("\"content\""),
        "a request through the installed bridge: {status} {answer}"
    );
    // The record is the service user's: the store is in the private state directory.
    wait_for("alice's request in `llm-bridge usage`", || {
        Ok(admin(&["usage", "--by", "user", "--format", "json"])?.contains("alice"))
    })?;
    let db = std::fs::metadata(root.join("var/lib/llm-bridge/bridge.db"))?;
    let (bridge_uid, _) = id_of(root, "passwd", "llm-bridge")?;
    ensure!(
        db.uid() == bridge_uid && db.mode() & 0o077 == 0,
        "/var/lib/llm-bridge/bridge.db: owner {} mode {:o}",
        db.uid(),
        db.mode() & 0o7777
    );
    eprintln!(
        "llm-bridge: as user llm-bridge, a key, a request through the fake upstream, its record"
    );
    Ok(())
}

/// curl in the namespace; returns the HTTP status code.
fn http(args: &[&str]) -> Result<String> {
    capture(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "%{http_code}"])
            .args(args)
            .stdin(Stdio::null()),
    )
    .map(|s| s.trim().to_string())
}

/// Serves a one-line HTTP answer on both addresses, same port; returns the port.
fn serve_on_both(a: Ipv4Addr, b: Ipv4Addr) -> Result<u16> {
    let first = TcpListener::bind((a, 0))?;
    let port = first.local_addr()?.port();
    let second = TcpListener::bind((b, port))?;
    for listener in [first, second] {
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let body = "hello\n";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }
    Ok(port)
}

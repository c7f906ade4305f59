//! What wrapping a command costs in wall time: `boundary run -- true` through the agent daemon
//! (as an unprivileged user, the normal case), single-shot as root, and the bare command as the
//! baseline, measured in one run with alternating rounds (figures go into BENCHMARKS.md).
//!
//! The daemon loads the programs once and shares them between its sessions, so a session
//! start is the client, a slot and the policy in the shared maps, a link per hook on a new
//! cgroup, the move of the command into it and the exec. Moving a process into a new cgroup
//! waits for an RCU grace period unless cgroup v2 is mounted with `favordynmods` (kernel
//! 6.0+): the agent rows are measured both ways (the mount option is switched for those rows
//! and restored, even on panic).
//!
//! Then the scale table: with 1, 50 and 200 sessions running in one agent (each a `sleep`
//! as nobody, with its own cgroup and slot), the start of one more `boundary run -- true`;
//! the kernel memory of the agent's programs and maps (the `memlock:` of every bpf map and
//! program the agent holds, from /proc/PID/fdinfo, each object counted once by its id); all
//! the kernel memory charged to the agent (it runs in a cgroup v1 memory cgroup of its own:
//! `memory.kmem.usage_in_bytes`, which also holds its sessions' cgroups, pins, links, DNS
//! proxy sockets); the bpf links pinned for its sessions; and its RSS. Against a single-shot
//! run's own set of programs and maps (what every session cost before they were shared),
//! measured in the same run. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");
const RUNS: usize = 30;
/// Between runs: sessions are started by people, not in a tight loop.
const GAP: Duration = Duration::from_millis(150);

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the startup benchmark loads eBPF programs: run it as root");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "name: startup\nallow_loopback: false\nallowlist:\n  - \"ip=127.0.0.2\"\n",
    )
    .unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = start_agent(&config, &socket);

    let nobody = |cmd: &mut Command| {
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    };
    type Row<'a> = (&'a str, Box<dyn Fn() -> Command + 'a>);
    let rows: Vec<Row> = vec![
        (
            "`true` as nobody, no boundary (baseline)",
            Box::new(|| {
                let mut c = Command::new("setpriv");
                nobody(&mut c);
                c.arg("/usr/bin/true");
                c
            }),
        ),
        (
            "`boundary run -- true` as nobody, through the agent",
            Box::new(|| {
                let mut c = Command::new("setpriv");
                nobody(&mut c);
                c.arg(BOUNDARY)
                    .args(["run", "--socket"])
                    .arg(&socket)
                    .args(["--", "/usr/bin/true"]);
                c
            }),
        ),
        (
            "`boundary run --config F --user nobody -- true` (single-shot, root)",
            Box::new(|| {
                let mut c = Command::new(BOUNDARY);
                c.args(["run", "--config"]).arg(&config).args([
                    "--dns-server",
                    "127.0.0.1:9",
                    "--user",
                    "nobody",
                    "--",
                    "/usr/bin/true",
                ]);
                c
            }),
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for _ in 0..RUNS {
        for (i, (_, make)) in rows.iter().enumerate() {
            std::thread::sleep(GAP);
            times[i].push(time(make()));
        }
    }
    // The agent rows again with cgroup2 mounted `favordynmods`.
    let mut favored = Vec::new();
    {
        let _mount = FavorDynmods::enable();
        for _ in 0..RUNS {
            std::thread::sleep(GAP);
            favored.push(time((rows[1].1)()));
        }
    }
    let scale = scale_rows(&agent, &config, &nobody);
    drop(agent);

    let base = median(&times[0]);
    println!(
        "Wall time of one wrapped command, {RUNS} runs per row, rounds alternating, {} ms apart:\n",
        GAP.as_millis()
    );
    println!("| what | median ms | p90 ms | max ms | added median ms |");
    println!("|---|---:|---:|---:|---:|");
    let line = |name: &str, v: &[f64]| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:+.1} |",
            median(v),
            pct(v, 0.9),
            pct(v, 1.0),
            median(v) - base
        );
    };
    for (i, (name, _)) in rows.iter().enumerate() {
        line(name, &times[i]);
    }
    line(
        "`boundary run -- true` as nobody, through the agent, cgroup2 `favordynmods`",
        &favored,
    );
    print_scale(&scale);
}

/// Session counts of the scale table.
const SCALE: [usize; 3] = [1, 50, 200];
/// Starts measured at each count.
const SCALE_RUNS: usize = 20;

struct ScaleRow {
    sessions: usize,
    start_ms: Vec<f64>,
    bpf_bytes: u64,
    kmem_bytes: Option<u64>,
    links: usize,
    rss_kb: u64,
}

struct Scale {
    rows: Vec<ScaleRow>,
    /// Agent RSS once every session has ended, and with the largest count running again.
    idle_rss_kb: u64,
    again_rss_kb: u64,
    /// What one single-shot run's own set holds (the cost of a session before sharing).
    single_shot_bytes: u64,
    /// All the kernel memory charged to it (its memory cgroup's kmem): programs, maps,
    /// session cgroup, links, pins, DNS proxy sockets.
    single_shot_kmem: Option<u64>,
}

fn scale_rows(agent: &Agent, config: &Path, nobody: &dyn Fn(&mut Command)) -> Scale {
    let socket = agent.socket.clone();
    let run_true = || {
        let mut c = Command::new("setpriv");
        nobody(&mut c);
        c.arg(BOUNDARY)
            .args(["run", "--socket"])
            .arg(&socket)
            .args(["--", "/usr/bin/true"]);
        c
    };
    let mut running: Vec<Child> = Vec::new();
    let mut rows = Vec::new();
    for &n in &SCALE {
        // n sessions running: n - 1 background ones, and the one whose start is measured
        // (it comes and goes), so the first row is "alone".
        while running.len() < n - 1 {
            let mut c = Command::new("setpriv");
            nobody(&mut c);
            let child = c
                .arg(BOUNDARY)
                .args(["run", "--socket"])
                .arg(&socket)
                .args(["--", "/usr/bin/sleep", "600"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            running.push(child);
        }
        agent.wait_sessions(n - 1);
        // The memory with n sessions: the background ones plus one more held open.
        let mut c = Command::new("setpriv");
        nobody(&mut c);
        let mut held = c
            .arg(BOUNDARY)
            .args(["run", "--socket"])
            .arg(&socket)
            .args(["--", "/usr/bin/sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        agent.wait_sessions(n);
        let (bpf_bytes, _) = bpf_memory(agent.pid());
        let kmem_bytes = agent.kmem();
        let links = agent.pinned_links();
        let rss_kb = rss_kb(agent.pid());
        let _ = held.kill();
        let _ = held.wait();
        agent.end_sessions_beyond(n - 1);
        agent.wait_sessions(n - 1);
        let mut start_ms = Vec::new();
        for _ in 0..SCALE_RUNS {
            std::thread::sleep(GAP);
            start_ms.push(time(run_true()));
        }
        rows.push(ScaleRow {
            sessions: n,
            start_ms,
            bpf_bytes,
            kmem_bytes,
            links,
            rss_kb,
        });
    }
    for mut child in running.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
    agent.end_sessions_beyond(0);
    agent.wait_sessions(0);

    // The RSS above includes the allocator's first growth (memory freed after each start is
    // kept for reuse). What a running session really holds: all ended, then the largest
    // count again, against the agent's RSS with none.
    let idle_rss_kb = rss_kb(agent.pid());
    let most = SCALE[SCALE.len() - 1];
    while running.len() < most {
        let mut c = Command::new("setpriv");
        nobody(&mut c);
        let child = c
            .arg(BOUNDARY)
            .args(["run", "--socket"])
            .arg(&socket)
            .args(["--", "/usr/bin/sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        running.push(child);
    }
    agent.wait_sessions(most);
    let again_rss_kb = rss_kb(agent.pid());
    for mut child in running {
        let _ = child.kill();
        let _ = child.wait();
    }
    agent.end_sessions_beyond(0);

    // A single-shot run holds a set of its own: its kernel memory is what every session cost
    // when each loaded its own copy.
    let ready = tempfile::tempdir().unwrap();
    // The command runs as nobody.
    std::fs::set_permissions(
        ready.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let marker = ready.path().join("ready");
    let memcg = Path::new("/sys/fs/cgroup/memory")
        .join(format!("boundary-bench-single-{}", std::process::id()));
    let memcg = std::fs::create_dir_all(&memcg).ok().map(|_| memcg);
    let mut single = Command::new(BOUNDARY);
    if let Some(memcg) = &memcg {
        join_before_exec(&mut single, memcg);
    }
    let mut single = single
        .args(["run", "--config"])
        .arg(config)
        .args(["--dns-server", "127.0.0.1:9", "--user", "nobody", "--"])
        .args(["/bin/sh", "-c"])
        .arg(format!("touch {}; exec sleep 600", marker.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the single-shot run did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (single_shot_bytes, _) = bpf_memory(single.id());
    let single_shot_kmem = memcg.as_ref().and_then(|m| {
        std::fs::read_to_string(m.join("memory.kmem.usage_in_bytes"))
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(single.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = single.wait();
    if let Some(memcg) = &memcg {
        let _ = std::fs::remove_dir(memcg);
    }
    Scale {
        rows,
        idle_rss_kb,
        again_rss_kb,
        single_shot_bytes,
        single_shot_kmem,
    }
}

fn print_scale(scale: &Scale) {
    let one = &scale.rows[0];
    let base_start = median(&one.start_ms);
    println!(
        "\nScale: sessions running in one agent, {SCALE_RUNS} starts of one more `boundary run -- true` per row, {} ms apart:\n",
        GAP.as_millis()
    );
    println!("| sessions running | start median ms | p90 ms | vs 1 session | bpf maps+programs (memlock) KiB | per additional session KiB | agent kernel memory (kmem) KiB | per additional session KiB | bpf links pinned | agent RSS MiB | RSS per additional session KiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let kib = |b: f64| format!("{:.1}", b / 1024.0);
    for row in &scale.rows {
        let extra = (row.sessions - 1).max(1) as f64;
        let first = row.sessions == 1;
        let per = |now: f64, then: f64| {
            if first {
                String::new()
            } else {
                kib((now - then) / extra)
            }
        };
        let kmem = row.kmem_bytes.map(|b| b as f64);
        println!(
            "| {} | {:.1} | {:.1} | {:.2}× | {:.0} | {} | {} | {} | {} | {:.1} | {} |",
            row.sessions,
            median(&row.start_ms),
            pct(&row.start_ms, 0.9),
            median(&row.start_ms) / base_start,
            row.bpf_bytes as f64 / 1024.0,
            per(row.bpf_bytes as f64, one.bpf_bytes as f64),
            kmem.map(|b| format!("{:.0}", b / 1024.0))
                .unwrap_or_default(),
            match (kmem, one.kmem_bytes) {
                (Some(now), Some(then)) => per(now, then as f64),
                _ => String::new(),
            },
            row.links,
            row.rss_kb as f64 / 1024.0,
            if first {
                String::new()
            } else {
                format!("{:.1}", (row.rss_kb as f64 - one.rss_kb as f64) / extra)
            },
        );
    }
    let most = SCALE[SCALE.len() - 1];
    println!(
        "\nAgent RSS after all {most} sessions ended: {:.1} MiB; with {most} running again: {:.1} MiB, {:.1} KiB per session (what a running session holds, the allocator's first growth excluded).",
        scale.idle_rss_kb as f64 / 1024.0,
        scale.again_rss_kb as f64 / 1024.0,
        (scale.again_rss_kb as f64 - scale.idle_rss_kb as f64) / most as f64
    );
    println!(
        "\nA single-shot run with its own set (one session, 1 MiB rings; what each session cost before sessions shared one set): {:.0} KiB of bpf maps and programs (memlock), {} KiB of kernel memory in all (kmem).",
        scale.single_shot_bytes as f64 / 1024.0,
        scale
            .single_shot_kmem
            .map(|b| format!("{:.0}", b as f64 / 1024.0))
            .unwrap_or_else(|| "?".into()),
    );
}

/// Sum of `memlock:` over the distinct bpf maps and programs process `pid` holds fds of, and
/// the number of distinct bpf links (pinned links the agent reopened, one per hook and
/// session).
fn bpf_memory(pid: u32) -> (u64, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut links = std::collections::HashSet::new();
    let mut total = 0;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    for fd in fds.flatten() {
        let Ok(text) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if let Some(id) = field("link_id:") {
            links.insert(id);
            continue;
        }
        let id = match (field("map_id:"), field("prog_id:")) {
            (Some(id), _) => format!("map {id}"),
            (None, Some(id)) => format!("prog {id}"),
            _ => continue,
        };
        if seen.insert(id) {
            total += field("memlock:")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (total, links.len())
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn time(mut cmd: Command) -> f64 {
    let t = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(status.success(), "{cmd:?}: {status}");
    ms
}

fn median(v: &[f64]) -> f64 {
    pct(v, 0.5)
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Agent {
    child: Child,
    socket: PathBuf,
    /// The agent's own cgroup root: its sessions are `<root>/boundary/<id>`.
    cgroup_root: PathBuf,
    /// The cgroup v1 memory cgroup the agent runs in (where its kernel memory is charged).
    memcg: Option<PathBuf>,
}

impl Agent {
    /// Kernel memory charged to the agent's memory cgroup.
    fn kmem(&self) -> Option<u64> {
        std::fs::read_to_string(self.memcg.as_ref()?.join("memory.kmem.usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Links pinned for the agent's sessions (one per hook and session).
    fn pinned_links(&self) -> usize {
        self.sessions()
            .iter()
            .filter_map(|p| {
                let id = p.file_name()?.to_owned();
                std::fs::read_dir(Path::new(boundary_agent::loader::PIN_ROOT).join(id)).ok()
            })
            .flat_map(|dir| dir.flatten())
            // Links are pinned under their program's name (lower case), maps under theirs.
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.chars().all(|c| !c.is_ascii_uppercase()))
            })
            .count()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sessions(&self) -> Vec<PathBuf> {
        boundary_agent::cgroup::sessions(&self.cgroup_root)
    }

    /// Waits until exactly `n` session cgroups exist with a process in them.
    fn wait_sessions(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let all = self.sessions();
            let live = all
                .iter()
                .filter(|p| boundary_agent::cgroup::session_populated(p))
                .count();
            if live == n && all.len() == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {n} sessions: {live} running, {} cgroups",
                all.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the newest sessions (by cgroup creation) until `keep` are left.
    fn end_sessions_beyond(&self, keep: usize) {
        let mut all: Vec<(std::time::SystemTime, PathBuf)> = self
            .sessions()
            .into_iter()
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        all.sort();
        for (_, path) in all.into_iter().skip(keep) {
            let _ = boundary_agent::cgroup::kill_all(&path);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.end_sessions_beyond(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.sessions().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(self.cgroup_root.join("boundary"));
        let _ = std::fs::remove_dir(&self.cgroup_root);
        if let Some(memcg) = &self.memcg {
            let _ = std::fs::remove_dir(memcg);
        }
    }
}

fn start_agent(config: &Path, socket: &Path) -> Agent {
    let cgroup_root = boundary_agent::cgroup::cgroup2_root()
        .unwrap()
        .join(format!("boundary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup_root).unwrap();
    // A memory cgroup of its own, joined before exec, so that everything the agent allocates in
    // the kernel is charged there (cgroup v1 keeps a kmem counter; v2 here has no memory
    // controller enabled).
    let memcg =
        Path::new("/sys/fs/cgroup/memory").join(format!("boundary-bench-{}", std::process::id()));
    let memcg = std::fs::create_dir_all(&memcg).ok().map(|_| memcg);
    let mut command = Command::new(BOUNDARY);
    if let Some(memcg) = &memcg {
        join_before_exec(&mut command, memcg);
    }
    let child = command
        .arg("agent")
        .arg("--cgroup-root")
        .arg(&cgroup_root)
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .args(["--dns-server", "127.0.0.1:9", "--log-level", "error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "the agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Agent {
        child,
        socket: socket.to_path_buf(),
        cgroup_root,
        memcg,
    }
}

/// Remounts the cgroup2 hierarchy with `favordynmods` and restores its flags on drop.
struct FavorDynmods {
    mount: PathBuf,
    was: bool,
}

impl FavorDynmods {
    fn enable() -> FavorDynmods {
        let mount = boundary_agent::cgroup::cgroup2_root().unwrap();
        let was = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(" - cgroup2 ") && l.contains("favordynmods"));
        remount(&mount, true);
        FavorDynmods { mount, was }
    }
}

impl Drop for FavorDynmods {
    fn drop(&mut self) {
        remount(&self.mount, self.was);
    }
}

fn remount(mount: &Path, favor: bool) {
    nix::mount::mount(
        None::<&str>,
        mount,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some(if favor { "favordynmods" } else { "" }),
    )
    .unwrap_or_else(|e| panic!("remounting {}: {e}", mount.display()));
}

/// Makes the child join the cgroup at `dir` before it executes.
fn join_before_exec(command: &mut Command, dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    // SAFETY: only open/write/close between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
}

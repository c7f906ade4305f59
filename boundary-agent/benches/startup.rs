//! What wrapping a command costs in wall time: `boundary run -- true` through the agent daemon
//! (as an unprivileged user, the normal case), single-shot as root, and the bare command as the
//! baseline, measured in one run with alternating rounds (figures go into BENCHMARKS.md).
//!
//! The daemon keeps a session prepared in advance (programs verified and attached), so what is
//! left is the client, the policy in the maps, the move of the command into its cgroup and
//! the exec. Moving a process into a new cgroup waits for an RCU grace period unless cgroup v2
//! is mounted with `favordynmods` (kernel 6.0+): the agent rows are measured both ways (the
//! mount option is switched for those rows and restored, even on panic). Needs root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");
const RUNS: usize = 30;
/// Between runs: sessions are started by people, not in a tight loop, and the agent refills
/// its prepared session in the background.
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

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn start_agent(config: &Path, socket: &Path) -> Agent {
    let child = Command::new(BOUNDARY)
        .arg("agent")
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
    Agent(child)
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

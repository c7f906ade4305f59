//! Boundary's cost, measured in one run on loopback (figures go into BENCHMARKS.md):
//!
//! - socket()+connect()+close() of a UDP socket to 127.0.0.2 outside any boundary (the
//!   baseline), inside a boundary with a 1-rule policy and inside one with 10,000 rules (mixed
//!   domains and CIDRs; the domains map to addresses that are installed but never contacted),
//!   each with and without allow events. Every program of the session is attached (sock_create
//!   runs at socket(), connect4 at connect(); setsockopt and egress are attached but this loop
//!   sends nothing). Allow events are deduplicated in the kernel per process and destination
//!   (one per second here), as in production;
//! - bulk TCP throughput over loopback (127.0.0.2) from outside any boundary and from inside
//!   one: the egress program runs for every packet a session socket sends (the first-line
//!   sock_addr programs only at connect), so the ratio is its per-packet cost;
//! - wall time of `boundary run -- true`;
//! - the agent's peak RSS with the 10,000-rule policy.
//!
//! Events are on, as in production: each one is enriched, serialized and written (to /dev/null).
//!
//! The measuring client is this same binary re-executed as `connect client ADDR N`, directly
//! for the baseline and under `boundary run` otherwise. Rounds alternate between the
//! configurations so that drift on the machine affects them all alike. Needs root.
//!
//! Why UDP: connect() on a UDP socket runs the same connect4 program as TCP but involves no
//! handshake, no accept queue and no peer, so the difference between rows is the cost of the
//! eBPF program alone (a TCP loop on loopback measures the listener's accept thread instead:
//! its queue overflows and SYN retransmits add 200+ ms outliers).

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");
const CONNECTS: usize = 50_000;
const ROUNDS: usize = 5;
/// Bytes per bulk TCP run, and rounds (alternating outside/inside).
const BULK_BYTES: u64 = 1 << 30;
const BULK_ROUNDS: usize = 11;

/// A policy file and extra `boundary run` flags.
type Boundary<'a> = (&'a Path, &'a [&'a str]);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        client(args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    if args.get(1).map(String::as_str) == Some("bulk") {
        bulk_client(args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    if !nix_is_root() {
        eprintln!("the boundary benchmark loads eBPF programs: run it as root");
        std::process::exit(1);
    }
    // Nothing needs to listen: a UDP connect only sets the default destination. The socket is
    // bound so that the port is ours for the run.
    let receiver = UdpSocket::bind("127.0.0.2:0").unwrap();
    let addr = receiver.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.yaml");
    std::fs::write(
        &one,
        "name: one-rule\nallow_loopback: false\nallowlist:\n  - \"ip=127.0.0.2\"\n",
    )
    .unwrap();
    let (big, hosts) = ten_thousand_rules(dir.path());

    let me = std::env::current_exe().unwrap();
    let configs: [(&str, Option<Boundary>); 5] = [
        ("outside any boundary (baseline)", None),
        ("boundary, 1 rule", Some((&one, &[]))),
        (
            "boundary, 1 rule, --deny-events-only",
            Some((&one, &["--deny-events-only"])),
        ),
        ("boundary, 10,000 rules", Some((&big, &[]))),
        (
            "boundary, 10,000 rules, --deny-events-only",
            Some((&big, &["--deny-events-only"])),
        ),
    ];
    let mut medians: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut p99s: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut rss_kb = 0u64;
    for round in 0..ROUNDS {
        for (i, (_, config)) in configs.iter().enumerate() {
            let mut cmd = match config {
                None => Command::new(&me),
                Some((path, extra)) => {
                    let mut c = Command::new(BOUNDARY);
                    c.args(["run", "--root", "--config"])
                        .arg(path)
                        .arg("--hosts-file")
                        .arg(&hosts)
                        .args(["--dns-server", "127.0.0.1:9", "--events", "/dev/null"])
                        .args(*extra)
                        .arg("--")
                        .arg(&me);
                    c
                }
            };
            let out = cmd
                .args(["client", &addr.to_string(), &CONNECTS.to_string()])
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "round {round}, {}: {out:?}",
                configs[i].0
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let f: Vec<f64> = text
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            medians[i].push(f[0]);
            p99s[i].push(f[1]);
            if i >= 3 {
                rss_kb = rss_kb.max(f[2] as u64);
            }
        }
    }
    let startup = startup_times(&one, &hosts);
    let bulk = bulk_rounds(&me, &one, &hosts);
    let kernel = kernel_time(&me, &one, &big, &hosts, addr);

    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let base = med(&medians[0]);
    let one_rule = med(&medians[1]);
    let mut out = String::new();
    out.push_str(&format!(
        "UDP socket()+connect()+close() to {addr}, {CONNECTS} per run, {ROUNDS} alternating rounds; figures \
         are the median over rounds of each run's median and p99.\n\n"
    ));
    out.push_str("| configuration | median µs | p99 µs | connects/s | added median µs | vs baseline | vs 1 rule |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for (i, (name, _)) in configs.iter().enumerate() {
        let m = med(&medians[i]);
        out.push_str(&format!(
            "| {name} | {m:.2} | {:.2} | {:.0} | {:+.2} | {:.3}× | {} |\n",
            med(&p99s[i]),
            1e6 / m,
            m - base,
            m / base,
            if i == 0 {
                "".to_string()
            } else {
                format!("{:.3}×", m / one_rule)
            },
        ));
    }
    let (outside, inside) = bulk;
    let (o, i) = (med(&outside.0), med(&inside.0));
    let (oc, ic) = (med(&outside.1), med(&inside.1));
    let best = |v: &[f64], max: bool| {
        v.iter()
            .copied()
            .fold(if max { f64::MIN } else { f64::MAX }, |a, b| {
                if max {
                    a.max(b)
                } else {
                    a.min(b)
                }
            })
    };
    let (ob, ib) = (best(&outside.0, true), best(&inside.0, true));
    let (ocb, icb) = (best(&outside.1, false), best(&inside.1, false));
    out.push_str(&format!(
        "\nBulk TCP over loopback to 127.0.0.2, {} GiB per run, {BULK_ROUNDS} alternating rounds; \
         Gbit/s and the sender's CPU time per GiB (user + system; the egress program runs in \
         it), median and best run (the best run is the least disturbed by anything else on \
         the machine):\n\n\
         | configuration | Gbit/s median | vs outside | Gbit/s best | vs outside | CPU ms/GiB median | vs outside | CPU ms/GiB best | vs outside |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | outside any boundary (baseline) | {o:.2} | 1.000× | {ob:.2} | 1.000× | {oc:.0} | 1.000× | {ocb:.0} | 1.000× |\n\
         | boundary, 1 rule (egress program on every packet) | {i:.2} | {:.3}× | {ib:.2} | {:.3}× | {ic:.0} | {:.3}× | {icb:.0} | {:.3}× |\n\
         \nRuns, Gbit/s: outside {}; inside {}.\n",
        BULK_BYTES >> 30,
        i / o,
        ib / ob,
        ic / oc,
        icb / ocb,
        runs(&outside.0),
        runs(&inside.0),
    ));
    out.push_str(&kernel);
    out.push_str(&format!(
        "\n`boundary run -- true`, wall time over {} runs: median {:.1} ms, max {:.1} ms.\n",
        startup.len(),
        startup[startup.len() / 2],
        startup[startup.len() - 1]
    ));
    out.push_str(&format!(
        "Agent peak RSS (VmHWM) with the 10,000-rule policy: {:.1} MB.\n",
        rss_kb as f64 / 1024.0
    ));
    print!("{out}");
    std::io::stdout().flush().unwrap();
}

/// One extra instrumented run per configuration with the kernel's BPF run-time statistics
/// on (BPF_ENABLE_STATS, only while this pass runs: they add two clock reads to every program
/// run, so the timed rounds above run without them): the programs' own time per run,
/// independent of whatever else the machine is doing.
fn kernel_time(me: &Path, one: &Path, big: &Path, hosts: &Path, addr: SocketAddr) -> String {
    let _stats = enable_bpf_stats();
    let sink = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in sink.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let programs = ["sock_create", "connect4", "egress"];
    let mut out = String::from(
        "\nIn-kernel time per program run (one extra run each, BPF_ENABLE_STATS on; mean ns per run, \
         runs; the kernel's two clock reads around each run are included, so an empty program \
         shows some tens of ns):\n\n\
         | configuration | sock_create (socket()) | connect4 (connect()) | egress (per packet) |\n|---|---:|---:|---:|\n",
    );
    let connect = || vec!["client".to_string(), addr.to_string(), CONNECTS.to_string()];
    let cases: [(&str, &Path, &[&str], Vec<String>); 5] = [
        ("connect loop, 1 rule, allow events on", one, &[], connect()),
        (
            "connect loop, 1 rule, --deny-events-only",
            one,
            &["--deny-events-only"],
            connect(),
        ),
        (
            "connect loop, 10,000 rules, allow events on",
            big,
            &[],
            connect(),
        ),
        (
            "connect loop, 10,000 rules, --deny-events-only",
            big,
            &["--deny-events-only"],
            connect(),
        ),
        (
            "bulk TCP, 1 GiB",
            one,
            &[],
            vec!["bulk".into(), sink_addr.to_string(), BULK_BYTES.to_string()],
        ),
    ];
    for (n, (name, config, extra, args)) in cases.iter().enumerate() {
        let session = format!("bench-{}-{n}", std::process::id());
        let hold = std::env::temp_dir().join(format!("{session}.hold"));
        let _ = std::fs::remove_file(&hold);
        let mut child = Command::new(BOUNDARY)
            .args(["run", "--root", "--config"])
            .arg(config)
            .arg("--hosts-file")
            .arg(hosts)
            .args([
                "--dns-server",
                "127.0.0.1:9",
                "--events",
                "/dev/null",
                "--session-id",
                &session,
            ])
            .args(*extra)
            .arg("--")
            .arg(me)
            .args(args)
            .env("BENCH_HOLD", &hold)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let cells: Vec<String> = programs
            .iter()
            .map(|p| match program_stats(&session, p) {
                Some((_, 0)) => "0 runs".to_string(),
                Some((ns, runs)) => format!("{:.0} ns ({runs})", ns as f64 / runs as f64),
                None => "n/a".to_string(),
            })
            .collect();
        std::fs::write(&hold, "").unwrap();
        let _ = child.wait();
        let _ = std::fs::remove_file(&hold);
        out.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            cells[0], cells[1], cells[2]
        ));
    }
    out
}

/// (run time ns, run count) of a session's program, through its pinned link.
fn program_stats(session: &str, program: &str) -> Option<(u64, u64)> {
    let path = Path::new("/sys/fs/bpf/boundary")
        .join(session)
        .join(program);
    let link = aya::programs::links::PinnedLink::from_pin(&path).ok()?;
    let id = aya::programs::links::FdLink::from(link)
        .info()
        .ok()?
        .program_id();
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
}

/// BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): statistics stay on while the returned fd is open.
fn enable_bpf_stats() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let mut attr = [0u8; 8];
    // SAFETY: attr is a valid bpf_attr (enable_stats.type = BPF_STATS_RUN_TIME = 0).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    // SAFETY: a new fd nobody else owns.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

fn runs(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bulk TCP: a sink on 127.0.0.2 (outside any boundary) reads everything; the client (this
/// binary, `bulk ADDR BYTES`) runs outside, then inside a boundary, alternately.
/// Per side: (Gbit/s, sender CPU ms per GiB) of each run.
type Bulk = (Vec<f64>, Vec<f64>);

fn bulk_rounds(me: &Path, config: &Path, hosts: &Path) -> (Bulk, Bulk) {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let mut outside: Bulk = (Vec::new(), Vec::new());
    let mut inside: Bulk = (Vec::new(), Vec::new());
    for _ in 0..BULK_ROUNDS {
        for boundary in [false, true] {
            let mut cmd = if boundary {
                let mut c = Command::new(BOUNDARY);
                c.args(["run", "--root", "--config"])
                    .arg(config)
                    .arg("--hosts-file")
                    .arg(hosts)
                    .args(["--dns-server", "127.0.0.1:9", "--events", "/dev/null", "--"])
                    .arg(me);
                c
            } else {
                Command::new(me)
            };
            let out = cmd
                .args(["bulk", &addr.to_string(), &BULK_BYTES.to_string()])
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(out.status.success(), "bulk run: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            let f: Vec<f64> = text
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            let side = if boundary { &mut inside } else { &mut outside };
            side.0.push(f[0]);
            side.1.push(f[1]);
        }
    }
    (outside, inside)
}

/// Sends `bytes` over one TCP connection and prints Gbit/s (connect to the sink's EOF).
fn bulk_client(addr: SocketAddr, bytes: u64) {
    use std::io::Write as _;
    let chunk = vec![0x5au8; 1 << 18];
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
    let secs = t.elapsed().as_secs_f64();
    // The sender's own CPU time (user + system): the egress program runs in it, and it is
    // less disturbed than wall time by whatever else the machine runs.
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu_s = cpu(ru.ru_utime) + cpu(ru.ru_stime);
    println!(
        "{} {}",
        bytes as f64 * 8.0 / secs / 1e9,
        cpu_s * 1e3 / (bytes as f64 / (1u64 << 30) as f64)
    );
    hold();
}

/// 5,000 domains (hosts file → 10.x.y.1) and 5,000 CIDRs, plus the rule the client needs.
fn ten_thousand_rules(dir: &Path) -> (PathBuf, PathBuf) {
    let mut config = String::from("name: ten-thousand\nallow_loopback: false\nallowlist:\n");
    let mut hosts = String::new();
    for i in 0..5_000u32 {
        config.push_str(&format!("  - \"domain=d{i}.bench.test port=443\"\n"));
        hosts.push_str(&format!(
            "10.{}.{}.1 d{i}.bench.test\n",
            100 + i / 256,
            i % 256
        ));
    }
    for i in 0..5_000u32 {
        config.push_str(&format!(
            "  - \"cidr=172.{}.{}.0/24 port={}\"\n",
            16 + i / 256 % 16,
            i % 256,
            1000 + i % 50
        ));
    }
    config.push_str("  - \"ip=127.0.0.2\"\n");
    let c = dir.join("ten-thousand.yaml");
    let h = dir.join("hosts");
    std::fs::write(&c, config).unwrap();
    std::fs::write(&h, hosts).unwrap();
    (c, h)
}

fn startup_times(config: &Path, hosts: &Path) -> Vec<f64> {
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let status = Command::new(BOUNDARY)
                .args(["run", "--root", "--config"])
                .arg(config)
                .arg("--hosts-file")
                .arg(hosts)
                .args(["--dns-server", "127.0.0.1:9", "--", "true"])
                .status()
                .unwrap();
            assert!(status.success());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times
}

/// Connects and closes `n` times; prints median µs, p99 µs and the parent's VmHWM in kB.
fn client(addr: SocketAddr, n: usize) {
    let mut samples = Vec::with_capacity(n);
    // Warm up (first connects pay for page faults and the listener's accept thread).
    for _ in 0..2_000 {
        connect_close(addr);
    }
    for _ in 0..n {
        let t = Instant::now();
        connect_close(addr);
        samples.push(t.elapsed());
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let hwm = std::fs::read_to_string(format!(
        "/proc/{}/status",
        std::os::unix::process::parent_id()
    ))
    .ok()
    .and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    })
    .unwrap_or(0);
    println!("{} {} {hwm}", us(samples[n / 2]), us(samples[n * 99 / 100]));
    hold();
}

/// With BENCH_HOLD=path: stay alive (keeping the session and its programs) until the file
/// exists, so the benchmark can read the programs' in-kernel statistics first.
fn hold() {
    use std::io::Write as _;
    let Ok(path) = std::env::var("BENCH_HOLD") else {
        return;
    };
    std::io::stdout().flush().unwrap();
    while !Path::new(&path).exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn connect_close(addr: SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(addr).unwrap();
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

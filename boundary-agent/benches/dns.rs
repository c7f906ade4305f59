//! The DNS proxy's cost, measured in one run on loopback (figures go into BENCHMARKS.md):
//! queries per second and median/p99 latency of an A query for an allowed name, sent by a
//! program to a hard-coded nameserver (127.0.0.77:53) inside a boundary, where the kernel
//! redirects it to the session's proxy, which forwards it to the upstream, installs the answer
//! and replies; against the same program asking the same upstream directly, outside any
//! boundary (the baseline). Events are on (written to /dev/null), as in production.
//!
//! The upstream is a UDP server this benchmark starts on 127.0.0.1 (answering every name with
//! 127.0.0.2, TTL 300). The measuring client is this same binary re-executed as
//! `dns client ADDR N WINDOW`: first N queries one at a time (latency), then N queries with
//! WINDOW of them in flight (throughput). Rounds alternate between the two configurations so
//! that drift on the machine affects both alike. Needs root.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

const BOUNDARY: &str = env!("CARGO_BIN_EXE_boundary");
const QUERIES: usize = 20_000;
const WINDOW: usize = 32;
const ROUNDS: usize = 3;
/// Names never asked before, one at a time: through the proxy each one's address is
/// installed in the kernel maps (its host entry worked out) before the answer is released.
const FRESH: usize = 2_000;
/// Names learned by one session for the memory figure (all answered with one address, so
/// that the kernel map holds one entry and the figure is the agent's own bookkeeping).
const MANY: usize = 100_000;
const NAME: &str = "bench.allowed.test.";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        client(
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        );
        return;
    }
    if args.get(1).map(String::as_str) == Some("many") {
        many(args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the DNS benchmark loads eBPF programs: run it as root");
        std::process::exit(1);
    }
    let upstream = start_upstream();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dns.yaml");
    std::fs::write(
        &config,
        "name: dns-bench\nallow_loopback: false\nallowlist:\n  - \"domain=*.allowed.test port=443\"\n",
    )
    .unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let me = std::env::current_exe().unwrap();
    let redirected: SocketAddr = "127.0.0.77:53".parse().unwrap();

    // (median µs, p99 µs, queries/s, fresh-name median µs, fresh-name p99 µs) per round.
    let mut direct = Vec::new();
    let mut proxied = Vec::new();
    for round in 0..ROUNDS {
        for through_proxy in [false, true] {
            let mut cmd = if through_proxy {
                let mut c = Command::new(BOUNDARY);
                c.args(["run", "--config"])
                    .arg(&config)
                    .arg("--hosts-file")
                    .arg(&hosts)
                    .args(["--dns-server", &upstream.to_string()])
                    .args(["--events", "/dev/null", "--user", "nobody", "--"])
                    .arg(&me)
                    .args(["client", &redirected.to_string()]);
                c
            } else {
                let mut c = Command::new(&me);
                c.args(["client", &upstream.to_string()]);
                c
            };
            let out = cmd
                .args([QUERIES.to_string(), WINDOW.to_string(), FRESH.to_string()])
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(out.status.success(), "round {round}: {out:?}");
            let f: Vec<f64> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            if through_proxy {
                proxied.push([f[0], f[1], f[2], f[3], f[4]]);
            } else {
                direct.push([f[0], f[1], f[2], f[3], f[4]]);
            }
        }
    }
    let med = |v: &[[f64; 5]], i: usize| {
        let mut x: Vec<f64> = v.iter().map(|r| r[i]).collect();
        x.sort_by(|a, b| a.partial_cmp(b).unwrap());
        x[x.len() / 2]
    };
    let (dm, dp, dq, dfm, dfp) = (
        med(&direct, 0),
        med(&direct, 1),
        med(&direct, 2),
        med(&direct, 3),
        med(&direct, 4),
    );
    let (pm, pp, pq, pfm, pfp) = (
        med(&proxied, 0),
        med(&proxied, 1),
        med(&proxied, 2),
        med(&proxied, 3),
        med(&proxied, 4),
    );
    let mut out = String::new();
    out.push_str(&format!(
        "DNS: A queries for an allowed name over UDP, {QUERIES} one at a time (latency) and \
         {QUERIES} with {WINDOW} in flight (throughput) per run, {ROUNDS} alternating rounds; \
         medians over rounds.\n\n\
         | configuration | median µs | p99 µs | queries/s |\n|---|---:|---:|---:|\n\
         | straight to the loopback upstream (baseline) | {dm:.1} | {dp:.1} | {dq:.0} |\n\
         | boundary: 127.0.0.77:53 redirected to the session's proxy | {pm:.1} | {pp:.1} | {pq:.0} |\n\
         \nAdded at the median: {:.1} µs ({:.2}× the baseline); p99 {:.2}×; throughput {:.2}× the \
         baseline.\n\n\
         {FRESH} names never asked before, one at a time (through the proxy each answer's \
         address is installed in the kernel maps before the answer is \
         released):\n\n\
         | configuration | median µs | p99 µs |\n|---|---:|---:|\n\
         | straight to the loopback upstream (baseline) | {dfm:.1} | {dfp:.1} |\n\
         | boundary, through the proxy | {pfm:.1} | {pfp:.1} |\n\
         \nAdded per new name at the median (answer to map entry installed, plus the proxy): \
         {:.1} µs.\n",
        pm - dm,
        pm / dm,
        pp / dp,
        pq / dq,
        pfm - dfm,
    ));
    // Memory: one session learns MANY names; the client reads its agent's peak RSS.
    let started = Instant::now();
    let out_many = Command::new(BOUNDARY)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--hosts-file")
        .arg(&hosts)
        .args(["--dns-server", &upstream.to_string()])
        .args(["--events", "/dev/null", "--user", "nobody", "--"])
        .arg(&me)
        .args(["many", &redirected.to_string(), &MANY.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out_many.status.success(), "{out_many:?}");
    let f: Vec<f64> = String::from_utf8_lossy(&out_many.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    out.push_str(&format!(
        "\nOne session learning {MANY} names (one at a time, {:.0} s in all; the last 1,000 \
         took {:.0} µs each at the median): the agent's peak RSS (VmHWM) {:.1} MB, {:.1} MB \
         before the first name.\n",
        started.elapsed().as_secs_f64(),
        f[2],
        f[1] / 1024.0,
        f[0] / 1024.0,
    ));
    print!("{out}");
    std::io::stdout().flush().unwrap();
}

/// A UDP nameserver on 127.0.0.1 answering every A query with 127.0.0.2 (TTL 300).
fn start_upstream() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = q.clone();
            r.metadata.message_type = MessageType::Response;
            r.metadata.recursion_available = true;
            if let Some(query) = q.queries.first() {
                if query.query_type() == RecordType::A {
                    r.add_answer(Record::from_rdata(
                        query.name().clone(),
                        300,
                        RData::A(A::new(127, 0, 0, 2)),
                    ));
                }
            }
            if let Ok(bytes) = r.to_vec() {
                let _ = sock.send_to(&bytes, from);
            }
        }
    });
    addr
}

/// The agent's (this client's parent's) peak RSS in kB.
fn parent_hwm_kb() -> f64 {
    std::fs::read_to_string(format!(
        "/proc/{}/status",
        std::os::unix::process::parent_id()
    ))
    .ok()
    .and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    })
    .unwrap_or(0.0)
}

/// Prints `hwm_before_kb hwm_after_kb last_1000_median_us` after asking `n` new names.
fn many(server: SocketAddr, n: usize) {
    let before = parent_hwm_kb();
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.connect(server).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1500];
    let mut last = Vec::new();
    for i in 0..n {
        let q = query_for(i as u16, &format!("m{i}.allowed.test."));
        let t = Instant::now();
        sock.send(&q).unwrap();
        loop {
            let got = sock.recv(&mut buf).unwrap();
            if got >= 2 && buf[..2] == q[..2] {
                break;
            }
        }
        if i + 1000 >= n {
            last.push(t.elapsed());
        }
    }
    last.sort();
    println!(
        "{before} {} {}",
        parent_hwm_kb(),
        last[last.len() / 2].as_secs_f64() * 1e6
    );
}

fn query(id: u16) -> Vec<u8> {
    query_for(id, NAME)
}

fn query_for(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Prints `median_us p99_us queries_per_s fresh_median_us fresh_p99_us`.
fn client(server: SocketAddr, n: usize, window: usize, fresh: usize) {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.connect(server).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let queries: Vec<Vec<u8>> = (0..=u16::MAX).map(query).collect();
    let mut buf = [0u8; 1500];
    // Warm up (and, through the proxy, install the answer once).
    for q in &queries[..500] {
        sock.send(q).unwrap();
        sock.recv(&mut buf).unwrap();
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let q = &queries[i % queries.len()];
        let t = Instant::now();
        sock.send(q).unwrap();
        loop {
            let got = sock.recv(&mut buf).unwrap();
            if got >= 2 && buf[..2] == q[..2] {
                break;
            }
        }
        samples.push(t.elapsed());
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    // Throughput: keep `window` queries in flight.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t = Instant::now();
    let mut sent = 0;
    let mut done = 0;
    while sent < window.min(n) {
        sock.send(&queries[sent % queries.len()]).unwrap();
        sent += 1;
    }
    while done < n {
        if sock.recv(&mut buf).is_err() {
            // A lost datagram: put another in flight.
            sock.send(&queries[sent % queries.len()]).unwrap();
            sent += 1;
            continue;
        }
        done += 1;
        if sent < n {
            sock.send(&queries[sent % queries.len()]).unwrap();
            sent += 1;
        }
    }
    let qps = n as f64 / t.elapsed().as_secs_f64();
    // Let the throughput phase's stragglers arrive and be dropped.
    std::thread::sleep(Duration::from_millis(300));
    sock.set_nonblocking(true).unwrap();
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut fresh_samples = Vec::with_capacity(fresh);
    for i in 0..fresh {
        let q = query_for(
            i as u16,
            &format!("f{i}-{}.allowed.test.", std::process::id()),
        );
        let t = Instant::now();
        sock.send(&q).unwrap();
        loop {
            let got = sock.recv(&mut buf).unwrap();
            if got >= 2 && buf[..2] == q[..2] {
                break;
            }
        }
        fresh_samples.push(t.elapsed());
    }
    fresh_samples.sort();
    println!(
        "{} {} {qps} {} {}",
        us(samples[n / 2]),
        us(samples[n * 99 / 100]),
        us(fresh_samples[fresh / 2]),
        us(fresh_samples[fresh * 99 / 100]),
    );
}

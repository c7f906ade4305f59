//! Bridge gateway benchmark: `cargo bench -p bridge --bench gateway` (or `cargo xtask bench bridge`).
//!
//! Everything on loopback. Starts `fake-upstream` and a real `llm-bridge serve` (SQLite store in a
//! temp dir, a real bridge key, the real recorder, logging at its default level), then with a
//! hyper load generator:
//! 1. open loop at a fixed rate (default 1,000 req/s, 10 s per side), non-streaming and
//!    streaming, straight at the fake upstream and through the bridge, alternating in two
//!    rounds (direct, bridge, direct, bridge) so both sides see the same machine; latency runs
//!    from each request's *scheduled* send time (no coordinated omission), and sends are paced
//!    by a thread on high-resolution timers (the generator's own lag is reported);
//! 2. closed-loop maximum throughput with 64 concurrent workers, direct and through the bridge,
//!    with the CPU time each process spent per request (from /proc/PID/stat);
//! 3. the bridge's RSS with 1,000 concurrent streams held open (the fake upstream pauses after
//!    the first event).
//!
//! Prints markdown tables. Tunables: BENCH_RATE, BENCH_SECS, BENCH_STREAMS, BENCH_BRIDGE_LOG
//! (the bridge's RUST_LOG, default `info` as in production), BENCH_BRIDGE_WORKERS (the
//! bridge's Tokio worker threads, default one per CPU), BENCH_BASELINE_BRIDGE (path to another
//! `bridge` build, e.g. of an earlier commit: it is started next to this one, with its own
//! store, and measured in the same closed-loop runs, so a change's cost is a same-run ratio),
//! BENCH_GOVERNANCE (limits' cost), BENCH_API (`anthropic`, the default, or `openai` for Chat
//! Completions), BENCH_LITELLM (the `litellm` executable of a venv: LiteLLM's proxy is run on
//! the same fake upstream and load, both APIs; `cargo xtask bench bridge --peers` sets it).
//!
//! BENCH_PROFILE=1 runs only a closed loop (direct, then through the bridge, BENCH_SECS each,
//! into a store that grows all along) and prints the CPU per request; with BENCH_PERF=FILE the
//! bridge is sampled by `perf record` meanwhile (see BENCHMARKS.md, "where the CPU goes").

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

const FAKE_KEY: &str = "sk-ant-bench-upstream-key";
const FAKE_OPENAI_KEY: &str = "sk-openai-bench-upstream-key";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on 127.0.0.1:{port}");
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Which provider API a target speaks.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    /// Anthropic Messages: `x-api-key`.
    Anthropic,
    /// OpenAI Chat Completions: `Authorization: Bearer`.
    OpenAiChat,
}

/// Where to send requests, and with which credential.
#[derive(Clone)]
struct Target {
    url: String,
    key: String,
    api: Api,
}

impl Api {
    /// From BENCH_API: `anthropic` (the default) or `openai` (Chat Completions).
    fn from_env() -> Api {
        match std::env::var("BENCH_API").as_deref() {
            Ok("openai") => Api::OpenAiChat,
            Ok("anthropic") | Err(_) => Api::Anthropic,
            Ok(other) => panic!("BENCH_API={other}: expected anthropic or openai"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Api::Anthropic => "Anthropic Messages",
            Api::OpenAiChat => "OpenAI Chat Completions",
        }
    }
    fn upstream_path(self) -> &'static str {
        match self {
            Api::Anthropic => "/v1/messages",
            Api::OpenAiChat => "/v1/chat/completions",
        }
    }
    fn bridge_path(self) -> &'static str {
        match self {
            Api::Anthropic => "/anthropic/v1/messages",
            Api::OpenAiChat => "/openai/v1/chat/completions",
        }
    }
    fn upstream_key(self) -> &'static str {
        match self {
            Api::Anthropic => FAKE_KEY,
            Api::OpenAiChat => FAKE_OPENAI_KEY,
        }
    }
}

fn request(t: &Target, stream: bool, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    const PROMPT: &str = "benchmark prompt of a typical short length for a coding agent turn";
    let (body, b) = match t.api {
        Api::Anthropic => (
            format!(
                r#"{{"model":"claude-sonnet-4-6","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"{PROMPT}"}}]}}"#
            ),
            Request::post(&t.url)
                .header("x-api-key", &t.key)
                .header("anthropic-version", "2023-06-01"),
        ),
        Api::OpenAiChat => (
            format!(
                r#"{{"model":"gpt-4o-mini","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"{PROMPT}"}}]}}"#
            ),
            Request::post(&t.url).header("authorization", format!("Bearer {}", t.key)),
        ),
    };
    let mut b = b.header("content-type", "application/json");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body))).expect("valid request")
}

/// Sends one request and reads the whole body; returns the latency from `scheduled`.
async fn one(
    client: &HttpClient,
    t: &Target,
    stream: bool,
    scheduled: Instant,
) -> Option<Duration> {
    let resp = client.request(request(t, stream, &[])).await.ok()?;
    if resp.status() != StatusCode::OK {
        return None;
    }
    resp.into_body().collect().await.ok()?;
    Some(scheduled.elapsed())
}

struct OpenLoop {
    p50_us: f64,
    p99_us: f64,
    ok: usize,
    failed: usize,
    /// How late the load generator sent its requests (p99), to show the schedule was kept.
    send_lag_p99_us: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Latencies (µs, from each request's scheduled send time) and send lags of one open-loop run.
#[derive(Default)]
struct Samples {
    latency_us: Vec<f64>,
    lag_us: Vec<f64>,
    failed: usize,
}

/// Sends `rate` requests per second for `secs` seconds, each on its own task, so a slow
/// answer never delays the next send (no coordinated omission). Sends are paced by a dedicated
/// thread sleeping on the kernel's high-resolution timers: Tokio's timer wheel has 1 ms
/// granularity, which at 1,000 req/s would add up to a millisecond of the generator's own
/// lateness to every sample.
async fn open_loop_samples(
    client: &HttpClient,
    t: &Target,
    stream: bool,
    rate: u64,
    secs: u64,
) -> Samples {
    let total = (rate * secs) as usize;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let pacer = std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(5);
        for i in 0..total {
            let scheduled = start + period * i as u32;
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.send(scheduled).is_err() {
                return;
            }
        }
    });
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut handles = Vec::with_capacity(total);
    while let Some(scheduled) = rx.recv().await {
        let (client, t, samples) = (client.clone(), t.clone(), samples.clone());
        handles.push(tokio::spawn(async move {
            let lag = scheduled.elapsed();
            let result = one(&client, &t, stream, scheduled).await;
            let mut s = samples.lock().await;
            s.lag_us.push(lag.as_secs_f64() * 1e6);
            match result {
                Some(d) => s.latency_us.push(d.as_secs_f64() * 1e6),
                None => s.failed += 1,
            }
        }));
    }
    let _ = pacer.join();
    for h in handles {
        let _ = h.await;
    }
    let mut s = samples.lock().await;
    std::mem::take(&mut *s)
}

/// Runs direct and bridged open loops alternately in `rounds` rounds (ABAB...), so that both
/// see the same machine conditions, and pools each side's samples.
async fn open_loop_pair(
    client: &HttpClient,
    direct: &Target,
    via: &Target,
    stream: bool,
    rate: u64,
    secs: u64,
    rounds: u64,
) -> (OpenLoop, OpenLoop) {
    let per_round = (secs / rounds).max(1);
    let (mut d, mut b) = (Samples::default(), Samples::default());
    for _ in 0..rounds {
        for (t, acc) in [(direct, &mut d), (via, &mut b)] {
            let s = open_loop_samples(client, t, stream, rate, per_round).await;
            acc.latency_us.extend(s.latency_us);
            acc.lag_us.extend(s.lag_us);
            acc.failed += s.failed;
        }
    }
    (summarize(d), summarize(b))
}

fn summarize(mut s: Samples) -> OpenLoop {
    s.latency_us.sort_by(|a, b| a.total_cmp(b));
    s.lag_us.sort_by(|a, b| a.total_cmp(b));
    OpenLoop {
        p50_us: percentile(&s.latency_us, 0.5),
        p99_us: percentile(&s.latency_us, 0.99),
        ok: s.latency_us.len(),
        failed: s.failed,
        send_lag_p99_us: percentile(&s.lag_us, 0.99),
    }
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the `(comm)`, which may contain spaces.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some(Duration::from_secs_f64((utime + stime) / ticks_per_sec))
        })
        .unwrap_or_default()
}

#[derive(Clone)]
struct ClosedLoop {
    req_per_s: f64,
    /// CPU µs per request used by each process: (load generator, fake upstream, bridge).
    cpu_us_per_req: (f64, f64, f64),
}

async fn closed_loop(
    client: &HttpClient,
    t: &Target,
    stream: bool,
    workers: usize,
    secs: u64,
    pids: (u32, u32, u32),
) -> ClosedLoop {
    let cpu0 = (cpu_time(pids.0), cpu_time(pids.1), cpu_time(pids.2));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (client, t) = (client.clone(), t.clone());
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                if one(&client, &t, stream, Instant::now()).await.is_some() {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut n = 0;
    for h in handles {
        n += h.await.unwrap_or(0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let per_req = |pid: u32, before: Duration| {
        (cpu_time(pid).saturating_sub(before)).as_secs_f64() * 1e6 / n.max(1) as f64
    };
    ClosedLoop {
        req_per_s: n as f64 / elapsed,
        cpu_us_per_req: (
            per_req(pids.0, cpu0.0),
            per_req(pids.1, cpu0.1),
            per_req(pids.2, cpu0.2),
        ),
    }
}

/// Mean throughput and CPU per request of equal-length runs.
fn mean(runs: &[ClosedLoop]) -> ClosedLoop {
    let n = runs.len().max(1) as f64;
    let req_per_s = runs.iter().map(|r| r.req_per_s).sum::<f64>() / n;
    // CPU per request weighted by the requests each run served.
    let w = runs.iter().map(|r| r.req_per_s).sum::<f64>().max(1e-9);
    let cpu = |f: fn(&ClosedLoop) -> f64| runs.iter().map(|r| f(r) * r.req_per_s).sum::<f64>() / w;
    ClosedLoop {
        req_per_s,
        cpu_us_per_req: (
            cpu(|r| r.cpu_us_per_req.0),
            cpu(|r| r.cpu_us_per_req.1),
            cpu(|r| r.cpu_us_per_req.2),
        ),
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens `n` streams through the bridge that stay open (the upstream holds after the first
/// event), waits until every one has its first bytes (or 60 s pass), and samples the bridge's
/// RSS. Returns (RSS KiB, streams that were open).
async fn concurrent_streams(t: &Target, n: usize, bridge_pid: u32) -> (u64, usize) {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(n)
        .build_http();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(n);
    // A watch, not a Notify: a task that starts waiting after the release still sees it.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for _ in 0..n {
        let (client, t, ready_tx, mut release) = (
            client.clone(),
            t.clone(),
            ready_tx.clone(),
            release_rx.clone(),
        );
        handles.push(tokio::spawn(async move {
            let req = request(&t, true, &[("x-fake-hold-ms", "60000")]);
            let Ok(resp) = client.request(req).await else {
                let _ = ready_tx.send(false).await;
                return;
            };
            let mut body = resp.into_body();
            let got_first = matches!(body.frame().await, Some(Ok(_)));
            let _ = ready_tx.send(got_first).await;
            drop(ready_tx);
            let _ = release.wait_for(|r| *r).await;
            drop(body); // the client hangs up; the bridge records client_cancelled
        }));
    }
    drop(ready_tx);
    // Every task reports once (and keeps its sender until released), so count the reports
    // rather than wait for the channel to close.
    let mut open = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for _ in 0..n {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(ok)) => open += ok as usize,
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib(bridge_pid, "VmRSS:");
    let _ = release_tx.send(true);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }
    (rss, open)
}

/// Starts `llm-bridge serve` from `bin` with its own config, store and spool named `name`.
fn start_bridge(
    bin: &Path,
    dir: &Path,
    name: &str,
    up_port: u16,
    port: u16,
    token: String,
    provider_extra: &str,
) -> (Child, String) {
    let store = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {}\n{}providers:\n  anthropic:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {FAKE_KEY}\n{provider_extra}  openai:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {FAKE_OPENAI_KEY}\n",
            dir.join(format!("{name}-spool")).display(),
            // Extra top-level settings for an experiment, e.g. "limits: {record_wait_ms: 0}".
            std::env::var("BENCH_BRIDGE_CONFIG")
                .map(|c| format!("{c}\n"))
                .unwrap_or_default()
        ),
    )
    .expect("write bridge.yaml");
    let mut cmd = Command::new(bin);
    if let Ok(n) = std::env::var("BENCH_BRIDGE_WORKERS") {
        cmd.env("TOKIO_WORKER_THREADS", n);
    }
    let child = cmd
        .args(["serve", "--config"])
        .arg(&config)
        // The bridge's default log level (one JSON line per request), unless BENCH_BRIDGE_LOG
        // says otherwise; the lines go to /dev/null.
        .env(
            "RUST_LOG",
            std::env::var("BENCH_BRIDGE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stderr(Stdio::null())
        .spawn()
        .expect("start bridge");
    (child, token)
}

fn bin(name: &str) -> PathBuf {
    // Cargo sets CARGO_BIN_EXE_<name> for benches; fall back to the bench's own directory.
    let from_env = match name {
        "llm-bridge" => option_env!("CARGO_BIN_EXE_llm-bridge"),
        _ => option_env!("CARGO_BIN_EXE_fake-upstream"),
    };
    from_env.map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        exe.parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join(name)
    })
}

const LITELLM_MASTER_KEY: &str = "sk-bench-litellm-master-key";

/// Starts LiteLLM's proxy (`litellm`, from BENCH_LITELLM) on loopback with both models routed
/// to the fake upstream, one worker, no database (it records nothing), and everything that
/// could reach the network switched off: no telemetry, the bundled model cost map instead of
/// the one it fetches from GitHub, no proxies, Hugging Face offline.
fn start_litellm(litellm: &Path, dir: &Path, up_port: u16, port: u16) -> Child {
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: claude-sonnet-4-6\n    litellm_params:\n      model: anthropic/claude-sonnet-4-6\n      api_base: http://127.0.0.1:{up_port}\n      api_key: {FAKE_KEY}\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://127.0.0.1:{up_port}/v1\n      api_key: {FAKE_OPENAI_KEY}\nlitellm_settings:\n  telemetry: false\ngeneral_settings:\n  master_key: {LITELLM_MASTER_KEY}\n"
        ),
    )
    .expect("write litellm.yaml");
    let mut cmd = Command::new(litellm);
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd.args(["--config"])
        .arg(&config)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .current_dir(dir)
        .env("LITELLM_TELEMETRY", "False")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("DISABLE_ADMIN_UI", "True")
        .env("LITELLM_LOG", "ERROR")
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("litellm.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("start litellm")
}

/// CPU time of a process and its children (LiteLLM may run its server in a child).
fn cpu_time_tree(pid: u32) -> Duration {
    let mut total = cpu_time(pid);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    s[s.rfind(')')? + 2..]
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                });
            if ppid == Some(pid) {
                total += cpu_time_tree(child);
            }
        }
    }
    total
}

/// The remote addresses of `pid`'s TCP and UDP sockets that are not loopback (from `ss`).
fn non_loopback_peers(pid: u32) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-tunap"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
        .filter(|peer| {
            !(peer.starts_with("127.")
                || peer.starts_with("[::1]")
                || peer.starts_with("[::ffff:127.")
                || peer.starts_with("0.0.0.0")
                || peer.starts_with('*')
                || peer.starts_with("[::]"))
        })
        .collect()
}

/// One gateway's figures in the peer comparison.
struct PeerRun {
    closed: ClosedLoop,
    open: OpenLoop,
}

/// BENCH_LITELLM: direct, Bridge and LiteLLM on the same fake upstream with the same load, for
/// both APIs: closed loop (64 clients) in alternating rounds, then an open loop at
/// BENCH_PEER_RATE (default 20 req/s) for each. Returns the markdown table.
async fn peers(
    client: &HttpClient,
    targets: &[(Api, [Target; 3])],
    pids: (u32, u32, u32, u32),
    secs: u64,
) -> String {
    let rate = env_num("BENCH_PEER_RATE", 20);
    let mut out = String::new();
    out.push_str(&format!("\n| API | mode | direct req/s | Bridge req/s | **Bridge / direct** | LiteLLM req/s | **LiteLLM / direct** | CPU µs/req: Bridge, LiteLLM | added p50 at {rate} req/s: Bridge, LiteLLM | added p99: Bridge, LiteLLM |\n|---|---|---|---|---|---|---|---|---|---|\n"));
    for (api, [direct, bridge, litellm]) in targets {
        for stream in [false, true] {
            let mut runs: [Vec<ClosedLoop>; 3] = Default::default();
            for _ in 0..3 {
                for (i, (t, pid)) in [(direct, pids.1), (bridge, pids.2), (litellm, pids.3)]
                    .into_iter()
                    .enumerate()
                {
                    let before = cpu_time_tree(pid);
                    let mut r = closed_loop(
                        client,
                        t,
                        stream,
                        64,
                        (secs / 3).max(2),
                        (pids.0, pids.1, pid),
                    )
                    .await;
                    // The gateway's own CPU (LiteLLM's children included).
                    let n = r.req_per_s * (secs / 3).max(2) as f64;
                    r.cpu_us_per_req.2 =
                        cpu_time_tree(pid).saturating_sub(before).as_secs_f64() * 1e6 / n.max(1.0);
                    runs[i].push(r);
                }
            }
            let mut open = Vec::new();
            for t in [direct, bridge, litellm] {
                open.push(summarize(
                    open_loop_samples(client, t, stream, rate, 10).await,
                ));
            }
            let mut open = open.into_iter();
            let [d, b, l] = [0, 1, 2].map(|i| PeerRun {
                closed: mean(&runs[i]),
                open: open.next().expect("three open loops"),
            });
            let failed = |r: &PeerRun| {
                if r.open.failed > 0 {
                    format!(" ({} failed)", r.open.failed)
                } else {
                    String::new()
                }
            };
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | **{:.2}×** | {:.0} | **{:.2}×** | {:.1}, {:.1} | +{:.0} µs, +{:.0} µs{}{} | +{:.0} µs, +{:.0} µs |\n",
                api.name(),
                if stream { "streaming" } else { "non-streaming" },
                d.closed.req_per_s,
                b.closed.req_per_s,
                b.closed.req_per_s / d.closed.req_per_s,
                l.closed.req_per_s,
                l.closed.req_per_s / d.closed.req_per_s,
                b.closed.cpu_us_per_req.2,
                l.closed.cpu_us_per_req.2,
                b.open.p50_us - d.open.p50_us,
                l.open.p50_us - d.open.p50_us,
                failed(&b),
                failed(&l),
                b.open.p99_us - d.open.p99_us,
                l.open.p99_us - d.open.p99_us,
            ));
        }
    }
    let leaks = non_loopback_peers(pids.3);
    assert!(
        leaks.is_empty(),
        "LiteLLM has sockets to non-loopback addresses: {leaks:?}"
    );
    out
}

/// BENCH_PROFILE mode: only the closed loop (64 clients, `secs` seconds), direct then through
/// the bridge, non-streaming unless BENCH_STREAM=1, each request recorded into a store that
/// grows for the whole run. With BENCH_PERF=FILE,
/// `perf record` samples the bridge during its run (BENCH_PERF_ARGS, default
/// `-F 499 --call-graph dwarf,16384`), for `perf report -i FILE`.
async fn profile(
    client: &HttpClient,
    direct: &Target,
    via: &Target,
    secs: u64,
    pids: (u32, u32, u32),
    db: &Path,
) {
    let stream = std::env::var("BENCH_STREAM").is_ok_and(|v| v == "1");
    let d = closed_loop(client, direct, stream, 64, secs, pids).await;
    let perf = std::env::var_os("BENCH_PERF").map(|out| {
        let args = std::env::var("BENCH_PERF_ARGS")
            .unwrap_or_else(|_| "-F 499 --call-graph dwarf,16384".into());
        Command::new("perf")
            .arg("record")
            .args(args.split_whitespace())
            .arg("-o")
            .arg(out)
            .args(["-p", &pids.2.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start perf record")
    });
    let b = closed_loop(client, via, stream, 64, secs, pids).await;
    if let Some(mut perf) = perf {
        // SIGINT makes perf write its file and exit.
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
    // Let the recorder catch up before the store's size is read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (dg, df, _) = d.cpu_us_per_req;
    let (bg, bf, bb) = b.cpu_us_per_req;
    println!(
        "\n| API | mode | direct req/s | bridge req/s | bridge / direct | CPU µs/req direct (gen + fake) | via bridge (gen + fake + bridge) | store size after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.2} | {dg:.1} + {df:.1} | {bg:.1} + {bf:.1} + **{bb:.1}** | {} |",
        via.api.name(),
        if stream { "streaming" } else { "non-streaming" },
        d.req_per_s,
        b.req_per_s,
        b.req_per_s / d.req_per_s,
        std::fs::metadata(db)
            .map(|m| format!("{:.0} MB", m.len() as f64 / 1e6))
            .unwrap_or_default()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing; nothing to list
    }
    let api = Api::from_env();
    let rate = env_num("BENCH_RATE", 1000);
    let secs = env_num("BENCH_SECS", 10);
    let streams = env_num("BENCH_STREAMS", 1000) as usize;
    let dir = std::env::temp_dir().join(format!("bridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("bench.db");
    let store = format!("sqlite://{}", db.display());

    let up_port = free_port();
    let br_port = free_port();
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(bin("fake-upstream"))
            .args([
                "--listen",
                &format!("127.0.0.1:{up_port}"),
                "--anthropic-key",
                FAKE_KEY,
                "--openai-key",
                FAKE_OPENAI_KEY,
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-upstream"),
    );
    let fake_pid = procs.0[0].id();
    let token = Command::new(bin("llm-bridge"))
        .args(["keys", "create", "--user", "bench", "--store", &store])
        .stderr(Stdio::null())
        .output()
        .expect("llm-bridge keys create");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    assert!(!token.is_empty(), "llm-bridge keys create printed no token");
    // The 1,000-stream phase steers the fake upstream with `x-fake-hold-ms`, which the bridge
    // forwards only when configured to.
    let (bridge, token) = start_bridge(
        &bin("llm-bridge"),
        &dir,
        "bench",
        up_port,
        br_port,
        token,
        "    forward_headers: [x-fake-*]\n",
    );
    let bridge_pid = bridge.id();
    procs.0.push(bridge);
    // Optionally a baseline build of the bridge, measured in the same closed-loop runs.
    let baseline = std::env::var_os("BENCH_BASELINE_BRIDGE")
        .map(PathBuf::from)
        .map(|bin| {
            let port = free_port();
            let store = format!("sqlite://{}", dir.join("baseline.db").display());
            let out = Command::new(&bin)
                .args(["keys", "create", "--user", "bench", "--store", &store])
                .stderr(Stdio::null())
                .output()
                .expect("baseline llm-bridge keys create");
            let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
            // An older build may not know `forward_headers`; the baseline needs none.
            let (child, token) = start_bridge(&bin, &dir, "baseline", up_port, port, token, "");
            (child, token, port)
        });
    let baseline_target = baseline.as_ref().map(|(child, token, port)| {
        (
            Target {
                url: format!("http://127.0.0.1:{port}{}", api.bridge_path()),
                key: token.clone(),
                api,
            },
            child.id(),
            *port,
        )
    });
    if let Some((child, _, _)) = baseline {
        procs.0.push(child);
    }
    // Optionally (BENCH_GOVERNANCE=1) the same build with governance configured, to measure
    // what limits cost per request: "policy" has a model allow list, a deny list and a
    // monthly budget; "rates" has only a requests-per-minute limit (counted in memory, synced
    // to the store every 250 ms).
    let governed: Vec<(&str, Child, Target, u32)> =
        if std::env::var_os("BENCH_GOVERNANCE").is_some() {
            let mut out = Vec::new();
            for (name, rates) in [("policy", false), ("rates", true)] {
                let port = free_port();
                let store = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
                let cli = |args: &[&str]| {
                    let out = Command::new(bin("llm-bridge"))
                        .args(args)
                        .args(["--store", &store])
                        .stderr(Stdio::null())
                        .output()
                        .expect("llm-bridge");
                    assert!(out.status.success(), "llm-bridge {args:?}");
                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                };
                let token = cli(&["keys", "create", "--user", "bench"]);
                if !rates {
                    cli(&[
                        "limits",
                        "set",
                        "--global",
                        "--allow-models",
                        "claude-*",
                        "--deny-models",
                        "claude-opus-*",
                    ]);
                    cli(&[
                        "limits",
                        "set",
                        "--user",
                        "bench",
                        "--budget",
                        "month=1000000",
                    ]);
                } else {
                    cli(&[
                        "limits",
                        "set",
                        "--user",
                        "bench",
                        "--requests-per-minute",
                        "100000000",
                    ]);
                }
                let (child, token) =
                    start_bridge(&bin("llm-bridge"), &dir, name, up_port, port, token, "");
                let pid = child.id();
                out.push((
                    name,
                    child,
                    Target {
                        url: format!("http://127.0.0.1:{port}{}", api.bridge_path()),
                        key: token,
                        api,
                    },
                    pid,
                ));
                wait_listening(port);
            }
            out
        } else {
            Vec::new()
        };
    let governed_targets: Vec<(&str, Target, u32)> = governed
        .iter()
        .map(|(n, _, t, pid)| (*n, t.clone(), *pid))
        .collect();
    for (_, child, _, _) in governed {
        procs.0.push(child);
    }
    // Optionally (BENCH_LITELLM) LiteLLM's proxy on the same fake upstream.
    let litellm = std::env::var_os("BENCH_LITELLM").map(|bin| {
        let port = free_port();
        let child = start_litellm(Path::new(&bin), &dir, up_port, port);
        (child, port)
    });
    let litellm_target = litellm.as_ref().map(|(child, port)| (child.id(), *port));
    if let Some((child, _)) = litellm {
        procs.0.push(child);
    }
    wait_listening(up_port);
    wait_listening(br_port);
    if let Some((_, port)) = litellm_target {
        // Python imports take a while.
        let deadline = Instant::now() + Duration::from_secs(180);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "LiteLLM did not listen within 180 s; see its log in {}",
                dir.join("litellm.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if let Some((_, _, port)) = &baseline_target {
        wait_listening(*port);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(512)
            .build(http);
        let direct = Target { url: format!("http://127.0.0.1:{up_port}{}", api.upstream_path()), key: api.upstream_key().into(), api };
        let via = Target { url: format!("http://127.0.0.1:{br_port}{}", api.bridge_path()), key: token, api };

        // Warm up connection pools, the token cache and the SQLite file.
        let mut targets = vec![&direct, &via];
        if let Some((t, _, _)) = &baseline_target {
            targets.push(t);
        }
        for (_, t, _) in &governed_targets {
            targets.push(t);
        }
        for t in targets {
            for _ in 0..200 {
                one(&client, t, false, Instant::now()).await.expect("warm-up request succeeds");
            }
        }

        let mut peer_table = None;
        if let Some((litellm_pid, port)) = litellm_target {
            let mut targets = Vec::new();
            for api in [Api::Anthropic, Api::OpenAiChat] {
                let t = |url: String, key: &str| Target { url, key: key.to_string(), api };
                let set = [
                    t(format!("http://127.0.0.1:{up_port}{}", api.upstream_path()), api.upstream_key()),
                    t(format!("http://127.0.0.1:{br_port}{}", api.bridge_path()), &via.key),
                    t(format!("http://127.0.0.1:{port}{}", api.upstream_path()), LITELLM_MASTER_KEY),
                ];
                for t in &set {
                    for stream in [false, true] {
                        for _ in 0..50 {
                            one(&client, t, stream, Instant::now()).await.unwrap_or_else(|| panic!("warm-up request to {} succeeds", t.url));
                        }
                    }
                }
                targets.push((api, set));
            }
            peer_table = Some(peers(&client, &targets, (std::process::id(), fake_pid, bridge_pid, litellm_pid), 9).await);
        }
        if std::env::var_os("BENCH_PROFILE").is_some() {
            profile(&client, &direct, &via, secs, (std::process::id(), fake_pid, bridge_pid), &db).await;
            return;
        }
        let mut rows = Vec::new();
        for stream in [false, true] {
            let (d, b) = open_loop_pair(&client, &direct, &via, stream, rate, secs, 2).await;
            rows.push((stream, d, b));
        }
        let pids = (std::process::id(), fake_pid, bridge_pid);
        let mut tput = Vec::new();
        let mut vs_baseline = Vec::new();
        for stream in [false, true] {
            let d = closed_loop(&client, &direct, stream, 64, 5, pids).await;
            let b = closed_loop(&client, &via, stream, 64, 5, pids).await;
            if let Some((t, pid, _)) = &baseline_target {
                // This machine's load moves between runs: alternate the two builds in short
                // rounds (this, baseline, baseline, this, ...) so both see the same conditions.
                let mut this_runs = Vec::new();
                let mut base_runs = Vec::new();
                for round in 0..6 {
                    let this_first = round % 2 == 0;
                    for this in [this_first, !this_first] {
                        if this {
                            this_runs.push(closed_loop(&client, &via, stream, 64, 2, pids).await);
                        } else {
                            base_runs.push(closed_loop(&client, t, stream, 64, 2, (pids.0, pids.1, *pid)).await);
                        }
                    }
                }
                vs_baseline.push((stream, d.req_per_s, mean(&base_runs), mean(&this_runs)));
            }
            tput.push((stream, d, b));
        }
        // Governance against none, same build: alternate short rounds so all see one load.
        let mut governance = Vec::new();
        if !governed_targets.is_empty() {
            for stream in [false, true] {
                let mut plain = Vec::new();
                let mut each: Vec<Vec<ClosedLoop>> = vec![Vec::new(); governed_targets.len()];
                for _round in 0..6 {
                    plain.push(closed_loop(&client, &via, stream, 64, 2, pids).await);
                    for (i, (_, t, pid)) in governed_targets.iter().enumerate() {
                        each[i].push(closed_loop(&client, t, stream, 64, 2, (pids.0, pids.1, *pid)).await);
                    }
                }
                governance.push((stream, mean(&plain), each.iter().map(|r| mean(r)).collect::<Vec<_>>()));
            }
        }
        let idle_rss = rss_kib(bridge_pid, "VmRSS:");
        let (rss, open) = concurrent_streams(&via, streams, bridge_pid).await;

        println!("\n## Bridge gateway benchmark (loopback, {} CPUs)\n", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        println!("Open loop, {rate} req/s, {secs} s per side (two alternating rounds: direct, bridge, direct, bridge); latency from each request's scheduled send time to the last body byte.\n");
        println!("| mode | direct p50 | bridge p50 | **added p50** | direct p99 | bridge p99 | **added p99** | ok / failed (direct, bridge) | generator send lag p99 |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for (stream, d, b) in &rows {
            println!(
                "| {} | {:.0} µs | {:.0} µs | **{:.0} µs** | {:.0} µs | {:.0} µs | **{:.0} µs** | {} / {}, {} / {} | {:.0} µs |",
                if *stream { "streaming (SSE)" } else { "non-streaming" },
                d.p50_us, b.p50_us, b.p50_us - d.p50_us, d.p99_us, b.p99_us, b.p99_us - d.p99_us,
                d.ok, d.failed, b.ok, b.failed, d.send_lag_p99_us.max(b.send_lag_p99_us)
            );
        }
        println!("\nClosed loop, 64 concurrent clients, 5 s each; CPU per request from /proc/PID/stat (generator, fake upstream, bridge):\n");
        println!("| mode | direct req/s | bridge req/s | bridge / direct | CPU µs/req direct (gen + fake) | CPU µs/req via bridge (gen + fake + bridge) |");
        println!("|---|---|---|---|---|---|");
        for (stream, d, b) in &tput {
            let (dg, df, _) = d.cpu_us_per_req;
            let (bg, bf, bb) = b.cpu_us_per_req;
            println!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.1} + {:.1} | {:.1} + {:.1} + {:.1} |",
                if *stream { "streaming (SSE)" } else { "non-streaming" },
                d.req_per_s, b.req_per_s, b.req_per_s / d.req_per_s, dg, df, bg, bf, bb
            );
        }
        if !vs_baseline.is_empty() {
            println!("\nThis bridge against the baseline build (BENCH_BASELINE_BRIDGE), closed loop, 64 clients, six alternating rounds of 2 s each (means); direct is the 5 s run above:\n");
            println!("| mode | direct req/s | baseline bridge req/s | this bridge req/s | this / baseline | baseline / direct | this / direct | bridge CPU µs/req (baseline, this) |");
            println!("|---|---|---|---|---|---|---|---|");
            for (stream, d, base, this) in &vs_baseline {
                println!(
                    "| {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1}, {:.1} |",
                    if *stream { "streaming (SSE)" } else { "non-streaming" },
                    d, base.req_per_s, this.req_per_s, this.req_per_s / base.req_per_s,
                    base.req_per_s / d, this.req_per_s / d,
                    base.cpu_us_per_req.2, this.cpu_us_per_req.2
                );
            }
        }
        if !governance.is_empty() {
            println!("\nGovernance (BENCH_GOVERNANCE): the same build without limits, with a model policy and a budget (\"policy\"), and with only a requests-per-minute limit (\"rates\"); closed loop, 64 clients, six alternating rounds of 2 s each (means):\n");
            println!("| mode | no limits req/s | bridge CPU µs/req | {} |", governed_targets.iter().map(|(n, _, _)| format!("{n}: req/s, CPU µs/req, CPU vs none")).collect::<Vec<_>>().join(" | "));
            println!("|---|---|---|{}", "---|".repeat(governed_targets.len()));
            for (stream, plain, each) in &governance {
                let cells: Vec<String> = each
                    .iter()
                    .map(|g| format!("{:.0}, {:.1}, {:.3}×", g.req_per_s, g.cpu_us_per_req.2, g.cpu_us_per_req.2 / plain.cpu_us_per_req.2))
                    .collect();
                println!(
                    "| {} | {:.0} | {:.1} | {} |",
                    if *stream { "streaming (SSE)" } else { "non-streaming" },
                    plain.req_per_s, plain.cpu_us_per_req.2, cells.join(" | ")
                );
            }
        }
        println!("\nMemory:\n");
        println!("| measure | value |");
        println!("|---|---|");
        println!("| bridge RSS idle (after the runs above) | {:.1} MB |", idle_rss as f64 / 1024.0);
        println!("| bridge RSS with {open} of {streams} concurrent streams open | {:.1} MB |", rss as f64 / 1024.0);
        println!("| bridge peak RSS (VmHWM) | {:.1} MB |", rss_kib(bridge_pid, "VmHWM:") as f64 / 1024.0);
        if let Some(table) = peer_table {
            println!("\nPeers (BENCH_LITELLM): direct, Bridge (every request recorded in SQLite) and LiteLLM's proxy (no database: records nothing) on the same fake upstream; closed loop with 64 clients, three alternating rounds of 3 s (means), CPU per request of the gateway process (and its children); then an open loop at a fixed rate, 10 s each:");
            println!("{table}");
        }
        println!("\nGoals: added ≤ 0.1 ms p50 / ≤ 1 ms p99 at 1,000 req/s; bridge ≥ 0.5 × direct throughput; 1,000 streams < 150 MB RSS.");
    });
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

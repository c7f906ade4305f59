//! Bridge gateway benchmark: `cargo bench -p bridge --bench gateway` (or `cargo xtask bench bridge`).
//!
//! Everything on loopback. Starts `fake-upstream` and a real `bridge serve` (SQLite store in a
//! temp dir, a real bridge key, the real recorder), then with a hyper load generator:
//! 1. open-loop at a fixed rate (default 1,000 req/s for 10 s), non-streaming and streaming,
//!    once straight at the fake upstream and once through the bridge; latency is measured from
//!    each request's *scheduled* send time (no coordinated omission);
//! 2. closed-loop maximum throughput with 64 concurrent workers, direct and through the bridge;
//! 3. the bridge's RSS with 1,000 concurrent streams held open (the fake upstream pauses after
//!    the first event).
//!
//! Prints a markdown table. Tunables: BENCH_RATE, BENCH_SECS, BENCH_STREAMS.

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

/// Where to send requests, and with which credential.
#[derive(Clone)]
struct Target {
    url: String,
    key: String,
}

fn request(t: &Target, stream: bool, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"claude-sonnet-4-6","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"benchmark prompt of a typical short length for a coding agent turn"}}]}}"#
    );
    let mut b = Request::post(&t.url)
        .header("x-api-key", &t.key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json");
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
}

async fn open_loop(
    client: &HttpClient,
    t: &Target,
    stream: bool,
    rate: u64,
    secs: u64,
) -> OpenLoop {
    let total = (rate * secs) as usize;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let scheduled = start + period * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, t, lat, failed) = (client.clone(), t.clone(), lat.clone(), failed.clone());
        handles.push(tokio::spawn(async move {
            match one(&client, &t, stream, scheduled).await {
                Some(d) => lat.lock().await.push(d.as_secs_f64() * 1e6),
                None => {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let mut v = std::mem::take(&mut *lat.lock().await);
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    OpenLoop {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        ok: v.len(),
        failed: failed.load(std::sync::atomic::Ordering::Relaxed),
    }
}

async fn closed_loop(
    client: &HttpClient,
    t: &Target,
    stream: bool,
    workers: usize,
    secs: u64,
) -> f64 {
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
    n as f64 / start.elapsed().as_secs_f64()
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
/// event), waits until every one has its first bytes, and samples the bridge's RSS.
async fn concurrent_streams(t: &Target, n: usize, bridge_pid: u32) -> (u64, usize) {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(n)
        .build_http();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(n);
    let release = Arc::new(tokio::sync::Notify::new());
    let mut handles = Vec::new();
    for _ in 0..n {
        let (client, t, ready_tx, release) =
            (client.clone(), t.clone(), ready_tx.clone(), release.clone());
        handles.push(tokio::spawn(async move {
            let req = request(&t, true, &[("x-fake-hold-ms", "60000")]);
            let Ok(resp) = client.request(req).await else {
                let _ = ready_tx.send(false).await;
                return;
            };
            let mut body = resp.into_body();
            let got_first = matches!(body.frame().await, Some(Ok(_)));
            let _ = ready_tx.send(got_first).await;
            release.notified().await;
            drop(body); // the client hangs up; the bridge records client_cancelled
        }));
    }
    drop(ready_tx);
    let mut open = 0;
    while let Some(ok) = ready_rx.recv().await {
        open += ok as usize;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib(bridge_pid, "VmRSS:");
    release.notify_waiters();
    for h in handles {
        let _ = h.await;
    }
    (rss, open)
}

fn bin(name: &str) -> PathBuf {
    // Cargo sets CARGO_BIN_EXE_<name> for benches; fall back to the bench's own directory.
    let from_env = match name {
        "bridge" => option_env!("CARGO_BIN_EXE_bridge"),
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing; nothing to list
    }
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
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-upstream"),
    );
    let token = Command::new(bin("bridge"))
        .args(["keys", "create", "--user", "bench", "--store", &store])
        .stderr(Stdio::null())
        .output()
        .expect("bridge keys create");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    assert!(!token.is_empty(), "bridge keys create printed no token");
    let config = dir.join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{br_port}\nstore: {store}\nspool_dir: {}\nproviders:\n  anthropic:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {FAKE_KEY}\n",
            dir.join("spool").display()
        ),
    )
    .expect("write bridge.yaml");
    let bridge = Command::new(bin("bridge"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("start bridge");
    let bridge_pid = bridge.id();
    procs.0.push(bridge);
    wait_listening(up_port);
    wait_listening(br_port);

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
        let direct = Target { url: format!("http://127.0.0.1:{up_port}/v1/messages"), key: FAKE_KEY.into() };
        let via = Target { url: format!("http://127.0.0.1:{br_port}/anthropic/v1/messages"), key: token };

        // Warm up connection pools, the token cache and the SQLite file.
        for t in [&direct, &via] {
            for _ in 0..200 {
                one(&client, t, false, Instant::now()).await.expect("warm-up request succeeds");
            }
        }

        let mut rows = Vec::new();
        for stream in [false, true] {
            let d = open_loop(&client, &direct, stream, rate, secs).await;
            let b = open_loop(&client, &via, stream, rate, secs).await;
            rows.push((stream, d, b));
        }
        let tput = [
            (false, closed_loop(&client, &direct, false, 64, 5).await, closed_loop(&client, &via, false, 64, 5).await),
            (true, closed_loop(&client, &direct, true, 64, 5).await, closed_loop(&client, &via, true, 64, 5).await),
        ];
        let idle_rss = rss_kib(bridge_pid, "VmRSS:");
        let (rss, open) = concurrent_streams(&via, streams, bridge_pid).await;

        println!("\n## Bridge gateway benchmark (loopback, {} CPUs)\n", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        println!("Open loop, {rate} req/s for {secs} s each; latency from scheduled send to last body byte.\n");
        println!("| mode | direct p50 | bridge p50 | **added p50** | direct p99 | bridge p99 | **added p99** | ok / failed (bridge) |");
        println!("|---|---|---|---|---|---|---|---|");
        for (stream, d, b) in &rows {
            println!(
                "| {} | {:.0} µs | {:.0} µs | **{:.0} µs** | {:.0} µs | {:.0} µs | **{:.0} µs** | {} / {} |",
                if *stream { "streaming (SSE)" } else { "non-streaming" },
                d.p50_us, b.p50_us, b.p50_us - d.p50_us, d.p99_us, b.p99_us, b.p99_us - d.p99_us, b.ok, b.failed
            );
        }
        println!("\nClosed loop, 64 concurrent clients, 5 s each:\n");
        println!("| mode | direct req/s | bridge req/s | bridge / direct |");
        println!("|---|---|---|---|");
        for (stream, d, b) in tput {
            println!(
                "| {} | {:.0} | {:.0} | {:.2} |",
                if stream { "streaming (SSE)" } else { "non-streaming" },
                d, b, b / d
            );
        }
        println!("\nMemory:\n");
        println!("| measure | value |");
        println!("|---|---|");
        println!("| bridge RSS idle (after the runs above) | {:.1} MB |", idle_rss as f64 / 1024.0);
        println!("| bridge RSS with {open} of {streams} concurrent streams open | {:.1} MB |", rss as f64 / 1024.0);
        println!("| bridge peak RSS (VmHWM) | {:.1} MB |", rss_kib(bridge_pid, "VmHWM:") as f64 / 1024.0);
        println!("\nGoals: added ≤ 0.1 ms p50 / ≤ 1 ms p99 at 1,000 req/s; bridge ≥ 0.5 × direct throughput; 1,000 streams < 150 MB RSS.");
    });
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

//! `llm-bridge serve` (the real binary) under faults, with the `fake-upstream` binary as provider:
//!
//! - SIGKILL under load: every request a client got an answer for is in the store after the
//!   restart (as its final record, or as the `incomplete` intercept-start entry the crash left);
//! - the SQLite store deleted while serving: detected, said (readyz, metrics, log), records
//!   spooled, and a restart refuses to carry on with an empty store as if nothing happened;
//! - an idle-connection flood under a low file-descriptor limit: new clients get a fast 503,
//!   not a hang, and service resumes when the flood ends;
//! - a 200 MB SSE line from the upstream: streamed through, the bridge's memory stays small.
//!
//! Loopback only. Set `BRIDGE_TEST_BRIDGE_BIN` to run these against another `bridge` binary
//! (e.g. an older build, to see them fail).

mod proc_support;
mod store_support;

use proc_support::{free_port, wait_listening, Proc};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge::store::Store;
use serde_json::{json, Value};
use store_support::TempDir;

const ANTHROPIC_KEY: &str = "sk-ant-faults-test-key";
const OPENAI_KEY: &str = "sk-openai-faults-test-key";

fn bridge_bin() -> PathBuf {
    std::env::var_os("BRIDGE_TEST_BRIDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_llm-bridge")))
}

fn bridge_cmd(cwd: &Path) -> Command {
    let mut c = Command::new(bridge_bin());
    c.current_dir(cwd)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "info");
    c
}

fn create_key(cwd: &Path) -> String {
    let out = bridge_cmd(cwd)
        .args(["keys", "create", "--user", "gina"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn start_fake(cwd: &Path) -> (Proc, u16) {
    let port = free_port();
    let log = cwd.join("fake.log");
    let mut fake = Proc(
        Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--anthropic-key", ANTHROPIC_KEY, "--openai-key", OPENAI_KEY])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut fake.0, &log);
    (fake, port)
}

fn write_config(cwd: &Path, port: u16, up_port: u16, extra: &str) -> PathBuf {
    let config = cwd.join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {}\nspool_dir: {}\nproviders:\n  anthropic:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {ANTHROPIC_KEY}\n    forward_headers: [x-fake-*]\n  openai:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {OPENAI_KEY}\n    forward_headers: [x-fake-*]\n{extra}",
            cwd.join("bridge.db").display(),
            cwd.join("spool").display()
        ),
    )
    .unwrap();
    config
}

/// Starts `llm-bridge serve`, optionally under `sh -c 'ulimit -n N; exec llm-bridge ...'`.
fn spawn_serve(cwd: &Path, config: &Path, log: &Path, fd_limit: Option<u32>) -> Proc {
    let mut c = match fd_limit {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "ulimit -n {n} && exec \"$0\" serve --config \"$1\""
                ))
                .arg(bridge_bin())
                .arg(config);
            c.current_dir(cwd)
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env("RUST_LOG", "info");
            c
        }
        None => {
            let mut c = bridge_cmd(cwd);
            c.arg("serve").arg("--config").arg(config);
            c
        }
    };
    c.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    Proc(c.spawn().unwrap())
}

/// A minimal blocking HTTP/1.1 client: one request per connection, `connection: close`.
/// Returns (status, body), or `None` if the exchange failed or took longer than `within`.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    within: Duration,
) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(within)).ok()?;
    s.set_write_timeout(Some(within)).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn anthropic_body(prompt: &str, stream: bool) -> String {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 20, "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
    .to_string()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn sigkill_under_load_loses_no_request_that_reached_the_upstream() {
    let dir = TempDir::new("faults-kill");
    let cwd = dir.path();
    let token = create_key(cwd);
    let (_fake, up_port) = start_fake(cwd);
    let port = free_port();
    let config = write_config(cwd, port, up_port, "");
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(cwd, &config, &log, None);
    wait_listening(port, &mut serve.0, &log);

    // 16 clients in a closed loop; each remembers the prompts it got a complete answer for.
    let served = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (served, stop, token) = (served.clone(), stop.clone(), token.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let prompt = format!("kill-{w}-{i}");
                    i += 1;
                    let stream = i % 2 == 0;
                    let answer = http(
                        port,
                        "POST",
                        "/anthropic/v1/messages",
                        &[("x-api-key", &token), ("anthropic-version", "2023-06-01")],
                        &anthropic_body(&prompt, stream),
                        Duration::from_secs(10),
                    );
                    match answer {
                        Some((200, body))
                            if body.contains(&prompt)
                                && (!stream || body.contains("message_stop")) =>
                        {
                            served.lock().unwrap().push(prompt)
                        }
                        _ => break, // the bridge is gone
                    }
                }
            })
        })
        .collect();
    // Kill in the middle of the load, once a good number of answers went out.
    let deadline = Instant::now() + Duration::from_secs(60);
    while served.lock().unwrap().len() < 400 {
        assert!(Instant::now() < deadline, "the load did not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    serve.signal("-KILL");
    serve.wait_exit();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let served = served.lock().unwrap().clone();

    // Restart (replays the spool, marks what the crash left incomplete), then stop cleanly.
    let log2 = cwd.join("bridge-restart.log");
    let mut serve = spawn_serve(cwd, &config, &log2, None);
    wait_listening(port, &mut serve.0, &log2);
    serve.signal("-TERM");
    assert!(serve.wait_exit().success());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let recs = rt.block_on(async {
        let store = Store::open(&cwd.join("bridge.db").display().to_string())
            .await
            .unwrap();
        store.list_interceptions(&Default::default()).await.unwrap()
    });
    let by_prompt: std::collections::HashMap<&str, &bridge::record::InterceptionRecord> = recs
        .iter()
        .filter_map(|r| r.prompt.as_deref().map(|p| (p, r)))
        .collect();
    let missing: Vec<&String> = served
        .iter()
        .filter(|p| !by_prompt.contains_key(p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no record after SIGKILL: {:?}",
        missing.len(),
        served.len(),
        &missing[..missing.len().min(10)]
    );
    for r in recs.iter().filter(|r| r.outcome.as_str() == "incomplete") {
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("crash or kill")),
            "{r:?}"
        );
    }
}

#[test]
fn deleting_the_store_while_serving_is_detected_and_spooled_and_a_restart_refuses_the_empty_store()
{
    let dir = TempDir::new("faults-delete");
    let cwd = dir.path();
    let token = create_key(cwd);
    let (_fake, up_port) = start_fake(cwd);
    let port = free_port();
    let config = write_config(cwd, port, up_port, "");
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(cwd, &config, &log, None);
    wait_listening(port, &mut serve.0, &log);
    let ask = |prompt: &str| {
        http(
            port,
            "POST",
            "/anthropic/v1/messages",
            &[("x-api-key", &token), ("anthropic-version", "2023-06-01")],
            &anthropic_body(prompt, false),
            Duration::from_secs(10),
        )
    };
    let get = |path: &str| http(port, "GET", path, &[], "", Duration::from_secs(10)).unwrap();
    for i in 0..3 {
        assert_eq!(ask(&format!("before {i}")).unwrap().0, 200);
    }
    let (_, ready) = get("/readyz");
    assert_eq!(
        serde_json::from_str::<Value>(&ready).unwrap()["store"],
        "ok"
    );

    // Someone deletes the database while the bridge runs.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(cwd.join(format!("bridge.db{suffix}")));
    }
    for i in 0..5 {
        assert_eq!(
            ask(&format!("after {i}")).unwrap().0,
            200,
            "requests keep being served"
        );
    }
    // Said on /readyz, in the metrics and in the log; the records wait in the spool.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let (_, body) = get("/readyz");
        let v: Value = serde_json::from_str(&body).unwrap();
        if (v["store"] == "failing" && v["spooled_records"].as_u64().unwrap_or(0) >= 5)
            || Instant::now() > deadline
        {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready["store"], "failing", "{ready}");
    assert!(
        ready["store_error"].as_str().unwrap().contains("deleted"),
        "{ready}"
    );
    assert!(ready["spooled_records"].as_u64().unwrap() >= 5, "{ready}");
    let (_, m) = get("/metrics");
    assert_eq!(metric(&m, "bridge_store_up"), Some(0.0), "{m}");
    assert!(
        metric(&m, "bridge_store_errors_total").unwrap() >= 1.0,
        "{m}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("deleted")),
        "no error logged"
    );
    serve.signal("-TERM");
    serve.wait_exit();

    // A restart finds a new, empty database where its store was: it refuses, and says why.
    let log2 = cwd.join("bridge-restart.log");
    let mut again = spawn_serve(cwd, &config, &log2, None);
    let status = again.wait_exit();
    assert!(!status.success());
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(text.contains("deleted or replaced"), "{text}");
    // The spooled records are still there for whoever restores the store.
    let spooled: usize = std::fs::read_dir(cwd.join("spool"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap().lines().count())
        .sum();
    assert!(spooled >= 5, "{spooled}");
}

#[test]
fn an_idle_connection_flood_under_a_low_fd_limit_gets_fast_503s_and_service_resumes() {
    let dir = TempDir::new("faults-flood");
    let cwd = dir.path();
    let token = create_key(cwd);
    let (_fake, up_port) = start_fake(cwd);
    let port = free_port();
    let config = write_config(cwd, port, up_port, "");
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(cwd, &config, &log, Some(256));
    wait_listening(port, &mut serve.0, &log);

    // More idle connections than the bridge has file descriptors (this test process needs
    // more than that itself: raise its soft limit to the hard one).
    raise_fd_limit();
    let idle: Vec<std::net::TcpStream> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(idle.len() >= 600, "{}", idle.len());
    let started = Instant::now();
    let answer = http(
        port,
        "POST",
        "/anthropic/v1/messages",
        &[("x-api-key", &token), ("anthropic-version", "2023-06-01")],
        &anthropic_body("during the flood", false),
        Duration::from_secs(5),
    );
    let (status, body) =
        answer.expect("a new client must get an answer, not wait for the idle ones");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_connections"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));

    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = http(
            port,
            "POST",
            "/anthropic/v1/messages",
            &[("x-api-key", &token), ("anthropic-version", "2023-06-01")],
            &anthropic_body("after the flood", false),
            Duration::from_secs(5),
        );
        if answer.as_ref().is_some_and(|(s, _)| *s == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not resume: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Peak resident memory of a process, in MB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

#[test]
fn a_200_mb_sse_line_streams_through_and_the_bridges_memory_stays_small() {
    let dir = TempDir::new("faults-huge-line");
    let cwd = dir.path();
    let token = create_key(cwd);
    let (_fake, up_port) = start_fake(cwd);
    let port = free_port();
    let config = write_config(cwd, port, up_port, "");
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(cwd, &config, &log, None);
    wait_listening(port, &mut serve.0, &log);
    let before = peak_rss_mb(serve.0.id());

    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = anthropic_body("huge", true);
    write!(
        s,
        "POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: {token}\r\nanthropic-version: 2023-06-01\r\nx-fake-misbehave: huge-line:200\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut total = 0usize;
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
    }
    assert!(total > 200 * 1024 * 1024, "{total}");
    assert!(String::from_utf8_lossy(&tail).contains("message_stop"));
    let peak = peak_rss_mb(serve.0.id());
    assert!(
        peak < before + 64,
        "bridge peak RSS grew from {before} MB to {peak} MB for one long line"
    );
    serve.signal("-TERM");
    assert!(serve.wait_exit().success());
}

#[test]
fn clients_that_disconnect_at_random_points_each_leave_a_final_record() {
    let dir = TempDir::new("faults-disconnect");
    let cwd = dir.path();
    let token = create_key(cwd);
    let (_fake, up_port) = start_fake(cwd);
    let port = free_port();
    let config = write_config(cwd, port, up_port, "");
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(cwd, &config, &log, None);
    wait_listening(port, &mut serve.0, &log);

    // 300 requests, streaming and not, on 12 threads; each client hangs up at a different
    // point: right after sending, after some bytes of the answer, or at the end.
    let n = 300;
    let threads: Vec<_> = (0..12)
        .map(|t| {
            let token = token.clone();
            std::thread::spawn(move || {
                for i in (t..n).step_by(12) {
                    let stream = i % 3 != 0;
                    let body = anthropic_body(&format!("drop-{i}"), stream);
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    write!(
                        s,
                        "POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: {token}\r\nanthropic-version: 2023-06-01\r\nx-fake-delay-ms: 3\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .unwrap();
                    // Where to hang up: 0 = before any answer, else after this many bytes.
                    let cut = [0usize, 1, 200, 700, 1500, usize::MAX][i % 6];
                    let mut got = 0;
                    let mut buf = [0u8; 512];
                    while got < cut {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => got += k,
                        }
                    }
                    drop(s);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // A client that hangs up right after sending may be gone before the bridge forwards its
    // request: nothing reached the provider, so there is nothing to record. Every request
    // that did reach it must have its final record.
    let (_, stats) = http(
        up_port,
        "GET",
        "/fake/stats",
        &[],
        "",
        Duration::from_secs(10),
    )
    .unwrap();
    // The body is chunked: the JSON object is between the first `{` and the last `}`.
    let json = &stats[stats.find('{').unwrap()..=stats.rfind('}').unwrap()];
    let reached = serde_json::from_str::<Value>(json).unwrap()["requests"]
        .as_u64()
        .unwrap() as usize;
    assert!(
        reached >= n * 5 / 6,
        "{reached} of {n} reached the upstream"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(Store::open(&cwd.join("bridge.db").display().to_string()))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recs = rt
            .block_on(store.list_interceptions(&Default::default()))
            .unwrap();
        let finals = recs
            .iter()
            .filter(|r| r.outcome.as_str() != "incomplete")
            .count();
        if finals == reached {
            assert_eq!(recs.len(), reached);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{finals} final records for {reached} requests that reached the upstream ({} rows)",
            recs.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every request was metered in full: the bridge read each answer to its end.
    let recs = rt
        .block_on(store.list_interceptions(&Default::default()))
        .unwrap();
    for r in &recs {
        assert!(r.usage.output_tokens > 1, "under-counted: {r:?}");
    }
    let m = http(port, "GET", "/metrics", &[], "", Duration::from_secs(10))
        .unwrap()
        .1;
    assert_eq!(
        metric(&m, "bridge_requests_in_flight{provider=\"anthropic\"}"),
        Some(0.0),
        "{m}"
    );
    // Every request has its final record: a clean stop leaves no intercept-start entry behind.
    serve.signal("-TERM");
    assert!(serve.wait_exit().success());
    let journal: Vec<_> = std::fs::read_dir(cwd.join("spool").join("journal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert!(journal.is_empty(), "{journal:?}");
}

#[test]
fn a_hung_a_never_ending_and_a_garbage_upstream_each_end_in_a_bounded_time_with_a_record() {
    let dir = TempDir::new("faults-upstreams");
    let cwd = dir.path();
    let token = create_key(cwd);
    let (_fake, up_port) = start_fake(cwd);
    let port = free_port();
    let config = write_config(
        cwd,
        port,
        up_port,
        "limits:\n  upstream_response_timeout_secs: 1\n  drain_timeout_secs: 1\n",
    );
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(cwd, &config, &log, None);
    wait_listening(port, &mut serve.0, &log);
    let ask = |prompt: &str, misbehave: &str, stream: bool| {
        http(
            port,
            "POST",
            "/anthropic/v1/messages",
            &[
                ("x-api-key", &token),
                ("anthropic-version", "2023-06-01"),
                ("x-fake-misbehave", misbehave),
            ],
            &anthropic_body(prompt, stream),
            Duration::from_secs(10),
        )
    };
    // Hung: 504 in Anthropic's format after the response timeout.
    let (status, body) = ask("hung", "hang", false).expect("an answer, not a hang");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream_response_timeout_secs"), "{body}");
    // Garbage: passed through as received, and recorded.
    let (status, _) = ask("garbage", "garbage", true).unwrap();
    assert_eq!(status, 200);
    // Never-ending: the client takes the first event and leaves; the bridge reads on for
    // at most drain_timeout_secs, then records the request with a usage caveat.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = anthropic_body("forever", true);
    write!(
        s,
        "POST /anthropic/v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {token}\r\nanthropic-version: 2023-06-01\r\nx-fake-misbehave: never-ending\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let mut got = String::new();
    while !got.contains("message_start") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(s);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(Store::open(&cwd.join("bridge.db").display().to_string()))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let recs = loop {
        let recs = rt
            .block_on(store.list_interceptions(&Default::default()))
            .unwrap();
        if recs.len() == 3 || Instant::now() > deadline {
            break recs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let by = |p: &str| {
        recs.iter()
            .find(|r| r.prompt.as_deref() == Some(p))
            .unwrap_or_else(|| panic!("no record for {p}: {recs:?}"))
    };
    assert_eq!(by("hung").outcome.as_str(), "upstream_unavailable");
    assert_eq!(by("hung").status, 504);
    assert_eq!(by("garbage").status, 200);
    let forever = by("forever");
    assert_eq!(forever.outcome.as_str(), "client_cancelled");
    assert_eq!(forever.usage.input_tokens, 5);
    assert!(
        forever
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("usage incomplete")),
        "{forever:?}"
    );
    let m = http(port, "GET", "/metrics", &[], "", Duration::from_secs(10))
        .unwrap()
        .1;
    assert_eq!(
        metric(&m, "bridge_requests_in_flight{provider=\"anthropic\"}"),
        Some(0.0),
        "{m}"
    );
}

#[test]
fn an_unwritable_shm_file_is_refused_at_start_with_a_clear_error_not_a_crash_or_silent_failures() {
    let dir = TempDir::new("faults-shm");
    let cwd = dir.path();
    create_key(cwd);
    let (_fake, up_port) = start_fake(cwd);
    let port = free_port();
    let config = write_config(cwd, port, up_port, "");
    // A -shm file nobody may write (left by another user, or made read-only): SQLite would
    // map it read-only and fail every write (or, on some systems, die of SIGBUS).
    let shm = cwd.join("bridge.db-shm");
    std::fs::write(&shm, b"").unwrap();
    let mut perms = std::fs::metadata(&shm).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&shm, perms).unwrap();
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(cwd, &config, &log, None);
    let status = serve.wait_exit();
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("bridge.db-shm is not a writable file"),
        "{text}"
    );
}

#[test]
fn readyz_says_the_store_is_failing_while_every_write_fails_and_ok_once_writes_land_again() {
    let dir = TempDir::new("faults-locked");
    let cwd = dir.path();
    let token = create_key(cwd);
    let (_fake, up_port) = start_fake(cwd);
    let port = free_port();
    let config = write_config(cwd, port, up_port, "");
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(cwd, &config, &log, None);
    wait_listening(port, &mut serve.0, &log);
    let ask = |prompt: &str| {
        http(
            port,
            "POST",
            "/anthropic/v1/messages",
            &[("x-api-key", &token), ("anthropic-version", "2023-06-01")],
            &anthropic_body(prompt, false),
            Duration::from_secs(10),
        )
        .unwrap()
        .0
    };
    let ready = || {
        let (_, body) = http(port, "GET", "/readyz", &[], "", Duration::from_secs(10)).unwrap();
        serde_json::from_str::<Value>(&body).unwrap()
    };
    assert_eq!(ask("first"), 200);
    // Another process holds the database's write lock (a stuck writer, a backup): reads still
    // work, so counting records would say "ok", but no insert can succeed.
    let lock = rusqlite::Connection::open(cwd.join("bridge.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    assert_eq!(ask("while locked"), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let v = ready();
        if v["store"] == "failing" || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v["store"], "failing", "{v}");
    assert_eq!(v["ready"], true, "records still spool: {v}");
    assert!(v["store_error"].as_str().unwrap().contains("locked"), "{v}");
    drop(lock);
    // The spool drains and the next write succeeds: ok again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = ask("after");
        let v = ready();
        if v["store"] == "ok" && v["spooled_records"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

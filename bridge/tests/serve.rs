//! `llm-bridge serve` as a user runs it: the real binary, the `fake-upstream` binary, real stores.
//!
//! - With no config at all: 127.0.0.1, SQLite in the working directory, and a log that names
//!   the providers that are not configured (their routes answer 503 in the provider's format).
//! - With PostgreSQL (a real server started by the test): requests are recorded there; when
//!   PostgreSQL is stopped mid-run, requests keep succeeding and their records wait in the spool;
//!   when it comes back they land, exactly once; SIGTERM flushes what is still in memory.
//!   No secret (provider keys, bridge token, database password) appears in the log.
//! - With `OTEL_EXPORTER_OTLP_*` set: GenAI spans and metrics reach a collector on loopback,
//!   over http/protobuf or gRPC; a stalled collector slows no request.

mod http_support;
mod otlp_support;
mod proc_support;
mod store_support;

use proc_support::{free_port, wait_listening, Proc};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridge::store::Store;
use http::Method;
use http_support::{client, request, send, HttpClient};
use otlp_support::{attr, collector, grpc_collector, items, stalled_collector, Received};
use serde_json::{json, Value};
use store_support::{wait_until, Postgres, TempDir};

const ANTHROPIC_KEY: &str = "sk-ant-serve-test-server-key";
const OPENAI_KEY: &str = "sk-openai-serve-test-server-key";

/// `bridge` with a clean environment: no provider keys, store or OTLP settings inherited.
fn bridge_cmd(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llm-bridge"));
    c.current_dir(cwd)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env_remove("GOOGLE_API_KEY")
        .env_remove("BRIDGE_STORE")
        .env("RUST_LOG", "info");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTEL_") {
            c.env_remove(k);
        }
    }
    c
}

fn create_key(cwd: &Path, user: &str, store: Option<&str>) -> String {
    let mut c = bridge_cmd(cwd);
    c.args(["keys", "create", "--user", user]);
    if let Some(s) = store {
        c.args(["--store", s]);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn spawn_serve(cwd: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
    let mut c = bridge_cmd(cwd);
    c.arg("serve").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let log_file = std::fs::File::create(log).unwrap();
    c.stdout(Stdio::null()).stderr(log_file);
    Proc(c.spawn().unwrap())
}

fn log_lines(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

#[tokio::test]
async fn serve_without_a_config_uses_loopback_and_sqlite_in_the_working_directory_and_names_unconfigured_providers(
) {
    let dir = TempDir::new("serve-defaults");
    let cwd = dir.path();
    // `keys create` without --store and `serve` without --config agree on ./bridge.db.
    let token = create_key(cwd, "dana", None);
    assert!(cwd.join("bridge.db").exists());

    let port = free_port();
    let log = cwd.join("serve.log");
    let listen = format!("127.0.0.1:{port}");
    let mut serve = spawn_serve(cwd, &["--listen", &listen], &[], &log);
    wait_listening(port, &mut serve.0, &log);
    let c = client();
    let url = format!("http://{listen}");

    let (status, _, body) = send(
        &c,
        request(
            Method::POST,
            &format!("{url}/anthropic/v1/messages"),
            &[("x-api-key", &token), ("anthropic-version", "2023-06-01")],
            json!({"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 503);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`anthropic` is not configured"),
        "{v}"
    );
    let bearer = format!("Bearer {token}");
    let (status, _, body) = send(
        &c,
        request(
            Method::GET,
            &format!("{url}/openai/v1/models"),
            &[("authorization", &bearer)],
            "",
        ),
    )
    .await;
    assert_eq!(status, 503);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "provider_not_configured", "{v}");
    // An unknown token is still a 401 (a stranger learns nothing about the configuration).
    let (status, _, _) = send(
        &c,
        request(
            Method::GET,
            &format!("{url}/openai/v1/models"),
            &[(
                "authorization",
                "Bearer brg_nobody0123456789abcdefghijklmnopqrstuvwxyz",
            )],
            "",
        ),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, body) = send(&c, request(Method::GET, &format!("{url}/readyz"), &[], "")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["store"],
        "ok"
    );

    serve.terminate();
    assert!(serve.wait_exit().success());
    let lines = log_lines(&log);
    let unconfigured: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("provider not configured"))
        })
        .map(|l| {
            (
                l["provider"].as_str().unwrap(),
                l["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(unconfigured.len(), 3, "{lines:?}");
    assert_eq!(unconfigured[0].0, "anthropic");
    assert!(unconfigured[0].1.contains("set ANTHROPIC_API_KEY"));
    assert_eq!(unconfigured[1].0, "openai");
    assert!(unconfigured[1].1.contains("set OPENAI_API_KEY"));
    assert_eq!(unconfigured[2].0, "gemini");
    assert!(unconfigured[2].1.contains("set GEMINI_API_KEY"));
    assert!(lines.iter().all(|l| l["level"] != "WARN"
        || l["message"] == "authentication failed"
        || l["message"]
            .as_str()
            .unwrap()
            .starts_with("provider not configured")));
    // The rejected token is traceable: who (address), where (path), which key (a prefix).
    let failed = lines
        .iter()
        .find(|l| l["message"] == "authentication failed")
        .expect("the failed authentication is logged");
    assert!(
        failed["client_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{failed}"
    );
    assert_eq!(failed["path"], "/openai/v1/models");
    assert_eq!(failed["key_prefix"], "brg_nobody…");
    assert_eq!(failed["reason"], "unknown or revoked token");
    let store = Store::open(&cwd.join("bridge.db").display().to_string())
        .await
        .unwrap();
    let recs = store.list_interceptions(&Default::default()).await.unwrap();
    let rejected: Vec<_> = recs.iter().filter(|r| r.status == 401).collect();
    assert_eq!(rejected.len(), 1, "{recs:?}");
    let err = rejected[0].error.as_deref().unwrap();
    assert!(
        err.contains("from 127.0.0.1:") && err.contains("/openai/v1/models"),
        "{err}"
    );
    let serving = lines
        .iter()
        .find(|l| l["message"] == "bridge serving")
        .expect("a `bridge serving` line");
    assert_eq!(serving["listen"], listen.as_str());
    assert_eq!(serving["store"], "bridge.db");
    assert_eq!(
        serving["anthropic_base_url"],
        format!("http://{listen}/anthropic")
    );
    let defaults = lines
        .iter()
        .find(|l| l["message"] == "no --config given: using the built-in defaults")
        .expect("the defaults are announced");
    assert_eq!(defaults["spool_dir"], "bridge-spool");
    assert!(cwd.join("bridge-spool").is_dir());
    assert!(!std::fs::read_to_string(&log).unwrap().contains(&token));

    // With a provider key in the environment, that provider is configured, pointed at the
    // provider's public API (nothing is sent there: the test stops the bridge right away), and
    // the key never appears in the log.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = cwd.join("serve-env.log");
    let mut serve = spawn_serve(
        cwd,
        &["--listen", &listen],
        &[("ANTHROPIC_API_KEY", "sk-ant-from-the-environment")],
        &log,
    );
    wait_listening(port, &mut serve.0, &log);
    serve.terminate();
    assert!(serve.wait_exit().success());
    let lines = log_lines(&log);
    let configured = lines
        .iter()
        .find(|l| l["message"] == "provider configured")
        .expect("anthropic configured from ANTHROPIC_API_KEY");
    assert_eq!(configured["provider"], "anthropic");
    assert_eq!(configured["base_url"], "https://api.anthropic.com");
    assert!(lines.iter().any(|l| l["provider"] == "openai"
        && l["message"]
            .as_str()
            .unwrap()
            .starts_with("provider not configured")));
    assert!(!std::fs::read_to_string(&log)
        .unwrap()
        .contains("sk-ant-from-the-environment"));
}

/// A request of each kind the SDKs send; each must answer 200 with the fake's text.
async fn exercise(c: &HttpClient, url: &str, token: &str, n: usize) {
    let bearer = format!("Bearer {token}");
    for i in 0..n {
        let (path, headers, body): (&str, Vec<(&str, &str)>, String) = match i % 3 {
            0 => (
                "/anthropic/v1/messages",
                vec![("x-api-key", token), ("anthropic-version", "2023-06-01")],
                json!({"model": "claude-sonnet-4-6", "max_tokens": 20,
                    "messages": [{"role": "user", "content": format!("request {i}")}]})
                .to_string(),
            ),
            1 => (
                "/anthropic/v1/messages",
                vec![
                    ("authorization", bearer.as_str()),
                    ("anthropic-version", "2023-06-01"),
                ],
                json!({"model": "claude-haiku-4-5", "max_tokens": 20, "stream": true,
                    "messages": [{"role": "user", "content": format!("request {i}")}]})
                .to_string(),
            ),
            _ => (
                "/openai/v1/chat/completions",
                vec![("authorization", bearer.as_str())],
                json!({"model": "gpt-4o", "stream": true,
                    "messages": [{"role": "user", "content": format!("request {i}")}]})
                .to_string(),
            ),
        };
        let mut headers = headers;
        headers.push(("content-type", "application/json"));
        headers.push(("x-bridge-workspace", "ws-pg"));
        let (status, _, body) = send(
            c,
            request(Method::POST, &format!("{url}{path}"), &headers, body),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{path}: {text}");
        // The whole reply to this very prompt came back (streams: its deltas, joined).
        assert_eq!(
            reply_text(&text),
            format!("Hello from the fake upstream. You said: request {i}"),
            "{path}: {text}"
        );
    }
}

/// The text of an answer: an Anthropic message's text blocks, or the text deltas of an
/// Anthropic or OpenAI Chat stream, joined.
fn reply_text(body: &str) -> String {
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    if events.is_empty() {
        let v: Value = serde_json::from_str(body).unwrap_or_default();
        return v["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["text"].as_str())
            .collect();
    }
    events
        .iter()
        .filter_map(|e| {
            e["delta"]["text"]
                .as_str()
                .or_else(|| e["choices"][0]["delta"]["content"].as_str())
        })
        .collect()
}

async fn readiness(c: &HttpClient, url: &str) -> Value {
    let (status, _, body) = send(c, request(Method::GET, &format!("{url}/readyz"), &[], "")).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

async fn metrics(c: &HttpClient, url: &str) -> String {
    let (status, headers, body) =
        send(c, request(Method::GET, &format!("{url}/metrics"), &[], "")).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    String::from_utf8(body.to_vec()).unwrap()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn serve_on_postgres_keeps_answering_through_a_database_outage_and_loses_no_record() {
    let pg = Postgres::start();
    let dir = TempDir::new("serve-pg");
    let cwd = dir.path();
    // Trust authentication ignores the password; it is here to prove it is never logged.
    let store = format!(
        "postgres://bridge:pg-secret-password@127.0.0.1:{}/postgres",
        pg.port
    );
    let token = create_key(cwd, "erin", Some(&store));

    let up_port = free_port();
    let fake_log = cwd.join("fake.log");
    let mut fake = Proc(
        Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(["--listen", &format!("127.0.0.1:{up_port}")])
            .args(["--anthropic-key", ANTHROPIC_KEY, "--openai-key", OPENAI_KEY])
            .stderr(std::fs::File::create(&fake_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(up_port, &mut fake.0, &fake_log);

    let port = free_port();
    let config = cwd.join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {}\nproviders:\n  anthropic:\n    base_url: http://127.0.0.1:{up_port}\n    api_key_env: SERVE_TEST_ANTHROPIC_KEY\n  openai:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {OPENAI_KEY}\n",
            cwd.join("spool").display()
        ),
    )
    .unwrap();
    let log = cwd.join("bridge.log");
    let config_arg = config.to_str().unwrap();
    let mut serve = spawn_serve(
        cwd,
        &["--config", config_arg],
        &[("SERVE_TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)],
        &log,
    );
    wait_listening(port, &mut serve.0, &log);
    let url = format!("http://127.0.0.1:{port}");
    let c = client();

    // 1. Normal operation: records land in PostgreSQL.
    exercise(&c, &url, &token, 3).await;
    let reader = Store::open(&store).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            reader.count_interceptions().await.unwrap_or(0) == 3
        })
        .await
    );
    assert_eq!(readiness(&c, &url).await["store"], "ok");

    // 2. PostgreSQL goes away. Requests keep succeeding (the token was seen before); their
    //    records wait in the spool, and /readyz and /metrics say so.
    pg.stop();
    exercise(&c, &url, &token, 6).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let r = readiness(&c, &url).await;
        if r["spooled_records"] == 6 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        last["spooled_records"], 6,
        "records did not reach the spool: {last}"
    );
    assert_ne!(last["store"], "ok", "{last}");
    assert_eq!(last["ready"], true);
    let m = metrics(&c, &url).await;
    assert_eq!(metric(&m, "bridge_spool_records"), Some(6.0), "{m}");
    assert_eq!(metric(&m, "bridge_store_up"), Some(0.0), "{m}");
    assert!(
        metric(&m, "bridge_store_errors_total").unwrap() >= 1.0,
        "{m}"
    );

    // 3. PostgreSQL is back: the spool drains into it.
    pg.restart();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            reader.count_interceptions().await.unwrap_or(0) == 9
        })
        .await,
        "spooled records did not reach PostgreSQL"
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            readiness(&c, &url).await["spooled_records"] == 0
        })
        .await
    );

    // 4. SIGTERM right after a burst: shutdown flushes the records still in memory.
    exercise(&c, &url, &token, 3).await;
    serve.terminate();
    assert!(serve.wait_exit().success());
    assert_eq!(reader.count_interceptions().await.unwrap(), 12);

    let all = reader
        .list_interceptions(&Default::default())
        .await
        .unwrap();
    let ids: std::collections::HashSet<_> = all.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 12, "duplicates after the replay");
    assert!(all.iter().all(|r| r.user == "erin"
        && r.outcome.as_str() == "ok"
        && r.context.workspace.as_deref() == Some("ws-pg")
        && r.usage.input_tokens > 0
        && r.usage.output_tokens > 0
        && r.cost_usd.is_some_and(|c| c > 0.0)));
    assert_eq!(all.iter().filter(|r| r.streaming).count(), 8);

    // One JSON log line per request, and no secret anywhere in the log.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = log_lines(&log);
    let interceptions = lines
        .iter()
        .filter(|l| l["message"] == "interception")
        .count();
    assert_eq!(interceptions, 12);
    for secret in [
        ANTHROPIC_KEY,
        OPENAI_KEY,
        token.as_str(),
        "pg-secret-password",
    ] {
        assert!(!text.contains(secret), "{secret} appears in the log");
    }
}

// Multi-threaded: the collector must keep answering while the test blocks on the bridge's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_genai_spans_and_metrics_over_otlp_when_the_endpoint_is_set() {
    let (endpoint, received) = collector().await;
    serve_exports_over_otlp(&endpoint, "http/protobuf", received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_genai_spans_and_metrics_over_otlp_grpc_when_the_protocol_says_so() {
    let (endpoint, received) = grpc_collector().await;
    serve_exports_over_otlp(&endpoint, "grpc", received).await;
}

async fn serve_exports_over_otlp(endpoint: &str, protocol: &str, received: Received) {
    let dir = TempDir::new("serve-otlp");
    let cwd = dir.path();
    let token = create_key(cwd, "frank", None);
    let up_port = free_port();
    let fake_log = cwd.join("fake.log");
    let mut fake = Proc(
        Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(["--listen", &format!("127.0.0.1:{up_port}")])
            .args(["--anthropic-key", ANTHROPIC_KEY, "--openai-key", OPENAI_KEY])
            .stderr(std::fs::File::create(&fake_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(up_port, &mut fake.0, &fake_log);
    let port = free_port();
    let config = cwd.join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nproviders:\n  anthropic:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {ANTHROPIC_KEY}\n  openai:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {OPENAI_KEY}\n"
        ),
    )
    .unwrap();
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(
        cwd,
        &["--config", config.to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-collector-key=collector-secret",
            ),
            ("OTEL_SERVICE_NAME", "bridge-e2e"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
        ],
        &log,
    );
    wait_listening(port, &mut serve.0, &log);
    let c = client();
    exercise(&c, &format!("http://127.0.0.1:{port}"), &token, 3).await;
    serve.terminate();
    assert!(serve.wait_exit().success()); // flushes the exporter

    let got = received.lock().unwrap().clone();
    let traces: Vec<&Value> = got
        .iter()
        .filter(|(p, _, _)| p == "/v1/traces")
        .map(|(_, _, b)| b)
        .collect();
    assert!(!traces.is_empty(), "no trace export");
    assert!(got
        .iter()
        .all(|(_, h, _)| h.contains(&("x-collector-key".into(), "collector-secret".into()))));
    assert_eq!(
        attr(
            &traces[0]["resourceSpans"][0]["resource"]["attributes"],
            "service.name"
        )
        .unwrap()["stringValue"],
        "bridge-e2e"
    );
    assert_eq!(
        attr(
            &traces[0]["resourceSpans"][0]["resource"]["attributes"],
            "deployment.environment"
        )
        .unwrap()["stringValue"],
        "e2e"
    );
    let spans = items(&got, "/v1/traces");
    let mut seen: Vec<(String, String, String)> = spans
        .iter()
        .map(|s| {
            let a = &s["attributes"];
            let get = |k: &str| {
                attr(a, k)
                    .map(|v| v["stringValue"].as_str().unwrap_or_default().to_string())
                    .unwrap_or_default()
            };
            assert!(
                attr(a, "gen_ai.usage.input_tokens").unwrap()["intValue"]
                    .as_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    > 0
            );
            assert!(attr(a, "gen_ai.usage.output_tokens").is_some());
            assert_eq!(get("enduser.id"), "frank");
            (
                get("gen_ai.system"),
                get("gen_ai.request.model"),
                s["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "anthropic".into(),
                "claude-haiku-4-5".into(),
                "chat claude-haiku-4-5".into()
            ),
            (
                "anthropic".into(),
                "claude-sonnet-4-6".into(),
                "chat claude-sonnet-4-6".into()
            ),
            ("openai".into(), "gpt-4o".into(), "chat gpt-4o".into()),
        ]
    );
    // Metrics are exported at shutdown (the interval is an hour).
    let exported = items(&got, "/v1/metrics");
    let names: Vec<&str> = exported
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"gen_ai.client.token.usage"), "{names:?}");
    assert!(
        names.contains(&"gen_ai.client.operation.duration"),
        "{names:?}"
    );
    assert!(!std::fs::read_to_string(&log)
        .unwrap()
        .contains("collector-secret"));
}

/// A collector that takes connections and never answers must not slow a request: exports run
/// off the request path, and spans beyond the (here tiny) queue are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_at_full_speed_while_the_otlp_collector_is_stalled() {
    let endpoint = stalled_collector().await;
    let dir = TempDir::new("serve-otlp-stalled");
    let cwd = dir.path();
    let token = create_key(cwd, "frank", None);
    let up_port = free_port();
    let fake_log = cwd.join("fake.log");
    let mut fake = Proc(
        Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(["--listen", &format!("127.0.0.1:{up_port}")])
            .args(["--anthropic-key", ANTHROPIC_KEY, "--openai-key", OPENAI_KEY])
            .stderr(std::fs::File::create(&fake_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(up_port, &mut fake.0, &fake_log);
    let port = free_port();
    let config = cwd.join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nproviders:\n  anthropic:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {ANTHROPIC_KEY}\n  openai:\n    base_url: http://127.0.0.1:{up_port}\n    api_key: {OPENAI_KEY}\n"
        ),
    )
    .unwrap();
    let log = cwd.join("bridge.log");
    let mut serve = spawn_serve(
        cwd,
        &["--config", config.to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            // An export waits 5 s for the collector: a request that waited for one would show.
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "2"),
        ],
        &log,
    );
    wait_listening(port, &mut serve.0, &log);
    let c = client();
    let url = format!("http://127.0.0.1:{port}");
    let mut slowest = Duration::ZERO;
    for i in 0..12 {
        let started = Instant::now();
        let (status, _, body) = send(
            &c,
            request(
                Method::POST,
                &format!("{url}/anthropic/v1/messages"),
                &[("x-api-key", &token), ("anthropic-version", "2023-06-01")],
                json!({"model": "claude-sonnet-4-6", "max_tokens": 20,
                    "messages": [{"role": "user", "content": format!("request {i}")}]})
                .to_string(),
            ),
        )
        .await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert!(
        slowest < Duration::from_millis(2500),
        "slowest request {slowest:?}"
    );
    // Records reach telemetry through the recorder: wait until all 12 were counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let dropped = loop {
        let text = metrics(&c, &url).await;
        let dropped = text
            .lines()
            .find_map(|l| l.strip_prefix("bridge_otlp_spans_dropped_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if text.contains("outcome=\"ok\"} 12") || Instant::now() > deadline {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Two in the queue, at most two more in the export that hangs: the rest dropped.
    assert!((8..=10).contains(&dropped), "{dropped} spans dropped");
    serve.terminate();
    assert!(serve.wait_exit().success());
}

/// A bad OTLP setting stops `serve` before it listens, with an error naming the variable and
/// without the value of a header (it may be a vendor key).
#[test]
fn serve_refuses_a_bad_otlp_setting_naming_the_variable() {
    let dir = TempDir::new("serve-otlp-bad");
    let cwd = dir.path();
    let port = free_port();
    for (var, value, secret) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", None),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key-vendor-s3cret-without-equals",
            Some("s3cret"),
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", None),
    ] {
        let log = cwd.join("bad.log");
        let mut serve = spawn_serve(
            cwd,
            &["--listen", &format!("127.0.0.1:{port}")],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
                (var, value),
            ],
            &log,
        );
        assert!(!serve.wait_exit().success(), "{var}={value} accepted");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(var), "{var}: {text}");
        if let Some(s) = secret {
            assert!(!text.contains(s), "{text}");
        }
    }
}

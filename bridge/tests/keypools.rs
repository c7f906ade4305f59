//! Provider key pools with the real binaries: `llm-bridge serve` with two Anthropic keys and
//! the fake upstream rate-limiting one of them (`--throttled-key`, 429 with `retry-after: 30`).
//! Every request succeeds through the other key; the throttled key rests for its
//! `retry-after` instead of being tried again; metrics count attempts per key by name and
//! never show a key's value.

mod http_support;
mod proc_support;
mod store_support;

use proc_support::{free_port, wait_listening, Proc};
use std::process::{Command, Stdio};

use http::Method;
use http_support::{client, request, send, HttpClient};
use serde_json::json;
use store_support::TempDir;

const GOOD_KEY: &str = "sk-ant-pool-good-key";
const HOT_KEY: &str = "sk-ant-pool-throttled-key";

async fn ask(c: &HttpClient, url: &str, token: &str) -> u16 {
    let (s, _, _) = send(
        c,
        request(
            Method::POST,
            &format!("{url}/anthropic/v1/messages"),
            &[
                ("x-api-key", token),
                ("anthropic-version", "2023-06-01"),
                ("content-type", "application/json"),
            ],
            json!({"model": "claude-sonnet-4-6", "max_tokens": 20,
                "messages": [{"role": "user", "content": "hello"}]})
            .to_string(),
        ),
    )
    .await;
    s.as_u16()
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_key_fails_over_to_the_next_and_rests_for_its_retry_after() {
    let dir = TempDir::new("keypools");
    let cwd = dir.path();
    let up = free_port();
    let fake_log = cwd.join("fake.log");
    let mut fake = Proc(
        Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(["--listen", &format!("127.0.0.1:{up}")])
            .args(["--anthropic-key", GOOD_KEY, "--throttled-key", HOT_KEY])
            .stderr(std::fs::File::create(&fake_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(up, &mut fake.0, &fake_log);
    let port = free_port();
    let store = cwd.join("bridge.db").display().to_string();
    let config = cwd.join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {}\nproviders:\n  anthropic:\n    base_url: http://127.0.0.1:{up}\n    keys:\n      - {{ name: hot, api_key: {HOT_KEY} }}\n      - {{ name: good, api_key: {GOOD_KEY} }}\n",
            cwd.join("spool").display()
        ),
    )
    .unwrap();
    let bridge = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
            .current_dir(cwd)
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("BRIDGE_STORE")
            .args(args)
            .output()
            .unwrap()
    };
    let out = bridge(&["keys", "create", "--user", "pat", "--store", &store]);
    let token = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let log = cwd.join("serve.log");
    let mut serve = Proc(
        Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
            .current_dir(cwd)
            .env_remove("ANTHROPIC_API_KEY")
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut serve.0, &log);
    let c = client();
    let url = format!("http://127.0.0.1:{port}");
    for i in 0..8 {
        assert_eq!(ask(&c, &url, &token).await, 200, "request {i}");
    }
    let (_, _, body) = send(&c, request(Method::GET, &format!("{url}/metrics"), &[], "")).await;
    let m = String::from_utf8_lossy(&body).into_owned();
    let attempts = |key: &str, outcome: &str| {
        metric(
            &m,
            &format!("bridge_upstream_key_attempts_total{{provider=\"anthropic\",key=\"{key}\",outcome=\"{outcome}\"}}"),
        )
    };
    // The hot key was tried once, got its 429, and rested for the 30 s it was told.
    assert_eq!(attempts("hot", "throttled"), 1, "{m}");
    assert_eq!(attempts("hot", "answered"), 0, "{m}");
    assert_eq!(attempts("good", "answered"), 8, "{m}");
    assert!(
        !m.contains(HOT_KEY) && !m.contains(GOOD_KEY),
        "a key value in the metrics"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("trying the next key of the pool") && logs.contains("\"key\":\"hot\""),
        "{logs}"
    );
    assert!(
        !logs.contains(HOT_KEY) && !logs.contains(GOOD_KEY),
        "a key value in the log"
    );
}

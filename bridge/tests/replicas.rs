//! Bridge as a fleet service: the real `llm-bridge` binary, several processes, real stores.
//!
//! - Two replicas over one PostgreSQL (a private server started by the test), started at the
//!   same instant on an empty database: both migrate without failing (the migration advisory
//!   lock serializes them: each migration is applied, and logged, once). A key created once
//!   works on both; requests through both are recorded once each; `llm-bridge usage` sees the
//!   sum; a revoked key stops working on both within the key cache's 5 seconds.
//! - Requests per minute shared by two replicas on one PostgreSQL: each counts in memory and
//!   syncs with the store every 250 ms; the limit holds across both, and the store's count is
//!   exactly what was served.
//! - `/metrics` protection: on its own listener (`metrics.listen`), 404 on the main one; with
//!   `metrics.token_file`, 401 without the bearer token; `/healthz` and `/readyz` stay open.

mod http_support;
mod proc_support;
mod store_support;

use proc_support::{free_port, wait_listening, Proc};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridge::store::Store;
use http::Method;
use http_support::{client, request, send, HttpClient};
use serde_json::{json, Value};
use store_support::{wait_until, Postgres, TempDir};

const ANTHROPIC_KEY: &str = "sk-ant-replica-test-server-key";
const OPENAI_KEY: &str = "sk-openai-replica-test-server-key";
/// `keys::CACHE_TTL`: how long a replica may keep accepting a revoked key (README: "within 5
/// seconds").
const REVOCATION_WINDOW: Duration = Duration::from_secs(5);

/// `llm-bridge` with a clean environment.
fn bridge_cmd(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llm-bridge"));
    c.current_dir(cwd)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("BRIDGE_STORE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "info");
    c
}

fn cli(cwd: &Path, args: &[&str]) -> String {
    let out = bridge_cmd(cwd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "llm-bridge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fake_upstream(cwd: &Path) -> (Proc, u16) {
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

/// Writes `NAME.yaml` (both providers on the fake upstream, plus `extra` lines) and starts
/// `llm-bridge serve` with it; its log is `NAME.log`.
fn spawn_bridge(cwd: &Path, name: &str, port: u16, store: &str, up: u16, extra: &str) -> Proc {
    let config = cwd.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {}\n{extra}providers:\n  anthropic:\n    base_url: http://127.0.0.1:{up}\n    api_key: {ANTHROPIC_KEY}\n    forward_headers: [x-fake-*]\n  openai:\n    base_url: http://127.0.0.1:{up}\n    api_key: {OPENAI_KEY}\n",
            cwd.join(format!("{name}-spool")).display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(cwd.join(format!("{name}.log"))).unwrap();
    Proc(
        bridge_cmd(cwd)
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One non-streaming Anthropic call and one streaming OpenAI call; returns their statuses.
async fn two_calls(c: &HttpClient, url: &str, token: &str, workspace: &str) -> [u16; 2] {
    let bearer = format!("Bearer {token}");
    let (a, _, _) = send(
        c,
        request(
            Method::POST,
            &format!("{url}/anthropic/v1/messages"),
            &[
                ("x-api-key", token),
                ("anthropic-version", "2023-06-01"),
                ("content-type", "application/json"),
                ("x-bridge-workspace", workspace),
            ],
            json!({"model": "claude-sonnet-4-6", "max_tokens": 20,
                "messages": [{"role": "user", "content": "hello"}]})
            .to_string(),
        ),
    )
    .await;
    let (o, _, _) = send(
        c,
        request(
            Method::POST,
            &format!("{url}/openai/v1/chat/completions"),
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
                ("x-bridge-workspace", workspace),
            ],
            json!({"model": "gpt-4o", "stream": true,
                "messages": [{"role": "user", "content": "hello"}]})
            .to_string(),
        ),
    )
    .await;
    [a.as_u16(), o.as_u16()]
}

async fn get(
    c: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let (s, h, b) = send(c, request(Method::GET, url, headers, "")).await;
    (s.as_u16(), h, String::from_utf8_lossy(&b).into_owned())
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_migrate_together_share_keys_record_once_and_drop_revoked_keys(
) {
    let pg = Postgres::start();
    let dir = TempDir::new("replicas");
    let cwd = dir.path();
    let store = pg.url();
    let (_fake, up) = fake_upstream(cwd);

    // Both replicas start at the same instant on an empty database.
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_bridge(cwd, "a", port_a, &store, up, "");
    let mut b = spawn_bridge(cwd, "b", port_b, &store, up, "");
    wait_listening(port_a, &mut a.0, &cwd.join("a.log"));
    wait_listening(port_b, &mut b.0, &cwd.join("b.log"));
    let db = pg_client(&store).await;
    let versions: Vec<i64> = db
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!versions.is_empty());
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    // Serialized by the advisory lock: each migration was applied by exactly one replica.
    let applied: usize = ["a.log", "b.log"]
        .iter()
        .map(|f| {
            log_lines(&cwd.join(f))
                .iter()
                .filter(|l| l["message"] == "applied store migration")
                .count()
        })
        .sum();
    assert_eq!(applied, versions.len());

    // More processes at once on fresh databases: none fails.
    for i in 0..3 {
        db.batch_execute(&format!("CREATE DATABASE burst{i}"))
            .await
            .unwrap();
        let url = store.replace("/postgres", &format!("/burst{i}"));
        let children: Vec<_> = (0..4)
            .map(|_| {
                bridge_cmd(cwd)
                    .args(["keys", "list", "--store", &url])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "concurrent migration failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // A key created once works on both.
    let token = cli(
        cwd,
        &["keys", "create", "--user", "rita", "--store", &store],
    )
    .trim()
    .to_string();
    let c = client();
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    assert_eq!(two_calls(&c, &url_a, &token, "via-a").await, [200, 200]);
    assert_eq!(two_calls(&c, &url_b, &token, "via-b").await, [200, 200]);
    assert_eq!(two_calls(&c, &url_a, &token, "via-a").await, [200, 200]);

    // Recorded once each, by the replica that served it.
    let reader = Store::open(&store).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || async {
            reader.count_interceptions().await.unwrap_or(0) >= 6
        })
        .await,
        "records did not arrive"
    );
    let all = reader
        .list_interceptions(&Default::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    let ids: std::collections::HashSet<_> = all.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 6);
    let via = |w: &str| {
        all.iter()
            .filter(|r| r.context.workspace.as_deref() == Some(w))
            .count()
    };
    assert_eq!((via("via-a"), via("via-b")), (4, 2));
    assert!(all.iter().all(|r| r.user == "rita" && r.status == 200));

    // `llm-bridge usage` sees the sum.
    let usage: Value = serde_json::from_str(&cli(
        cwd,
        &[
            "usage", "--since", "1h", "--format", "json", "--store", &store,
        ],
    ))
    .unwrap();
    assert_eq!(usage["total"]["requests"], 6, "{usage}");
    assert_eq!(usage["rows"][0]["key"], "rita", "{usage}");

    // Revoked once, refused by both within the cache window.
    let keys: Value = serde_json::from_str(&cli(
        cwd,
        &["keys", "list", "--format", "json", "--store", &store],
    ))
    .unwrap();
    let id = keys[0]["id"].as_str().unwrap().to_string();
    cli(cwd, &["keys", "revoke", &id, "--store", &store]);
    let revoked_at = Instant::now();
    // Per replica: when the last request that was still accepted was sent, and when the first
    // refused one was (send times: a slow answer on a loaded machine must not count).
    let mut last_accepted = [Duration::ZERO; 2];
    let mut first_refused: [Option<Duration>; 2] = [None, None];
    let bearer = format!("Bearer {token}");
    while first_refused.iter().any(Option::is_none)
        && revoked_at.elapsed() < REVOCATION_WINDOW + Duration::from_secs(5)
    {
        for (i, url) in [&url_a, &url_b].into_iter().enumerate() {
            if first_refused[i].is_some() {
                continue;
            }
            let sent = revoked_at.elapsed();
            let (s, _, body) = get(
                &c,
                &format!("{url}/openai/v1/models"),
                &[("authorization", &bearer)],
            )
            .await;
            match s {
                200 => last_accepted[i] = sent,
                401 => first_refused[i] = Some(sent),
                _ => panic!("replica {i}: {s} {body}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..2 {
        let refused =
            first_refused[i].unwrap_or_else(|| panic!("replica {i} still accepts the revoked key"));
        eprintln!(
            "replica {i}: revoked key last accepted at +{:?}, refused from +{refused:?}",
            last_accepted[i]
        );
        assert!(
            last_accepted[i] < REVOCATION_WINDOW,
            "replica {i} accepted the revoked key {:?} after the revocation",
            last_accepted[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_their_own_listener_or_require_a_bearer_token_while_health_stays_open() {
    let dir = TempDir::new("metrics-access");
    let cwd = dir.path();
    let (_fake, up) = fake_upstream(cwd);
    std::fs::write(cwd.join("token"), "scrape-me-0123456789\n").unwrap();
    let token_file = cwd.join("token").display().to_string();
    let c = client();

    // 1. Own listener and a token.
    let (port, mport) = (free_port(), free_port());
    let mut p = spawn_bridge(
        cwd,
        "own",
        port,
        &format!("sqlite://{}", cwd.join("own.db").display()),
        up,
        &format!("metrics:\n  listen: 127.0.0.1:{mport}\n  token_file: {token_file}\n"),
    );
    wait_listening(port, &mut p.0, &cwd.join("own.log"));
    wait_listening(mport, &mut p.0, &cwd.join("own.log"));
    let main = format!("http://127.0.0.1:{port}");
    let side = format!("http://127.0.0.1:{mport}");
    assert_eq!(get(&c, &format!("{main}/metrics"), &[]).await.0, 404);
    assert_eq!(
        get(
            &c,
            &format!("{main}/metrics"),
            &[("authorization", "Bearer scrape-me-0123456789")]
        )
        .await
        .0,
        404
    );
    let (s, h, _) = get(&c, &format!("{side}/metrics"), &[]).await;
    assert_eq!(s, 401);
    assert_eq!(h["www-authenticate"], "Bearer realm=\"metrics\"");
    let wrong = [("authorization", "Bearer scrape-me")];
    assert_eq!(get(&c, &format!("{side}/metrics"), &wrong).await.0, 401);
    let (s, _, body) = get(
        &c,
        &format!("{side}/metrics"),
        &[("authorization", "Bearer scrape-me-0123456789")],
    )
    .await;
    assert_eq!(s, 200);
    assert!(body.contains("bridge_"), "{body}");
    // Provider routes are not on the metrics listener; health is open on both.
    assert_eq!(
        get(&c, &format!("{side}/openai/v1/models"), &[]).await.0,
        404
    );
    for url in [&main, &side] {
        assert_eq!(get(&c, &format!("{url}/healthz"), &[]).await.0, 200);
        assert_eq!(get(&c, &format!("{url}/readyz"), &[]).await.0, 200);
    }
    drop(p);

    // 2. A token on the main listener.
    let port = free_port();
    let mut p = spawn_bridge(
        cwd,
        "token",
        port,
        &format!("sqlite://{}", cwd.join("token.db").display()),
        up,
        &format!("metrics:\n  token_file: {token_file}\n"),
    );
    wait_listening(port, &mut p.0, &cwd.join("token.log"));
    let main = format!("http://127.0.0.1:{port}");
    assert_eq!(get(&c, &format!("{main}/metrics"), &[]).await.0, 401);
    let (s, _, body) = get(
        &c,
        &format!("{main}/metrics"),
        &[("authorization", "Bearer scrape-me-0123456789")],
    )
    .await;
    assert_eq!(s, 200);
    assert!(body.contains("bridge_"), "{body}");
    assert_eq!(get(&c, &format!("{main}/healthz"), &[]).await.0, 200);
    // The token never reaches the log.
    drop(p);
    for f in ["own.log", "token.log"] {
        let text = std::fs::read_to_string(cwd.join(f)).unwrap();
        assert!(!text.contains("scrape-me"), "{f} shows the metrics token");
    }
}

/// One Anthropic call through `url` for `model`; its status.
async fn one_call(c: &HttpClient, url: &str, token: &str, model: &str) -> u16 {
    anthropic_call(c, url, token, model, false, &[]).await.0
}

/// An Anthropic Messages call (streamed or not) with extra headers: its status and body.
async fn anthropic_call(
    c: &HttpClient,
    url: &str,
    token: &str,
    model: &str,
    stream: bool,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let mut headers = vec![
        ("x-api-key", token),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    let (s, _, body) = send(
        c,
        request(
            Method::POST,
            &format!("{url}/anthropic/v1/messages"),
            &headers,
            json!({"model": model, "max_tokens": 20, "stream": stream,
                "messages": [{"role": "user", "content": "hello"}]})
            .to_string(),
        ),
    )
    .await;
    (s.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget_spent_through_either() {
    let pg = Postgres::start();
    let dir = TempDir::new("replicas-budget");
    let cwd = dir.path();
    let store = pg.url();
    let (_fake, up) = fake_upstream(cwd);
    let token = cli(cwd, &["keys", "create", "--user", "bea", "--store", &store]);
    let token = token.trim().lines().last().unwrap().trim().to_string();
    // One call costs about $0.0002 (claude-sonnet-4-6 at $3/$15 per million tokens).
    cli(
        cwd,
        &[
            "limits",
            "set",
            "--user",
            "bea",
            "--budget",
            "day=0.001",
            "--store",
            &store,
        ],
    );
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_bridge(cwd, "a", port_a, &store, up, "");
    let mut b = spawn_bridge(cwd, "b", port_b, &store, up, "");
    wait_listening(port_a, &mut a.0, &cwd.join("a.log"));
    wait_listening(port_b, &mut b.0, &cwd.join("b.log"));
    let c = client();
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    // Spend it all through replica A only.
    let mut spent_through_a = 0;
    while one_call(&c, &url_a, &token, "claude-sonnet-4-6").await == 200 {
        spent_through_a += 1;
        assert!(spent_through_a < 50, "replica A never refused");
    }
    assert!(spent_through_a >= 4, "$0.001 buys about five calls");
    assert_eq!(one_call(&c, &url_a, &token, "claude-sonnet-4-6").await, 402);
    // Replica B sees A's spend from the store within its refresh interval (5 s) plus the
    // recorder's batch delay, and refuses too. It is probed with a model that has no price,
    // so the probes themselves spend nothing: only A's spend can make B refuse.
    let probe = "claude-probe-unpriced";
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || async {
            one_call(&c, &url_b, &token, probe).await == 402
        })
        .await,
        "replica B kept serving a user whose budget was used up through replica A"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(one_call(&c, &url_b, &token, "claude-sonnet-4-6").await, 402);
    let explained = cli(
        cwd,
        &["limits", "explain", "--user", "bea", "--store", &store],
    );
    assert!(
        explained.contains("of $0.001 spent by user bea"),
        "{explained}"
    );
}

/// Replicas count requests per minute in memory and write them to the store every 250 ms
/// (`rate_windows::SYNC`): each replica reads the others' counts back at its sync, so one that
/// served part of the limit refuses once the other served the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_requests_per_minute_limit_through_the_store() {
    const RPM: usize = 6;
    let pg = Postgres::start();
    let dir = TempDir::new("replicas-rpm");
    let cwd = dir.path();
    let store = pg.url();
    let (_fake, up) = fake_upstream(cwd);
    let token = cli(cwd, &["keys", "create", "--user", "cy", "--store", &store]);
    let token = token.trim().lines().last().unwrap().trim().to_string();
    cli(
        cwd,
        &[
            "limits",
            "set",
            "--user",
            "cy",
            "--requests-per-minute",
            &RPM.to_string(),
            "--store",
            &store,
        ],
    );
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_bridge(cwd, "a", port_a, &store, up, "");
    let mut b = spawn_bridge(cwd, "b", port_b, &store, up, "");
    wait_listening(port_a, &mut a.0, &cwd.join("a.log"));
    wait_listening(port_b, &mut b.0, &cwd.join("b.log"));
    let c = client();
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    // All of it inside one minute window: start early in a minute.
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 40 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
    let window = chrono::Utc::now().timestamp() / 60 * 60;
    // One request through B: B now counts this window in memory.
    assert_eq!(one_call(&c, &url_b, &token, "claude-sonnet-4-6").await, 200);
    // A's first request of the window reads the store (B's one is there), then A counts in
    // memory and serves exactly the rest.
    let mut served = 1;
    while one_call(&c, &url_a, &token, "claude-sonnet-4-6").await == 200 {
        served += 1;
        assert!(served <= RPM, "the replicas served more than {RPM}");
    }
    assert_eq!(served, RPM);
    // After a few sync intervals (250 ms each), A's counts are in the store and B has
    // read them back: B refuses without asking the store.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(one_call(&c, &url_b, &token, "claude-sonnet-4-6").await, 429);
    assert_eq!(one_call(&c, &url_a, &token, "claude-sonnet-4-6").await, 429);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The store holds exactly what was served: refused requests are not counted.
    let db = pg_client(&store).await;
    let counted: i64 = db
        .query_one(
            "SELECT requests FROM rate_windows WHERE subject = 'user cy' AND window_start = $1",
            &[&window],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, RPM as i64);
    assert_eq!(
        chrono::Utc::now().timestamp() / 60 * 60,
        window,
        "the minute rolled over during the test"
    );
}

/// A streamed Anthropic call through `url` that the fake upstream paces at `delay_ms` between
/// events; its status once the stream ended.
async fn slow_stream(c: HttpClient, url: String, token: String, delay_ms: u64) -> u16 {
    let delay = delay_ms.to_string();
    let (s, body) = anthropic_call(
        &c,
        &url,
        &token,
        "claude-sonnet-4-6",
        true,
        &[("x-fake-delay-ms", &delay)],
    )
    .await;
    assert!(
        s != 200 || body.contains("message_stop"),
        "the stream did not end normally"
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_concurrency_limit_through_leases_in_the_store() {
    let pg = Postgres::start();
    let dir = TempDir::new("replicas-concurrency");
    let cwd = dir.path();
    let store = pg.url();
    let (_fake, up) = fake_upstream(cwd);
    let token = cli(cwd, &["keys", "create", "--user", "dee", "--store", &store]);
    let token = token.trim().lines().last().unwrap().trim().to_string();
    cli(
        cwd,
        &[
            "limits",
            "set",
            "--user",
            "dee",
            "--concurrent-requests",
            "2",
            "--store",
            &store,
        ],
    );
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_bridge(cwd, "a", port_a, &store, up, "");
    let mut b = spawn_bridge(cwd, "b", port_b, &store, up, "");
    wait_listening(port_a, &mut a.0, &cwd.join("a.log"));
    wait_listening(port_b, &mut b.0, &cwd.join("b.log"));
    let c = client();
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    // Both of dee's slots taken on A by two slow streams (several seconds each).
    let streams: Vec<_> = (0..2)
        .map(|_| tokio::spawn(slow_stream(c.clone(), url_a.clone(), token.clone(), 900)))
        .collect();
    // A writes its leases and B reads them back within a sync interval (250 ms) or two.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    if streams.iter().any(|s| s.is_finished()) {
        let mut ended = Vec::new();
        for s in streams {
            if s.is_finished() {
                ended.push(s.await.unwrap());
            }
        }
        panic!("streams ended too soon: {ended:?}");
    }
    assert_eq!(one_call(&c, &url_b, &token, "claude-sonnet-4-6").await, 429);
    assert_eq!(one_call(&c, &url_a, &token, "claude-sonnet-4-6").await, 429);
    for s in streams {
        assert_eq!(s.await.unwrap(), 200);
    }
    // Released on A: B admits again once it has read that, within a few sync intervals.
    let released = Instant::now();
    while one_call(&c, &url_b, &token, "claude-sonnet-4-6").await != 200 {
        assert!(
            released.elapsed() < Duration::from_secs(3),
            "B still refuses 3 s after A's requests ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle replicas leave no lease behind.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let db = pg_client(&store).await;
    let rows: i64 = db
        .query_one("SELECT COUNT(*) FROM concurrency_leases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

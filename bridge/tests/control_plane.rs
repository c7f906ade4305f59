//! Bridge as Boundary's control plane: the real `llm-bridge` binary (CLI and `serve`), real
//! HTTP on loopback, real stores (SQLite files and a private PostgreSQL server).
//!
//! - Enrolment: the agent token is printed once, only its SHA-256 is stored; unknown and
//!   revoked tokens get 401 with the reason.
//! - Policies: an invalid push names file, line and field and stores nothing; history, diff,
//!   rollback and the audit/enforce switch are new versions (SQLite and PostgreSQL).
//! - The agent API: the policy long-poll (ETag, 304, a push wakes a poller held by another
//!   replica on the same PostgreSQL within 2 s), status, sessions, bounded bodies.
//! - Session credentials on the gateway: a valid one sets session/template/workspace from the
//!   enrolment, a tampered one is refused (403) and recorded, `require_session` refuses a
//!   request without one, and revoking the agent or ending the session takes effect within
//!   the 5-second cache.

mod http_support;
mod proc_support;
mod store_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bridge::record::Outcome;
use bridge::store::Store;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use http_support::{client, request, HttpClient};
use proc_support::{free_port, wait_listening, Proc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store_support::{wait_until, Postgres, TempDir};

const ANTHROPIC_KEY: &str = "sk-ant-control-plane-test-key";
/// `control::sessions::CACHE_TTL`: how long a gateway may keep accepting a credential of a
/// revoked agent or an ended session (README: "within 5 seconds").
const SESSION_CACHE_TTL: Duration = Duration::from_secs(5);

const GOOD_POLICY: &str =
    "mode: enforce\nallowlist:\n  - domain=github.com\n  - domain=pypi.org port=443\n";
const BAD_POLICY: &str =
    "mode: enforce\nallowlist:\n  - domain=github.com\n  - domain=pypi.org port=99999\n";

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

fn run(cwd: &Path, store: &str, args: &[&str]) -> Output {
    bridge_cmd(cwd)
        .args(args)
        .args(["--store", store])
        .output()
        .unwrap()
}

/// Runs a CLI command that must succeed; its stdout.
fn cli(cwd: &Path, store: &str, args: &[&str]) -> String {
    let out = run(cwd, store, args);
    assert!(
        out.status.success(),
        "llm-bridge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `agents create`: (agent id, token).
fn create_agent(cwd: &Path, store: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["agents", "create"];
    all.extend_from_slice(args);
    let out = run(cwd, store, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("agt_"))
        .unwrap_or_else(|| panic!("no agent id in {stderr:?}"))
        .to_string();
    (id, token)
}

fn push(cwd: &Path, store: &str, template: &str, text: &str, extra: &[&str]) -> Output {
    let file = cwd.join(format!("{template}.yaml"));
    std::fs::write(&file, text).unwrap();
    let file = file.display().to_string();
    let mut args = vec!["policy", "push", "--template", template, &file];
    args.extend_from_slice(extra);
    run(cwd, store, &args)
}

fn fake_upstream(cwd: &Path) -> (Proc, u16) {
    let port = free_port();
    let log = cwd.join("fake.log");
    let mut fake = Proc(
        Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--anthropic-key", ANTHROPIC_KEY])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut fake.0, &log);
    (fake, port)
}

/// Starts `llm-bridge serve` (`NAME.yaml`, `NAME.log`) with `extra` config lines and, if
/// `up` is given, Anthropic on the fake upstream; returns it with its base URL.
fn serve(cwd: &Path, name: &str, store: &str, up: Option<u16>, extra: &str) -> (Proc, String) {
    let port = free_port();
    let providers = up
        .map(|up| {
            format!(
                "providers:\n  anthropic:\n    base_url: http://127.0.0.1:{up}\n    api_key: {ANTHROPIC_KEY}\n"
            )
        })
        .unwrap_or_default();
    let config = cwd.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {}\nlimits:\n  record_wait_ms: 5000\n{extra}{providers}",
            cwd.join(format!("{name}-spool")).display()
        ),
    )
    .unwrap();
    let log = cwd.join(format!("{name}.log"));
    let mut p = Proc(
        bridge_cmd(cwd)
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut p.0, &log);
    (p, format!("http://127.0.0.1:{port}"))
}

/// Sends a request and reads the whole answer, within `within`.
async fn send_within(
    c: &HttpClient,
    req: http::Request<Full<Bytes>>,
    within: Duration,
) -> (StatusCode, http::HeaderMap, String) {
    let resp = tokio::time::timeout(within, c.request(req))
        .await
        .expect("no response in time")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn agent_call(
    c: &HttpClient,
    method: Method,
    url: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, http::HeaderMap, String) {
    let bearer = format!("Bearer {token}");
    let mut all = vec![
        ("authorization", bearer.as_str()),
        ("x-boundary-agent-version", "0.1.0-test"),
        ("x-boundary-agent-host", "ws-host-1"),
        ("content-type", "application/json"),
    ];
    all.extend_from_slice(headers);
    send_within(c, request(method, url, &all, body), Duration::from_secs(75)).await
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"))["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
        .to_string()
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_token_is_shown_once_only_its_hash_is_stored_and_unknown_or_revoked_tokens_get_401(
) {
    let dir = TempDir::new("cp-enrol");
    let cwd = dir.path();
    let db = cwd.join("bridge.db");
    let store = db.display().to_string();
    let (id, token) = create_agent(
        cwd,
        &store,
        &[
            "--template",
            "python-dev",
            "--workspace",
            "ws-42",
            "--name",
            "builder-1",
        ],
    );
    // `bnd_agent_` + 43 base64url characters of 256 random bits.
    let secret = token.strip_prefix("bnd_agent_").expect(&token);
    assert_eq!(secret.len(), 43, "{token}");
    assert!(secret
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));

    // Neither the listing nor the database holds the token; the database holds its hash.
    let listed = cli(cwd, &store, &["agents", "list", "--format", "json"]);
    assert!(!listed.contains(secret), "{listed}");
    let agents: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(agents[0]["id"], id.as_str());
    assert_eq!(agents[0]["template"], "python-dev");
    assert_eq!(agents[0]["workspace"], "ws-42");
    assert_eq!(agents[0]["name"], "builder-1");
    assert_eq!(
        agents[0]["prefix"].as_str().unwrap().len(),
        "bnd_agent_".len() + 8
    );
    let table = cli(cwd, &store, &["agents", "list"]);
    assert!(
        table.contains("builder-1") && table.contains("never"),
        "{table}"
    );
    {
        let s = Store::open(&store).await.unwrap();
        drop(s);
    }
    let raw = [
        std::fs::read(&db).unwrap(),
        std::fs::read(cwd.join("bridge.db-wal")).unwrap_or_default(),
    ]
    .concat();
    let contains = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(secret), "the token is in the database file");
    assert!(contains(&sha256_hex(&token)), "its SHA-256 is not");

    let (_bridge, url) = serve(cwd, "bridge", &store, None, "");
    let c = client();
    let policy_url = format!("{url}/boundary/v1/policy");
    // Known token, no policy yet: 404 naming the template; the agent was seen.
    let (s, _, body) = agent_call(&c, Method::GET, &policy_url, &token, &[], "").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_of(&body), "no policy pushed for template python-dev");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            let v: Value =
                serde_json::from_str(&cli(cwd, &store, &["agents", "list", "--format", "json"]))
                    .unwrap();
            v[0]["host"] == "ws-host-1" && v[0]["agent_version"] == "0.1.0-test"
        })
        .await,
        "host and version not recorded"
    );
    // No token, another scheme, an unknown token: 401 with the reason.
    let (s, h, body) = send_within(
        &c,
        request(Method::GET, &policy_url, &[], ""),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(error_of(&body).starts_with("missing agent token"), "{body}");
    assert!(h.contains_key("www-authenticate"));
    let forged = format!("bnd_agent_{}", "A".repeat(43));
    let (s, _, body) = agent_call(&c, Method::GET, &policy_url, &forged, &[], "").await;
    assert_eq!(
        (s, error_of(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unknown agent token")
    );
    // Revoked: refused at once, with the reason.
    cli(cwd, &store, &["agents", "revoke", &id]);
    let (s, _, body) = agent_call(&c, Method::GET, &policy_url, &token, &[], "").await;
    assert_eq!(
        (s, error_of(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "agent token revoked")
    );
    let out = run(cwd, &store, &["agents", "revoke", "agt_nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent with id \"agt_nope\""));
    // A bad template name is refused before anything is stored.
    let out = run(cwd, &store, &["agents", "create", "--template", "a:b"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("template name \"a:b\""));
}

#[test]
fn an_invalid_policy_is_refused_with_file_line_and_field_and_nothing_is_stored() {
    let dir = TempDir::new("cp-invalid");
    let cwd = dir.path();
    let store = cwd.join("bridge.db").display().to_string();
    let out = push(
        cwd,
        &store,
        "python-dev",
        BAD_POLICY,
        &["--comment", "typo"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = cwd.join("python-dev.yaml").display().to_string();
    // Exactly what `boundary validate` prints: FILE:LINE:COL: FIELD: message.
    assert!(
        stderr.starts_with(&format!(
            "{file}:4:5: allowlist[1].port: `99999` is not a port"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was stored"), "{stderr}");
    let out = run(
        cwd,
        &store,
        &["policy", "history", "--template", "python-dev"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no policy pushed"));
    let list: Value =
        serde_json::from_str(&cli(cwd, &store, &["policy", "list", "--format", "json"])).unwrap();
    assert_eq!(list, json!([]));
    // A YAML syntax error is located too.
    let out = push(cwd, &store, "python-dev", "allowlist: [\n", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(&format!("{file}:")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// History, diff, rollback and mode switches on one store.
fn versions_are_append_only(cwd: &Path, store: &str) {
    let ok = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let said = ok(push(
        cwd,
        store,
        "python-dev",
        GOOD_POLICY,
        &[
            "--mode",
            "audit",
            "--comment",
            "first rollout",
            "--author",
            "alice",
        ],
    ));
    assert!(
        said.starts_with("Stored python-dev version 1 (mode audit"),
        "{said}"
    );
    // The same text and mode again: nothing stored.
    let said = ok(push(cwd, store, "python-dev", GOOD_POLICY, &[]));
    assert!(said.starts_with("Unchanged"), "{said}");
    let v2 = format!("{GOOD_POLICY}  - domain=*.npmjs.org\n");
    let said = ok(push(
        cwd,
        store,
        "python-dev",
        &v2,
        &["--comment", "npm", "--author", "bob"],
    ));
    // The template keeps its mode (audit) although the file says enforce.
    assert!(
        said.starts_with("Stored python-dev version 2 (mode audit"),
        "{said}"
    );
    cli(
        cwd,
        store,
        &[
            "policy",
            "enforce",
            "--template",
            "python-dev",
            "--author",
            "carol",
        ],
    );
    cli(
        cwd,
        store,
        &[
            "policy",
            "rollback",
            "--template",
            "python-dev",
            "--to",
            "1",
            "--author",
            "dave",
        ],
    );
    cli(cwd, store, &["policy", "audit", "--template", "python-dev"]);
    let history: Value = serde_json::from_str(&cli(
        cwd,
        store,
        &[
            "policy",
            "history",
            "--template",
            "python-dev",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    let row = |v: &Value| {
        (
            v["version"].as_i64().unwrap(),
            v["mode"].as_str().unwrap().to_string(),
            v["author"].as_str().unwrap().to_string(),
            v["comment"].as_str().unwrap().to_string(),
        )
    };
    let rows: Vec<_> = history.as_array().unwrap().iter().map(row).collect();
    let expect = |v, m: &str, a: &str, c: &str| (v, m.to_string(), a.to_string(), c.to_string());
    assert_eq!(
        rows[..4],
        [
            expect(1, "audit", "alice", "first rollout"),
            expect(2, "audit", "bob", "npm"),
            expect(3, "enforce", "carol", "switch to enforce mode"),
            expect(4, "audit", "dave", "rollback to version 1"),
        ]
    );
    // Version 4 (rollback to 1) is in audit mode, as 1 was: switching to audit stored nothing.
    assert_eq!(rows.len(), 4, "{history}");
    assert_eq!(history[0]["sha256"], sha256_hex(GOOD_POLICY).as_str());
    assert_eq!(history[3]["sha256"], history[0]["sha256"]);
    // Texts exactly as pushed.
    assert_eq!(
        cli(
            cwd,
            store,
            &[
                "policy",
                "show",
                "--template",
                "python-dev",
                "--version",
                "2"
            ]
        ),
        v2
    );
    assert_eq!(
        cli(cwd, store, &["policy", "show", "--template", "python-dev"]),
        GOOD_POLICY
    );
    // diff 1 2: the added line, unified.
    let d = cli(
        cwd,
        store,
        &["policy", "diff", "--template", "python-dev", "1", "2"],
    );
    let lines: Vec<&str> = d.lines().collect();
    assert!(
        lines[0].starts_with("--- python-dev v1 (audit, alice"),
        "{d}"
    );
    assert!(lines[1].starts_with("+++ python-dev v2 (audit, bob"), "{d}");
    assert_eq!(
        lines[2..],
        [
            "@@ -2,3 +2,4 @@",
            " allowlist:",
            "   - domain=github.com",
            "   - domain=pypi.org port=443",
            "+  - domain=*.npmjs.org"
        ],
        "{d}"
    );
    // Default: the one before the current and the current (3 -> 4 removes the line again,
    // and says the mode changed).
    let d = cli(cwd, store, &["policy", "diff", "--template", "python-dev"]);
    assert!(
        d.starts_with("# mode: enforce -> audit\n--- python-dev v3"),
        "{d}"
    );
    assert!(d.contains("\n-  - domain=*.npmjs.org\n"), "{d}");
    assert_eq!(
        d,
        cli(
            cwd,
            store,
            &["policy", "diff", "--template", "python-dev", "3", "4"]
        )
    );
    assert_eq!(
        d,
        cli(
            cwd,
            store,
            &["policy", "diff", "--template", "python-dev", "3"]
        )
    );
    let out = run(
        cwd,
        store,
        &[
            "policy",
            "rollback",
            "--template",
            "python-dev",
            "--to",
            "9",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no version 9"));
    let list: Value =
        serde_json::from_str(&cli(cwd, store, &["policy", "list", "--format", "json"])).unwrap();
    assert_eq!(list[0]["template"], "python-dev");
    assert_eq!(list[0]["version"], 4);
    assert_eq!(list[0]["mode"], "audit");
}

#[test]
fn history_diff_rollback_and_mode_switches_are_new_versions_on_sqlite() {
    let dir = TempDir::new("cp-versions");
    versions_are_append_only(dir.path(), &dir.path().join("b.db").display().to_string());
}

#[test]
fn history_diff_rollback_and_mode_switches_are_new_versions_on_postgres() {
    let pg = Postgres::start();
    let dir = TempDir::new("cp-versions-pg");
    versions_are_append_only(dir.path(), &pg.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_wakes_a_long_poll_held_by_another_replica_on_the_same_postgres_within_two_seconds()
{
    let pg = Postgres::start();
    let dir = TempDir::new("cp-longpoll");
    let cwd = dir.path();
    let store = pg.url();
    let (_a, url_a) = serve(cwd, "a", &store, None, "");
    let (_b, url_b) = serve(cwd, "b", &store, None, "");
    let (_, token) = create_agent(cwd, &store, &["--template", "ml"]);
    let out = push(cwd, &store, "ml", GOOD_POLICY, &["--mode", "audit"]);
    assert!(out.status.success());
    let c = client();

    // The first poll (no ETag) answers at once with the policy and its ETag.
    let (s, h, body) = agent_call(
        &c,
        Method::GET,
        &format!("{url_a}/boundary/v1/policy?wait=30"),
        &token,
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(h["etag"], "\"ml:1\"");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            v["template"].as_str(),
            v["version"].as_i64(),
            v["mode"].as_str()
        ),
        (Some("ml"), Some(1), Some("audit"))
    );
    assert_eq!(v["yaml"], GOOD_POLICY);
    assert_eq!(v["sha256"], sha256_hex(GOOD_POLICY).as_str());
    assert!(v["created_at"].as_str().unwrap().contains('T'));
    // Same version, no wait: 304 with the ETag. A bad wait: 400.
    let etag = [("if-none-match", "\"ml:1\"")];
    let (s, h, _) = agent_call(
        &c,
        Method::GET,
        &format!("{url_b}/boundary/v1/policy"),
        &token,
        &etag,
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert_eq!(h["etag"], "\"ml:1\"");
    let (s, _, body) = agent_call(
        &c,
        Method::GET,
        &format!("{url_b}/boundary/v1/policy?wait=61"),
        &token,
        &etag,
        "",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    // Held for `wait`, then 304.
    let t = Instant::now();
    let (s, _, _) = agent_call(
        &c,
        Method::GET,
        &format!("{url_b}/boundary/v1/policy?wait=2"),
        &token,
        &etag,
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());

    // A poller held by replica B; a push made on the store replica A serves: measured from
    // the end of the push to B's answer.
    let mut latencies = Vec::new();
    for round in 2..=4 {
        let poll_url = format!("{url_b}/boundary/v1/policy?wait=30");
        let known = format!("\"ml:{}\"", round - 1);
        let c2 = c.clone();
        let token2 = token.clone();
        let poller = tokio::spawn(async move {
            let r = agent_call(
                &c2,
                Method::GET,
                &poll_url,
                &token2,
                &[("if-none-match", &known)],
                "",
            )
            .await;
            (r, Instant::now())
        });
        // Let the poll reach B and wait.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!poller.is_finished(), "the poll answered before the push");
        let text = format!("{GOOD_POLICY}  - domain=round{round}.example.org\n");
        let file = cwd.join("next.yaml");
        std::fs::write(&file, &text).unwrap();
        let out = run(
            cwd,
            &store,
            &["policy", "push", "--template", "ml", file.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pushed = Instant::now();
        let ((s, h, body), answered) = poller.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(h["etag"], format!("\"ml:{round}\"").as_str());
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["yaml"], text.as_str());
        latencies.push(answered.saturating_duration_since(pushed));
    }
    eprintln!("push-to-200 latency across replicas: {latencies:?}");
    for l in &latencies {
        assert!(*l < Duration::from_secs(2), "{latencies:?}");
    }

    // The agent reports the version it applied through replica A; the fleet view (read from
    // the shared store) shows it, and `policy list` counts it as on the current version.
    let status = json!({"agent_version": "0.3.0", "hostname": "gpu-1", "policy_version": 4,
        "policy_sha256": "00".repeat(32), "sessions": 1, "events_spooled": 0, "events_lost": 0,
        "started_at": "2026-11-26T10:00:00Z"});
    let (s, _, body) = agent_call(
        &c,
        Method::POST,
        &format!("{url_a}/boundary/v1/status"),
        &token,
        &[],
        status.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let agents: Value = serde_json::from_str(&cli(
        cwd,
        &store,
        &["agents", "list", "--template", "ml", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(
        (
            agents[0]["host"].as_str(),
            agents[0]["policy_version"].as_i64()
        ),
        (Some("gpu-1"), Some(4))
    );
    let list: Value =
        serde_json::from_str(&cli(cwd, &store, &["policy", "list", "--format", "json"])).unwrap();
    assert_eq!(
        (
            list[0]["version"].as_i64(),
            list[0]["agents"].as_i64(),
            list[0]["agents_current"].as_i64()
        ),
        (Some(4), Some(1), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_sessions_are_recorded_and_bodies_are_bounded() {
    let dir = TempDir::new("cp-status");
    let cwd = dir.path();
    let store = cwd.join("bridge.db").display().to_string();
    let (id, token) = create_agent(cwd, &store, &["--template", "python-dev"]);
    let (_other_id, other_token) = create_agent(cwd, &store, &["--template", "python-dev"]);
    let (_bridge, url) = serve(cwd, "bridge", &store, None, "");
    let c = client();
    let status = json!({"agent_version": "0.2.0", "hostname": "builder-7", "policy_version": 3,
        "policy_sha256": "ab".repeat(32), "sessions": 2, "events_spooled": 17, "events_lost": 1,
        "started_at": "2026-11-26T10:00:00Z", "a_field_of_a_newer_agent": true});
    let (s, _, body) = agent_call(
        &c,
        Method::POST,
        &format!("{url}/boundary/v1/status"),
        &token,
        &[],
        status.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    let agents: Value =
        serde_json::from_str(&cli(cwd, &store, &["agents", "list", "--format", "json"])).unwrap();
    let a = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    assert_eq!(a["host"], "builder-7");
    assert_eq!(a["agent_version"], "0.2.0");
    assert_eq!(a["policy_version"], 3);
    assert_eq!(
        (
            a["sessions"].as_i64(),
            a["events_spooled"].as_i64(),
            a["events_lost"].as_i64()
        ),
        (Some(2), Some(17), Some(1))
    );
    assert!(a["last_seen_at"].is_string() && a["status_at"].is_string());
    let table = cli(cwd, &store, &["agents", "list"]);
    assert!(
        table.contains("builder-7") && table.contains("v3"),
        "{table}"
    );

    // Bodies: over 64 KiB 413, not JSON 400, wrong method 405, unknown route 404.
    let big = format!("{{\"hostname\": \"{}\"}}", "x".repeat(70 * 1024));
    let (s, _, body) = agent_call(
        &c,
        Method::POST,
        &format!("{url}/boundary/v1/status"),
        &token,
        &[],
        big,
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(error_of(&body).contains("65536"), "{body}");
    let (s, _, body) = agent_call(
        &c,
        Method::POST,
        &format!("{url}/boundary/v1/status"),
        &token,
        &[],
        "{",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).starts_with("invalid JSON body"), "{body}");
    let (s, _, _) = agent_call(
        &c,
        Method::GET,
        &format!("{url}/boundary/v1/status"),
        &token,
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _, body) = agent_call(
        &c,
        Method::GET,
        &format!("{url}/boundary/v1/nothing"),
        &token,
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!error_of(&body).is_empty());
    // A stranger's big body is refused for its missing token, not read.
    let (s, _, _) = send_within(
        &c,
        request(
            Method::POST,
            &format!("{url}/boundary/v1/status"),
            &[],
            "x".repeat(100 * 1024),
        ),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Sessions: registered (twice is fine), a different credential for the same id 409,
    // a bad hash 400, ended by DELETE, another agent's session 404.
    let cred = "bnd_sess_s-1_secret";
    let reg = json!({"session_id": "s-1", "credential_sha256": sha256_hex(cred), "user_name": "alice",
        "uid": 1000, "command": "claude", "started_at": "2026-11-26T10:00:00Z"});
    for _ in 0..2 {
        let (s, _, body) = agent_call(
            &c,
            Method::POST,
            &format!("{url}/boundary/v1/sessions"),
            &token,
            &[],
            reg.to_string(),
        )
        .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    }
    let mut other = reg.clone();
    other["credential_sha256"] = json!(sha256_hex("another"));
    let (s, _, body) = agent_call(
        &c,
        Method::POST,
        &format!("{url}/boundary/v1/sessions"),
        &token,
        &[],
        other.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let mut bad = reg.clone();
    bad["credential_sha256"] = json!("not-a-hash");
    let (s, _, body) = agent_call(
        &c,
        Method::POST,
        &format!("{url}/boundary/v1/sessions"),
        &token,
        &[],
        bad.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("credential_sha256"), "{body}");
    let (s, _, _) = agent_call(
        &c,
        Method::DELETE,
        &format!("{url}/boundary/v1/sessions/s-1"),
        &other_token,
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, body) = agent_call(
        &c,
        Method::DELETE,
        &format!("{url}/boundary/v1/sessions/s-1"),
        &token,
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
}

/// One Anthropic call through the gateway with `headers`; status and body.
async fn message(
    c: &HttpClient,
    url: &str,
    key: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut all = vec![
        ("x-api-key", key),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ];
    all.extend_from_slice(headers);
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hello"}]});
    let (s, _, b) = send_within(
        c,
        request(
            Method::POST,
            &format!("{url}/anthropic/v1/messages"),
            &all,
            body.to_string(),
        ),
        Duration::from_secs(10),
    )
    .await;
    (s, b)
}

/// Registers session `id` of the agent with `token`; returns its credential.
async fn register_session(c: &HttpClient, url: &str, token: &str, id: &str) -> String {
    let cred = format!("bnd_sess_{id}_{}", "Q".repeat(43));
    let reg = json!({"session_id": id, "credential_sha256": sha256_hex(&cred), "user_name": "alice",
        "uid": 1000, "command": "claude", "started_at": "2026-11-26T10:00:00Z"});
    let (s, _, body) = agent_call(
        c,
        Method::POST,
        &format!("{url}/boundary/v1/sessions"),
        token,
        &[],
        reg.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    cred
}

/// Sends requests with `cred` every 100 ms until refused (403); returns when the last
/// accepted one was sent, relative to `from`.
async fn accepted_until_refused(
    c: &HttpClient,
    url: &str,
    key: &str,
    cred: &str,
    from: Instant,
) -> Duration {
    let mut last_accepted = Duration::ZERO;
    loop {
        let sent = from.elapsed();
        assert!(
            sent < SESSION_CACHE_TTL + Duration::from_secs(5),
            "still accepted after {sent:?}"
        );
        let (s, body) = message(c, url, key, &[("x-bridge-session-token", cred)]).await;
        match s {
            StatusCode::OK => last_accepted = sent,
            StatusCode::FORBIDDEN => return last_accepted,
            other => panic!("{other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_credentials_attribute_requests_to_the_enrolment_and_bad_or_missing_ones_are_refused(
) {
    let dir = TempDir::new("cp-sessions");
    let cwd = dir.path();
    let store = cwd.join("bridge.db").display().to_string();
    let (_fake, up) = fake_upstream(cwd);
    let (agent_id, token) = create_agent(
        cwd,
        &store,
        &["--template", "python-dev", "--workspace", "ws-42"],
    );
    let (_, strict_token) = create_agent(cwd, &store, &["--template", "strict"]);
    let key = cli(cwd, &store, &["keys", "create", "--user", "alice"])
        .trim()
        .to_string();
    let (_bridge, url) = serve(
        cwd,
        "bridge",
        &store,
        Some(up),
        "control_plane:\n  require_session_templates: [strict]\n",
    );
    let c = client();
    let cred = register_session(&c, &url, &token, "sess-1").await;
    let reader = Store::open(&store).await.unwrap();

    // Valid: recorded under the enrolment's session, template and workspace, whatever the
    // client claims in its own headers.
    let (s, body) = message(
        &c,
        &url,
        &key,
        &[
            ("x-bridge-session-token", &cred),
            ("x-bridge-template", "other"),
            ("x-bridge-workspace", "ws-claimed"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = message(
        &c,
        &url,
        &key,
        &[
            ("x-bridge-session-token", &cred),
            ("x-bridge-session", "sess-1"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Tampered: 403 in Anthropic's format, recorded as rejected.
    let tampered = format!("{}R", &cred[..cred.len() - 1]);
    let (s, body) = message(&c, &url, &key, &[("x-bridge-session-token", &tampered)]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "permission_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("session credential invalid"),
        "{body}"
    );
    // A valid credential naming another session: 403.
    let (s, body) = message(
        &c,
        &url,
        &key,
        &[
            ("x-bridge-session-token", &cred),
            ("x-bridge-session", "sess-2"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // require_session_templates: a request claiming `strict` without a credential is
    // refused; one with a credential of a `strict` agent passes; others pass without.
    let (s, body) = message(&c, &url, &key, &[("x-bridge-template", "strict")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("AI traffic only from governed sessions"),
        "{body}"
    );
    let strict_cred = register_session(&c, &url, &strict_token, "strict-1").await;
    let (s, body) = message(
        &c,
        &url,
        &key,
        &[
            ("x-bridge-template", "strict"),
            ("x-bridge-session-token", &strict_cred),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = message(&c, &url, &key, &[("x-bridge-template", "python-dev")]).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let records = reader
        .list_interceptions(&Default::default())
        .await
        .unwrap();
    assert_eq!(records.len(), 7, "{records:#?}");
    let ok_in_session: Vec<_> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Ok && r.context.session.as_deref() == Some("sess-1"))
        .collect();
    assert_eq!(ok_in_session.len(), 2);
    // The CLI finds them by Boundary session (the join with `events list --session`).
    let listed = cli(
        cwd,
        &store,
        &[
            "interceptions",
            "list",
            "--session",
            "sess-1",
            "--template",
            "python-dev",
            "--format",
            "json",
        ],
    );
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), ok_in_session.len(), "{listed:?}");
    for r in ok_in_session {
        assert_eq!(r.context.template.as_deref(), Some("python-dev"));
        assert_eq!(r.context.workspace.as_deref(), Some("ws-42"));
    }
    let rejected: Vec<_> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Rejected)
        .collect();
    assert_eq!(rejected.len(), 3, "{rejected:#?}");
    for r in &rejected {
        assert_eq!(r.status, 403);
        assert!(
            r.error
                .as_deref()
                .unwrap_or("")
                .starts_with("session credential"),
            "{r:?}"
        );
        assert_eq!(r.user, "alice");
    }
    // The credential is never stored or logged.
    let log = std::fs::read_to_string(cwd.join("bridge.log")).unwrap();
    assert!(
        !log.contains(&cred[cred.len() - 20..]),
        "credential in the log"
    );

    // A session registered late (its agent could not reach the control plane at first): its
    // credential is refused until the registration lands, then accepted within a second.
    let late = format!("bnd_sess_late_{}", "Q".repeat(43));
    let (s, _) = message(&c, &url, &key, &[("x-bridge-session-token", &late)]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(register_session(&c, &url, &token, "late").await, late);
    let registered = Instant::now();
    loop {
        let (s, _) = message(&c, &url, &key, &[("x-bridge-session-token", &late)]).await;
        if s == StatusCode::OK {
            break;
        }
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(
            registered.elapsed() < Duration::from_secs(2),
            "late registration not accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "late registration: accepted after {:?}",
        registered.elapsed()
    );

    // Ending the session: its credential is refused within the cache's 5 s.
    let cred2 = register_session(&c, &url, &token, "sess-2").await;
    let (s, _) = message(&c, &url, &key, &[("x-bridge-session-token", &cred2)]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = agent_call(
        &c,
        Method::DELETE,
        &format!("{url}/boundary/v1/sessions/sess-2"),
        &token,
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let last = accepted_until_refused(&c, &url, &key, &cred2, Instant::now()).await;
    eprintln!("ended session: credential last accepted at +{last:?}");
    assert!(last < SESSION_CACHE_TTL, "{last:?}");
    // Revoking the agent: the credentials of its live sessions are refused within 5 s (the
    // cache holds a fresh answer when the revocation lands).
    let (s, _) = message(&c, &url, &key, &[("x-bridge-session-token", &cred)]).await;
    assert_eq!(s, StatusCode::OK);
    cli(cwd, &store, &["agents", "revoke", &agent_id]);
    let last = accepted_until_refused(&c, &url, &key, &cred, Instant::now()).await;
    eprintln!("revoked agent: credential last accepted at +{last:?}");
    assert!(last < SESSION_CACHE_TTL, "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_session_refuses_requests_without_a_credential_and_disabling_the_control_plane_hides_its_routes(
) {
    let dir = TempDir::new("cp-require");
    let cwd = dir.path();
    let store = cwd.join("bridge.db").display().to_string();
    let (_fake, up) = fake_upstream(cwd);
    let (_, token) = create_agent(cwd, &store, &["--template", "python-dev"]);
    let key = cli(cwd, &store, &["keys", "create", "--user", "bob"])
        .trim()
        .to_string();
    let (_bridge, url) = serve(
        cwd,
        "bridge",
        &store,
        Some(up),
        "control_plane:\n  require_session: true\n",
    );
    let c = client();
    let (s, body) = message(&c, &url, &key, &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("AI traffic only from governed sessions")
            && body.contains("control_plane.require_session"),
        "{body}"
    );
    let cred = register_session(&c, &url, &token, "s-9").await;
    let (s, body) = message(&c, &url, &key, &[("x-bridge-session-token", &cred)]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let reader = Store::open(&store).await.unwrap();
    let records = reader
        .list_interceptions(&Default::default())
        .await
        .unwrap();
    let refused = records
        .iter()
        .find(|r| r.outcome == Outcome::Rejected)
        .expect("rejected record");
    assert!(refused
        .error
        .as_deref()
        .unwrap()
        .starts_with("session credential required"));

    let (_off, off_url) = serve(
        cwd,
        "off",
        &store,
        None,
        "control_plane:\n  enabled: false\n",
    );
    let (s, _, _) = agent_call(
        &c,
        Method::GET,
        &format!("{off_url}/boundary/v1/policy"),
        &token,
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_long_poll_is_answered_304_at_once_when_the_bridge_stops() {
    let dir = TempDir::new("cp-stop");
    let cwd = dir.path();
    let store = cwd.join("bridge.db").display().to_string();
    let (_, token) = create_agent(cwd, &store, &["--template", "t1"]);
    assert!(push(cwd, &store, "t1", GOOD_POLICY, &[]).status.success());
    let (mut bridge, url) = serve(cwd, "bridge", &store, None, "");
    let c = client();
    let poll_url = format!("{url}/boundary/v1/policy?wait=60");
    let poller = tokio::spawn(async move {
        let r = agent_call(
            &c,
            Method::GET,
            &poll_url,
            &token,
            &[("if-none-match", "\"t1:1\"")],
            "",
        )
        .await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!poller.is_finished());
    bridge.terminate();
    let stopped = Instant::now();
    let ((s, h, _), answered) = poller.await.unwrap();
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert_eq!(h["etag"], "\"t1:1\"");
    assert!(
        answered - stopped < Duration::from_secs(2),
        "{:?}",
        answered - stopped
    );
    assert!(bridge.wait_exit().success());
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_held_when_its_agent_is_revoked_never_receives_a_later_policy() {
    let dir = TempDir::new("cp-revoke-held");
    let cwd = dir.path();
    let store = cwd.join("bridge.db").display().to_string();
    let (id, token) = create_agent(cwd, &store, &["--template", "t1"]);
    assert!(push(cwd, &store, "t1", GOOD_POLICY, &[]).status.success());
    let (_bridge, url) = serve(cwd, "bridge", &store, None, "");
    let c = client();
    let poll_url = format!("{url}/boundary/v1/policy?wait=60");
    let poller = tokio::spawn(async move {
        agent_call(
            &c,
            Method::GET,
            &poll_url,
            &token,
            &[("if-none-match", "\"t1:1\"")],
            "",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poller.is_finished());
    cli(cwd, &store, &["agents", "revoke", &id]);
    // A new version wakes the held poll: it must be refused, not handed the new text.
    let changed = format!("{GOOD_POLICY}  - domain=example.org\n");
    assert!(push(cwd, &store, "t1", &changed, &[]).status.success());
    let (s, _, body) = poller.await.unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_of(&body), "agent token revoked");
}

#[test]
fn concurrent_pushes_to_one_template_on_postgres_get_distinct_versions() {
    let pg = Postgres::start();
    let dir = TempDir::new("cp-concurrent");
    let cwd = dir.path();
    let store = pg.url();
    // The store exists (migrated) before the pushes race.
    cli(cwd, &store, &["policy", "list"]);
    let children: Vec<_> = (0..4)
        .map(|i| {
            let file = cwd.join(format!("p{i}.yaml"));
            std::fs::write(
                &file,
                format!("{GOOD_POLICY}  - domain=host{i}.example.org\n"),
            )
            .unwrap();
            bridge_cmd(cwd)
                .args([
                    "policy",
                    "push",
                    "--template",
                    "shared",
                    file.to_str().unwrap(),
                    "--store",
                    &store,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let history: Value = serde_json::from_str(&cli(
        cwd,
        &store,
        &[
            "policy",
            "history",
            "--template",
            "shared",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    let versions: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    let mut shas: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["sha256"].as_str().unwrap())
        .collect();
    shas.sort();
    shas.dedup();
    assert_eq!(shas.len(), 4, "each push stored once: {history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_a_credential_seen_before_keeps_working_and_an_unseen_one_is_refused_503(
) {
    let pg = Postgres::start();
    let dir = TempDir::new("cp-outage");
    let cwd = dir.path();
    let store = pg.url();
    let (_fake, up) = fake_upstream(cwd);
    let (_, token) = create_agent(cwd, &store, &["--template", "python-dev"]);
    let key = cli(cwd, &store, &["keys", "create", "--user", "erin"])
        .trim()
        .to_string();
    // No read-after-write: with the store down, records go to the spool.
    let port = free_port();
    let config = cwd.join("b.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {}\nproviders:\n  anthropic:\n    base_url: http://127.0.0.1:{up}\n    api_key: {ANTHROPIC_KEY}\n",
            cwd.join("spool").display()
        ),
    )
    .unwrap();
    let log = cwd.join("b.log");
    let mut bridge = Proc(
        bridge_cmd(cwd)
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut bridge.0, &log);
    let url = format!("http://127.0.0.1:{port}");
    let c = client();
    let seen = register_session(&c, &url, &token, "seen").await;
    let unseen = register_session(&c, &url, &token, "unseen").await;
    let (s, body) = message(&c, &url, &key, &[("x-bridge-session-token", &seen)]).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    pg.stop();
    // Past the cache's 5 s: the check goes to the store, which is down.
    tokio::time::sleep(SESSION_CACHE_TTL + Duration::from_millis(200)).await;
    let (s, body) = message(&c, &url, &key, &[("x-bridge-session-token", &seen)]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = message(&c, &url, &key, &[("x-bridge-session-token", &unseen)]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("cannot verify session credentials"), "{body}");
    // The agent API says the store is unavailable.
    let (s, _, body) = agent_call(
        &c,
        Method::GET,
        &format!("{url}/boundary/v1/policy"),
        &token,
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        error_of(&body).starts_with("control plane store unavailable"),
        "{body}"
    );
    pg.restart();
}

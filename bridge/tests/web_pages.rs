//! The audit page's queries on both stores: every page of `/ui/` with every filter set, on a
//! SQLite file and on a private PostgreSQL server, against the real `llm-bridge serve` with
//! data seeded through the real routes (CLI enrolment and policy push, the agent API, an LLM
//! request with a session credential). The browser tests (bridge/tests/sdk/test_ui.py) cover
//! rendering, escaping and the forms; this covers the SQL of each filter on PostgreSQL too,
//! the landing page's figures, and paging through rows of one instant without loss.

mod http_support;
mod proc_support;
mod store_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use http_support::{client, request, HttpClient};
use proc_support::{free_port, wait_listening, Proc};
use serde_json::json;
use sha2::{Digest, Sha256};
use store_support::{Postgres, TempDir};

const ANTHROPIC_KEY: &str = "sk-ant-web-pages-test-key";
const ADMIN_TOKEN: &str = "web-pages-admin-token-5e1d";
const POLICY: &str = "mode: audit\nallowlist:\n  - domain=pypi.org\n";

fn cli(cwd: &Path, store: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
        .current_dir(cwd)
        .env_remove("BRIDGE_STORE")
        .args(args)
        .args(["--store", store])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llm-bridge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spawn(cwd: &Path, name: &str, cmd: &mut Command, port: u16) -> Proc {
    let log = cwd.join(format!("{name}.log"));
    let mut p = Proc(
        cmd.current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut p.0, &log);
    p
}

async fn call(
    c: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, http::HeaderMap, String) {
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        c.request(request(method, url, headers, body)),
    )
    .await
    .expect("no answer within 10 s")
    .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn every_page_answers_with_every_filter(store: &str, dir: &TempDir) {
    let cwd = dir.path();
    let up = free_port();
    let _fake = spawn(
        cwd,
        "fake",
        Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(["--listen", &format!("127.0.0.1:{up}")])
            .args(["--anthropic-key", ANTHROPIC_KEY]),
        up,
    );
    let token_file = cwd.join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let port = free_port();
    let config = cwd.join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {}\nlimits:\n  record_wait_ms: 5000\n\
             control_plane:\n  admin_token_file: {}\n\
             providers:\n  anthropic:\n    base_url: http://127.0.0.1:{up}\n    api_key: {ANTHROPIC_KEY}\n",
            cwd.join("spool").display(),
            token_file.display()
        ),
    )
    .unwrap();
    let _bridge = spawn(
        cwd,
        "bridge",
        Command::new(env!("CARGO_BIN_EXE_llm-bridge")).args([
            "serve",
            "--config",
            config.to_str().unwrap(),
        ]),
        port,
    );
    let url = format!("http://127.0.0.1:{port}");
    let c = client();

    // Seed through the real routes.
    std::fs::write(cwd.join("policy.yaml"), POLICY).unwrap();
    cli(
        cwd,
        store,
        &[
            "policy",
            "push",
            "--template",
            "tpl",
            "policy.yaml",
            "--comment",
            "first",
        ],
    );
    let agent = cli(
        cwd,
        store,
        &[
            "agents",
            "create",
            "--template",
            "tpl",
            "--workspace",
            "ws",
            "--name",
            "web-1",
        ],
    )
    .trim()
    .to_string();
    let bearer = format!("Bearer {agent}");
    let agent_headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
        ("x-boundary-agent-version", "0.9.1"),
        ("x-boundary-agent-host", "host-1"),
    ];
    let status = json!({"agent_version": "0.9.1", "hostname": "host-1", "policy_version": 1,
        "sessions": 1, "events_spooled": 0, "events_lost": 2, "started_at": "2026-01-01T00:00:00Z"});
    let (s, _, b) = call(
        &c,
        Method::POST,
        &format!("{url}/boundary/v1/status"),
        &agent_headers,
        status.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let cred = format!("bnd_sess_s-1_{}", "Q".repeat(43));
    let digest: String = Sha256::digest(cred.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let reg = json!({"session_id": "s-1", "credential_sha256": digest, "user_name": "dev1",
        "uid": 1000, "command": "claude", "started_at": chrono::Utc::now().to_rfc3339()});
    let (s, _, b) = call(
        &c,
        Method::POST,
        &format!("{url}/boundary/v1/sessions"),
        &agent_headers,
        reg.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let now = chrono::Utc::now().to_rfc3339();
    let events = json!({"events": [
        {"event.id": uuid::Uuid::now_v7().to_string(), "event.name": "boundary.decision",
         "event.action": "deny", "timestamp": now, "session.id": "s-1",
         "destination.address": "127.0.0.9", "destination.port": 443,
         "boundary.destination.domains": ["evil.example"], "process.executable.name": "curl",
         "user.name": "dev1", "boundary.event.count": 3},
        {"event.id": uuid::Uuid::now_v7().to_string(), "event.name": "boundary.decision",
         "event.action": "would_deny", "timestamp": now, "session.id": "s-1",
         "destination.address": "127.0.0.8", "destination.port": 443,
         "boundary.destination.domains": ["crates.io"], "process.executable.name": "cargo",
         "user.name": "dev1"}
    ]});
    let (s, _, b) = call(
        &c,
        Method::POST,
        &format!("{url}/boundary/v1/events"),
        &agent_headers,
        events.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let key = cli(cwd, store, &["keys", "create", "--user", "dev1"])
        .trim()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    let body = json!({"model": "claude-sonnet-4-6", "max_tokens": 20,
        "messages": [{"role": "user", "content": "a prompt for the page test"}]});
    let (s, _, b) = call(
        &c,
        Method::POST,
        &format!("{url}/anthropic/v1/messages"),
        &[
            ("x-api-key", key.as_str()),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
            ("x-bridge-session-token", cred.as_str()),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Not logged in: every page sends the browser to the login.
    let (s, h, _) = call(&c, Method::GET, &format!("{url}/ui/blocked"), &[], "").await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(h["location"]
        .to_str()
        .unwrap()
        .starts_with("/ui/login?next="));

    let origin = url.clone();
    let (s, h, b) = call(
        &c,
        Method::POST,
        &format!("{url}/ui/login"),
        &[
            ("origin", origin.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("token={ADMIN_TOKEN}"),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{b}");
    let cookie = h["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let pages: &[(&str, &[&str])] = &[
        (
            "/ui/",
            &[
                "Blocked connections",
                "<strong>4</strong>",
                "2 events",
                "<strong>1</strong>",
                "<strong>0 / 1</strong>",
                "2 events lost",
            ],
        ),
        (
            "/ui/blocked?template=tpl&workspace=ws&user=dev1&domain=evil.example&process=curl&action=deny&since=1h&until=2100-01-01",
            &["evil.example", "127.0.0.9:443", "s-1"],
        ),
        (
            "/ui/interceptions?user=dev1&model=claude-sonnet-4-6&outcome=ok&template=tpl&workspace=ws&session=s-1&since=1h&until=2100-01-01",
            &["a prompt for the page test", "1 rows."],
        ),
        ("/ui/usage?by=model&since=1h", &["claude-sonnet-4-6"]),
        ("/ui/usage?by=day", &["TOTAL"]),
        (
            "/ui/sessions?template=tpl&workspace=ws&user=dev1&since=1h",
            &["s-1", "claude"],
        ),
        (
            "/ui/sessions/s-1",
            &["evil.example", "crates.io", "a prompt for the page test", "web-1"],
        ),
        ("/ui/fleet?template=tpl", &["web-1", "host-1", "v1 (current)"]),
        ("/ui/policies", &["tpl", "1 of 1"]),
        ("/ui/policies/tpl?version=1", &["domain=pypi.org", "first"]),
        ("/ui/report", &["tpl"]),
        (
            "/ui/report?template=tpl&since=1h",
            &["crates.io", "evil.example", "v1 in audit mode"],
        ),
    ];
    for (path, wanted) in pages {
        let (s, h, b) = call(
            &c,
            Method::GET,
            &format!("{url}{path}"),
            &[("cookie", cookie.as_str())],
            "",
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'"),
            "{path}"
        );
        for w in *wanted {
            assert!(b.contains(w), "{path}: no {w:?} in {b}");
        }
    }
    // A control character in a filter is a clear 400 (PostgreSQL would refuse a NUL).
    let (s, _, b) = call(
        &c,
        Method::GET,
        &format!("{url}/ui/blocked?user=a%00b"),
        &[("cookie", cookie.as_str())],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b.contains("control character"), "{b}");
    // Paging: 600 blocked events of one instant; a page holds 500, its "Older rows" link the
    // other 100, none twice and none lost.
    let instant = chrono::Utc::now().to_rfc3339();
    let bulk: Vec<_> = (0..600)
        .map(|i| {
            json!({"event.id": uuid::Uuid::now_v7().to_string(), "event.name": "boundary.decision",
                "event.action": if i % 2 == 0 { "deny" } else { "would_deny" },
                "timestamp": instant, "boundary.destination.domains": [format!("d{i}.example")]})
        })
        .collect();
    let (s, _, b) = call(
        &c,
        Method::POST,
        &format!("{url}/boundary/v1/events"),
        &agent_headers,
        json!({ "events": bulk }).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let page = |path: String| {
        let c = c.clone();
        let cookie = cookie.clone();
        async move {
            let (s, _, b) = call(&c, Method::GET, &path, &[("cookie", cookie.as_str())], "").await;
            assert_eq!(s, StatusCode::OK, "{path}: {b}");
            let ids: Vec<String> = b
                .split("href=\"/ui/events/")
                .skip(1)
                .map(|r| r.split('"').next().unwrap().to_string())
                .collect();
            let older = b
                .split("<a href=\"")
                .find_map(|r| r.split_once("\" class=\"older\""))
                .map(|(h, _)| h.replace("&amp;", "&"));
            (ids, older)
        }
    };
    let (first, older) = page(format!("{url}/ui/blocked?template=tpl&process=")).await;
    assert_eq!(first.len(), 500);
    let older = older.expect("a full page links to the older rows");
    let (second, none) = page(format!("{url}{older}")).await;
    assert_eq!(none, None);
    // The 600 of the instant and the 2 seeded before it.
    assert_eq!(second.len(), 102);
    let mut all: Vec<_> = first.iter().chain(&second).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 602);
    // The interceptions' cursor: everything is before the end of time, nothing before 1970.
    for (cursor, rows) in [("9999999999999999.z", "1 rows."), ("0.0", "0 rows.")] {
        let (s, _, b) = call(
            &c,
            Method::GET,
            &format!("{url}/ui/interceptions?before={cursor}"),
            &[("cookie", cookie.as_str())],
            "",
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(b.contains(rows), "{cursor}: {b}");
    }
    // Filters that match nothing show nothing.
    for path in [
        "/ui/blocked?template=tpl&process=wget",
        "/ui/interceptions?session=s-2",
        "/ui/sessions?user=nobody",
    ] {
        let (s, _, b) = call(
            &c,
            Method::GET,
            &format!("{url}{path}"),
            &[("cookie", cookie.as_str())],
            "",
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert!(b.contains("0 rows."), "{path}: {b}");
    }
}

#[tokio::test]
async fn every_audit_page_answers_with_every_filter_on_sqlite() {
    let dir = TempDir::new("web-sqlite");
    let store = format!("sqlite://{}", dir.path().join("bridge.db").display());
    every_page_answers_with_every_filter(&store, &dir).await;
}

#[tokio::test]
async fn every_audit_page_answers_with_every_filter_on_postgres() {
    let pg = Postgres::start();
    let dir = TempDir::new("web-pg");
    every_page_answers_with_every_filter(&pg.url(), &dir).await;
}

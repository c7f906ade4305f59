//! Boundary events in Bridge, with the real `llm-bridge` binary and real stores (SQLite and a
//! throwaway PostgreSQL):
//!
//! - `events list|top|export`: filters, formats, CSV quoting of hostile values, export past
//!   one page, in order;
//! - `policy report` and `policy simulate` on a seeded set of events with a known answer;
//! - retention: the purge job of `serve` deletes events older than `events_retention` only.

mod proc_support;
mod store_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bridge::audit::ingest::{ingest, Origin};
use bridge::audit::query;
use bridge::store::Store;
use chrono::{DateTime, Utc};
use proc_support::{free_port, wait_listening, Proc};
use serde_json::{json, Value};
use store_support::{wait_until, Postgres, TempDir};

fn bridge(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
        .current_dir(cwd)
        .env_remove("BRIDGE_STORE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn origin(workspace: &str) -> Origin {
    Origin {
        agent_id: format!("agent-{workspace}"),
        template: "python-dev".into(),
        workspace: Some(workspace.into()),
    }
}

fn ago(hours: i64) -> String {
    (Utc::now() - chrono::Duration::hours(hours))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A kernel decision as the agent writes it.
fn decision(
    action: &str,
    addr: &str,
    port: u16,
    domains: &[&str],
    process: &str,
    count: u64,
    at: &str,
) -> Value {
    json!({
        "event.id": uuid::Uuid::now_v7().to_string(),
        "timestamp": at,
        "event.name": "boundary.decision",
        "event.action": action,
        "session.id": "sess-1",
        "network.transport": "tcp",
        "destination.address": addr,
        "destination.port": port,
        "boundary.destination.domains": domains,
        "process.executable.name": process,
        "user.name": "alice",
        "boundary.event.count": count,
    })
}

fn dns(action: &str, name: &str, count: u64, at: &str) -> Value {
    json!({
        "event.id": uuid::Uuid::now_v7().to_string(),
        "timestamp": at,
        "event.name": "boundary.dns",
        "event.action": action,
        "session.id": "sess-1",
        "dns.question.name": name,
        "process.executable.name": "python3",
        "boundary.event.count": count,
    })
}

async fn post(store: &Store, origin: &Origin, events: Vec<Value>) {
    let body = serde_json::to_vec(&json!({ "events": events })).unwrap();
    let (stored, _) = ingest(store, &body, origin).await.unwrap().unwrap();
    assert_eq!(stored.duplicates, 0);
}

/// The seeded rollout: what the report and the simulation must find.
async fn seed_rollout(store: &Store) {
    let h = ago(2);
    post(
        store,
        &origin("ws-1"),
        vec![
            decision("allow", "10.1.1.1", 443, &["pypi.org"], "pip", 5, &h),
            decision(
                "would_deny",
                "192.0.2.10",
                443,
                &["evil.example"],
                "curl",
                3,
                &h,
            ),
            decision(
                "allow",
                "192.0.2.20",
                443,
                &["files.pythonhosted.org"],
                "pip",
                2,
                &h,
            ),
            dns("would_deny", "evil.example", 1, &h),
            dns("allow", "pypi.org", 4, &h),
            decision("deny", "10.9.9.9", 22, &[], "ssh", 1, &h),
            json!({"event.id": uuid::Uuid::now_v7().to_string(), "timestamp": h,
                   "event.name": "boundary.session.start", "session.id": "sess-1"}),
            // Older than the report's week: not in it.
            decision(
                "would_deny",
                "192.0.2.99",
                443,
                &["old.example"],
                "curl",
                9,
                &ago(24 * 10),
            ),
        ],
    )
    .await;
    post(
        store,
        &origin("ws-2"),
        vec![decision(
            "would_deny",
            "192.0.2.10",
            443,
            &["evil.example"],
            "node",
            4,
            &ago(1),
        )],
    )
    .await;
    // Another template's events never show in python-dev's report.
    let other = Origin {
        agent_id: "agent-x".into(),
        template: "node-dev".into(),
        workspace: None,
    };
    post(
        store,
        &other,
        vec![decision(
            "would_deny",
            "192.0.2.77",
            443,
            &["other.example"],
            "node",
            1,
            &h,
        )],
    )
    .await;
}

async fn report_and_simulate_find_the_known_answer(url: &str, dir: &Path) {
    let store = Store::open(url).await.unwrap();
    seed_rollout(&store).await;

    let out = ok(bridge(
        dir,
        &[
            "policy",
            "report",
            "--template",
            "python-dev",
            "--since",
            "7d",
            "--format",
            "json",
            "--store",
            url,
        ],
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let summary: Vec<(Value, Value, Value, Value)> = rows
        .iter()
        .map(|r| {
            (
                r["domain"].clone(),
                r["destination"].clone(),
                r["port"].clone(),
                r["count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                json!("evil.example"),
                json!("192.0.2.10"),
                json!(443),
                json!(7)
            ),
            (Value::Null, json!("10.9.9.9"), json!(22), json!(1)),
            (json!("evil.example"), Value::Null, Value::Null, json!(1)),
        ],
        "{out}"
    );
    assert_eq!(rows[0]["workspaces"], json!(["ws-1", "ws-2"]));
    assert_eq!(rows[0]["processes"], json!(["curl", "node"]));
    assert_eq!(rows[0]["actions"], json!(["would_deny"]));
    assert!(rows[0]["first_seen"].as_str() < rows[0]["last_seen"].as_str());
    let table = ok(bridge(
        dir,
        &[
            "policy",
            "report",
            "--template",
            "python-dev",
            "--store",
            url,
        ],
    ));
    assert!(
        table.lines().next().unwrap().starts_with("DOMAIN"),
        "{table}"
    );
    assert!(table.contains("ws-1,ws-2"), "{table}");

    let candidate = dir.join("candidate.yaml");
    std::fs::write(
        &candidate,
        "allowlist:\n  - \"domain=pypi.org port=443\"\n  - \"domain=evil.example port=443\"\n  - \"cidr=10.9.0.0/16 port=22\"\n",
    )
    .unwrap();
    let cand = candidate.to_str().unwrap();
    let out = ok(bridge(
        dir,
        &[
            "policy",
            "simulate",
            "--template",
            "python-dev",
            cand,
            "--since",
            "7d",
            "--format",
            "json",
            "--store",
            url,
        ],
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    let sim = &v["simulation"];
    assert_eq!(sim["replayed_events"], 7, "{out}");
    assert_eq!(sim["replayed_decisions"], 20, "{out}");
    assert_eq!(sim["unchanged_decisions"], 9, "{out}");
    let changes: Vec<(String, String, Value, Value, Value)> = sim["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                format!(
                    "{}->{}",
                    c["from"].as_str().unwrap(),
                    c["to"].as_str().unwrap()
                ),
                c["kind"].as_str().unwrap().to_string(),
                c["domain"].clone(),
                c["destination"].clone(),
                c["count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            (
                "deny->allow".into(),
                "connection".into(),
                json!("evil.example"),
                json!("192.0.2.10"),
                json!(7)
            ),
            (
                "allow->deny".into(),
                "connection".into(),
                json!("files.pythonhosted.org"),
                json!("192.0.2.20"),
                json!(2)
            ),
            (
                "deny->allow".into(),
                "connection".into(),
                Value::Null,
                json!("10.9.9.9"),
                json!(1)
            ),
            (
                "deny->allow".into(),
                "dns".into(),
                json!("evil.example"),
                Value::Null,
                json!(1)
            ),
        ],
        "{out}"
    );
    assert!(
        sim["changes"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("domain=evil.example"),
        "{out}"
    );
    let table = ok(bridge(
        dir,
        &[
            "policy",
            "simulate",
            "--template",
            "python-dev",
            cand,
            "--store",
            url,
        ],
    ));
    assert!(
        table.contains("4 verdicts would change (11 decisions), 9 decisions unchanged"),
        "{table}"
    );
    assert!(table.contains("allow -> deny"), "{table}");

    // A candidate the agent would refuse is refused, with its file and line.
    std::fs::write(
        &candidate,
        "allowlist:\n  - \"domain=ok.example\"\n  - \"prot=80\"\n",
    )
    .unwrap();
    let o = bridge(
        dir,
        &[
            "policy",
            "simulate",
            "--template",
            "python-dev",
            cand,
            "--store",
            url,
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("candidate.yaml:3"), "{err}");
}

#[tokio::test]
async fn report_and_simulate_on_sqlite() {
    let dir = TempDir::new("events-report");
    let url = dir.path().join("bridge.db").display().to_string();
    report_and_simulate_find_the_known_answer(&url, dir.path()).await;
}

#[tokio::test]
async fn report_and_simulate_on_postgres() {
    let dir = TempDir::new("events-report-pg");
    let pg = Postgres::start();
    report_and_simulate_find_the_known_answer(&pg.url(), dir.path()).await;
}

#[tokio::test]
async fn list_and_top_filter_and_quote_hostile_values() {
    let dir = TempDir::new("events-list");
    let url = dir.path().join("bridge.db").display().to_string();
    let store = Store::open(&url).await.unwrap();
    seed_rollout(&store).await;
    let hostile_process = "=HYPERLINK(\"http://x.example\",\"y\")";
    let hostile_user = "mallory\n2026-01-01,allow";
    let mut e = decision(
        "deny",
        "192.0.2.66",
        8443,
        &["a,b\"c.example"],
        hostile_process,
        1,
        &ago(0),
    );
    e["user.name"] = json!(hostile_user);
    post(&store, &origin("ws-3"), vec![e]).await;
    let cwd = dir.path();

    // --action, --since, --template, --workspace, --domain, --process: each narrows.
    let ids = |args: &[&str]| -> Vec<Value> {
        let mut a = vec!["events", "list", "--format", "json", "--store", &url];
        a.extend_from_slice(args);
        ok(bridge(cwd, &a))
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect()
    };
    let denied = ids(&["--action", "deny", "--since", "24h"]);
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied.iter().all(|e| e["event.action"] == "deny"));
    // JSON lines are the events as stored, with the server's fields.
    assert_eq!(
        denied[0]["destination.address"], "192.0.2.66",
        "newest first"
    );
    assert_eq!(denied[0]["workspace"], "ws-3");
    assert_eq!(denied[0]["template"], "python-dev");
    assert!(denied[0]["received_at"].is_string());
    assert_eq!(ids(&["--action", "would_deny"]).len(), 5);
    assert_eq!(ids(&["--action", "would_deny", "--since", "7d"]).len(), 4);
    assert_eq!(ids(&["--template", "node-dev"]).len(), 1);
    assert_eq!(ids(&["--workspace", "ws-2"]).len(), 1);
    assert_eq!(ids(&["--domain", "evil.example"]).len(), 3);
    assert_eq!(ids(&["--process", "pip", "--action", "allow"]).len(), 2);
    assert_eq!(
        ids(&["--session", "sess-1", "--name", "boundary.dns"]).len(),
        2
    );
    assert_eq!(ids(&["--limit", "2"]).len(), 2);

    // CSV: quoted per RFC 4180, formulas neutralised, line breaks kept inside quotes.
    let csv = ok(bridge(
        cwd,
        &[
            "events",
            "list",
            "--action",
            "deny",
            "--workspace",
            "ws-3",
            "--format",
            "csv",
            "--store",
            &url,
        ],
    ));
    assert!(csv.starts_with("id,timestamp,"), "{csv}");
    assert!(
        csv.contains("\"'=HYPERLINK(\"\"http://x.example\"\",\"\"y\"\")\""),
        "{csv}"
    );
    assert!(csv.contains("\"a,b\"\"c.example\""), "{csv}");
    assert!(csv.contains("\"mallory\n2026-01-01,allow\""), "{csv}");
    // The table escapes what a terminal would interpret or what would forge a row.
    let table = ok(bridge(
        cwd,
        &["events", "list", "--workspace", "ws-3", "--store", &url],
    ));
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains("mallory\\n2026"), "{table}");

    // top: decisions (sum of counts) per group, most first.
    let top = |args: &[&str]| -> Value {
        let mut a = vec!["events", "top", "--format", "json", "--store", &url];
        a.extend_from_slice(args);
        serde_json::from_str(&ok(bridge(cwd, &a))).unwrap()
    };
    let v = top(&["--by", "domain", "--action", "would_deny", "--since", "7d"]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows[0]["key"], "evil.example");
    assert_eq!(
        rows[0]["count"], 8,
        "two decisions events and a DNS event: {v}"
    );
    assert_eq!(rows[0]["events"], 3);
    assert_eq!(rows[1]["key"], "other.example");
    assert_eq!(rows.len(), 2, "{v}");
    let v = top(&["--by", "destination", "--action", "deny"]);
    assert_eq!(v["rows"][0]["key"], "10.9.9.9:22", "{v}");
    assert_eq!(v["rows"][1]["key"], "192.0.2.66:8443", "{v}");
    let v = top(&["--by", "workspace", "--template", "python-dev"]);
    assert_eq!(v["rows"][0]["key"], "ws-1", "{v}");
    let v = top(&["--by", "template"]);
    assert_eq!(v["rows"][0]["key"], "python-dev", "{v}");
    assert_eq!(v["rows"][1]["key"], "node-dev", "{v}");
    let v = top(&["--by", "process", "--action", "allow"]);
    assert_eq!(
        (v["rows"][0]["key"].clone(), v["rows"][0]["count"].clone()),
        (json!("pip"), json!(7)),
        "{v}"
    );
    let csv = ok(bridge(
        cwd,
        &[
            "events", "top", "--by", "process", "--action", "deny", "--format", "csv", "--store",
            &url,
        ],
    ));
    assert!(csv.contains("\"'=HYPERLINK("), "{csv}");
    let o = bridge(
        cwd,
        &["events", "list", "--since", "yesterday", "--store", &url],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid --since"));
}

#[tokio::test]
async fn export_streams_every_event_in_order_past_one_page() {
    let dir = TempDir::new("events-export");
    let url = dir.path().join("bridge.db").display().to_string();
    let store = Store::open(&url).await.unwrap();
    let n = query::EXPORT_PAGE as usize * 2 + 17;
    let base = Utc::now() - chrono::Duration::hours(1);
    let mut all = Vec::new();
    for i in 0..n {
        // Several events share each timestamp: pages must split ties without loss or repeat.
        let at = (base + chrono::Duration::milliseconds((i / 3) as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        all.push(dns("allow", &format!("n{i}.example"), 1, &at));
    }
    for chunk in all.chunks(1000) {
        post(&store, &origin("ws-1"), chunk.to_vec()).await;
    }
    let out = ok(bridge(
        dir.path(),
        &["events", "export", "--since", "2h", "--store", &url],
    ));
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), n);
    let times: Vec<DateTime<Utc>> = lines
        .iter()
        .map(|l| l["timestamp"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["event.id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no event twice");
    // A reader that stops early (`| head`) ends the export quietly, with success.
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
        .args(["events", "export", "--store", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with('{'), "{first}");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = ok(bridge(
        dir.path(),
        &[
            "events",
            "export",
            "--format",
            "csv",
            "--domain",
            "n7.example",
            "--store",
            &url,
        ],
    ));
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .contains(",boundary.dns,allow,,,n7.example,python3,"),
        "{csv}"
    );
}

#[tokio::test]
async fn retention_deletes_old_events_only() {
    let dir = TempDir::new("events-retention");
    let url = dir.path().join("bridge.db").display().to_string();
    let store = Store::open(&url).await.unwrap();
    post(
        &store,
        &origin("ws-1"),
        vec![
            dns("allow", "old.example", 1, &ago(24 * 100)),
            dns("allow", "recent.example", 1, &ago(24 * 80)),
            dns("allow", "new.example", 1, &ago(1)),
        ],
    )
    .await;
    assert_eq!(query::count_events(&store).await.unwrap(), 3);
    // The default (90 days): the purge job of `serve` runs at start.
    let port = free_port();
    std::fs::write(
        dir.path().join("bridge.yaml"),
        format!("listen: 127.0.0.1:{port}\nstore: {url}\n"),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let mut serve = Proc(
        Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
            .current_dir(dir.path())
            .env_remove("BRIDGE_STORE")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .env("RUST_LOG", "info")
            .args(["serve", "--config", "bridge.yaml"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut serve.0, &log);
    let purged = wait_until(Duration::from_secs(20), || async {
        query::count_events(&store).await.unwrap() == 2
    })
    .await;
    assert!(purged, "{}", std::fs::read_to_string(&log).unwrap());
    let left: Vec<String> = query::list_events(&store, &query::EventFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.domain)
        .collect();
    assert_eq!(left, vec!["new.example", "recent.example"]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"events_deleted\":1"), "{text}");
}

/// `curl` POSTs `body` to the events route with `token`: (status, response body).
fn post_http(dir: &Path, url: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let file = dir.join(format!("batch-{}.json", uuid::Uuid::now_v7().simple()));
    std::fs::write(&file, body).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", "content-type: application/json"])
        .args([
            "-H",
            "x-boundary-agent-version: 0.1.0",
            "-H",
            "x-boundary-agent-host: test-host",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{url}/boundary/v1/events"));
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn batch(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "events": events })).unwrap()
}

/// `llm-bridge serve` on `store` (no providers: only the control plane is used).
fn serve(dir: &Path, store: &str) -> (Proc, String) {
    let port = free_port();
    let config = dir.join("bridge.yaml");
    std::fs::write(
        &config,
        format!("listen: 127.0.0.1:{port}\nstore: {store}\n"),
    )
    .unwrap();
    let log = dir.join(format!("serve-{port}.log"));
    let mut p = Proc(
        Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
            .current_dir(dir)
            .env_remove("BRIDGE_STORE")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut p.0, &log);
    (p, format!("http://127.0.0.1:{port}"))
}

/// `llm-bridge agents create`: (agent id, token).
fn enrol(dir: &Path, store: &str, workspace: &str) -> (String, String) {
    let out = bridge(
        dir,
        &[
            "agents",
            "create",
            "--template",
            "python-dev",
            "--workspace",
            workspace,
            "--store",
            store,
        ],
    );
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

async fn ingest_over_http(store_url: &str, dir: &Path) {
    let (agent, token) = enrol(dir, store_url, "ws-42");
    let store = Store::open(store_url).await.unwrap();
    let count = || async { query::count_events(&store).await.unwrap() };
    let (mut serve1, url) = serve(dir, store_url);

    let mut forged = dns("would_deny", "a.example", 2, &ago(1));
    forged["template"] = json!("forged-template");
    forged["workspace"] = json!("forged-ws");
    let a = vec![
        decision("deny", "192.0.2.1", 443, &["b.example"], "curl", 1, &ago(1)),
        forged,
        dns("allow", "c.example", 1, &ago(1)),
    ];
    let (status, body) = post_http(dir, &url, Some(&token), &batch(&a));
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"accepted":3,"duplicates":0}"#)
    );
    // The same batch again (a timeout, a retry): nothing stored twice.
    let (status, body) = post_http(dir, &url, Some(&token), &batch(&a));
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"accepted":0,"duplicates":3}"#)
    );
    assert_eq!(count().await, 3);
    // The same id twice in one batch counts once.
    let twice = dns("allow", "d.example", 1, &ago(1));
    let (status, body) = post_http(dir, &url, Some(&token), &batch(&[twice.clone(), twice]));
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"accepted":1,"duplicates":1}"#)
    );
    assert_eq!(count().await, 4);

    // The bridge restarts between two posts: ids already stored stay duplicates.
    serve1.terminate();
    assert!(serve1.wait_exit().success());
    let (_serve2, url) = serve(dir, store_url);
    let b = vec![
        a[0].clone(),
        dns("allow", "e.example", 1, &ago(0)),
        dns("allow", "f.example", 1, &ago(0)),
    ];
    let (status, body) = post_http(dir, &url, Some(&token), &batch(&b));
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"accepted":2,"duplicates":1}"#)
    );
    assert_eq!(count().await, 6);

    // Stored as sent, with who sent it from the token, never from the body.
    let stored = query::list_events(
        &store,
        &query::EventFilter {
            domain: Some("a.example".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(stored.len(), 1);
    let body: Value = serde_json::from_str(&stored[0].body).unwrap();
    assert_eq!(body["template"], "python-dev");
    assert_eq!(body["workspace"], "ws-42");
    assert_eq!(body["agent.id"], agent.as_str());
    assert_eq!(stored[0].count, 2);

    // A malformed event refuses the whole batch, naming it; nothing of it is stored.
    let bad = vec![
        dns("allow", "g.example", 1, &ago(0)),
        json!({"event.name": "boundary.dns"}),
    ];
    let (status, body) = post_http(dir, &url, Some(&token), &batch(&bad));
    assert_eq!(status, 400, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("events[1]: no `event.id`"),
        "{body}"
    );
    let (status, body) = post_http(dir, &url, Some(&token), b"[1, 2]");
    assert_eq!(status, 400, "{body}");
    assert_eq!(count().await, 6);

    // Beyond 1,000 events or 4 MiB: 413, nothing stored.
    let many: Vec<Value> = (0..1001)
        .map(|i| dns("allow", &format!("m{i}.example"), 1, &ago(0)))
        .collect();
    let (status, body) = post_http(dir, &url, Some(&token), &batch(&many));
    assert_eq!(status, 413, "{body}");
    let mut big = dns("allow", "big.example", 1, &ago(0));
    big["padding"] = json!("x".repeat(4 << 20));
    let (status, _) = post_http(dir, &url, Some(&token), &batch(&[big]));
    assert_eq!(status, 413);
    assert_eq!(count().await, 6);

    // No token, a wrong one, a revoked one: 401, nothing stored.
    let new = batch(&[dns("allow", "h.example", 1, &ago(0))]);
    assert_eq!(post_http(dir, &url, None, &new).0, 401);
    let forged_token = format!("bnd_agent_{}", "A".repeat(43));
    assert_eq!(post_http(dir, &url, Some(&forged_token), &new).0, 401);
    ok(bridge(
        dir,
        &["agents", "revoke", &agent, "--store", store_url],
    ));
    let (status, body) = post_http(dir, &url, Some(&token), &new);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert_eq!(count().await, 6);
}

#[tokio::test]
async fn ingest_over_http_on_sqlite() {
    let dir = TempDir::new("events-http");
    let url = dir.path().join("bridge.db").display().to_string();
    ingest_over_http(&url, dir.path()).await;
}

/// "A session ends when its `boundary.session.end` event is stored."
#[tokio::test]
async fn a_stored_session_end_event_ends_the_session() {
    let dir = TempDir::new("events-session-end");
    let cwd = dir.path();
    let url = cwd.join("bridge.db").display().to_string();
    let (_agent, token) = enrol(cwd, &url, "ws-1");
    let (_serve, base) = serve(cwd, &url);
    let registration = json!({"session_id": "sess-end-1", "credential_sha256": "ab".repeat(32),
        "user_name": "alice", "uid": 1000, "command": "claude", "started_at": ago(1)});
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
        ])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["-d", &registration.to_string()])
        .arg(format!("{base}/boundary/v1/sessions"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "204");
    let ended = || -> Option<i64> {
        rusqlite::Connection::open(cwd.join("bridge.db"))
            .unwrap()
            .query_row(
                "SELECT ended_at FROM boundary_sessions WHERE session_id = 'sess-end-1'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(ended(), None);
    let mut end = json!({"event.id": uuid::Uuid::now_v7().to_string(), "timestamp": ago(0),
        "event.name": "boundary.session.end", "session.id": "sess-end-1"});
    let other = dns("allow", "x.example", 1, &ago(0));
    let (status, body) = post_http(cwd, &base, Some(&token), &batch(&[other, end.clone()]));
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"accepted":2,"duplicates":0}"#)
    );
    assert!(
        ended().is_some(),
        "the session is ended once its end event is stored"
    );
    // A malformed batch holding an end event ends nothing.
    end["session.id"] = json!("sess-end-2");
    let (status, _) = post_http(cwd, &base, Some(&token), &batch(&[end, json!(5)]));
    assert_eq!(status, 400);
}

#[tokio::test]
async fn ingest_over_http_on_postgres() {
    let dir = TempDir::new("events-http-pg");
    let pg = Postgres::start();
    ingest_over_http(&pg.url(), dir.path()).await;
}

#[tokio::test]
async fn events_retention_from_the_config_is_applied() {
    let dir = TempDir::new("events-retention-config");
    let url = dir.path().join("bridge.db").display().to_string();
    let store = Store::open(&url).await.unwrap();
    post(
        &store,
        &origin("ws-1"),
        vec![
            dns("allow", "old.example", 1, &ago(24 * 40)),
            dns("allow", "new.example", 1, &ago(24 * 20)),
        ],
    )
    .await;
    let port = free_port();
    std::fs::write(
        dir.path().join("bridge.yaml"),
        format!(
            "listen: 127.0.0.1:{port}\nstore: {url}\ncontrol_plane:\n  events_retention: 30d\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let mut serve = Proc(
        Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
            .current_dir(dir.path())
            .env_remove("BRIDGE_STORE")
            .args(["serve", "--config", "bridge.yaml"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut serve.0, &log);
    let purged = wait_until(Duration::from_secs(20), || async {
        query::count_events(&store).await.unwrap() == 1
    })
    .await;
    assert!(purged, "{}", std::fs::read_to_string(&log).unwrap());
    let left = query::list_events(&store, &query::EventFilter::default())
        .await
        .unwrap();
    assert_eq!(left[0].domain.as_deref(), Some("new.example"));
}

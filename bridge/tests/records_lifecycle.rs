//! What happens to records after a request, with the real `llm-bridge` and `fake-upstream`
//! binaries and real stores:
//!
//! - read-after-write: the README's snippet (a request, then `llm-bridge usage` at once) sees
//!   every request, 50 times in a row, streaming or not;
//! - files that hold prompts (SQLite and its `-wal`/`-shm`, spool, journal) are created 0600
//!   and their directories 0700;
//! - `interceptions list` shows id prefixes unique in the store, `show` takes any unique
//!   prefix and names the candidates of an ambiguous one;
//! - retention: `llm-bridge purge` (dry run, records, prompts only) and the purge job of
//!   `serve`, on SQLite and PostgreSQL, with two purges at once as two replicas would run;
//! - `prompt_recording: redacted | none`: the stored record (the SQLite file read directly),
//!   the journal and the log hold no secret.

mod http_support;
mod proc_support;
mod store_support;

use proc_support::{free_port, wait_listening, Proc};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bridge::record::Provider;
use bridge::store::Store;
use chrono::Utc;
use serde_json::Value;
use store_support::{record, wait_until, Postgres, TempDir};

const ANTHROPIC_KEY: &str = "sk-ant-fake-upstream-key";
const OPENAI_KEY: &str = "sk-openai-fake-upstream-key";

/// `llm-bridge ARGS` in `cwd` with a clean environment.
fn bridge(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
        .current_dir(cwd)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
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

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The fake upstream and `llm-bridge serve --config bridge.yaml` in `cwd`, as the README
/// starts them; `extra` is appended to bridge.yaml.
struct Running {
    _fake: Option<Proc>,
    serve: Proc,
    url: String,
    log: std::path::PathBuf,
}

fn start_fake(cwd: &Path) -> (Proc, u16) {
    let up_port = free_port();
    let fake_log = cwd.join("fake.log");
    let mut fake = Proc(
        Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(["--listen", &format!("127.0.0.1:{up_port}")])
            .stderr(std::fs::File::create(&fake_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(up_port, &mut fake.0, &fake_log);
    (fake, up_port)
}

fn start(cwd: &Path, extra: &str) -> Running {
    let (fake, up_port) = start_fake(cwd);
    let mut run = start_bridge(cwd, "bridge", up_port, extra);
    run._fake = Some(fake);
    run
}

/// `llm-bridge serve --config NAME.yaml` in `cwd`, in front of the fake upstream on `up_port`.
fn start_bridge(cwd: &Path, name: &str, up_port: u16, extra: &str) -> Running {
    let port = free_port();
    let config = format!("{name}.yaml");
    std::fs::write(
        cwd.join(&config),
        format!(
            // Read-after-write on: these tests prove a record is stored before its response ends.
            "listen: 127.0.0.1:{port}\nlimits: {{ record_wait_ms: 5000 }}\nproviders:\n  anthropic: {{ base_url: \"http://127.0.0.1:{up_port}\", api_key: {ANTHROPIC_KEY} }}\n  openai:    {{ base_url: \"http://127.0.0.1:{up_port}\", api_key: {OPENAI_KEY} }}\n{extra}"
        ),
    )
    .unwrap();
    let log = cwd.join(format!("{name}.log"));
    let mut serve = Proc(
        Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
            .current_dir(cwd)
            .env_remove("BRIDGE_STORE")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "info")
            .args(["serve", "--config", &config])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, &mut serve.0, &log);
    Running {
        _fake: None,
        serve,
        url: format!("http://127.0.0.1:{port}"),
        log,
    }
}

/// `curl` as the README runs it; returns the body.
fn curl_anthropic(url: &str, token: &str, body: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "20"])
        .arg(format!("{url}/anthropic/v1/messages"))
        .args(["-H", &format!("x-api-key: {token}")])
        .args(["-H", "anthropic-version: 2023-06-01"])
        .args(["-H", "content-type: application/json"])
        .args(["-d", body])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn curl_openai_stream(url: &str, token: &str) -> String {
    let body = r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-N", "--max-time", "20"])
        .arg(format!("{url}/openai/v1/chat/completions"))
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["-H", "content-type: application/json"])
        .args(["-d", body])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_usage_report_run_right_after_a_request_always_counts_it() {
    let dir = TempDir::new("read-after-write");
    let cwd = dir.path();
    let token = ok(bridge(cwd, &["keys", "create", "--user", "alice"]))
        .trim()
        .to_string();
    let run = start(cwd, "");
    let plain = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    let streamed = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    for i in 1..=50u64 {
        // The README's request (a JSON answer of known length), a streamed Anthropic answer
        // (chunked) and a streamed OpenAI answer (chunked, usage chunk withheld) in turn.
        match i % 3 {
            0 => assert!(curl_anthropic(&run.url, &token, streamed).contains("message_stop")),
            1 => assert!(curl_anthropic(&run.url, &token, plain).contains("\"usage\"")),
            _ => assert!(curl_openai_stream(&run.url, &token).contains("[DONE]")),
        }
        let report: Value = serde_json::from_str(&ok(bridge(
            cwd,
            &[
                "usage",
                "--by",
                "user",
                "--format",
                "json",
                "--config",
                "bridge.yaml",
            ],
        )))
        .unwrap();
        assert_eq!(
            report["total"]["requests"], i,
            "request {i} not counted right after it: {report}"
        );
        assert_eq!(report["rows"][0]["key"], "alice");
    }

    // What holds prompts is owner-only: the store and its WAL files, the spool and journal.
    let (db, wal, shm) = (
        cwd.join("bridge.db"),
        cwd.join("bridge.db-wal"),
        cwd.join("bridge.db-shm"),
    );
    for f in [&db, &wal, &shm, &cwd.join("bridge-spool/store-id")] {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    for d in [cwd.join("bridge-spool"), cwd.join("bridge-spool/journal")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    let journal_files: Vec<_> = std::fs::read_dir(cwd.join("bridge-spool/journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!journal_files.is_empty(), "the journal has its segment");
    for f in journal_files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    drop(run);
}

/// The README's "without provider keys" snippet, taken from README.md and run by bash as
/// written, with three substitutions so it can run beside other tests: free ports instead of
/// 9900 and 8787, and the debug binaries instead of target/release. Its last line, run right
/// after the request, must show alice's request, every time.
#[test]
fn the_readme_snippet_runs_as_written_and_its_usage_line_counts_the_request() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let after = readme
        .split_once("To try it without provider keys")
        .expect("the README has the snippet")
        .1;
    let script = after
        .split_once("```sh\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    assert!(
        script
            .trim_end()
            .ends_with("llm-bridge usage --by user     # alice, 1 request, its tokens and cost"),
        "{script}"
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_llm-bridge"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for round in 0..20 {
        let dir = TempDir::new("readme-snippet");
        let (up, port) = (free_port(), free_port());
        let script = script
            .replace(
                "target/release/fake-upstream &",
                &format!("fake-upstream --listen 127.0.0.1:{up} &"),
            )
            .replace("127.0.0.1:9900", &format!("127.0.0.1:{up}"))
            .replace("127.0.0.1:8787", &format!("127.0.0.1:{port}"))
            .replace(
                "llm-bridge serve --config bridge.yaml &",
                &format!(
                    "llm-bridge serve --config bridge.yaml --listen 127.0.0.1:{port} 2>serve.log &"
                ),
            );
        let out = Command::new("bash")
            .args([
                "-c",
                &format!("set -e\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}"),
            ])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env_remove("BRIDGE_STORE")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "round {round}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let alice = stdout
            .lines()
            .find(|l| l.starts_with("alice"))
            .unwrap_or_else(|| panic!("round {round}: no alice row: {stdout}"));
        assert_eq!(
            alice.split_whitespace().nth(1),
            Some("1"),
            "round {round}: {stdout}"
        );
    }
}

/// Tighter than the README: the store is read in-process the moment the response's last byte
/// arrived (a CLI takes milliseconds to start; this takes microseconds), for answers of known
/// length, chunked streams, streams whose last event the bridge withholds, and the bridge's own
/// error answers (a 401 is recorded too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_holds_the_record_the_moment_the_response_ends() {
    let dir = TempDir::new("durable-end");
    let cwd = dir.path().to_path_buf();
    let token = ok(bridge(&cwd, &["keys", "create", "--user", "alice"]))
        .trim()
        .to_string();
    let run = start(&cwd, "");
    let c = http_support::client();
    let db = rusqlite::Connection::open(cwd.join("bridge.db")).unwrap();
    let count = |outcome: &str| -> u64 {
        db.query_row(
            "SELECT COUNT(*) FROM interceptions WHERE outcome = ?1",
            [outcome],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (mut ok_n, mut rejected_n) = (0, 0);
    for i in 0..60 {
        let anthropic =
            |stream: bool| {
                http_support::request(
                http::Method::POST,
                &format!("{}/anthropic/v1/messages", run.url),
                &[("x-api-key", token.as_str()), ("anthropic-version", "2023-06-01")],
                serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
            )
            };
        let bearer = format!("Bearer {token}");
        let req = match i % 4 {
            0 => anthropic(false),
            1 => anthropic(true),
            2 => http_support::request(
                http::Method::POST,
                &format!("{}/openai/v1/chat/completions", run.url),
                &[("authorization", bearer.as_str())],
                r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
            _ => http_support::request(
                http::Method::GET,
                &format!("{}/openai/v1/models", run.url),
                &[(
                    "authorization",
                    "Bearer brg_nobody0123456789abcdefghijklmnop",
                )],
                "",
            ),
        };
        let (status, _, _) = http_support::send(&c, req).await;
        if i % 4 == 3 {
            assert_eq!(status, 401);
            rejected_n += 1;
        } else {
            assert_eq!(status, 200);
            ok_n += 1;
        }
        assert_eq!(
            (count("ok"), count("rejected")),
            (ok_n, rejected_n),
            "request {i} (kind {}) not in the store when its response ended",
            i % 4
        );
    }
    drop(run);
}

/// Two replicas on one PostgreSQL database: whichever answered, the record is in the shared
/// store when the response ends, so a report run anywhere right after counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_on_postgres_each_request_is_stored_before_its_response_ends() {
    let pg = Postgres::start();
    let dir = TempDir::new("replicas-durable");
    let cwd = dir.path().to_path_buf();
    let url = pg.url();
    let token = ok(bridge(
        &cwd,
        &["keys", "create", "--user", "alice", "--store", &url],
    ))
    .trim()
    .to_string();
    let (_fake, up_port) = start_fake(&cwd);
    let replicas: Vec<Running> = ["a", "b"]
        .iter()
        .map(|name| {
            start_bridge(
                &cwd,
                name,
                up_port,
                &format!("store: {url}\nspool_dir: spool-{name}\n"),
            )
        })
        .collect();
    let reader = Store::open(&url).await.unwrap();
    let c = http_support::client();
    for i in 1..=30u64 {
        let r = &replicas[(i % 2) as usize];
        let (status, _, _) = http_support::send(
            &c,
            http_support::request(
                http::Method::POST,
                &format!("{}/anthropic/v1/messages", r.url),
                &[("x-api-key", token.as_str()), ("anthropic-version", "2023-06-01")],
                serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "stream": i % 3 == 0,
                    "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
            ),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            reader.count_interceptions().await.unwrap(),
            i,
            "request {i} (replica {}) not in PostgreSQL when its response ended",
            i % 2
        );
    }
    // And the CLI, as an admin runs it on yet another host.
    let report: Value = serde_json::from_str(&ok(bridge(
        &cwd,
        &["usage", "--format", "json", "--store", &url],
    )))
    .unwrap();
    assert_eq!(report["total"]["requests"], 30);
    drop(replicas);
}

#[tokio::test]
async fn interception_prefixes_are_unique_in_the_store_and_an_ambiguous_one_names_its_matches() {
    let dir = TempDir::new("prefixes");
    let db = dir.path().join("bridge.db");
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    // Four records of the same millisecond: uuid v7 ids that share their first 13 characters
    // ("0193a5b2-1c3d"), two of them also the next 6; and one of another minute.
    let base = uuid::Uuid::now_v7().to_string();
    let same_ms = &base[..14];
    let ids = [
        format!("{same_ms}7aaa-8aaa-000000000001"),
        format!("{same_ms}7aaa-8aaa-000000000002"),
        format!("{same_ms}7bbb-8bbb-000000000003"),
        format!("{same_ms}7ccc-8ccc-000000000004"),
    ];
    let now = Utc::now();
    let mut recs = Vec::new();
    for id in &ids {
        let mut r = record("alice", Provider::Anthropic, "claude-haiku-4-5", now, 1, 1);
        r.id = uuid::Uuid::parse_str(id).unwrap();
        recs.push(r);
    }
    let mut lone = record(
        "bob",
        Provider::Openai,
        "gpt-4o",
        now - chrono::Duration::hours(2),
        1,
        1,
    );
    lone.id = uuid::Uuid::parse_str("00000000-0000-7000-8000-000000000000").unwrap();
    recs.push(lone);
    store.insert_interceptions(&recs).await.unwrap();
    let cwd = dir.path();
    let db = db.to_str().unwrap();

    // Listing only bob: his id shares nothing with the others, so 8 characters do.
    let list = ok(bridge(
        cwd,
        &["interceptions", "list", "--user", "bob", "--store", db],
    ));
    let bob_prefix = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(bob_prefix, "00000000", "{list}");

    // Listing alice: ids 1 and 2 differ only in their last character, so every shown prefix
    // is the full id; each prefix shown is accepted by `show`.
    let list = ok(bridge(
        cwd,
        &["interceptions", "list", "--user", "alice", "--store", db],
    ));
    let shown: Vec<&str> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(shown.len(), 4, "{list}");
    for p in &shown {
        assert_eq!(p.len(), 36, "{list}");
        let out = ok(bridge(cwd, &["interceptions", "show", p, "--store", db]));
        assert!(out.contains(&format!("id:          {p}")), "{out}");
    }
    // The shortest prefix that tells id 3 apart from the others is accepted too.
    let three = &ids[2][..16];
    let out = ok(bridge(
        cwd,
        &["interceptions", "show", three, "--store", db],
    ));
    assert!(out.contains(&ids[2]), "{out}");

    // The 8-character prefix of the README matches all four: refused, with the candidates.
    let eight = &ids[0][..8];
    let out = bridge(cwd, &["interceptions", "show", eight, "--store", db]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ambiguous: matches 4 interceptions (")
            && ids.iter().all(|i| err.contains(i.as_str())),
        "{err}"
    );
    let out = bridge(cwd, &["interceptions", "show", "not-an-id!", "--store", db]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an interception id"));
}

/// Old and new records: `(records, of which old)`.
async fn seed(store: &Store, old: usize, new: usize) {
    let now = Utc::now();
    let mut recs = Vec::new();
    for i in 0..old + new {
        let at = if i < old {
            now - chrono::Duration::days(100) - chrono::Duration::seconds(i as i64)
        } else {
            now - chrono::Duration::days(10)
        };
        recs.push(record(
            "alice",
            Provider::Anthropic,
            "claude-haiku-4-5",
            at,
            10,
            5,
        ));
    }
    for chunk in recs.chunks(500) {
        store.insert_interceptions(chunk).await.unwrap();
    }
}

async fn texts(store: &Store) -> (usize, usize, usize) {
    let all = store.list_interceptions(&Default::default()).await.unwrap();
    let with_prompt = all.iter().filter(|r| r.prompt.is_some()).count();
    let with_args = all
        .iter()
        .filter(|r| r.tool_calls.iter().any(|c| !c.arguments.is_empty()))
        .count();
    assert!(all
        .iter()
        .all(|r| r.tool_calls.iter().all(|c| c.name == "get_weather")));
    (all.len(), with_prompt, with_args)
}

async fn purge_cli_removes_old_records_and_prompts(url: &str, cwd: &Path) {
    let store = Store::open(url).await.unwrap();
    seed(&store, 30, 20).await;
    let dry = ok(bridge(
        cwd,
        &["purge", "--before", "90d", "--dry-run", "--store", url],
    ));
    assert!(
        dry.starts_with("would remove 30 interceptions started before "),
        "{dry}"
    );
    assert_eq!(
        texts(&store).await,
        (50, 50, 50),
        "a dry run removes nothing"
    );

    let prompts = ok(bridge(
        cwd,
        &[
            "purge",
            "--before",
            "5d",
            "--prompts-only",
            "--dry-run",
            "--store",
            url,
        ],
    ));
    assert!(
        prompts.starts_with("would drop the prompt text and tool-call arguments of 50 "),
        "{prompts}"
    );
    let done = ok(bridge(cwd, &["purge", "--before", "90d", "--store", url]));
    assert!(
        done.starts_with("removed 30 interceptions started before "),
        "{done}"
    );
    assert_eq!(texts(&store).await, (20, 20, 20));
    let again = ok(bridge(cwd, &["purge", "--before", "90d", "--store", url]));
    assert!(again.starts_with("removed 0 interceptions"), "{again}");

    let dropped = ok(bridge(
        cwd,
        &["purge", "--before", "5d", "--prompts-only", "--store", url],
    ));
    assert!(
        dropped.starts_with("dropped the prompt text and tool-call arguments of 20 "),
        "{dropped}"
    );
    // The records stay for usage and chargeback, tool names included; the text is gone.
    assert_eq!(texts(&store).await, (20, 0, 0));
    let usage: Value = serde_json::from_str(&ok(bridge(
        cwd,
        &[
            "usage", "--since", "30d", "--format", "json", "--store", url,
        ],
    )))
    .unwrap();
    assert_eq!(usage["total"]["requests"], 20);
    assert_eq!(usage["total"]["input_tokens"], 200);

    let bad = bridge(cwd, &["purge", "--before", "last year", "--store", url]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --before \"last year\""));
}

#[tokio::test]
async fn purge_removes_old_records_or_only_their_prompts_on_sqlite() {
    let dir = TempDir::new("purge-sqlite");
    let db = dir.path().join("bridge.db");
    purge_cli_removes_old_records_and_prompts(db.to_str().unwrap(), dir.path()).await;
}

#[tokio::test]
async fn purge_removes_old_records_or_only_their_prompts_on_postgres_and_two_replicas_can_purge_at_once(
) {
    let pg = Postgres::start();
    let dir = TempDir::new("purge-pg");
    purge_cli_removes_old_records_and_prompts(&pg.url(), dir.path()).await;

    // Two replicas' purge jobs at once, each with its own connection: every old record goes
    // exactly once, neither fails (no deadlock, no waiting on the other's rows).
    let a = Store::open(&pg.url()).await.unwrap();
    let b = Store::open(&pg.url()).await.unwrap();
    seed(&a, 5000, 100).await;
    let cutoff = Some(Utc::now() - chrono::Duration::days(90));
    let prompts = Some(Utc::now() - chrono::Duration::days(5));
    let (ra, rb) = tokio::join!(
        bridge::retention::purge(&a, cutoff, prompts, false),
        bridge::retention::purge(&b, cutoff, prompts, false)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.interceptions + rb.interceptions, 5000, "{ra:?} {rb:?}");
    let (n, with_prompt, _) = texts(&a).await;
    assert_eq!((n, with_prompt), (120, 0));
}

#[test]
fn serve_purges_by_itself_what_retention_says() {
    let dir = TempDir::new("retention-serve");
    let cwd = dir.path();
    let db = cwd.join("bridge.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        seed(&store, 40, 10).await;
    });
    let run = start(
        cwd,
        "retention:\n  interceptions: 90d\n  prompts: 5d\n  purge_interval: 1h\n",
    );
    let gone = rt.block_on(async {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        wait_until(Duration::from_secs(20), || async {
            texts(&store).await == (10, 0, 0)
        })
        .await
    });
    let log = std::fs::read_to_string(&run.log).unwrap();
    assert!(gone, "{log}");
    let line: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "retention purge")
        .unwrap_or_else(|| panic!("no `retention purge` line: {log}"));
    assert_eq!(line["interceptions_deleted"], 40);
    assert_eq!(line["prompts_dropped"], 10);

    // A bad retention is refused at start with file, line and field.
    std::fs::write(
        cwd.join("bad.yaml"),
        "store: bridge.db\nretention:\n  prompts: 30days\n",
    )
    .unwrap();
    let out = bridge(cwd, &["serve", "--config", "bad.yaml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:3:3: field `retention.prompts`"),
        "{err}"
    );
    drop(run);
}

const SECRETS: &[&str] = &[
    "sk-ant-api03-Zx9yW8vU7tS6rQ5pO4nM",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg",
    "hunter2-very-secret",
];

fn secret_prompt() -> String {
    format!(
        "What is the weather in Paris? my key is {} and aws {} and gh {} jwt {} password={}\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
        SECRETS[0], SECRETS[1], SECRETS[2], SECRETS[3], SECRETS[4]
    )
}

/// Sends a prompt full of secrets (with a tool offered, so the fake upstream calls it) to a
/// bridge with `prompt_recording: MODE`; returns the stored `(prompt, tool_calls)` read from
/// the SQLite file directly, and everything else on disk as text.
fn record_secrets(mode: &str) -> (Option<String>, String, String) {
    let dir = TempDir::new(&format!("redact-{mode}"));
    let cwd = dir.path();
    let token = ok(bridge(cwd, &["keys", "create", "--user", "alice"]))
        .trim()
        .to_string();
    let mut run = start(cwd, &format!("prompt_recording: {mode}\n"));
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": secret_prompt()}],
    });
    curl_anthropic(&run.url, &token, &body.to_string());
    // SIGTERM: a clean stop, so everything that will ever be written is on disk.
    let pid = run.serve.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let _ = run.serve.0.wait();
    let conn = rusqlite::Connection::open(cwd.join("bridge.db")).unwrap();
    let (prompt, calls): (Option<String>, String) = conn
        .query_row(
            "SELECT prompt, tool_calls FROM interceptions WHERE user_name = 'alice'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut on_disk = std::fs::read_to_string(&run.log).unwrap();
    for f in ["bridge.db", "bridge.db-wal"] {
        if let Ok(b) = std::fs::read(cwd.join(f)) {
            on_disk.push_str(&String::from_utf8_lossy(&b));
        }
    }
    (prompt, calls, on_disk)
}

#[test]
fn redacted_prompt_recording_stores_no_secret() {
    let (prompt, calls, on_disk) = record_secrets("redacted");
    let prompt = prompt.expect("the redacted prompt is kept");
    assert!(
        prompt.starts_with("What is the weather in Paris?"),
        "{prompt}"
    );
    for kind in [
        "api_key",
        "aws_access_key",
        "github_token",
        "jwt",
        "password",
        "private_key",
    ] {
        assert!(
            prompt.contains(&format!("[REDACTED:{kind}]")),
            "{kind}: {prompt}"
        );
    }
    for s in SECRETS.iter().chain(&["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"]) {
        assert!(!on_disk.contains(s), "{s} found in the store or the log");
    }
    assert!(
        calls.contains("get_weather") && calls.contains("Paris"),
        "{calls}"
    );
}

#[test]
fn no_prompt_recording_keeps_metadata_and_tool_names_only() {
    let (prompt, calls, on_disk) = record_secrets("none");
    assert_eq!(prompt, None);
    let calls: Value = serde_json::from_str(&calls).unwrap();
    assert_eq!(calls[0]["name"], "get_weather");
    assert_eq!(calls[0]["arguments"], "");
    for s in SECRETS.iter().chain(&["weather in Paris"]) {
        assert!(!on_disk.contains(s), "{s} found in the store or the log");
    }
}

/// With the store unavailable, a request still ends (its record fsynced to the spool instead)
/// and a report run right after it says that records wait in the spool, uncounted.
#[test]
fn a_report_says_when_records_wait_in_the_spool() {
    let dir = TempDir::new("spool-note");
    let cwd = dir.path();
    let token = ok(bridge(cwd, &["keys", "create", "--user", "alice"]))
        .trim()
        .to_string();
    let run = start(cwd, "");
    // Another connection holds SQLite's write lock, as a stuck writer or a backup would.
    let lock = rusqlite::Connection::open(cwd.join("bridge.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = Instant::now();
    let plain = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    assert!(curl_anthropic(&run.url, &token, plain).contains("\"usage\""));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the response ends within RECORD_WAIT: {:?}",
        started.elapsed()
    );
    let out = bridge(
        cwd,
        &["usage", "--format", "json", "--config", "bridge.yaml"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("note: 1 record waits in the spool bridge-spool"),
        "{err}"
    );
    drop(lock);
    drop(run);
}

//! The `bridge` CLI end to end on a real SQLite store: keys are created, listed, used to
//! authenticate and revoked; usage and interceptions are reported from recorded requests;
//! every subcommand explains itself with --help.

mod store_support;

use std::process::{Command, Output};
use std::time::Duration;

use bridge::keys::Authenticator;
use bridge::pricing::PricingTable;
use bridge::record::Provider;
use bridge::recorder::Recorder;
use bridge::store::Store;
use bridge::telemetry::Telemetry;
use chrono::Utc;
use store_support::{record, wait_until, TempDir};

fn bridge(args: &[&str], store: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
        .args(args)
        .arg("--store")
        .arg(store)
        .env_remove("BRIDGE_STORE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "bridge failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[tokio::test]
async fn keys_created_by_the_cli_authenticate_until_revoked() {
    let dir = TempDir::new("cli-keys");
    let db = dir.path().join("bridge.db");
    let db = db.to_str().unwrap();

    let created = bridge(&["keys", "create", "--user", "alice"], db);
    let token = stdout(&created).trim().to_string();
    assert!(token.starts_with("brg_") && token.len() == 47, "{token}");
    let note = String::from_utf8_lossy(&created.stderr);
    assert!(note.contains("will not be shown again"), "{note}");

    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&bridge(&["keys", "list", "--format", "json"], db))).unwrap();
    let key = &listed[0];
    assert_eq!(key["user"], "alice");
    assert!(key["revoked_at"].is_null());
    let key_id = key["id"].as_str().unwrap().to_string();
    // The store holds a hash, never the token.
    let raw = std::fs::read(dir.path().join("bridge.db")).unwrap();
    let wal = std::fs::read(dir.path().join("bridge.db-wal")).unwrap_or_default();
    let needle = token.as_bytes();
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle)
            && !wal.windows(needle.len()).any(|w| w == needle)
    );
    let table = stdout(&bridge(&["keys", "list"], db));
    assert!(
        table.contains(&key_id) && !table.contains(&token),
        "{table}"
    );

    let store = Store::open(db).await.unwrap();
    let auth = Authenticator::with_ttl(store.clone(), Duration::from_millis(100));
    let who = auth.authenticate(&token).await.unwrap().unwrap();
    assert_eq!(
        (who.user.as_str(), who.key_id.as_str()),
        ("alice", key_id.as_str())
    );
    assert_eq!(auth.authenticate("brg_wrong").await.unwrap(), None);
    assert_eq!(
        auth.authenticate("sk-ant-not-a-bridge-token")
            .await
            .unwrap(),
        None
    );

    let revoked = stdout(&bridge(&["keys", "revoke", &key_id], db));
    assert!(revoked.contains(&key_id));
    // A running authenticator sees the revocation once its cache entry (100 ms) expires.
    let revoked_at = std::time::Instant::now();
    let refused = wait_until(Duration::from_secs(5), || async {
        auth.authenticate(&token).await.unwrap().is_none()
    })
    .await;
    assert!(refused, "revoked token still accepted");
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "revocation seen after {:?}, cache TTL 100 ms",
        revoked_at.elapsed()
    );
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&bridge(&["keys", "list", "--format", "json"], db))).unwrap();
    assert!(listed[0]["revoked_at"].is_string());
    assert!(
        listed[0]["last_used_at"].is_string(),
        "authentication records last use: {listed}"
    );

    let unknown = bridge(&["keys", "revoke", "key_doesnotexist"], db);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr)
        .contains("no bridge key with id \"key_doesnotexist\""));
}

#[tokio::test]
async fn usage_and_interceptions_report_what_the_recorder_stored() {
    let dir = TempDir::new("cli-usage");
    let db = dir.path().join("bridge.db");
    let db = db.to_str().unwrap();
    let store = Store::open(db).await.unwrap();
    let rec = Recorder::start(
        store,
        PricingTable::default(),
        dir.path().join("spool"),
        Telemetry::metrics_only("t"),
    )
    .unwrap();
    let first = record(
        "alice",
        Provider::Anthropic,
        "claude-sonnet-4-6",
        Utc::now(),
        1_000_000,
        0,
    );
    rec.record(first.clone());
    rec.record(record(
        "bob",
        Provider::Openai,
        "gpt-4o",
        Utc::now(),
        1_000_000,
        0,
    ));
    rec.record(record(
        "bob",
        Provider::Openai,
        "gpt-4o",
        Utc::now() - chrono::Duration::days(10),
        1,
        1,
    ));
    // A model the price list does not know: no cost, and never shown as free.
    rec.record(record(
        "carol",
        Provider::Openai,
        "llama-3-70b",
        Utc::now(),
        1000,
        10,
    ));
    rec.shutdown().await;

    let table = stdout(&bridge(&["usage", "--since", "7d", "--by", "user"], db));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("carol") && l.trim_end().ends_with("unpriced")),
        "{table}"
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("USER") && lines[0].contains("COST (USD)"),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("alice") && l.contains("3.000000")),
        "{table}"
    );
    assert!(
        lines.last().unwrap().starts_with("TOTAL")
            && lines.last().unwrap().contains("5.500000 + 1 unpriced"),
        "{table}"
    );

    let csv = stdout(&bridge(
        &[
            "usage", "--since", "30d", "--by", "model", "--format", "csv",
        ],
        db,
    ));
    assert!(csv.contains("\ngpt-4o,2,1000001,1,"), "{csv}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&bridge(
        &["usage", "--by", "provider", "--format", "json"],
        db,
    )))
    .unwrap();
    assert_eq!(json["group_by"], "provider");
    assert_eq!(json["total"]["requests"], 3);
    assert_eq!(json["total"]["unpriced_requests"], 1);

    let bad = bridge(&["usage", "--since", "last tuesday"], db);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --since"));

    let list = stdout(&bridge(&["interceptions", "list", "--user", "alice"], db));
    // The table shows a unique prefix of the id (at least 8 characters), not the whole id.
    let shown_id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        shown_id.len() >= 8 && first.id.to_string().starts_with(shown_id) && !list.contains("bob"),
        "{list}"
    );
    let shown = stdout(&bridge(
        &["interceptions", "show", &first.id.to_string()],
        db,
    ));
    assert!(shown.contains("What is the weather in Paris?"), "{shown}");
    assert!(
        shown.contains("get_weather (toolu_01): {\"city\":\"Paris\"}"),
        "{shown}"
    );
    assert!(shown.contains("workspace ws-1"), "{shown}");
    let missing = bridge(&["interceptions", "show", "ffffffff"], db);
    assert!(!missing.status.success());
}

#[test]
fn every_subcommand_explains_itself_with_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "create", "--help"],
        vec!["keys", "list", "--help"],
        vec!["keys", "revoke", "--help"],
        vec!["usage", "--help"],
        vec!["interceptions", "--help"],
        vec!["interceptions", "list", "--help"],
        vec!["interceptions", "show", "--help"],
        vec!["purge", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Usage: llm-bridge"),
            "{args:?}: {text}"
        );
    }
    let usage = Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
        .args(["usage", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&usage.stdout);
    assert!(
        text.contains("--since")
            && text.contains("--by")
            && text.contains("--format")
            && text.contains("--store")
    );
}

#[tokio::test]
async fn hostile_strings_cannot_drive_the_terminal_forge_rows_or_become_spreadsheet_formulas() {
    let dir = TempDir::new("cli-hostile");
    let db = dir.path().join("bridge.db");
    let db = db.to_str().unwrap();
    let store = Store::open(db).await.unwrap();
    let mut r = record(
        "mallory",
        Provider::Openai,
        "gpt-4o\u{1b}]0;pwned\u{7}\nffffffff-fake-row  2099-01-01",
        Utc::now(),
        1,
        1,
    );
    r.prompt = Some("=HYPERLINK(\"http://127.0.0.1/x\",\"click\")\n\u{1b}[2Jcleared".into());
    r.client = Some("@SUM(A1:A9)".into());
    store.insert_interceptions(&[r.clone()]).await.unwrap();

    let show = stdout(&bridge(&["interceptions", "show", &r.id.to_string()], db));
    assert!(
        !show.contains('\u{1b}') && !show.contains('\u{7}'),
        "{show:?}"
    );
    assert!(show.contains("\\u{1b}]0;pwned"), "{show}");
    let list = stdout(&bridge(&["interceptions", "list"], db));
    assert!(!list.contains('\u{1b}'), "{list:?}");
    assert_eq!(
        list.lines().count(),
        2,
        "a newline in a model forged a row: {list}"
    );
    let csv = stdout(&bridge(&["interceptions", "list", "--format", "csv"], db));
    assert!(csv.contains("\"'=HYPERLINK("), "{csv}");
    assert!(csv.contains(",'@SUM(A1:A9),"), "{csv}");
    assert!(!csv.contains(",=") && !csv.contains(",\"="), "{csv}");
}

/// The CLI reads the database while the store writes to it, as an operator running
/// `llm-bridge usage` next to `llm-bridge serve` does. Nothing in the store may release SQLite's locks
/// on the `-shm` file (opening and closing it would): the CLI would then truncate it under the
/// writer's mapping and the writer would die of SIGBUS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reading_while_the_store_writes_never_takes_the_writer_down() {
    let dir = TempDir::new("cli-concurrent");
    let db = dir.path().join("bridge.db");
    let db = db.to_str().unwrap().to_string();
    let store = Store::open(&db).await.unwrap();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                for _ in 0..15 {
                    let o = bridge(&["interceptions", "list", "--limit", "5"], &db);
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                }
            })
        })
        .collect();
    let mut written = 0;
    while readers.iter().any(|r| !r.is_finished()) {
        let r = record("w", Provider::Openai, "gpt-4o", Utc::now(), 1, 1);
        store.insert_interceptions(&[r]).await.unwrap();
        written += 1;
    }
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(store.count_interceptions().await.unwrap(), written);
}

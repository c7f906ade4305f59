//! Helpers for the store, recorder and CLI tests: temporary directories, sample records, and
//! a throwaway PostgreSQL server on loopback.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bridge::record::{InterceptionRecord, Outcome, Provider, ToolCall, Usage, WorkspaceContext};
use chrono::{DateTime, Utc};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "bridge-test-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn record(
    user: &str,
    provider: Provider,
    model: &str,
    started_at: DateTime<Utc>,
    input: u64,
    output: u64,
) -> InterceptionRecord {
    InterceptionRecord {
        id: uuid::Uuid::now_v7(),
        user: user.into(),
        key_id: Some("key_test".into()),
        provider,
        endpoint: match provider {
            Provider::Anthropic => "/v1/messages".into(),
            Provider::Openai => "/v1/chat/completions".into(),
            Provider::Gemini => "/v1beta/models/{model}:streamGenerateContent".into(),
        },
        model: Some(model.into()),
        client: Some("test-client/1.0".into()),
        streaming: true,
        started_at,
        ttfb_ms: Some(12.5),
        duration_ms: 250.0,
        status: 200,
        outcome: Outcome::Ok,
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        },
        cost_usd: None,
        prompt: Some("What is the weather in Paris?".into()),
        tools_offered: vec!["get_weather".into()],
        tool_calls: vec![ToolCall {
            id: Some("toolu_01".into()),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Paris\"}".into(),
        }],
        tool_results: vec![],
        client_session: None,
        client_addr: None,
        context: WorkspaceContext {
            workspace: Some("ws-1".into()),
            template: None,
            session: Some("s-1".into()),
        },
        error: None,
    }
}

/// Polls `f` every 50 ms until it is true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f().await
}

/// The directory holding `initdb` and `pg_ctl`: where Debian's `postgresql` package puts them
/// (`/usr/lib/postgresql/VERSION/bin`, the newest version; what `cargo xtask setup --for-tests`
/// installs), else the first `initdb` on `PATH`. A missing PostgreSQL fails the test that needs
/// it, loudly, in CI or not: a test that cannot run must not pass.
fn pg_bin() -> PathBuf {
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "PostgreSQL not found: no /usr/lib/postgresql/*/bin/initdb and no initdb on PATH. \
             Install it with `cargo xtask setup --for-tests` (Debian package postgresql)"
        )
    })
}

/// A PostgreSQL server in a temporary data directory, listening on 127.0.0.1 only, run as the
/// unprivileged `postgres` user (initdb refuses root). Stopped and deleted on drop.
pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// Starts a server; panics (the test fails) when PostgreSQL is not installed.
    pub fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!(
            "bridge-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let run_as_postgres = !is_root_free();
        if run_as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of the PostgreSQL data dir failed");
        }
        let data = dir.join("data");
        let out = pg_command(run_as_postgres, "initdb")
            .args([
                "-U",
                "bridge",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres { dir, port };
        pg.restart();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://bridge@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        pg_command(!is_root_free(), "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts (again) and waits until it accepts connections.
    pub fn restart(&self) {
        let opts = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let out = self.ctl(&["-w", "-t", "30", "-o", &opts, "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    /// Stops immediately (like a crash or an outage), dropping open connections.
    pub fn stop(&self) {
        let out = self.ctl(&["-w", "-m", "immediate", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.ctl(&["-w", "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// True when we are not root (then PostgreSQL runs as ourselves).
fn is_root_free() -> bool {
    // The owner of /proc/self is our uid; this avoids unsafe libc calls in tests.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() != 0)
        .unwrap_or(true)
}

fn pg_command(as_postgres: bool, tool: &str) -> Command {
    let bin = pg_bin().join(tool);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

//! Subcommands of the `bridge` binary.
//!
//! Every command that reads or writes records finds the store the same way: `--store URL`, else
//! the `store:` of `--config FILE`, else `bridge.db` in the working directory.

mod agents;
mod events;
mod interceptions;
mod keys;
mod limits;
mod policy;
mod policy_report;
mod prices;
mod purge;
mod serve;
mod usage;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use bridge::store::Store;

/// Bridge: a governed LLM gateway. Agents send their Anthropic, OpenAI and Gemini API calls to Bridge
/// with a personal bridge token; Bridge forwards them with the real provider key and records
/// who used which model, prompt, tools, tokens and cost.
#[derive(Debug, Parser)]
#[command(name = "llm-bridge", version, propagate_version = true)]
#[command(
    after_help = "Start with `llm-bridge keys create --user alice`, then `llm-bridge serve`.\n\
Point clients at Bridge, with their bridge token as the API key:\n  \
Claude Code, Anthropic SDKs: ANTHROPIC_BASE_URL=http://HOST:PORT/anthropic\n  \
Codex, OpenAI SDKs:          OPENAI_BASE_URL=http://HOST:PORT/openai/v1\n  \
Gemini CLI, google-genai:    GOOGLE_GEMINI_BASE_URL=http://HOST:PORT/gemini"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: authenticate bridge tokens, forward to the providers, record every
    /// request. Stops cleanly (flushing records) on Ctrl-C or SIGTERM.
    Serve(serve::ServeArgs),
    /// Manage bridge keys (the tokens users put in their SDKs instead of provider keys).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Report requests, tokens and cost, grouped by user, model, provider or day.
    Usage(usage::UsageArgs),
    /// List and inspect recorded requests (prompt, tools, tool calls, tokens, cost).
    #[command(subcommand)]
    Interceptions(interceptions::InterceptionsCommand),
    /// Show which price applies to a model and why; convert a price dataset to a price list.
    Prices(prices::PricesArgs),
    /// Groups of users, which limits can be set on.
    #[command(subcommand)]
    Groups(limits::GroupsCommand),
    /// Users known to this bridge: their keys and groups.
    #[command(subcommand)]
    Users(limits::UsersCommand),
    /// Limits (allowed and denied models, model aliases) on the whole bridge, a group, a
    /// template, a user or a key, and why a request gets the ones it gets.
    #[command(subcommand)]
    Limits(limits::LimitsCommand),
    /// Delete records (or only their prompts) older than a date or age; `serve` does it by
    /// itself with `retention:` in bridge.yaml.
    Purge(purge::PurgeArgs),
    /// Boundary events shipped by agents: list, top destinations or workspaces, export.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Boundary agents: enrol one for a template (a token shown once), list the fleet, revoke.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Boundary policies per template: push (validated as the agent would), list, show,
    /// history, diff, rollback, the audit/enforce rollout switch, and the rollout report and
    /// simulation from the events agents shipped.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Where the store is; shared by all commands that read or write records.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Store URL: a SQLite path (`bridge.db`, `sqlite:///var/lib/bridge/bridge.db`) or
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DB`. Overrides the config file's `store:`.
    #[arg(long, env = "BRIDGE_STORE", global = true)]
    store: Option<String>,
    /// Bridge config file (bridge.yaml); only its `store:` is used by this command.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
}

impl StoreArgs {
    /// The store URL chosen by the flags.
    pub fn url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.store {
            return Ok(url.clone());
        }
        if let Some(path) = &self.config {
            return store_from_config(path);
        }
        Ok("bridge.db".into())
    }

    /// Says on stderr how many records wait in the spool of this bridge (its `spool_dir`, from
    /// `--config`, else `./bridge-spool` if there is one): they are not in the store yet, so
    /// a report does not count them. Records of a running bridge are in the store before its
    /// response ends; only an unreachable store leaves them in the spool.
    pub fn note_spooled(&self) {
        let dir = match &self.config {
            Some(path) => match spool_dir_from_config(path) {
                Some(d) => d,
                None => return,
            },
            None => PathBuf::from(bridge::config::DEFAULT_SPOOL_DIR),
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let records: usize = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".jsonl"))
            })
            .filter_map(|p| std::fs::read(p).ok())
            .map(|b| b.iter().filter(|c| **c == b'\n').count())
            .sum();
        if records > 0 {
            let what = if records == 1 {
                "record waits"
            } else {
                "records wait"
            };
            eprintln!(
                "note: {records} {what} in the spool {} (the store was unreachable when they were made); they are not counted here until the bridge stores them",
                dir.display()
            );
        }
    }

    pub async fn open(&self) -> anyhow::Result<Store> {
        let url = self.url()?;
        Store::open(&url)
            .await
            .with_context(|| format!("opening the store {url:?}"))
    }
}

/// The `spool_dir:` of a config file (relative paths are relative to the working directory, as
/// for `serve`); `None` if the file cannot be read.
fn spool_dir_from_config(path: &Path) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct OnlySpool {
        spool_dir: Option<PathBuf>,
    }
    let parsed: OnlySpool = config_part(path).ok()?;
    Some(
        parsed
            .spool_dir
            .unwrap_or_else(|| PathBuf::from(bridge::config::DEFAULT_SPOOL_DIR)),
    )
}

fn store_from_config(path: &Path) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct OnlyStore {
        store: Option<String>,
    }
    let parsed: OnlyStore = config_part(path)?;
    Ok(parsed.store.unwrap_or_else(|| "bridge.db".into()))
}

/// The part of a bridge.yaml a command needs (`T` ignores the other keys), without what
/// `serve` needs besides (provider keys in the environment); errors name the file and line.
pub fn config_part<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    bridge::yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
}

/// Output format of listings and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people (reports end with a totals row).
    Table,
    /// JSON for programs.
    Json,
    /// Comma-separated values for spreadsheets.
    Csv,
}

impl From<OutputFormat> for bridge::usage::Format {
    fn from(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Table => bridge::usage::Format::Table,
            OutputFormat::Json => bridge::usage::Format::Json,
            OutputFormat::Csv => bridge::usage::Format::Csv,
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Keys(cmd) => keys::run(cmd).await,
        Command::Usage(args) => usage::run(args).await,
        Command::Interceptions(cmd) => interceptions::run(cmd).await,
        Command::Prices(args) => prices::run(args),
        Command::Groups(cmd) => limits::groups(cmd).await,
        Command::Users(cmd) => limits::users(cmd).await,
        Command::Limits(cmd) => limits::limits(cmd).await,
        Command::Purge(args) => purge::run(args).await,
        Command::Events(cmd) => events::run(cmd).await,
        Command::Agents(cmd) => agents::run(cmd).await,
        Command::Policy(cmd) => policy::run(cmd).await,
    }
}

/// The OS user running this command (recorded as who made a change): the name of the real
/// uid, else `$USER`, else `uid N`.
pub fn os_user() -> String {
    #[cfg(unix)]
    {
        // SAFETY: getuid cannot fail; getpwuid_r writes only into the buffers passed, and the
        // name is read before they go out of scope.
        unsafe {
            let uid = libc::getuid();
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let mut buf = vec![0 as libc::c_char; 4096];
            if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) == 0
                && !result.is_null()
                && !pw.pw_name.is_null()
            {
                let name = std::ffi::CStr::from_ptr(pw.pw_name)
                    .to_string_lossy()
                    .into_owned();
                if !name.is_empty() {
                    return name;
                }
            }
            std::env::var("USER").unwrap_or_else(|_| format!("uid {uid}"))
        }
    }
    #[cfg(not(unix))]
    {
        std::env::var("USERNAME").unwrap_or_else(|_| "unknown".into())
    }
}

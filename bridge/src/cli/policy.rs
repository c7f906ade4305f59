//! `llm-bridge policy`: Boundary policies per template, versioned (push, list, show, history,
//! diff, rollback, enforce, audit).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

use super::StoreArgs;
use boundary_policy::Mode;
use bridge::control::policies::{self, Change, PolicyVersion, PushError, Pushed};
use bridge::usage::render_table;

/// A rollout mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Allow everything; report what enforce would deny.
    Audit,
    /// Deny what the allowlist does not allow.
    Enforce,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Audit => Mode::Audit,
            ModeArg::Enforce => Mode::Enforce,
        }
    }
}

/// Output format of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Who makes a change, and why (recorded in the history).
#[derive(Debug, Clone, Args)]
pub struct ChangeArgs {
    /// Why: kept with the version and shown by `history`.
    #[arg(long, default_value = "")]
    comment: String,
    /// Who (default: the OS user running this command).
    #[arg(long)]
    author: Option<String>,
}

impl ChangeArgs {
    fn author(&self) -> String {
        self.author.clone().unwrap_or_else(super::os_user)
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a Boundary policy (config.yaml) as the agent would and store it as the
    /// template's next version; agents of the template pick it up within about a second.
    /// A policy with a problem is refused with FILE:LINE:COL: FIELD, and nothing is stored.
    /// Pushing the current text and mode again stores nothing.
    #[command(
        after_help = "Examples:\n  llm-bridge policy push --template python-dev config.yaml --mode audit --comment \"first rollout\"\n  llm-bridge policy enforce --template python-dev   # once the audit events look right"
    )]
    Push {
        #[arg(long)]
        template: String,
        /// The policy file (the same format as `boundary run --config`).
        file: PathBuf,
        /// Rollout mode of this version, which overrides the file's own `mode:` (default:
        /// the template's current mode, or for a first version the file's).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Templates: current version, mode, author, and how many agents have it applied.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print a version's YAML exactly as pushed (default: the current version); its
    /// version, mode, author and time go to stderr (or all as JSON with --format json).
    // `--version N` names a policy version here, not the program's.
    #[command(disable_version_flag = true)]
    Show {
        #[arg(long)]
        template: String,
        #[arg(long)]
        version: Option<i64>,
        /// `yaml`: the text; `json`: the version with its metadata.
        #[arg(long, value_enum, default_value = "yaml")]
        format: ShowFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Every version of a template: who pushed what, when, in which mode, and why.
    History {
        #[arg(long)]
        template: String,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Unified diff between two versions (default: the one before the current, and the
    /// current; with one version given, from it to the current).
    Diff {
        #[arg(long)]
        template: String,
        /// The older version.
        from: Option<i64>,
        /// The newer version (default: the current).
        to: Option<i64>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make an earlier version current again, as a new version (history is never rewritten).
    Rollback {
        #[arg(long)]
        template: String,
        /// The version whose text and mode to restore.
        #[arg(long)]
        to: i64,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Switch the template to enforce mode: a new version with the current text.
    Enforce {
        #[arg(long)]
        template: String,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Switch the template to audit mode: a new version with the current text.
    Audit {
        #[arg(long)]
        template: String,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// What enforce mode would deny for a template: its agents' would_deny (and deny) events
    /// by destination, with counts, workspaces, processes, first and last seen.
    Report(super::policy_report::ReportArgs),
    /// Replay a template's stored decisions against a candidate policy and print every
    /// verdict that would change (allow -> deny, deny -> allow), with counts.
    Simulate(super::policy_report::SimulateArgs),
}

/// Output format of `policy show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowFormat {
    Yaml,
    Json,
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// One line saying what a change did.
fn report(template: &str, pushed: &Pushed) {
    match pushed {
        Pushed::Created(v) => println!(
            "Stored {template} version {} (mode {}, sha256 {}).",
            v.version,
            v.mode.as_str(),
            &v.sha256[..12]
        ),
        Pushed::Unchanged(v) => println!(
            "Unchanged: {template} version {} already has this text and mode {}; nothing stored.",
            v.version,
            v.mode.as_str()
        ),
    }
}

fn describe(v: &PolicyVersion) -> String {
    format!(
        "{} v{} ({}, {}, {})",
        v.template,
        v.version,
        v.mode.as_str(),
        v.author,
        time(v.created_at)
    )
}

pub async fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Push {
            template,
            file,
            mode,
            change,
            store,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let name = file.display().to_string();
            // Validated before opening the store: a bad file fails the same with no store.
            match policies::check(&name, &text) {
                Ok((_, warnings)) => warnings.iter().for_each(|w| eprintln!("{w}")),
                Err(problems) => {
                    eprintln!("{problems}");
                    anyhow::bail!("{name}: policy refused (problems above); nothing was stored");
                }
            }
            let store = store.open().await?;
            let author = change.author();
            let change = Change {
                author: &author,
                comment: &change.comment,
            };
            match policies::push(
                &store,
                &template,
                &name,
                &text,
                mode.map(Mode::from),
                change,
            )
            .await
            {
                Ok(pushed) => report(&template, &pushed),
                Err(PushError::Invalid(problems)) => {
                    eprintln!("{problems}");
                    anyhow::bail!("{name}: policy refused (problems above); nothing was stored");
                }
                Err(PushError::Other(e)) => return Err(e.into()),
            }
        }
        PolicyCommand::List { format, store } => {
            let store = store.open().await?;
            let list = policies::list(&store).await?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                ListFormat::Table => {
                    let dash = || "-".to_string();
                    let header = ["TEMPLATE", "VERSION", "MODE", "AUTHOR", "PUSHED", "AGENTS"]
                        .map(String::from);
                    let rows: Vec<[String; 6]> = list
                        .iter()
                        .map(|t| {
                            [
                                t.template.clone(),
                                t.version
                                    .map(|v| format!("v{v}"))
                                    .unwrap_or_else(|| "(none)".into()),
                                t.mode.map(|m| m.as_str().to_string()).unwrap_or_else(dash),
                                t.author.clone().unwrap_or_else(dash),
                                t.created_at.map(time).unwrap_or_else(dash),
                                if t.version.is_some() {
                                    format!("{} ({} on current)", t.agents, t.agents_current)
                                } else {
                                    t.agents.to_string()
                                },
                            ]
                        })
                        .collect();
                    print!("{}", render_table(&header, &rows, false));
                }
            }
        }
        PolicyCommand::Show {
            template,
            version,
            format,
            store,
        } => {
            let store = store.open().await?;
            let v = match version {
                Some(n) => policies::require(&store, &template, n).await?,
                None => policies::current(&store, &template).await?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "no policy pushed for template {template:?} (see `llm-bridge policy push`)"
                    )
                })?,
            };
            match format {
                ShowFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                ShowFormat::Yaml => {
                    eprintln!("# {} sha256 {}", describe(&v), v.sha256);
                    print!("{}", v.yaml);
                }
            }
        }
        PolicyCommand::History {
            template,
            format,
            store,
        } => {
            let store = store.open().await?;
            let list = policies::history(&store, &template).await?;
            if list.is_empty() {
                anyhow::bail!(
                    "no policy pushed for template {template:?} (see `llm-bridge policy push`)"
                );
            }
            match format {
                ListFormat::Json => {
                    // The texts are `show`'s business: history is who, when, what mode, why.
                    let items: Vec<serde_json::Value> = list
                        .iter()
                        .map(|v| {
                            serde_json::json!({
                                "template": v.template, "version": v.version,
                                "mode": v.mode, "sha256": v.sha256, "author": v.author,
                                "created_at": v.created_at, "comment": v.comment,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&items)?);
                }
                ListFormat::Table => {
                    let header = ["VERSION", "MODE", "AUTHOR", "PUSHED", "SHA256", "COMMENT"]
                        .map(String::from);
                    let rows: Vec<[String; 6]> = list
                        .iter()
                        .map(|v| {
                            [
                                format!("v{}", v.version),
                                v.mode.as_str().to_string(),
                                v.author.clone(),
                                time(v.created_at),
                                v.sha256[..12].to_string(),
                                v.comment.clone(),
                            ]
                        })
                        .collect();
                    print!("{}", render_table(&header, &rows, false));
                }
            }
        }
        PolicyCommand::Diff {
            template,
            from,
            to,
            store,
        } => {
            let store = store.open().await?;
            let current = policies::current(&store, &template).await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "no policy pushed for template {template:?} (see `llm-bridge policy push`)"
                )
            })?;
            let to = match to {
                Some(n) => policies::require(&store, &template, n).await?,
                None => current,
            };
            let from = match from {
                Some(n) => Some(policies::require(&store, &template, n).await?),
                None if to.version > 1 => {
                    Some(policies::require(&store, &template, to.version - 1).await?)
                }
                None => None,
            };
            let (from_name, from_text) = match &from {
                Some(v) => (describe(v), v.yaml.as_str()),
                None => ("(nothing)".to_string(), ""),
            };
            let to_name = describe(&to);
            if let Some(f) = &from {
                if f.mode != to.mode {
                    println!("# mode: {} -> {}", f.mode.as_str(), to.mode.as_str());
                }
                if f.yaml == to.yaml {
                    println!("# {from_name} and {to_name}: same text");
                    return Ok(());
                }
            }
            print!(
                "{}",
                policies::unified_diff(&from_name, from_text, &to_name, &to.yaml)
            );
        }
        PolicyCommand::Rollback {
            template,
            to,
            change,
            store,
        } => {
            let store = store.open().await?;
            let author = change.author();
            let comment = if change.comment.is_empty() {
                format!("rollback to version {to}")
            } else {
                change.comment.clone()
            };
            let pushed = policies::copy_version(
                &store,
                &template,
                to,
                None,
                Change {
                    author: &author,
                    comment: &comment,
                },
            )
            .await?;
            report(&template, &pushed);
        }
        PolicyCommand::Enforce {
            template,
            change,
            store,
        } => set_mode(template, Mode::Enforce, change, store).await?,
        PolicyCommand::Audit {
            template,
            change,
            store,
        } => set_mode(template, Mode::Audit, change, store).await?,
        PolicyCommand::Report(args) => super::policy_report::report(args).await?,
        PolicyCommand::Simulate(args) => super::policy_report::simulate(args).await?,
    }
    Ok(())
}

async fn set_mode(
    template: String,
    mode: Mode,
    change: ChangeArgs,
    store: StoreArgs,
) -> anyhow::Result<()> {
    let store = store.open().await?;
    let author = change.author();
    let comment = if change.comment.is_empty() {
        format!("switch to {} mode", mode.as_str())
    } else {
        change.comment.clone()
    };
    let pushed = policies::set_mode(
        &store,
        &template,
        mode,
        Change {
            author: &author,
            comment: &comment,
        },
    )
    .await?;
    report(&template, &pushed);
    Ok(())
}

//! `llm-bridge policy report` and `llm-bridge policy simulate`: the rollout tools, read from
//! the events a template's agents shipped. `report` says what enforce mode would deny;
//! `simulate` says which decisions a candidate policy would turn around.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::StoreArgs;
use bridge::audit::{report, simulate};
use bridge::usage::{csv_field, parse_since, render_table};

#[derive(Debug, Args)]
#[command(
    after_help = "Example: llm-bridge policy report --template python-dev --since 7d\n\n\
Rows are the would_deny events of audit mode (and the deny events of enforce mode), grouped by\n\
destination: COUNT is the number of decisions, WORKSPACES and PROCESSES who made them.\n\
When the list is empty or expected, `llm-bridge policy enforce --template T`."
)]
pub struct ReportArgs {
    /// The template whose agents' events are read.
    #[arg(long)]
    template: String,
    /// Events since: 30m, 24h, 7d, a date or an RFC 3339 time.
    #[arg(long, default_value = "7d")]
    since: String,
    #[arg(long, value_enum, default_value = "table")]
    format: super::OutputFormat,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example: llm-bridge policy simulate --template python-dev candidate.yaml --since 7d\n\n\
Replays the template's stored connection decisions (address, port, transport and the names the\n\
agent knew for the address) and DNS questions against CANDIDATE, judged by the code the agent\n\
enforces with, and prints every decision that would change: allow -> deny (something that\n\
works today would break) and deny -> allow (something denied today would pass)."
)]
pub struct SimulateArgs {
    /// The template whose agents' events are replayed.
    #[arg(long)]
    template: String,
    /// The candidate policy (config.yaml).
    #[arg(value_name = "CANDIDATE")]
    candidate: PathBuf,
    /// Events since: 30m, 24h, 7d, a date or an RFC 3339 time.
    #[arg(long, default_value = "7d")]
    since: String,
    #[arg(long, value_enum, default_value = "table")]
    format: SimulateFormat,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimulateFormat {
    Table,
    Json,
}

pub async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let since = parse_since(&args.since, chrono::Utc::now())?;
    let store = args.store.open().await?;
    let rows = report::report(&store, &args.template, Some(since)).await?;
    let mut out = std::io::stdout().lock();
    let when = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    match args.format {
        super::OutputFormat::Json => {
            let v = serde_json::json!({
                "template": args.template,
                "since": since.to_rfc3339(),
                "rows": rows,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        super::OutputFormat::Csv => {
            writeln!(
                out,
                "domain,destination,port,count,actions,workspaces,processes,first_seen,last_seen"
            )?;
            for r in &rows {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{}",
                    csv_field(r.domain.as_deref().unwrap_or("")),
                    csv_field(r.destination.as_deref().unwrap_or("")),
                    r.port.map(|p| p.to_string()).unwrap_or_default(),
                    r.count,
                    csv_field(&r.actions.join(" ")),
                    csv_field(&r.workspaces.join(" ")),
                    csv_field(&r.processes.join(" ")),
                    r.first_seen.to_rfc3339(),
                    r.last_seen.to_rfc3339(),
                )?;
            }
        }
        super::OutputFormat::Table => {
            if rows.is_empty() {
                writeln!(
                    out,
                    "nothing of template {} would be denied since {} (no deny or would_deny events)",
                    args.template,
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )?;
                return Ok(());
            }
            let header = [
                "DOMAIN",
                "DESTINATION",
                "PORT",
                "COUNT",
                "WORKSPACES",
                "PROCESSES",
                "FIRST SEEN",
                "LAST SEEN",
            ]
            .map(String::from);
            let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
            let list = |v: &[String]| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            };
            let table: Vec<[String; 8]> = rows
                .iter()
                .map(|r| {
                    [
                        dash(&r.domain),
                        dash(&r.destination),
                        r.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        r.count.to_string(),
                        list(&r.workspaces),
                        list(&r.processes),
                        when(r.first_seen),
                        when(r.last_seen),
                    ]
                })
                .collect();
            write!(out, "{}", render_table(&header, &table, false))?;
        }
    }
    Ok(())
}

pub async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let since = parse_since(&args.since, chrono::Utc::now())?;
    // The agent's own loader: a candidate it would refuse is refused here, with file and line.
    let candidate = boundary_policy::load(&args.candidate).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = args.store.open().await?;
    let sim = simulate::simulate(&store, &args.template, Some(since), &candidate).await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        SimulateFormat::Json => {
            let v = serde_json::json!({
                "template": args.template,
                "candidate": args.candidate.display().to_string(),
                "since": since.to_rfc3339(),
                "simulation": sim,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        SimulateFormat::Table => {
            writeln!(
                out,
                "replayed {} events ({} decisions) of template {} since {} against {}: {} verdicts would change ({} decisions), {} decisions unchanged{}",
                sim.replayed_events,
                sim.replayed_decisions,
                args.template,
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                args.candidate.display(),
                sim.changes.len(),
                sim.replayed_decisions - sim.unchanged_decisions,
                sim.unchanged_decisions,
                if sim.skipped_events > 0 {
                    format!(
                        " ({} events not replayed: no destination or no allowlist decision)",
                        sim.skipped_events
                    )
                } else {
                    String::new()
                }
            )?;
            if !sim.changes.is_empty() {
                let header = [
                    "CHANGE",
                    "KIND",
                    "DOMAIN",
                    "DESTINATION",
                    "PORT",
                    "COUNT",
                    "RULE",
                ]
                .map(String::from);
                let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
                let table: Vec<[String; 7]> = sim
                    .changes
                    .iter()
                    .map(|c| {
                        [
                            format!("{} -> {}", c.from, c.to),
                            c.kind.to_string(),
                            dash(c.domain.clone()),
                            dash(c.destination.clone()),
                            match (c.port, c.transport) {
                                (Some(p), Some(t)) => format!("{p}/{t}"),
                                _ => "-".into(),
                            },
                            c.count.to_string(),
                            dash(c.rule.clone()),
                        ]
                    })
                    .collect();
                write!(out, "{}", render_table(&header, &table, false))?;
            }
        }
    }
    Ok(())
}

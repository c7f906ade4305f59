//! `llm-bridge events`: the Boundary events agents shipped to this bridge (list, top, export).

use std::io::Write as _;

use clap::{Args, Subcommand, ValueEnum};

use super::{OutputFormat, StoreArgs};
use bridge::audit::query::{self, EventFilter, TopBy};
use bridge::audit::EventRow;
use bridge::usage::{csv_field, parse_since, render_table};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List stored events, newest first.
    #[command(after_help = "Examples:\n  \
llm-bridge events list --action deny --since 24h\n  \
llm-bridge events list --template python-dev --domain pypi.org --format json   # JSON lines as stored\n  \
llm-bridge events list --session 7f3c... --limit 500")]
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// table: one line per event; json: the events as stored, one JSON object per line;
        /// csv: the indexed columns.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The destinations, workspaces, processes or templates with the most decisions.
    #[command(after_help = "Examples:\n  \
llm-bridge events top --by domain --action deny --since 24h\n  \
llm-bridge events top --by workspace --action would_deny --template python-dev --since 7d")]
    Top {
        /// What to group by.
        #[arg(long, value_enum, default_value = "domain")]
        by: TopByArg,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many groups.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write every matching event, oldest first, for a SIEM or an archive. Streams: memory
    /// stays flat however many events there are.
    #[command(after_help = "Examples:\n  \
llm-bridge events export --since 30d > events.jsonl\n  \
llm-bridge events export --since 2026-11-01 --action deny --format csv > denied.csv")]
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        /// jsonl: the events as stored, one JSON object per line; csv: the indexed columns.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// The filters shared by the `events` subcommands.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only events since: 30m, 24h, 7d, a date or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only events before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only this action: allow, deny, would_deny.
    #[arg(long, value_parser = ["allow", "deny", "would_deny"])]
    action: Option<String>,
    /// Only the events of agents enrolled with this template.
    #[arg(long)]
    template: Option<String>,
    /// Only the events of agents enrolled in this workspace.
    #[arg(long)]
    workspace: Option<String>,
    /// Only events whose domain (first name of the destination, or DNS question) is this.
    #[arg(long)]
    domain: Option<String>,
    /// Only the events of this Boundary session.
    #[arg(long)]
    session: Option<String>,
    /// Only the events of this process (process.executable.name, e.g. curl, node).
    #[arg(long)]
    process: Option<String>,
    /// Only events of this name (boundary.decision, boundary.dns, boundary.session.start, ...).
    #[arg(long)]
    name: Option<String>,
}

impl FilterArgs {
    fn filter(self, limit: Option<u32>) -> anyhow::Result<EventFilter> {
        let now = chrono::Utc::now();
        let time = |s: Option<String>| s.map(|s| parse_since(&s, now)).transpose();
        Ok(EventFilter {
            since: time(self.since)?,
            until: time(self.until)
                .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("--since", "--until")))?,
            action: self.action,
            template: self.template,
            workspace: self.workspace,
            domain: self.domain,
            session: self.session,
            process: self.process,
            event_name: self.name,
            limit,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopByArg {
    Domain,
    Workspace,
    Process,
    Template,
    /// Address and port.
    Destination,
}

impl From<TopByArg> for TopBy {
    fn from(b: TopByArg) -> TopBy {
        match b {
            TopByArg::Domain => TopBy::Domain,
            TopByArg::Workspace => TopBy::Workspace,
            TopByArg::Process => TopBy::Process,
            TopByArg::Template => TopBy::Template,
            TopByArg::Destination => TopBy::Destination,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line, as stored.
    Jsonl,
    /// The indexed columns, with a header line.
    Csv,
}

pub async fn run(cmd: EventsCommand) -> anyhow::Result<()> {
    match run_command(cmd).await {
        // `llm-bridge events export | head`: the reader has what it wanted.
        Err(e) if broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<bridge::error::Error>().is_some_and(|b| {
                matches!(b, bridge::error::Error::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
            })
    })
}

async fn run_command(cmd: EventsCommand) -> anyhow::Result<()> {
    match cmd {
        EventsCommand::List {
            filter,
            limit,
            format,
            store,
        } => {
            let filter = filter.filter(Some(limit))?;
            let db = store.open().await?;
            let rows = query::list_events(&db, &filter).await?;
            let mut out = std::io::stdout().lock();
            match format {
                OutputFormat::Json => {
                    for r in &rows {
                        writeln!(out, "{}", r.body)?;
                    }
                }
                OutputFormat::Csv => {
                    writeln!(out, "{CSV_HEADER}")?;
                    for r in &rows {
                        writeln!(out, "{}", csv_line(r))?;
                    }
                }
                OutputFormat::Table => {
                    let header = [
                        "TIME",
                        "ACTION",
                        "EVENT",
                        "TEMPLATE",
                        "WORKSPACE",
                        "PROCESS",
                        "USER",
                        "DESTINATION",
                        "DOMAIN",
                        "COUNT",
                    ]
                    .map(String::from);
                    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
                    let table: Vec<[String; 10]> = rows
                        .iter()
                        .map(|r| {
                            [
                                r.ts.format("%Y-%m-%d %H:%M:%S").to_string(),
                                dash(&r.action),
                                r.event_name
                                    .strip_prefix("boundary.")
                                    .unwrap_or(&r.event_name)
                                    .to_string(),
                                r.template.clone(),
                                dash(&r.workspace),
                                dash(&r.process),
                                dash(&r.user_name),
                                destination(r).unwrap_or_else(|| "-".into()),
                                dash(&r.domain),
                                r.count.to_string(),
                            ]
                        })
                        .collect();
                    write!(out, "{}", render_table(&header, &table, false))?;
                    if rows.is_empty() {
                        eprintln!("no events match");
                    }
                }
            }
            Ok(())
        }
        EventsCommand::Top {
            by,
            filter,
            limit,
            format,
            store,
        } => {
            let filter = filter.filter(Some(limit))?;
            let db = store.open().await?;
            let by = TopBy::from(by);
            let rows = query::top(&db, by, &filter).await?;
            let mut out = std::io::stdout().lock();
            match format {
                OutputFormat::Json => {
                    let v = serde_json::json!({ "by": by.label(), "rows": rows });
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                }
                OutputFormat::Csv => {
                    writeln!(out, "{},count,events,first_seen,last_seen", by.label())?;
                    for r in &rows {
                        writeln!(
                            out,
                            "{},{},{},{},{}",
                            csv_field(r.key.as_deref().unwrap_or("")),
                            r.count,
                            r.events,
                            r.first_seen.to_rfc3339(),
                            r.last_seen.to_rfc3339()
                        )?;
                    }
                }
                OutputFormat::Table => {
                    let header = [
                        by.label().to_uppercase(),
                        "COUNT".into(),
                        "EVENTS".into(),
                        "FIRST SEEN".into(),
                        "LAST SEEN".into(),
                    ];
                    let table: Vec<[String; 5]> = rows
                        .iter()
                        .map(|r| {
                            [
                                r.key.clone().unwrap_or_else(|| "(none)".into()),
                                r.count.to_string(),
                                r.events.to_string(),
                                r.first_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
                                r.last_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
                            ]
                        })
                        .collect();
                    write!(out, "{}", render_table(&header, &table, false))?;
                }
            }
            Ok(())
        }
        EventsCommand::Export {
            filter,
            format,
            store,
        } => {
            let filter = filter.filter(None)?;
            let db = store.open().await?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if format == ExportFormat::Csv {
                writeln!(out, "{CSV_HEADER}")?;
            }
            let n = query::export(&db, &filter, |r| {
                match format {
                    ExportFormat::Jsonl => writeln!(out, "{}", r.body)?,
                    ExportFormat::Csv => writeln!(out, "{}", csv_line(r))?,
                }
                Ok(())
            })
            .await?;
            out.flush()?;
            eprintln!("exported {n} events");
            Ok(())
        }
    }
}

const CSV_HEADER: &str = "id,timestamp,received_at,agent_id,template,workspace,session_id,event_name,action,destination,port,domain,process,user_name,count";

/// One event as a CSV line; every text field goes through `csv_field` (quoting, and formula
/// neutralising: process and domain names come from the watched machine).
fn csv_line(r: &EventRow) -> String {
    let o = |s: &Option<String>| csv_field(s.as_deref().unwrap_or(""));
    [
        csv_field(&r.id),
        r.ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        r.received_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        csv_field(&r.agent_id),
        csv_field(&r.template),
        o(&r.workspace),
        o(&r.session_id),
        csv_field(&r.event_name),
        o(&r.action),
        o(&r.destination),
        r.port.map(|p| p.to_string()).unwrap_or_default(),
        o(&r.domain),
        o(&r.process),
        o(&r.user_name),
        r.count.to_string(),
    ]
    .join(",")
}

fn destination(r: &EventRow) -> Option<String> {
    let a = r.destination.as_ref()?;
    Some(match r.port {
        Some(p) if a.contains(':') => format!("[{a}]:{p}"),
        Some(p) => format!("{a}:{p}"),
        None => a.clone(),
    })
}

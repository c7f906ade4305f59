//! `llm-bridge interceptions`: list recorded requests and show one in full.

use clap::{Subcommand, ValueEnum};

use super::{OutputFormat, StoreArgs};
use bridge::record::{InterceptionRecord, Outcome, ToolResult};
use bridge::store::InterceptionFilter;
use bridge::usage::{csv_field, render_table, terminal_safe, terminal_safe_multiline};

/// Output format of `interceptions show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowFormat {
    /// A readable report.
    Table,
    /// The whole record as JSON.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum InterceptionsCommand {
    /// List recorded requests, newest first.
    #[command(
        after_help = "Example: llm-bridge interceptions list --user alice --since 24h --limit 20"
    )]
    List {
        /// Only this user's requests.
        #[arg(long)]
        user: Option<String>,
        /// Only requests since: 30m, 24h, 7d, a date or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only requests that ended so: ok, rejected (bad or revoked tokens, bad requests),
        /// upstream_error, upstream_unavailable, client_cancelled, incomplete.
        #[arg(long, value_parser = parse_outcome)]
        outcome: Option<Outcome>,
        /// Only the requests of one agent session (the client's own session id).
        #[arg(long)]
        client_session: Option<String>,
        /// Only the requests of one Boundary session (verified by its session credential, or
        /// named by `x-bridge-session`): join with `llm-bridge events list --session`.
        #[arg(long)]
        session: Option<String>,
        /// Only the requests of this workspace template (from an enrolled agent's session, or
        /// `x-bridge-template`).
        #[arg(long)]
        template: Option<String>,
        /// Only the requests of this workspace.
        #[arg(long)]
        workspace: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Output format (json and csv carry every field, prompt included).
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one agent session as a thread: its requests in order, each tool call with the
    /// result the client sent back for it.
    #[command(
        after_help = "Example: llm-bridge interceptions thread 4b1c2f9e-...   \
(the CLIENT SESSION of `llm-bridge interceptions show ID`)"
    )]
    Thread {
        /// The client's session id (Claude Code's, Codex's or `x-client-session-id`).
        client_session: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ShowFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one request in full: prompt, tools offered, tool calls with arguments, tokens,
    /// cost, timing and workspace context.
    Show {
        /// The interception id (or a unique prefix of it), from `llm-bridge interceptions list`.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ShowFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(cmd: InterceptionsCommand) -> anyhow::Result<()> {
    match cmd {
        InterceptionsCommand::List {
            user,
            since,
            outcome,
            client_session,
            session,
            template,
            workspace,
            limit,
            format,
            store: store_args,
        } => {
            let since = since
                .map(|s| bridge::usage::parse_since(&s, chrono::Utc::now()))
                .transpose()?;
            let store = store_args.open().await?;
            let records = store
                .list_interceptions(&InterceptionFilter {
                    user,
                    since,
                    limit: Some(limit),
                    outcome,
                    client_session,
                    session,
                    template,
                    workspace,
                    ..Default::default()
                })
                .await?;
            store_args.note_spooled();
            if format == OutputFormat::Csv {
                print!("{}", records_csv(&records));
            } else if format == OutputFormat::Table {
                let header = [
                    "ID",
                    "STARTED",
                    "USER",
                    "PROVIDER",
                    "MODEL",
                    "OUTCOME",
                    "IN",
                    "OUT",
                    "COST",
                    "TOOL CALLS",
                ]
                .map(String::from);
                let width = prefix_width(&store, &records).await?;
                let rows: Vec<[String; 10]> = records
                    .iter()
                    .map(|r| {
                        [
                            r.id.to_string()[..width].to_string(),
                            r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            r.user.clone(),
                            r.provider.as_str().into(),
                            r.model.clone().unwrap_or_else(|| "-".into()),
                            r.outcome.as_str().into(),
                            r.usage.input_tokens.to_string(),
                            r.usage.output_tokens.to_string(),
                            r.cost_usd
                                .map(|c| format!("{c:.4}"))
                                .unwrap_or_else(|| "-".into()),
                            r.tool_calls.len().to_string(),
                        ]
                    })
                    .collect();
                print!("{}", render_table(&header, &rows, false));
            } else {
                println!("{}", serde_json::to_string_pretty(&records)?);
            }
        }
        InterceptionsCommand::Show { id, format, store } => {
            let store = store.open().await?;
            let Some(r) = store.get_interception(&id).await? else {
                anyhow::bail!(
                    "no interception with id {id:?} (see `llm-bridge interceptions list`)"
                );
            };
            if format == ShowFormat::Json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            // Everything below may come from a client: escaped so it cannot drive the terminal.
            let safe = |s: &str| terminal_safe(s);
            let opt = |o: &Option<String>| o.as_deref().map(safe).unwrap_or_else(|| "-".into());
            println!("id:          {}", r.id);
            println!("user:        {} (key {})", safe(&r.user), opt(&r.key_id));
            println!("provider:    {} {}", r.provider.as_str(), safe(&r.endpoint));
            println!("model:       {}", opt(&r.model));
            println!("client:      {}", opt(&r.client));
            println!("started:     {}", r.started_at.to_rfc3339());
            println!(
                "timing:      ttfb {} ms, total {:.1} ms{}",
                r.ttfb_ms
                    .map(|t| format!("{t:.1}"))
                    .unwrap_or_else(|| "-".into()),
                r.duration_ms,
                if r.streaming { ", streaming" } else { "" }
            );
            println!("status:      {} ({})", r.status, r.outcome.as_str());
            if let Some(e) = &r.error {
                println!("error:       {}", safe(e));
            }
            println!(
                "tokens:      input {}, output {}, cache read {}, cache write {}",
                r.usage.input_tokens,
                r.usage.output_tokens,
                r.usage.cache_read_tokens,
                r.usage.cache_write_tokens
            );
            println!(
                "cost:        {}",
                r.cost_usd
                    .map(|c| format!("${c:.6}"))
                    .unwrap_or_else(|| "- (model not priced)".into())
            );
            println!(
                "context:     workspace {}, template {}, session {}",
                opt(&r.context.workspace),
                opt(&r.context.template),
                opt(&r.context.session)
            );
            println!("client session: {}", opt(&r.client_session));
            println!("client address: {}", opt(&r.client_addr));
            println!(
                "tools offered: {}",
                if r.tools_offered.is_empty() {
                    "-".into()
                } else {
                    safe(&r.tools_offered.join(", "))
                }
            );
            if r.tool_calls.is_empty() {
                println!("tool calls:  -");
            } else {
                println!("tool calls:");
                for c in &r.tool_calls {
                    println!(
                        "  - {} ({}): {}",
                        safe(&c.name),
                        safe(c.id.as_deref().unwrap_or("-")),
                        safe(&c.arguments)
                    );
                }
            }
            if !r.tool_results.is_empty() {
                println!("tool results sent back:");
                for t in &r.tool_results {
                    println!("  - {}", result_line(t));
                }
            }
            println!(
                "prompt:\n{}",
                r.prompt
                    .as_deref()
                    .map(terminal_safe_multiline)
                    .unwrap_or_else(|| "-".into())
            );
        }
        InterceptionsCommand::Thread {
            client_session,
            format,
            store,
        } => {
            let store = store.open().await?;
            let mut records = store
                .list_interceptions(&InterceptionFilter {
                    client_session: Some(client_session.clone()),
                    ..Default::default()
                })
                .await?;
            if records.is_empty() {
                anyhow::bail!(
                    "no interception of client session {client_session:?} (see CLIENT SESSION in `llm-bridge interceptions show ID`)"
                );
            }
            records.reverse(); // oldest first
            if format == ShowFormat::Json {
                println!("{}", serde_json::to_string_pretty(&records)?);
                return Ok(());
            }
            print!("{}", thread(&records));
        }
    }
    Ok(())
}

fn parse_outcome(s: &str) -> Result<Outcome, String> {
    serde_json::from_value(serde_json::Value::String(s.into())).map_err(|_| {
        "one of ok, rejected, upstream_error, upstream_unavailable, client_cancelled, incomplete"
            .to_string()
    })
}

/// One tool result as a line: its call id, size and the start of its text.
fn result_line(t: &ToolResult) -> String {
    let text: String = t.content.chars().take(120).collect();
    format!(
        "{} ({} bytes{}): {}",
        terminal_safe(&t.id),
        t.size,
        if t.is_error { ", error" } else { "" },
        terminal_safe(&text)
    )
}

/// An agent session as a thread: each request with its prompt and tool calls, and under each
/// call the result a later request sent back for it.
fn thread(records: &[InterceptionRecord]) -> String {
    use std::collections::HashMap;
    use std::fmt::Write as _;
    let results: HashMap<&str, &ToolResult> = records
        .iter()
        .flat_map(|r| r.tool_results.iter().map(|t| (t.id.as_str(), t)))
        .collect();
    let (mut cost, mut unpriced) = (0.0, 0);
    let mut out = String::new();
    for (i, r) in records.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}  {}  {} {}  in {} out {}  {}  {}",
            r.started_at.format("%H:%M:%S"),
            r.id,
            r.provider.as_str(),
            terminal_safe(r.model.as_deref().unwrap_or("-")),
            r.usage.input_tokens,
            r.usage.output_tokens,
            r.cost_usd
                .map(|c| format!("${c:.4}"))
                .unwrap_or_else(|| "unpriced".into()),
            r.outcome.as_str(),
        );
        match r.cost_usd {
            Some(c) => cost += c,
            None => unpriced += 1,
        }
        if let Some(p) = &r.prompt {
            let p: String = p.chars().take(200).collect();
            let _ = writeln!(out, "    prompt: {}", terminal_safe(&p));
        }
        for c in &r.tool_calls {
            let _ = writeln!(
                out,
                "    -> {}({})",
                terminal_safe(&c.name),
                terminal_safe(&c.arguments.chars().take(160).collect::<String>())
            );
            let result = match c.id.as_deref() {
                Some(id) => results.get(id).copied(),
                None => records
                    .get(i + 1)
                    .and_then(|next| answer_by_name(&next.tool_results, &c.name)),
            };
            match result {
                Some(t) => {
                    let _ = writeln!(out, "       <- {}", result_line(t));
                }
                None => {
                    let _ = writeln!(out, "       <- (no result sent back)");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "{} requests, ${cost:.4}{}",
        records.len(),
        if unpriced > 0 {
            format!(" + {unpriced} unpriced")
        } else {
            String::new()
        }
    );
    out
}

/// The result among `results` (those of the request after a call's) that answers a call without id:
/// Gemini names no calls, and clients answer them by the function's name, as the SDKs do
/// (`functionResponse.name`, recorded as the result's id), or with an id that Gemini CLI makes
/// of the name and numbers of its own (`get_weather_1795686218459_0`).
fn answer_by_name<'a>(results: &'a [ToolResult], name: &str) -> Option<&'a ToolResult> {
    let numbered = |id: &str| {
        id.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|rest| {
                rest.split('_')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    };
    results
        .iter()
        .find(|t| t.id == name)
        .or_else(|| results.iter().find(|t| numbered(&t.id)))
}

/// Shortest prefix length (at least [`MIN_PREFIX`], like git) that tells every shown id apart
/// from every other id in the store, so that `interceptions show PREFIX` finds it. One width
/// for all rows keeps the column aligned. Ids are time-ordered uuids: records of the same
/// minute share their first 8 characters, of the same millisecond their first 13.
async fn prefix_width(
    store: &bridge::store::Store,
    records: &[InterceptionRecord],
) -> anyhow::Result<usize> {
    let mut width = MIN_PREFIX;
    for r in records {
        let id = r.id.to_string();
        let (before, after) = store.neighbour_ids(&id).await?;
        for other in [before, after].into_iter().flatten() {
            width = width.max(unique_prefix_len(&id, &other));
        }
    }
    Ok(width)
}

/// Characters of an id shown at least.
const MIN_PREFIX: usize = 8;

/// Length of the shortest prefix of `id` that is not a prefix of `other`. (Dashes sit at the
/// same places in every uuid, so such a prefix never ends on one.)
fn unique_prefix_len(id: &str, other: &str) -> usize {
    let common = id
        .bytes()
        .zip(other.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    (common + 1).min(id.len())
}

/// Records as CSV, one line per request; tool calls as `name(arguments)` joined by `; `.
fn records_csv(records: &[InterceptionRecord]) -> String {
    let mut out = String::from(
        "id,started_at,user,key_id,provider,endpoint,model,client,streaming,status,outcome,\
         input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,cost_usd,ttfb_ms,\
         duration_ms,tools_offered,tool_calls,workspace,template,session,error,prompt,\
         client_session,client_addr,tool_results\n",
    );
    let opt = |o: &Option<String>| csv_field(o.as_deref().unwrap_or_default());
    for r in records {
        let calls: Vec<String> = r
            .tool_calls
            .iter()
            .map(|c| format!("{}({})", c.name, c.arguments))
            .collect();
        let fields = [
            r.id.to_string(),
            r.started_at.to_rfc3339(),
            csv_field(&r.user),
            opt(&r.key_id),
            r.provider.as_str().to_string(),
            csv_field(&r.endpoint),
            opt(&r.model),
            opt(&r.client),
            r.streaming.to_string(),
            r.status.to_string(),
            r.outcome.as_str().to_string(),
            r.usage.input_tokens.to_string(),
            r.usage.output_tokens.to_string(),
            r.usage.cache_read_tokens.to_string(),
            r.usage.cache_write_tokens.to_string(),
            r.cost_usd.map(|c| format!("{c:.6}")).unwrap_or_default(),
            r.ttfb_ms.map(|t| format!("{t:.3}")).unwrap_or_default(),
            format!("{:.3}", r.duration_ms),
            csv_field(&r.tools_offered.join(";")),
            csv_field(&calls.join("; ")),
            opt(&r.context.workspace),
            opt(&r.context.template),
            opt(&r.context.session),
            opt(&r.error),
            opt(&r.prompt),
            opt(&r.client_session),
            opt(&r.client_addr),
            // Ids and sizes: the results themselves are in the JSON and `show`.
            csv_field(
                &r.tool_results
                    .iter()
                    .map(|t| format!("{}:{}", t.id, t.size))
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{answer_by_name, unique_prefix_len};
    use bridge::record::ToolResult;

    #[test]
    fn a_call_without_id_is_answered_by_its_functions_name_or_gemini_clis_numbered_id() {
        let r = |id: &str| ToolResult::new(id.into(), "x", false);
        let found =
            |results: &[ToolResult], name| answer_by_name(results, name).map(|t| t.id.clone());
        let sdk = [r("get"), r("get_weather")];
        assert_eq!(found(&sdk, "get_weather").as_deref(), Some("get_weather"));
        assert_eq!(found(&sdk, "get").as_deref(), Some("get"));
        let cli = [r("get_weather_1795686635090_0"), r("get_1795686635090_1")];
        assert_eq!(found(&cli, "get").as_deref(), Some("get_1795686635090_1"));
        assert_eq!(
            found(&cli, "get_weather").as_deref(),
            Some("get_weather_1795686635090_0")
        );
        assert_eq!(found(&cli, "weather"), None);
        assert_eq!(found(&[r("get_weather_x")], "get"), None);
        assert_eq!(found(&[r("get_")], "get"), None);
    }

    #[test]
    fn a_prefix_goes_one_past_the_common_part() {
        let a = "0193a5b2-1c3d-7abc-8def-000000000001";
        assert_eq!(
            unique_prefix_len(a, "0193a5b3-1c3d-7abc-8def-000000000001"),
            8
        );
        assert_eq!(
            unique_prefix_len(a, "0193a5b2-9c3d-7abc-8def-000000000001"),
            10
        );
        assert_eq!(
            unique_prefix_len(a, "0193a5b2-1c3e-7abc-8def-000000000001"),
            13
        );
        assert_eq!(
            unique_prefix_len(a, "0193a5b2-1c3d-7abc-8def-000000000002"),
            36
        );
    }
}

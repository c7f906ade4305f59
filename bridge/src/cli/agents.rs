//! `llm-bridge agents`: enrol Boundary agents (credentials bound to a template), list the
//! fleet, revoke.

use clap::{Subcommand, ValueEnum};

use super::StoreArgs;
use bridge::control::agents;
use bridge::usage::render_table;

/// Output format of `agents list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Create an agent credential bound to a template (and optionally a workspace) and print
    /// its token. The token is shown only this once; the store keeps its SHA-256. Give it to
    /// `boundary agent --control-plane URL --token-file FILE` in a file only root can read.
    #[command(
        after_help = "Example: llm-bridge agents create --template python-dev --workspace ws-42 > /etc/boundary/agent-token"
    )]
    Create {
        /// The template the agent enforces; it gets this template's policy.
        #[arg(long)]
        template: String,
        /// The workspace the agent runs in, if it serves one workspace.
        #[arg(long)]
        workspace: Option<String>,
        /// A name to recognise the agent by (default: its id).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The fleet: each agent's template, workspace, host, version, applied policy version,
    /// sessions, events spooled and lost, and when it was last seen. Never shows tokens.
    List {
        /// Only the agents of this template.
        #[arg(long)]
        template: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke an agent by id (see `llm-bridge agents list`): its token is refused at once
    /// (401), and its sessions' credentials stop working on every gateway within 5 seconds.
    Revoke {
        /// The agent id, e.g. agt_1a2b3c4d5e6f.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(cmd: AgentsCommand) -> anyhow::Result<()> {
    match cmd {
        AgentsCommand::Create {
            template,
            workspace,
            name,
            store,
        } => {
            let store = store.open().await?;
            let agent = agents::create(
                &store,
                &template,
                workspace.as_deref(),
                name.as_deref(),
                &super::os_user(),
            )
            .await?;
            eprintln!(
                "Created agent {} ({}) for template {}{}. Save the token now; it will not be shown again:",
                agent.id,
                agent.name,
                agent.template,
                agent
                    .workspace
                    .as_deref()
                    .map(|w| format!(", workspace {w}"))
                    .unwrap_or_default()
            );
            println!("{}", agent.token);
        }
        AgentsCommand::List {
            template,
            format,
            store,
        } => {
            let store = store.open().await?;
            let list = agents::list(&store, template.as_deref()).await?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                ListFormat::Table => {
                    let fmt = |t: chrono::DateTime<chrono::Utc>| {
                        t.format("%Y-%m-%d %H:%M:%S").to_string()
                    };
                    let dash = || "-".to_string();
                    let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(dash);
                    let header = [
                        "ID",
                        "NAME",
                        "TEMPLATE",
                        "WORKSPACE",
                        "HOST",
                        "VERSION",
                        "POLICY",
                        "SESSIONS",
                        "SPOOLED",
                        "LOST",
                        "LAST SEEN",
                        "REVOKED",
                    ]
                    .map(String::from);
                    let rows: Vec<[String; 12]> = list
                        .iter()
                        .map(|a| {
                            [
                                a.id.clone(),
                                a.name.clone(),
                                a.template.clone(),
                                a.workspace.clone().unwrap_or_else(dash),
                                a.host.clone().unwrap_or_else(dash),
                                a.agent_version.clone().unwrap_or_else(dash),
                                a.policy_version
                                    .map(|v| format!("v{v}"))
                                    .unwrap_or_else(dash),
                                num(a.sessions),
                                num(a.events_spooled),
                                num(a.events_lost),
                                a.last_seen_at.map(fmt).unwrap_or_else(|| "never".into()),
                                a.revoked_at.map(fmt).unwrap_or_else(dash),
                            ]
                        })
                        .collect();
                    print!("{}", render_table(&header, &rows, false));
                }
            }
        }
        AgentsCommand::Revoke { id, store } => {
            let store = store.open().await?;
            agents::revoke(&store, &id).await?;
            println!("Revoked agent {id}.");
        }
    }
    Ok(())
}

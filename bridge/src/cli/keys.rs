//! `llm-bridge keys`: create, list and revoke bridge keys.

use clap::Subcommand;

use super::{OutputFormat, StoreArgs};
use bridge::usage::{csv_field, render_table};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for a user and print its token. The token is shown only this once; the
    /// store keeps a hash of it.
    #[command(after_help = "Example: llm-bridge keys create --user alice")]
    Create {
        /// Who the key belongs to; requests made with it are recorded under this name.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys: id, user, token prefix, created, last used, revoked. Never shows tokens.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key by id (see `llm-bridge keys list`). Running gateways stop accepting it within
    /// seconds.
    Revoke {
        /// The key id, e.g. key_1a2b3c4d5e6f.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create { user, store } => {
            let store = store.open().await?;
            let key = bridge::keys::create_key(&store, &user).await?;
            eprintln!(
                "Created key {} for user {}. Save the token now; it will not be shown again:",
                key.id, key.user
            );
            println!("{}", key.token);
        }
        KeysCommand::List { format, store } => {
            let store = store.open().await?;
            let keys = bridge::keys::list_keys(&store).await?;
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&keys)?),
                OutputFormat::Csv => {
                    println!("id,user,prefix,created_at,last_used_at,revoked_at");
                    for k in keys {
                        println!(
                            "{},{},{},{},{},{}",
                            k.id,
                            csv_field(&k.user),
                            k.prefix,
                            k.created_at.to_rfc3339(),
                            k.last_used_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                            k.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default()
                        );
                    }
                }
                OutputFormat::Table => {
                    let fmt =
                        |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M").to_string();
                    let header = ["ID", "USER", "PREFIX", "CREATED", "LAST USED", "REVOKED"]
                        .map(String::from);
                    let rows: Vec<[String; 6]> = keys
                        .iter()
                        .map(|k| {
                            [
                                k.id.clone(),
                                k.user.clone(),
                                format!("{}…", k.prefix),
                                fmt(k.created_at),
                                k.last_used_at.map(fmt).unwrap_or_else(|| "-".into()),
                                k.revoked_at.map(fmt).unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect();
                    print!("{}", render_table(&header, &rows, false));
                }
            }
        }
        KeysCommand::Revoke { id, store } => {
            let store = store.open().await?;
            bridge::keys::revoke_key(&store, &id).await?;
            println!("Revoked {id}.");
        }
    }
    Ok(())
}

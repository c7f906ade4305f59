//! `llm-bridge usage`: requests, tokens and cost over a period.

use clap::{Args, ValueEnum};

use super::{OutputFormat, StoreArgs};
use bridge::usage::{self, GroupBy};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  llm-bridge usage --since 7d --by user\n  llm-bridge usage --since 2025-01-01 --by day --format csv > usage.csv"
)]
pub struct UsageArgs {
    /// Start of the period: a duration back from now (30m, 24h, 7d, 2w), a date (2025-01-31)
    /// or an RFC 3339 time (2025-01-31T09:00:00Z).
    #[arg(long, default_value = "7d")]
    since: String,
    /// What each row is.
    #[arg(long, value_enum, default_value = "user")]
    by: By,
    /// Output format (table and csv end with a TOTAL row).
    #[arg(long, value_enum, default_value = "table")]
    format: OutputFormat,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum By {
    User,
    Model,
    Provider,
    /// Calendar day (UTC) the request started.
    Day,
}

pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let since = usage::parse_since(&args.since, chrono::Utc::now())?;
    let by = match args.by {
        By::User => GroupBy::User,
        By::Model => GroupBy::Model,
        By::Provider => GroupBy::Provider,
        By::Day => GroupBy::Day,
    };
    let store = args.store.open().await?;
    let rows = usage::report(&store, by, Some(since)).await?;
    args.store.note_spooled();
    print!("{}", usage::render(&rows, by, args.format.into()));
    Ok(())
}

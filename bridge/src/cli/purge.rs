//! `llm-bridge purge`: delete old records, or only their prompts, now.

use chrono::{DateTime, Utc};
use clap::Args;

use super::StoreArgs;
use bridge::retention::{self, parse_age};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
llm-bridge purge --before 400d --dry-run      # what would go\n  \
llm-bridge purge --before 2025-01-01          # delete records started before that date\n  \
llm-bridge purge --before 30d --prompts-only  # keep records (usage, cost), drop their prompts\n\n\
`llm-bridge serve` does this by itself when bridge.yaml has `retention:` (interceptions: 400d,\n\
prompts: 30d); this command is for doing it by hand or from cron.")]
pub struct PurgeArgs {
    /// Remove what started before this: an age (90d, 12h, 2w) or a date / RFC 3339 time.
    #[arg(long, value_name = "DATE|AGE")]
    before: String,
    /// Keep the records (user, model, tokens, cost, tool names) and drop only their prompt
    /// text and tool-call arguments.
    #[arg(long)]
    prompts_only: bool,
    /// Print what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    store: StoreArgs,
}

fn parse_before(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(age) = parse_age(s) {
        return Ok(now - age);
    }
    bridge::usage::parse_since(s, now).map_err(|_| {
        anyhow::anyhow!(
            "invalid --before {s:?}: use an age like 90d, 12h, 2w, or a date like 2025-01-31 or 2025-01-31T09:00:00Z"
        )
    })
}

pub async fn run(args: PurgeArgs) -> anyhow::Result<()> {
    let before = parse_before(&args.before, Utc::now())?;
    let store = args.store.open().await?;
    let (records_before, prompts_before) = if args.prompts_only {
        (None, Some(before))
    } else {
        (Some(before), None)
    };
    let purged = retention::purge(&store, records_before, prompts_before, args.dry_run).await?;
    let at = before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (would, removed, dropped) = if args.dry_run {
        ("would ", "remove", "drop")
    } else {
        ("", "removed", "dropped")
    };
    if args.prompts_only {
        println!(
            "{would}{dropped} the prompt text and tool-call arguments of {} interceptions started before {at} (the records stay)",
            purged.prompts
        );
    } else {
        println!(
            "{would}{removed} {} interceptions started before {at} from {}",
            purged.interceptions,
            store.describe()
        );
    }
    Ok(())
}

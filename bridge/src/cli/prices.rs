//! `llm-bridge prices`: which price applies to a model and why; converting a public price
//! dataset into a price list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

use bridge::pricing::{Match, ModelPrice, PriceList, PricingTable};
use bridge::usage::{render_table, terminal_safe};

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  llm-bridge prices claude-opus-4-8 gpt-5-2025-08-07 my-model\n  \
llm-bridge prices --config /etc/llm-bridge/bridge.yaml --format json\n  \
llm-bridge prices import model_prices_and_context_window.json --date 2026-11-26 > prices.json"
)]
pub struct PricesArgs {
    #[command(subcommand)]
    command: Option<PricesCommand>,
    /// Models to look up (default: every model of the list and every override).
    models: Vec<String>,
    /// Bridge config file: its `price_list:` and `pricing:` apply (else the shipped list).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum PricesCommand {
    /// Convert LiteLLM's public `model_prices_and_context_window.json` into a Bridge price list
    /// (Anthropic, OpenAI and Gemini chat models sold directly by them), printed on stdout.
    Import {
        /// The dataset file, as downloaded.
        file: PathBuf,
        /// The date the prices are as of (when the dataset was downloaded), e.g. 2026-11-26.
        #[arg(long)]
        date: String,
        /// Where the dataset came from, recorded in the list.
        #[arg(long, default_value = "LiteLLM model_prices_and_context_window.json")]
        source: String,
    },
}

pub fn run(args: PricesArgs) -> anyhow::Result<()> {
    if let Some(PricesCommand::Import { file, date, source }) = args.command {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let dataset: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
        let list = PriceList::from_litellm(&dataset, &source, &date)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let table = match &args.config {
        Some(path) => table_from_config(path)?,
        None => PricingTable::default(),
    };
    let models: Vec<String> = if args.models.is_empty() {
        table.list().models.keys().cloned().collect()
    } else {
        args.models
    };
    let rows: Vec<(String, Option<(ModelPrice, Match)>)> = models
        .into_iter()
        .map(|m| {
            let found = table.lookup(&m).map(|(p, how)| (*p, how));
            (m, found)
        })
        .collect();
    let list = table.list();
    match args.format {
        Format::Json => {
            let models: Vec<_> = rows
                .iter()
                .map(|(m, found)| match found {
                    Some((p, how)) => serde_json::json!({
                        "model": m,
                        "priced_by": describe(how),
                        "input": p.input,
                        "output": p.output,
                        "cache_read": p.cache_read.unwrap_or(p.input),
                        "cache_write": p.cache_write.unwrap_or(p.input),
                        "long_context": p.long_context,
                    }),
                    None => serde_json::json!({ "model": m, "priced_by": null }),
                })
                .collect();
            let out = serde_json::json!({
                "price_list": { "source": list.source, "date": list.date },
                "units": "USD per million tokens",
                "models": models,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Table => {
            println!(
                "Price list: {} (as of {}), USD per million tokens",
                terminal_safe(&list.source),
                terminal_safe(&list.date)
            );
            let header = [
                "MODEL",
                "PRICED BY",
                "INPUT",
                "OUTPUT",
                "CACHE READ",
                "CACHE WRITE",
            ]
            .map(String::from);
            let money = |x: f64| format!("{x}");
            let body: Vec<[String; 6]> = rows
                .iter()
                .map(|(m, found)| match found {
                    Some((p, how)) => [
                        terminal_safe(m),
                        describe(how),
                        money(p.input),
                        money(p.output),
                        money(p.cache_read.unwrap_or(p.input)),
                        money(p.cache_write.unwrap_or(p.input)),
                    ],
                    None => [
                        terminal_safe(m),
                        "unpriced: not in the list".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ],
                })
                .collect();
            print!("{}", render_table(&header, &body, false));
        }
    }
    Ok(())
}

fn describe(how: &Match) -> String {
    match how {
        Match::Listed => "list".into(),
        Match::Snapshot(base) => format!("list: snapshot of {base}"),
        Match::AliasOf(snapshot) => format!("list: alias of {snapshot}"),
        Match::Override(name) => format!("bridge.yaml pricing.{name}"),
    }
}

/// The pricing part of a bridge.yaml.
fn table_from_config(path: &Path) -> anyhow::Result<PricingTable> {
    #[derive(serde::Deserialize)]
    struct OnlyPricing {
        price_list: Option<PathBuf>,
        pricing: Option<BTreeMap<String, ModelPrice>>,
    }
    let parsed: OnlyPricing = super::config_part(path)?;
    let list = match &parsed.price_list {
        Some(file) => PriceList::load(file).map_err(|e| {
            anyhow::anyhow!("{}: price_list {}: {e}", path.display(), file.display())
        })?,
        None => PriceList::shipped(),
    };
    Ok(PricingTable::new(list, parsed.pricing.unwrap_or_default()))
}

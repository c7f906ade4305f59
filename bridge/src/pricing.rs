//! Prices per model, to turn token counts into USD.
//!
//! Prices are USD per million tokens and come from a dated price list: the one shipped with
//! Bridge (`bridge/prices.json`, provider list prices taken from a public dataset, see its
//! `source` and `date`), or the file `price_list:` names in bridge.yaml. `pricing:` in
//! bridge.yaml overrides single models.
//!
//! A model is priced only when the list knows it: by its exact name, or as a dated snapshot of
//! a name the list has (`claude-sonnet-4-5-20250929`, `gpt-4o-2024-08-06`). A name the list
//! does not know is *unpriced* and its cost is `None`: it is never matched to a sibling
//! (`claude-opus-4-8` is not `claude-opus-4`, whose price is three times higher). An override
//! may end in `*` to price every model that starts with the rest (`my-fine-tune-*`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::record::Usage;

/// The price list shipped with this build.
const SHIPPED: &str = include_str!("../prices.json");

/// Price of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    /// Reading cached input. Defaults to the input price.
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Writing input to the cache. Defaults to the input price.
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// OpenAI and Gemini report cached tokens as a part of the input tokens, Anthropic
    /// separately. When true the cached part is billed at the cache price instead of the input
    /// price.
    #[serde(default)]
    pub input_includes_cache: bool,
    /// Higher prices for the whole request once its input exceeds a size.
    #[serde(default)]
    pub long_context: Option<LongContext>,
}

/// Prices that apply to a whole request when its input (cached or not) exceeds
/// `above_input_tokens`; a missing field keeps the normal price.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContext {
    pub above_input_tokens: u64,
    pub input: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

/// A price list file: where its prices come from, as of when, and the prices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceList {
    pub source: String,
    pub date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub models: BTreeMap<String, ListedPrice>,
}

/// One model of a price list. The provider decides how cached input is counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListedPrice {
    pub provider: String,
    pub input: f64,
    pub output: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_date: Option<String>,
}

impl ListedPrice {
    fn price(&self) -> ModelPrice {
        ModelPrice {
            input: self.input,
            output: self.output,
            cache_read: self.cache_read,
            cache_write: self.cache_write,
            input_includes_cache: self.provider != "anthropic",
            long_context: self.long_context,
        }
    }
}

impl PriceList {
    /// The list shipped with this build.
    pub fn shipped() -> PriceList {
        serde_json::from_str(SHIPPED).expect("bridge/prices.json is valid (tested)")
    }

    /// A price list file: this format, or the public dataset it is made from (LiteLLM's
    /// `model_prices_and_context_window.json`), converted on the fly.
    pub fn load(path: &Path) -> Result<PriceList, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
        if value.get("models").is_some() {
            let list: PriceList = serde_json::from_value(value).map_err(|e| e.to_string())?;
            for (name, p) in &list.models {
                check_price(name, p.input, p.output)?;
            }
            return Ok(list);
        }
        let date = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .format("file of %Y-%m-%d")
                    .to_string()
            })
            .unwrap_or_else(|_| "unknown".into());
        PriceList::from_litellm(&value, &path.display().to_string(), &date)
    }

    /// Converts LiteLLM's dataset (model → `input_cost_per_token`, ... per token) to a list of
    /// the providers Bridge serves, sold directly by them (not through a cloud's copy).
    pub fn from_litellm(
        dataset: &serde_json::Value,
        source: &str,
        date: &str,
    ) -> Result<PriceList, String> {
        let entries = dataset
            .as_object()
            .ok_or("neither a Bridge price list (no `models`) nor a model → price map")?;
        let per_million = |v: &serde_json::Value, field: &str| {
            v.get(field)
                .and_then(serde_json::Value::as_f64)
                // Six significant digits: per-token floats like 3.0000000000000004e-06.
                .map(|x| {
                    let m = x * 1e6;
                    let scale = 10f64.powi(5 - m.abs().log10().floor() as i32);
                    if m == 0.0 {
                        0.0
                    } else {
                        (m * scale).round() / scale
                    }
                })
        };
        let mut models = BTreeMap::new();
        for (key, v) in entries {
            let provider = v.get("litellm_provider").and_then(|p| p.as_str());
            let mode = v.get("mode").and_then(|m| m.as_str());
            let Some(provider) = provider.filter(|p| ["anthropic", "openai", "gemini"].contains(p))
            else {
                continue;
            };
            if !matches!(mode, Some("chat" | "responses")) {
                continue;
            }
            let name = key.strip_prefix("gemini/").unwrap_or(key);
            if name.contains('/') || name.starts_with("ft:") {
                continue;
            }
            let (Some(input), Some(output)) = (
                per_million(v, "input_cost_per_token"),
                per_million(v, "output_cost_per_token"),
            ) else {
                continue;
            };
            let long_context = [200_000u64, 272_000].into_iter().find_map(|above| {
                let k = |f: &str| format!("{f}_above_{}k_tokens", above / 1000);
                Some(LongContext {
                    above_input_tokens: above,
                    input: per_million(v, &k("input_cost_per_token"))?,
                    output: per_million(v, &k("output_cost_per_token")),
                    cache_read: per_million(v, &k("cache_read_input_token_cost")),
                    cache_write: per_million(v, &k("cache_creation_input_token_cost")),
                })
            });
            let listed = ListedPrice {
                provider: provider.to_string(),
                input,
                output,
                cache_read: per_million(v, "cache_read_input_token_cost"),
                cache_write: per_million(v, "cache_creation_input_token_cost"),
                long_context,
                deprecation_date: v
                    .get("deprecation_date")
                    .and_then(|d| d.as_str())
                    .map(str::to_owned),
            };
            // The `gemini/`-prefixed entry is the AI Studio one; it wins over a bare duplicate.
            if key.starts_with("gemini/") || !models.contains_key(name) {
                models.insert(name.to_string(), listed);
            }
        }
        if models.is_empty() {
            return Err("no Anthropic, OpenAI or Gemini chat model with prices in it".into());
        }
        Ok(PriceList {
            source: source.to_string(),
            date: date.to_string(),
            note: None,
            models,
        })
    }
}

fn check_price(name: &str, input: f64, output: f64) -> Result<(), String> {
    if !(input.is_finite() && output.is_finite() && input >= 0.0 && output >= 0.0) {
        return Err(format!(
            "{name}: prices must be non-negative numbers (USD per million tokens)"
        ));
    }
    Ok(())
}

/// How a model found its price.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// An entry of `pricing:` in bridge.yaml (its name, `*` included).
    Override(String),
    /// The price list's entry of that exact name.
    Listed,
    /// A dated snapshot of the list's entry of this name.
    Snapshot(String),
    /// An undated alias of the list's dated snapshot(s) of this name, all at one price.
    AliasOf(String),
}

/// The price list in force plus the overrides of bridge.yaml.
#[derive(Debug, Clone)]
pub struct PricingTable {
    list: Arc<PriceList>,
    list_prices: Arc<BTreeMap<String, ModelPrice>>,
    overrides: BTreeMap<String, ModelPrice>,
}

impl Default for PricingTable {
    fn default() -> Self {
        PricingTable::new(PriceList::shipped(), BTreeMap::new())
    }
}

impl PricingTable {
    pub fn new(list: PriceList, overrides: BTreeMap<String, ModelPrice>) -> PricingTable {
        let list_prices = list
            .models
            .iter()
            .map(|(n, p)| (n.clone(), p.price()))
            .collect();
        PricingTable {
            list: Arc::new(list),
            list_prices: Arc::new(list_prices),
            overrides,
        }
    }

    /// Where the list's prices come from and as of when.
    pub fn list(&self) -> &PriceList {
        &self.list
    }

    /// The price that applies to `model` and how it was found; `None`: unpriced.
    pub fn lookup(&self, model: &str) -> Option<(&ModelPrice, Match)> {
        if let Some(p) = self.overrides.get(model) {
            return Some((p, Match::Override(model.to_string())));
        }
        if let Some((name, p)) = self
            .overrides
            .iter()
            .filter_map(|(n, p)| Some((n, p, n.strip_suffix('*')?)))
            .filter(|(_, _, prefix)| model.starts_with(prefix))
            .max_by_key(|(_, _, prefix)| prefix.len())
            .map(|(n, p, _)| (n, p))
        {
            return Some((p, Match::Override(name.clone())));
        }
        if let Some(p) = self.list_prices.get(model) {
            return Some((p, Match::Listed));
        }
        if let Some(base) = without_date(model) {
            if let Some(p) = self.list_prices.get(base) {
                return Some((p, Match::Snapshot(base.to_string())));
            }
        }
        self.alias_of_snapshots(model)
    }

    /// `claude-opus-4` when the list only has `claude-opus-4-20250514`: priced as the dated
    /// snapshots of that name if they all have one price (else it is unknown which one is meant).
    fn alias_of_snapshots(&self, model: &str) -> Option<(&ModelPrice, Match)> {
        let prefix = format!("{model}-");
        let mut snapshots = self
            .list_prices
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .filter(|(name, _)| without_date(name) == Some(model));
        let (first, price) = snapshots.next()?;
        snapshots
            .all(|(_, p)| p == price)
            .then(|| (price, Match::AliasOf(first.clone())))
    }

    /// The price entry that applies to `model`, if any.
    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        self.lookup(model).map(|(p, _)| p)
    }

    /// Cost in USD of one request, or `None` if the model has no price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        let p = self.price(model)?;
        let whole_input = if p.input_includes_cache {
            usage.input_tokens
        } else {
            usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        };
        let long = p
            .long_context
            .filter(|l| whole_input > l.above_input_tokens);
        let input = long.map_or(p.input, |l| l.input);
        let output = long.and_then(|l| l.output).unwrap_or(p.output);
        let cache_read = long
            .and_then(|l| l.cache_read)
            .or(p.cache_read)
            .unwrap_or(input);
        let cache_write = long
            .and_then(|l| l.cache_write)
            .or(p.cache_write)
            .unwrap_or(input);
        let uncached_input = if p.input_includes_cache {
            usage
                .input_tokens
                .saturating_sub(usage.cache_read_tokens)
                .saturating_sub(usage.cache_write_tokens)
        } else {
            usage.input_tokens
        };
        let micro_usd = uncached_input as f64 * input
            + usage.output_tokens as f64 * output
            + usage.cache_read_tokens as f64 * cache_read
            + usage.cache_write_tokens as f64 * cache_write;
        Some(micro_usd / 1_000_000.0)
    }
}

/// `model` without a snapshot date at its end (`-20250929`, `-2024-08-06`), if it has one.
fn without_date(model: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (base, last) = model.rsplit_once('-')?;
    if last.len() == 8 && digits(last) && last.starts_with("20") {
        return Some(base);
    }
    // YYYY-MM-DD: three dash-separated groups of 4, 2 and 2 digits.
    let (rest, day) = (base, last);
    let (rest, month) = rest.rsplit_once('-')?;
    let (base, year) = rest.rsplit_once('-')?;
    (year.len() == 4
        && year.starts_with("20")
        && month.len() == 2
        && day.len() == 2
        && digits(year)
        && digits(month)
        && digits(day))
    .then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(i: u64, o: u64, cr: u64, cw: u64) -> Usage {
        Usage {
            input_tokens: i,
            output_tokens: o,
            cache_read_tokens: cr,
            cache_write_tokens: cw,
        }
    }

    fn with_overrides(yaml: &str) -> PricingTable {
        PricingTable::new(PriceList::shipped(), crate::yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn the_shipped_list_parses_names_its_source_and_has_sane_prices() {
        let list = PriceList::shipped();
        assert!(list.source.contains("litellm") && !list.date.is_empty());
        assert!(list.models.len() > 100, "{}", list.models.len());
        for (name, p) in &list.models {
            check_price(name, p.input, p.output).unwrap();
            assert!(
                p.input < 1000.0 && p.output < 1000.0,
                "{name}: per million?"
            );
        }
    }

    #[test]
    fn an_unknown_model_is_unpriced_never_priced_as_a_sibling() {
        let t = PricingTable::default();
        // What Claude Code sent: priced at its own $5/$25, not claude-opus-4's $15/$75.
        assert_eq!(t.price("claude-opus-4-8").unwrap().input, 5.0);
        assert!(t.price("claude-opus-4-9").is_none());
        assert!(t.price("gpt-4o-mini-fast").is_none());
        assert!(t.price("llama-3").is_none());
        assert_eq!(t.cost("llama-3", &usage(10, 10, 0, 0)), None);
    }

    #[test]
    fn dated_snapshots_of_listed_models_are_priced_as_them() {
        let t = PricingTable::default();
        assert_eq!(
            t.lookup("gpt-4o-mini-2024-07-18").unwrap().1,
            Match::Listed,
            "listed itself"
        );
        let (p, how) = t.lookup("claude-opus-4-8-20261231").unwrap();
        assert_eq!(
            (p.input, how),
            (5.0, Match::Snapshot("claude-opus-4-8".into()))
        );
        let (_, how) = t.lookup("gpt-5-mini-2027-01-02").unwrap();
        assert_eq!(how, Match::Snapshot("gpt-5-mini".into()));
        assert_eq!(without_date("gpt-5-mini-v2"), None);
        // An alias of the one dated snapshot the list has.
        let (p, how) = t.lookup("claude-opus-4").unwrap();
        assert_eq!(
            (p.input, how),
            (15.0, Match::AliasOf("claude-opus-4-20250514".into()))
        );
        assert_eq!(without_date("o3-1234-56-78"), None);
    }

    #[test]
    fn anthropic_cache_tokens_are_billed_on_top_of_input() {
        let t = PricingTable::default();
        let c = t.cost(
            "claude-sonnet-4-6",
            &usage(100_000, 1_000_000, 50_000, 20_000),
        );
        let want = (100_000.0 * 3.0 + 1e6 * 15.0 + 50_000.0 * 0.3 + 20_000.0 * 3.75) / 1e6;
        assert!((c.unwrap() - want).abs() < 1e-9);
    }

    #[test]
    fn a_long_context_request_is_billed_at_the_long_context_prices_as_a_whole() {
        let t = PricingTable::default();
        // claude-sonnet-4-5: $3/$15 up to 200k input tokens (cache included), $6/$22.5 above.
        let short = t.cost("claude-sonnet-4-5", &usage(150_000, 1000, 50_000, 0));
        let long = t.cost("claude-sonnet-4-5", &usage(150_000, 1000, 50_001, 0));
        assert!(
            (short.unwrap() - (150_000.0 * 3.0 + 1000.0 * 15.0 + 50_000.0 * 0.3) / 1e6).abs()
                < 1e-9
        );
        assert!(
            (long.unwrap() - (150_000.0 * 6.0 + 1000.0 * 22.5 + 50_001.0 * 0.6) / 1e6).abs() < 1e-9
        );
    }

    #[test]
    fn openai_cached_tokens_are_carved_out_of_input() {
        let t = PricingTable::default();
        let c = t.cost("gpt-4o", &usage(1_000_000, 0, 400_000, 0)).unwrap();
        assert!((c - (0.6 * 2.5 + 0.4 * 1.25)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn overrides_win_exactly_or_by_an_explicit_star() {
        let t = with_overrides(
            "gpt-4o: {input: 1, output: 2}\nmy-model-*: {input: 10, output: 20}\nmy-model-v2-*: {input: 11, output: 21}",
        );
        assert_eq!(
            t.lookup("gpt-4o").unwrap().1,
            Match::Override("gpt-4o".into())
        );
        assert_eq!(t.price("gpt-4o").unwrap().output, 2.0);
        assert_eq!(t.price("my-model-v1").unwrap().input, 10.0);
        assert_eq!(t.price("my-model-v2-large").unwrap().input, 11.0);
        assert!(t.price("my-model").is_none(), "the star needs the dash too");
        assert_eq!(t.price("claude-haiku-4-5").unwrap().input, 1.0);
    }

    #[test]
    fn a_litellm_dataset_converts_to_per_million_prices_of_direct_models_only() {
        let dataset = serde_json::json!({
            "sample_spec": {"litellm_provider": "one of ...", "mode": "chat"},
            "claude-x-1": {"litellm_provider": "anthropic", "mode": "chat",
                "input_cost_per_token": 3.0000000000000004e-06, "output_cost_per_token": 1.5e-05,
                "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
                "input_cost_per_token_above_200k_tokens": 6e-06},
            "bedrock/claude-x-1": {"litellm_provider": "bedrock", "mode": "chat",
                "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
            "gemini/gemini-z": {"litellm_provider": "gemini", "mode": "chat",
                "input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05},
            "text-embedding-3-small": {"litellm_provider": "openai", "mode": "embedding",
                "input_cost_per_token": 2e-08, "output_cost_per_token": 0.0},
        });
        let list = PriceList::from_litellm(&dataset, "test", "2026-01-01").unwrap();
        assert_eq!(
            list.models.keys().collect::<Vec<_>>(),
            ["claude-x-1", "gemini-z"]
        );
        let c = &list.models["claude-x-1"];
        assert_eq!(
            (c.input, c.output, c.cache_read, c.cache_write),
            (3.0, 15.0, Some(0.3), Some(3.75))
        );
        assert_eq!(c.long_context.unwrap().input, 6.0);
        let t = PricingTable::new(list, BTreeMap::new());
        assert!(t.price("gemini-z").unwrap().input_includes_cache);
        assert!(!t.price("claude-x-1").unwrap().input_includes_cache);
    }
}

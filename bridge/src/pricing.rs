//! Prices per model, to turn token counts into USD.
//!
//! Prices are USD per million tokens. A model matches an entry by exact name first, then by the
//! longest entry that is a prefix of it (so `claude-sonnet-4-5-20250929` matches
//! `claude-sonnet-4-5`, and `gpt-4o-mini-2024-07-18` matches `gpt-4o-mini`, not `gpt-4o`).
//! Built-in defaults cover current Anthropic and OpenAI models; `pricing:` in bridge.yaml adds
//! models or overrides defaults, entry by entry.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::record::Usage;

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
    /// OpenAI reports cached tokens as a part of the input tokens, Anthropic separately.
    /// When true the cached part is billed at the cache price instead of the input price.
    #[serde(default)]
    pub input_includes_cache: bool,
}

/// Model name (or prefix) → price. Deserializes from a map and merges it onto the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "BTreeMap<String, ModelPrice>")]
pub struct PricingTable {
    models: BTreeMap<String, ModelPrice>,
}

const fn anthropic(input: f64, output: f64, cache_read: f64, cache_write: f64) -> ModelPrice {
    ModelPrice {
        input,
        output,
        cache_read: Some(cache_read),
        cache_write: Some(cache_write),
        input_includes_cache: false,
    }
}

const fn openai(input: f64, output: f64, cache_read: f64) -> ModelPrice {
    ModelPrice {
        input,
        output,
        cache_read: Some(cache_read),
        cache_write: None,
        input_includes_cache: true,
    }
}

/// List prices as published by the providers (standard tier).
const DEFAULTS: &[(&str, ModelPrice)] = &[
    ("claude-opus-4-5", anthropic(5.0, 25.0, 0.5, 6.25)),
    ("claude-opus-4-1", anthropic(15.0, 75.0, 1.5, 18.75)),
    ("claude-opus-4", anthropic(15.0, 75.0, 1.5, 18.75)),
    ("claude-sonnet-4", anthropic(3.0, 15.0, 0.3, 3.75)),
    ("claude-haiku-4-5", anthropic(1.0, 5.0, 0.1, 1.25)),
    ("claude-3-7-sonnet", anthropic(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-5-sonnet", anthropic(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-5-haiku", anthropic(0.8, 4.0, 0.08, 1.0)),
    ("claude-3-opus", anthropic(15.0, 75.0, 1.5, 18.75)),
    ("claude-3-haiku", anthropic(0.25, 1.25, 0.03, 0.3)),
    ("gpt-5", openai(1.25, 10.0, 0.125)),
    ("gpt-5-mini", openai(0.25, 2.0, 0.025)),
    ("gpt-5-nano", openai(0.05, 0.4, 0.005)),
    ("gpt-4.1", openai(2.0, 8.0, 0.5)),
    ("gpt-4.1-mini", openai(0.4, 1.6, 0.1)),
    ("gpt-4.1-nano", openai(0.1, 0.4, 0.025)),
    ("gpt-4o", openai(2.5, 10.0, 1.25)),
    ("gpt-4o-mini", openai(0.15, 0.6, 0.075)),
    ("o1", openai(15.0, 60.0, 7.5)),
    ("o3", openai(2.0, 8.0, 0.5)),
    ("o3-mini", openai(1.1, 4.4, 0.55)),
    ("o4-mini", openai(1.1, 4.4, 0.275)),
];

impl Default for PricingTable {
    fn default() -> Self {
        PricingTable {
            models: DEFAULTS.iter().map(|(m, p)| (m.to_string(), *p)).collect(),
        }
    }
}

impl From<BTreeMap<String, ModelPrice>> for PricingTable {
    fn from(overrides: BTreeMap<String, ModelPrice>) -> Self {
        let mut table = PricingTable::default();
        table.models.extend(overrides);
        table
    }
}

impl PricingTable {
    /// The price entry that applies to `model`, if any.
    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        if let Some(p) = self.models.get(model) {
            return Some(p);
        }
        self.models
            .iter()
            .filter(|(name, _)| model.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| p)
    }

    /// Cost in USD of one request, or `None` if the model has no price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        let p = self.price(model)?;
        let cache_read_price = p.cache_read.unwrap_or(p.input);
        let cache_write_price = p.cache_write.unwrap_or(p.input);
        let uncached_input = if p.input_includes_cache {
            usage
                .input_tokens
                .saturating_sub(usage.cache_read_tokens)
                .saturating_sub(usage.cache_write_tokens)
        } else {
            usage.input_tokens
        };
        let micro_usd = uncached_input as f64 * p.input
            + usage.output_tokens as f64 * p.output
            + usage.cache_read_tokens as f64 * cache_read_price
            + usage.cache_write_tokens as f64 * cache_write_price;
        Some(micro_usd / 1_000_000.0)
    }
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

    #[test]
    fn dated_model_names_match_the_longest_prefix() {
        let t = PricingTable::default();
        assert_eq!(t.price("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(t.price("gpt-4o-2024-08-06").unwrap().input, 2.5);
        assert_eq!(t.price("claude-opus-4-5-20251101").unwrap().input, 5.0);
        assert_eq!(t.price("claude-opus-4-20250514").unwrap().input, 15.0);
        assert!(t.price("llama-3").is_none());
    }

    #[test]
    fn anthropic_cache_tokens_are_billed_on_top_of_input() {
        let t = PricingTable::default();
        let c = t.cost(
            "claude-sonnet-4-5",
            &usage(1_000_000, 1_000_000, 1_000_000, 1_000_000),
        );
        assert!((c.unwrap() - (3.0 + 15.0 + 0.3 + 3.75)).abs() < 1e-9);
    }

    #[test]
    fn openai_cached_tokens_are_carved_out_of_input() {
        let t = PricingTable::default();
        let c = t.cost("gpt-4o", &usage(1_000_000, 0, 400_000, 0)).unwrap();
        assert!((c - (0.6 * 2.5 + 0.4 * 1.25)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn yaml_overrides_and_extends_the_defaults() {
        let t: PricingTable = serde_yaml::from_str(
            "gpt-4o: {input: 1, output: 2}\nmy-model: {input: 10, output: 20}",
        )
        .unwrap();
        assert_eq!(t.price("gpt-4o").unwrap().output, 2.0);
        assert_eq!(t.price("my-model-v2").unwrap().input, 10.0);
        assert_eq!(t.price("claude-3-haiku").unwrap().input, 0.25);
    }
}

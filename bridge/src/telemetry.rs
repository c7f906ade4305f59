//! Telemetry: JSON logs, Prometheus metrics, and (when configured) OTLP export.
//!
//! Logs are `tracing` events rendered as one JSON object per line on stderr. Metrics are kept
//! in memory here and rendered in the Prometheus text format for `GET /metrics`; the metric
//! set is small and fixed, so a hand-rolled registry avoids a dependency and its build time.
//! The recorder feeds this module once per finished request; the request path only moves the
//! in-flight gauge. When an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` and the other
//! standard `OTEL_*` variables), the same observations are exported as OTLP GenAI spans and
//! metrics, and [`Telemetry::emit_log`] sends log records (Boundary events) ([`otlp`]).
//!
//! Model names come from clients, so they are bounded before becoming labels: a model gets
//! its own label only if it is priced (the recorder found it in the pricing table) and fewer
//! than [`DEFAULT_MAX_MODEL_LABELS`] (configurable) models have one already; every other
//! request counts under `model="other"`.

pub mod otlp;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::record::{InterceptionRecord, Provider};

/// Default bound on distinct `model` label values.
pub const DEFAULT_MAX_MODEL_LABELS: usize = 200;

/// Upper bounds (seconds) of the request duration histogram buckets.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; DURATION_BUCKETS.len()];
        }
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            if v <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Default)]
struct Metrics {
    /// (provider, model, outcome) → requests.
    requests: BTreeMap<(String, String, String), u64>,
    /// (provider, model, token type) → tokens.
    tokens: BTreeMap<(String, String, &'static str), u64>,
    /// (provider, model) → USD.
    cost: BTreeMap<(String, String), f64>,
    /// provider → duration histogram.
    duration: BTreeMap<String, Histogram>,
    /// provider → requests in flight.
    in_flight: BTreeMap<String, i64>,
    spool_records: u64,
    spool_bytes: u64,
    spool_dropped: u64,
    store_errors: u64,
    records_stored: u64,
    store_up: bool,
    /// Models that have their own label.
    model_labels: std::collections::BTreeSet<String>,
    max_model_labels: usize,
    /// (provider, key name, outcome) → attempts with a provider key.
    key_attempts: BTreeMap<(String, String, &'static str), u64>,
    /// (provider, key name) → breaker state.
    key_breaker: BTreeMap<(String, String), &'static str>,
    /// Budget notices by threshold (percent).
    budget_notices: BTreeMap<u64, u64>,
    /// Budget notices the webhook did not take after its retries.
    budget_notices_undelivered: u64,
}

/// Handle to the process's telemetry; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    service_name: Arc<String>,
    metrics: Arc<Mutex<Metrics>>,
    otlp: Option<Arc<otlp::OtlpExporter>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("service_name", &self.service_name)
            .finish()
    }
}

impl Telemetry {
    /// JSON logs to stderr; OTLP traces+metrics when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    ///
    /// The log level comes from `RUST_LOG` (default `info`). Calling this twice in one process
    /// (tests) keeps the first subscriber.
    pub fn init(service_name: &str) -> Result<Telemetry, Error> {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let _already_set = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init()
            .is_err();
        let config = otlp::OtlpConfig::from_env()?;
        // OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES.
        let service_name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                config.as_ref().and_then(|c| {
                    c.resource
                        .iter()
                        .find(|(k, _)| k == "service.name")
                        .map(|(_, v)| v.clone())
                })
            })
            .unwrap_or_else(|| service_name.into());
        match config {
            Some(config) => {
                tracing::info!(
                    protocol = ?config.protocol,
                    traces = %config.traces_endpoint,
                    metrics = %config.metrics_endpoint,
                    logs = %config.logs_endpoint,
                    "exporting OTLP traces, metrics and logs"
                );
                Telemetry::with_otlp(&service_name, config)
            }
            None => Ok(Telemetry::metrics_only(&service_name)),
        }
    }

    /// Metrics plus OTLP export to `config` (no log subscriber).
    pub fn with_otlp(service_name: &str, config: otlp::OtlpConfig) -> Result<Telemetry, Error> {
        let mut t = Telemetry::metrics_only(service_name);
        t.otlp = Some(Arc::new(otlp::OtlpExporter::start(service_name, config)?));
        Ok(t)
    }

    /// Spans that never reached the OTLP collector (`None` without OTLP export).
    pub fn otlp_spans_dropped_total(&self) -> Option<u64> {
        self.otlp.as_ref().map(|o| o.spans_dropped())
    }

    /// Log records that never reached the OTLP collector (`None` without OTLP export).
    pub fn otlp_logs_dropped_total(&self) -> Option<u64> {
        self.otlp.as_ref().map(|o| o.logs_dropped())
    }

    /// Whether OTLP export is on: callers that must build the attributes first (parse a stored
    /// event) can skip that work when it is off.
    pub fn otlp_enabled(&self) -> bool {
        self.otlp.is_some()
    }

    /// Sends one event as an OTLP log record (body = `event_name`, attributes = the fields,
    /// nested objects flattened to dotted keys, arrays kept as arrays), batched with the
    /// spans' settings and exported to the logs endpoint (`/v1/logs`). Never blocks: with the
    /// collector away, records beyond the queue are dropped and counted
    /// (`bridge_otlp_logs_dropped_total`). A no-op without OTLP export.
    pub fn emit_log(
        &self,
        event_name: &str,
        timestamp: impl Into<std::time::SystemTime>,
        attributes: &serde_json::Map<String, serde_json::Value>,
    ) {
        if let Some(o) = &self.otlp {
            o.emit_log(event_name, timestamp.into(), attributes);
        }
    }

    /// Exports pending OTLP spans, metrics and log records (the recorder calls this at
    /// shutdown).
    pub async fn flush(&self) {
        if let Some(o) = &self.otlp {
            let o = o.clone();
            let _ = tokio::task::spawn_blocking(move || o.flush_blocking()).await;
        }
    }

    /// Metrics without installing a log subscriber (tests, benches, library users who set up
    /// their own).
    pub fn metrics_only(service_name: &str) -> Telemetry {
        Telemetry {
            service_name: Arc::new(service_name.to_string()),
            metrics: Arc::new(Mutex::new(Metrics {
                store_up: true,
                max_model_labels: DEFAULT_MAX_MODEL_LABELS,
                ..Metrics::default()
            })),
            otlp: None,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Metrics) -> R) -> R {
        let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut m)
    }

    /// In-flight gauge ++.
    pub fn request_started(&self, provider: Provider) {
        self.with(|m| *m.in_flight.entry(provider.as_str().into()).or_default() += 1);
    }

    /// In-flight gauge --.
    pub fn request_finished(&self, provider: Provider) {
        self.with(|m| *m.in_flight.entry(provider.as_str().into()).or_default() -= 1);
    }

    /// Requests that went upstream and whose record is not handed to the recorder yet.
    pub fn requests_in_flight(&self) -> i64 {
        self.with(|m| m.in_flight.values().sum())
    }

    /// Bounds the distinct `model` label values.
    pub fn set_max_model_labels(&self, n: usize) {
        self.with(|m| m.max_model_labels = n);
    }

    /// Whether the store took its last write (`bridge_store_up`).
    pub fn set_store_up(&self, up: bool) {
        self.with(|m| m.store_up = up);
    }

    /// The label a record's model counts under (see the module docs).
    fn model_label(m: &mut Metrics, r: &InterceptionRecord) -> String {
        let Some(model) = r.model.as_deref() else {
            return String::new();
        };
        if r.cost_usd.is_none() || model.len() > 128 || model.chars().any(char::is_control) {
            return "other".into();
        }
        if m.model_labels.contains(model) {
            return model.to_owned();
        }
        if m.model_labels.len() < m.max_model_labels {
            m.model_labels.insert(model.to_owned());
            return model.to_owned();
        }
        "other".into()
    }

    /// Counts a finished request (called by the recorder, after pricing).
    pub fn observe_record(&self, r: &InterceptionRecord) {
        let provider = r.provider.as_str().to_string();
        let model = self.with(|m| Self::model_label(m, r));
        if let Some(o) = &self.otlp {
            o.observe(r, &model);
        }
        self.with(|m| {
            *m.requests
                .entry((provider.clone(), model.clone(), r.outcome.as_str().into()))
                .or_default() += 1;
            for (kind, n) in [
                ("input", r.usage.input_tokens),
                ("output", r.usage.output_tokens),
                ("cache_read", r.usage.cache_read_tokens),
                ("cache_write", r.usage.cache_write_tokens),
            ] {
                if n > 0 {
                    *m.tokens
                        .entry((provider.clone(), model.clone(), kind))
                        .or_default() += n;
                }
            }
            if let Some(c) = r.cost_usd {
                *m.cost.entry((provider.clone(), model.clone())).or_default() += c;
            }
            m.duration
                .entry(provider)
                .or_default()
                .observe(r.duration_ms / 1000.0);
        });
    }

    /// Current spool depth.
    pub fn set_spool_depth(&self, records: u64, bytes: u64) {
        self.with(|m| {
            m.spool_records = records;
            m.spool_bytes = bytes;
        });
    }

    /// One attempt with a provider key (its name, never its value) and its breaker after it.
    pub fn upstream_key(
        &self,
        provider: Provider,
        key: &str,
        outcome: &'static str,
        state: &'static str,
    ) {
        self.with(|m| {
            let p = provider.as_str().to_string();
            *m.key_attempts
                .entry((p.clone(), key.to_string(), outcome))
                .or_default() += 1;
            m.key_breaker.insert((p, key.to_string()), state);
        });
    }

    /// A budget crossed `percent` of itself.
    pub fn budget_notice(&self, percent: u64) {
        self.with(|m| *m.budget_notices.entry(percent).or_default() += 1);
    }

    /// A budget notice the webhook never accepted.
    pub fn budget_notice_undelivered(&self) {
        self.with(|m| m.budget_notices_undelivered += 1);
    }

    /// Records lost because the spool was full.
    pub fn spool_dropped(&self, n: u64) {
        self.with(|m| m.spool_dropped += n);
    }

    /// A failed store write.
    pub fn store_error(&self) {
        self.with(|m| {
            m.store_errors += 1;
            m.store_up = false;
        });
    }

    /// Records written to the store (a successful write: the store is up).
    pub fn records_stored(&self, n: u64) {
        self.with(|m| {
            m.records_stored += n;
            m.store_up = true;
        });
    }

    /// Store write failures so far.
    pub fn store_errors(&self) -> u64 {
        self.with(|m| m.store_errors)
    }

    /// Records dropped because the spool was full, so far.
    pub fn spool_dropped_total(&self) -> u64 {
        self.with(|m| m.spool_dropped)
    }

    /// The metrics in the Prometheus text exposition format (for GET /metrics).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        self.with(|m| {
            header(
                &mut out,
                "bridge_requests_total",
                "counter",
                "Requests recorded, by provider, model and outcome.",
            );
            for ((p, model, o), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "bridge_requests_total{{provider=\"{}\",model=\"{}\",outcome=\"{}\"}} {n}",
                    esc(p),
                    esc(model),
                    esc(o)
                );
            }
            header(
                &mut out,
                "bridge_tokens_total",
                "counter",
                "Tokens reported by the provider, by type.",
            );
            for ((p, model, t), n) in &m.tokens {
                let _ = writeln!(
                    out,
                    "bridge_tokens_total{{provider=\"{}\",model=\"{}\",type=\"{t}\"}} {n}",
                    esc(p),
                    esc(model)
                );
            }
            header(
                &mut out,
                "bridge_cost_usd_total",
                "counter",
                "Cost in USD from the pricing table.",
            );
            for ((p, model), c) in &m.cost {
                let _ = writeln!(
                    out,
                    "bridge_cost_usd_total{{provider=\"{}\",model=\"{}\"}} {c}",
                    esc(p),
                    esc(model)
                );
            }
            header(
                &mut out,
                "bridge_request_duration_seconds",
                "histogram",
                "Time from request to the end of the answer.",
            );
            for (p, h) in &m.duration {
                for (i, le) in DURATION_BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "bridge_request_duration_seconds_bucket{{provider=\"{}\",le=\"{le}\"}} {}",
                        esc(p),
                        h.counts.get(i).copied().unwrap_or(0)
                    );
                }
                let _ = writeln!(
                    out,
                    "bridge_request_duration_seconds_bucket{{provider=\"{}\",le=\"+Inf\"}} {}",
                    esc(p),
                    h.count
                );
                let _ = writeln!(
                    out,
                    "bridge_request_duration_seconds_sum{{provider=\"{}\"}} {}",
                    esc(p),
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "bridge_request_duration_seconds_count{{provider=\"{}\"}} {}",
                    esc(p),
                    h.count
                );
            }
            header(
                &mut out,
                "bridge_requests_in_flight",
                "gauge",
                "Requests being served now.",
            );
            for (p, n) in &m.in_flight {
                let _ = writeln!(
                    out,
                    "bridge_requests_in_flight{{provider=\"{}\"}} {n}",
                    esc(p)
                );
            }
            header(
                &mut out,
                "bridge_spool_records",
                "gauge",
                "Records waiting in the on-disk spool for the store.",
            );
            let _ = writeln!(out, "bridge_spool_records {}", m.spool_records);
            header(
                &mut out,
                "bridge_spool_bytes",
                "gauge",
                "Size of the on-disk spool.",
            );
            let _ = writeln!(out, "bridge_spool_bytes {}", m.spool_bytes);
            if !m.budget_notices.is_empty() || m.budget_notices_undelivered > 0 {
                header(
                    &mut out,
                    "bridge_budget_notices_total",
                    "counter",
                    "Budgets that crossed a notice threshold (percent of the budget).",
                );
                for (p, n) in &m.budget_notices {
                    let _ = writeln!(out, "bridge_budget_notices_total{{percent=\"{p}\"}} {n}");
                }
                header(
                    &mut out,
                    "bridge_budget_notices_undelivered_total",
                    "counter",
                    "Budget notices the webhook did not accept after its retries.",
                );
                let _ = writeln!(
                    out,
                    "bridge_budget_notices_undelivered_total {}",
                    m.budget_notices_undelivered
                );
            }
            if !m.key_attempts.is_empty() {
                header(
                    &mut out,
                    "bridge_upstream_key_attempts_total",
                    "counter",
                    "Attempts with each provider key (by name): answered, throttled (429/529) or failed (5xx, connection).",
                );
                for ((p, key, o), n) in &m.key_attempts {
                    let _ = writeln!(
                        out,
                        "bridge_upstream_key_attempts_total{{provider=\"{}\",key=\"{}\",outcome=\"{o}\"}} {n}",
                        esc(p),
                        esc(key)
                    );
                }
                header(
                    &mut out,
                    "bridge_upstream_key_breaker",
                    "gauge",
                    "1 for each provider key's circuit breaker state (closed, open, half_open).",
                );
                for ((p, key), state) in &m.key_breaker {
                    let _ = writeln!(
                        out,
                        "bridge_upstream_key_breaker{{provider=\"{}\",key=\"{}\",state=\"{state}\"}} 1",
                        esc(p),
                        esc(key)
                    );
                }
            }
            header(
                &mut out,
                "bridge_spool_dropped_total",
                "counter",
                "Records lost because the spool was full.",
            );
            let _ = writeln!(out, "bridge_spool_dropped_total {}", m.spool_dropped);
            header(
                &mut out,
                "bridge_store_errors_total",
                "counter",
                "Failed writes to the store.",
            );
            let _ = writeln!(out, "bridge_store_errors_total {}", m.store_errors);
            header(
                &mut out,
                "bridge_store_up",
                "gauge",
                "1 if the last write to the store succeeded, 0 if records are being spooled.",
            );
            let _ = writeln!(out, "bridge_store_up {}", u8::from(m.store_up));
            header(
                &mut out,
                "bridge_records_stored_total",
                "counter",
                "Records written to the store.",
            );
            let _ = writeln!(out, "bridge_records_stored_total {}", m.records_stored);
        });
        if let Some(n) = self.otlp_spans_dropped_total() {
            header(
                &mut out,
                "bridge_otlp_spans_dropped_total",
                "counter",
                "Spans that never reached the OTLP collector (queue full, or export failed).",
            );
            let _ = writeln!(out, "bridge_otlp_spans_dropped_total {n}");
        }
        if let Some(n) = self.otlp_logs_dropped_total() {
            header(
                &mut out,
                "bridge_otlp_logs_dropped_total",
                "counter",
                "Log records (Boundary events) that never reached the OTLP collector (queue full, or export failed).",
            );
            let _ = writeln!(out, "bridge_otlp_logs_dropped_total {n}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a Prometheus label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Outcome, Usage, WorkspaceContext};

    fn rec(model: &str, priced: bool) -> InterceptionRecord {
        InterceptionRecord {
            id: uuid::Uuid::now_v7(),
            user: "u".into(),
            key_id: None,
            provider: Provider::Openai,
            endpoint: "/v1/chat/completions".into(),
            model: Some(model.into()),
            client: None,
            streaming: false,
            started_at: chrono::Utc::now(),
            ttfb_ms: None,
            duration_ms: 1.0,
            status: 200,
            outcome: Outcome::Ok,
            usage: Usage::default(),
            cost_usd: priced.then_some(0.0),
            prompt: None,
            tools_offered: vec![],
            tool_calls: vec![],
            tool_results: vec![],
            context: WorkspaceContext::default(),
            client_session: None,
            client_addr: None,
            error: None,
        }
    }

    #[test]
    fn client_chosen_model_names_cannot_grow_the_metrics_without_bound() {
        let t = Telemetry::metrics_only("test");
        t.set_max_model_labels(3);
        t.observe_record(&rec("gpt-4o", true));
        for i in 0..301 {
            // Unpriced names (anything a client makes up) never get a label of their own...
            t.observe_record(&rec(&format!("made-up-{i}-{}", "x".repeat(1000)), false));
            // ...and priced-looking ones stop getting one at the bound.
            t.observe_record(&rec(&format!("gpt-4o-{i}"), true));
        }
        let text = t.render_prometheus();
        assert!(text.len() < 8 * 1024, "{} bytes", text.len());
        assert!(!text.contains("made-up"));
        assert!(text.contains(r#"model="gpt-4o",outcome="ok"} 1"#), "{text}");
        assert!(
            text.contains(r#"model="other",outcome="ok"} 600"#),
            "{text}"
        );
    }
}

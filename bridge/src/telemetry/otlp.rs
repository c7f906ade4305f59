//! OTLP export of GenAI traces and metrics over HTTP with the JSON encoding (`http/json`).
//!
//! Every recorded request becomes one CLIENT span named `chat {model}` with the OpenTelemetry
//! GenAI semantic convention attributes (`gen_ai.system`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`, ...) and feeds two histograms, `gen_ai.client.token.usage`
//! and `gen_ai.client.operation.duration`, with the buckets the convention recommends.
//! The JSON encoding is part of the OTLP specification and accepted by the OpenTelemetry
//! Collector and most vendors; writing it by hand keeps the gRPC/protobuf stacks out of the
//! build. Export is best effort: telemetry is not the system of record (the store is), so a
//! collector outage drops spans (counted and logged) instead of queueing without bound.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value as Json};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::record::{InterceptionRecord, Outcome};

/// Spans waiting for export; beyond this they are dropped (and counted), so a stalled collector
/// costs at most this many spans (plus one batch being sent) of memory.
pub const SPAN_QUEUE: usize = 4096;
/// Most spans sent in one export request.
pub const SPAN_BATCH: usize = 512;
const SPAN_INTERVAL: Duration = Duration::from_secs(1);

const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Where and how to export, from the standard `OTEL_*` environment variables.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// Base URL, e.g. `http://127.0.0.1:4318`; `/v1/traces` and `/v1/metrics` are appended.
    pub endpoint: String,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS=k=v,k2=v2`), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// How often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, ms; default 60 s).
    pub metric_interval: Duration,
}

impl OtlpConfig {
    /// `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` is not set.
    pub fn from_env() -> Result<Option<OtlpConfig>, Error> {
        let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") else {
            return Ok(None);
        };
        if let Ok(p) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
            if p != "http/json" {
                tracing::warn!(protocol = %p, "OTEL_EXPORTER_OTLP_PROTOCOL: Bridge exports OTLP as http/json only");
            }
        }
        let headers = std::env::var("OTEL_EXPORTER_OTLP_HEADERS")
            .unwrap_or_default()
            .split(',')
            .filter(|kv| !kv.trim().is_empty())
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| {
                        Error::Telemetry(format!(
                            "OTEL_EXPORTER_OTLP_HEADERS: {kv:?} is not key=value"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        let metric_interval = match std::env::var("OTEL_METRIC_EXPORT_INTERVAL") {
            Ok(ms) => Duration::from_millis(ms.parse().map_err(|_| {
                Error::Telemetry(format!(
                    "OTEL_METRIC_EXPORT_INTERVAL={ms:?} is not milliseconds"
                ))
            })?),
            Err(_) => Duration::from_secs(60),
        };
        Ok(Some(OtlpConfig {
            endpoint,
            headers,
            metric_interval,
        }))
    }
}

#[derive(Default)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
        }
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// Attribute sets as sorted (key, value) lists so they can key a map.
type Attrs = Vec<(&'static str, String)>;

#[derive(Default)]
struct GenAiMetrics {
    tokens: BTreeMap<Attrs, Hist>,
    duration: BTreeMap<Attrs, Hist>,
}

enum Msg {
    Span(Json),
    Flush(oneshot::Sender<()>),
}

/// Handle to the exporter task.
pub struct OtlpExporter {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Mutex<GenAiMetrics>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl OtlpExporter {
    /// Starts the export task; needs a Tokio runtime.
    pub fn start(service_name: &str, config: OtlpConfig) -> Result<OtlpExporter, Error> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::Telemetry(format!("OTLP export needs a Tokio runtime: {e}")))?;
        if !config.endpoint.starts_with("http://") {
            return Err(Error::Telemetry(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT={:?}: only http:// endpoints are supported (run a local collector for TLS)",
                config.endpoint
            )));
        }
        let (tx, rx) = mpsc::channel(SPAN_QUEUE);
        let metrics = Arc::new(Mutex::new(GenAiMetrics::default()));
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = ExportTask {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            base: config.endpoint.trim_end_matches('/').to_string(),
            headers: config.headers,
            resource: json!({ "attributes": [kv("service.name", json!({"stringValue": service_name}))] }),
            metrics: metrics.clone(),
            dropped: dropped.clone(),
            start_ns: now_ns(),
            metric_interval: config.metric_interval,
        };
        rt.spawn(task.run(rx));
        Ok(OtlpExporter {
            tx,
            metrics,
            dropped,
        })
    }

    /// Adds one request's span and metric points. Metric points carry `model_label` (the
    /// model, or "other" beyond the bounded label set) so a client cannot grow them without
    /// limit; the span carries the model as requested.
    pub fn observe(&self, r: &InterceptionRecord, model_label: &str) {
        let model = r.model.clone().unwrap_or_default();
        let mut base: Attrs = vec![
            ("gen_ai.operation.name", "chat".into()),
            ("gen_ai.system", r.provider.as_str().into()),
            ("gen_ai.request.model", model_label.to_owned()),
        ];
        if r.outcome != Outcome::Ok {
            base.push(("error.type", r.outcome.as_str().into()));
        }
        base.sort();
        {
            let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
            for (kind, n) in [
                ("input", r.usage.input_tokens),
                ("output", r.usage.output_tokens),
            ] {
                let mut a: Attrs = base
                    .iter()
                    .filter(|(k, _)| *k != "error.type")
                    .cloned()
                    .collect();
                a.push(("gen_ai.token.type", kind.into()));
                a.sort();
                m.tokens
                    .entry(a)
                    .or_default()
                    .observe(TOKEN_BUCKETS, n as f64);
            }
            m.duration
                .entry(base)
                .or_default()
                .observe(DURATION_BUCKETS, r.duration_ms / 1000.0);
        }
        if self.tx.try_send(Msg::Span(span_json(r, &model))).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "OTLP span queue full; spans dropped");
            }
        }
    }

    /// Spans that never reached the collector: dropped because the queue was full, or in a
    /// failed export.
    pub fn spans_dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Exports everything pending now (spans and metrics).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }
}

fn kv(key: &str, value: Json) -> Json {
    json!({ "key": key, "value": value })
}

fn s(key: &str, v: &str) -> Json {
    kv(key, json!({ "stringValue": v }))
}

fn i(key: &str, v: u64) -> Json {
    kv(key, json!({ "intValue": v.to_string() }))
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn span_json(r: &InterceptionRecord, model: &str) -> Json {
    let id = r.id.as_bytes();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let start = r.started_at.timestamp_nanos_opt().unwrap_or(0) as u128;
    let end = start + (r.duration_ms * 1_000_000.0) as u128;
    let mut attrs = vec![
        s("gen_ai.operation.name", "chat"),
        s("gen_ai.system", r.provider.as_str()),
        s("gen_ai.request.model", model),
        i("gen_ai.usage.input_tokens", r.usage.input_tokens),
        i("gen_ai.usage.output_tokens", r.usage.output_tokens),
        i(
            "gen_ai.usage.cache_read_input_tokens",
            r.usage.cache_read_tokens,
        ),
        i(
            "gen_ai.usage.cache_creation_input_tokens",
            r.usage.cache_write_tokens,
        ),
        s("enduser.id", &r.user),
        s("url.path", &r.endpoint),
        i("http.response.status_code", u64::from(r.status)),
        s("bridge.outcome", r.outcome.as_str()),
        kv("bridge.streaming", json!({ "boolValue": r.streaming })),
        s("bridge.interception_id", &r.id.to_string()),
    ];
    if let Some(c) = r.cost_usd {
        attrs.push(kv("bridge.cost_usd", json!({ "doubleValue": c })));
    }
    if let Some(t) = r.ttfb_ms {
        attrs.push(kv("bridge.ttfb_ms", json!({ "doubleValue": t })));
    }
    if !r.tool_calls.is_empty() {
        let names: Vec<Json> = r
            .tool_calls
            .iter()
            .map(|t| json!({ "stringValue": t.name }))
            .collect();
        attrs.push(kv(
            "bridge.tool_calls",
            json!({ "arrayValue": { "values": names } }),
        ));
    }
    for (k, v) in [
        ("bridge.key_id", &r.key_id),
        ("user_agent.original", &r.client),
        ("bridge.workspace", &r.context.workspace),
        ("bridge.template", &r.context.template),
        ("bridge.session", &r.context.session),
    ] {
        if let Some(v) = v {
            attrs.push(s(k, v));
        }
    }
    let mut status = json!({ "code": 1 });
    if r.outcome != Outcome::Ok {
        attrs.push(s("error.type", r.outcome.as_str()));
        status = json!({ "code": 2, "message": r.error.clone().unwrap_or_else(|| r.outcome.as_str().into()) });
    }
    json!({
        "traceId": hex(id),
        "spanId": hex(&id[8..]),
        "name": format!("chat {model}"),
        "kind": 3,
        "startTimeUnixNano": start.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": attrs,
        "status": status,
    })
}

struct ExportTask {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    headers: Vec<(String, String)>,
    resource: Json,
    metrics: Arc<Mutex<GenAiMetrics>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    start_ns: u128,
    metric_interval: Duration,
}

impl ExportTask {
    async fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut spans = Vec::new();
        let mut span_tick = tokio::time::interval(SPAN_INTERVAL);
        let mut metric_tick = tokio::time::interval(self.metric_interval);
        metric_tick.tick().await; // the first tick is immediate; nothing to report yet
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Span(s)) => {
                        spans.push(s);
                        if spans.len() >= SPAN_BATCH {
                            self.export_spans(&mut spans).await;
                        }
                    }
                    Some(Msg::Flush(ack)) => {
                        self.export_spans(&mut spans).await;
                        self.export_metrics().await;
                        let _ = ack.send(());
                    }
                    None => {
                        self.export_spans(&mut spans).await;
                        self.export_metrics().await;
                        return;
                    }
                },
                _ = span_tick.tick() => self.export_spans(&mut spans).await,
                _ = metric_tick.tick() => self.export_metrics().await,
            }
        }
    }

    async fn export_spans(&self, spans: &mut Vec<Json>) {
        if spans.is_empty() {
            return;
        }
        let batch = std::mem::take(spans);
        let n = batch.len();
        let body = json!({ "resourceSpans": [{
            "resource": self.resource,
            "scopeSpans": [{ "scope": { "name": "bridge", "version": env!("CARGO_PKG_VERSION") }, "spans": batch }],
        }]});
        if let Err(e) = self.post("/v1/traces", &body).await {
            self.dropped
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, spans = n, "OTLP trace export failed; spans dropped");
        }
    }

    async fn export_metrics(&self) {
        let now = now_ns().to_string();
        let start = self.start_ns.to_string();
        let points = |h: &BTreeMap<Attrs, Hist>, bounds: &[f64]| -> Vec<Json> {
            h.iter()
                .map(|(attrs, hist)| {
                    json!({
                        "attributes": attrs.iter().map(|(k, v)| s(k, v)).collect::<Vec<_>>(),
                        "startTimeUnixNano": start,
                        "timeUnixNano": now,
                        "count": hist.count.to_string(),
                        "sum": hist.sum,
                        "bucketCounts": hist.counts.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                        "explicitBounds": bounds,
                    })
                })
                .collect()
        };
        let (tokens, duration) = {
            let m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
            (
                points(&m.tokens, TOKEN_BUCKETS),
                points(&m.duration, DURATION_BUCKETS),
            )
        };
        if tokens.is_empty() && duration.is_empty() {
            return;
        }
        // Cumulative temporality (2): each export carries totals since start.
        let body = json!({ "resourceMetrics": [{
            "resource": self.resource,
            "scopeMetrics": [{
                "scope": { "name": "bridge", "version": env!("CARGO_PKG_VERSION") },
                "metrics": [
                    { "name": "gen_ai.client.token.usage", "unit": "{token}",
                      "description": "Number of input and output tokens used.",
                      "histogram": { "aggregationTemporality": 2, "dataPoints": tokens } },
                    { "name": "gen_ai.client.operation.duration", "unit": "s",
                      "description": "GenAI operation duration.",
                      "histogram": { "aggregationTemporality": 2, "dataPoints": duration } },
                ],
            }],
        }]});
        if let Err(e) = self.post("/v1/metrics", &body).await {
            tracing::warn!(error = %e, "OTLP metric export failed; will retry with the next export");
        }
    }

    async fn post(&self, path: &str, body: &Json) -> Result<(), String> {
        let url = format!("{}{path}", self.base);
        let mut req = hyper::Request::post(&url).header("content-type", "application/json");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| format!("{url}: timed out"))?
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        Ok(())
    }
}

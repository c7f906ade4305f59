//! OTLP export on the OpenTelemetry SDK: GenAI spans and metrics for recorded requests, and log
//! records for stored Boundary events, over `http/protobuf` or `grpc`.
//!
//! Every recorded request becomes one CLIENT span named `chat {model}` with the OpenTelemetry
//! GenAI semantic convention attributes (`gen_ai.system`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`, ...) and feeds two histograms, `gen_ai.client.token.usage`
//! and `gen_ai.client.operation.duration`, with the buckets the convention recommends. The
//! span's trace id is the interception id, so a trace found in the SIEM leads to its record.
//!
//! The SDK batches (its batch processors run on threads of their own); the exports themselves
//! run on a small Tokio runtime owned by this module (`otlp-io`), so the gateway's runtime
//! never waits on a collector. Export is best effort: telemetry is not the system of record
//! (the store is), so a collector outage drops spans and log records (counted, and logged on
//! a power of two) instead of queueing without bound.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::trace::{
    SpanId, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchLogProcessor, LogBatch, LogExporter, SdkLogger, SdkLoggerProvider,
};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracer,
    SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::error::Error;
use crate::record::{InterceptionRecord, Outcome};

/// Spans waiting for export (default of `OTEL_BSP_MAX_QUEUE_SIZE`); beyond this they are
/// dropped and counted, so a stalled collector costs at most this many spans of memory.
pub const SPAN_QUEUE: usize = 4096;
/// Most spans sent in one export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
pub const SPAN_BATCH: usize = 512;
/// Log records waiting for export (default of `OTEL_BLRP_MAX_QUEUE_SIZE`).
pub const LOG_QUEUE: usize = 4096;
/// Most log records sent in one export request.
pub const LOG_BATCH: usize = 512;
/// Distinct log event names kept as the record's `event_name` (the SDK wants them `'static`,
/// and they come from agents); beyond this the name is still the body and `event.name`.
const MAX_EVENT_NAMES: usize = 256;

const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// The wire protocol (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf` (the default, port 4318): POSTs to `/v1/traces`, `/v1/metrics`, `/v1/logs`.
    HttpProtobuf,
    /// `grpc` (port 4317).
    Grpc,
}

/// Where and how to export; [`OtlpConfig::from_env`] reads the standard `OTEL_*` variables.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    /// Full URLs for `http/protobuf` (`.../v1/traces`), the collector's address for gRPC.
    pub traces_endpoint: String,
    pub metrics_endpoint: String,
    pub logs_endpoint: String,
    /// Extra request headers (gRPC metadata), e.g. a vendor API key. Never logged.
    pub headers: Vec<(String, String)>,
    /// Time one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, ms; default 10 s).
    pub timeout: Duration,
    /// How often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, ms; default 60 s).
    pub metric_interval: Duration,
    /// Bound of the span queue (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub span_queue: usize,
    /// Bound of the log record queue (`OTEL_BLRP_MAX_QUEUE_SIZE`).
    pub log_queue: usize,
    /// `OTEL_RESOURCE_ATTRIBUTES` (`key=value,...`), added to the resource.
    pub resource: Vec<(String, String)>,
}

impl OtlpConfig {
    /// Everything to one collector at `endpoint` (a base URL such as `http://127.0.0.1:4318`)
    /// with the defaults.
    pub fn new(protocol: Protocol, endpoint: &str) -> OtlpConfig {
        let signal = |path: &str| match protocol {
            Protocol::HttpProtobuf => format!("{}{path}", endpoint.trim_end_matches('/')),
            Protocol::Grpc => endpoint.to_string(),
        };
        OtlpConfig {
            protocol,
            traces_endpoint: signal("/v1/traces"),
            metrics_endpoint: signal("/v1/metrics"),
            logs_endpoint: signal("/v1/logs"),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            metric_interval: Duration::from_secs(60),
            span_queue: SPAN_QUEUE,
            log_queue: LOG_QUEUE,
            resource: Vec::new(),
        }
    }

    /// `None` when no OTLP endpoint variable is set, or `OTEL_SDK_DISABLED=true`.
    pub fn from_env() -> Result<Option<OtlpConfig>, Error> {
        OtlpConfig::from_vars(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`OtlpConfig::from_env`] with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<OtlpConfig>, Error> {
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let base = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        let per_signal = |signal: &str| var(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"));
        if base.is_none()
            && ["TRACES", "METRICS", "LOGS"]
                .iter()
                .all(|s| per_signal(s).is_none())
        {
            return Ok(None);
        }
        let protocol = match var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref().map(str::trim) {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(Error::Telemetry(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: Bridge speaks \"http/protobuf\" (default) or \"grpc\""
                )))
            }
        };
        let default_base = match protocol {
            Protocol::HttpProtobuf => "http://localhost:4318",
            Protocol::Grpc => "http://localhost:4317",
        };
        let mut c = OtlpConfig::new(protocol, base.as_deref().unwrap_or(default_base));
        // A per-signal endpoint is used as it is (the specification's rule).
        for (signal, slot) in [
            ("TRACES", &mut c.traces_endpoint),
            ("METRICS", &mut c.metrics_endpoint),
            ("LOGS", &mut c.logs_endpoint),
        ] {
            if let Some(e) = per_signal(signal) {
                *slot = e;
            }
        }
        for (name, e) in [
            ("traces", &c.traces_endpoint),
            ("metrics", &c.metrics_endpoint),
            ("logs", &c.logs_endpoint),
        ] {
            if !e.starts_with("http://") {
                return Err(Error::Telemetry(format!(
                    "OTLP {name} endpoint {e:?}: only http:// endpoints are supported (run a local collector for TLS)"
                )));
            }
        }
        c.headers = key_values(
            var("OTEL_EXPORTER_OTLP_HEADERS"),
            "OTEL_EXPORTER_OTLP_HEADERS",
        )?;
        c.resource = key_values(var("OTEL_RESOURCE_ATTRIBUTES"), "OTEL_RESOURCE_ATTRIBUTES")?;
        let num = |name: &str| -> Result<Option<u64>, Error> {
            var(name)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        Error::Telemetry(format!("{name}={v:?} is not a whole number"))
                    })
                })
                .transpose()
        };
        if let Some(ms) = num("OTEL_EXPORTER_OTLP_TIMEOUT")? {
            c.timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = num("OTEL_METRIC_EXPORT_INTERVAL")? {
            c.metric_interval = Duration::from_millis(ms.max(1));
        }
        if let Some(n) = num("OTEL_BSP_MAX_QUEUE_SIZE")? {
            c.span_queue = (n as usize).max(1);
        }
        if let Some(n) = num("OTEL_BLRP_MAX_QUEUE_SIZE")? {
            c.log_queue = (n as usize).max(1);
        }
        Ok(Some(c))
    }
}

/// `k=v,k2=v2` (values percent-decoded as the specification says).
fn key_values(s: Option<String>, name: &str) -> Result<Vec<(String, String)>, Error> {
    s.unwrap_or_default()
        .split(',')
        .filter(|kv| !kv.trim().is_empty())
        .enumerate()
        .map(|(i, kv)| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), percent_decode(v.trim())))
                .filter(|(k, _)| !k.is_empty())
                // Entries may hold secrets (a vendor key): the error names the entry's place.
                .ok_or_else(|| {
                    Error::Telemetry(format!(
                        "{name}: entry {} is not key=value (expected key=value,key2=value2)",
                        i + 1
                    ))
                })
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(x) = u8::from_str_radix(hex, 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// Counters shared by the exporters and the queues in front of them.
#[derive(Default)]
struct Counts {
    /// Items handed to the batch processor and not yet taken by an export.
    pending: AtomicUsize,
    /// Items that never reached the collector: queue full, or a failed export.
    dropped: AtomicU64,
    /// Failed exports (for rate-limited warnings).
    failures: AtomicU64,
}

impl Counts {
    /// Takes a place in the queue, or counts a drop when it is full.
    fn admit(&self, cap: usize, what: &'static str) -> bool {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= cap {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, what, "OTLP export queue full; dropped");
            }
            return false;
        }
        true
    }

    fn exported(&self, n: usize, result: &OTelSdkResult, what: &'static str) {
        if let Err(e) = result {
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
            let f = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if f.is_power_of_two() {
                tracing::warn!(error = %e, items = n, failures = f, what, "OTLP export failed; dropped");
            }
        }
    }
}

/// Runs an exporter's futures on the `otlp-io` runtime: the SDK's batch threads call
/// `export` outside any runtime, and the hyper and tonic transports need one.
#[derive(Debug)]
struct OnIo<E> {
    inner: E,
    io: tokio::runtime::Handle,
    counts: Arc<Counts>,
    what: &'static str,
}

impl fmt::Debug for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counts").finish_non_exhaustive()
    }
}

impl<E: SpanExporter> SpanExporter for OnIo<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.counts.pending.fetch_sub(n, Ordering::AcqRel);
        let r = self.io.block_on(self.inner.export(batch));
        self.counts.exported(n, &r, self.what);
        r
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: LogExporter> LogExporter for OnIo<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count();
        self.counts.pending.fetch_sub(n, Ordering::AcqRel);
        let r = self.io.block_on(self.inner.export(batch));
        self.counts.exported(n, &r, self.what);
        r
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for OnIo<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let r = self.io.block_on(self.inner.export(metrics));
        if let Err(e) = &r {
            let f = self.counts.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if f.is_power_of_two() {
                tracing::warn!(error = %e, failures = f, "OTLP metric export failed; the next export carries the totals");
            }
        }
        r
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The batch processor behind a queue bound of our own, so drops are counted: the SDK counts
/// its own but does not say how many.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    cap: usize,
    counts: Arc<Counts>,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        // Our bound is the SDK queue's size and counts the batch being built too, so the SDK
        // queue itself never overflows: every drop is counted here.
        if self.counts.admit(self.cap, "spans") {
            self.inner.on_end(span);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<P: opentelemetry_sdk::logs::LogProcessor> opentelemetry_sdk::logs::LogProcessor
    for Bounded<P>
{
    fn emit(
        &self,
        data: &mut opentelemetry_sdk::logs::SdkLogRecord,
        scope: &opentelemetry::InstrumentationScope,
    ) {
        if self.counts.admit(self.cap, "log records") {
            self.inner.emit(data, scope);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

thread_local! {
    /// Ids for the span being built on this thread: the interception's.
    static NEXT_IDS: std::cell::Cell<Option<(TraceId, SpanId)>> = const { std::cell::Cell::new(None) };
}

/// Gives a span the ids set in [`NEXT_IDS`] (the record's id), else random ones.
#[derive(Debug)]
struct RecordIds(RandomIdGenerator);

impl IdGenerator for RecordIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(|c| c.get())
            .map(|(t, _)| t)
            .unwrap_or_else(|| self.0.new_trace_id())
    }
    fn new_span_id(&self) -> SpanId {
        NEXT_IDS
            .with(|c| c.get())
            .map(|(_, s)| s)
            .unwrap_or_else(|| self.0.new_span_id())
    }
}

/// The hyper client Bridge already has, as the OTLP HTTP transport (runs on `otlp-io`).
struct HyperTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl fmt::Debug for HyperTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperTransport").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HyperTransport {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let req = http::Request::from_parts(parts, Full::new(body));
        let call = async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            // Collectors answer with a small status message; never hold more than 1 MiB.
            let body = http_body_util::Limited::new(body, 1 << 20)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer in {:?}", self.timeout))?
    }
}

/// The runtime the exports run on; shut down without waiting when the exporter goes.
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The OTLP exporter: SDK providers for traces, metrics and logs.
pub struct OtlpExporter {
    tracer_provider: SdkTracerProvider,
    tracer: SdkTracer,
    meter_provider: SdkMeterProvider,
    tokens: Histogram<u64>,
    duration: Histogram<f64>,
    logger_provider: SdkLoggerProvider,
    logger: SdkLogger,
    spans: Arc<Counts>,
    logs: Arc<Counts>,
    event_names: Mutex<HashSet<&'static str>>,
    // Last: the providers above export through it while they shut down.
    _io: IoRuntime,
}

impl OtlpExporter {
    /// Builds the exporters and starts the SDK's batch threads and the `otlp-io` runtime.
    pub fn start(service_name: &str, config: OtlpConfig) -> Result<OtlpExporter, Error> {
        let err = |what: &str, e: &dyn fmt::Display| Error::Telemetry(format!("{what}: {e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-io")
            .enable_all()
            .build()
            .map_err(|e| err("OTLP export runtime", &e))?;
        let io = rt.handle().clone();
        // tonic's channel spawns its worker where it is built.
        let _enter = io.enter();

        let mut resource = Resource::builder_empty().with_service_name(service_name.to_string());
        for (k, v) in &config.resource {
            if k != "service.name" {
                resource = resource.with_attribute(KeyValue::new(k.clone(), v.clone()));
            }
        }
        let resource = resource.build();
        let headers: HashMap<String, String> = config.headers.iter().cloned().collect();
        let metadata = || -> Result<_, Error> {
            let mut m = http::HeaderMap::new();
            for (k, v) in &config.headers {
                let key = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                    Error::Telemetry(format!("OTLP header {k:?} is not a valid header name"))
                })?;
                let val = http::HeaderValue::from_str(v).map_err(|_| {
                    Error::Telemetry(format!(
                        "OTLP header {k:?}: the value is not a valid header value"
                    ))
                })?;
                m.insert(key, val);
            }
            Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(m))
        };
        let http = || HyperTransport {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            timeout: config.timeout,
        };

        let spans = Arc::new(Counts::default());
        let span_exporter = match config.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&config.traces_endpoint)
                .with_timeout(config.timeout)
                .with_headers(headers.clone())
                .with_http_client(http())
                .build(),
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&config.traces_endpoint)
                .with_timeout(config.timeout)
                .with_metadata(metadata()?)
                .build(),
        }
        .map_err(|e| err("OTLP span exporter", &e))?;
        let span_processor = BatchSpanProcessor::builder(OnIo {
            inner: span_exporter,
            io: io.clone(),
            counts: spans.clone(),
            what: "spans",
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(config.span_queue)
                .with_max_export_batch_size(SPAN_BATCH.min(config.span_queue))
                .with_scheduled_delay(Duration::from_secs(1))
                .build(),
        )
        .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_id_generator(RecordIds(RandomIdGenerator::default()))
            .with_span_processor(Bounded {
                inner: span_processor,
                cap: config.span_queue,
                counts: spans.clone(),
            })
            .build();
        let tracer = tracer_provider.tracer_with_scope(scope());

        let metric_exporter = match config.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&config.metrics_endpoint)
                .with_timeout(config.timeout)
                .with_headers(headers.clone())
                .with_http_client(http())
                .with_temporality(Temporality::Cumulative)
                .build(),
            Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(&config.metrics_endpoint)
                .with_timeout(config.timeout)
                .with_metadata(metadata()?)
                .with_temporality(Temporality::Cumulative)
                .build(),
        }
        .map_err(|e| err("OTLP metric exporter", &e))?;
        let reader = PeriodicReader::builder(OnIo {
            inner: metric_exporter,
            io: io.clone(),
            counts: Arc::new(Counts::default()),
            what: "metrics",
        })
        .with_interval(config.metric_interval)
        .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(reader)
            .build();
        let meter = meter_provider.meter_with_scope(scope());
        let tokens = meter
            .u64_histogram("gen_ai.client.token.usage")
            .with_unit("{token}")
            .with_description("Number of input and output tokens used.")
            .with_boundaries(TOKEN_BUCKETS.to_vec())
            .build();
        let duration = meter
            .f64_histogram("gen_ai.client.operation.duration")
            .with_unit("s")
            .with_description("GenAI operation duration.")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();

        let logs = Arc::new(Counts::default());
        let log_exporter = match config.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&config.logs_endpoint)
                .with_timeout(config.timeout)
                .with_headers(headers)
                .with_http_client(http())
                .build(),
            Protocol::Grpc => opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_endpoint(&config.logs_endpoint)
                .with_timeout(config.timeout)
                .with_metadata(metadata()?)
                .build(),
        }
        .map_err(|e| err("OTLP log exporter", &e))?;
        let log_processor = BatchLogProcessor::builder(OnIo {
            inner: log_exporter,
            io: io.clone(),
            counts: logs.clone(),
            what: "log records",
        })
        .with_batch_config(
            opentelemetry_sdk::logs::BatchConfigBuilder::default()
                .with_max_queue_size(config.log_queue)
                .with_max_export_batch_size(LOG_BATCH.min(config.log_queue))
                .with_scheduled_delay(Duration::from_secs(1))
                .build(),
        )
        .build();
        let logger_provider = SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_log_processor(Bounded {
                inner: log_processor,
                cap: config.log_queue,
                counts: logs.clone(),
            })
            .build();
        let logger = logger_provider.logger_with_scope(scope());
        drop(_enter);
        Ok(OtlpExporter {
            tracer_provider,
            tracer,
            meter_provider,
            tokens,
            duration,
            logger_provider,
            logger,
            spans,
            logs,
            event_names: Mutex::new(HashSet::new()),
            _io: IoRuntime(Some(rt)),
        })
    }

    /// Adds one request's span and metric points. Metric points carry `model_label` (the
    /// model, or "other" beyond the bounded label set) so a client cannot grow them without
    /// limit; the span carries the model as requested.
    pub fn observe(&self, r: &InterceptionRecord, model_label: &str) {
        let system = r.provider.as_str();
        let mut base = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.system", system),
            KeyValue::new("gen_ai.request.model", model_label.to_owned()),
        ];
        for (kind, n) in [
            ("input", r.usage.input_tokens),
            ("output", r.usage.output_tokens),
        ] {
            let mut a = base.clone();
            a.push(KeyValue::new("gen_ai.token.type", kind));
            self.tokens.record(n, &a);
        }
        if r.outcome != Outcome::Ok {
            base.push(KeyValue::new("error.type", r.outcome.as_str()));
        }
        self.duration.record(r.duration_ms / 1000.0, &base);
        self.span(r);
    }

    fn span(&self, r: &InterceptionRecord) {
        let model = r.model.clone().unwrap_or_default();
        let id = r.id.as_u128();
        let start: SystemTime = r.started_at.into();
        let end = start + Duration::from_secs_f64((r.duration_ms / 1000.0).max(0.0));
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.system", r.provider.as_str()),
            KeyValue::new("gen_ai.request.model", model.clone()),
            KeyValue::new("gen_ai.usage.input_tokens", r.usage.input_tokens as i64),
            KeyValue::new("gen_ai.usage.output_tokens", r.usage.output_tokens as i64),
            KeyValue::new(
                "gen_ai.usage.cache_read_input_tokens",
                r.usage.cache_read_tokens as i64,
            ),
            KeyValue::new(
                "gen_ai.usage.cache_creation_input_tokens",
                r.usage.cache_write_tokens as i64,
            ),
            KeyValue::new("enduser.id", r.user.clone()),
            KeyValue::new("url.path", r.endpoint.clone()),
            KeyValue::new("http.response.status_code", i64::from(r.status)),
            KeyValue::new("bridge.outcome", r.outcome.as_str()),
            KeyValue::new("bridge.streaming", r.streaming),
            KeyValue::new("bridge.interception_id", r.id.to_string()),
        ];
        if let Some(c) = r.cost_usd {
            attrs.push(KeyValue::new("bridge.cost_usd", c));
        }
        if let Some(t) = r.ttfb_ms {
            attrs.push(KeyValue::new("bridge.ttfb_ms", t));
        }
        if !r.tool_calls.is_empty() {
            let names: Vec<StringValue> =
                r.tool_calls.iter().map(|t| t.name.clone().into()).collect();
            attrs.push(KeyValue::new(
                "bridge.tool_calls",
                Value::Array(Array::String(names)),
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
                attrs.push(KeyValue::new(k, v.clone()));
            }
        }
        let status = if r.outcome == Outcome::Ok {
            Status::Ok
        } else {
            attrs.push(KeyValue::new("error.type", r.outcome.as_str()));
            Status::error(r.error.clone().unwrap_or_else(|| r.outcome.as_str().into()))
        };
        let builder = self
            .tracer
            .span_builder(format!("chat {model}"))
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attrs);
        // The ids are read while the span is built, on this thread.
        NEXT_IDS.with(|c| {
            c.set(Some((
                TraceId::from_bytes(id.to_be_bytes()),
                SpanId::from_bytes((id as u64).to_be_bytes()),
            )))
        });
        let cx = opentelemetry::Context::new();
        let span = self.tracer.build_with_context(builder, &cx);
        NEXT_IDS.with(|c| c.set(None));
        let cx = cx.with_span(span);
        let span = cx.span();
        span.set_status(status);
        span.end_with_timestamp(end);
    }

    /// One log record: body = `event_name`, attributes = `attributes` flattened (nested
    /// objects become dotted keys; arrays stay arrays; nulls are left out).
    pub fn emit_log(
        &self,
        event_name: &str,
        timestamp: SystemTime,
        attributes: &serde_json::Map<String, serde_json::Value>,
    ) {
        let mut rec = self.logger.create_log_record();
        if let Some(name) = self.event_name(event_name) {
            rec.set_event_name(name);
        }
        rec.set_timestamp(timestamp);
        rec.set_observed_timestamp(SystemTime::now());
        rec.set_severity_number(Severity::Info);
        rec.set_severity_text("INFO");
        rec.set_body(AnyValue::String(event_name.to_string().into()));
        let mut flat = Vec::new();
        flatten("", attributes, &mut flat);
        rec.add_attributes(flat);
        self.logger.emit(rec);
    }

    /// A `'static` copy of `name`, leaked once per distinct name, at most [`MAX_EVENT_NAMES`].
    fn event_name(&self, name: &str) -> Option<&'static str> {
        let mut names = self.event_names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = names.get(name) {
            return Some(n);
        }
        if names.len() >= MAX_EVENT_NAMES || name.len() > 128 {
            return None;
        }
        let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
        names.insert(leaked);
        Some(leaked)
    }

    /// Spans that never reached the collector: dropped because the queue was full, or in a
    /// failed export.
    pub fn spans_dropped(&self) -> u64 {
        self.spans.dropped.load(Ordering::Relaxed)
    }

    /// Log records that never reached the collector.
    pub fn logs_dropped(&self) -> u64 {
        self.logs.dropped.load(Ordering::Relaxed)
    }

    /// Exports everything pending now (spans, metrics, log records). Blocks: call it off the
    /// async workers ([`tokio::task::spawn_blocking`]).
    pub fn flush_blocking(&self) {
        for (what, r) in [
            ("spans", self.tracer_provider.force_flush()),
            ("metrics", self.meter_provider.force_flush()),
            ("log records", self.logger_provider.force_flush()),
        ] {
            if let Err(e) = r {
                tracing::warn!(error = %e, what, "OTLP flush failed");
            }
        }
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        // Before the io runtime goes: shutting down exports what is pending.
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
        let _ = self.logger_provider.shutdown();
    }
}

fn scope() -> opentelemetry::InstrumentationScope {
    opentelemetry::InstrumentationScope::builder("bridge")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Flattens JSON objects into dotted keys; arrays keep their shape.
fn flatten(
    prefix: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<(String, AnyValue)>,
) {
    for (k, v) in obj {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            serde_json::Value::Object(o) => flatten(&key, o, out),
            serde_json::Value::Null => {}
            v => {
                if let Some(a) = any_value(v) {
                    out.push((key, a));
                }
            }
        }
    }
}

fn any_value(v: &serde_json::Value) -> Option<AnyValue> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => AnyValue::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => AnyValue::Int(i),
            None => AnyValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => AnyValue::String(s.clone().into()),
        J::Array(a) => AnyValue::ListAny(Box::new(a.iter().filter_map(any_value).collect())),
        J::Object(o) => AnyValue::Map(Box::new(
            o.iter()
                .filter_map(|(k, v)| Some((k.clone().into(), any_value(v)?)))
                .collect(),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(kv: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| kv.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn export_is_off_without_an_endpoint_or_when_the_sdk_is_disabled() {
        assert!(OtlpConfig::from_vars(vars(&[])).unwrap().is_none());
        assert!(OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]))
        .unwrap()
        .is_none());
    }

    #[test]
    fn standard_variables_choose_protocol_endpoints_headers_and_resource() {
        let c = OtlpConfig::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "http://127.0.0.9:9/logs",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=a%3Db, other = c "),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.traces_endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.metrics_endpoint, "http://127.0.0.1:4318/v1/metrics");
        assert_eq!(c.logs_endpoint, "http://127.0.0.9:9/logs");
        assert_eq!(
            c.headers,
            [("x-key".into(), "a=b".into()), ("other".into(), "c".into())]
        );
        assert_eq!(
            c.resource,
            [("deployment.environment".into(), "prod".into())]
        );
        assert_eq!(c.span_queue, 10);
        let g = OtlpConfig::from_vars(vars(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4317",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(g.protocol, Protocol::Grpc);
        assert_eq!(g.traces_endpoint, "http://127.0.0.1:4317");
        assert_eq!(g.metrics_endpoint, "http://localhost:4317");
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named_and_no_secret_shown() {
        let e = |kv: &[(&str, &str)]| OtlpConfig::from_vars(vars(kv)).unwrap_err().to_string();
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert!(e(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
            .contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let h = e(&[
            base,
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key-without-equals-s3cret",
            ),
        ]);
        assert!(h.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{h}");
        assert!(e(&[base, ("OTEL_METRIC_EXPORT_INTERVAL", "soon")])
            .contains("OTEL_METRIC_EXPORT_INTERVAL"));
        assert!(
            e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")]).contains("http://")
        );
    }

    #[test]
    fn event_fields_are_flattened_with_arrays_kept() {
        let v: serde_json::Value = serde_json::json!({
            "event.action": "deny", "destination": {"port": 443, "address": "127.0.0.3"},
            "boundary.destination.domains": ["a.example", "b.example"], "boundary.rule.id": null,
            "ratio": 0.5, "ok": true
        });
        let mut out = Vec::new();
        flatten("", v.as_object().unwrap(), &mut out);
        let get = |k: &str| out.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("destination.port"), Some(AnyValue::Int(443)));
        assert_eq!(
            get("boundary.destination.domains"),
            Some(AnyValue::ListAny(Box::new(vec![
                AnyValue::String("a.example".into()),
                AnyValue::String("b.example".into())
            ])))
        );
        assert_eq!(get("boundary.rule.id"), None);
        assert_eq!(get("ratio"), Some(AnyValue::Double(0.5)));
        assert_eq!(get("ok"), Some(AnyValue::Boolean(true)));
    }
}

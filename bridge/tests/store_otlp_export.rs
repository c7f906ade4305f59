//! OTLP export of recorded requests and of events (log records) to collector stand-ins on
//! loopback, over http/protobuf and gRPC: what they receive is decoded with the OTLP protobuf
//! definitions and checked for the GenAI semantic conventions.

mod otlp_support;
mod store_support;

use std::time::{Duration, Instant};

use bridge::pricing::PricingTable;
use bridge::record::{Outcome, Provider};
use bridge::recorder::Recorder;
use bridge::store::Store;
use bridge::telemetry::otlp::{OtlpConfig, Protocol};
use bridge::telemetry::Telemetry;
use chrono::Utc;
use otlp_support::{attr, collector, grpc_collector, items, stalled_collector, Received};
use serde_json::Value;
use store_support::{record, TempDir};

fn config(protocol: Protocol, endpoint: &str) -> OtlpConfig {
    let mut c = OtlpConfig::new(protocol, endpoint);
    c.headers = vec![("x-api-key".into(), "collector-secret".into())];
    c.metric_interval = Duration::from_secs(3600);
    c
}

#[tokio::test]
async fn recorded_requests_are_exported_as_otlp_genai_spans_and_metrics_over_http_protobuf() {
    let (endpoint, received) = collector().await;
    export_and_check(config(Protocol::HttpProtobuf, &endpoint), received, true).await;
}

// Multi-threaded: tonic's server answers while the SDK's flush waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_requests_are_exported_as_otlp_genai_spans_and_metrics_over_grpc() {
    let (endpoint, received) = grpc_collector().await;
    export_and_check(config(Protocol::Grpc, &endpoint), received, false).await;
}

async fn export_and_check(config: OtlpConfig, received: Received, http: bool) {
    let dir = TempDir::new("otlp");
    let store = Store::open(dir.path().join("bridge.db").to_str().unwrap())
        .await
        .unwrap();
    let telemetry = Telemetry::with_otlp("bridge-test", config).unwrap();
    let rec = Recorder::start(
        store,
        PricingTable::default(),
        dir.path().join("spool"),
        telemetry,
    )
    .unwrap();
    let ok = record(
        "alice",
        Provider::Anthropic,
        "claude-sonnet-4",
        Utc::now(),
        1200,
        300,
    );
    let mut failed = record("bob", Provider::Openai, "gpt-4o", Utc::now(), 10, 0);
    failed.outcome = Outcome::UpstreamError;
    failed.status = 429;
    failed.error = Some("rate_limit_error".into());
    rec.record(ok.clone());
    rec.record(failed);
    rec.shutdown().await; // flushes telemetry too

    let got = received.lock().unwrap().clone();
    let (_, headers, traces) = got
        .iter()
        .find(|(p, _, _)| p == "/v1/traces")
        .expect("a trace export");
    assert!(headers.contains(&("x-api-key".into(), "collector-secret".into())));
    if http {
        assert!(headers.contains(&("content-type".into(), "application/x-protobuf".into())));
    } else {
        assert!(headers.contains(&("content-type".into(), "application/grpc".into())));
    }
    let rs = &traces["resourceSpans"][0];
    assert_eq!(
        attr(&rs["resource"]["attributes"], "service.name").unwrap()["stringValue"],
        "bridge-test"
    );
    // The exporter batches by time too, so the spans may come in more than one request.
    let spans: Vec<Value> = items(&got, "/v1/traces");
    assert_eq!(spans.len(), 2);
    let span = spans
        .iter()
        .find(|s| s["name"] == "chat claude-sonnet-4")
        .unwrap();
    assert_eq!(span["kind"], 3);
    assert_eq!(
        span["traceId"].as_str().unwrap(),
        ok.id.simple().to_string()
    );
    let a = &span["attributes"];
    assert_eq!(
        attr(a, "gen_ai.system").unwrap()["stringValue"],
        "anthropic"
    );
    assert_eq!(
        attr(a, "gen_ai.request.model").unwrap()["stringValue"],
        "claude-sonnet-4"
    );
    assert_eq!(
        attr(a, "gen_ai.usage.input_tokens").unwrap()["intValue"],
        "1200"
    );
    assert_eq!(
        attr(a, "gen_ai.usage.output_tokens").unwrap()["intValue"],
        "300"
    );
    assert_eq!(attr(a, "enduser.id").unwrap()["stringValue"], "alice");
    assert!(
        attr(a, "bridge.cost_usd").unwrap()["doubleValue"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        attr(a, "prompt").is_none() && !span.to_string().contains("weather in Paris"),
        "prompts are not exported"
    );
    let bad = spans.iter().find(|s| s["name"] == "chat gpt-4o").unwrap();
    assert_eq!(bad["status"]["code"], 2);
    assert_eq!(
        attr(&bad["attributes"], "error.type").unwrap()["stringValue"],
        "upstream_error"
    );

    // Metrics are cumulative: the last export has everything.
    let (_, _, metrics) = got
        .iter()
        .rev()
        .find(|(p, _, _)| p == "/v1/metrics")
        .expect("a metric export");
    let ms = metrics["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap();
    let tokens = ms
        .iter()
        .find(|m| m["name"] == "gen_ai.client.token.usage")
        .unwrap();
    assert_eq!(tokens["unit"], "{token}");
    let points = tokens["histogram"]["dataPoints"].as_array().unwrap();
    let input = points
        .iter()
        .find(|p| {
            attr(&p["attributes"], "gen_ai.token.type").unwrap()["stringValue"] == "input"
                && attr(&p["attributes"], "gen_ai.system").unwrap()["stringValue"] == "anthropic"
        })
        .unwrap();
    assert_eq!(input["count"], "1");
    assert_eq!(input["sum"], 1200.0);
    let buckets = input["bucketCounts"].as_array().unwrap();
    assert_eq!(
        buckets.len(),
        input["explicitBounds"].as_array().unwrap().len() + 1
    );
    let duration = ms
        .iter()
        .find(|m| m["name"] == "gen_ai.client.operation.duration")
        .unwrap();
    assert_eq!(duration["unit"], "s");
    let dp = duration["histogram"]["dataPoints"].as_array().unwrap();
    assert_eq!(dp.len(), 2);
    assert!(dp
        .iter()
        .any(|p| attr(&p["attributes"], "error.type").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_costs_a_bounded_span_queue_and_the_spans_beyond_it_are_dropped_and_counted(
) {
    use bridge::telemetry::otlp::{SPAN_BATCH, SPAN_QUEUE};
    let mut config = OtlpConfig::new(Protocol::HttpProtobuf, &stalled_collector().await);
    config.timeout = Duration::from_secs(5);
    let telemetry = Telemetry::with_otlp("bridge-test", config).unwrap();
    let n = SPAN_QUEUE + SPAN_BATCH + 2000;
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let r = record(
            &format!("user-{i}"),
            Provider::Anthropic,
            "claude-sonnet-4",
            Utc::now(),
            10,
            1,
        );
        let started = Instant::now();
        telemetry.observe_record(&r);
        slowest = slowest.max(started.elapsed());
    }
    // The exporter holds at most the queue (the batch being sent counts in it); the rest is
    // dropped at once, not queued, and counted.
    let dropped = telemetry.otlp_spans_dropped_total().unwrap() as usize;
    assert!(
        (n - SPAN_QUEUE - SPAN_BATCH..=n - SPAN_QUEUE).contains(&dropped),
        "{dropped} of {n} spans dropped; expected all but the queue ({SPAN_QUEUE}) and at most one batch ({SPAN_BATCH})"
    );
    // Nothing waited for the collector: no observation came near the export timeout (5 s).
    assert!(
        slowest < Duration::from_millis(500),
        "slowest observation {slowest:?}"
    );
    let metrics = telemetry.render_prometheus();
    assert!(
        metrics.contains(&format!("\nbridge_otlp_spans_dropped_total {dropped}\n")),
        "{metrics}"
    );
}

/// A Boundary decision event as the control plane stores it.
fn boundary_event() -> serde_json::Map<String, Value> {
    serde_json::json!({
        "event.name": "boundary.decision",
        "event.action": "deny",
        "boundary.hook": "connect4",
        "destination.address": "127.0.0.3",
        "destination.port": 18080,
        "boundary.destination.domains": ["api.example", "cdn.example"],
        "boundary.rule.id": null,
        "process": {"pid": 17629, "executable.name": "curl"},
        "session.id": "9f4fb5ea-0000-4000-8000-000000000001",
    })
    .as_object()
    .unwrap()
    .clone()
}

async fn events_leave_as_log_records(config: OtlpConfig, received: Received) {
    let telemetry = Telemetry::with_otlp("bridge-test", config).unwrap();
    assert!(telemetry.otlp_enabled() && !Telemetry::metrics_only("off").otlp_enabled());
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T08:39:30.562212947Z")
        .unwrap()
        .with_timezone(&Utc);
    telemetry.emit_log("boundary.decision", at, &boundary_event());
    telemetry.emit_log("boundary.session.end", at, &serde_json::Map::new());
    telemetry.flush().await;
    let got = received.lock().unwrap().clone();
    assert!(got
        .iter()
        .filter(|(p, _, _)| p == "/v1/logs")
        .all(|(_, h, _)| h.contains(&("x-api-key".into(), "collector-secret".into()))));
    let (_, _, first) = got
        .iter()
        .find(|(p, _, _)| p == "/v1/logs")
        .expect("a log export");
    assert_eq!(
        attr(
            &first["resourceLogs"][0]["resource"]["attributes"],
            "service.name"
        )
        .unwrap()["stringValue"],
        "bridge-test"
    );
    let logs = items(&got, "/v1/logs");
    assert_eq!(logs.len(), 2, "{logs:?}");
    let deny = logs
        .iter()
        .find(|l| l["body"]["stringValue"] == "boundary.decision")
        .expect("the decision event");
    assert_eq!(deny["eventName"], "boundary.decision");
    assert_eq!(
        deny["timeUnixNano"].to_string().trim_matches('"'),
        at.timestamp_nanos_opt().unwrap().to_string()
    );
    let a = &deny["attributes"];
    assert_eq!(attr(a, "event.action").unwrap()["stringValue"], "deny");
    assert_eq!(attr(a, "destination.port").unwrap()["intValue"], "18080");
    assert_eq!(attr(a, "process.pid").unwrap()["intValue"], "17629");
    assert_eq!(
        attr(a, "process.executable.name").unwrap()["stringValue"],
        "curl"
    );
    let domains = &attr(a, "boundary.destination.domains").unwrap()["arrayValue"]["values"];
    assert_eq!(
        domains,
        &serde_json::json!([{"stringValue": "api.example"}, {"stringValue": "cdn.example"}])
    );
    assert!(attr(a, "boundary.rule.id").is_none(), "nulls are left out");
    assert_eq!(telemetry.otlp_logs_dropped_total(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_exported_as_otlp_log_records_over_http_protobuf() {
    let (endpoint, received) = collector().await;
    events_leave_as_log_records(config(Protocol::HttpProtobuf, &endpoint), received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_exported_as_otlp_log_records_over_grpc() {
    let (endpoint, received) = grpc_collector().await;
    events_leave_as_log_records(config(Protocol::Grpc, &endpoint), received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_beyond_the_log_queue_of_a_stalled_collector_are_dropped_and_counted() {
    let mut config = OtlpConfig::new(Protocol::Grpc, &stalled_collector().await);
    config.timeout = Duration::from_secs(5);
    config.log_queue = 100;
    let telemetry = Telemetry::with_otlp("bridge-test", config).unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..1000 {
        let started = Instant::now();
        telemetry.emit_log("boundary.decision", Utc::now(), &boundary_event());
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest emit {slowest:?}"
    );
    // At most the queue (100) plus the one batch being sent (100) are held; the rest dropped.
    let dropped = telemetry.otlp_logs_dropped_total().unwrap();
    assert!((800..=900).contains(&dropped), "{dropped}");
    assert!(telemetry
        .render_prometheus()
        .contains(&format!("\nbridge_otlp_logs_dropped_total {dropped}\n")));
}

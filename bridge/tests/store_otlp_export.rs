//! OTLP export of recorded requests to a collector stand-in on loopback: the HTTP requests
//! it receives are parsed as OTLP/JSON and checked for the GenAI semantic conventions.

mod otlp_support;
mod store_support;

use std::time::Duration;

use bridge::pricing::PricingTable;
use bridge::record::{Outcome, Provider};
use bridge::recorder::Recorder;
use bridge::store::Store;
use bridge::telemetry::otlp::OtlpConfig;
use bridge::telemetry::Telemetry;
use chrono::Utc;
use otlp_support::{attr, collector};
use serde_json::Value;
use store_support::{record, TempDir};

#[tokio::test]
async fn recorded_requests_are_exported_as_otlp_genai_spans_and_metrics() {
    let (endpoint, received) = collector().await;
    let dir = TempDir::new("otlp");
    let store = Store::open(dir.path().join("bridge.db").to_str().unwrap())
        .await
        .unwrap();
    let config = OtlpConfig {
        endpoint,
        headers: vec![("x-api-key".into(), "collector-secret".into())],
        metric_interval: Duration::from_secs(3600),
    };
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
    assert!(headers.contains(&("content-type".into(), "application/json".into())));
    let rs = &traces["resourceSpans"][0];
    assert_eq!(
        attr(&rs["resource"]["attributes"], "service.name").unwrap()["stringValue"],
        "bridge-test"
    );
    // The exporter batches by time too, so the spans may come in more than one request.
    let spans: Vec<Value> = got
        .iter()
        .filter(|(p, _, _)| p == "/v1/traces")
        .flat_map(|(_, _, t)| {
            t["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
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

/// A collector that accepts connections and reads nothing, answers nothing: a stalled one.
async fn stalled_collector() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_costs_a_bounded_span_queue_and_the_spans_beyond_it_are_dropped_and_counted(
) {
    use bridge::telemetry::otlp::{SPAN_BATCH, SPAN_QUEUE};
    let config = OtlpConfig {
        endpoint: stalled_collector().await,
        headers: vec![],
        metric_interval: Duration::from_secs(3600),
    };
    let telemetry = Telemetry::with_otlp("bridge-test", config).unwrap();
    let n = SPAN_QUEUE + SPAN_BATCH + 2000;
    for i in 0..n {
        let r = record(
            &format!("user-{i}"),
            Provider::Anthropic,
            "claude-sonnet-4",
            Utc::now(),
            10,
            1,
        );
        telemetry.observe_record(&r);
    }
    // The exporter holds at most the queue plus the one batch it is (not) sending; the rest
    // is dropped at once, not queued, and counted.
    let dropped = telemetry.otlp_spans_dropped_total().unwrap() as usize;
    assert!(
        (n - SPAN_QUEUE - SPAN_BATCH..=n - SPAN_QUEUE).contains(&dropped),
        "{dropped} of {n} spans dropped; expected all but the queue ({SPAN_QUEUE}) and at most one batch ({SPAN_BATCH})"
    );
    let metrics = telemetry.render_prometheus();
    assert!(
        metrics.contains(&format!("\nbridge_otlp_spans_dropped_total {dropped}\n")),
        "{metrics}"
    );
}

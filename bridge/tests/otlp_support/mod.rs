//! OTLP collector stand-ins on loopback, for the export tests: one takes OTLP/HTTP with
//! protobuf bodies, the other OTLP/gRPC. Both decode what they receive with the OTLP protobuf
//! definitions (`opentelemetry-proto`) and keep it as OTLP/JSON (the specification's JSON
//! mapping: camelCase names, 64-bit integers as strings, hex ids), so the tests read the same
//! either way.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_server::{LogsService, LogsServiceServer},
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_server::{MetricsService, MetricsServiceServer},
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// (signal path: `/v1/traces`, `/v1/metrics` or `/v1/logs`; headers or gRPC metadata, names
/// lower-case; the request as OTLP/JSON).
pub type Received = Arc<Mutex<Vec<Export>>>;

/// One export request: (signal path, headers, body as OTLP/JSON).
pub type Export = (String, Vec<(String, String)>, Value);

fn to_json(path: &str, body: &[u8]) -> Value {
    match path {
        "/v1/traces" => {
            serde_json::to_value(ExportTraceServiceRequest::decode(body).expect("trace protobuf"))
        }
        "/v1/metrics" => serde_json::to_value(
            ExportMetricsServiceRequest::decode(body).expect("metrics protobuf"),
        ),
        "/v1/logs" => {
            serde_json::to_value(ExportLogsServiceRequest::decode(body).expect("logs protobuf"))
        }
        other => panic!("unexpected OTLP path {other}"),
    }
    .unwrap()
}

/// Accepts OTLP/HTTP (protobuf) POSTs on 127.0.0.1; returns its base URL.
pub async fn collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let got = received.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let got = got.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    let mut headers = Vec::new();
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).await.unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        let (k, v) = h.split_once(':').unwrap();
                        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                        if k == "content-length" {
                            len = v.parse().unwrap();
                        }
                        headers.push((k, v));
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.unwrap();
                    let json = to_json(&path, &body);
                    got.lock().unwrap().push((path, headers, json));
                    // An empty Export*ServiceResponse is zero bytes of protobuf.
                    w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ncontent-type: application/x-protobuf\r\n\r\n")
                        .await
                        .unwrap();
                }
            });
        }
    });
    (format!("http://{addr}"), received)
}

#[derive(Clone)]
struct Grpc(Received);

impl Grpc {
    fn keep<T: serde::Serialize>(&self, path: &str, req: tonic::Request<T>) {
        let headers = req
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let json = serde_json::to_value(req.into_inner()).unwrap();
        self.0.lock().unwrap().push((path.into(), headers, json));
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep("/v1/traces", req);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.keep("/v1/metrics", req);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.keep("/v1/logs", req);
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector (trace, metrics and logs services) on 127.0.0.1; returns its URL.
pub async fn grpc_collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let sink = Grpc(received.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .add_service(MetricsServiceServer::new(sink.clone()))
            .add_service(LogsServiceServer::new(sink))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (format!("http://{addr}"), received)
}

/// A collector that accepts connections and never answers: a stalled one.
pub async fn stalled_collector() -> String {
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

pub fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// Every item of one signal across the received requests: `("/v1/traces", "spans")`,
/// `("/v1/logs", "logRecords")`, `("/v1/metrics", "metrics")`.
pub fn items(got: &[Export], path: &str) -> Vec<Value> {
    let (outer, scoped, list) = match path {
        "/v1/traces" => ("resourceSpans", "scopeSpans", "spans"),
        "/v1/logs" => ("resourceLogs", "scopeLogs", "logRecords"),
        _ => ("resourceMetrics", "scopeMetrics", "metrics"),
    };
    got.iter()
        .filter(|(p, _, _)| p == path)
        .flat_map(|(_, _, body)| {
            body[outer]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r[scoped].as_array().into_iter().flatten())
                .flat_map(|s| s[list].as_array().into_iter().flatten())
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

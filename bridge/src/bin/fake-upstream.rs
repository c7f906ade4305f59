//! `fake-upstream`: a local stand-in for api.anthropic.com, api.openai.com and
//! generativelanguage.googleapis.com, for tests, benchmarks and demos. It speaks the real wire
//! formats (JSON and SSE) of Anthropic Messages (+ count_tokens), OpenAI Chat Completions,
//! OpenAI Responses and the models list, and Gemini's `generateContent`,
//! `streamGenerateContent` (SSE with `?alt=sse`, else a JSON array), `countTokens` and models
//! list, so the
//! official SDKs parse its answers, and it only answers requests carrying the server-side key
//! it was given, which proves the bridge swapped the user's token for the provider key.
//!
//! Steering, per request:
//! - a last user prompt mentioning "weather" (with tools offered) → a tool call with
//!   arguments `{"city": "Paris"}` to the first tool offered;
//! - `x-fake-delay-ms: N` → N ms between stream events;
//! - `x-fake-hold-ms: N` → N ms pause after the first stream event;
//! - `x-fake-error: overloaded` (Anthropic 529 `overloaded_error`, OpenAI and Gemini 503),
//!   `x-fake-error:
//!   <status>` (that status), `x-fake-error: mid-stream` (an error event after the first text),
//!   `x-fake-error: disconnect` (a stream whose connection is cut after half of its events);
//! - `x-fake-cached-tokens: READ[,WRITE]` → usage reports READ prompt-cache hits (and, for
//!   Anthropic, WRITE cache-creation tokens), in each provider's own fields;
//! - `x-fake-misbehave` (any route, to test how the bridge copes with a broken upstream):
//!   `hang` (reads the request, never answers), `slow-headers:MS` (answers normally after MS
//!   ms), `huge-line:MB` (an SSE stream whose second line is MB megabytes long, produced on the
//!   fly), `garbage` (a 200 `text/event-stream` of bytes that are not SSE, then the end),
//!   `never-ending` (one `message_start` event, then a comment line every 100 ms, forever).
//!
//! `GET /fake/stats` answers `{"requests": N}`, the number of requests received so far, so
//! tests can check that every request that reached the provider was recorded.
//!
//! `POST /fake/keys` `{"key": K, "answer": "ok"}` accepts provider key K too (on every route,
//! as if it were the configured key), `{"key": K, "answer": 429, "retry_after": S}` makes
//! every request carrying K get that status (429 and 529 in the provider's rate-limit or
//! overload format, others as an API error; `retry-after: S` if given), and `{"key": K,
//! "answer": null}` forgets K: a switch for tests of provider key pools, flipped while the
//! bridge runs.
//!
//! Every response carries `x-fake-received-headers`, the names of the request headers that
//! reached it, so tests can check what the bridge forwarded and what it stripped, and
//! `x-fake-received-path` and `x-fake-received-query`, the path and query it was asked for (to
//! test upstream chaining and what the bridge keeps out of URLs). Routes match
//! by suffix (`.../v1/messages`), so it also stands in for a gateway mounted under a prefix.
//!
//! With `--tls-cert` and `--tls-key` (PEM files) it speaks HTTPS instead of plain HTTP, as the
//! real providers do, so tests can check how the bridge verifies an upstream's certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(
    name = "fake-upstream",
    about = "Local fake of the Anthropic, OpenAI and Gemini APIs"
)]
struct Args {
    /// Address to listen on (loopback only is sensible).
    #[arg(long, default_value = "127.0.0.1:9900")]
    listen: SocketAddr,
    /// The only `x-api-key` accepted on Anthropic routes.
    #[arg(
        long,
        env = "FAKE_ANTHROPIC_KEY",
        default_value = "sk-ant-fake-upstream-key"
    )]
    anthropic_key: String,
    /// The only `Authorization: Bearer` key accepted on OpenAI routes.
    #[arg(
        long,
        env = "FAKE_OPENAI_KEY",
        default_value = "sk-openai-fake-upstream-key"
    )]
    openai_key: String,
    /// A provider key that is always rate-limited: requests carrying it (as `x-api-key` or
    /// `Authorization: Bearer`) get a 429 with `retry-after: 30` in the provider's format
    /// (for testing key pools); repeatable.
    #[arg(long)]
    throttled_key: Vec<String>,
    /// The only `x-goog-api-key` (or `?key=`) accepted on Gemini routes.
    #[arg(
        long,
        env = "FAKE_GEMINI_KEY",
        default_value = "fake-gemini-upstream-key"
    )]
    gemini_key: String,
    /// PEM certificate chain: serve HTTPS with it (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// The TLS acceptor for `--tls-cert`/`--tls-key`.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

struct Keys {
    anthropic: String,
    openai: String,
    throttled: Vec<String>,
    gemini: String,
}

static IDS: AtomicU64 = AtomicU64::new(1);

fn next_id(prefix: &str) -> String {
    format!("{prefix}{:020}", IDS.fetch_add(1, Ordering::Relaxed))
}

/// A response body fed by a task through a channel, so events leave as they are produced. An
/// `Err` item makes hyper abort the connection mid-body (`x-fake-error: disconnect`).
struct ChannelBody(mpsc::Receiver<std::io::Result<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

enum FakeBody {
    Full(Option<Bytes>),
    Stream(ChannelBody),
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            FakeBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }
}

/// How the request asked the fake to behave.
struct Steering {
    delay: Duration,
    hold: Duration,
    error: Option<String>,
    /// Prompt-cache tokens to report: (read, write).
    cached: (u64, u64),
    received: String,
}

impl Steering {
    fn from(headers: &HeaderMap) -> Steering {
        let ms = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or_default()
        };
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        Steering {
            delay: ms("x-fake-delay-ms"),
            hold: ms("x-fake-hold-ms"),
            error: headers
                .get("x-fake-error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            received: names.join(","),
            cached: headers
                .get("x-fake-cached-tokens")
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    let mut n = v.split(',').map(|p| p.trim().parse::<u64>().unwrap_or(0));
                    (n.next().unwrap_or(0), n.next().unwrap_or(0))
                })
                .unwrap_or_default(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys: &'static Keys = Box::leak(Box::new(Keys {
        anthropic: args.anthropic_key,
        openai: args.openai_key,
        throttled: args.throttled_key,
        gemini: args.gemini_key,
    }));
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "fake-upstream listening on {} ({})",
        listener.local_addr()?,
        if tls.is_some() { "https" } else { "http" }
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(stream, keys).await,
                    // A client that refuses our certificate ends here; say so for the test log.
                    Err(e) => eprintln!("fake-upstream: TLS handshake failed: {e}"),
                },
                None => serve_connection(stream, keys).await,
            }
        });
    }
}

async fn serve_connection<S>(stream: S, keys: &'static Keys)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| async move { Ok::<_, Infallible>(handle(req, keys).await) });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// The 429 a `--throttled-key` gets, in the format of the route's provider.
fn throttled(req: &Request<Incoming>, keys: &Keys) -> Option<Response<FakeBody>> {
    let h = req.headers();
    let key = h
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            h.get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })?;
    if !keys.throttled.iter().any(|k| k == key) {
        return None;
    }
    let mut r = if req.uri().path().starts_with("/v1/messages") {
        anthropic_error(
            429,
            "rate_limit_error",
            "rate limited (fake upstream, throttled key)",
        )
    } else {
        openai_error(
            429,
            "requests",
            Some("rate_limit_exceeded"),
            "rate limited (fake upstream, throttled key)",
        )
    };
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("30"));
    Some(r)
}

/// A response that misbehaves as `x-fake-misbehave` asks, or `None` to answer normally.
async fn misbehave(how: &str) -> Option<Response<FakeBody>> {
    let (kind, arg) = how.split_once(':').unwrap_or((how, ""));
    let n = arg.parse::<u64>().unwrap_or(0);
    let stream = |rx| {
        let mut r = Response::new(FakeBody::Stream(ChannelBody(rx)));
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        r
    };
    match kind {
        "hang" => std::future::pending().await,
        "huge-line" => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let start = json!({"type": "message_start", "message": {"id": "msg_huge",
                    "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                    "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}});
                let _ = tx
                    .send(Ok(Bytes::from(format!(
                        "event: message_start\ndata: {start}\n\nevent: content_block_delta\ndata: "
                    ))))
                    .await;
                let piece = Bytes::from(vec![b'x'; 64 * 1024]);
                for _ in 0..n * 16 {
                    if tx.send(Ok(piece.clone())).await.is_err() {
                        return;
                    }
                }
                let end = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 3}});
                let _ = tx
                    .send(Ok(Bytes::from(format!(
                        "\n\nevent: message_delta\ndata: {end}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
                    ))))
                    .await;
            });
            Some(stream(rx))
        }
        "garbage" => {
            let (tx, rx) = mpsc::channel(4);
            let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
            let _ = tx.try_send(Ok(Bytes::from(junk)));
            Some(stream(rx))
        }
        "never-ending" => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let start = json!({"type": "message_start", "message": {"id": "msg_forever",
                    "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                    "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}});
                let first = format!("event: message_start\ndata: {start}\n\n");
                if tx.send(Ok(Bytes::from(first))).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if tx
                        .send(Ok(Bytes::from_static(b": ping\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Some(stream(rx))
        }
        _ => None,
    }
}

/// Requests received (other than `GET /fake/stats`, which reports this count as JSON).
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// What a key switched with `POST /fake/keys` gets.
#[derive(Clone, Copy)]
enum KeyAnswer {
    /// Accepted as the configured key.
    Ok,
    /// This status, with `retry-after` seconds if given.
    Status(u16, Option<u64>),
}

/// Keys switched with `POST /fake/keys`.
static KEY_SWITCHES: std::sync::Mutex<Vec<(String, KeyAnswer)>> = std::sync::Mutex::new(Vec::new());

/// The provider key a request carries (`x-api-key`, `x-goog-api-key` or `Authorization: Bearer`).
fn request_key(h: &HeaderMap) -> Option<&str> {
    h.get("x-api-key")
        .or_else(|| h.get("x-goog-api-key"))
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            h.get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
}

/// `POST /fake/keys`: sets or clears one key's switch.
async fn switch_key(req: Request<Incoming>) -> Response<FakeBody> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let v: Value = match body.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(v) => v,
        None => return json_response(400, json!({"error": "body: JSON expected"}), "request-id"),
    };
    let Some(key) = v["key"].as_str().map(str::to_owned) else {
        return json_response(400, json!({"error": "`key` expected"}), "request-id");
    };
    let answer = match &v["answer"] {
        Value::Null => None,
        Value::String(s) if s == "ok" => Some(KeyAnswer::Ok),
        Value::Number(n) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(status @ 400..=599) => Some(KeyAnswer::Status(status, v["retry_after"].as_u64())),
            _ => {
                return json_response(
                    400,
                    json!({"error": "`answer`: a 4xx or 5xx status"}),
                    "request-id",
                )
            }
        },
        _ => {
            return json_response(
                400,
                json!({"error": "`answer`: \"ok\", a status or null"}),
                "request-id",
            )
        }
    };
    let mut switches = KEY_SWITCHES.lock().unwrap_or_else(|p| p.into_inner());
    switches.retain(|(k, _)| *k != key);
    if let Some(a) = answer {
        switches.push((key, a));
    }
    json_response(200, json!({"keys": switches.len()}), "request-id")
}

/// The switch of the key a request carries, if it has one.
fn key_switch(req: &Request<Incoming>) -> Option<KeyAnswer> {
    let key = request_key(req.headers())?;
    let switches = KEY_SWITCHES.lock().unwrap_or_else(|p| p.into_inner());
    switches.iter().find(|(k, _)| k == key).map(|(_, a)| *a)
}

/// The error a switched key gets, in the format of the route's provider.
fn switched_key_error(req: &Request<Incoming>, answer: KeyAnswer) -> Option<Response<FakeBody>> {
    match answer {
        KeyAnswer::Ok => None,
        KeyAnswer::Status(status, retry_after) => {
            let anthropic = req.uri().path().ends_with("/v1/messages");
            let mut r = match (status, anthropic) {
                (429, true) => anthropic_error(
                    429,
                    "rate_limit_error",
                    "rate limited (fake upstream, switched key)",
                ),
                (529, true) => anthropic_error(
                    529,
                    "overloaded_error",
                    "overloaded (fake upstream, switched key)",
                ),
                (_, true) => {
                    anthropic_error(status, "api_error", "failing (fake upstream, switched key)")
                }
                (429, false) => openai_error(
                    429,
                    "requests",
                    Some("rate_limit_exceeded"),
                    "rate limited (fake upstream, switched key)",
                ),
                (_, false) => openai_error(
                    status,
                    "server_error",
                    None,
                    "failing (fake upstream, switched key)",
                ),
            };
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from(s));
            }
            Some(r)
        }
    }
}

async fn handle(req: Request<Incoming>, keys: &Keys) -> Response<FakeBody> {
    if req.uri().path() == "/fake/stats" {
        let n = RECEIVED.load(Ordering::SeqCst);
        return json_response(200, json!({ "requests": n }), "request-id");
    }
    if req.uri().path() == "/fake/keys" && req.method() == Method::POST {
        return switch_key(req).await;
    }
    RECEIVED.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = throttled(&req, keys) {
        return r;
    }
    let switched = key_switch(&req);
    if let Some(r) = switched.and_then(|a| switched_key_error(&req, a)) {
        return r;
    }
    let accepted_switched_key = matches!(switched, Some(KeyAnswer::Ok));
    if let Some(how) = req
        .headers()
        .get("x-fake-misbehave")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        if let Some(ms) = how.strip_prefix("slow-headers:") {
            let ms = ms.parse::<u64>().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else {
            // Read the request first, as a real upstream would before misbehaving.
            let (_, body) = req.into_parts();
            let _ = body.collect().await;
            return match misbehave(&how).await {
                Some(r) => r,
                None => anthropic_error(400, "invalid_request_error", "unknown x-fake-misbehave"),
            };
        }
    }
    let steering = Steering::from(req.headers());
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let method = req.method().clone();
    let mut headers = req.headers().clone();
    if accepted_switched_key {
        // Answered as if it were the configured key of the route's provider.
        for (name, value) in [
            ("x-api-key", keys.anthropic.clone()),
            ("x-goog-api-key", keys.gemini.clone()),
            ("authorization", format!("Bearer {}", keys.openai)),
        ] {
            if headers.contains_key(name) {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
        }
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut resp = if path.starts_with("/v1/messages") || path.contains("/anthropic/") {
        anthropic(&method, &path, &headers, &body, keys, &steering)
    } else if is_gemini(&path, &query, &headers) {
        gemini(&method, &path, &query, &headers, &body, keys, &steering)
    } else {
        openai(&method, &path, &headers, &body, keys, &steering)
    };
    if let Ok(v) = HeaderValue::from_str(&steering.received) {
        resp.headers_mut().insert("x-fake-received-headers", v);
    }
    if let Ok(v) = HeaderValue::from_str(&path) {
        resp.headers_mut().insert("x-fake-received-path", v);
    }
    if let Ok(v) = HeaderValue::from_str(&query) {
        resp.headers_mut().insert("x-fake-received-query", v);
    }
    resp
}

fn json_response(status: u16, v: Value, request_id_header: &'static str) -> Response<FakeBody> {
    let mut r = Response::new(FakeBody::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(id) = HeaderValue::from_str(&next_id("req_")) {
        r.headers_mut().insert(request_id_header, id);
    }
    r
}

/// Starts an SSE response whose events are produced by `events` with the steering's pauses.
fn sse_response(
    events: Vec<Bytes>,
    steering: &Steering,
    request_id_header: &'static str,
) -> Response<FakeBody> {
    let (tx, rx) = mpsc::channel(16);
    let (delay, hold) = (steering.delay, steering.hold);
    let cut_after = (steering.error.as_deref() == Some("disconnect")).then_some(events.len() / 2);
    tokio::spawn(async move {
        for (i, ev) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if cut_after == Some(i) {
                // Let hyper flush what was sent (it drops unflushed bytes on a body error), as
                // a real upstream that dies mid-answer has already put its earlier events on
                // the wire.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let cut = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "fake cut");
                let _ = tx.send(Err(cut)).await;
                return;
            }
            if tx.send(Ok(ev)).await.is_err() {
                return; // the client went away
            }
            if i == 0 && !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
        }
    });
    let mut r = Response::new(FakeBody::Stream(ChannelBody(rx)));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(id) = HeaderValue::from_str(&next_id("req_")) {
        h.insert(request_id_header, id);
    }
    r
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(e) => Bytes::from(format!("event: {e}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

/// The text of the last user message (string content or text parts of any type).
fn last_user_text(messages: Option<&Value>) -> String {
    let Some(msgs) = messages.and_then(Value::as_array) else {
        return messages
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
    };
    for m in msgs.iter().rev() {
        if m.get("role").and_then(Value::as_str) != Some("user") {
            continue;
        }
        match m.get("content") {
            Some(Value::String(s)) => return s.clone(),
            Some(Value::Array(parts)) => {
                let t: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                if !t.is_empty() {
                    return t.join("\n");
                }
            }
            _ => {}
        }
    }
    String::new()
}

/// The reply text, and the words it is streamed in.
fn reply_for(prompt: &str) -> (String, Vec<String>) {
    let short: String = prompt.chars().take(60).collect();
    let text = format!("Hello from the fake upstream. You said: {short}");
    let mut pieces: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
    if pieces.is_empty() {
        pieces.push(text.clone());
    }
    (text, pieces)
}

/// Token counts the fake reports: deterministic, roughly 4 bytes per token.
fn input_tokens(body: &Bytes) -> u64 {
    (body.len() as u64 / 4).max(1)
}

fn wants_tool(prompt: &str, tools: &[String]) -> Option<String> {
    (prompt.to_lowercase().contains("weather") && !tools.is_empty()).then(|| tools[0].clone())
}

const TOOL_ARGS: &str = r#"{"city": "Paris"}"#;

// ---------------------------------------------------------------------------------------------
// Anthropic

fn anthropic_error(status: u16, ty: &str, message: &str) -> Response<FakeBody> {
    json_response(
        status,
        json!({"type": "error", "error": {"type": ty, "message": message}}),
        "request-id",
    )
}

fn anthropic(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
    keys: &Keys,
    steering: &Steering,
) -> Response<FakeBody> {
    let key_ok = headers
        .get("x-api-key")
        .is_some_and(|v| v.as_bytes() == keys.anthropic.as_bytes());
    if !key_ok {
        return anthropic_error(
            401,
            "authentication_error",
            "invalid x-api-key (fake upstream)",
        );
    }
    if headers.get("anthropic-version").is_none() {
        return anthropic_error(
            400,
            "invalid_request_error",
            "anthropic-version header is required",
        );
    }
    if method != Method::POST {
        return anthropic_error(405, "invalid_request_error", "method not allowed");
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return anthropic_error(400, "invalid_request_error", "body is not JSON");
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("claude-sonnet-4-5")
        .to_owned();
    match steering.error.as_deref() {
        Some("overloaded") | Some("529") => {
            return anthropic_error(529, "overloaded_error", "Overloaded")
        }
        Some(s) if s.parse::<u16>().is_ok() => {
            return anthropic_error(s.parse().unwrap_or(500), "api_error", "fake upstream error")
        }
        _ => {}
    }
    let input = input_tokens(body);
    if path.ends_with("/count_tokens") {
        return json_response(200, json!({"input_tokens": input}), "request-id");
    }
    if !path.ends_with("/v1/messages") {
        return anthropic_error(404, "not_found_error", "unknown path");
    }
    let prompt = last_user_text(req.get("messages"));
    let tools: Vec<String> = req
        .get("tools")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let tool = wants_tool(&prompt, &tools);
    let (text, pieces) = reply_for(&prompt);
    let output = pieces.len() as u64 + if tool.is_some() { 12 } else { 0 };
    let msg_id = next_id("msg_");
    let tool_id = next_id("toolu_");
    let stop_reason = if tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let (cache_read, cache_write) = steering.cached;
    let usage = json!({"input_tokens": input, "output_tokens": output,
                       "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read});

    if !stream {
        let mut content = vec![json!({"type": "text", "text": text})];
        if let Some(name) = &tool {
            let args: Value = serde_json::from_str(TOOL_ARGS).unwrap_or(Value::Null);
            content.push(json!({"type": "tool_use", "id": tool_id, "name": name, "input": args}));
        }
        return json_response(
            200,
            json!({"id": msg_id, "type": "message", "role": "assistant", "model": model,
                   "content": content, "stop_reason": stop_reason, "stop_sequence": null,
                   "usage": usage}),
            "request-id",
        );
    }

    let mut ev = Vec::new();
    ev.push(sse(
        Some("message_start"),
        &json!({"type": "message_start", "message": {"id": msg_id, "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1,
            "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read}}}),
    ));
    ev.push(sse(
        Some("content_block_start"),
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    ev.push(sse(Some("ping"), &json!({"type": "ping"})));
    for (i, p) in pieces.iter().enumerate() {
        ev.push(sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        ));
        if i == 0 && steering.error.as_deref() == Some("mid-stream") {
            ev.push(sse(
                Some("error"),
                &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            return sse_response(ev, steering, "request-id");
        }
    }
    ev.push(sse(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    if let Some(name) = &tool {
        ev.push(sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 1, "content_block":
                {"type": "tool_use", "id": tool_id, "name": name, "input": {}}}),
        ));
        let (a, b) = TOOL_ARGS.split_at(9);
        for part in [a, b] {
            ev.push(sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        ev.push(sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    ev.push(sse(
        Some("message_delta"),
        &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": output}}),
    ));
    ev.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    sse_response(ev, steering, "request-id")
}

// ---------------------------------------------------------------------------------------------
// OpenAI

fn openai_error(status: u16, ty: &str, code: Option<&str>, message: &str) -> Response<FakeBody> {
    json_response(
        status,
        json!({"error": {"message": message, "type": ty, "param": null, "code": code}}),
        "x-request-id",
    )
}

fn openai(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
    keys: &Keys,
    steering: &Steering,
) -> Response<FakeBody> {
    let expected = format!("Bearer {}", keys.openai);
    let key_ok = headers
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !key_ok {
        return openai_error(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided (fake upstream)",
        );
    }
    match steering.error.as_deref() {
        Some("overloaded") => {
            return openai_error(503, "server_error", None, "The server is overloaded")
        }
        Some(s) if s.parse::<u16>().is_ok() => {
            return openai_error(
                s.parse().unwrap_or(500),
                "server_error",
                None,
                "fake upstream error",
            )
        }
        _ => {}
    }
    if method == Method::GET && path.ends_with("/v1/models") {
        let data: Vec<Value> = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3"]
            .iter()
            .map(|id| json!({"id": id, "object": "model", "created": 1715367049, "owned_by": "openai"}))
            .collect();
        return json_response(200, json!({"object": "list", "data": data}), "x-request-id");
    }
    if method != Method::POST {
        return openai_error(404, "invalid_request_error", None, "unknown url");
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return openai_error(400, "invalid_request_error", None, "body is not JSON");
    };
    if path.ends_with("/v1/chat/completions") {
        chat(&req, body, steering)
    } else if path.ends_with("/v1/responses") {
        responses(&req, body, steering)
    } else {
        openai_error(404, "invalid_request_error", None, "unknown url")
    }
}

fn tool_names(req: &Value, nested: bool) -> Vec<String> {
    req.get("tools")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(|t| {
                    let n = if nested {
                        t.get("function").and_then(|f| f.get("name"))
                    } else {
                        t.get("name")
                    };
                    n.and_then(Value::as_str).map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn chat(req: &Value, body: &Bytes, steering: &Steering) -> Response<FakeBody> {
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("gpt-4o")
        .to_owned();
    let prompt = last_user_text(req.get("messages"));
    let tool = wants_tool(&prompt, &tool_names(req, true));
    let (text, pieces) = reply_for(&prompt);
    // OpenAI counts cached prompt tokens inside `prompt_tokens`.
    let cached = steering.cached.0;
    let input = input_tokens(body) + cached;
    let output = pieces.len() as u64 + if tool.is_some() { 12 } else { 0 };
    let usage = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}});
    let id = next_id("chatcmpl-");
    let call_id = next_id("call_");
    let created = now();
    let finish = if tool.is_some() { "tool_calls" } else { "stop" };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let mut message = json!({"role": "assistant", "content": text, "refusal": null});
        if let Some(name) = &tool {
            message["content"] = Value::Null;
            message["tool_calls"] = json!([{"id": call_id, "type": "function",
                "function": {"name": name, "arguments": TOOL_ARGS}}]);
        }
        return json_response(
            200,
            json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                   "usage": usage, "system_fingerprint": "fp_fake"}),
            "x-request-id",
        );
    }
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunk = |choices: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                           "model": model, "system_fingerprint": "fp_fake", "choices": choices});
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse(None, &c)
    };
    let mut ev = vec![chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": null, "finish_reason": null}]),
    )];
    if let Some(name) = &tool {
        ev.push(chunk(
            json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": call_id,
            "type": "function", "function": {"name": name, "arguments": ""}}]},
            "logprobs": null, "finish_reason": null}]),
        ));
        let (a, b) = TOOL_ARGS.split_at(9);
        for part in [a, b] {
            ev.push(chunk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0,
                "function": {"arguments": part}}]}, "logprobs": null, "finish_reason": null}]),
            ));
        }
    } else {
        for p in &pieces {
            ev.push(chunk(json!([{"index": 0, "delta": {"content": p}, "logprobs": null, "finish_reason": null}])));
            if steering.error.as_deref() == Some("mid-stream") {
                ev.push(sse(None, &json!({"error": {"message": "The server had an error while processing your request.",
                    "type": "server_error", "param": null, "code": null}})));
                return sse_response(ev, steering, "x-request-id");
            }
        }
    }
    ev.push(chunk(
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish}]),
    ));
    if include_usage {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                           "model": model, "system_fingerprint": "fp_fake", "choices": []});
        c["usage"] = usage;
        ev.push(sse(None, &c));
    }
    ev.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(ev, steering, "x-request-id")
}

fn responses(req: &Value, body: &Bytes, steering: &Steering) -> Response<FakeBody> {
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("gpt-4.1")
        .to_owned();
    let prompt = last_user_text(req.get("input"));
    let tool = wants_tool(&prompt, &tool_names(req, false));
    let (text, pieces) = reply_for(&prompt);
    let cached = steering.cached.0;
    let input = input_tokens(body) + cached;
    let output = pieces.len() as u64 + if tool.is_some() { 12 } else { 0 };
    let resp_id = next_id("resp_");
    let item_id = next_id(if tool.is_some() { "fc_" } else { "msg_" });
    let call_id = next_id("call_");
    let created = now();
    let usage = json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output});
    let final_item = match &tool {
        Some(name) => json!({"type": "function_call", "id": item_id, "call_id": call_id,
                             "name": name, "arguments": TOOL_ARGS, "status": "completed"}),
        None => {
            json!({"type": "message", "id": item_id, "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": []}]})
        }
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": resp_id, "object": "response", "created_at": created, "status": status,
               "model": model, "output": output, "usage": usage, "error": null,
               "incomplete_details": null, "instructions": null, "metadata": {},
               "parallel_tool_calls": true, "temperature": 1.0, "top_p": 1.0,
               "tool_choice": "auto", "tools": req.get("tools").cloned().unwrap_or(json!([])),
               "text": {"format": {"type": "text"}}, "truncation": "disabled"})
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        return json_response(
            200,
            response("completed", json!([final_item]), usage),
            "x-request-id",
        );
    }
    let mut seq = 0u64;
    let mut ev = Vec::new();
    let mut push = |ty: &str, mut data: Value| {
        data["type"] = json!(ty);
        data["sequence_number"] = json!(seq);
        seq += 1;
        ev.push(sse(Some(ty), &data));
    };
    push(
        "response.created",
        json!({"response": response("in_progress", json!([]), Value::Null)}),
    );
    push(
        "response.in_progress",
        json!({"response": response("in_progress", json!([]), Value::Null)}),
    );
    match &tool {
        Some(name) => {
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": {"type": "function_call",
                "id": item_id, "call_id": call_id, "name": name, "arguments": "", "status": "in_progress"}}),
            );
            let (a, b) = TOOL_ARGS.split_at(9);
            for part in [a, b] {
                push(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": 0, "delta": part}),
                );
            }
            push(
                "response.function_call_arguments.done",
                json!({"item_id": item_id, "output_index": 0, "arguments": TOOL_ARGS}),
            );
        }
        None => {
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": {"type": "message",
                "id": item_id, "status": "in_progress", "role": "assistant", "content": []}}),
            );
            push(
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            for p in &pieces {
                push(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": 0,
                    "content_index": 0, "delta": p, "logprobs": []}),
                );
                if steering.error.as_deref() == Some("mid-stream") {
                    push(
                        "error",
                        json!({"error": {"type": "server_error", "code": "server_error",
                        "message": "The server had an error while processing your request."}}),
                    );
                    return sse_response(ev, steering, "x-request-id");
                }
            }
            push(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "text": text, "logprobs": []}),
            );
            push(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
        }
    }
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": final_item}),
    );
    push(
        "response.completed",
        json!({"response": response("completed", json!([final_item]), usage)}),
    );
    sse_response(ev, steering, "x-request-id")
}

// ---------------------------------------------------------------------------------------------
// Gemini

/// Gemini's routes share `/v1/models` with OpenAI's: a Google key, a Gemini-only API version
/// or a `model:method` path tells them apart.
fn is_gemini(path: &str, query: &str, headers: &HeaderMap) -> bool {
    path.contains("/gemini/")
        || path.contains("/v1beta/")
        || path.contains("/v1alpha/")
        || path.contains(':')
        || headers.contains_key("x-goog-api-key")
        || query.split('&').any(|p| p.starts_with("key="))
}

fn gemini_error(status: u16, state: &str, message: &str) -> Response<FakeBody> {
    json_response(
        status,
        json!({"error": {"code": status, "message": message, "status": state}}),
        "x-goog-request-id",
    )
}

/// SSE framing as Google sends it: `data:` lines ended by CRLF pairs.
fn gemini_sse(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\r\n\r\n"))
}

fn gemini(
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
    keys: &Keys,
    steering: &Steering,
) -> Response<FakeBody> {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let key = headers
        .get("x-goog-api-key")
        .map(|v| v.as_bytes())
        .or_else(|| param("key").map(str::as_bytes));
    if key != Some(keys.gemini.as_bytes()) {
        // What Google answers for a wrong key.
        return gemini_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key. (fake upstream)",
        );
    }
    match steering.error.as_deref() {
        Some("overloaded") => {
            return gemini_error(
                503,
                "UNAVAILABLE",
                "The model is overloaded. Please try again later.",
            )
        }
        Some(s) if s.parse::<u16>().is_ok() => {
            return gemini_error(s.parse().unwrap_or(500), "INTERNAL", "fake upstream error")
        }
        _ => {}
    }
    let describe = |id: &str| {
        json!({"name": format!("models/{id}"), "version": "001", "displayName": id,
               "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
               "supportedGenerationMethods": ["generateContent", "countTokens"]})
    };
    if method == Method::GET && path.ends_with("/models") {
        let models: Vec<Value> = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"]
            .iter()
            .map(|id| describe(id))
            .collect();
        return json_response(200, json!({"models": models}), "x-goog-request-id");
    }
    if method == Method::GET {
        if let Some((_, id)) = path
            .rsplit_once("/models/")
            .filter(|(_, id)| !id.contains(':'))
        {
            return json_response(200, describe(id), "x-goog-request-id");
        }
    }
    let Some((model, call)) = path
        .rsplit_once("/models/")
        .and_then(|(_, rest)| rest.split_once(':'))
    else {
        return gemini_error(404, "NOT_FOUND", "unknown path");
    };
    if method != Method::POST {
        return gemini_error(404, "NOT_FOUND", "method not allowed");
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return gemini_error(400, "INVALID_ARGUMENT", "body is not JSON");
    };
    let cached = steering.cached.0;
    let input = input_tokens(body) + cached;
    if call == "countTokens" {
        return json_response(
            200,
            json!({"totalTokens": input,
                   "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input}]}),
            "x-goog-request-id",
        );
    }
    let (stream, sse_framed) = match call {
        "generateContent" => (false, false),
        "streamGenerateContent" => (true, param("alt") == Some("sse")),
        _ => return gemini_error(404, "NOT_FOUND", "unknown method"),
    };
    let Some(contents) = req.get("contents").and_then(Value::as_array) else {
        return gemini_error(400, "INVALID_ARGUMENT", "contents is not specified");
    };
    let prompt = contents
        .iter()
        .rev()
        .filter(|c| c.get("role").and_then(Value::as_str).unwrap_or("user") == "user")
        .find_map(|c| {
            let t: Vec<&str> = c
                .get("parts")
                .and_then(Value::as_array)?
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!t.is_empty()).then(|| t.join("\n"))
        })
        .unwrap_or_default();
    let tools: Vec<String> = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
        .flatten()
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    // A turn that answers function calls gets text, as from a model, so agents that run the
    // tool and send its result back end their loop.
    let answers_calls = contents.last().is_some_and(|c| {
        c.get("parts")
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()))
    });
    let tool = wants_tool(&prompt, &tools).filter(|_| !answers_calls);
    let (text, pieces) = reply_for(&prompt);
    let output = pieces.len() as u64 + if tool.is_some() { 12 } else { 0 };
    let usage = |candidates: u64| {
        let mut u = json!({"promptTokenCount": input, "candidatesTokenCount": candidates,
                           "totalTokenCount": input + candidates,
                           "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input}]});
        if cached > 0 {
            u["cachedContentTokenCount"] = json!(cached);
        }
        u
    };
    let response_id = next_id("resp-");
    let chunk = |parts: Value, finish: Option<&str>, usage: Value| {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        json!({"candidates": [candidate], "usageMetadata": usage,
               "modelVersion": model, "responseId": response_id})
    };
    let call_part = tool.as_ref().map(|name| {
        let args: Value = serde_json::from_str(TOOL_ARGS).unwrap_or(Value::Null);
        json!({"functionCall": {"name": name, "args": args}})
    });
    if !stream {
        let parts = match &call_part {
            Some(p) => json!([p]),
            None => json!([{"text": text}]),
        };
        return json_response(
            200,
            chunk(parts, Some("STOP"), usage(output)),
            "x-goog-request-id",
        );
    }
    let mut chunks = Vec::new();
    match &call_part {
        Some(p) => chunks.push(chunk(json!([p]), Some("STOP"), usage(output))),
        None => {
            for (i, p) in pieces.iter().enumerate() {
                let last = i + 1 == pieces.len();
                let counted = if last { output } else { i as u64 + 1 };
                let finish = last.then_some("STOP");
                chunks.push(chunk(json!([{"text": p}]), finish, usage(counted)));
                if i == 0 && steering.error.as_deref() == Some("mid-stream") {
                    chunks.push(json!({"error": {"code": 503, "status": "UNAVAILABLE",
                        "message": "The model is overloaded. Please try again later."}}));
                    break;
                }
            }
        }
    }
    if sse_framed {
        let events = chunks.iter().map(gemini_sse).collect();
        return sse_response(events, steering, "x-goog-request-id");
    }
    // Without `alt=sse` the stream is one JSON array, sent as it is produced.
    let n = chunks.len();
    let events = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let open = if i == 0 { "[" } else { "" };
            let close = if i + 1 == n { "]" } else { ",\r\n" };
            Bytes::from(format!("{open}{c}{close}"))
        })
        .collect();
    let mut r = sse_response(events, steering, "x-goog-request-id");
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

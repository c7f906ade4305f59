//! The request path: authenticate, forward to the upstream, stream the answer back, tee a copy.
//!
//! [`Gateway::handle`] serves one provider request. It authenticates the caller, parses the
//! body with the provider's adapter, swaps the client's bridge token for the server-side key,
//! and forwards to `base_url + endpoint`. The upstream body is returned to the client wrapped
//! in a [`TeeBody`], which hands each chunk to hyper unchanged and shows the same bytes to the
//! adapter's [`ResponseObserver`] as they pass. Observing is incremental and cheap by design
//! (SSE framing, and JSON parsing only of the few events that carry usage, tool calls or
//! errors), so it runs in place: a per-chunk hand-off to another task cost more CPU in
//! cross-thread wake-ups than the parsing itself. When the body ends, fails or is dropped
//! early (client gone), the remaining work (parsing a buffered JSON answer, building the
//! [`InterceptionRecord`], handing it to the [`RecordSink`]) runs in a task spawned after the
//! last bytes were handed to hyper. Nothing on the client's path waits for logging or storage.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::{field::Empty, Instrument, Span};
use uuid::Uuid;

use crate::auth::{bridge_token, Authenticate};
use crate::keys::Identity;
use crate::providers::anthropic::Anthropic;
use crate::providers::openai_chat::OpenAiChat;
use crate::providers::openai_responses::OpenAiResponses;
use crate::providers::{GatewayError, Observation, ProviderAdapter, ResponseObserver};
use crate::record::{InterceptionRecord, Outcome, Provider, Usage, WorkspaceContext};

/// Largest request body the gateway accepts (prompts with images can be large).
const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;

/// Where finished records and in-flight counts go. Implementations must not block.
pub trait RecordSink: Send + Sync + 'static {
    fn record(&self, rec: InterceptionRecord);
    fn request_started(&self, _provider: Provider) {}
    fn request_finished(&self, _provider: Provider) {}
}

/// One configured upstream: where to send a provider's requests and with which key.
#[derive(Clone)]
pub struct Upstream {
    /// `scheme://authority[/path-prefix]` without a trailing slash.
    pub base_url: String,
    /// The server-side provider key (marked sensitive so it is never printed by `Debug`).
    pub api_key: HeaderValue,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// Body of every response the gateway sends: either its own small JSON or the upstream's stream.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Tee(TeeBody),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Tee(t) => Pin::new(t).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Tee(t) => t.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Tee(t) => t.inner.size_hint(),
        }
    }
}

/// How the upstream body ended.
enum BodyEnd {
    /// Normally.
    Complete,
    /// The upstream connection broke mid-body.
    Failed(String),
    /// The body was dropped before its end: the client went away.
    Dropped,
}

/// What the tee needs to observe a response and record it when it is over.
struct Watch {
    observer: Box<dyn ResponseObserver>,
    rec: InterceptionRecord,
    started: Instant,
    sink: Arc<dyn RecordSink>,
    span: Span,
}

impl Watch {
    /// Records the exchange. Runs in its own task when a runtime is there, so the client's
    /// last bytes are flushed before the (possibly large) JSON answer is parsed.
    fn finish(self: Box<Self>, end: BodyEnd, at: Instant) {
        let work = move || finish_record(*self, end, at);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { work() });
            }
            Err(_) => work(),
        }
    }
}

/// The upstream's body on its way to the client; each chunk is shown to the observer as it
/// passes.
pub struct TeeBody {
    inner: Incoming,
    /// Boxed: the record is large, and most responses the gateway sends are its own small ones.
    watch: Option<Box<Watch>>,
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(w)) = (frame.data_ref(), this.watch.as_mut()) {
                    if w.rec.ttfb_ms.is_none() {
                        w.rec.ttfb_ms = Some(ms(w.started.elapsed()));
                    }
                    w.observer.feed(data);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(w) = this.watch.take() {
                    w.finish(BodyEnd::Failed(e.to_string()), Instant::now());
                }
            }
            Poll::Ready(None) => {
                if let Some(w) = this.watch.take() {
                    w.finish(BodyEnd::Complete, Instant::now());
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            // An empty upstream body may be dropped after hyper saw `is_end_stream` without
            // polling to the end; that is a normal end, not a cancellation.
            let end = if self.inner.is_end_stream() {
                BodyEnd::Complete
            } else {
                BodyEnd::Dropped
            };
            w.finish(end, Instant::now());
        }
    }
}

/// A provider route: which adapter serves it and the path the provider knows it by.
#[derive(Clone, Copy)]
struct Route {
    provider: Provider,
    adapter: &'static dyn ProviderAdapter,
    endpoint: &'static str,
    has_body: bool,
}

static ANTHROPIC: Anthropic = Anthropic;
static OPENAI_CHAT: OpenAiChat = OpenAiChat;
static OPENAI_RESPONSES: OpenAiResponses = OpenAiResponses;

/// Maps the gateway's public path to a route; `None` for paths it does not serve.
fn route(method: &Method, path: &str) -> Option<Result<Route, &'static dyn ProviderAdapter>> {
    let r = |provider, adapter: &'static dyn ProviderAdapter, endpoint, has_body| {
        Some(Ok(Route {
            provider,
            adapter,
            endpoint,
            has_body,
        }))
    };
    match (method, path) {
        (&Method::POST, "/anthropic/v1/messages") => {
            r(Provider::Anthropic, &ANTHROPIC, "/v1/messages", true)
        }
        (&Method::POST, "/anthropic/v1/messages/count_tokens") => r(
            Provider::Anthropic,
            &ANTHROPIC,
            "/v1/messages/count_tokens",
            true,
        ),
        (&Method::POST, "/openai/v1/chat/completions") => {
            r(Provider::Openai, &OPENAI_CHAT, "/v1/chat/completions", true)
        }
        (&Method::POST, "/openai/v1/responses") => {
            r(Provider::Openai, &OPENAI_RESPONSES, "/v1/responses", true)
        }
        (&Method::GET, "/openai/v1/models") => {
            r(Provider::Openai, &OPENAI_CHAT, "/v1/models", false)
        }
        _ if path.starts_with("/anthropic/") => Some(Err(&ANTHROPIC)),
        _ if path.starts_with("/openai/") => Some(Err(&OPENAI_CHAT)),
        _ => None,
    }
}

/// Request headers never forwarded upstream: hop-by-hop headers (RFC 9110 §7.6.1), the
/// client's credentials, the bridge's own headers, and ones the client re-derives.
fn is_stripped_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "authorization"
            | "x-api-key"
            // The observer must read the upstream body, so ask for it uncompressed.
            | "accept-encoding"
    ) || name.as_str().starts_with("x-bridge-")
}

/// Response headers not passed back: hop-by-hop headers only (the body is passed through
/// unchanged, so `content-length` and `content-encoding` stay valid).
fn is_stripped_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn header_string(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(512).collect())
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The gateway's request handler and what it needs: upstreams, auth and the record sink.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

struct GatewayInner {
    client: HttpsClient,
    anthropic: Option<Upstream>,
    openai: Option<Upstream>,
    auth: Arc<dyn Authenticate>,
    sink: Arc<dyn RecordSink>,
}

impl Gateway {
    pub fn new(
        anthropic: Option<Upstream>,
        openai: Option<Upstream>,
        auth: Arc<dyn Authenticate>,
        sink: Arc<dyn RecordSink>,
    ) -> Gateway {
        let mut http = HttpConnector::new();
        // Small SSE frames must leave immediately; Nagle would add up to 40 ms per event.
        http.set_nodelay(true);
        http.enforce_http(false);
        // A dead upstream host must fail fast (502) instead of holding the client until its own
        // timeout; slow *answers* are normal for LLMs, so there is no response timeout.
        http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // The timer lets the pool close connections idle for 60 s; without one, idle
        // connections are only checked when reused, so a burst would leave up to 1,024 of them
        // open to the upstream for good.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Gateway {
            inner: Arc::new(GatewayInner {
                client,
                anthropic,
                openai,
                auth,
                sink,
            }),
        }
    }

    /// Whether this gateway serves the request's path (provider routes only).
    pub fn serves(path: &str) -> bool {
        path.starts_with("/anthropic/") || path.starts_with("/openai/")
    }

    /// Serves one request to a provider route.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let started_at = Utc::now();
        let g = &self.inner;
        let route = match route(req.method(), req.uri().path()) {
            Some(Ok(r)) => r,
            Some(Err(adapter)) => {
                let msg = format!("no route for {} {}", req.method(), req.uri().path());
                return error_response(
                    adapter,
                    StatusCode::NOT_FOUND,
                    GatewayError::NotFound,
                    &msg,
                );
            }
            None => {
                return error_response(
                    &OPENAI_CHAT,
                    StatusCode::NOT_FOUND,
                    GatewayError::NotFound,
                    "not found",
                );
            }
        };
        let adapter = route.adapter;

        // 1. Who is calling (before looking at the body, so strangers learn nothing).
        let Some(token) = bridge_token(req.headers()) else {
            tracing::info!(
                provider = route.provider.as_str(),
                reason = "missing token",
                "rejected request"
            );
            return error_response(
                adapter,
                StatusCode::UNAUTHORIZED,
                GatewayError::Authentication,
                "missing bridge token: send it as `x-api-key` or `Authorization: Bearer`",
            );
        };
        let identity = match g.auth.authenticate(token).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                tracing::info!(
                    provider = route.provider.as_str(),
                    reason = "unknown or revoked token",
                    "rejected request"
                );
                return error_response(
                    adapter,
                    StatusCode::UNAUTHORIZED,
                    GatewayError::Authentication,
                    "invalid bridge token: unknown or revoked",
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot authenticate: token store unavailable");
                return error_response(
                    adapter,
                    StatusCode::SERVICE_UNAVAILABLE,
                    GatewayError::UpstreamUnavailable,
                    "bridge cannot verify tokens right now (store unavailable); retry shortly",
                );
            }
        };

        // 2. Is the provider configured here.
        let upstream = match route.provider {
            Provider::Anthropic => g.anthropic.as_ref(),
            Provider::Openai => g.openai.as_ref(),
        };
        let Some(upstream) = upstream else {
            let msg = format!(
                "provider `{}` is not configured on this bridge (add it under `providers:` in bridge.yaml)",
                route.provider.as_str()
            );
            return error_response(
                adapter,
                StatusCode::SERVICE_UNAVAILABLE,
                GatewayError::NotConfigured,
                &msg,
            );
        };

        // 3. Read and parse the body.
        let (parts, body) = req.into_parts();
        let mut rec = InterceptionRecord {
            id: Uuid::now_v7(),
            user: identity.user.clone(),
            key_id: Some(identity.key_id.clone()),
            provider: route.provider,
            endpoint: route.endpoint.to_owned(),
            model: None,
            client: header_string(&parts.headers, "user-agent"),
            streaming: false,
            started_at,
            ttfb_ms: None,
            duration_ms: 0.0,
            status: 0,
            outcome: Outcome::Ok,
            usage: Usage::default(),
            cost_usd: None,
            prompt: None,
            tools_offered: Vec::new(),
            tool_calls: Vec::new(),
            context: WorkspaceContext {
                workspace: header_string(&parts.headers, "x-bridge-workspace"),
                template: header_string(&parts.headers, "x-bridge-template"),
                session: header_string(&parts.headers, "x-bridge-session"),
            },
            error: None,
        };
        let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let too_big = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                let (status, msg) = if too_big {
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body exceeds {MAX_REQUEST_BODY} bytes"),
                    )
                } else {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("could not read request body: {e}"),
                    )
                };
                return self.reject(rec, adapter, status, &msg, started);
            }
        };
        let mut forward_body = body.clone();
        if route.has_body {
            match adapter.parse_request(route.endpoint, &body) {
                Ok(info) => {
                    rec.model = info.model;
                    rec.streaming = info.streaming;
                    rec.prompt = info.prompt;
                    rec.tools_offered = info.tools_offered;
                    if let Some(b) = info.rewritten_body {
                        forward_body = b;
                    }
                }
                Err(bad) => {
                    return self.reject(rec, adapter, StatusCode::BAD_REQUEST, &bad.0, started)
                }
            }
        }

        let span = tracing::info_span!(
            "gen_ai.request",
            otel.name = %format!("{} {}", if route.endpoint.contains("models") { "list_models" } else { "chat" }, rec.model.as_deref().unwrap_or("")),
            gen_ai.system = route.provider.as_str(),
            gen_ai.operation.name = route.endpoint,
            gen_ai.request.model = rec.model.as_deref().unwrap_or(""),
            gen_ai.response.model = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            bridge.user = %rec.user,
            bridge.interception_id = %rec.id,
            bridge.streaming = rec.streaming,
            http.response.status_code = Empty,
            bridge.outcome = Empty,
        );

        // 4. Build the upstream request: same method, suffix and query; server-side key.
        let pq = parts.uri.path_and_query().and_then(|pq| pq.query());
        let url = match pq {
            Some(q) => format!("{}{}?{}", upstream.base_url, route.endpoint, q),
            None => format!("{}{}", upstream.base_url, route.endpoint),
        };
        let uri: Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => {
                let msg = format!("bad upstream url: {e}");
                return self.reject(rec, adapter, StatusCode::BAD_GATEWAY, &msg, started);
            }
        };
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
        for (name, value) in &parts.headers {
            if !is_stripped_request_header(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        adapter.set_upstream_auth(&mut headers, &upstream.api_key);
        let mut up_req = Request::new(Full::new(forward_body));
        *up_req.method_mut() = parts.method.clone();
        *up_req.uri_mut() = uri;
        *up_req.headers_mut() = headers;

        g.sink.request_started(route.provider);
        let response = g.client.request(up_req).instrument(span.clone()).await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let reason = error_chain(&e);
                tracing::warn!(parent: &span, upstream = %upstream.base_url, error = %reason, "upstream unavailable");
                rec.status = StatusCode::BAD_GATEWAY.as_u16();
                rec.outcome = Outcome::UpstreamUnavailable;
                rec.error = Some(format!("upstream unavailable: {reason}"));
                rec.duration_ms = ms(started.elapsed());
                finish_span(&span, &rec);
                g.sink.request_finished(route.provider);
                g.sink.record(rec);
                return error_response(
                    adapter,
                    StatusCode::BAD_GATEWAY,
                    GatewayError::UpstreamUnavailable,
                    &format!("upstream {} unavailable", route.provider.as_str()),
                );
            }
        };

        // 5. Stream the answer back; the observer task gets a copy of every chunk.
        let (resp_parts, incoming) = response.into_parts();
        rec.status = resp_parts.status.as_u16();
        // Observe a stream if the upstream answered with one (even if the flag was missed).
        let is_sse = resp_parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let watch = Watch {
            observer: adapter.observer(route.endpoint, is_sse),
            rec,
            started,
            sink: self.inner.sink.clone(),
            span,
        };
        let mut out = Response::new(ProxyBody::Tee(TeeBody {
            inner: incoming,
            watch: Some(Box::new(watch)),
        }));
        *out.status_mut() = resp_parts.status;
        let out_headers = out.headers_mut();
        for (name, value) in &resp_parts.headers {
            if !is_stripped_response_header(name) {
                out_headers.append(name.clone(), value.clone());
            }
        }
        out
    }

    /// A 4xx before reaching the upstream: answered in the provider's format and recorded.
    fn reject(
        &self,
        mut rec: InterceptionRecord,
        adapter: &'static dyn ProviderAdapter,
        status: StatusCode,
        message: &str,
        started: Instant,
    ) -> Response<ProxyBody> {
        let kind = if status.is_client_error() {
            GatewayError::InvalidRequest
        } else {
            GatewayError::UpstreamUnavailable
        };
        rec.status = status.as_u16();
        rec.outcome = Outcome::Rejected;
        rec.error = Some(message.to_owned());
        rec.duration_ms = ms(started.elapsed());
        tracing::info!(user = %rec.user, status = rec.status, reason = message, "rejected request");
        self.inner.sink.record(rec);
        error_response(adapter, status, kind, message)
    }
}

/// Builds the record of a finished exchange from what the observer saw, and hands it over.
fn finish_record(w: Watch, end: BodyEnd, at: Instant) {
    let Watch {
        observer,
        mut rec,
        started,
        sink,
        span,
    } = w;
    let (mut outcome, failure) = match end {
        BodyEnd::Complete => (Outcome::Ok, None),
        BodyEnd::Failed(e) => (
            Outcome::UpstreamUnavailable,
            Some(format!("upstream connection broke mid-answer: {e}")),
        ),
        BodyEnd::Dropped => (Outcome::ClientCancelled, None),
    };
    let Observation {
        usage,
        tool_calls,
        model,
        error,
    } = observer.finish();
    rec.usage = usage;
    rec.tool_calls = tool_calls;
    if let Some(m) = model {
        span.record("gen_ai.response.model", m.as_str());
        if rec.model.is_none() {
            rec.model = Some(m);
        }
    }
    if outcome == Outcome::Ok && (!(200..300).contains(&rec.status) || error.is_some()) {
        outcome = Outcome::UpstreamError;
    }
    rec.error = failure.or(error).or_else(|| {
        (outcome == Outcome::UpstreamError).then(|| format!("upstream answered {}", rec.status))
    });
    rec.outcome = outcome;
    rec.duration_ms = ms(at - started);
    finish_span(&span, &rec);
    sink.request_finished(rec.provider);
    sink.record(rec);
}

fn finish_span(span: &Span, rec: &InterceptionRecord) {
    span.record("gen_ai.usage.input_tokens", rec.usage.input_tokens);
    span.record("gen_ai.usage.output_tokens", rec.usage.output_tokens);
    span.record("http.response.status_code", rec.status);
    span.record("bridge.outcome", rec.outcome.as_str());
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A JSON error response in the provider's own format.
pub fn error_response(
    adapter: &dyn ProviderAdapter,
    status: StatusCode,
    kind: GatewayError,
    message: &str,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(adapter.error_body(kind, message)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A sink that drops records, for benchmarks that measure the request path alone.
pub struct DiscardRecords;

impl RecordSink for DiscardRecords {
    fn record(&self, _rec: InterceptionRecord) {}
}

/// The caller identity used by [`crate::auth::FixedToken`] in benchmarks.
pub fn bench_identity() -> Identity {
    Identity {
        user: "bench".into(),
        key_id: "bench".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_public_paths_to_provider_endpoints() {
        let r = route(&Method::POST, "/anthropic/v1/messages")
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(r.endpoint, "/v1/messages");
        let r = route(&Method::GET, "/openai/v1/models")
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!((r.endpoint, r.has_body), ("/v1/models", false));
        assert!(route(&Method::GET, "/openai/v1/chat/completions")
            .unwrap()
            .is_err());
        assert!(route(&Method::GET, "/elsewhere").is_none());
    }

    #[test]
    fn credentials_hop_by_hop_and_bridge_headers_are_not_forwarded() {
        for h in [
            "authorization",
            "x-api-key",
            "connection",
            "host",
            "x-bridge-session",
            "te",
        ] {
            assert!(
                is_stripped_request_header(&HeaderName::from_static(h)),
                "{h}"
            );
        }
        for h in [
            "anthropic-version",
            "anthropic-beta",
            "openai-beta",
            "x-stainless-os",
            "user-agent",
            "content-type",
            "accept",
        ] {
            assert!(
                !is_stripped_request_header(&HeaderName::from_static(h)),
                "{h}"
            );
        }
    }
}

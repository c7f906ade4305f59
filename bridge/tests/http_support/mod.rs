//! Helpers for the gateway tests: an HTTP client, a scripted upstream whose every response the
//! test writes by hand (headers, then body chunks whenever the test decides), and the bridge's
//! `Gateway` served in-process with a record sink the test can read. Everything listens on
//! 127.0.0.1 and nothing resolves names.
#![allow(dead_code)]

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bridge::auth::FixedToken;
use bridge::keys::Identity;
use bridge::proxy::{Gateway, Limits, RecordSink, Upstream};
use bridge::record::InterceptionRecord;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub const TOKEN: &str = "brg_gateway-test-token";
pub const ANTHROPIC_KEY: &str = "sk-ant-server-side-key";
pub const OPENAI_KEY: &str = "sk-openai-server-side-key";

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response body the test feeds chunk by chunk; an `Err` aborts the connection mid-body.
pub struct ScriptBody(mpsc::UnboundedReceiver<std::io::Result<Bytes>>);

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// One request that reached the scripted upstream, waiting for the test to answer it.
pub struct UpstreamRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    respond: oneshot::Sender<Response<ScriptBody>>,
}

/// The test's end of a response body being streamed by the scripted upstream.
pub struct BodySender(mpsc::UnboundedSender<std::io::Result<Bytes>>);

impl BodySender {
    /// Sends a chunk; `false` once the bridge has dropped the upstream response.
    pub fn send(&self, chunk: impl Into<Bytes>) -> bool {
        self.0.send(Ok(chunk.into())).is_ok()
    }
    /// Cuts the connection mid-body, as a crashing upstream or a broken network would.
    pub fn cut(self) {
        let _ = self.0.send(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "scripted cut",
        )));
    }
    /// True once the receiving side (the bridge's upstream connection) is gone.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl UpstreamRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Starts the response: status and headers now, body chunks through the returned sender
    /// (the body ends when the sender is dropped).
    pub fn respond(self, status: u16, headers: &[(&str, &str)]) -> BodySender {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut r = Response::new(ScriptBody(rx));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let _ = self.respond.send(r);
        BodySender(tx)
    }

    /// A complete JSON answer.
    pub fn respond_json(self, status: u16, body: &serde_json::Value) {
        let tx = self.respond(status, &[("content-type", "application/json")]);
        tx.send(body.to_string());
    }
}

/// Starts the scripted upstream on 127.0.0.1; returns its base URL and the request queue.
pub async fn scripted_upstream() -> (String, mpsc::UnboundedReceiver<UpstreamRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let (respond, answer) = oneshot::channel();
                        let _ = tx.send(UpstreamRequest {
                            method: parts.method,
                            uri: parts.uri,
                            headers: parts.headers,
                            body,
                            respond,
                        });
                        let resp = answer.await.unwrap_or_else(|_| {
                            let (_tx, rx) = mpsc::unbounded_channel();
                            let mut r = Response::new(ScriptBody(rx));
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            r
                        });
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), rx)
}

/// Records handed to the sink, in order; start entries and the in-flight count on the side.
struct ChannelSink {
    records: mpsc::UnboundedSender<InterceptionRecord>,
    starts: Arc<std::sync::Mutex<Vec<InterceptionRecord>>>,
    in_flight: Arc<std::sync::atomic::AtomicI64>,
}

impl RecordSink for ChannelSink {
    fn record(&self, rec: InterceptionRecord) {
        let _ = self.records.send(rec);
    }
    fn start(&self, rec: InterceptionRecord) {
        self.starts.lock().unwrap().push(rec);
    }
    fn request_started(&self, _: bridge::record::Provider) {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn request_finished(&self, _: bridge::record::Provider) {
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The gateway in-process, both providers pointed at one scripted upstream.
pub struct Harness {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub upstream: mpsc::UnboundedReceiver<UpstreamRequest>,
    records: mpsc::UnboundedReceiver<InterceptionRecord>,
    starts: Arc<std::sync::Mutex<Vec<InterceptionRecord>>>,
    in_flight: Arc<std::sync::atomic::AtomicI64>,
    _stop: oneshot::Sender<()>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with_prefix("").await
    }

    /// `prefix` is appended to the upstream's base URL (an upstream gateway under a path).
    pub async fn start_with_prefix(prefix: &str) -> Harness {
        Self::start_configured(prefix, Limits::default(), &[]).await
    }

    /// With explicit limits, and headers the server config sets on OpenAI requests.
    pub async fn start_configured(
        prefix: &str,
        limits: Limits,
        openai_headers: &[(&'static str, &'static str)],
    ) -> Harness {
        let (up_url, upstream) = scripted_upstream().await;
        let key = |k: &str| {
            let mut v = HeaderValue::from_str(k).unwrap();
            v.set_sensitive(true);
            v
        };
        let (rec_tx, records) = mpsc::unbounded_channel();
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let in_flight = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let mut openai = Upstream::new(format!("{up_url}{prefix}"), key(OPENAI_KEY));
        for (k, v) in openai_headers {
            openai.extra_headers.insert(*k, HeaderValue::from_static(v));
        }
        let gateway = Gateway::with_limits(
            Some(Upstream::new(
                format!("{up_url}{prefix}"),
                key(ANTHROPIC_KEY),
            )),
            Some(openai),
            Arc::new(FixedToken {
                token: TOKEN.into(),
                identity: Identity {
                    user: "alice".into(),
                    key_id: "key_alice".into(),
                },
            }),
            Arc::new(ChannelSink {
                records: rec_tx,
                starts: starts.clone(),
                in_flight: in_flight.clone(),
            }),
            limits,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(bridge::server::serve_gateway(listener, gateway, async {
            let _ = stopped.await;
        }));
        Harness {
            url,
            upstream,
            records,
            starts,
            in_flight,
            _stop: stop,
        }
    }

    /// Requests counted in flight now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Intercept-start entries made so far.
    pub fn starts(&self) -> Vec<InterceptionRecord> {
        self.starts.lock().unwrap().clone()
    }

    /// Waits (bounded) until no request is counted in flight.
    pub async fn wait_in_flight_zero(&self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.in_flight() != 0 {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The next request the upstream receives (fails the test after 10 s).
    pub async fn next_upstream_request(&mut self) -> UpstreamRequest {
        tokio::time::timeout(Duration::from_secs(10), self.upstream.recv())
            .await
            .expect("the upstream saw no request within 10 s")
            .expect("upstream stopped")
    }

    /// The next record the gateway produced (fails the test after 10 s).
    pub async fn next_record(&mut self) -> InterceptionRecord {
        tokio::time::timeout(Duration::from_secs(10), self.records.recv())
            .await
            .expect("no interception record within 10 s")
            .expect("record sink closed")
    }

    /// True if the upstream has received no request (so far).
    pub fn upstream_untouched(&mut self) -> bool {
        self.upstream.try_recv().is_err()
    }
}

/// Builds a request to the bridge.
pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// Sends a request and reads the whole answer.
pub async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("no response within 10 s")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// The next data frame of a streaming body (fails the test after `within`).
pub async fn next_data(body: &mut Incoming, within: Duration) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(within, body.frame())
            .await
            .expect("no body frame in time")?;
        if let Ok(data) = frame.ok()?.into_data() {
            return Some(data);
        }
    }
}

/// One SSE event in the wire format.
pub fn sse(event: &str, data: serde_json::Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

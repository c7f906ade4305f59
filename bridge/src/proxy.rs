//! The request path: authenticate, forward to the upstream, stream the answer back, tee a copy.
//!
//! [`Gateway::handle`] serves one provider request. It authenticates the caller, reads the
//! body (bounded in size, time and, across all requests, memory), parses it with the
//! provider's adapter, makes an intercept-start entry durable through the [`RecordSink`], and
//! forwards the request to `base_url + endpoint` with the server-side key and an allowlist of
//! the client's headers. A client that gives up while the upstream is still working (the
//! normal case for a long non-streaming call, whose headers come only with the whole answer)
//! makes hyper drop the handler; the wait for the upstream then moves to a task of its own
//! (`AwaitingUpstream`), so a request the upstream already has is still read and recorded.
//!
//! [`TeeBody`] hands each upstream chunk to hyper unchanged and shows the same bytes to the
//! adapter's [`ResponseObserver`] as they pass. Observing is incremental and cheap by design
//! (SSE framing, and JSON parsing only of the few events that carry usage, tool calls or
//! errors), so it runs in place: a per-chunk hand-off to another task cost more CPU in
//! cross-thread wake-ups than the parsing itself. When the body ends or fails, the remaining
//! work (parsing a buffered JSON answer, building the [`InterceptionRecord`], handing it to the
//! sink) runs in a task spawned after the last bytes were handed to hyper. When the body is
//! dropped early (client gone), a task keeps reading the upstream, bounded in time and bytes,
//! so the record gets the usage the provider reports at the end of its answer.
//! Nothing on the client's path waits for logging or storage, except the intercept-start
//! entry (one buffered write to the journal, see [`crate::journal`], before going upstream)
//! and, with `limits.record_wait_ms` set (read-after-write; off by default), the very end of
//! the response: its last bytes (known length), a stream's terminal event (where SDKs stop
//! reading) or the end of a chunked body are held until the final record is durable
//! ([`Hold`]), so a command run right after a request sees it, on whichever replica served
//! it. Group commit in the recorder makes that one short transaction shared by all requests
//! ending at once.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{field::Empty, Instrument, Span};
use uuid::Uuid;

use crate::auth::{bridge_token, Authenticate};
use crate::governance::{Admission, Decision, Governance, Requester};
use crate::keypool::{Attempt, BreakerState, KeyPool};
use crate::keys::Identity;
use crate::providers::anthropic::Anthropic;
use crate::providers::gemini::{self, Gemini};
use crate::providers::openai_chat::OpenAiChat;
use crate::providers::openai_responses::OpenAiResponses;
use crate::providers::{
    is_usage_only_chunk, GatewayError, Observation, ObserveLimits, ProviderAdapter,
    ResponseObserver,
};
use crate::record::{InterceptionRecord, Outcome, Provider, Usage, WorkspaceContext};

/// A sensible [`Limits::record_wait`] for read-after-write (`limits.record_wait_ms: 5000`):
/// long enough for SQLite's busy timeout and the spool's fsync when the store is down; a
/// response is never failed. Off by default: waiting for the commit costs every request CPU
/// and milliseconds of tail latency (BENCHMARKS.md).
pub const RECORD_WAIT: Duration = Duration::from_secs(5);

/// Error type of the bodies the gateway sends.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where records and in-flight counts go. Implementations must not block.
pub trait RecordSink: Send + Sync + 'static {
    /// A finished exchange.
    fn record(&self, rec: InterceptionRecord);
    /// A finished exchange whose response the gateway ends only once `durable` is told the
    /// record is safe (stored, or spooled while the store is down), or after
    /// [`Limits::record_wait`]. The default records and tells at once.
    fn record_durable(&self, rec: InterceptionRecord, durable: oneshot::Sender<()>) {
        self.record(rec);
        let _ = durable.send(());
    }
    /// Makes an intercept-start entry (outcome `incomplete`) durable before returning; it
    /// must be quick (a buffered write) and must not fail the request. The gateway calls
    /// this before the request goes upstream, and [`RecordSink::record`] later replaces the
    /// entry with the final record (same id).
    fn start(&self, _rec: InterceptionRecord) {}
    fn request_started(&self, _provider: Provider) {}
    fn request_finished(&self, _provider: Provider) {}
    /// How one attempt with a provider key went (`key` is the key's name, never its value).
    fn upstream_key(
        &self,
        _provider: Provider,
        _key: &str,
        _outcome: &'static str,
        _state: BreakerState,
    ) {
    }
}

/// Limits that keep the gateway bounded whatever clients and upstreams send. Each is a field
/// of `limits:` in bridge.yaml; the defaults are [`Limits::default`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest request body accepted (413 beyond).
    pub max_request_body_bytes: usize,
    /// Request bodies held in memory by all requests together (503 beyond).
    pub max_request_bodies_in_flight_bytes: usize,
    /// Time allowed to receive a whole request body (408 beyond).
    pub request_body_timeout: Duration,
    /// Time allowed for the upstream's response headers (504 beyond).
    pub upstream_response_timeout: Duration,
    /// Longest silence allowed in the middle of an upstream body (the stream is cut beyond).
    pub upstream_idle_timeout: Duration,
    /// After the client left, how long the upstream is still read for its usage report.
    pub drain_timeout: Duration,
    /// After the client left, how many more bytes of the upstream are read at most.
    pub drain_max_bytes: usize,
    /// Longest prompt text kept in a record (the rest is cut, with a marker).
    pub max_recorded_prompt_bytes: usize,
    /// Longest the end of a response waits for its record to be durable; zero: no wait (the
    /// record is stored within the recorder's flush interval, after the response).
    pub record_wait: Duration,
    /// What observers may buffer.
    pub observe: ObserveLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body_bytes: 32 * 1024 * 1024,
            max_request_bodies_in_flight_bytes: 256 * 1024 * 1024,
            request_body_timeout: Duration::from_secs(60),
            // Non-streaming answers arrive whole, after the model is done: minutes, not seconds.
            upstream_response_timeout: Duration::from_secs(600),
            upstream_idle_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(60),
            drain_max_bytes: 16 * 1024 * 1024,
            max_recorded_prompt_bytes: 64 * 1024,
            record_wait: Duration::ZERO,
            observe: ObserveLimits::default(),
        }
    }
}

/// The client's address, put in the request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// One configured upstream: where to send a provider's requests and with which key.
#[derive(Clone)]
pub struct Upstream {
    /// `scheme://authority[/path-prefix]` without a trailing slash.
    pub base_url: String,
    /// The server-side provider keys (one or a pool; values marked sensitive so they are
    /// never printed by `Debug`).
    pub keys: Arc<KeyPool>,
    /// Headers set from the server's configuration on every request (e.g. OpenAI's
    /// `openai-organization` and `openai-project`: the billing scope is the server's choice,
    /// never the client's).
    pub extra_headers: HeaderMap,
    /// Client headers forwarded beyond the built-in allowlist (lowercase names; a trailing
    /// `*` matches a prefix), from `forward_headers` in the config.
    pub forward_headers: Vec<String>,
}

impl Upstream {
    pub fn new(base_url: impl Into<String>, api_key: HeaderValue) -> Upstream {
        Upstream::with_keys(base_url, KeyPool::single(api_key))
    }

    /// An upstream with a pool of keys.
    pub fn with_keys(base_url: impl Into<String>, keys: KeyPool) -> Upstream {
        Upstream {
            base_url: base_url.into(),
            keys: Arc::new(keys),
            extra_headers: HeaderMap::new(),
            forward_headers: Vec::new(),
        }
    }

    /// Whether the configuration adds `name` to the headers forwarded to this upstream.
    fn forwards(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        self.forward_headers
            .iter()
            .any(|f| match f.strip_suffix('*') {
                Some(prefix) => n.starts_with(prefix),
                None => n == f,
            })
    }
}

/// Certificate authorities trusted for HTTPS upstreams: the webpki roots (Mozilla's list,
/// built in, so verification does not depend on the host's CA bundle) plus any configured in
/// `upstream_tls.ca_file`, e.g. a company gateway's private CA.
#[derive(Clone, Debug, Default)]
pub struct UpstreamTrust {
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl UpstreamTrust {
    /// Reads the CA certificates of a PEM file; the message says what is wrong with it.
    pub fn from_pem_file(path: &std::path::Path) -> Result<UpstreamTrust, String> {
        use rustls_pki_types::pem::PemObject;
        let shown = path.display();
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{shown}: not a PEM certificate file: {e}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{shown} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"
            ));
        }
        // Parse each now, so a bad file stops the start instead of failing every request.
        let mut store = rustls::RootCertStore::empty();
        for (i, c) in certs.iter().enumerate() {
            store
                .add(c.clone())
                .map_err(|e| format!("{shown}: certificate {} is unusable: {e}", i + 1))?;
        }
        Ok(UpstreamTrust { extra_roots: certs })
    }

    pub(crate) fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        // Checked when the configuration was loaded.
        let (_, unusable) = roots.add_parsable_certificates(self.extra_roots.iter().cloned());
        debug_assert_eq!(unusable, 0);
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

/// If `e` failed because the upstream's certificate did not verify, why (rustls's words).
fn certificate_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(
            t @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) = as_tls_error(c)
        {
            return Some(t.to_string());
        }
        cur = c.source();
    }
    None
}

/// The rustls error `e` is, or wraps without exposing it as its `source()`: tokio-rustls and
/// hyper-rustls report rustls errors inside (nested) `io::Error`s, whose `source()` skips them.
fn as_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner: &(dyn std::error::Error + 'static) =
        e.downcast_ref::<std::io::Error>()?.get_ref()?;
    as_tls_error(inner)
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field(
                "extra_headers",
                &self.extra_headers.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Body of every response the gateway sends: either its own small JSON or the upstream's stream.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Tee(TeeBody),
    /// A gateway-made answer (an error) sent once its record is durable.
    Held(Option<Hold>),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Tee(t) => Pin::new(t).poll_frame(cx),
            ProxyBody::Held(h) => match h.as_mut() {
                None => Poll::Ready(None),
                Some(hold) => match hold.poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(h.take().and_then(|h| h.last).map(Ok)),
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Tee(t) => t.is_end_stream(),
            ProxyBody::Held(h) => h.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Tee(t) => t.size_hint(),
            ProxyBody::Held(h) => h.as_ref().map(Hold::size_hint).unwrap_or_default(),
        }
    }
}

/// The end of a response, held until its record is durable (or the wait is over), so
/// that whoever reads the store after the response (`llm-bridge usage` right after a request,
/// on any replica) finds the record. Only the end is held: with a known length, the last
/// bytes; in a stream, the frame with the terminal event; otherwise the end of the chunked
/// body. Streamed bytes before it pass at once.
pub struct Hold {
    last: Option<Frame<Bytes>>,
    durable: oneshot::Receiver<()>,
    wait: Duration,
    /// Created at the first poll (a timer needs the runtime).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Hold {
    fn new(last: Option<Frame<Bytes>>, durable: oneshot::Receiver<()>, wait: Duration) -> Hold {
        Hold {
            last,
            durable,
            wait,
            deadline: None,
        }
    }

    /// Ready once the record is durable, the recorder is gone, or the wait is over.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if Pin::new(&mut self.durable).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.wait)));
        if deadline.as_mut().poll(cx).is_ready() {
            tracing::warn!(
                wait_ms = self.wait.as_millis() as u64,
                "record not durable in time; ending the response anyway (it is still queued)"
            );
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn size_hint(&self) -> SizeHint {
        let n = self
            .last
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len());
        SizeHint::with_exact(n as u64)
    }
}

/// Records `rec` and makes `response` end only once the record is durable (at most `wait`).
fn recorded(
    sink: &Arc<dyn RecordSink>,
    wait: Duration,
    rec: InterceptionRecord,
    mut response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    if wait.is_zero() {
        sink.record(rec);
        return response;
    }
    let (tx, rx) = oneshot::channel();
    sink.record_durable(rec, tx);
    let body = match std::mem::replace(response.body_mut(), ProxyBody::Full(None)) {
        ProxyBody::Full(b) => b,
        other => {
            *response.body_mut() = other;
            return response;
        }
    };
    *response.body_mut() = ProxyBody::Held(Some(Hold::new(body.map(Frame::data), rx, wait)));
    response
}

/// How the upstream body ended.
enum BodyEnd {
    /// Normally.
    Complete,
    /// The upstream connection broke mid-body, or went silent too long.
    Failed(String),
    /// The client went away; what reading the rest of the upstream's answer gave.
    ClientGone(Drained),
}

/// What reading the upstream after the client left achieved.
enum Drained {
    /// The answer was read to its end: usage is what the provider reported.
    Complete,
    /// Reading stopped early (bound reached, or the upstream failed): usage is a lower bound.
    Partial(String),
}

/// Keeps `bridge_requests_in_flight` honest: one guard per request that went upstream,
/// decremented when the guard is dropped, whichever way the request ends.
struct InFlight {
    sink: Arc<dyn RecordSink>,
    provider: Provider,
    /// The request's concurrency slot under a rate limit, released with the guard.
    _admission: Option<Admission>,
}

impl InFlight {
    fn new(
        sink: Arc<dyn RecordSink>,
        provider: Provider,
        admission: Option<Admission>,
    ) -> InFlight {
        sink.request_started(provider);
        InFlight {
            sink,
            provider,
            _admission: admission,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.sink.request_finished(self.provider);
    }
}

/// What the tee needs to observe a response and record it when it is over.
struct Watch {
    observer: Box<dyn ResponseObserver>,
    rec: InterceptionRecord,
    started: Instant,
    sink: Arc<dyn RecordSink>,
    span: Span,
    limits: Limits,
    _in_flight: InFlight,
}

impl Watch {
    /// Records the exchange. Runs in its own task when a runtime is there, so the client's
    /// last bytes are flushed before the (possibly large) JSON answer is parsed.
    fn finish(self: Box<Self>, end: BodyEnd, at: Instant) {
        self.finish_then(end, at, None)
    }

    /// [`Watch::finish`], telling `durable` once the record is safe.
    fn finish_then(
        self: Box<Self>,
        end: BodyEnd,
        at: Instant,
        durable: Option<oneshot::Sender<()>>,
    ) {
        let work = move || finish_record(*self, end, at, durable);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { work() });
            }
            Err(_) => work(),
        }
    }
}

/// Withholds the usage-only chunk of an OpenAI chat stream from a client that did not ask for
/// it. Passes whole events only (an event is held until its blank line, which SSE clients wait
/// for anyway), and gives up withholding for an event larger than the SSE line bound, so its
/// buffer stays bounded.
struct UsageChunkFilter {
    pending: BytesMut,
    max: usize,
}

impl UsageChunkFilter {
    /// Adds a chunk; returns the complete events to pass on (empty if none yet).
    fn push(&mut self, chunk: &Bytes) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.pending) {
            let event = self.pending.split_to(end);
            let withheld = std::str::from_utf8(&event).is_ok_and(|text| {
                text.lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .any(|d| is_usage_only_chunk(d.trim_start()))
            });
            if !withheld {
                out.extend_from_slice(&event);
            }
        }
        if self.pending.len() > self.max {
            out.extend_from_slice(&self.pending.split());
        }
        out.freeze()
    }

    /// What is left at the end of the body.
    fn rest(&mut self) -> Bytes {
        self.pending.split().freeze()
    }
}

/// Index just past the first blank line (end of an SSE event) in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let next = &buf[nl + 1..];
        if next.first() == Some(&b'\n') {
            return Some(nl + 2);
        }
        if next.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

/// The upstream's body on its way to the client; each chunk is shown to the observer as it
/// passes.
pub struct TeeBody {
    /// `None` once handed to the drain task.
    inner: Option<Incoming>,
    /// Boxed: the record is large, and most responses the gateway sends are its own small ones.
    watch: Option<Box<Watch>>,
    filter: Option<UsageChunkFilter>,
    /// Fires when the upstream has been silent for the idle timeout. Created the first time
    /// the upstream makes the body wait (an answer that arrives whole never needs one), and
    /// checked lazily: the deadline is only moved when it fires, not on every chunk.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    idle_timeout: Duration,
    last_frame: Instant,
    done: bool,
    /// The end of the body, waiting for the record to be durable.
    hold: Option<Hold>,
}

impl TeeBody {
    fn is_end_stream(&self) -> bool {
        if self.hold.is_some() {
            return false;
        }
        self.done
            || (self.filter.as_ref().is_none_or(|f| f.pending.is_empty())
                && self.inner.as_ref().is_none_or(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(h) = &self.hold {
            return h.size_hint();
        }
        match (&self.inner, &self.filter) {
            (Some(b), None) => b.size_hint(),
            _ => SizeHint::default(),
        }
    }

    fn end(&mut self, end: BodyEnd) {
        self.done = true;
        if let Some(w) = self.watch.take() {
            w.finish(end, Instant::now());
        }
    }

    /// The answer is complete (the upstream's body ended, or the stream's terminal event came):
    /// record it, and hold `last` (the end of the body, or the frame with the terminal event)
    /// until the record is durable. After a terminal event, whatever the upstream still sends
    /// (the end of the chunked body) passes through unobserved.
    fn end_held(&mut self, last: Option<Frame<Bytes>>, upstream_ended: bool) {
        self.done = upstream_ended;
        let Some(w) = self.watch.take() else {
            self.hold = Some(Hold::new(last, oneshot::channel().1, Duration::ZERO));
            return;
        };
        let wait = w.limits.record_wait;
        if wait.is_zero() {
            w.finish(BodyEnd::Complete, Instant::now());
            // Not waiting: the end goes out at once (the closed channel makes the hold ready).
            self.hold = Some(Hold::new(last, oneshot::channel().1, wait));
            return;
        }
        let (tx, rx) = oneshot::channel();
        w.finish_then(BodyEnd::Complete, Instant::now(), Some(tx));
        self.hold = Some(Hold::new(last, rx, wait));
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(hold) = this.hold.as_mut() {
                if hold.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let last = this.hold.take().and_then(|h| h.last);
                if last.is_some() || this.done {
                    return Poll::Ready(last.map(Ok));
                }
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.last_frame = Instant::now();
                    let Some(data) = frame.data_ref() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    let mut complete = false;
                    if let Some(w) = this.watch.as_mut() {
                        if w.rec.ttfb_ms.is_none() {
                            w.rec.ttfb_ms = Some(ms(w.started.elapsed()));
                        }
                        w.observer.feed(data);
                        complete = w.observer.answer_complete();
                    }
                    // The end to hold until the record is durable: the last byte of a body of
                    // known length, or a stream's terminal event (clients stop reading there,
                    // before the chunked body's end).
                    let upstream_ended = this.inner.as_ref().is_some_and(|b| b.is_end_stream());
                    let last = upstream_ended || complete;
                    let out = match this.filter.as_mut() {
                        None => Some(frame),
                        Some(f) => {
                            let mut out = f.push(data);
                            let rest = if upstream_ended {
                                f.rest()
                            } else {
                                Bytes::new()
                            };
                            if !rest.is_empty() {
                                let mut both = BytesMut::with_capacity(out.len() + rest.len());
                                both.extend_from_slice(&out);
                                both.extend_from_slice(&rest);
                                out = both.freeze();
                            }
                            (!out.is_empty()).then(|| Frame::data(out))
                        }
                    };
                    if last {
                        this.end_held(out, upstream_ended);
                        continue;
                    }
                    if let Some(out) = out {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let reason = format!("upstream connection broke mid-answer: {e}");
                    this.end(BodyEnd::Failed(reason));
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(None) => {
                    let rest = this.filter.as_mut().map(|f| f.rest()).unwrap_or_default();
                    this.end_held((!rest.is_empty()).then(|| Frame::data(rest)), true);
                }
                Poll::Pending => {
                    // Silence: is it over the idle timeout?
                    let deadline = this.last_frame + this.idle_timeout;
                    let idle = this.idle.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
                            deadline,
                        )))
                    });
                    while idle.as_mut().poll(cx).is_ready() {
                        let deadline = this.last_frame + this.idle_timeout;
                        if Instant::now() >= deadline {
                            let secs = this.idle_timeout.as_secs();
                            let reason = format!("upstream sent nothing for {secs} s mid-answer (limits.upstream_idle_timeout_secs)");
                            tracing::warn!(
                                timeout_s = secs,
                                "upstream stalled mid-answer; cutting the stream"
                            );
                            this.end(BodyEnd::Failed(reason.clone()));
                            this.inner = None;
                            return Poll::Ready(Some(Err(reason.into())));
                        }
                        idle.as_mut()
                            .reset(tokio::time::Instant::from_std(deadline));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        TeeBody::is_end_stream(self)
    }

    fn size_hint(&self) -> SizeHint {
        TeeBody::size_hint(self)
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        let Some(w) = self.watch.take() else { return };
        let inner = self.inner.take();
        // An empty upstream body may be dropped after hyper saw `is_end_stream` without
        // polling to the end; that is a normal end, not a cancellation.
        match inner {
            Some(inner) if !inner.is_end_stream() => {
                let left_at = Instant::now();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(drain_after_client_left(inner, w, left_at));
                    }
                    Err(_) => w.finish(
                        BodyEnd::ClientGone(Drained::Partial("no runtime to drain".into())),
                        left_at,
                    ),
                }
            }
            _ => w.finish(BodyEnd::Complete, Instant::now()),
        }
    }
}

/// The client left before the end of the answer: keep reading the upstream (bounded in time
/// and bytes) so the record gets the usage the provider reports at the end, then record.
async fn drain_after_client_left(mut inner: Incoming, mut w: Box<Watch>, left_at: Instant) {
    let deadline = tokio::time::Instant::now() + w.limits.drain_timeout;
    let mut bytes = 0usize;
    let drained = loop {
        match tokio::time::timeout_at(deadline, inner.frame()).await {
            Err(_) => {
                break Drained::Partial(format!(
                    "the upstream did not finish within {} s (limits.drain_timeout_secs)",
                    w.limits.drain_timeout.as_secs()
                ))
            }
            Ok(None) => break Drained::Complete,
            Ok(Some(Err(e))) => break Drained::Partial(format!("the upstream failed: {e}")),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len();
                    w.observer.feed(data);
                    if bytes > w.limits.drain_max_bytes {
                        break Drained::Partial(format!(
                            "the rest of the answer exceeded {} bytes (limits.drain_max_bytes)",
                            w.limits.drain_max_bytes
                        ));
                    }
                }
            }
        }
    };
    tracing::debug!(
        bytes,
        complete = matches!(drained, Drained::Complete),
        "read the upstream after the client left"
    );
    w.finish(BodyEnd::ClientGone(drained), left_at);
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
static GEMINI: Gemini = Gemini;

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
        (&Method::POST, _) if path.starts_with("/gemini/") => {
            match gemini::endpoint_of(&path["/gemini".len()..]) {
                Some((endpoint, _model)) => r(Provider::Gemini, &GEMINI, endpoint, true),
                None => Some(Err(&GEMINI)),
            }
        }
        (&Method::GET, _) if path.starts_with("/gemini/") => {
            let path = &path["/gemini".len()..];
            match (gemini::models_list(path), gemini::model_info(path)) {
                (Some(endpoint), _) => r(Provider::Gemini, &GEMINI, endpoint, false),
                // Its (empty) body is "parsed" for the model in the path, so that model policy
                // and aliases apply as to the other requests naming a model.
                (None, Some((endpoint, _))) => r(Provider::Gemini, &GEMINI, endpoint, true),
                (None, None) => Some(Err(&GEMINI)),
            }
        }
        _ if path.starts_with("/anthropic/") => Some(Err(&ANTHROPIC)),
        _ if path.starts_with("/openai/") => Some(Err(&OPENAI_CHAT)),
        _ if path.starts_with("/gemini/") => Some(Err(&GEMINI)),
        _ => None,
    }
}

/// Request headers forwarded to the provider: an explicit allowlist of what the providers'
/// APIs and SDKs use. Everything else stays behind: credentials (the server key replaces
/// them), hop-by-hop headers, cookies, proxy and forwarding headers (`x-forwarded-for`,
/// `forwarded`: the client's network is not the provider's business), `expect`, the bridge's
/// own `x-bridge-*`, and `openai-organization` / `openai-project`, which would let a client
/// pick whose bill a request goes on (they come from the server config instead).
fn is_forwarded_request_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "content-type"
            | "accept"
            | "user-agent"
            | "anthropic-version"
            | "anthropic-beta"
            // Sent by Claude Code and browser-based Anthropic clients.
            | "anthropic-dangerous-direct-browser-access"
            | "x-app"
            | "openai-beta"
            | "idempotency-key"
            | "x-request-id"
            // Google's SDKs name themselves and their version here.
            | "x-goog-api-client"
    ) || n.starts_with("x-stainless-")
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

/// The start of a token, safe to log: enough to tell tokens apart, never the secret.
fn token_prefix(token: &str) -> String {
    let n = token.chars().count();
    let keep = (crate::keys::TOKEN_PREFIX.len() + 6).min(n / 4);
    let mut p: String = token.chars().take(keep).collect();
    p.push('…');
    p
}

/// Cuts a prompt to at most `max` bytes (at a character boundary), saying so.
fn cap_prompt(p: String, max: usize) -> String {
    if p.len() <= max {
        return p;
    }
    let mut cut = max;
    while !p.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[{} more bytes not recorded]", &p[..cut], p.len() - cut)
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
    /// Set by [`Gateway::serve_gemini`].
    gemini: std::sync::OnceLock<Upstream>,
    auth: Arc<dyn Authenticate>,
    sink: Arc<dyn RecordSink>,
    limits: Limits,
    /// Request-body memory shared by all requests, in KiB permits.
    body_budget: Arc<Semaphore>,
    /// Limits enforced per request (model policy); none until [`Gateway::govern`].
    governance: std::sync::OnceLock<Arc<Governance>>,
    /// Boundary session credentials checked per request; none until
    /// [`Gateway::check_sessions`].
    sessions: std::sync::OnceLock<crate::control::sessions::SessionGate>,
}

/// Why a request body could not be read.
enum BodyError {
    TooLarge,
    Timeout,
    Busy,
    Read(String),
}

impl Gateway {
    /// Enforces `governance`'s limits on every request from now on (set once, at start).
    pub fn govern(&self, governance: Arc<Governance>) {
        let _ = self.inner.governance.set(governance);
    }

    /// Checks Boundary session credentials (`x-bridge-session-token`) on every request from
    /// now on (set once, at start).
    pub fn check_sessions(&self, gate: crate::control::sessions::SessionGate) {
        let _ = self.inner.sessions.set(gate);
    }

    pub fn new(
        anthropic: Option<Upstream>,
        openai: Option<Upstream>,
        auth: Arc<dyn Authenticate>,
        sink: Arc<dyn RecordSink>,
    ) -> Gateway {
        Self::with_limits(anthropic, openai, auth, sink, Limits::default())
    }

    /// [`Gateway::new`] with explicit limits.
    pub fn with_limits(
        anthropic: Option<Upstream>,
        openai: Option<Upstream>,
        auth: Arc<dyn Authenticate>,
        sink: Arc<dyn RecordSink>,
        limits: Limits,
    ) -> Gateway {
        Self::with_trust(
            anthropic,
            openai,
            auth,
            sink,
            limits,
            &UpstreamTrust::default(),
        )
    }

    /// [`Gateway::with_limits`] with the certificate authorities trusted for HTTPS upstreams.
    pub fn with_trust(
        anthropic: Option<Upstream>,
        openai: Option<Upstream>,
        auth: Arc<dyn Authenticate>,
        sink: Arc<dyn RecordSink>,
        limits: Limits,
        trust: &UpstreamTrust,
    ) -> Gateway {
        let mut http = HttpConnector::new();
        // Small SSE frames must leave immediately; Nagle would add up to 40 ms per event.
        http.set_nodelay(true);
        http.enforce_http(false);
        // A dead upstream host must fail fast (502) instead of holding the client until its own
        // timeout.
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(trust.client_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // The timer lets the pool close connections idle for 60 s; without one, idle
        // connections are only checked when reused, so a burst would leave up to 1,024 of them
        // open to the upstream for good.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        let kib =
            (limits.max_request_bodies_in_flight_bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        Gateway {
            inner: Arc::new(GatewayInner {
                client,
                anthropic,
                openai,
                gemini: std::sync::OnceLock::new(),
                auth,
                sink,
                limits,
                body_budget: Arc::new(Semaphore::new(kib)),
                governance: std::sync::OnceLock::new(),
                sessions: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Serves the Gemini routes through `upstream` from now on (set once, at start; until
    /// then they answer 503 like any provider not configured).
    pub fn serve_gemini(&self, upstream: Upstream) {
        let _ = self.inner.gemini.set(upstream);
    }

    /// Whether this gateway serves the request's path (provider routes only).
    pub fn serves(path: &str) -> bool {
        path.starts_with("/anthropic/")
            || path.starts_with("/openai/")
            || path.starts_with("/gemini/")
    }

    /// Reads a request body within the size, time and shared-memory bounds. The permit holds
    /// the body's share of the memory budget until the upstream has it.
    async fn read_body(
        &self,
        mut body: Incoming,
    ) -> Result<(Bytes, OwnedSemaphorePermit), BodyError> {
        let limits = &self.inner.limits;
        let max = limits.max_request_body_bytes;
        if body.size_hint().lower() > max as u64 {
            return Err(BodyError::TooLarge);
        }
        let budget = &self.inner.body_budget;
        let take = |bytes: usize| -> Result<OwnedSemaphorePermit, BodyError> {
            let kib = u32::try_from(bytes.div_ceil(1024)).map_err(|_| BodyError::TooLarge)?;
            budget
                .clone()
                .try_acquire_many_owned(kib)
                .map_err(|_| BodyError::Busy)
        };
        // Reserve what the client announced up front, the rest as it arrives.
        let announced = body.size_hint().exact().unwrap_or(0) as usize;
        let mut permit = take(announced)?;
        let mut reserved = announced.div_ceil(1024) * 1024;
        let deadline = tokio::time::Instant::now() + limits.request_body_timeout;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(BodyError::Timeout),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len += data.len();
            if len > max {
                return Err(BodyError::TooLarge);
            }
            if len > reserved {
                let more = take(len - reserved)?;
                reserved += (len - reserved).div_ceil(1024) * 1024;
                permit.merge(more);
            }
            chunks.push(data);
        }
        let bytes = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(len);
                for c in chunks {
                    b.extend_from_slice(&c);
                }
                b.freeze()
            }
        };
        Ok((bytes, permit))
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
        let peer = req.extensions().get::<ClientAddr>().map(|a| a.0);

        // 1. Who is calling (before looking at the body, so strangers learn nothing).
        let Some(token) = bridge_token(req.headers(), gemini_query(route, req.uri())) else {
            let msg = "missing bridge token: send it as `x-api-key`, `Authorization: Bearer` or (Gemini) `x-goog-api-key`";
            return self.auth_failure(
                &req,
                route,
                peer,
                None,
                "missing token",
                msg,
                started,
                started_at,
            );
        };
        let identity = match g.auth.authenticate(token).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                let prefix = token_prefix(token);
                let msg = "invalid bridge token: unknown or revoked";
                return self.auth_failure(
                    &req,
                    route,
                    peer,
                    Some(prefix),
                    "unknown or revoked token",
                    msg,
                    started,
                    started_at,
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, client_addr = ?peer, "cannot authenticate: token store unavailable");
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
            Provider::Gemini => g.gemini.get(),
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
        let mut rec = new_record(
            identity.user.clone(),
            Some(identity.key_id.clone()),
            route,
            &parts.headers,
            started_at,
        );
        rec.client_addr = peer.map(|p| p.ip().to_string());
        // 2b. A Boundary session credential: verified, and then the session, template and
        //     workspace come from the agent's enrolment, not from client headers.
        if let Some(gate) = g.sessions.get() {
            use crate::control::sessions::SessionCheck;
            match gate.check(&parts.headers).await {
                SessionCheck::Absent => {}
                SessionCheck::Valid(s) => {
                    rec.context = WorkspaceContext {
                        workspace: s.workspace,
                        template: Some(s.template),
                        session: Some(s.session_id),
                    };
                }
                SessionCheck::Refused(msg) => {
                    return self.reject(rec, adapter, StatusCode::FORBIDDEN, &msg, started)
                }
                SessionCheck::Unavailable(msg) => {
                    return self.reject(
                        rec,
                        adapter,
                        StatusCode::SERVICE_UNAVAILABLE,
                        &msg,
                        started,
                    )
                }
            }
        }
        let (body, body_permit) = match self.read_body(body).await {
            Ok(b) => b,
            Err(e) => {
                let limits = &g.limits;
                let (status, msg) = match e {
                    BodyError::TooLarge => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "request body exceeds {} bytes (limits.max_request_body_bytes)",
                            limits.max_request_body_bytes
                        ),
                    ),
                    BodyError::Timeout => (
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "request body not received within {} s (limits.request_body_timeout_secs)",
                            limits.request_body_timeout.as_secs()
                        ),
                    ),
                    BodyError::Busy => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "bridge is holding its maximum of request bodies in memory ({} bytes, limits.max_request_bodies_in_flight_bytes); retry shortly",
                            limits.max_request_bodies_in_flight_bytes
                        ),
                    ),
                    BodyError::Read(e) => (
                        StatusCode::BAD_REQUEST,
                        format!("could not read request body: {e}"),
                    ),
                };
                return self.reject(rec, adapter, status, &msg, started);
            }
        };
        let mut forward_body = body.clone();
        let mut withhold_usage_chunk = false;
        if route.has_body {
            // The path below the provider prefix: the route's endpoint, except where a path
            // names the model (Gemini), which the adapter reads from it.
            let path = parts.uri.path();
            let endpoint = &path[path[1..].find('/').map_or(path.len(), |i| i + 1)..];
            match adapter.parse_request(endpoint, &body) {
                Ok(info) => {
                    rec.model = info.model;
                    rec.streaming = info.streaming;
                    rec.prompt = info
                        .prompt
                        .map(|p| cap_prompt(p, g.limits.max_recorded_prompt_bytes));
                    rec.tools_offered = info.tools_offered;
                    rec.tool_results = info.tool_results;
                    withhold_usage_chunk = info.withhold_usage_chunk;
                    if let Some(b) = info.rewritten_body {
                        forward_body = b;
                    }
                }
                Err(bad) => {
                    return self.reject(rec, adapter, StatusCode::BAD_REQUEST, &bad.0, started)
                }
            }
        }
        drop(body);

        // 4. The limits: may this caller use this model (and under which name), is a budget
        // used up, is a rate limit reached.
        let mut admission = None;
        if let Some(gov) = g.governance.get() {
            let template = rec.context.template.clone();
            let who = Requester {
                user: &identity.user,
                key_id: Some(&identity.key_id),
                template: template.as_deref(),
            };
            if let Some(model) = rec.model.clone() {
                match gov.decide(&who, &model) {
                    Decision::Allow { model: target } if target != model => {
                        match adapter.with_model(&forward_body, &target) {
                            Some(b) => forward_body = b,
                            None => {
                                let msg = "request body could not be rewritten for a model alias";
                                return self.reject(
                                    rec,
                                    adapter,
                                    StatusCode::BAD_REQUEST,
                                    msg,
                                    started,
                                );
                            }
                        }
                        tracing::debug!(alias = %model, model = %target, "model alias applied");
                        rec.model = Some(target);
                    }
                    Decision::Allow { .. } => {}
                    Decision::Deny { message } => {
                        return self.reject(rec, adapter, StatusCode::FORBIDDEN, &message, started);
                    }
                }
            }
            if let Some(reason) = gov.over_budget(&who) {
                // Each provider's own "out of credit" answer: SDKs and agents show it as such
                // (Anthropic's billing_error, OpenAI's insufficient_quota).
                let status = match route.provider {
                    Provider::Anthropic => StatusCode::PAYMENT_REQUIRED,
                    Provider::Openai | Provider::Gemini => StatusCode::TOO_MANY_REQUESTS,
                };
                return self.reject_as(
                    rec,
                    adapter,
                    status,
                    GatewayError::BudgetExceeded,
                    &reason,
                    started,
                );
            }
            match gov.admit(&who).await {
                Ok(a) => admission = a,
                Err(refusal) => {
                    let mut r = self.reject_as(
                        rec,
                        adapter,
                        StatusCode::TOO_MANY_REQUESTS,
                        GatewayError::RateLimited,
                        &refusal.message,
                        started,
                    );
                    r.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(refusal.retry_after_secs),
                    );
                    return r;
                }
            }
        }

        let span = tracing::info_span!(
            "gen_ai.request",
            otel.name = %format!("{} {}", if route.endpoint.ends_with("/models") || route.endpoint.ends_with("/{model}") { "list_models" } else { "chat" }, rec.model.as_deref().unwrap_or("")),
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

        // 4. Build the upstream request: same method, suffix and query; server-side key and
        //    headers; the client's headers only from the allowlist.
        let Some(endpoint) = adapter.upstream_path(route.endpoint, rec.model.as_deref()) else {
            let msg = "the model cannot be named in the request path";
            return self.reject(rec, adapter, StatusCode::BAD_REQUEST, msg, started);
        };
        let pq = forwarded_query(route, &parts.uri);
        let url = match pq.as_deref() {
            Some(q) => format!("{}{}?{}", upstream.base_url, endpoint, q),
            None => format!("{}{}", upstream.base_url, endpoint),
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
            if is_forwarded_request_header(name) || upstream.forwards(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        for (name, value) in &upstream.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        let attempt = Attempts {
            client: g.client.clone(),
            keys: upstream.keys.clone(),
            adapter,
            method: parts.method.clone(),
            uri,
            headers,
            body: forward_body,
            sink: g.sink.clone(),
            provider: route.provider,
        };

        // 5. The intercept-start entry is durable before the upstream sees the prompt: a
        //    crash from here on leaves an `incomplete` record, never none.
        let in_flight = InFlight::new(g.sink.clone(), route.provider, admission);
        let mut entry = rec.clone();
        entry.outcome = Outcome::Incomplete;
        g.sink.start(entry);

        // 6. Wait for the upstream's response headers. If the client leaves meanwhile (this
        //    future is dropped), the wait continues in a task of its own (see
        //    `AwaitingUpstream`), so the answer is still read and recorded.
        let fut: ResponseFuture = Box::pin(tokio::time::timeout(
            g.limits.upstream_response_timeout,
            attempt.send(),
        ));
        let mut waiting = AwaitingUpstream {
            fut: Some(fut),
            exchange: Some(Exchange {
                gateway: self.clone(),
                route,
                rec,
                started,
                span: span.clone(),
                withhold_usage_chunk,
                body_permit,
                base_url: upstream.base_url.clone(),
                in_flight,
            }),
        };
        let result = match waiting.fut.as_mut() {
            Some(fut) => fut.instrument(span).await,
            None => unreachable!("set above"),
        };
        waiting.fut = None;
        match waiting.exchange.take() {
            Some(exchange) => exchange.respond(result),
            None => unreachable!("set above"),
        }
    }

    /// A 401: logged with the client's address, path and a safe prefix of the token, and
    /// recorded (outcome `rejected`), so failed authentications can be traced.
    #[allow(clippy::too_many_arguments)]
    fn auth_failure(
        &self,
        req: &Request<Incoming>,
        route: Route,
        peer: Option<SocketAddr>,
        prefix: Option<String>,
        reason: &'static str,
        message: &str,
        started: Instant,
        started_at: chrono::DateTime<Utc>,
    ) -> Response<ProxyBody> {
        let path = req.uri().path();
        let client_addr = peer.map(|p| p.to_string());
        tracing::warn!(
            provider = route.provider.as_str(),
            client_addr = client_addr.as_deref(),
            method = %req.method(),
            path,
            key_prefix = prefix.as_deref(),
            reason,
            "authentication failed"
        );
        let mut rec = new_record("-".into(), None, route, req.headers(), started_at);
        rec.client_addr = peer.map(|p| p.ip().to_string());
        rec.status = StatusCode::UNAUTHORIZED.as_u16();
        rec.outcome = Outcome::Rejected;
        rec.duration_ms = ms(started.elapsed());
        rec.error = Some(format!(
            "authentication failed: {reason} (from {}, {} {path}{})",
            client_addr.as_deref().unwrap_or("unknown address"),
            req.method(),
            prefix.map(|p| format!(", key {p}")).unwrap_or_default()
        ));
        recorded(
            &self.inner.sink,
            self.inner.limits.record_wait,
            rec,
            error_response(
                route.adapter,
                StatusCode::UNAUTHORIZED,
                GatewayError::Authentication,
                message,
            ),
        )
    }

    /// A 4xx before reaching the upstream: answered in the provider's format and recorded.
    fn reject(
        &self,
        rec: InterceptionRecord,
        adapter: &'static dyn ProviderAdapter,
        status: StatusCode,
        message: &str,
        started: Instant,
    ) -> Response<ProxyBody> {
        let kind = if status == StatusCode::FORBIDDEN {
            GatewayError::PermissionDenied
        } else if status.is_client_error() {
            GatewayError::InvalidRequest
        } else {
            GatewayError::UpstreamUnavailable
        };
        self.reject_as(rec, adapter, status, kind, message, started)
    }

    /// [`Gateway::reject`] with the error kind given.
    fn reject_as(
        &self,
        mut rec: InterceptionRecord,
        adapter: &'static dyn ProviderAdapter,
        status: StatusCode,
        kind: GatewayError,
        message: &str,
        started: Instant,
    ) -> Response<ProxyBody> {
        rec.status = status.as_u16();
        rec.outcome = Outcome::Rejected;
        rec.error = Some(message.to_owned());
        rec.duration_ms = ms(started.elapsed());
        tracing::info!(user = %rec.user, status = rec.status, reason = message, "rejected request");
        recorded(
            &self.inner.sink,
            self.inner.limits.record_wait,
            rec,
            error_response(adapter, status, kind, message),
        )
    }
}

/// The query of a Gemini request, where Google's clients may put their key (`?key=`), read as
/// the bridge token; `None` for the other providers, whose clients never send it there.
fn gemini_query(route: Route, uri: &Uri) -> Option<&str> {
    (route.provider == Provider::Gemini)
        .then(|| uri.query())
        .flatten()
}

/// The client's query as forwarded upstream: a Gemini `key=` (the bridge token) never leaves.
fn forwarded_query(route: Route, uri: &Uri) -> Option<std::borrow::Cow<'_, str>> {
    let q = uri.query()?;
    if route.provider != Provider::Gemini {
        return Some(q.into());
    }
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("key"))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&").into())
}

/// A record as known when a request arrives.
fn new_record(
    user: String,
    key_id: Option<String>,
    route: Route,
    headers: &HeaderMap,
    started_at: chrono::DateTime<Utc>,
) -> InterceptionRecord {
    InterceptionRecord {
        id: Uuid::now_v7(),
        user,
        key_id,
        provider: route.provider,
        endpoint: route.endpoint.to_owned(),
        model: None,
        client: header_string(headers, "user-agent"),
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
        tool_results: Vec::new(),
        context: WorkspaceContext {
            workspace: header_string(headers, "x-bridge-workspace"),
            template: header_string(headers, "x-bridge-template"),
            session: header_string(headers, "x-bridge-session"),
        },
        client_session: CLIENT_SESSION_HEADERS
            .iter()
            .find_map(|h| header_string(headers, h)),
        client_addr: None,
        error: None,
    }
}

/// Where clients put their own session id, most explicit first: the generic header, Claude
/// Code's, then Codex's.
const CLIENT_SESSION_HEADERS: &[&str] = &[
    "x-client-session-id",
    "x-claude-code-session-id",
    "session_id",
    "x-codex-session-id",
];

/// One request to a provider, tried with the keys of its pool in turn (see [`KeyPool`]).
struct Attempts {
    client: HttpsClient,
    keys: Arc<KeyPool>,
    adapter: &'static dyn ProviderAdapter,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    sink: Arc<dyn RecordSink>,
    provider: Provider,
}

impl Attempts {
    /// The first answer worth giving the client: a key's answer that is not a throttle or a
    /// failure, else the last key's answer (or error) as it is.
    async fn send(self) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let order = self.keys.order();
        let last = order.len() - 1;
        let mut result = None;
        for (n, &i) in order.iter().enumerate() {
            let key = self.keys.key(i);
            let mut headers = self.headers.clone();
            self.adapter.set_upstream_auth(&mut headers, &key.value);
            let mut req = Request::new(Full::new(self.body.clone()));
            *req.method_mut() = self.method.clone();
            *req.uri_mut() = self.uri.clone();
            *req.headers_mut() = headers;
            let r = self.client.request(req).await;
            let attempt = match &r {
                Ok(resp) => Attempt::of_status(resp.status(), resp.headers()),
                Err(_) => Attempt::Failed,
            };
            let state = self.keys.report(i, attempt);
            self.sink
                .upstream_key(self.provider, &key.name, attempt.label(), state);
            if attempt != Attempt::Answered && n < last {
                tracing::warn!(
                    provider = self.provider.as_str(),
                    key = %key.name,
                    outcome = attempt.label(),
                    breaker = state.as_str(),
                    "provider key failed; trying the next key of the pool"
                );
                continue;
            }
            result = Some(r);
            break;
        }
        result.expect("a key pool has at least one key")
    }
}

/// What the upstream's response headers (or its failure) resolve to.
type ResponseResult = Result<
    Result<Response<Incoming>, hyper_util::client::legacy::Error>,
    tokio::time::error::Elapsed,
>;
type ResponseFuture = Pin<Box<dyn Future<Output = ResponseResult> + Send>>;

/// An exchange waiting for the upstream's response headers. Dropped while still waiting
/// (the client left, so hyper dropped the handler), it hands the wait to a task of its own:
/// the upstream has the prompt, so its answer must still be read and recorded. The normal
/// path spawns nothing and pays no cross-task wake-up.
struct AwaitingUpstream {
    fut: Option<ResponseFuture>,
    exchange: Option<Exchange>,
}

impl Drop for AwaitingUpstream {
    fn drop(&mut self) {
        let (Some(fut), Some(exchange)) = (self.fut.take(), self.exchange.take()) else {
            return;
        };
        let span = exchange.span.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(
                    async move {
                        let result = fut.await;
                        // Nobody to answer: dropping the response drops its tee, which reads
                        // the rest of the answer for its usage and records the exchange.
                        drop(exchange.respond(result));
                    }
                    .instrument(span),
                );
            }
            Err(_) => drop(exchange),
        }
    }
}

/// One request on its way to the upstream and back: what turns the upstream's answer into
/// the client's response and, in the end, a record.
struct Exchange {
    gateway: Gateway,
    route: Route,
    rec: InterceptionRecord,
    started: Instant,
    span: Span,
    withhold_usage_chunk: bool,
    /// The request body's share of the memory budget, released once the upstream answered.
    body_permit: OwnedSemaphorePermit,
    base_url: String,
    in_flight: InFlight,
}

impl Exchange {
    fn respond(self, response: ResponseResult) -> Response<ProxyBody> {
        let Exchange {
            gateway,
            route,
            mut rec,
            started,
            span,
            withhold_usage_chunk,
            body_permit,
            base_url,
            in_flight,
        } = self;
        let g = &gateway.inner;
        let adapter = route.adapter;
        drop(body_permit);
        let timeout = g.limits.upstream_response_timeout;
        let failure = match response {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                let reason = error_chain(&e);
                tracing::warn!(upstream = %base_url, error = %reason, "upstream unavailable");
                // A certificate that does not verify is a configuration problem the client
                // should see named (the other causes stay in the log and the record).
                let message = match certificate_failure(&e) {
                    Some(why) => format!(
                        "upstream {} unavailable: TLS certificate verification failed: {why} (is base_url right? a private CA goes in upstream_tls.ca_file)",
                        route.provider.as_str()
                    ),
                    None => format!("upstream {} unavailable", route.provider.as_str()),
                };
                Err((
                    StatusCode::BAD_GATEWAY,
                    format!("upstream unavailable: {reason}"),
                    message,
                ))
            }
            Err(_) => {
                let secs = timeout.as_secs();
                tracing::warn!(upstream = %base_url, timeout_s = secs, "upstream did not answer in time");
                Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("upstream did not answer within {secs} s"),
                    format!(
                        "upstream {} did not answer within {secs} s (limits.upstream_response_timeout_secs)",
                        route.provider.as_str()
                    ),
                ))
            }
        };
        let response = match failure {
            Ok(r) => r,
            Err((status, reason, message)) => {
                rec.status = status.as_u16();
                rec.outcome = Outcome::UpstreamUnavailable;
                rec.error = Some(reason);
                rec.duration_ms = ms(started.elapsed());
                finish_span(&span, &rec);
                drop(in_flight);
                return recorded(
                    &g.sink,
                    g.limits.record_wait,
                    rec,
                    error_response(adapter, status, GatewayError::UpstreamUnavailable, &message),
                );
            }
        };

        // Stream the answer back; the observer sees every chunk as it passes.
        let (resp_parts, incoming) = response.into_parts();
        rec.status = resp_parts.status.as_u16();
        // Observe a stream if the upstream answered with one (even if the flag was missed).
        let is_sse = resp_parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let limits = g.limits;
        let watch = Watch {
            observer: adapter.observer(route.endpoint, is_sse, limits.observe),
            rec,
            started,
            sink: g.sink.clone(),
            span,
            limits,
            _in_flight: in_flight,
        };
        let filter = (withhold_usage_chunk && is_sse).then(|| UsageChunkFilter {
            pending: BytesMut::new(),
            max: limits.observe.max_sse_line,
        });
        let now = Instant::now();
        let tee = TeeBody {
            inner: Some(incoming),
            watch: Some(Box::new(watch)),
            filter,
            idle: None,
            idle_timeout: limits.upstream_idle_timeout,
            last_frame: now,
            done: false,
            hold: None,
        };
        let mut out = Response::new(ProxyBody::Tee(tee));
        *out.status_mut() = resp_parts.status;
        let out_headers = out.headers_mut();
        for (name, value) in &resp_parts.headers {
            if is_stripped_response_header(name) {
                continue;
            }
            // The withheld chunk changes the body's length.
            if withhold_usage_chunk && is_sse && name == header::CONTENT_LENGTH {
                continue;
            }
            out_headers.append(name.clone(), value.clone());
        }
        out
    }
}

/// Builds the record of a finished exchange from what the observer saw, and hands it over
/// (telling `durable` once it is safe, if given).
fn finish_record(w: Watch, end: BodyEnd, at: Instant, durable: Option<oneshot::Sender<()>>) {
    let Watch {
        observer,
        mut rec,
        started,
        sink,
        span,
        limits: _,
        _in_flight,
    } = w;
    let (mut outcome, failure) = match end {
        BodyEnd::Complete => (Outcome::Ok, None),
        BodyEnd::Failed(e) => (Outcome::UpstreamUnavailable, Some(e)),
        BodyEnd::ClientGone(Drained::Complete) => (Outcome::ClientCancelled, None),
        // Never a silent under-count: the record says its usage is a lower bound.
        BodyEnd::ClientGone(Drained::Partial(why)) => (
            Outcome::ClientCancelled,
            Some(format!(
                "usage incomplete: the client left before the end and {why}; token counts are a lower bound"
            )),
        ),
    };
    let Observation {
        usage,
        tool_calls,
        model,
        error,
        truncated,
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
    let mut reason = failure.or(error).or_else(|| {
        (outcome == Outcome::UpstreamError).then(|| format!("upstream answered {}", rec.status))
    });
    if truncated {
        let note = "part of the answer was too large to inspect (limits.max_sse_line_bytes / max_observed_body_bytes): usage and tool calls may be missing";
        reason = Some(match reason {
            Some(r) => format!("{r}; {note}"),
            None => note.to_owned(),
        });
    }
    rec.error = reason;
    rec.outcome = outcome;
    rec.duration_ms = ms(at - started);
    finish_span(&span, &rec);
    drop(_in_flight);
    match durable {
        Some(d) => sink.record_durable(rec, d),
        None => sink.record(rec),
    }
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
    let body = adapter.error_body_for(status.as_u16(), kind, message);
    let mut r = Response::new(ProxyBody::full(body));
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
    fn gemini_routes_carry_the_model_in_the_path_and_the_key_parameter_stays_behind() {
        let r = route(
            &Method::POST,
            "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        )
        .unwrap()
        .ok()
        .unwrap();
        assert_eq!(r.provider, Provider::Gemini);
        assert_eq!(r.endpoint, "/v1beta/models/{model}:streamGenerateContent");
        let r = route(&Method::GET, "/gemini/v1/models")
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!((r.endpoint, r.has_body), ("/v1/models", false));
        for bad in [
            "/gemini/v1beta/models/a%2F..:generateContent",
            "/gemini/v1beta/models/m:embedContent",
            "/gemini/v2/models/m:generateContent",
        ] {
            assert!(route(&Method::POST, bad).unwrap().is_err(), "{bad}");
        }
        let uri: Uri = "/gemini/v1beta/models/m:streamGenerateContent?key=brg_x&alt=sse"
            .parse()
            .unwrap();
        let g = route(&Method::POST, uri.path()).unwrap().ok().unwrap();
        assert_eq!(forwarded_query(g, &uri).as_deref(), Some("alt=sse"));
        assert_eq!(gemini_query(g, &uri), uri.query());
        let only_key: Uri = "/gemini/v1/models?key=brg_x".parse().unwrap();
        let g = route(&Method::GET, only_key.path()).unwrap().ok().unwrap();
        assert_eq!(forwarded_query(g, &only_key), None);
        // Other providers' queries pass as they are, and are never read for a token.
        let o: Uri = "/openai/v1/models?key=k".parse().unwrap();
        let r = route(&Method::GET, o.path()).unwrap().ok().unwrap();
        assert_eq!(forwarded_query(r, &o).as_deref(), Some("key=k"));
        assert_eq!(gemini_query(r, &o), None);
    }

    #[test]
    fn only_allowlisted_headers_are_forwarded() {
        for h in [
            "authorization",
            "x-api-key",
            "connection",
            "host",
            "x-bridge-session",
            "te",
            "cookie",
            "x-forwarded-for",
            "forwarded",
            "expect",
            "openai-organization",
            "openai-project",
            "proxy-authorization",
            "x-real-ip",
        ] {
            assert!(
                !is_forwarded_request_header(&HeaderName::from_static(h)),
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
                is_forwarded_request_header(&HeaderName::from_static(h)),
                "{h}"
            );
        }
    }

    #[test]
    fn usage_chunk_filter_passes_whole_events_and_drops_only_the_usage_chunk() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
            "data: [DONE]\n\n",
        );
        for split in 1..stream.len() {
            let mut f = UsageChunkFilter {
                pending: BytesMut::new(),
                max: 1 << 20,
            };
            let (a, b) = stream.as_bytes().split_at(split);
            let mut out = f.push(&Bytes::copy_from_slice(a)).to_vec();
            out.extend_from_slice(&f.push(&Bytes::copy_from_slice(b)));
            out.extend_from_slice(&f.rest());
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains("prompt_tokens"), "{out}");
            assert!(
                out.contains("\"hi\"") && out.ends_with("data: [DONE]\n\n"),
                "{out}"
            );
        }
    }

    #[test]
    fn prompts_are_capped_at_a_char_boundary_and_token_prefixes_never_reveal_the_token() {
        let p = cap_prompt("é".repeat(10), 5);
        assert!(p.starts_with("éé…"), "{p}");
        assert!(p.contains("16 more bytes"), "{p}");
        let t = "brg_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        assert_eq!(token_prefix(t), "brg_abcdef…");
        assert_eq!(token_prefix("short"), "s…");
    }
}

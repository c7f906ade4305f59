//! The HTTP server: binds, routes, serves until shutdown, then flushes the recorder.
//!
//! Provider routes (`/anthropic/...`, `/openai/...`, `/gemini/...`) go to [`Gateway`]; the server itself
//! answers `/healthz` (process alive), `/readyz` (store writable, or records spooling to
//! disk; says which) and `/metrics` (Prometheus text from [`Telemetry`]); the audit page under
//! `/ui/` is [`WebUi`] (main listener only). HTTP/1.1 with keep-alive, which is what every provider SDK speaks; over TLS when `tls:` is configured
//! ([`crate::tls`]).
//!
//! `/metrics` can be moved to a listener of its own (`metrics.listen`, plain HTTP, e.g. on
//! loopback or a management network) and/or require a bearer token (`metrics.token_file`).
//! `/healthz` and `/readyz` stay open everywhere: load balancers and orchestrators probe them
//! without credentials, and they reveal nothing but up/ready and the spool depth.
//!
//! Connections are capped (`limits.max_connections`, by default derived from the process's
//! file-descriptor limit): beyond the cap a new connection gets an immediate 503 and is
//! closed, instead of the accept loop failing on `EMFILE` and every new client waiting for
//! idle ones to time out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::auth::MetricsToken;
use crate::config::BridgeConfig;
use crate::error::Error;
use crate::governance::{Governance, Notice, Notify, Requester};
use crate::keypool::BreakerState;
use crate::keys::Authenticator;
use crate::pricing::PricingTable;
use crate::proxy::{ClientAddr, Gateway, ProxyBody, RecordSink};
use crate::record::{InterceptionRecord, Provider};
use crate::recorder::Recorder;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::tls::ServerTls;
use crate::web::WebUi;

/// Records go to the [`Recorder`], in-flight counts to [`Telemetry`].
struct RecorderSink {
    recorder: Recorder,
    telemetry: Telemetry,
    /// Budgets count a request's cost as soon as it is known on this replica.
    governance: Arc<Governance>,
    pricing: PricingTable,
}

impl RecorderSink {
    /// Budgets and rate limits count a finished request's cost and tokens on this replica
    /// right away (the recorder prices it again for the record; only when a budget exists).
    fn count_spend(&self, rec: &InterceptionRecord) {
        let who = Requester {
            user: &rec.user,
            key_id: rec.key_id.as_deref(),
            template: rec.context.template.as_deref(),
        };
        let cost = || {
            rec.model
                .as_ref()
                .and_then(|m| self.pricing.cost(m, &rec.usage))
        };
        if let Some(cost) = self.governance.has_budgets().then(cost).flatten() {
            self.governance.add_spend(&who, cost);
        }
        self.governance
            .add_tokens(&who, rec.usage.input_tokens, rec.usage.output_tokens);
    }
}

impl RecordSink for RecorderSink {
    fn record(&self, rec: InterceptionRecord) {
        self.count_spend(&rec);
        self.recorder.record(rec);
    }
    fn start(&self, rec: InterceptionRecord) {
        self.recorder.record_start(rec);
    }
    fn record_durable(&self, rec: InterceptionRecord, durable: tokio::sync::oneshot::Sender<()>) {
        self.count_spend(&rec);
        self.recorder.record_durable(rec, durable);
    }
    fn request_started(&self, provider: Provider) {
        self.telemetry.request_started(provider);
    }
    fn request_finished(&self, provider: Provider) {
        self.telemetry.request_finished(provider);
    }
    fn upstream_key(
        &self,
        provider: Provider,
        key: &str,
        outcome: &'static str,
        state: BreakerState,
    ) {
        self.telemetry
            .upstream_key(provider, key, outcome, state.as_str());
    }
}

/// Counts each budget notice and, with a webhook, POSTs it there as JSON: up to 4 attempts,
/// 1, 2 and 4 s apart; a notice still refused then is counted as undelivered and logged.
fn notifier(
    telemetry: Telemetry,
    webhook: Option<http::Uri>,
    trust: &crate::proxy::UpstreamTrust,
) -> Notify {
    let client = webhook.as_ref().map(|_| {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(trust.client_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build::<_, http_body_util::Full<bytes::Bytes>>(https)
    });
    Arc::new(move |n: &Notice| {
        telemetry.budget_notice(n.percent as u64);
        let (Some(client), Some(url)) = (client.clone(), webhook.clone()) else {
            return;
        };
        let body = bytes::Bytes::from(serde_json::to_vec(n).unwrap_or_default());
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            for attempt in 0..4u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                }
                let req = http::Request::post(url.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(http_body_util::Full::new(body.clone()));
                let Ok(req) = req else { break };
                match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(r)) if r.status().is_success() => return,
                    Ok(Ok(r)) => {
                        tracing::warn!(status = %r.status(), "budget notice webhook refused the notice")
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "budget notice webhook unreachable"),
                    Err(_) => tracing::warn!("budget notice webhook timed out"),
                }
            }
            telemetry.budget_notice_undelivered();
            tracing::error!("budget notice not delivered to the webhook after 4 attempts");
        });
    })
}

/// What the non-provider endpoints need.
#[derive(Clone)]
struct Admin {
    store: Store,
    recorder: Recorder,
    telemetry: Telemetry,
}

/// Loads the TLS pair (if any), opens the store, starts the authenticator and recorder, binds
/// `config.listen` (and `metrics.listen`) and serves until `shutdown` completes; then drains
/// open requests (up to 30 s) and flushes the recorder.
pub async fn serve(
    config: BridgeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let telemetry = Telemetry::init("bridge")?;
    install_sigbus_report();
    // Before the store and the recorder: a certificate that went bad since the config was
    // checked stops the start with nothing to undo.
    let tls = match &config.tls {
        Some(files) => {
            Some(ServerTls::new(files.clone()).map_err(|e| Error::Server(format!("tls: {e}")))?)
        }
        None => None,
    };
    let store = Store::open(&config.store).await?;
    check_store_identity(&store, &config.spool_dir).await?;
    telemetry.set_max_model_labels(config.max_model_labels);
    let recorder = Recorder::start_with(
        store.clone(),
        config.pricing.clone(),
        config.spool_dir.clone(),
        telemetry.clone(),
        crate::recorder::RecorderOptions {
            prompt_recording: config.prompt_recording,
            ..Default::default()
        },
    )?;
    let _purge = crate::retention::spawn_purge_job(store.clone(), config.retention);
    for (name, key_var, up) in [
        (
            "anthropic",
            "ANTHROPIC_API_KEY",
            &config.providers.anthropic,
        ),
        ("openai", "OPENAI_API_KEY", &config.providers.openai),
        (
            "gemini",
            "GEMINI_API_KEY (or GOOGLE_API_KEY)",
            &config.providers.gemini,
        ),
    ] {
        match (up, &config.source) {
            (Some(u), _) => {
                tracing::info!(provider = name, base_url = %u.base_url, "provider configured")
            }
            (None, Some(path)) => tracing::warn!(
                provider = name,
                config = %path.display(),
                "provider not configured: its routes answer 503 (add it under `providers:` in the config)"
            ),
            (None, None) => tracing::warn!(
                provider = name,
                "provider not configured: its routes answer 503 (set {key_var}, or run with --config bridge.yaml)"
            ),
        }
    }
    if config.source.is_none() {
        let dir = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        tracing::info!(
            store = %config.store,
            spool_dir = %config.spool_dir.display(),
            working_dir = %dir,
            "no --config given: using the built-in defaults"
        );
    }
    let governance = Governance::load(store.clone()).await?;
    governance.spawn_refresh();
    governance.on_notice(
        config.budget_notices.thresholds.clone(),
        notifier(
            telemetry.clone(),
            config.budget_notices.webhook.clone(),
            &config.upstream_trust,
        ),
    );
    let gateway = Gateway::with_trust(
        config.providers.anthropic.clone(),
        config.providers.openai.clone(),
        Arc::new(Authenticator::new(store.clone())),
        Arc::new(RecorderSink {
            recorder: recorder.clone(),
            telemetry: telemetry.clone(),
            governance: governance.clone(),
            pricing: config.pricing.clone(),
        }),
        config.limits,
        &config.upstream_trust,
    );
    gateway.govern(governance);
    // Session credentials are checked whether or not the agent routes are enabled: a
    // credential that cannot be verified is refused, never ignored.
    gateway.check_sessions(crate::control::sessions::SessionGate::new(
        store.clone(),
        config.control_plane.require_session,
        config.control_plane.require_session_templates.clone(),
    ));
    if let Some(gemini) = config.providers.gemini.clone() {
        gateway.serve_gemini(gemini);
    }
    let admin = Admin {
        store: store.clone(),
        recorder: recorder.clone(),
        telemetry,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Server(format!("cannot listen on {}: {e}", config.listen)))?;
    // The bound address, which differs from the configured one for port 0.
    let listen = listener.local_addr().unwrap_or(config.listen);
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            Error::Server(format!("cannot listen on {addr} (metrics.listen): {e}"))
        })?),
        None => None,
    };
    let conn_limits = ConnLimits {
        max_connections: config
            .max_connections
            .unwrap_or_else(default_max_connections),
        header_read_timeout: config.header_read_timeout,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        listen = %listen,
        tls = tls.is_some(),
        max_connections = conn_limits.max_connections,
        store = store.describe(),
        anthropic_base_url = %format!("{scheme}://{listen}/anthropic"),
        openai_base_url = %format!("{scheme}://{listen}/openai/v1"),
        gemini_base_url = %format!("{scheme}://{listen}/gemini"),
        "bridge serving"
    );
    let reloader = tls
        .as_ref()
        .map(|t| t.spawn_reloader(crate::tls::RELOAD_CHECK_INTERVAL));
    // One shutdown signal for every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let control = config.control_plane.enabled.then(|| {
        crate::control::ControlPlane::start(
            store.clone(),
            stop_rx.clone(),
            Some(admin.telemetry.clone()),
        )
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(
            metrics_listen = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            token = config.metrics.token.is_some(),
            "metrics served on their own listener (plain HTTP)"
        );
        let routes = Routes {
            gateway: None,
            control: None,
            admin: Some(admin.clone()),
            metrics: MetricsAccess::from_token(&config.metrics.token),
            web: None,
        };
        // Scrapers and probes only: a few connections are plenty.
        let limits = ConnLimits {
            max_connections: 64,
            header_read_timeout: config.header_read_timeout,
        };
        tokio::spawn(run(l, routes, None, stopped(stop_rx.clone()), limits))
    });
    let in_flight = admin.telemetry.clone();
    let routes = Routes {
        gateway: Some(gateway),
        control,
        metrics: if metrics_server.is_some() {
            MetricsAccess::Elsewhere
        } else {
            MetricsAccess::from_token(&config.metrics.token)
        },
        admin: Some(admin),
        web: Some(WebUi::new(
            store.clone(),
            config.admin_token.clone(),
            tls.is_some(),
        )),
    };
    run(
        listener,
        routes,
        tls.as_ref().map(|t| t.acceptor().clone()),
        stopped(stop_rx),
        conn_limits,
    )
    .await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    if let Some(r) = reloader {
        r.abort();
    }
    // A request that ended during the drain hands its record over from a task of its own
    // (`Watch::finish`), possibly after its connection closed: wait for those hand-overs
    // (bounded: they only parse and enqueue) so the records reach the store now, not the
    // spool for the next start.
    let deadline = tokio::time::Instant::now() + RECORD_HANDOVER_TIMEOUT;
    while in_flight.requests_in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    recorder.shutdown().await;
    tracing::info!("bridge stopped; records flushed");
    Ok(())
}

/// Longest wait at shutdown for the records of requests that just ended to be handed over.
const RECORD_HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves a gateway on an already bound listener (the benchmark uses this without a store).
pub async fn serve_gateway(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limits = ConnLimits {
        max_connections: default_max_connections(),
        header_read_timeout: crate::config::DEFAULT_HEADER_READ_TIMEOUT,
    };
    let routes = Routes {
        gateway: Some(gateway),
        control: None,
        admin: None,
        metrics: MetricsAccess::Open,
        web: None,
    };
    run(listener, routes, None, shutdown, limits).await;
}

/// Bounds on client connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Half the file descriptors the process may open (each client connection may need one to
/// the upstream too), less a reserve for the store, the spool and logs. Raises the soft limit
/// to the hard one first, as servers commonly do.
pub fn default_max_connections() -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                if lim.rlim_cur < lim.rlim_max {
                    let raised = libc::rlimit {
                        rlim_cur: lim.rlim_max,
                        rlim_max: lim.rlim_max,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                        lim = raised;
                    }
                }
                let fds = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX / 2);
                return (fds.saturating_sub(64) / 2).clamp(16, 1 << 20);
            }
        }
    }
    1024
}

/// What a connection over the cap is told before it is closed. Both providers' SDKs read
/// `error.message` (Anthropic also `type`/`error.type`, OpenAI `error.code`), and the provider
/// is not known before the request is read, so the body satisfies both formats.
fn over_capacity_response(max: usize) -> String {
    let body = serde_json::json!({
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "code": "too_many_connections",
            "param": null,
            "message": format!("bridge has its maximum of {max} connections open (limits.max_connections); retry shortly"),
        }
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers a connection over the cap with [`over_capacity_response`] (after the handshake on
/// a TLS listener: a plain-text answer would be noise to a TLS client) and closes it.
async fn refuse(stream: tokio::net::TcpStream, tls: Option<TlsAcceptor>, max: usize) {
    let work = async {
        match tls {
            None => write_refusal(stream, max).await,
            Some(acceptor) => write_refusal(acceptor.accept(stream).await?, max).await,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), work).await;
}

async fn write_refusal<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    max: usize,
) -> std::io::Result<()> {
    let reply = over_capacity_response(max);
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await?;
    // Read what the client sent (bounded) so closing does not reset the connection before it
    // has read the answer.
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < 64 * 1024 {
        match stream.read(&mut buf).await? {
            0 => break,
            n => total += n,
        }
    }
    Ok(())
}

/// What one listener answers: the provider routes (the main listener), the operational
/// endpoints, and whether `/metrics` is among them.
#[derive(Clone)]
struct Routes {
    gateway: Option<Gateway>,
    /// The Boundary agents' API (`/boundary/v1/...`), on the main listener.
    control: Option<Arc<crate::control::ControlPlane>>,
    admin: Option<Admin>,
    metrics: MetricsAccess,
    /// The audit page (`/ui/`), on the main listener only.
    web: Option<Arc<WebUi>>,
}

/// Who may read `/metrics` on a listener.
#[derive(Clone)]
enum MetricsAccess {
    Open,
    /// `Authorization: Bearer` with this token; 401 otherwise.
    Token(MetricsToken),
    /// Served on the separate metrics listener: 404 here.
    Elsewhere,
}

impl MetricsAccess {
    fn from_token(token: &Option<MetricsToken>) -> MetricsAccess {
        match token {
            Some(t) => MetricsAccess::Token(t.clone()),
            None => MetricsAccess::Open,
        }
    }
}

async fn run(
    listener: TcpListener,
    routes: Routes,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnLimits,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut last_refusal_log: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(max_connections = limits.max_connections, client_addr = %peer, "connection limit reached; refusing new connections with 503");
                last_refusal_log = Some(std::time::Instant::now());
            }
            tokio::spawn(refuse(stream, tls.clone(), limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let routes = routes.clone();
        // Taken now so that shutdown waits for a connection still in its TLS handshake too.
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, routes, limits, watcher).await,
                // The handshake gets the time a client has to send its request headers.
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, peer, routes, limits, watcher).await
                        }
                        // Scanners, clients that do not trust the certificate, plain HTTP sent
                        // to the TLS port: the client sees why; the log would only be noise.
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for open requests");
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open requests still running after 30 s; closing them");
    }
}

/// HTTP/1.1 on one accepted connection (plain or TLS), until it closes or shutdown drains it.
async fn serve_connection<S>(
    stream: S,
    peer: std::net::SocketAddr,
    routes: Routes,
    limits: ConnLimits,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ClientAddr(peer));
        let routes = routes.clone();
        async move { Ok::<_, std::convert::Infallible>(dispatch(req, &routes).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn dispatch(req: Request<Incoming>, routes: &Routes) -> Response<ProxyBody> {
    let path = req.uri().path();
    if let Some(gateway) = &routes.gateway {
        if let Some(provider) = provider_root(req.method(), path) {
            return provider_root_answer(req.method(), provider);
        }
        if Gateway::serves(path) {
            return gateway.handle(req).await;
        }
    }
    if let (Some(control), true) = (&routes.control, path.starts_with("/boundary/v1/")) {
        return crate::control::api::handle(req, control).await;
    }
    if let Some(web) = routes.web.as_ref().filter(|_| WebUi::serves(path)) {
        return web.handle(req).await;
    }
    match (req.method(), path, routes.admin.as_ref()) {
        (&Method::GET, "/healthz", _) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz", Some(a)) => readiness(a).await,
        (&Method::GET, "/readyz", None) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/metrics", Some(a)) => match &routes.metrics {
            MetricsAccess::Open => metrics(a),
            MetricsAccess::Token(t) if t.admits(req.headers()) => metrics(a),
            MetricsAccess::Token(_) => {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    "application/json",
                    r#"{"error":"/metrics needs `Authorization: Bearer TOKEN` with the token of metrics.token_file"}"#.into(),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"metrics\""),
                );
                r
            }
            MetricsAccess::Elsewhere => not_found(routes),
        },
        _ => not_found(routes),
    }
}

/// The provider a `GET`/`HEAD` of a base URL (`/anthropic`, `/openai/v1`, ...) is about. Clients
/// probe their base URL at start (Claude Code sends `HEAD /anthropic`); a 404 there reads as
/// "wrong base URL" although every route behind it works.
fn provider_root(method: &Method, path: &str) -> Option<&'static str> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    match path.trim_end_matches('/') {
        "/anthropic" | "/anthropic/v1" => Some("anthropic"),
        "/openai" | "/openai/v1" => Some("openai"),
        "/gemini" | "/gemini/v1beta" | "/gemini/v1" => Some("gemini"),
        _ => None,
    }
}

fn provider_root_answer(method: &Method, provider: &str) -> Response<ProxyBody> {
    let body = if method == Method::HEAD {
        String::new()
    } else {
        serde_json::json!({
            "service": "llm-bridge",
            "provider": provider,
            "message": format!("point the {provider} SDK here; requests go to /{provider}/{}/...",
                if provider == "gemini" { "v1beta" } else { "v1" }),
        })
        .to_string()
    };
    text(StatusCode::OK, "application/json", body)
}

fn metrics(a: &Admin) -> Response<ProxyBody> {
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        a.telemetry.render_prometheus(),
    )
}

fn not_found(routes: &Routes) -> Response<ProxyBody> {
    let body = if routes.gateway.is_some() {
        r#"{"error":"not found: provider routes are /anthropic/v1/... and /openai/v1/..."}"#
    } else {
        r#"{"error":"not found: this listener serves /metrics, /healthz and /readyz"}"#
    };
    text(StatusCode::NOT_FOUND, "application/json", body.into())
}

/// Ready when the store takes writes, or when it does not but records can still be spooled.
/// `store` says which: "ok", or why not (the last write's error, or the probe's). The probe is
/// cheap (no scan of the records): on SQLite a check that the file is still the one opened,
/// on PostgreSQL `SELECT 1`.
async fn readiness(a: &Admin) -> Response<ProxyBody> {
    let probe = tokio::time::timeout(Duration::from_secs(2), a.store.probe()).await;
    let (records, bytes) = a.recorder.spool_depth();
    let failure = match probe {
        Ok(Ok(())) => a.recorder.store_failure(),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("store probe timed out after 2 s".into()),
    };
    a.telemetry.set_store_up(failure.is_none());
    let spool_ok = a.telemetry.spool_dropped_total() == 0;
    let ready = failure.is_none() || spool_ok;
    let body = serde_json::json!({
        "ready": ready,
        "store": if failure.is_none() { "ok" } else { "failing" },
        "store_error": failure,
        "spooled_records": records,
        "spooled_bytes": bytes,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "application/json", body.to_string())
}

/// Refuses to serve on a store that is not the one this bridge used before (its id is kept
/// next to the spool): a deleted or replaced database would otherwise be silently recreated
/// empty, with every key and record gone.
async fn check_store_identity(store: &Store, spool_dir: &std::path::Path) -> Result<(), Error> {
    let id = store.identity().await?;
    let marker = spool_dir.join("store-id");
    match std::fs::read_to_string(&marker) {
        Ok(known) if known.trim() == id => Ok(()),
        Ok(known) => Err(Error::Store(format!(
            "store {} is not the store this bridge used before (its id is {id}, {} says {}): it was deleted or replaced. Restore it, or delete {} to start on this store",
            store.describe(),
            marker.display(),
            known.trim(),
            marker.display()
        ))),
        Err(_) => {
            crate::private_files::create_dir_all(spool_dir).map_err(|e| Error::Spool {
                path: spool_dir.display().to_string(),
                reason: e.to_string(),
            })?;
            crate::private_files::write(&marker, format!("{id}\n").as_bytes()).map_err(|e| Error::Spool {
                path: marker.display().to_string(),
                reason: e.to_string(),
            })
        }
    }
}

/// A SIGBUS means SQLite's memory-mapped `-shm` file became unusable under it (truncated, or
/// on a full disk): the process cannot continue, but it must not die without a word. The
/// handler writes one JSON log line (async-signal-safe: a static buffer and `write(2)`), then
/// restores the default action and lets the signal kill the process.
fn install_sigbus_report() {
    #[cfg(unix)]
    {
        extern "C" fn on_sigbus(_: libc::c_int) {
            const MSG: &[u8] = b"{\"level\":\"ERROR\",\"message\":\"SIGBUS: the SQLite shared-memory file (-shm) became unusable (truncated, made unwritable or on a full disk); bridge stops. Records not yet stored are in the spool; fix the store and restart\",\"target\":\"bridge::server\"}\n";
            // SAFETY: write(2), signal(2) and raise(3) are async-signal-safe.
            unsafe {
                libc::write(2, MSG.as_ptr().cast(), MSG.len());
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
                libc::raise(libc::SIGBUS);
            }
        }
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            libc::signal(libc::SIGBUS, on_sigbus as *const () as libc::sighandler_t);
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

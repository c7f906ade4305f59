//! The HTTP server: binds, routes, serves until shutdown, then flushes the recorder.
//!
//! Provider routes (`/anthropic/...`, `/openai/...`) go to [`Gateway`]; the server itself
//! answers `/healthz` (process alive), `/readyz` (store reachable, or records spooling to
//! disk) and `/metrics` (Prometheus text from [`Telemetry`]). HTTP/1.1 with keep-alive, which
//! is what every provider SDK speaks.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::BridgeConfig;
use crate::error::Error;
use crate::keys::Authenticator;
use crate::proxy::{Gateway, ProxyBody, RecordSink};
use crate::record::{InterceptionRecord, Provider};
use crate::recorder::Recorder;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Records go to the [`Recorder`], in-flight counts to [`Telemetry`].
struct RecorderSink {
    recorder: Recorder,
    telemetry: Telemetry,
}

impl RecordSink for RecorderSink {
    fn record(&self, rec: InterceptionRecord) {
        self.recorder.record(rec);
    }
    fn request_started(&self, provider: Provider) {
        self.telemetry.request_started(provider);
    }
    fn request_finished(&self, provider: Provider) {
        self.telemetry.request_finished(provider);
    }
}

/// What the non-provider endpoints need.
#[derive(Clone)]
struct Admin {
    store: Store,
    recorder: Recorder,
    telemetry: Telemetry,
}

/// Opens the store, starts the authenticator and recorder, binds `config.listen` and serves
/// until `shutdown` completes; then drains open requests (up to 30 s) and flushes the recorder.
pub async fn serve(
    config: BridgeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let telemetry = Telemetry::init("bridge")?;
    let store = Store::open(&config.store).await?;
    let recorder = Recorder::start(
        store.clone(),
        config.pricing.clone(),
        config.spool_dir.clone(),
        telemetry.clone(),
    )?;
    for (name, key_var, up) in [
        (
            "anthropic",
            "ANTHROPIC_API_KEY",
            &config.providers.anthropic,
        ),
        ("openai", "OPENAI_API_KEY", &config.providers.openai),
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
    let gateway = Gateway::new(
        config.providers.anthropic.clone(),
        config.providers.openai.clone(),
        Arc::new(Authenticator::new(store.clone())),
        Arc::new(RecorderSink {
            recorder: recorder.clone(),
            telemetry: telemetry.clone(),
        }),
    );
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
    tracing::info!(
        listen = %listen,
        store = store.describe(),
        anthropic_base_url = %format!("http://{listen}/anthropic"),
        openai_base_url = %format!("http://{listen}/openai/v1"),
        "bridge serving"
    );
    run(listener, gateway, Some(admin), shutdown).await;
    recorder.shutdown().await;
    tracing::info!("bridge stopped; records flushed");
    Ok(())
}

/// Serves a gateway on an already bound listener (the benchmark uses this without a store).
pub async fn serve_gateway(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    run(listener, gateway, None, shutdown).await;
}

async fn run(
    listener: TcpListener,
    gateway: Gateway,
    admin: Option<Admin>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
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
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let admin = admin.clone();
        let service = service_fn(move |req| {
            let gateway = gateway.clone();
            let admin = admin.clone();
            async move {
                Ok::<_, std::convert::Infallible>(dispatch(req, &gateway, admin.as_ref()).await)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
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

async fn dispatch(
    req: Request<Incoming>,
    gateway: &Gateway,
    admin: Option<&Admin>,
) -> Response<ProxyBody> {
    let path = req.uri().path();
    if Gateway::serves(path) {
        return gateway.handle(req).await;
    }
    match (req.method(), path, admin) {
        (&Method::GET, "/healthz", _) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz", Some(a)) => readiness(a).await,
        (&Method::GET, "/readyz", None) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/metrics", Some(a)) => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            a.telemetry.render_prometheus(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not found: provider routes are /anthropic/v1/... and /openai/v1/..."}"#
                .into(),
        ),
    }
}

/// Ready when the store answers, or when it does not but records can still be spooled.
async fn readiness(a: &Admin) -> Response<ProxyBody> {
    let probe = tokio::time::timeout(Duration::from_secs(2), a.store.count_interceptions()).await;
    let (records, bytes) = a.recorder.spool_depth();
    let store = match probe {
        Ok(Ok(_)) => "ok",
        Ok(Err(_)) => "unreachable",
        Err(_) => "timeout",
    };
    let body = serde_json::json!({
        "ready": true,
        "store": store,
        "spooled_records": records,
        "spooled_bytes": bytes,
    });
    text(StatusCode::OK, "application/json", body.to_string())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

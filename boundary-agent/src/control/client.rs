//! HTTP(S) to the control plane: one connection pool, the agent's token and identity on every
//! request, a time limit on every request.
//!
//! TLS is rustls with the webpki roots (Mozilla's list, built in: the host's CA bundle does
//! not matter) plus the certificates of `--ca-file` (a private CA). Plain `http://` works too,
//! for a control plane on the same host or behind a TLS-terminating proxy on loopback.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::{Error, Result};

/// An answer: status, headers and the whole body (control-plane bodies are small).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The server's `{"error": "..."}`, or the body as text.
    pub fn error_text(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(200)
                    .collect()
            })
    }
}

pub struct ControlPlane {
    /// `https://host:port` without a trailing slash.
    base: String,
    token: String,
    hostname: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl ControlPlane {
    /// `url`: `https://HOST:PORT` (or `http://`); `token_file`: the agent token, one line;
    /// `ca_file`: extra trusted CA certificates (PEM).
    pub fn new(url: &str, token_file: &Path, ca_file: Option<&Path>) -> Result<ControlPlane> {
        let base = url.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| Error::Agent(format!("--control-plane {url}: not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("https") | Some("http") => {}
            _ => {
                return Err(Error::Agent(format!(
                    "--control-plane {url}: expected https://HOST:PORT (or http:// on a trusted network)"
                )))
            }
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(Error::Agent(format!(
                "--control-plane {url}: give the server's base URL only (https://HOST:PORT), \
                 the agent adds /boundary/v1/..."
            )));
        }
        let text = std::fs::read_to_string(token_file).map_err(|source| Error::File {
            path: token_file.into(),
            source,
        })?;
        let token = text.trim().to_string();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(Error::Agent(format!(
                "{}: expected one agent token (bnd_agent_..., from `llm-bridge agents create`)",
                token_file.display()
            )));
        }
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(ca) = ca_file {
            use rustls_pki_types::pem::PemObject;
            let shown = ca.display();
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca)
                .map_err(|e| Error::Agent(format!("--ca-file {shown}: cannot read: {e}")))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Agent(format!("--ca-file {shown}: not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Agent(format!(
                    "--ca-file {shown}: no certificate in it (expected BEGIN CERTIFICATE blocks)"
                )));
            }
            for (i, c) in certs.into_iter().enumerate() {
                roots.add(c).map_err(|e| {
                    Error::Agent(format!(
                        "--ca-file {shown}: certificate {} is unusable: {e}",
                        i + 1
                    ))
                })?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Agent(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .build(connector);
        // The kernel's (UTS namespace's) hostname, as `hostname` prints it.
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Ok(ControlPlane {
            base,
            token,
            hostname,
            client,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// One request: `path` starts with `/boundary/v1/`; `body` is JSON. An error is a
    /// transport failure or the time limit; an HTTP error status is a [`Reply`].
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Reply> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("authorization", format!("Bearer {}", self.token))
            .header("x-boundary-agent-version", env!("CARGO_PKG_VERSION"))
            .header("x-boundary-agent-host", &self.hostname);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Agent(format!("building a request: {e}")))?;
        let work = async {
            let resp =
                self.client.request(req).await.map_err(|e| {
                    Error::Agent(format!("control plane {}: {}", self.base, chain(&e)))
                })?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Agent(format!("control plane {}: reading: {e}", self.base)))?
                .to_bytes();
            Ok(Reply {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| {
            Error::Agent(format!(
                "control plane {}: no answer within {} s",
                self.base,
                timeout.as_secs_f32()
            ))
        })?
    }
}

/// An error and its causes on one line (hyper's own message is only "client error").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cur = c.source();
    }
    text
}

/// Exponential backoff from 0.5 s to 30 s, each wait drawn at random between half and all of
/// the current step, so that a fleet does not come back in lockstep after an outage.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            step: Backoff::FIRST,
        }
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(30);

    /// The next wait; the step after it doubles.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(Backoff::MAX);
        let mut b = [0u8; 4];
        let _ = getrandom::getrandom(&mut b);
        let fraction = 0.5 + 0.5 * (u32::from_le_bytes(b) as f64 / u32::MAX as f64);
        step.mul_f64(fraction).max(Backoff::FIRST / 2)
    }

    pub fn reset(&mut self) {
        self.step = Backoff::FIRST;
    }
}

/// Says something at most once a minute (a revoked token must not fill the journal).
#[derive(Debug, Default)]
pub struct OncePerMinute {
    last: Option<std::time::Instant>,
}

impl OncePerMinute {
    pub fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_with_jitter() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..12).map(|_| b.next_wait()).collect();
        assert!(waits[0] >= Duration::from_millis(250) && waits[0] <= Duration::from_millis(500));
        assert!(waits[3] >= Duration::from_secs(2) && waits[3] <= Duration::from_secs(4));
        assert!(waits.iter().all(|w| *w <= Backoff::MAX));
        assert!(waits[11] >= Duration::from_secs(15));
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(500));
    }

    #[test]
    fn a_token_file_must_hold_one_token_and_the_url_only_a_base() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "bnd_agent_abc\n").unwrap();
        let cp = ControlPlane::new("https://127.0.0.1:8787/", &token, None).unwrap();
        assert_eq!(cp.base(), "https://127.0.0.1:8787");
        assert!(!format!("{cp:?}").contains("bnd_agent_abc"));
        assert!(ControlPlane::new("ftp://x", &token, None).is_err());
        let e = ControlPlane::new("https://h:1/boundary/v1", &token, None).unwrap_err();
        assert!(e.to_string().contains("base URL only"), "{e}");
        std::fs::write(&token, "two tokens\n").unwrap();
        assert!(ControlPlane::new("https://h:1", &token, None).is_err());
    }
}

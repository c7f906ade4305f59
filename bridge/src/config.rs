//! `bridge.yaml`: parsed and validated once, at startup, into [`BridgeConfig`].
//!
//! ```yaml
//! listen: 127.0.0.1:8787          # default
//! store: bridge.db                # SQLite path, sqlite://PATH or postgres://USER@HOST:PORT/DB
//! spool_dir: bridge-spool         # where records wait while the store is down
//! providers:
//!   anthropic:
//!     base_url: https://api.anthropic.com   # or an existing gateway, e.g. http://gw/anthropic
//!     api_key_env: ANTHROPIC_API_KEY        # or api_key: sk-ant-...
//!   openai:
//!     base_url: https://api.openai.com
//!     api_key_env: OPENAI_API_KEY
//!   gemini:
//!     base_url: https://generativelanguage.googleapis.com
//!     api_key_env: GEMINI_API_KEY
//! price_list: /etc/llm-bridge/prices.json   # optional: replaces the shipped price list
//! pricing:                        # USD per million tokens; overrides single models
//!   my-finetune: { input: 1.0, output: 2.0 }
//!   my-org-*: { input: 1.0, output: 2.0 }    # every model starting with my-org-
//! limits:                         # every field optional; defaults in `proxy::Limits`
//!   max_connections: 4096
//!   upstream_response_timeout_secs: 600
//! upstream_tls:                   # optional: HTTPS upstreams behind a private CA
//!   ca_file: /etc/bridge/upstream-ca.pem   # PEM; trusted in addition to the webpki roots
//! tls:                            # optional: serve HTTPS (reloaded when the files change)
//!   cert_file: /etc/llm-bridge/tls/cert.pem  # PEM chain, server certificate first
//!   key_file: /etc/llm-bridge/tls/key.pem    # PEM key: PKCS#8, RSA or EC, unencrypted
//! metrics:                        # optional: protect /metrics (default: open on `listen`)
//!   listen: 127.0.0.1:9090        # serve /metrics (and /healthz, /readyz) here, not on `listen`
//!   token_file: /etc/llm-bridge/metrics-token   # require `Authorization: Bearer TOKEN`
//! prompt_recording: full          # full | redacted | none (see `redact`)
//! retention:                      # optional; without it records are kept forever
//!   interceptions: 400d           # see `retention`
//!   prompts: 30d
//! control_plane:                  # Boundary agents (see `control` and docs/CONTROL_PLANE.md)
//!   enabled: true                 # default: the /boundary/v1 routes answer
//!   require_session: false        # refuse AI requests without a valid session credential
//!   require_session_templates: [] # ... or only those claiming these templates
//!   events_retention: 90d         # agent events older than this are deleted
//!   admin_token_file: /etc/llm-bridge/admin-token   # the audit page's login
//! ```
//!
//! Every error names the file, line, column and field, so a typo is fixed in one look. With no
//! file, the defaults above apply and a provider is configured only if its standard key
//! variable (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`) is set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;
use serde::Deserialize;

use crate::auth::MetricsToken;
use crate::error::Error;
use crate::keypool::KeyPool;
use crate::pricing::{ModelPrice, PriceList, PricingTable};
use crate::proxy::{Limits, Upstream, UpstreamTrust};
use crate::redact::PromptRecording;
use crate::retention::{parse_age, Retention};
use crate::tls::TlsFiles;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
pub const DEFAULT_STORE: &str = "bridge.db";
pub const DEFAULT_SPOOL_DIR: &str = "bridge-spool";
const DEFAULT_ANTHROPIC_URL: &str = "https://api.anthropic.com";
const DEFAULT_OPENAI_URL: &str = "https://api.openai.com";
const DEFAULT_GEMINI_URL: &str = "https://generativelanguage.googleapis.com";

/// The validated configuration of a bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub listen: SocketAddr,
    /// Store URL as [`crate::store::Store::open`] takes it.
    pub store: String,
    pub spool_dir: PathBuf,
    pub providers: Providers,
    pub pricing: PricingTable,
    /// Bounds on requests, upstreams and memory.
    pub limits: Limits,
    /// Most client connections open at once; `None`: derived from the file-descriptor limit.
    pub max_connections: Option<usize>,
    /// Most distinct model names used as metric labels (others count as "other").
    pub max_model_labels: usize,
    /// Time a connection may take to send a request's headers, and stay idle between
    /// requests.
    pub header_read_timeout: Duration,
    /// Certificate authorities trusted for HTTPS upstreams (`upstream_tls:`).
    pub upstream_trust: UpstreamTrust,
    /// Serve HTTPS with these files (`tls:`); `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Where `/metrics` is served and who may read it (`metrics:`).
    pub metrics: MetricsSettings,
    /// Where the configuration came from (`None`: built-in defaults).
    pub source: Option<PathBuf>,
    /// What records keep of prompts (`prompt_recording:`).
    pub prompt_recording: PromptRecording,
    /// How long records and prompts are kept (`retention:`).
    pub retention: Retention,
    /// When budget notices go out and where (`budget_notices:`).
    pub budget_notices: BudgetNotices,
    /// The audit page's login (`control_plane.admin_token_file`); `None`: the page is off.
    pub admin_token: Option<crate::web::auth::AdminToken>,
    /// Boundary's control plane (`control_plane:`).
    pub control_plane: ControlPlaneSettings,
}

/// `control_plane:`: Bridge as the control plane of Boundary agents.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneSettings {
    /// The `/boundary/v1/` routes answer (default true).
    pub enabled: bool,
    /// Refuse AI requests without a valid Boundary session credential.
    pub require_session: bool,
    /// Refuse AI requests without one that claim (`x-bridge-template`) one of these templates.
    pub require_session_templates: Vec<String>,
    /// Agent events older than this are deleted by the retention task.
    pub events_retention: chrono::Duration,
    /// The file holding the audit page's login token (read by the UI; checked here to be a
    /// readable, non-empty file).
    pub admin_token_file: Option<PathBuf>,
}

/// Default of [`ControlPlaneSettings::events_retention`].
pub const DEFAULT_EVENTS_RETENTION_DAYS: i64 = crate::retention::DEFAULT_EVENTS_RETENTION_DAYS;

impl Default for ControlPlaneSettings {
    fn default() -> Self {
        ControlPlaneSettings {
            enabled: true,
            require_session: false,
            require_session_templates: Vec::new(),
            events_retention: chrono::Duration::days(DEFAULT_EVENTS_RETENTION_DAYS),
            admin_token_file: None,
        }
    }
}

/// `budget_notices:`: fractions of a budget (0.85 = 85%) and an optional webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetNotices {
    pub thresholds: Vec<f64>,
    pub webhook: Option<http::Uri>,
}

impl Default for BudgetNotices {
    fn default() -> Self {
        BudgetNotices {
            thresholds: crate::governance::DEFAULT_NOTICE_THRESHOLDS.to_vec(),
            webhook: None,
        }
    }
}

/// Default of [`BridgeConfig::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `metrics:`. By default `/metrics` is open on the main listener (which itself defaults to
/// loopback); a separate listener, a token, or both protect it on a listener clients reach.
#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    /// Serve `/metrics` on this address (plain HTTP) and answer 404 for it on `listen`.
    pub listen: Option<SocketAddr>,
    /// Require `Authorization: Bearer` with this token (401 otherwise), wherever served.
    pub token: Option<MetricsToken>,
}

/// Configured upstreams; `None` means the provider's routes answer 503.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    pub anthropic: Option<Upstream>,
    pub openai: Option<Upstream>,
    pub gemini: Option<Upstream>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    store: Option<String>,
    spool_dir: Option<PathBuf>,
    #[serde(default)]
    providers: RawProviders,
    pricing: Option<std::collections::BTreeMap<String, ModelPrice>>,
    price_list: Option<PathBuf>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    upstream_tls: RawUpstreamTls,
    tls: Option<RawTls>,
    #[serde(default)]
    metrics: RawMetrics,
    prompt_recording: Option<PromptRecording>,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    budget_notices: RawBudgetNotices,
    #[serde(default)]
    control_plane: RawControlPlane,
}

/// `control_plane:`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControlPlane {
    enabled: Option<bool>,
    require_session: Option<bool>,
    require_session_templates: Option<Vec<String>>,
    events_retention: Option<String>,
    admin_token_file: Option<PathBuf>,
}

/// `budget_notices:`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudgetNotices {
    /// Percent of a budget at which a notice goes out.
    thresholds: Option<Vec<f64>>,
    /// URL each notice is POSTed to as JSON.
    webhook: Option<String>,
}

/// `retention:`; ages like `90d`, parsed by [`crate::retention::parse_age`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    interceptions: Option<String>,
    prompts: Option<String>,
    purge_interval: Option<String>,
}

/// `tls:`; both files are required.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// `metrics:`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

/// `upstream_tls:`; how HTTPS upstreams are verified.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    /// PEM file of CA certificates trusted in addition to the built-in webpki roots.
    ca_file: Option<PathBuf>,
}

/// `limits:`; each field overrides one default.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_model_labels: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    max_request_body_bytes: Option<usize>,
    max_request_bodies_in_flight_bytes: Option<usize>,
    request_body_timeout_secs: Option<u64>,
    upstream_response_timeout_secs: Option<u64>,
    upstream_idle_timeout_secs: Option<u64>,
    drain_timeout_secs: Option<u64>,
    drain_max_bytes: Option<usize>,
    max_recorded_prompt_bytes: Option<usize>,
    record_wait_ms: Option<u64>,
    max_sse_line_bytes: Option<usize>,
    max_observed_body_bytes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProviders {
    anthropic: Option<RawProvider>,
    openai: Option<RawProvider>,
    gemini: Option<RawProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: Option<String>,
    api_key: Option<String>,
    api_key_env: Option<String>,
    /// OpenAI only: sent as `openai-organization` on every request.
    organization: Option<String>,
    /// OpenAI only: sent as `openai-project` on every request.
    project: Option<String>,
    /// Client headers to forward beyond the built-in allowlist.
    #[serde(default)]
    forward_headers: Vec<String>,
    /// A pool of keys instead of one `api_key`/`api_key_env`.
    keys: Option<Vec<RawKey>>,
}

/// One key of a provider's pool (`providers.NAME.keys[]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: Option<String>,
    api_key: Option<String>,
    api_key_env: Option<String>,
    weight: Option<u32>,
}

impl BridgeConfig {
    /// Loads `path`, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<BridgeConfig, Error> {
        let Some(path) = path else {
            return Self::defaults_from_env();
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(&text, path)
    }

    /// The configuration used when no file is given.
    fn defaults_from_env() -> Result<BridgeConfig, Error> {
        let from_env = |var: &str, url: &str| {
            std::env::var(var)
                .ok()
                .filter(|k| !k.is_empty())
                .and_then(|k| key_value(&k).ok())
                .map(|api_key| Upstream::new(url, api_key))
        };
        Ok(BridgeConfig {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            store: DEFAULT_STORE.to_owned(),
            spool_dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            providers: Providers {
                anthropic: from_env("ANTHROPIC_API_KEY", DEFAULT_ANTHROPIC_URL),
                openai: from_env("OPENAI_API_KEY", DEFAULT_OPENAI_URL),
                // Google's SDKs read GEMINI_API_KEY, then GOOGLE_API_KEY.
                gemini: from_env("GEMINI_API_KEY", DEFAULT_GEMINI_URL)
                    .or_else(|| from_env("GOOGLE_API_KEY", DEFAULT_GEMINI_URL)),
            },
            pricing: PricingTable::default(),
            limits: Limits::default(),
            max_connections: None,
            max_model_labels: crate::telemetry::DEFAULT_MAX_MODEL_LABELS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            upstream_trust: UpstreamTrust::default(),
            tls: None,
            metrics: MetricsSettings::default(),
            source: None,
            prompt_recording: PromptRecording::default(),
            retention: Retention::default(),
            budget_notices: BudgetNotices::default(),
            admin_token: None,
            control_plane: ControlPlaneSettings::default(),
        })
    }

    /// Parses and validates YAML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<BridgeConfig, Error> {
        let file = path.display().to_string();
        let raw: RawConfig =
            crate::yaml::from_str(text).map_err(|e| Error::Config(format!("{file}:{e}")))?;
        let err = |field_path: &[&str], msg: String| {
            let (line, col) = crate::yaml::locate(text, field_path).unwrap_or((1, 1));
            Error::Config(format!(
                "{file}:{line}:{col}: field `{}`: {msg}",
                field_path.join(".")
            ))
        };

        let listen = match raw.listen {
            Some(l) => l.parse::<SocketAddr>().map_err(|e| {
                err(
                    &["listen"],
                    format!("{e}: expected IP:PORT such as {DEFAULT_LISTEN}"),
                )
            })?,
            None => DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
        };
        let store = raw.store.unwrap_or_else(|| DEFAULT_STORE.to_owned());
        if store.trim().is_empty() {
            return Err(err(&["store"], "must not be empty".into()));
        }
        let provider = |name: &str, raw: Option<RawProvider>, default_url: &str| {
            let Some(raw) = raw else { return Ok(None) };
            let base_url = raw.base_url.unwrap_or_else(|| default_url.to_owned());
            let base_url = validate_base_url(&base_url)
                .map_err(|m| err(&["providers", name, "base_url"], m))?;
            // One key (`api_key`/`api_key_env`) or a pool (`keys:`), each key exactly one of
            // the two.
            let one_key = |field: &[&str], key: Option<String>, env: Option<String>| {
                match (key, env) {
                (Some(k), None) => Ok((k, None)),
                (None, Some(var)) => std::env::var(&var)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| (v, Some(var.clone())))
                    .ok_or_else(|| {
                        let mut f = field.to_vec();
                        f.push("api_key_env");
                        err(&f, format!("environment variable {var} is not set (or empty)"))
                    }),
                (Some(_), Some(_)) => {
                    let mut f = field.to_vec();
                    f.push("api_key");
                    Err(err(&f, "give either `api_key` or `api_key_env`, not both".into()))
                }
                (None, None) => Err(err(
                    field,
                    "missing `api_key_env` (name of the variable holding the provider key) or `api_key`".into(),
                )),
            }
            };
            let keys = match raw.keys {
                None => {
                    let (key, _) = one_key(&["providers", name], raw.api_key, raw.api_key_env)?;
                    let v = key_value(&key).map_err(|m| err(&["providers", name, "api_key"], m))?;
                    KeyPool::single(v)
                }
                Some(_) if raw.api_key.is_some() || raw.api_key_env.is_some() => {
                    return Err(err(
                        &["providers", name, "keys"],
                        "give either `keys` (a pool) or `api_key`/`api_key_env`, not both".into(),
                    ))
                }
                Some(list) if list.is_empty() => {
                    return Err(err(
                        &["providers", name, "keys"],
                        "the pool has no key".into(),
                    ))
                }
                Some(list) => {
                    let mut pool = Vec::with_capacity(list.len());
                    for (i, k) in list.into_iter().enumerate() {
                        let idx = i.to_string();
                        let field = ["providers", name, "keys", idx.as_str()];
                        let (key, var) = one_key(&field, k.api_key, k.api_key_env)?;
                        let v = key_value(&key).map_err(|m| err(&field, m))?;
                        let key_name = k.name.or(var).unwrap_or_else(|| format!("key-{}", i + 1));
                        if pool
                            .iter()
                            .any(|(n, _, _): &(String, HeaderValue, u32)| *n == key_name)
                        {
                            return Err(err(
                                &field,
                                format!("two keys are named {key_name:?}: give each a `name`"),
                            ));
                        }
                        if k.weight == Some(0) {
                            return Err(err(&field, "`weight` must be at least 1".into()));
                        }
                        pool.push((key_name, v, k.weight.unwrap_or(1)));
                    }
                    KeyPool::new(pool)
                }
            };
            let mut upstream = Upstream::with_keys(base_url, keys);
            for h in &raw.forward_headers {
                let header = h.trim().to_ascii_lowercase();
                let bare = header.strip_suffix('*').unwrap_or(&header);
                let credential = matches!(
                    bare,
                    "authorization"
                        | "x-api-key"
                        | "x-goog-api-key"
                        | "proxy-authorization"
                        | "cookie"
                        | "host"
                ) || bare.is_empty()
                    || bare.starts_with("x-bridge-");
                if credential || http::HeaderName::from_bytes(bare.as_bytes()).is_err() {
                    return Err(err(
                        &["providers", name, "forward_headers"],
                        format!("{h:?} cannot be forwarded (not a header name, or a credential, cookie, host or x-bridge-* header)"),
                    ));
                }
                upstream.forward_headers.push(header);
            }
            for (field, header, value) in [
                ("organization", "openai-organization", raw.organization),
                ("project", "openai-project", raw.project),
            ] {
                let Some(value) = value else { continue };
                if name != "openai" {
                    return Err(err(
                        &["providers", name, field],
                        format!("only the openai provider has `{field}`"),
                    ));
                }
                let v = HeaderValue::from_str(value.trim()).map_err(|_| {
                    err(
                        &["providers", name, field],
                        "contains characters not allowed in an HTTP header".into(),
                    )
                })?;
                upstream
                    .extra_headers
                    .insert(http::HeaderName::from_static(header), v);
            }
            Ok(Some(upstream))
        };
        let providers = Providers {
            anthropic: provider("anthropic", raw.providers.anthropic, DEFAULT_ANTHROPIC_URL)?,
            openai: provider("openai", raw.providers.openai, DEFAULT_OPENAI_URL)?,
            gemini: provider("gemini", raw.providers.gemini, DEFAULT_GEMINI_URL)?,
        };
        let price_list = match &raw.price_list {
            Some(file) => PriceList::load(file)
                .map_err(|m| err(&["price_list"], format!("{}: {m}", file.display())))?,
            None => PriceList::shipped(),
        };
        let upstream_trust = match &raw.upstream_tls.ca_file {
            Some(ca_file) => UpstreamTrust::from_pem_file(ca_file)
                .map_err(|m| err(&["upstream_tls", "ca_file"], m))?,
            None => UpstreamTrust::default(),
        };
        let tls = match raw.tls {
            Some(t) => {
                let files = TlsFiles {
                    cert_file: t.cert_file,
                    key_file: t.key_file,
                };
                crate::tls::check(&files).map_err(|e| err(&["tls", e.field.name()], e.message))?;
                Some(files)
            }
            None => None,
        };
        let metrics = MetricsSettings {
            listen: match raw.metrics.listen {
                Some(l) => {
                    let addr = l.parse::<SocketAddr>().map_err(|e| {
                        err(
                            &["metrics", "listen"],
                            format!("{e}: expected IP:PORT such as 127.0.0.1:9090"),
                        )
                    })?;
                    if addr == listen && addr.port() != 0 {
                        return Err(err(
                            &["metrics", "listen"],
                            format!("{addr} is also `listen`: give the metrics listener its own address"),
                        ));
                    }
                    Some(addr)
                }
                None => None,
            },
            token: match &raw.metrics.token_file {
                Some(f) => Some(
                    MetricsToken::from_file(f).map_err(|m| err(&["metrics", "token_file"], m))?,
                ),
                None => None,
            },
        };
        let age = |field: &str, v: &Option<String>| {
            v.as_deref()
                .map(parse_age)
                .transpose()
                .map_err(|m| err(&["retention", field], m))
        };
        let r = &raw.retention;
        let retention = Retention {
            interceptions: age("interceptions", &r.interceptions)?,
            prompts: age("prompts", &r.prompts)?,
            purge_interval: match age("purge_interval", &r.purge_interval)? {
                Some(d) => d
                    .to_std()
                    .map_err(|e| err(&["retention", "purge_interval"], e.to_string()))?,
                None => crate::retention::DEFAULT_PURGE_INTERVAL,
            },
            events: Retention::default().events,
        };
        if let (Some(records), Some(prompts)) = (retention.interceptions, retention.prompts) {
            if prompts > records {
                return Err(err(
                    &["retention", "prompts"],
                    format!(
                        "{} is longer than retention.interceptions ({}): prompts are deleted with their records; make it shorter or remove it",
                        r.prompts.as_deref().unwrap_or_default(),
                        r.interceptions.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
        let mut budget_notices = BudgetNotices::default();
        if let Some(t) = &raw.budget_notices.thresholds {
            if t.is_empty()
                || t.iter()
                    .any(|p| !(p.is_finite() && *p > 0.0 && *p <= 1000.0))
            {
                return Err(err(
                    &["budget_notices", "thresholds"],
                    "percentages of a budget between 0 and 1000, e.g. [50, 85, 100]".into(),
                ));
            }
            budget_notices.thresholds = t.iter().map(|p| p / 100.0).collect();
        }
        if let Some(url) = &raw.budget_notices.webhook {
            let uri = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
                })
                .ok_or_else(|| {
                    err(
                        &["budget_notices", "webhook"],
                        format!("{url:?} is not an http:// or https:// URL"),
                    )
                })?;
            budget_notices.webhook = Some(uri);
        }
        let control_plane = control_plane(&raw.control_plane, &err)?;
        let admin_token = match &raw.control_plane.admin_token_file {
            Some(f) => Some(
                crate::web::auth::AdminToken::from_file(f)
                    .map_err(|m| err(&["control_plane", "admin_token_file"], m))?,
            ),
            None => None,
        };
        let retention = Retention {
            events: Some(control_plane.events_retention),
            ..retention
        };
        let l = raw.limits;
        let d = Limits::default();
        let positive = |field: &str, v: Option<u64>| -> Result<Option<Duration>, Error> {
            match v {
                Some(0) => Err(err(&["limits", field], "must be at least 1".into())),
                v => Ok(v.map(Duration::from_secs)),
            }
        };
        let positive_n = |field: &str, v: Option<usize>| -> Result<Option<usize>, Error> {
            match v {
                Some(0) => Err(err(&["limits", field], "must be at least 1".into())),
                v => Ok(v),
            }
        };
        let limits = Limits {
            max_request_body_bytes: positive_n("max_request_body_bytes", l.max_request_body_bytes)?
                .unwrap_or(d.max_request_body_bytes),
            max_request_bodies_in_flight_bytes: positive_n(
                "max_request_bodies_in_flight_bytes",
                l.max_request_bodies_in_flight_bytes,
            )?
            .unwrap_or(d.max_request_bodies_in_flight_bytes),
            request_body_timeout: positive(
                "request_body_timeout_secs",
                l.request_body_timeout_secs,
            )?
            .unwrap_or(d.request_body_timeout),
            upstream_response_timeout: positive(
                "upstream_response_timeout_secs",
                l.upstream_response_timeout_secs,
            )?
            .unwrap_or(d.upstream_response_timeout),
            upstream_idle_timeout: positive(
                "upstream_idle_timeout_secs",
                l.upstream_idle_timeout_secs,
            )?
            .unwrap_or(d.upstream_idle_timeout),
            drain_timeout: positive("drain_timeout_secs", l.drain_timeout_secs)?
                .unwrap_or(d.drain_timeout),
            drain_max_bytes: l.drain_max_bytes.unwrap_or(d.drain_max_bytes),
            max_recorded_prompt_bytes: l
                .max_recorded_prompt_bytes
                .unwrap_or(d.max_recorded_prompt_bytes),
            // 0 is allowed: no wait.
            record_wait: l
                .record_wait_ms
                .map(Duration::from_millis)
                .unwrap_or(d.record_wait),
            observe: crate::providers::ObserveLimits {
                max_sse_line: positive_n("max_sse_line_bytes", l.max_sse_line_bytes)?
                    .unwrap_or(d.observe.max_sse_line),
                max_json_body: positive_n("max_observed_body_bytes", l.max_observed_body_bytes)?
                    .unwrap_or(d.observe.max_json_body),
            },
        };
        Ok(BridgeConfig {
            limits,
            max_connections: positive_n("max_connections", l.max_connections)?,
            max_model_labels: l
                .max_model_labels
                .unwrap_or(crate::telemetry::DEFAULT_MAX_MODEL_LABELS),
            header_read_timeout: positive("header_read_timeout_secs", l.header_read_timeout_secs)?
                .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
            upstream_trust,
            tls,
            metrics,
            listen,
            store,
            spool_dir: raw
                .spool_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR)),
            providers,
            pricing: PricingTable::new(price_list, raw.pricing.unwrap_or_default()),
            source: Some(path.to_path_buf()),
            prompt_recording: raw.prompt_recording.unwrap_or_default(),
            retention,
            budget_notices,
            admin_token,
            control_plane,
        })
    }
}

/// Validates `control_plane:`; `err` locates a field's problem in the file.
fn control_plane(
    raw: &RawControlPlane,
    err: &dyn Fn(&[&str], String) -> Error,
) -> Result<ControlPlaneSettings, Error> {
    let mut c = ControlPlaneSettings {
        enabled: raw.enabled.unwrap_or(true),
        require_session: raw.require_session.unwrap_or(false),
        ..ControlPlaneSettings::default()
    };
    for (i, t) in raw.require_session_templates.iter().flatten().enumerate() {
        let idx = i.to_string();
        crate::control::validate_template(t)
            .map_err(|m| err(&["control_plane", "require_session_templates", &idx], m))?;
        c.require_session_templates.push(t.clone());
    }
    if let Some(age) = &raw.events_retention {
        c.events_retention =
            parse_age(age).map_err(|m| err(&["control_plane", "events_retention"], m))?;
    }
    if let Some(f) = &raw.admin_token_file {
        let text = std::fs::read_to_string(f).map_err(|e| {
            err(
                &["control_plane", "admin_token_file"],
                format!("cannot read {}: {e}", f.display()),
            )
        })?;
        if text.trim().is_empty() {
            return Err(err(
                &["control_plane", "admin_token_file"],
                format!("{} is empty: put the admin token in it", f.display()),
            ));
        }
        c.admin_token_file = Some(f.clone());
    }
    Ok(c)
}

/// A provider key as a header value, marked sensitive so `Debug` never prints it.
fn key_value(key: &str) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_str(key.trim())
        .map_err(|_| "key contains characters not allowed in an HTTP header".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

/// `http(s)://host[:port][/prefix]`, returned without a trailing slash.
fn validate_base_url(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} must not have a query string"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BridgeConfig, Error> {
        BridgeConfig::parse(text, Path::new("bridge.yaml"))
    }

    #[test]
    fn full_config_parses_with_direct_key_and_chained_base_url() {
        let c = parse(
            "listen: 127.0.0.1:9999\nstore: sqlite:///tmp/b.db\nspool_dir: /tmp/spool\nproviders:\n  anthropic:\n    base_url: http://gw.internal/anthropic/\n    api_key: sk-ant-xyz\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        let a = c.providers.anthropic.unwrap();
        assert_eq!(a.base_url, "http://gw.internal/anthropic");
        assert!(a.keys.key(0).value.is_sensitive());
        assert!(c.providers.openai.is_none());
        assert!(!format!("{a:?}").contains("sk-ant-xyz"));
    }

    #[test]
    fn empty_file_means_defaults_with_no_providers() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.store, DEFAULT_STORE);
        assert!(c.providers.anthropic.is_none());
        assert!(c.providers.gemini.is_none());
    }

    #[test]
    fn gemini_defaults_to_googles_endpoint_and_refuses_openai_only_fields() {
        let c = parse("providers:\n  gemini:\n    api_key: AIza-test\n").unwrap();
        let g = c.providers.gemini.unwrap();
        assert_eq!(g.base_url, DEFAULT_GEMINI_URL);
        assert!(g.keys.key(0).value.is_sensitive());
        let e = parse("providers:\n  gemini:\n    api_key: k\n    project: p\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only the openai provider"), "{e}");
        let e =
            parse("providers:\n  gemini:\n    api_key: k\n    forward_headers: [x-goog-api-key]\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("providers.gemini.forward_headers"), "{e}");
    }

    #[test]
    fn unknown_field_error_names_file_line_and_field() {
        let e = parse("providers:\n  openai:\n    base_ur: http://x\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bridge.yaml:3:"), "{e}");
        assert!(e.contains("base_ur"), "{e}");
    }

    #[test]
    fn missing_key_env_variable_error_points_at_api_key_env_line() {
        let e = parse("providers:\n  openai:\n    base_url: http://127.0.0.1:1\n    api_key_env: BRIDGE_TEST_SURELY_UNSET_VAR\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bridge.yaml:4:5: field `providers.openai.api_key_env`"),
            "{e}"
        );
        assert!(e.contains("BRIDGE_TEST_SURELY_UNSET_VAR"), "{e}");
    }

    #[test]
    fn bad_listen_and_bad_base_url_are_rejected_with_their_field() {
        let e = parse("listen: localhost\n").unwrap_err().to_string();
        assert!(e.contains("bridge.yaml:1:1: field `listen`"), "{e}");
        let e = parse("providers:\n  anthropic:\n    base_url: ftp://x\n    api_key: k\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bridge.yaml:3:5: field `providers.anthropic.base_url`"),
            "{e}"
        );
    }

    #[test]
    fn limits_and_openai_billing_scope_come_from_the_config() {
        let c = parse("limits:\n  max_connections: 100\n  upstream_response_timeout_secs: 7\n  max_sse_line_bytes: 1024\nproviders:\n  openai:\n    base_url: http://127.0.0.1:1\n    api_key: k\n    organization: org-server\n    project: proj-server\n").unwrap();
        assert_eq!(c.max_connections, Some(100));
        assert_eq!(c.limits.upstream_response_timeout, Duration::from_secs(7));
        assert_eq!(c.limits.observe.max_sse_line, 1024);
        assert_eq!(c.limits.drain_timeout, Limits::default().drain_timeout);
        let o = c.providers.openai.unwrap();
        assert_eq!(o.extra_headers["openai-organization"], "org-server");
        assert_eq!(o.extra_headers["openai-project"], "proj-server");
        let e = parse("limits:\n  request_body_timeout_secs: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `limits.request_body_timeout_secs`: must be at least 1"),
            "{e}"
        );
        let c = parse(
            "providers:\n  anthropic:\n    api_key: k\n    forward_headers: [X-Gateway-Route, x-fake-*]\n",
        )
        .unwrap();
        assert_eq!(
            c.providers.anthropic.unwrap().forward_headers,
            ["x-gateway-route", "x-fake-*"]
        );
        let e = parse("providers:\n  anthropic:\n    api_key: k\n    forward_headers: [cookie]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `providers.anthropic.forward_headers`"),
            "{e}"
        );
        let e = parse("providers:\n  anthropic:\n    api_key: k\n    project: p\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only the openai provider"), "{e}");
    }

    #[test]
    fn upstream_tls_defaults_to_the_built_in_roots_and_a_bad_ca_file_names_its_line() {
        assert!(parse("").unwrap().upstream_trust.extra_roots.is_empty());
        let e = parse("listen: 127.0.0.1:1\nupstream_tls:\n  ca_file: /nonexistent/ca.pem\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "bridge.yaml:3:3: field `upstream_tls.ca_file`: cannot read /nonexistent/ca.pem"
            ),
            "{e}"
        );
        let e = parse("upstream_tls:\n  ca_dir: /etc/ssl\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca_dir"), "{e}");
    }

    /// A directory with a self-signed pair (cert.pem, key.pem), another key (other-key.pem)
    /// and a metrics token file; removed on drop.
    struct TlsDir(PathBuf);
    impl TlsDir {
        fn new() -> TlsDir {
            let d = std::env::temp_dir().join(format!(
                "bridge-config-tls-{}-{}",
                std::process::id(),
                uuid::Uuid::now_v7().simple()
            ));
            std::fs::create_dir_all(&d).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            std::fs::write(d.join("other-key.pem"), other.serialize_pem()).unwrap();
            std::fs::write(d.join("token"), "scrape-token\n").unwrap();
            std::fs::write(d.join("admin-token"), "admin-token-for-config-tests\n").unwrap();
            std::fs::write(d.join("empty-token"), "\n").unwrap();
            TlsDir(d)
        }
        fn p(&self, name: &str) -> String {
            self.0.join(name).display().to_string()
        }
    }
    impl Drop for TlsDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn tls_and_metrics_sections_parse_into_files_and_a_token() {
        let d = TlsDir::new();
        let c = parse(&format!(
            "tls:\n  cert_file: {}\n  key_file: {}\nmetrics:\n  listen: 127.0.0.1:9090\n  token_file: {}\n",
            d.p("cert.pem"),
            d.p("key.pem"),
            d.p("token")
        ))
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, d.0.join("cert.pem"));
        assert_eq!(c.metrics.listen.unwrap().port(), 9090);
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer scrape-token".parse().unwrap());
        assert!(c.metrics.token.unwrap().admits(&h));
        let c = parse("").unwrap();
        assert!(c.tls.is_none() && c.metrics.listen.is_none() && c.metrics.token.is_none());
    }

    #[test]
    fn tls_errors_name_the_config_line_the_file_and_what_is_wrong() {
        let d = TlsDir::new();
        let e = parse(&format!(
            "listen: 0.0.0.0:8443\ntls:\n  cert_file: {}\n  key_file: {}\n",
            d.p("missing.pem"),
            d.p("key.pem")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "bridge.yaml:3:3: field `tls.cert_file`: cannot read {}",
                d.p("missing.pem")
            )),
            "{e}"
        );
        let e = parse(&format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            d.p("cert.pem"),
            d.p("other-key.pem")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!(
                "bridge.yaml:3:3: field `tls.key_file`: {}: the private key does not match the certificate in {}",
                d.p("other-key.pem"),
                d.p("cert.pem")
            )),
            "{e}"
        );
        let e = parse(&format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            d.p("key.pem"),
            d.p("key.pem")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("field `tls.cert_file`") && e.contains("no certificate in the file"),
            "{e}"
        );
        let e = parse(&format!("tls:\n  cert_file: {}\n", d.p("cert.pem")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `key_file`"), "{e}");
    }

    #[test]
    fn metrics_errors_name_their_field() {
        let d = TlsDir::new();
        let e = parse("metrics:\n  listen: localhost:9090\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bridge.yaml:2:3: field `metrics.listen`"),
            "{e}"
        );
        let e = parse("listen: 127.0.0.1:8787\nmetrics:\n  listen: 127.0.0.1:8787\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `metrics.listen`") && e.contains("own address"),
            "{e}"
        );
        let e = parse(&format!("metrics:\n  token_file: {}\n", d.p("empty-token")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bridge.yaml:2:3: field `metrics.token_file`") && e.contains("is empty"),
            "{e}"
        );
        let e = parse(&format!("metrics:\n  token_file: {}\n", d.p("nope")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn data_settings_come_from_the_config_and_bad_ones_name_their_line() {
        let c = parse(
            "prompt_recording: redacted\nretention:\n  interceptions: 400d\n  prompts: 30d\nlimits:\n  record_wait_ms: 2500\n",
        )
        .unwrap();
        assert_eq!(c.prompt_recording, PromptRecording::Redacted);
        assert_eq!(c.retention.interceptions, Some(chrono::Duration::days(400)));
        assert_eq!(c.retention.prompts, Some(chrono::Duration::days(30)));
        assert_eq!(
            c.retention.purge_interval,
            crate::retention::DEFAULT_PURGE_INTERVAL
        );
        assert_eq!(c.limits.record_wait, Duration::from_millis(2500));
        let d = parse("").unwrap();
        assert_eq!(d.prompt_recording, PromptRecording::Full);
        assert!(!d.retention.is_set());
        assert_eq!(d.limits.record_wait, Duration::ZERO);
        let e = parse("retention:\n  interceptions: 30d\n  prompts: 90d\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bridge.yaml:3:3: field `retention.prompts`: 90d is longer"),
            "{e}"
        );
        let e = parse("retention:\n  keep: 30d\n").unwrap_err().to_string();
        assert!(e.contains("bridge.yaml:2:") && e.contains("keep"), "{e}");
        let e = parse("prompt_recording: partial\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bridge.yaml:1:") && e.contains("redacted"),
            "{e}"
        );
    }

    #[test]
    fn a_key_pool_names_its_keys_and_bad_pools_name_their_field() {
        std::env::set_var("BRIDGE_TEST_POOL_KEY_2", "sk-two");
        let c = parse(
            "providers:\n  anthropic:\n    keys:\n      - { name: main, api_key: sk-one, weight: 3 }\n      - { api_key_env: BRIDGE_TEST_POOL_KEY_2 }\n      - { api_key: sk-three }\n",
        )
        .unwrap();
        let pool = &c.providers.anthropic.unwrap().keys;
        let names: Vec<&str> = (0..pool.len()).map(|i| pool.key(i).name.as_str()).collect();
        assert_eq!(names, ["main", "BRIDGE_TEST_POOL_KEY_2", "key-3"]);
        assert_eq!(pool.key(0).weight, 3);
        assert!(pool.key(1).value.is_sensitive());
        let e = parse("providers:\n  openai:\n    api_key: k\n    keys: [{ api_key: k2 }]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `providers.openai.keys`") && e.contains("not both"),
            "{e}"
        );
        let e = parse(
            "providers:\n  openai:\n    keys: [{ name: a, api_key: k }, { name: a, api_key: j }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("providers.openai.keys.1") && e.contains("two keys are named"),
            "{e}"
        );
        let e = parse("providers:\n  openai:\n    keys: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no key"), "{e}");
    }

    #[test]
    fn the_control_plane_section_parses_and_bad_fields_name_their_line() {
        let d = parse("").unwrap().control_plane;
        assert_eq!(d, ControlPlaneSettings::default());
        assert!(d.enabled && !d.require_session);
        assert_eq!(d.events_retention, chrono::Duration::days(90));
        let t = TlsDir::new();
        let c = parse(&format!(
            "control_plane:\n  enabled: false\n  require_session: true\n  require_session_templates: [python-dev, ml]\n  events_retention: 30d\n  admin_token_file: {}\n",
            t.p("admin-token")
        ))
        .unwrap()
        .control_plane;
        assert!(!c.enabled && c.require_session);
        assert_eq!(c.require_session_templates, ["python-dev", "ml"]);
        assert_eq!(c.events_retention, chrono::Duration::days(30));
        assert_eq!(c.admin_token_file, Some(t.0.join("admin-token")));
        let e = parse("control_plane:\n  events_retention: forever\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bridge.yaml:2:3: field `control_plane.events_retention`"),
            "{e}"
        );
        let e = parse("control_plane:\n  require_session_templates: [ok, \"bad name\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `control_plane.require_session_templates.1`"),
            "{e}"
        );
        let e = parse(&format!(
            "control_plane:\n  admin_token_file: {}\n",
            t.p("empty-token")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("bridge.yaml:2:3: field `control_plane.admin_token_file`")
                && e.contains("is empty"),
            "{e}"
        );
        let e = parse("control_plane:\n  require_sessions: true\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bridge.yaml:2:") && e.contains("require_sessions"),
            "{e}"
        );
    }

    #[test]
    fn pricing_overrides_are_merged_onto_defaults() {
        let c = parse("pricing:\n  my-model: { input: 1.0, output: 2.0 }\n").unwrap();
        assert!(c.pricing.price("my-model").is_some());
        assert!(c.pricing.price("claude-sonnet-4-5").is_some());
    }
}

//! Bridge at the edges of what the README promises, each with the real `bridge` and
//! `fake-upstream` binaries over real HTTP on loopback:
//!
//! - HTTPS to a provider: the fake upstream serves TLS with a certificate from a CA made in the
//!   test; with `upstream_tls.ca_file` naming that CA the bridge serves through it, and a
//!   certificate from another CA, or for another name, gets a 502 in the provider's format
//!   naming certificate verification, and a record;
//! - a token never verified before, during a store outage: 503 in the provider's format;
//! - `llm-bridge keys revoke` takes effect on a running gateway within 5 s;
//! - SIGTERM: a stream in flight finishes and is recorded, new connections are refused;
//! - `--store`, `$BRIDGE_STORE` and the config's `store:` for the admin commands;
//! - two replicas on one PostgreSQL: both serve, both record, each sees the other's records;
//!
//! Certificates name 127.0.0.1 (and `localhost` where a test needs a wrong name) only, and no
//! test resolves a name.

mod proc_support;
mod store_support;

use proc_support::{free_port, wait_listening, Proc};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridge::store::{InterceptionFilter, Store};
use serde_json::{json, Value};
use store_support::{Postgres, TempDir};

const ANTHROPIC_KEY: &str = "sk-ant-edges-test-key";
const OPENAI_KEY: &str = "sk-openai-edges-test-key";

/// `bridge` with a clean environment: no provider keys, store or OTLP settings inherited.
fn bridge_cmd(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llm-bridge"));
    c.current_dir(cwd)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env_remove("BRIDGE_STORE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "info");
    c
}

/// Runs an admin command; its stdout, trimmed (panics with its stderr if it failed).
fn admin(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = bridge_cmd(cwd);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "bridge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn create_key(cwd: &Path, user: &str, store: &str) -> String {
    admin(
        cwd,
        &["keys", "create", "--user", user, "--store", store],
        &[],
    )
}

/// Starts `fake-upstream`, serving HTTPS when given a (certificate, key) pair of PEM files.
fn start_fake(cwd: &Path, tls: Option<(&Path, &Path)>) -> (Proc, u16) {
    let port = free_port();
    let log = cwd.join(format!("fake-{port}.log"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_fake-upstream"));
    c.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--anthropic-key", ANTHROPIC_KEY, "--openai-key", OPENAI_KEY])
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some((cert, key)) = tls {
        c.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let mut fake = Proc(c.spawn().unwrap());
    wait_listening(port, &mut fake.0, &log);
    (fake, port)
}

/// A bridge.yaml: both providers at the given base URLs, then `extra` verbatim.
fn write_config(
    cwd: &Path,
    name: &str,
    port: u16,
    store: &str,
    urls: (&str, &str),
    extra: &str,
) -> PathBuf {
    let config = cwd.join(name);
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {store}\nspool_dir: {}\nproviders:\n  anthropic:\n    base_url: {}\n    api_key: {ANTHROPIC_KEY}\n    forward_headers: [x-fake-*]\n  openai:\n    base_url: {}\n    api_key: {OPENAI_KEY}\n    forward_headers: [x-fake-*]\n{extra}",
            cwd.join(format!("spool-{port}")).display(),
            urls.0,
            urls.1,
        ),
    )
    .unwrap();
    config
}

fn spawn_serve(cwd: &Path, config: &Path, port: u16) -> Proc {
    let mut p = spawn_serve_nowait(cwd, config, port);
    wait_listening(port, &mut p.0, &cwd.join(format!("bridge-{port}.log")));
    p
}

/// Starts `llm-bridge serve` without waiting for it to listen (its log: `bridge-PORT.log`).
fn spawn_serve_nowait(cwd: &Path, config: &Path, port: u16) -> Proc {
    let log = cwd.join(format!("bridge-{port}.log"));
    let mut c = bridge_cmd(cwd);
    c.arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    Proc(c.spawn().unwrap())
}

/// A minimal blocking HTTP/1.1 client: one request per connection, `connection: close`.
/// Returns (status, body), or `None` if the exchange failed or took longer than `within`.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    within: Duration,
) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(within)).ok()?;
    s.set_write_timeout(Some(within)).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// The payload of a `transfer-encoding: chunked` body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn anthropic_body(prompt: &str, stream: bool) -> String {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 20, "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
    .to_string()
}

fn ask_anthropic(port: u16, token: &str, prompt: &str) -> (u16, String) {
    http(
        port,
        "POST",
        "/anthropic/v1/messages",
        &[("x-api-key", token), ("anthropic-version", "2023-06-01")],
        &anthropic_body(prompt, false),
        Duration::from_secs(20),
    )
    .expect("the bridge answered")
}

fn ask_openai(port: u16, token: &str, prompt: &str) -> (u16, String) {
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]});
    http(
        port,
        "POST",
        "/openai/v1/chat/completions",
        &[("authorization", &format!("Bearer {token}"))],
        &body.to_string(),
        Duration::from_secs(20),
    )
    .expect("the bridge answered")
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn records(store: &str) -> Vec<bridge::record::InterceptionRecord> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = Store::open(store).await.unwrap();
        s.list_interceptions(&InterceptionFilter::default())
            .await
            .unwrap()
    })
}

/// A certificate authority made for one test, and leaf certificates it signs.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// Writes the CA's certificate as PEM to `path`.
    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.pem()).unwrap();
        path.to_path_buf()
    }

    /// A server certificate for `names` (an IP address becomes an IP SAN), written as
    /// `<stem>.crt` / `<stem>.key` in `dir`.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

#[test]
fn an_https_upstream_is_served_through_when_its_ca_is_configured_and_verified() {
    let dir = TempDir::new("edges-tls-ok");
    let cwd = dir.path();
    let ca = TestCa::new("bridge test CA");
    let ca_file = ca.write(&cwd.join("ca.pem"));
    let (cert, key) = ca.issue(cwd, "upstream", &["127.0.0.1"]);
    let (_fake, up) = start_fake(cwd, Some((&cert, &key)));
    let url = format!("https://127.0.0.1:{up}");
    let store = cwd.join("bridge.db").display().to_string();
    let port = free_port();
    let config = write_config(
        cwd,
        "bridge.yaml",
        port,
        &store,
        (&url, &url),
        &format!("upstream_tls:\n  ca_file: {}\n", ca_file.display()),
    );
    // The admin command finds the store through the same config `serve` uses.
    let token = admin(
        cwd,
        &[
            "keys",
            "create",
            "--user",
            "tess",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    let _serve = spawn_serve(cwd, &config, port);

    let (status, body) = ask_anthropic(port, &token, "hello over tls");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "message", "{v}");
    let (status, body) = ask_openai(port, &token, "hello over tls");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    let recs = poll(Duration::from_secs(10), || {
        let r = records(&store);
        (r.len() >= 2).then_some(r)
    })
    .expect("both requests recorded");
    assert!(
        recs.iter().all(|r| r.status == 200 && r.user == "tess"),
        "{recs:?}"
    );
}

#[test]
fn an_upstream_certificate_from_another_ca_or_for_another_name_gets_a_502_naming_verification_and_a_record(
) {
    let dir = TempDir::new("edges-tls-bad");
    let cwd = dir.path();
    let trusted = TestCa::new("bridge test CA");
    let ca_file = trusted.write(&cwd.join("ca.pem"));
    // Anthropic's upstream: a certificate for the right address from a CA nobody configured.
    let stranger = TestCa::new("some other CA");
    let (cert, key) = stranger.issue(cwd, "other-ca", &["127.0.0.1"]);
    let (_fake_a, up_a) = start_fake(cwd, Some((&cert, &key)));
    // OpenAI's upstream: the trusted CA, but a certificate for another name than 127.0.0.1.
    let (cert, key) = trusted.issue(cwd, "wrong-name", &["localhost"]);
    let (_fake_o, up_o) = start_fake(cwd, Some((&cert, &key)));
    let store = cwd.join("bridge.db").display().to_string();
    let port = free_port();
    let config = write_config(
        cwd,
        "bridge.yaml",
        port,
        &store,
        (
            &format!("https://127.0.0.1:{up_a}"),
            &format!("https://127.0.0.1:{up_o}"),
        ),
        &format!("upstream_tls:\n  ca_file: {}\n", ca_file.display()),
    );
    let token = create_key(cwd, "uma", &store);
    let _serve = spawn_serve(cwd, &config, port);

    let (status, body) = ask_anthropic(port, &token, "to a stranger");
    assert_eq!(status, 502, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "error", "Anthropic's error format: {v}");
    assert_eq!(v["error"]["type"], "api_error", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("TLS certificate verification failed") && msg.contains("UnknownIssuer"),
        "{msg}"
    );

    let (status, body) = ask_openai(port, &token, "to the wrong name");
    assert_eq!(status, 502, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["error"]["type"], "server_error",
        "OpenAI's error format: {v}"
    );
    assert_eq!(v["error"]["code"], "upstream_unavailable", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("TLS certificate verification failed")
            && msg.contains("not valid for name \"127.0.0.1\""),
        "{msg}"
    );

    let recs = poll(Duration::from_secs(10), || {
        let r = records(&store);
        (r.len() >= 2).then_some(r)
    })
    .expect("both refusals recorded");
    for r in &recs {
        assert_eq!(r.status, 502, "{r:?}");
        assert_eq!(r.outcome.as_str(), "upstream_unavailable", "{r:?}");
        assert!(
            r.error.as_deref().unwrap_or("").contains("certificate"),
            "{r:?}"
        );
    }
}

#[test]
fn an_unreadable_or_empty_upstream_ca_file_stops_the_start_with_the_field_named() {
    let dir = TempDir::new("edges-tls-config");
    let cwd = dir.path();
    let empty = cwd.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (ca_file, says) in [
        (cwd.join("missing.pem"), "cannot read"),
        (empty, "holds no certificate"),
    ] {
        let port = free_port();
        let config = write_config(
            cwd,
            "bridge.yaml",
            port,
            "bridge.db",
            ("https://127.0.0.1:9", "https://127.0.0.1:9"),
            &format!("upstream_tls:\n  ca_file: {}\n", ca_file.display()),
        );
        let out = bridge_cmd(cwd)
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("field `upstream_tls.ca_file`") && err.contains(says),
            "{err}"
        );
    }
}

/// A plain-HTTP fake upstream and a bridge on SQLite in `cwd`: (fake, bridge, port, store, token).
fn plain_bridge(cwd: &Path, user: &str) -> (Proc, Proc, u16, String, String) {
    let (fake, up) = start_fake(cwd, None);
    let url = format!("http://127.0.0.1:{up}");
    let store = cwd.join("bridge.db").display().to_string();
    let port = free_port();
    let config = write_config(cwd, "bridge.yaml", port, &store, (&url, &url), "");
    let token = create_key(cwd, user, &store);
    let serve = spawn_serve(cwd, &config, port);
    (fake, serve, port, store, token)
}

#[test]
fn on_sigterm_a_stream_in_flight_finishes_and_is_recorded_while_new_connections_are_refused() {
    let dir = TempDir::new("edges-sigterm");
    let cwd = dir.path();
    let (_fake, mut serve, port, store, token) = plain_bridge(cwd, "sam");

    // A stream that pauses 2 s after its first event: in flight when SIGTERM arrives.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = anthropic_body("finish me", true);
    write!(
        s,
        "POST /anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\nx-api-key: {token}\r\nanthropic-version: 2023-06-01\r\nx-fake-hold-ms: 2000\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("event: message_start") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let signalled = Instant::now();
    serve.terminate();

    // New connections are refused (the listener is closed) while the stream still runs.
    let refused = poll(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
    assert!(
        refused.is_some(),
        "still accepting connections after SIGTERM"
    );
    assert!(
        serve.0.try_wait().unwrap().is_none(),
        "the bridge exited with a stream in flight"
    );

    // The stream in flight runs to its end.
    s.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("event: message_stop"),
        "stream cut short: {text}"
    );
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "the stream was not held open by the upstream's pause"
    );
    let status = serve.wait_exit();
    assert!(status.success(), "{status}");

    // In the store when the bridge has exited (not in the spool, waiting for a next start).
    let recs = records(&store);
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0];
    assert_eq!(r.outcome.as_str(), "ok", "{r:?}");
    assert_eq!(r.status, 200);
    assert!(r.streaming && r.usage.output_tokens > 0, "{r:?}");
}

#[test]
fn a_revoked_key_is_refused_by_a_running_gateway_within_5_seconds() {
    let dir = TempDir::new("edges-revoke");
    let cwd = dir.path();
    let (_fake, _serve, port, store, token) = plain_bridge(cwd, "rita");
    // In use, hence in the gateway's cache.
    assert_eq!(ask_anthropic(port, &token, "before").0, 200);
    let keys: Value = serde_json::from_str(&admin(
        cwd,
        &["keys", "list", "--format", "json", "--store", &store],
        &[],
    ))
    .unwrap();
    let id = keys[0]["id"].as_str().unwrap().to_string();
    admin(cwd, &["keys", "revoke", &id, "--store", &store], &[]);
    let revoked = Instant::now();
    let refused = poll(Duration::from_secs(15), || {
        let (status, body) = ask_anthropic(port, &token, "after");
        (status == 401).then_some(body)
    });
    let took = revoked.elapsed();
    let body = refused.expect("the revoked key was still accepted after 15 s");
    assert!(
        took <= Duration::from_millis(5500),
        "revocation took {took:?}, the README promises 5 s"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
}

#[test]
fn a_token_never_verified_before_gets_a_503_in_the_providers_format_while_the_store_is_down() {
    let dir = TempDir::new("edges-outage");
    let cwd = dir.path();
    let pg = Postgres::start();
    let store = pg.url();
    let (_fake, up) = start_fake(cwd, None);
    let url = format!("http://127.0.0.1:{up}");
    let port = free_port();
    let config = write_config(cwd, "bridge.yaml", port, &store, (&url, &url), "");
    let known = create_key(cwd, "kim", &store);
    let never_seen = create_key(cwd, "nora", &store);
    let _serve = spawn_serve(cwd, &config, port);
    assert_eq!(ask_anthropic(port, &known, "cache me").0, 200);

    pg.stop();
    for (status, body) in [
        ask_anthropic(port, &never_seen, "who am I"),
        ask_openai(port, &never_seen, "who am I"),
    ] {
        assert_eq!(status, 503, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("cannot verify tokens"), "{v}");
    }
    let (_, body) = ask_anthropic(port, &never_seen, "who am I");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("api_error")),
        "{v}"
    );
    let (_, body) = ask_openai(port, &never_seen, "who am I");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    // The token verified before the outage keeps working from the cache.
    let (status, body) = ask_anthropic(port, &known, "still here");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn two_replicas_on_one_postgres_both_serve_and_record_and_each_sees_the_others_records() {
    let dir = TempDir::new("edges-replicas");
    let cwd = dir.path();
    let pg = Postgres::start();
    let store = pg.url();
    let (_fake, up) = start_fake(cwd, None);
    let url = format!("http://127.0.0.1:{up}");
    let (port_a, port_b) = (free_port(), free_port());
    let config_a = write_config(cwd, "a.yaml", port_a, &store, (&url, &url), "");
    let config_b = write_config(cwd, "b.yaml", port_b, &store, (&url, &url), "");
    // Both start at once on an empty database: they race to create the schema.
    let mut a = spawn_serve_nowait(cwd, &config_a, port_a);
    let mut b = spawn_serve_nowait(cwd, &config_b, port_b);
    wait_listening(port_a, &mut a.0, &cwd.join(format!("bridge-{port_a}.log")));
    wait_listening(port_b, &mut b.0, &cwd.join(format!("bridge-{port_b}.log")));
    let token = create_key(cwd, "rey", &store);

    for i in 0..3 {
        assert_eq!(
            ask_anthropic(port_a, &token, &format!("replica a {i}")).0,
            200
        );
        assert_eq!(ask_openai(port_b, &token, &format!("replica b {i}")).0, 200);
    }
    let recs = poll(Duration::from_secs(15), || {
        let r = records(&store);
        (r.len() >= 6).then_some(r)
    })
    .unwrap_or_else(|| panic!("not all 6 requests recorded: {:?}", records(&store)));
    assert_eq!(
        recs.len(),
        6,
        "each request recorded exactly once: {recs:?}"
    );
    for (prefix, provider) in [("replica a", "anthropic"), ("replica b", "openai")] {
        let n = recs
            .iter()
            .filter(|r| {
                r.prompt.as_deref().unwrap_or("").starts_with(prefix)
                    && r.provider.as_str() == provider
                    && r.status == 200
            })
            .count();
        assert_eq!(n, 3, "{prefix}: {recs:?}");
    }
    // Each replica's admin view (its own config's store) lists both replicas' records.
    for config in [&config_a, &config_b] {
        let listed = admin(
            cwd,
            &[
                "interceptions",
                "list",
                "--format",
                "json",
                "--config",
                config.to_str().unwrap(),
            ],
            &[],
        );
        for prompt in ["replica a 2", "replica b 2"] {
            assert!(listed.contains(prompt), "{prompt} missing from {listed}");
        }
    }
}

#[test]
fn admin_commands_find_the_store_by_flag_then_bridge_store_then_the_config_then_the_working_directory(
) {
    let dir = TempDir::new("edges-store-resolution");
    let cwd = dir.path();
    let path = |name: &str| cwd.join(name).display().to_string();
    let config = cwd.join("bridge.yaml");
    std::fs::write(&config, format!("store: {}\n", path("from-config.db"))).unwrap();
    let config = config.to_str().unwrap();
    let env_store = format!("sqlite://{}", path("from-env.db"));
    let env = [("BRIDGE_STORE", env_store.as_str())];
    let flag = path("from-flag.db");
    let create = |user: &str, args: &[&str], env: &[(&str, &str)]| {
        let mut a = vec!["keys", "create", "--user", user];
        a.extend_from_slice(args);
        admin(cwd, &a, env)
    };
    create("flag-user", &["--store", &flag, "--config", config], &env);
    create("env-user", &["--config", config], &env);
    create("config-user", &["--config", config], &[]);
    create("default-user", &[], &[]);
    // Which users each store holds, read back with an explicit --store.
    let users = |store: &str| -> Vec<String> {
        let listed = admin(
            cwd,
            &["keys", "list", "--format", "json", "--store", store],
            &[],
        );
        let v: Value = serde_json::from_str(&listed).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k["user"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(users(&flag), ["flag-user"]);
    assert_eq!(users(&path("from-env.db")), ["env-user"]);
    assert_eq!(users(&path("from-config.db")), ["config-user"]);
    assert_eq!(users(&path("bridge.db")), ["default-user"]);
    // `usage` and `interceptions` resolve it the same way: a record in each store, and each
    // command, given the config and $BRIDGE_STORE, reports the one in $BRIDGE_STORE's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (store, user) in [
        (env_store.clone(), "env-recorded"),
        (path("from-config.db"), "config-recorded"),
    ] {
        rt.block_on(async {
            let s = Store::open(&store).await.unwrap();
            let rec = store_support::record(
                user,
                bridge::record::Provider::Anthropic,
                "claude-sonnet-4-5",
                chrono::Utc::now(),
                10,
                5,
            );
            s.insert_interceptions(&[rec]).await.unwrap();
        });
    }
    for cmd in [
        &["usage", "--format", "json"][..],
        &["interceptions", "list", "--format", "json"],
    ] {
        let mut a = cmd.to_vec();
        a.extend_from_slice(&["--config", config]);
        let with_env = admin(cwd, &a, &env);
        assert!(
            with_env.contains("env-recorded") && !with_env.contains("config-recorded"),
            "{cmd:?} with $BRIDGE_STORE: {with_env}"
        );
        let without = admin(cwd, &a, &[]);
        assert!(
            without.contains("config-recorded") && !without.contains("env-recorded"),
            "{cmd:?} with the config only: {without}"
        );
    }
}

#[test]
fn a_probe_of_a_provider_base_url_gets_a_200_not_a_404() {
    let dir = TempDir::new("edges-root-probe");
    let (_fake, _serve, port, _store, _token) = plain_bridge(dir.path(), "alice");
    let t = Duration::from_secs(5);
    // Claude Code probes its base URL with HEAD at start.
    for path in ["/anthropic", "/anthropic/", "/openai/v1", "/openai"] {
        let (status, body) = http(port, "HEAD", path, &[], "", t).unwrap();
        assert_eq!((status, body.as_str()), (200, ""), "HEAD {path}");
    }
    let (status, body) = http(port, "GET", "/anthropic", &[], "", t).unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["provider"], "anthropic", "{body}");
    // Routes below the root are the provider's, and an unknown one is still a 404.
    let (status, _) = http(port, "GET", "/anthropic/v1/nope", &[], "", t).unwrap();
    assert_eq!(status, 404);
    let (status, _) = http(port, "POST", "/anthropic", &[], "{}", t).unwrap();
    assert_eq!(status, 404);
}

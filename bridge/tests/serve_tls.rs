//! `llm-bridge serve` with `tls:` under hostile connections: the real binary, a test CA made
//! here (rcgen, certificates for 127.0.0.1 only), a rustls client, loopback only.
//!
//! - A connection that never starts its TLS handshake holds its slot only until
//!   `limits.header_read_timeout_secs`, then is closed.
//! - Over `limits.max_connections`, a TLS client still gets the 503 it can read (after the
//!   handshake), not garbage in plain text.
//! - Plain HTTP sent to the TLS port gets no HTTP answer.

mod proc_support;
mod store_support;

use proc_support::{free_port, Proc};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, ServerName};
use store_support::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA and a server certificate for 127.0.0.1 signed by it; returns the CA's DER.
fn make_pki(dir: &Path) -> CertificateDer<'static> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bridge test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    ca.der().clone()
}

fn connector(ca: &CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One request over a fresh TLS connection; the whole answer as text.
async fn https_get(tls: &tokio_rustls::TlsConnector, port: u16, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tokio::time::timeout(Duration::from_secs(5), tls.connect(name, tcp))
        .await
        .expect("handshake within 5 s")
        .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_that_never_start_are_timed_out_and_clients_over_the_cap_get_a_readable_503()
{
    let dir = TempDir::new("serve-tls");
    let cwd = dir.path();
    let ca = make_pki(cwd);
    let port = free_port();
    let config = cwd.join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: {}\nspool_dir: {}\ntls:\n  cert_file: {}\n  key_file: {}\nlimits:\n  max_connections: 1\n  header_read_timeout_secs: 2\n",
            cwd.join("b.db").display(),
            cwd.join("spool").display(),
            cwd.join("cert.pem").display(),
            cwd.join("key.pem").display()
        ),
    )
    .unwrap();
    let log = cwd.join("bridge.log");
    let mut serve = Proc(
        Command::new(env!("CARGO_BIN_EXE_llm-bridge"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            serve.0.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "not listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tls = connector(&ca);
    // That probe connection may still hold the one slot for a moment: wait for a real answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = https_get(&tls, port, "/healthz").await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A silent connection takes the only slot...
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let opened = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    // ...so a TLS client gets the over-capacity 503, readable over TLS.
    let answer = https_get(&tls, port, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");

    // The silent connection is closed once its handshake time (header_read_timeout) is up.
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = silent.read(&mut buf);
    let held = opened.elapsed();
    assert!(matches!(closed, Ok(0)), "expected a close, got {closed:?}");
    assert!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(6),
        "closed after {held:?}"
    );
    // The slot is free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = https_get(&tls, port, "/healthz").await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Plain HTTP to the TLS port: no HTTP answer.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut plain,
        b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out);
    assert!(
        !out.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

//! TLS termination in Bridge itself (`tls: { cert_file, key_file }` in bridge.yaml).
//!
//! HTTP/1.1 over rustls (ring), TLS 1.2 and 1.3, ALPN `http/1.1`. The certificate is served
//! through a resolver whose certificate-and-key pair is swapped atomically, so a renewed
//! certificate (certbot, cert-manager, a rotated secret) is picked up without a restart:
//! every [`RELOAD_CHECK_INTERVAL`] the two files' identity (device, inode, size, modification
//! and change times) is compared with the last one seen; on a change the pair is loaded and
//! checked, and only a pair that loads and matches replaces the one in use. A bad new pair
//! (half-written, wrong key, no certificate) leaves the last good one serving and is logged
//! once per change with the file and what is wrong. Connections already open keep the
//! certificate they were made with.
//!
//! Without `tls:` Bridge speaks plain HTTP, as it does behind a load balancer that
//! terminates TLS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// How often the certificate and key files are checked for a change.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// `tls:` in bridge.yaml: the PEM files Bridge serves HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first, then intermediates.
    pub cert_file: PathBuf,
    /// PEM private key of the first certificate: PKCS#8, PKCS#1 (RSA) or SEC1 (EC),
    /// unencrypted.
    pub key_file: PathBuf,
}

/// Which of the two files a [`TlsFileError`] is about (for the config's line numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsField {
    CertFile,
    KeyFile,
}

impl TlsField {
    /// The field's name in bridge.yaml.
    pub fn name(self) -> &'static str {
        match self {
            TlsField::CertFile => "cert_file",
            TlsField::KeyFile => "key_file",
        }
    }
}

/// Why a certificate/key pair cannot be served; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub field: TlsField,
    pub message: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A loaded pair and what identifies it in logs.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// SHA-256 of the server certificate (DER), hex, so an operator can tell which certificate
    /// is served: `openssl x509 -in cert.pem -outform der | sha256sum` prints the same.
    cert_sha256: String,
}

impl TlsFiles {
    /// Reads and checks the pair: the certificate file holds at least one certificate, the
    /// key file a private key ring can sign with, and the key belongs to the first
    /// certificate.
    fn load(&self) -> Result<Loaded, TlsFileError> {
        let cert_err = |message: String| TlsFileError {
            field: TlsField::CertFile,
            message,
        };
        let key_err = |message: String| TlsFileError {
            field: TlsField::KeyFile,
            message,
        };
        let cert_path = self.cert_file.display();
        let key_path = self.key_file.display();
        let cert_pem = read(&self.cert_file).map_err(cert_err)?;
        let key_pem = read(&self.key_file).map_err(key_err)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(format!("{cert_path}: not a valid PEM file: {e}")))?;
        if chain.is_empty() {
            return Err(cert_err(format!(
                "{cert_path}: no certificate in the file (expected PEM `-----BEGIN CERTIFICATE-----` blocks, the server certificate first){}",
                if looks_like_key(&cert_pem) { "; it holds a private key: are cert_file and key_file swapped?" } else { "" }
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            key_err(match e {
                rustls_pki_types::pem::Error::NoItemsFound => format!(
                    "{key_path}: no private key in the file (expected an unencrypted PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block){}",
                    if key_pem.windows(9).any(|w| w == b"ENCRYPTED") {
                        "; it is encrypted: decrypt it, e.g. `openssl pkey -in KEY -out KEY.plain`"
                    } else if key_pem.windows(11).any(|w| w == b"CERTIFICATE") {
                        "; it holds a certificate: are cert_file and key_file swapped?"
                    } else {
                        ""
                    }
                ),
                e => format!("{key_path}: not a valid PEM file: {e}"),
            })
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| key_err(format!("{key_path}: unusable private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(key_err(format!(
                    "{key_path}: the private key does not match the certificate in {cert_path} (the first certificate in the file must be the server's own)"
                )))
            }
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(cert_err(format!(
                    "{cert_path}: the first certificate cannot be parsed: {e}"
                )))
            }
        }
        let cert_sha256 = hex(&Sha256::digest(certified.cert[0].as_ref()));
        Ok(Loaded {
            key: Arc::new(certified),
            cert_sha256,
        })
    }

    /// The files' identity now, or `None` when one cannot be read (then nothing changes).
    fn stamp(&self) -> Option<[FileStamp; 2]> {
        Some([
            FileStamp::of(&self.cert_file)?,
            FileStamp::of(&self.key_file)?,
        ])
    }
}

/// Checks that `files` can be served, for config validation at startup.
pub fn check(files: &TlsFiles) -> Result<(), TlsFileError> {
    files.load().map(|_| ())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn looks_like_key(pem: &[u8]) -> bool {
    pem.windows(11).any(|w| w == b"PRIVATE KEY")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What tells one version of a file from another without reading it. The change time and
/// inode catch a file replaced by rename (how certbot and Kubernetes secrets update) even when
/// the new file keeps the old modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        // `metadata` follows symbolic links: a swapped link target is a change.
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// Hands every handshake the pair currently in use.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The TLS side of the listener: an acceptor whose certificate follows the files.
#[derive(Clone)]
pub struct ServerTls {
    files: TlsFiles,
    current: Arc<CurrentCert>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl ServerTls {
    /// Loads the pair (an error names the file and what is wrong) and builds the server
    /// configuration.
    pub fn new(files: TlsFiles) -> Result<ServerTls, TlsFileError> {
        let loaded = files.load()?;
        tracing::info!(
            cert_file = %files.cert_file.display(),
            key_file = %files.key_file.display(),
            cert_sha256 = %loaded.cert_sha256,
            "TLS certificate loaded"
        );
        let current = Arc::new(CurrentCert(RwLock::new(loaded.key)));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
        // Bridge speaks HTTP/1.1 only, which is what every provider SDK uses.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            files,
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Watches the files until the returned task is aborted (see the module doc).
    pub fn spawn_reloader(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            // Taken before the first load could have read a newer file: a change made since
            // is seen at the first check.
            let mut seen = this.files.stamp();
            loop {
                tokio::time::sleep(interval).await;
                let now = this.files.stamp();
                if now.is_none() || now == seen {
                    if now.is_none() && seen.is_some() {
                        tracing::warn!(
                            cert_file = %this.files.cert_file.display(),
                            key_file = %this.files.key_file.display(),
                            "TLS certificate or key file missing; still serving the last good certificate"
                        );
                        seen = None;
                    }
                    continue;
                }
                seen = now;
                let files = this.files.clone();
                match tokio::task::spawn_blocking(move || files.load()).await {
                    Ok(Ok(loaded)) => {
                        *this.current.0.write().unwrap_or_else(|p| p.into_inner()) = loaded.key;
                        tracing::info!(
                            cert_file = %this.files.cert_file.display(),
                            cert_sha256 = %loaded.cert_sha256,
                            "TLS certificate reloaded"
                        );
                    }
                    Ok(Err(e)) => tracing::error!(
                        file = %match e.field {
                            TlsField::CertFile => this.files.cert_file.display(),
                            TlsField::KeyFile => this.files.key_file.display(),
                        },
                        error = %e,
                        "TLS certificate reload failed; still serving the last good certificate"
                    ),
                    Err(e) => tracing::error!(error = %e, "TLS certificate reload task failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new() -> Dir {
            let d = std::env::temp_dir().join(format!(
                "bridge-tls-unit-{}-{}",
                std::process::id(),
                uuid::Uuid::now_v7().simple()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed certificate for 127.0.0.1 and its key, PEM.
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(d: &Dir, cert: &str, key: &str) -> TlsFiles {
        TlsFiles {
            cert_file: d.write("cert.pem", cert),
            key_file: d.write("key.pem", key),
        }
    }

    #[test]
    fn a_matching_pair_loads() {
        let d = Dir::new();
        let (cert, key) = pair();
        check(&files(&d, &cert, &key)).unwrap();
    }

    #[test]
    fn a_missing_file_is_named_with_the_reason() {
        let d = Dir::new();
        let (cert, _) = pair();
        let f = TlsFiles {
            cert_file: d.write("cert.pem", &cert),
            key_file: d.0.join("nope.pem"),
        };
        let e = check(&f).unwrap_err();
        assert_eq!(e.field, TlsField::KeyFile);
        assert!(e.message.starts_with("cannot read "), "{e}");
        assert!(e.message.contains("nope.pem"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let d = Dir::new();
        let (cert, _) = pair();
        let (_, other_key) = pair();
        let e = check(&files(&d, &cert, &other_key)).unwrap_err();
        assert_eq!(e.field, TlsField::KeyFile);
        assert!(
            e.message
                .contains("key.pem: the private key does not match the certificate in")
                && e.message.contains("cert.pem"),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_file_without_certificates_says_so_and_suspects_a_swap() {
        let d = Dir::new();
        let (cert, key) = pair();
        let e = check(&files(&d, &key, &cert)).unwrap_err();
        assert_eq!(e.field, TlsField::CertFile);
        assert!(
            e.message.contains("cert.pem: no certificate in the file"),
            "{e}"
        );
        assert!(e.message.contains("swapped"), "{e}");
        let e = check(&files(&d, "", &key)).unwrap_err();
        assert!(e.message.contains("no certificate in the file"), "{e}");
    }

    #[test]
    fn a_key_file_without_a_key_or_with_an_encrypted_one_says_so() {
        let d = Dir::new();
        let (cert, _) = pair();
        let e = check(&files(&d, &cert, "hello\n")).unwrap_err();
        assert_eq!(e.field, TlsField::KeyFile);
        assert!(
            e.message.contains("key.pem: no private key in the file"),
            "{e}"
        );
        let e = check(&files(
            &d,
            &cert,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        ))
        .unwrap_err();
        assert!(e.message.contains("it is encrypted"), "{e}");
    }

    /// How Kubernetes updates a mounted secret: the files are links through `..data`, a link
    /// to a timestamped directory, and an update swaps `..data` to a new directory.
    #[tokio::test]
    async fn a_swapped_symbolic_link_as_in_a_kubernetes_secret_volume_is_a_change() {
        use std::os::unix::fs::symlink;
        let d = Dir::new();
        let (cert1, key1) = pair();
        let (cert2, key2) = pair();
        for (dir, cert, key) in [("v1", &cert1, &key1), ("v2", &cert2, &key2)] {
            std::fs::create_dir(d.0.join(dir)).unwrap();
            std::fs::write(d.0.join(dir).join("tls.crt"), cert).unwrap();
            std::fs::write(d.0.join(dir).join("tls.key"), key).unwrap();
        }
        symlink("v1", d.0.join("..data")).unwrap();
        symlink("..data/tls.crt", d.0.join("tls.crt")).unwrap();
        symlink("..data/tls.key", d.0.join("tls.key")).unwrap();
        let tls = ServerTls::new(TlsFiles {
            cert_file: d.0.join("tls.crt"),
            key_file: d.0.join("tls.key"),
        })
        .unwrap();
        let served = || tls.current.0.read().unwrap().cert[0].clone();
        let first = served();
        let task = tls.spawn_reloader(Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(60)).await;
        symlink("v2", d.0.join("..data_tmp")).unwrap();
        std::fs::rename(d.0.join("..data_tmp"), d.0.join("..data")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while served() == first && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            served().as_ref(),
            CertificateDer::from_pem_slice(cert2.as_bytes())
                .unwrap()
                .as_ref()
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_changed_pair_is_served_and_a_bad_one_keeps_the_last_good() {
        let d = Dir::new();
        let (cert1, key1) = pair();
        let f = files(&d, &cert1, &key1);
        let tls = ServerTls::new(f.clone()).unwrap();
        let served = || tls.current.0.read().unwrap().cert[0].clone();
        let first = served();
        let task = tls.spawn_reloader(Duration::from_millis(20));
        // A key that does not match: the first pair stays.
        let (_, key_other) = pair();
        std::fs::write(&f.key_file, &key_other).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(served(), first);
        // A good new pair replaces it.
        let (cert2, key2) = pair();
        std::fs::write(&f.cert_file, &cert2).unwrap();
        std::fs::write(&f.key_file, &key2).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while served() == first && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let second = served();
        assert_ne!(second, first);
        assert_eq!(
            second.as_ref(),
            CertificateDer::from_pem_slice(cert2.as_bytes())
                .unwrap()
                .as_ref()
        );
        task.abort();
    }
}

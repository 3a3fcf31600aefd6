//! TLS on the HTTP listener: rustls with ring as its one crypto provider, HTTP/1.1 and
//! HTTP/2 by ALPN, served by hyper-util so axum's router stays the same.
//!
//! The certificate chain and key are read from PEM files named in `[http.tls]`. They are
//! checked when the configuration is validated (the key must be the certificate's) and
//! read again whenever either file changes, so a renewed certificate is served without a
//! restart; a renewal that does not load is logged and the previous certificate stays.
//! Only TLS 1.2 and 1.3 with rustls' safe default suites are offered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How long a client may take over its TLS handshake before the connection is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[http.tls]`: serve HTTPS with this certificate chain and key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, the node's own certificate first.
    pub cert: PathBuf,
    /// PEM private key of the first certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the two files are checked for a renewal. Default 60 s.
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

fn default_reload_interval_ms() -> u64 {
    60_000
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("the key in {key} is not the key of the first certificate in {cert}: {message}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the certificate chain and key `files` name.
pub fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_error = |path: &Path, message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(&files.cert, pem_message(e)))?;
    if chain.is_empty() {
        return Err(file_error(
            &files.cert,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_error(&files.key, pem_message(e)))?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(&files.key, format!("not a usable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, key);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    })?;
    Ok(Arc::new(certified))
}

fn pem_message(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "holds no PEM item of the expected kind".into(),
        other => format!("is not valid PEM: {other:?}"),
    }
}

/// The certificates of a PEM CA bundle, for clients that call `https://` nodes.
pub fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let file_error = |message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| file_error(format!("is not a PEM certificate bundle: {e}")))?;
    if roots.is_empty() {
        return Err(file_error(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(roots)
}

/// `builder` trusting the CA bundle at `ca` as well as the system's roots.
pub fn trusting(
    mut builder: reqwest::ClientBuilder,
    ca: Option<&Path>,
) -> Result<reqwest::ClientBuilder, TlsError> {
    if let Some(ca) = ca {
        for root in read_roots(ca)? {
            builder = builder.add_root_certificate(root);
        }
    }
    Ok(builder)
}

/// The certificate being served; replaced when the files change.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// A TLS listener's acceptor and the task that reloads its certificate.
pub struct Acceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<Current>,
    files: TlsFiles,
}

impl Acceptor {
    pub fn new(files: &TlsFiles) -> Result<Acceptor, TlsError> {
        let current = Arc::new(Current(RwLock::new(load(files)?)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Acceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            current,
            files: files.clone(),
        })
    }

    /// Checks the files every `reload_interval_ms` and serves a changed pair once it
    /// loads.
    async fn reload(current: Arc<Current>, files: TlsFiles, stop: CancellationToken) {
        let stamp = |files: &TlsFiles| -> Option<[(SystemTime, u64); 2]> {
            let of = |p: &Path| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            };
            Some([of(&files.cert)?, of(&files.key)?])
        };
        let mut seen = stamp(&files);
        let mut tick = tokio::time::interval(Duration::from_millis(files.reload_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&files);
            if now == seen {
                continue;
            }
            match load(&files) {
                Ok(certified) => {
                    *current.0.write() = certified;
                    seen = now;
                    metrics::counter!(crate::common::metrics::TLS_RELOADS_TOTAL, "outcome" => "loaded")
                        .increment(1);
                    tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    // Tried again at the next tick: a renewal may write the two files
                    // one after the other.
                    metrics::counter!(crate::common::metrics::TLS_RELOADS_TOTAL, "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(error = %e, "TLS certificate not reloaded; serving the previous one");
                }
            }
        }
    }
}

impl Acceptor {
    /// Starts re-reading the certificate files until `stop`, and returns what
    /// handshakes the connections.
    pub(crate) fn start(self, stop: CancellationToken) -> tokio_rustls::TlsAcceptor {
        tokio::spawn(Acceptor::reload(self.current, self.files, stop));
        self.acceptor
    }
}

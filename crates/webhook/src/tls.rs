//! The serving certificate, re-read when its files change: cert-manager and
//! `deploy/webhook-cert.sh` rotate the Secret, and the kubelet updates the mounted files.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// How often the files' modification times are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(10);

struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<LoadedDebug>,
}

/// `Loaded` behind a Debug impl (rustls wants resolvers to be Debug).
struct LoadedDebug(Loaded);

impl std::fmt::Debug for LoadedDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loaded")
    }
}

fn stamp(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<CertifiedKey, TlsError> {
    let file_error = |path: &PathBuf, message: String| TlsError::File {
        path: path.display().to_string(),
        message,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| file_error(cert, e.to_string()))?;
    let key_pem = std::fs::read(key).map_err(|e| file_error(key, e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_error(key, format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| file_error(key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| file_error(key, format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

impl ReloadingCert {
    /// Loads the pair now: a bad pair at start is an error, later it keeps the last good one.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<ReloadingCert, TlsError> {
        let loaded = Loaded {
            key: Arc::new(load(&cert, &key)?),
            stamps: (stamp(&cert), stamp(&key)),
            checked: Instant::now(),
        };
        Ok(ReloadingCert {
            cert,
            key,
            loaded: Mutex::new(LoadedDebug(loaded)),
        })
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut guard = self.loaded.lock().ok()?;
        let loaded = &mut guard.0;
        if loaded.checked.elapsed() >= CHECK_EVERY {
            loaded.checked = Instant::now();
            let stamps = (stamp(&self.cert), stamp(&self.key));
            if stamps != loaded.stamps {
                match load(&self.cert, &self.key) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "webhook: certificate reloaded");
                        loaded.key = Arc::new(key);
                        loaded.stamps = stamps;
                    }
                    // Mid-rotation (one file written, not the other): try again next time.
                    Err(e) => tracing::warn!("webhook: keeping the current certificate: {e}"),
                }
            }
        }
        Some(loaded.key.clone())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

pub(crate) fn server_config(cert: Arc<ReloadingCert>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_no_client_auth().with_cert_resolver(cert.clone()))
    .unwrap_or_else(|_| {
        // ring supports the default versions; this branch is unreachable in practice.
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(cert)
    });
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

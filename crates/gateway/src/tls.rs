//! TLS: the server side picks a certificate by SNI from the Ingresses' Secrets (a generated
//! one otherwise); the client side speaks TLS to `HTTPS`/`GRPCS` backends without verifying
//! them, as ingress-nginx does by default (`proxy-ssl-verify: off`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rvs_model::ingress::{BackendProtocol, Certificate};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A Secret's certificate that cannot serve.
#[derive(Debug, thiserror::Error)]
#[error("{secret}: {message}")]
pub struct CertificateError {
    pub secret: String,
    pub message: String,
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt: no certificate in it".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key: not a PEM private key: {e}"))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key: unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("tls.key does not belong to tls.crt: {e}"))?;
    Ok(certified)
}

/// Certificates by host name, swapped whole on a change.
#[derive(Debug)]
struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` keyed by `.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// Chooses the certificate for a TLS handshake by SNI.
#[derive(Debug)]
pub struct ServerCerts {
    store: ArcSwap<CertStore>,
    fallback: Arc<CertifiedKey>,
}

impl ServerCerts {
    /// With a generated self-signed fallback certificate (ingress-nginx's "Fake Certificate").
    pub fn new() -> Result<Self, String> {
        let generated = rcgen::generate_simple_self_signed(vec!["ingress.local".to_string()])
            .map_err(|e| format!("cannot generate the default certificate: {e}"))?;
        let fallback = certified_key(
            generated.cert.pem().as_bytes(),
            generated.signing_key.serialize_pem().as_bytes(),
        )?;
        Ok(ServerCerts {
            store: ArcSwap::from_pointee(CertStore {
                exact: HashMap::new(),
                wildcard: HashMap::new(),
            }),
            fallback: Arc::new(fallback),
        })
    }

    /// Installs `certificates`; one that does not load is reported and left out (its hosts
    /// get the fallback certificate).
    pub fn update(&self, certificates: &[Arc<Certificate>]) -> Vec<CertificateError> {
        let mut errors = Vec::new();
        let mut store = CertStore {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for cert in certificates {
            match certified_key(&cert.cert_pem, &cert.key_pem) {
                Ok(key) => {
                    let key = Arc::new(key);
                    for host in &cert.hosts {
                        match host.strip_prefix('*') {
                            Some(suffix) => store.wildcard.insert(suffix.to_string(), key.clone()),
                            None => store.exact.insert(host.clone(), key.clone()),
                        };
                    }
                }
                Err(message) => errors.push(CertificateError {
                    secret: cert.secret.to_string(),
                    message,
                }),
            }
        }
        self.store.store(Arc::new(store));
        errors
    }

    fn lookup(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let store = self.store.load();
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.fallback.clone();
        };
        if let Some(key) = store.exact.get(&name) {
            return key.clone();
        }
        if let Some(dot) = name.find('.') {
            if let Some(key) = store.wildcard.get(&name[dot..]) {
                return key.clone();
            }
        }
        self.fallback.clone()
    }

    /// The server configuration for the HTTPS listener (ALPN h2 when `http2`).
    pub fn server_config(self: &Arc<Self>, http2: bool) -> Result<Arc<ServerConfig>, String> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lookup(hello.server_name()))
    }
}

/// TLS to backends.
pub struct BackendTls {
    http1: TlsConnector,
    http2: TlsConnector,
}

impl BackendTls {
    pub fn new() -> Result<Self, String> {
        let config = |alpn: &[u8]| -> Result<Arc<ClientConfig>, String> {
            let mut config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(BackendTls {
            http1: TlsConnector::from(config(b"http/1.1")?),
            http2: TlsConnector::from(config(b"h2")?),
        })
    }

    pub async fn connect(
        &self,
        addr: SocketAddr,
        protocol: BackendProtocol,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let connector = if protocol.is_http2() {
            &self.http2
        } else {
            &self.http1
        };
        connector
            .connect(ServerName::IpAddress(addr.ip().into()), stream)
            .await
    }
}

/// Accepts any backend certificate: pods present self-signed ones, and ingress-nginx does
/// not verify them unless `proxy-ssl-verify` is on.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

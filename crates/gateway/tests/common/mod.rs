//! Test harness for the gateway's integration tests: backends on 127.0.0.1:0, manifests
//! written as YAML to a temporary directory and loaded as the gateway's source loads them,
//! a gateway on 127.0.0.1:0, and clients (HTTP/1.1, h2c, TLS with SNI, raw TCP).
//!
//! Every test file includes this module and uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rvs_gateway::{AccessLogTarget, Gateway, GatewayConfig, Metrics};
use rvs_model::ingress::{GatewayOptions, IngressBuild, IngressSnapshot};
use rvs_model::{BuildOptions, Problem, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bounds every single client call: a hung test fails instead of stalling the suite.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// How an echo backend answers.
#[derive(Clone, Debug, Default)]
pub struct EchoOptions {
    /// Every response has this status (200 otherwise).
    pub status: Option<u16>,
    /// Every response waits this long first (a request's `x-delay-ms` header adds its own).
    pub delay: Duration,
    /// Serves TLS (a self-signed certificate; ALPN h2 and http/1.1) instead of plain text.
    pub tls: bool,
}

/// A small HTTP server (HTTP/1.1 and h2c) that answers with JSON: its name, the request's
/// method, path and query, headers and body length.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// Requests answered.
    pub hits: Arc<AtomicUsize>,
    /// Client (gateway-side) ports of the connections accepted.
    pub peers: Arc<Mutex<HashSet<SocketAddr>>>,
    /// Paths requested, in order.
    pub paths: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn echo(name: &str) -> Backend {
        Backend::start(name, EchoOptions::default()).await
    }

    pub async fn with_status(name: &str, status: u16) -> Backend {
        Backend::start(
            name,
            EchoOptions {
                status: Some(status),
                ..EchoOptions::default()
            },
        )
        .await
    }

    pub async fn start(name: &str, options: EchoOptions) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(HashSet::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(EchoState {
            name: name.to_string(),
            options,
            hits: hits.clone(),
            paths: paths.clone(),
        });
        let seen = peers.clone();
        let acceptor = state.options.tls.then(tls_backend_acceptor);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                seen.lock().unwrap().insert(peer);
                let state = state.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| echo(req, state.clone()));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            builder.serve_connection(TokioIo::new(tls), service).await
                        }
                        None => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                    };
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            hits,
            peers,
            paths,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.peers.lock().unwrap().len()
    }
}

struct EchoState {
    name: String,
    options: EchoOptions,
    hits: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

async fn echo(
    req: Request<Incoming>,
    state: Arc<EchoState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    state.paths.lock().unwrap().push(path.clone());
    let extra = parts
        .headers
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let body_len = match body.collect().await {
        Ok(b) => b.to_bytes().len() as i64,
        Err(_) => -1,
    };
    let delay = state.options.delay + extra;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let json = serde_json::json!({
        "name": state.name,
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    });
    // `x-body-size: N`: N bytes of `x` instead of the JSON.
    let body = match parts
        .headers
        .get("x-body-size")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None => Bytes::from(json.to_string()),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(state.options.status.unwrap_or(200)).unwrap();
    response
        .headers_mut()
        .insert("x-backend", state.name.parse().unwrap());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

/// A port where nothing listens: connecting is refused.
pub async fn dead_endpoint() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A server that accepts connections and closes them at once, without answering.
pub struct Closer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Closer {
    pub async fn start() -> Closer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok((mut stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    // Read what the request sent so far, then close: the client sees the
                    // connection end before any response.
                    let mut buf = [0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf))
                        .await;
                    drop(stream);
                }
            }
        });
        Closer {
            addr,
            accepted,
            task,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------

/// A YAML value: JSON's double-quoted strings are YAML's too.
pub fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// One path of an Ingress rule.
pub fn path(path: &str, path_type: &str, service: &str) -> String {
    format!(
        "{{path: {}, pathType: {path_type}, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}",
        q(path)
    )
}

/// An Ingress rule: a host (None: every host) and its paths.
pub fn rule(host: Option<&str>, paths: &[String]) -> String {
    let mut out = String::new();
    match host {
        Some(h) => out.push_str(&format!("    - host: {}\n      http:\n", q(h))),
        None => out.push_str("    - http:\n"),
    }
    out.push_str("        paths:\n");
    for p in paths {
        out.push_str(&format!("          - {p}\n"));
    }
    out
}

/// The objects a test serves, written as one YAML file.
#[derive(Clone)]
pub struct Manifests {
    docs: Vec<String>,
    config: Vec<(String, String)>,
    next_ip: u8,
}

impl Default for Manifests {
    fn default() -> Self {
        Manifests::new()
    }
}

fn annotations_yaml(annotations: &[(&str, &str)]) -> String {
    if annotations.is_empty() {
        return String::new();
    }
    let mut out = String::from("  annotations:\n");
    for (k, v) in annotations {
        let key = if k.contains('/') {
            k.to_string()
        } else {
            format!("nginx.ingress.kubernetes.io/{k}")
        };
        out.push_str(&format!("    {}: {}\n", q(&key), q(v)));
    }
    out
}

impl Manifests {
    /// The `rvs` IngressClass and nothing else.
    pub fn new() -> Manifests {
        Manifests {
            docs: vec![
                "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: rvs}\nspec: {controller: rvs.io/ingress-controller}\n"
                    .to_string(),
            ],
            config: Vec::new(),
            next_ip: 10,
        }
    }

    /// A ConfigMap key (the gateway is started with `--configmap default/rvs`).
    pub fn config(&mut self, key: &str, value: &str) -> &mut Self {
        self.config.push((key.to_string(), value.to_string()));
        self
    }

    /// A Service `default/NAME` (port 80 `http`) with endpoints on 127.0.0.1 (one
    /// EndpointSlice per endpoint: the slices' ports differ).
    pub fn service(&mut self, name: &str, endpoints: &[SocketAddr]) -> &mut Self {
        let ip = self.next_ip;
        self.next_ip += 1;
        self.docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: 10.96.0.{ip}\n  ports:\n    - {{name: http, port: 80, targetPort: 8080}}\n"
        ));
        for (i, ep) in endpoints.iter().enumerate() {
            self.docs.push(format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n  - {{name: http, port: {}, protocol: TCP}}\nendpoints:\n  - addresses: [{}]\n    conditions: {{ready: true}}\n",
                ep.port(),
                ep.ip()
            ));
        }
        self
    }

    /// An Ingress `default/NAME` of class `rvs`; `rules` from [`rule`]; `extra` more of
    /// its spec (YAML at two spaces, like `  tls: ...`).
    pub fn ingress(
        &mut self,
        name: &str,
        annotations: &[(&str, &str)],
        rules: &[String],
        extra: &str,
    ) -> &mut Self {
        let mut doc = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n{}spec:\n  ingressClassName: rvs\n",
            annotations_yaml(annotations)
        );
        if !rules.is_empty() {
            doc.push_str("  rules:\n");
            for r in rules {
                doc.push_str(r);
            }
        }
        doc.push_str(extra);
        self.docs.push(doc);
        self
    }

    /// A `kubernetes.io/tls` Secret.
    /// An Opaque Secret in `default` with these `stringData` keys.
    pub fn secret(&mut self, name: &str, data: &[(&str, &str)]) -> &mut Self {
        self.secret_in("default", name, data)
    }

    pub fn secret_in(&mut self, namespace: &str, name: &str, data: &[(&str, &str)]) -> &mut Self {
        let mut doc = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: Opaque\nstringData:\n"
        );
        for (key, value) in data {
            doc.push_str(&format!("  {}: {}\n", q(key), q(value)));
        }
        self.docs.push(doc);
        self
    }

    pub fn tls_secret(&mut self, name: &str, cert_pem: &str, key_pem: &str) -> &mut Self {
        self.docs.push(format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {}\n  tls.key: {}\n",
            q(cert_pem),
            q(key_pem)
        ));
        self
    }

    pub fn yaml(&self) -> String {
        let mut docs = self.docs.clone();
        let mut cm = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: rvs, namespace: default}\ndata:\n",
        );
        if self.config.is_empty() {
            cm = cm.replace("data:\n", "data: {}\n");
        }
        for (k, v) in &self.config {
            cm.push_str(&format!("  {}: {}\n", q(k), q(v)));
        }
        docs.push(cm);
        docs.join("---\n")
    }
}

// ---------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------

/// A running gateway with its configuration directory.
pub struct Env {
    pub gateway: Option<Gateway>,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub dir: tempfile::TempDir,
    pub last: Arc<IngressSnapshot>,
    pub access_log: Option<PathBuf>,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

/// One echo backend, Service `web`, behind Ingress `web` for every path of `host`, with these
/// ConfigMap keys and annotations.
pub async fn single_route(
    host: &str,
    config: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> (Env, Backend) {
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    for (k, v) in config {
        m.config(k, v);
    }
    m.service("web", &[b.addr]).ingress(
        "web",
        annotations,
        &[rule(Some(host), &[path("/", "Prefix", "web")])],
        "",
    );
    (Env::start(&m).await, b)
}

pub fn options() -> GatewayOptions {
    GatewayOptions {
        configmap: Some(("default".into(), "rvs".into())),
        ..GatewayOptions::default()
    }
}

pub fn texts(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

impl Env {
    /// Starts a gateway serving `manifests`, which must build without problems.
    pub async fn start(manifests: &Manifests) -> Env {
        Env::start_with(manifests, false).await
    }

    /// With `access_log`, the access log goes to `access.log` in the temporary directory.
    pub async fn start_with(manifests: &Manifests, access_log: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("access.log");
        let target = if access_log {
            AccessLogTarget::File(log_path.clone())
        } else {
            AccessLogTarget::Off
        };
        let config = GatewayConfig {
            http_listen: Some("127.0.0.1:0".parse().unwrap()),
            https_listen: Some("127.0.0.1:0".parse().unwrap()),
            access_log: target,
        };
        let gateway = Gateway::start(config, Metrics::new()).await.unwrap();
        let addrs = gateway.local_addrs();
        let mut env = Env {
            gateway: Some(gateway),
            http: addrs[0],
            https: addrs[1],
            dir,
            last: Arc::new(IngressSnapshot::default()),
            access_log: access_log.then_some(log_path),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        let problems = env.apply(manifests);
        assert_eq!(
            texts(&problems),
            Vec::<String>::new(),
            "manifests have problems"
        );
        env
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    /// Builds `manifests` (loaded from YAML in a directory) over the last snapshot.
    pub fn build(&self, manifests: &Manifests) -> (IngressBuild, Vec<Problem>) {
        let manifest_dir = self.dir.path().join("manifests");
        std::fs::create_dir_all(&manifest_dir).unwrap();
        std::fs::write(manifest_dir.join("objects.yaml"), manifests.yaml()).unwrap();
        let (objects, source_problems) =
            rvs_source::ManifestDir::new(&manifest_dir).load().unwrap();
        let (l4, mut problems) = Snapshot::build(&objects, &BuildOptions::default(), None);
        problems.extend(source_problems);
        let build = IngressSnapshot::build(&objects, &l4, &options(), Some(&self.last));
        (build, problems)
    }

    /// Builds and applies `manifests`; returns every problem (source, L4 and L7).
    pub fn apply(&mut self, manifests: &Manifests) -> Vec<Problem> {
        let (build, mut problems) = self.build(manifests);
        problems.extend(build.problems.iter().cloned());
        let snapshot = Arc::new(build.snapshot);
        let errors = self.gateway().apply(snapshot.clone());
        assert_eq!(errors, Vec::<String>::new(), "apply reported errors");
        self.last = snapshot;
        problems
    }

    pub async fn get(&self, host: &str, path: &str) -> Resp {
        self.send(Method::GET, host, path, &[], Bytes::new()).await
    }

    pub async fn send(
        &self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        send_with(&self.client, self.http, method, host, path, headers, body).await
    }

    /// A client whose connections come from `source` (any 127.0.0.0/8 address).
    pub fn client_from(source: IpAddr) -> Client<HttpConnector, Full<Bytes>> {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(source));
        Client::builder(TokioExecutor::new()).build(connector)
    }

    pub fn metrics_text(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        self.gateway().register_metrics(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub async fn read(response: Response<Incoming>) -> Resp {
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(CALL_TIMEOUT, body.collect())
            .await
            .expect("response body in time")
            .expect("response body")
            .to_bytes();
        Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not the echo's JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The echo backend that answered.
    pub fn backend(&self) -> String {
        assert!(
            self.headers.contains_key("x-backend"),
            "no backend answered: {} {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        self.json()["name"].as_str().unwrap().to_string()
    }

    /// A request header as the backend received it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(String::from)
    }

    pub fn upstream_path(&self) -> String {
        self.json()["path"].as_str().unwrap().to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

pub async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    gateway: SocketAddr,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{gateway}{path}"))
        .header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(body.into())).unwrap();
    let response = tokio::time::timeout(CALL_TIMEOUT, client.request(request))
        .await
        .expect("response in time")
        .expect("response");
    Resp::read(response).await
}

/// Sends raw bytes on a new connection and reads until the server closes it (or `wait`
/// passes).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of the HTTP/1.1 responses in `raw`, in order.
pub fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| raw.get(i + 9..i + 12))
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Polls `check` every 20 ms for up to `within`.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// TLS clients
// ---------------------------------------------------------------------------------------

/// Accepts any certificate: the tests compare the certificate served with the one expected.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection with `sni`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(CALL_TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake")
}

/// What a TLS exchange showed.
pub struct TlsResult {
    pub alpn: Option<Vec<u8>>,
    /// The leaf certificate the gateway served (DER).
    pub certificate: Vec<u8>,
    pub response: Resp,
}

/// One GET over TLS (`sni`), HTTP/2 if ALPN picked it.
pub async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
    host: &str,
    path: &str,
) -> TlsResult {
    let tls = tls_connect(addr, sni, alpn).await;
    let (_, session) = tls.get_ref();
    let negotiated = session.alpn_protocol().map(<[u8]>::to_vec);
    let certificate = session.peer_certificates().unwrap()[0].as_ref().to_vec();
    let io = TokioIo::new(tls);
    let response = if negotiated.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::builder()
            .uri(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let request = Request::builder()
            .uri(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(request).await.unwrap()
    };
    TlsResult {
        alpn: negotiated,
        certificate,
        response: Resp::read(response).await,
    }
}

/// A self-signed certificate for `names`: (PEM chain, PEM key, DER).
/// A TLS server side for a test backend: a self-signed certificate, ALPN h2 and http/1.1.
fn tls_backend_acceptor() -> tokio_rustls::TlsAcceptor {
    let generated = rcgen::generate_simple_self_signed(vec!["backend.test".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![generated.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

pub fn certificate(names: &[&str]) -> (String, String, Vec<u8>) {
    let generated =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    (
        generated.cert.pem(),
        generated.signing_key.serialize_pem(),
        generated.cert.der().as_ref().to_vec(),
    )
}

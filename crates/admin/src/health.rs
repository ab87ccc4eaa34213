//! `healthCheckNodePort` servers: for a LoadBalancer Service with `externalTrafficPolicy:
//! Local`, the cloud load balancer asks every node whether it has a local endpoint and sends
//! traffic only to those that answer 200. The answer is kube-proxy's.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealthEntry {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

struct Running {
    state: watch::Sender<ServiceHealthEntry>,
    stop: watch::Sender<bool>,
}

/// The health check servers; `sync` starts, updates and stops them.
#[derive(Default, Clone)]
pub struct ServiceHealth {
    running: Arc<Mutex<HashMap<u16, Running>>>,
}

impl ServiceHealth {
    /// Serves exactly `wanted` (port -> Service). Returns a line per port it cannot listen on.
    pub async fn sync(&self, wanted: &BTreeMap<u16, ServiceHealthEntry>) -> Vec<String> {
        let mut errors = Vec::new();
        let mut to_start = Vec::new();
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.retain(|port, r| {
                let keep = wanted.contains_key(port);
                if !keep {
                    let _ = r.stop.send(true);
                }
                keep
            });
            for (port, entry) in wanted {
                match running.get(port) {
                    Some(r) => {
                        r.state.send_if_modified(|s| {
                            let changed = s != entry;
                            *s = entry.clone();
                            changed
                        });
                    }
                    None => to_start.push((*port, entry.clone())),
                }
            }
        }
        for (port, entry) in to_start {
            match bind_dual_stack(port) {
                Ok(listener) => {
                    let (state, state_rx) = watch::channel(entry);
                    let (stop, stop_rx) = watch::channel(false);
                    tokio::spawn(serve(listener, state_rx, stop_rx));
                    self.running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(port, Running { state, stop });
                }
                Err(e) => errors.push(format!(
                    "healthCheckNodePort {port} of Service {}/{}: cannot listen: {e}",
                    entry.namespace, entry.name
                )),
            }
        }
        errors
    }
}

/// `[::]` accepting IPv4 too, or `0.0.0.0` on hosts without IPv6.
fn bind_dual_stack(port: u16) -> std::io::Result<TcpListener> {
    bind_v6_any(port).or_else(|_| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
        socket.listen(128)?;
        TcpListener::from_std(socket.into())
    })
}

fn bind_v6_any(port: u16) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// kube-proxy's body and status: 200 with local endpoints, 503 without.
pub fn health_response(entry: &ServiceHealthEntry) -> (StatusCode, String) {
    let body = serde_json::json!({
        "service": {"namespace": entry.namespace, "name": entry.name},
        "localEndpoints": entry.local_endpoints,
        "serviceProxyHealthy": true,
    });
    let status = if entry.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body.to_string())
}

async fn serve(
    listener: TcpListener,
    state: watch::Receiver<ServiceHealthEntry>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let (status, body) = health_response(&state.borrow());
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

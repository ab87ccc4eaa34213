//! rvs's L7 ingress gateway: routes requests by the Ingresses' hosts and paths straight to
//! pod endpoints over kept-alive connections, with ingress-nginx's annotations.
//!
//! A request goes through named phases (see [`proxy`]): route, admission (redirects,
//! allow/deny lists, limits, body size), backend choice (canary, affinity), upstream
//! attempts (retries by `proxy-next-upstream`), response, completion (metrics, access log).
//! A new configuration is an atomic swap of the [`RoutingTable`]: requests in flight finish on
//! the table they started with.

mod access_log;
mod auth;
mod balancer;
mod body;
mod external_auth;
mod framing;
mod io;
mod limits;
mod metrics;
mod path;
mod pool;
mod proxy;
mod server;
mod tls;
mod tunnel;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use rvs_model::ingress::{Backend, BackendService, IngressSnapshot};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use access_log::AccessLogTarget;
pub use metrics::{ControllerLabels, Metrics};

use crate::access_log::AccessLog;
use crate::limits::LimitState;
use crate::pool::{PoolLimits, Pools};
use crate::tls::{BackendTls, ServerCerts};

/// Where the gateway listens and logs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Plain-text port: HTTP/1.1 and h2c, detected per connection (`--http-listen`).
    pub http_listen: Option<SocketAddr>,
    /// TLS port: HTTP/1.1 and h2 by ALPN (`--https-listen`).
    pub https_listen: Option<SocketAddr>,
    pub access_log: AccessLogTarget,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Per-backend balancing state, kept across table swaps.
#[derive(Debug, Default)]
pub(crate) struct BackendState {
    /// Round-robin position.
    pub next: AtomicUsize,
    /// `load-balance: ewma`: response-time averages and requests in flight per endpoint.
    pub ewma: std::sync::Mutex<HashMap<SocketAddr, balancer::Ewma>>,
}

/// The snapshot being served and the state that goes with it.
pub(crate) struct RoutingTable {
    pub snapshot: Arc<IngressSnapshot>,
    pub backends: HashMap<BackendService, Arc<BackendState>>,
    /// Every endpoint a route leads to (upstream pools of others are closed).
    endpoints: std::collections::HashSet<SocketAddr>,
    /// `Strict-Transport-Security` for TLS responses, rendered once per configuration.
    pub hsts: Option<http::HeaderValue>,
}

impl RoutingTable {
    fn new(snapshot: Arc<IngressSnapshot>, previous: Option<&RoutingTable>) -> Self {
        let mut backends = HashMap::new();
        let mut endpoints = std::collections::HashSet::new();
        for backend in all_backends(&snapshot) {
            endpoints.extend(backend.endpoints.iter().copied());
            let state = previous
                .and_then(|p| p.backends.get(&backend.service).cloned())
                .unwrap_or_default();
            balancer::ewma_retain(&state, &backend.endpoints);
            backends.entry(backend.service.clone()).or_insert(state);
        }
        let hsts = snapshot
            .settings
            .hsts_header()
            .and_then(|value| http::HeaderValue::from_str(&value).ok());
        RoutingTable {
            snapshot,
            backends,
            endpoints,
            hsts,
        }
    }
}

/// Every backend the snapshot's routes, default routes and canaries lead to (repeats
/// included).
fn all_backends(snapshot: &IngressSnapshot) -> impl Iterator<Item = &Backend> {
    snapshot
        .hosts
        .iter()
        .chain(Some(&snapshot.default_host))
        .flat_map(|vh| {
            vh.routes
                .iter()
                .map(|r| &r.target)
                .chain(vh.default_route.as_ref())
        })
        .flat_map(|target| {
            std::iter::once(&*target.backend).chain(target.canary.as_ref().map(|c| &*c.backend))
        })
}

/// Everything requests share.
pub(crate) struct Shared {
    pub table: ArcSwap<RoutingTable>,
    pub pools: Pools,
    pub limits: LimitState,
    pub metrics: Metrics,
    pub access_log: AccessLog,
    pub certs: Arc<ServerCerts>,
    /// Host names of `auth-url`s.
    pub resolver: external_auth::Resolver,
    /// `auth-cache-key`: auth answers kept.
    pub auth_answers: external_auth::AnswerCache,
    /// Flips to true on shutdown: listeners stop, connections drain.
    pub shutdown: watch::Receiver<bool>,
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<(SocketAddr, JoinHandle<()>)>,
    connections: server::ConnectionTracker,
    maintenance: JoinHandle<()>,
}

impl Gateway {
    /// Binds the listeners and starts serving an empty configuration (every request 404)
    /// until [`Gateway::apply`].
    /// `metrics` may be registered with an admin server before the gateway starts.
    pub async fn start(config: GatewayConfig, metrics: Metrics) -> Result<Gateway, GatewayError> {
        let certs = Arc::new(ServerCerts::new().map_err(GatewayError::Tls)?);
        let backend_tls = BackendTls::new().map_err(GatewayError::Tls)?;
        let defaults = rvs_model::ingress::GlobalSettings::default();
        let pools = Pools::new(pool_limits(&defaults), backend_tls, metrics.pool_stats());
        let access_log =
            AccessLog::start(config.access_log.clone()).map_err(GatewayError::AccessLog)?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let snapshot = Arc::new(IngressSnapshot::default());
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(RoutingTable::new(snapshot, None)),
            pools,
            limits: LimitState::default(),
            metrics,
            access_log,
            certs,
            resolver: external_auth::Resolver::default(),
            auth_answers: external_auth::AnswerCache::default(),
            shutdown: shutdown_rx,
        });
        let connections = server::ConnectionTracker::new(shared.metrics.client_connections.clone());
        let mut listeners = Vec::new();
        let offers = |with_h2| {
            shared
                .certs
                .server_config(with_h2)
                .map_err(GatewayError::Tls)
        };
        let tls_offers = server::TlsOffers {
            with_h2: offers(true)?,
            http1_only: offers(false)?,
        };
        for (addr, tls) in [
            (config.http_listen, None),
            (config.https_listen, Some(tls_offers)),
        ] {
            let Some(addr) = addr else { continue };
            let listener =
                server::bind(addr).map_err(|source| GatewayError::Listen { addr, source })?;
            let bound = listener.local_addr().unwrap_or(addr);
            let task = tokio::spawn(server::accept_loop(
                listener,
                tls,
                shared.clone(),
                connections.clone(),
            ));
            tracing::info!(addr = %bound, "gateway listening");
            listeners.push((bound, task));
        }
        let maintenance = tokio::spawn(maintain(shared.clone()));
        Ok(Gateway {
            shared,
            shutdown: shutdown_tx,
            listeners,
            connections,
            maintenance,
        })
    }

    /// The bound addresses: (plain, TLS) in the order configured.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(a, _)| *a).collect()
    }

    /// Serves `snapshot` from now on. Returns what could not be applied (a certificate that
    /// does not load: its hosts get the default certificate).
    pub fn apply(&self, snapshot: Arc<IngressSnapshot>) -> Vec<String> {
        let errors: Vec<String> = self
            .shared
            .certs
            .update(&snapshot.certificates)
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        self.shared
            .pools
            .set_limits(pool_limits(&snapshot.settings));
        let previous = self.shared.table.load();
        let version = snapshot.version;
        let hash = snapshot.config_hash;
        let table = RoutingTable::new(snapshot, Some(&previous));
        self.shared.table.store(Arc::new(table));
        let metrics = &self.shared.metrics;
        metrics.new_version(version);
        metrics.config_hash.set(hash as f64);
        metrics.reload_successful.set(i64::from(errors.is_empty()));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        if errors.is_empty() {
            metrics.reload_timestamp.set(now);
        }
        let result = if errors.is_empty() {
            "success"
        } else {
            "partial"
        };
        metrics
            .reloads
            .get_or_create(&metrics::ReloadLabels {
                result: result.into(),
            })
            .inc();
        errors
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<IngressSnapshot> {
        self.shared.table.load().snapshot.clone()
    }

    /// Marks the last configuration attempt as failed (`config_last_reload_successful` 0):
    /// the source refused objects, and the last good ones keep serving.
    pub fn report_rejected(&self) {
        self.shared.metrics.reload_successful.set(0);
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }

    /// Reopens the access log file (`SIGHUP`).
    pub fn reopen_access_log(&self) {
        self.shared.access_log.reopen();
    }

    /// Client connections open now.
    pub fn client_connections(&self) -> usize {
        self.connections.count()
    }

    /// Stops accepting, asks every connection to finish its requests and close, and waits up
    /// to `grace` (`worker-shutdown-timeout`) for them.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        for (_, task) in &self.listeners {
            task.abort();
        }
        self.maintenance.abort();
        if !self.connections.wait_idle(grace).await {
            tracing::warn!(
                left = self.connections.count(),
                "shutdown grace period over; closing the remaining client connections"
            );
        }
    }
}

fn pool_limits(settings: &rvs_model::ingress::GlobalSettings) -> PoolLimits {
    PoolLimits {
        idle_per_endpoint: settings.upstream_keepalive_connections,
        idle_timeout: settings.upstream_keepalive_timeout,
        max_requests: settings.upstream_keepalive_requests,
        max_lifetime: settings.upstream_keepalive_time,
    }
}

/// Housekeeping: idle upstream connections past their timeout or due to be parked (every
/// second), idle limit buckets (every 5 s).
async fn maintain(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for round in 0u64.. {
        tick.tick().await;
        let table = shared.table.load();
        shared.pools.sweep(&|addr| table.endpoints.contains(&addr));
        if round % 5 == 4 {
            shared.limits.sweep(Duration::from_secs(120));
        }
    }
}

//! The engine: turns each snapshot into listeners and runtime tables, atomically, keeping
//! counters, persistence and open connections across changes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use rvs_model::status::{
    ConnectionStatus, RealServerStatus, ServerDisplayState, ServiceTable, Totals,
    VirtualServiceStatus,
};
use rvs_model::{Frontend, IpFamily, Protocol, Snapshot, TrafficPolicy, VirtualService};
use tokio_util::sync::CancellationToken;

use crate::conn::ConnTable;
use crate::runtime::{lock, ListenKey, ServerShared, ServerSlot, VsRuntime};
use crate::vips::VipManager;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Give up on a real server that has not accepted within this time (`--connect-timeout`).
    pub connect_timeout: Duration,
    /// Real servers tried per connection before the client is reset.
    pub connect_tries: u32,
    /// Close a removed real server's connections at once (IPVS `expire_nodest_conn=1`).
    pub expire_removed: bool,
    /// A UDP flow ends after this long without a datagram (IPVS: 300 s).
    pub udp_timeout: Duration,
    /// Where NodePorts listen: node addresses inside these networks; empty = all.
    pub nodeport_addresses: Vec<IpNet>,
    /// Add and remove virtual addresses on this interface.
    pub manage_vips: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            connect_timeout: Duration::from_secs(1),
            connect_tries: 3,
            expire_removed: false,
            udp_timeout: Duration::from_secs(300),
            nodeport_addresses: Vec::new(),
            manage_vips: None,
        }
    }
}

/// A virtual service the engine could not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{protocol} {address} (Service {service}): {message}")]
pub struct ApplyError {
    pub protocol: Protocol,
    pub address: String,
    pub service: String,
    pub message: String,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub connect_failures: AtomicU64,
}

type ServiceMap = HashMap<ListenKey, Arc<VsRuntime>>;

pub(crate) struct Inner {
    pub config: EngineConfig,
    /// What each listener serves; swapped whole, so a connection sees one configuration.
    pub services: ArcSwap<ServiceMap>,
    pub conns: Arc<ConnTable>,
    pub stats: Stats,
    pub shutdown: CancellationToken,
    /// Every real server's counters by listener and address, including removed servers that
    /// still have connections.
    registry: Mutex<HashMap<(ListenKey, SocketAddr), Arc<ServerShared>>>,
    listeners: Mutex<HashMap<ListenKey, CancellationToken>>,
    /// Counters of real servers dropped from the registry.
    retired: Mutex<Totals>,
    version: AtomicU64,
    vips: tokio::sync::Mutex<Option<VipManager>>,
    apply_lock: tokio::sync::Mutex<()>,
}

/// The userspace engine. Cheap to clone; all clones drive the same listeners.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Creates the engine; needs a Tokio runtime (it starts a housekeeping task).
    pub fn new(config: EngineConfig) -> Engine {
        let vips = config.manage_vips.clone().map(VipManager::new);
        let inner = Arc::new(Inner {
            config,
            services: ArcSwap::from_pointee(HashMap::new()),
            conns: Arc::new(ConnTable::default()),
            stats: Stats::default(),
            shutdown: CancellationToken::new(),
            registry: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            retired: Mutex::new(Totals::default()),
            version: AtomicU64::new(0),
            vips: tokio::sync::Mutex::new(vips),
            apply_lock: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(housekeeping(Arc::downgrade(&inner)));
        Engine { inner }
    }

    /// Serves `snapshot`: opens listeners for new virtual services, swaps the table, closes
    /// listeners of removed ones. Established connections are never cut by a change (except
    /// those of removed servers with `expire_removed`, and UDP flows of removed servers).
    /// Returns what could not be served; everything else is.
    pub async fn apply(&self, snapshot: &Snapshot) -> Vec<ApplyError> {
        let inner = &self.inner;
        let _serialized = inner.apply_lock.lock().await;
        let mut errors = Vec::new();
        let desired = expand(snapshot, &inner.config.nodeport_addresses, &mut errors);

        let vips: BTreeSet<IpAddr> = snapshot
            .services
            .iter()
            .filter_map(|vs| match vs.frontend {
                Frontend::Address { addr } => Some(addr.ip()),
                Frontend::NodePort { .. } => None,
            })
            .collect();
        if let Some(manager) = inner.vips.lock().await.as_mut() {
            if let Err(e) = manager.add(&vips).await {
                tracing::warn!(error = %e, "adding virtual addresses failed");
            }
        }

        let old = inner.services.load_full();
        let mut next: ServiceMap = HashMap::with_capacity(desired.len());
        // Runtimes kept as they were: their servers are live by construction.
        let mut reused: HashSet<ListenKey> = HashSet::new();
        {
            let mut registry = lock(&inner.registry);
            for (key, vs) in &desired {
                // At 10,000 services a change touches one: the others keep their runtime.
                if let Some(unchanged) = old.get(key).filter(|o| {
                    (Arc::ptr_eq(&o.config, vs) || *o.config == ***vs)
                        && o.servers.iter().all(|s| !s.shared.expire.is_cancelled())
                }) {
                    next.insert(*key, unchanged.clone());
                    reused.insert(*key);
                    continue;
                }
                let slots = vs
                    .real_servers
                    .iter()
                    .map(|rs| {
                        let shared = registry
                            .entry((*key, rs.addr))
                            .and_modify(|s| {
                                // A server removed with its connections expired comes back fresh.
                                if s.expire.is_cancelled() {
                                    retire(&mut lock(&inner.retired), s);
                                    *s = Arc::new(ServerShared::new(rs.addr));
                                }
                            })
                            .or_insert_with(|| Arc::new(ServerShared::new(rs.addr)))
                            .clone();
                        shared.removed.store(false, Ordering::Relaxed);
                        // A userspace proxy cannot tell where a client came from, so a Local
                        // policy keeps every connection on this node's endpoints.
                        let weight = if vs.traffic_policy == TrafficPolicy::Local && !rs.is_local {
                            0
                        } else {
                            rs.weight
                        };
                        ServerSlot {
                            shared,
                            weight,
                            state: rs.state,
                        }
                    })
                    .collect();
                let previous = old.get(key).map(|o| &o.state);
                next.insert(
                    *key,
                    Arc::new(VsRuntime::new(*key, Arc::clone(vs), slots, previous)),
                );
            }
        }

        // Open listeners for new keys before publishing the table that routes to them.
        let mut started = Vec::new();
        {
            let listening: BTreeSet<ListenKey> = lock(&inner.listeners).keys().copied().collect();
            for key in next.keys().copied().collect::<Vec<_>>() {
                if listening.contains(&key) {
                    continue;
                }
                match self.listen(key) {
                    Ok(stop) => started.push((key, stop)),
                    Err(e) => {
                        let vs = next.remove(&key);
                        errors.push(ApplyError {
                            protocol: key.0,
                            address: key.1.to_string(),
                            service: vs.map(|v| v.config.service.to_string()).unwrap_or_default(),
                            message: listen_error_message(
                                &key,
                                &e,
                                inner.config.manage_vips.is_some(),
                            ),
                        });
                    }
                }
            }
        }
        inner.services.store(Arc::new(next));
        let current = inner.services.load();
        {
            let mut listeners = lock(&inner.listeners);
            listeners.extend(started);
            listeners.retain(|key, stop| {
                let keep = current.contains_key(key);
                if !keep {
                    stop.cancel();
                }
                keep
            });
        }
        self.retire_removed_servers(&current, &reused);

        if let Some(manager) = inner.vips.lock().await.as_mut() {
            if let Err(e) = manager.retain(&vips).await {
                tracing::warn!(error = %e, "removing virtual addresses failed");
            }
        }
        inner.version.store(snapshot.version, Ordering::Relaxed);
        errors
    }

    fn listen(&self, key: ListenKey) -> std::io::Result<CancellationToken> {
        let stop = self.inner.shutdown.child_token();
        match key.0 {
            Protocol::Tcp => {
                let listener = crate::tcp::bind(key.1)?;
                tokio::spawn(crate::tcp::accept_loop(
                    listener,
                    key,
                    self.inner.clone(),
                    stop.clone(),
                ));
            }
            Protocol::Udp => {
                let socket = crate::udp::bind(key.1)?;
                tokio::spawn(crate::udp::serve(
                    socket,
                    key,
                    self.inner.clone(),
                    stop.clone(),
                ));
            }
        }
        Ok(stop)
    }

    /// Marks servers that left the configuration; expires their connections where asked.
    fn retire_removed_servers(&self, current: &ServiceMap, reused: &HashSet<ListenKey>) {
        // Only rebuilt runtimes can have lost servers: index just theirs (at 10,000 services
        // a change rebuilds one), in a set so a Service with many endpoints stays linear.
        let rebuilt: HashSet<(ListenKey, SocketAddr)> = current
            .iter()
            .filter(|(key, _)| !reused.contains(key))
            .flat_map(|(key, vs)| vs.servers.iter().map(move |s| (*key, s.shared.addr)))
            .collect();
        let is_live = |key: &ListenKey, addr: &SocketAddr| {
            reused.contains(key) || rebuilt.contains(&(*key, *addr))
        };
        let mut registry = lock(&self.inner.registry);
        let mut retired = lock(&self.inner.retired);
        // One pass: mark what left, forget what left and has no connections.
        registry.retain(|(key, addr), shared| {
            if is_live(key, addr) {
                return true;
            }
            if !shared.removed.swap(true, Ordering::Relaxed) {
                tracing::debug!(vip = %key.1, server = %addr, "real server removed");
                // UDP flows always go: nothing tells a UDP client its server died (kube-proxy
                // deletes their conntrack entries for the same reason).
                if key.0 == Protocol::Udp || self.inner.config.expire_removed {
                    shared.expire.cancel();
                }
            }
            let keep = shared.open_connections() > 0;
            if !keep {
                retire(&mut retired, shared);
            }
            keep
        });
    }

    /// The live table, as `ipvsadm -Ln --stats` shows it.
    pub fn table(&self) -> ServiceTable {
        let current = self.inner.services.load();
        let registry = lock(&self.inner.registry);
        let mut keys: Vec<&ListenKey> = current.keys().collect();
        keys.sort();
        let services = keys
            .into_iter()
            .map(|key| {
                let vs = &current[key];
                let status = |shared: &ServerShared, weight: u32, state: ServerDisplayState| {
                    RealServerStatus {
                        address: shared.addr.to_string(),
                        weight,
                        active_conns: shared.active.load(Ordering::Relaxed).into(),
                        inactive_conns: shared.inactive.load(Ordering::Relaxed).into(),
                        connections: shared.connections.load(Ordering::Relaxed),
                        bytes_in: shared.bytes_in.load(Ordering::Relaxed),
                        bytes_out: shared.bytes_out.load(Ordering::Relaxed),
                        state,
                    }
                };
                let mut real_servers: Vec<RealServerStatus> = vs
                    .servers
                    .iter()
                    .map(|s| {
                        status(
                            &s.shared,
                            s.weight,
                            ServerDisplayState::of(s.state, s.weight),
                        )
                    })
                    .collect();
                let mut removed: Vec<&Arc<ServerShared>> = registry
                    .iter()
                    .filter(|((k, _), s)| {
                        k == key && s.removed.load(Ordering::Relaxed) && s.open_connections() > 0
                    })
                    .map(|(_, s)| s)
                    .collect();
                removed.sort_by_key(|s| s.addr);
                real_servers.extend(
                    removed
                        .into_iter()
                        .map(|s| status(s, 0, ServerDisplayState::Removed)),
                );
                let cfg = &vs.config;
                let mut flags = Vec::new();
                let family = cfg.scheduler.kind.name();
                if cfg.scheduler.flags.fallback {
                    flags.push(format!("{family}-fallback"));
                }
                if cfg.scheduler.flags.port {
                    flags.push(format!("{family}-port"));
                }
                VirtualServiceStatus {
                    protocol: key.0,
                    address: key.1.to_string(),
                    kind: cfg.kind,
                    service: cfg.service.to_string(),
                    scheduler: cfg.scheduler.kind.name().to_string(),
                    scheduler_flags: flags,
                    persistence_seconds: cfg.persistence.map(|d| d.as_secs()),
                    real_servers,
                }
            })
            .collect();
        ServiceTable {
            engine: "userspace".into(),
            config_version: self.inner.version.load(Ordering::Relaxed),
            services,
            retired: {
                // Removed servers not listed any more count as retired already.
                let mut retired = *lock(&self.inner.retired);
                for server in registry.values() {
                    if server.removed.load(Ordering::Relaxed) && server.open_connections() == 0 {
                        retire(&mut retired, server);
                    }
                }
                retired
            },
        }
    }

    /// The connection table (`ipvsadm -Lnc`).
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        self.inner.conns.snapshot()
    }

    /// Connects that failed and were retried on another real server (or gave up).
    pub fn connect_failures(&self) -> u64 {
        self.inner.stats.connect_failures.load(Ordering::Relaxed)
    }

    /// The addresses being listened on.
    pub fn listening(&self) -> Vec<(Protocol, SocketAddr)> {
        let mut keys: Vec<ListenKey> = lock(&self.inner.listeners).keys().copied().collect();
        keys.sort();
        keys
    }

    /// Stops accepting, lets open connections finish for up to `grace`, then closes them and
    /// takes away the virtual addresses rvs added.
    pub async fn shutdown(&self, grace: Duration) {
        for (_, stop) in lock(&self.inner.listeners).drain() {
            stop.cancel();
        }
        let deadline = Instant::now() + grace;
        while self.inner.conns.len() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.inner.shutdown.cancel();
        if let Some(manager) = self.inner.vips.lock().await.as_mut() {
            if let Err(e) = manager.retain(&BTreeSet::new()).await {
                tracing::warn!(error = %e, "removing virtual addresses failed");
            }
        }
    }
}

fn listen_error_message(key: &ListenKey, e: &std::io::Error, managing: bool) -> String {
    if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && !managing {
        format!("cannot listen: {} is not a local address (add it, or let rvs with --manage-vips IFACE)", key.1.ip())
    } else {
        format!("cannot listen: {e}")
    }
}

/// Each virtual service at each concrete address it listens on. A NodePort that lands on an
/// address a fixed frontend already uses loses, with an error.
fn expand<'a>(
    snapshot: &'a Snapshot,
    nodeport_addresses: &[IpNet],
    errors: &mut Vec<ApplyError>,
) -> Vec<(ListenKey, &'a Arc<VirtualService>)> {
    let node_addrs = crate::addrs::node_addresses(nodeport_addresses);
    let mut out: Vec<(ListenKey, &Arc<VirtualService>)> = Vec::new();
    let mut taken: HashMap<ListenKey, &Arc<VirtualService>> = HashMap::new();
    // Fixed addresses first, so they win over NodePorts.
    let mut ordered: Vec<&Arc<VirtualService>> = snapshot.services.iter().collect();
    ordered.sort_by_key(|vs| matches!(vs.frontend, Frontend::NodePort { .. }));
    for vs in ordered {
        let addrs: Vec<SocketAddr> = match vs.frontend {
            Frontend::Address { addr } => vec![addr],
            Frontend::NodePort { family, port } => node_addrs
                .iter()
                .filter(|ip| IpFamily::of(**ip) == family)
                .map(|ip| SocketAddr::new(*ip, port))
                .collect(),
        };
        for addr in addrs {
            let key = (vs.protocol, addr);
            if let Some(owner) = taken.get(&key) {
                errors.push(ApplyError {
                    protocol: vs.protocol,
                    address: addr.to_string(),
                    service: vs.service.to_string(),
                    message: format!("node port clashes with Service {}", owner.service),
                });
                continue;
            }
            taken.insert(key, vs);
            out.push((key, vs));
        }
    }
    out
}

/// Keeps a forgotten server's counts in the node-wide totals.
fn retire(totals: &mut Totals, server: &ServerShared) {
    totals.connections += server.connections.load(Ordering::Relaxed);
    totals.bytes_in += server.bytes_in.load(Ordering::Relaxed);
    totals.bytes_out += server.bytes_out.load(Ordering::Relaxed);
}

/// Expires persistence templates and forgets removed servers whose connections ended.
async fn housekeeping(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.shutdown.is_cancelled() {
            return;
        }
        let now = Instant::now();
        for vs in inner.services.load().values() {
            vs.state.sweep_templates(now);
        }
        let current = inner.services.load();
        // Lock order everywhere: registry, then retired.
        let mut registry = lock(&inner.registry);
        let mut retired = lock(&inner.retired);
        registry.retain(|(key, addr), s| {
            let keep = !s.removed.load(Ordering::Relaxed)
                || s.open_connections() > 0
                || current
                    .get(key)
                    .is_some_and(|vs| vs.servers.iter().any(|x| x.shared.addr == *addr));
            if !keep {
                retire(&mut retired, s);
            }
            keep
        });
    }
}

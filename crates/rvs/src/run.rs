//! `rvs run`: source -> snapshot -> engine, and the admin server beside them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use ipnet::IpNet;
use rvs_admin::{AdminSource, ConfigStatus, ServiceHealth, ServiceHealthEntry};
use rvs_gateway::{AccessLogTarget, Gateway, GatewayConfig};
use rvs_l4::{Engine, EngineConfig};
use rvs_model::ingress::{GatewayOptions, IngressSnapshot};
use rvs_model::status::{ConnectionStatus, ServiceTable};
use rvs_model::{BuildOptions, Frontend, Problem, SchedulerKind, Snapshot};
use rvs_nft::{NftConfig, NftEngine, RenderOptions};
use rvs_source::ManifestDir;

use crate::kube::ApiFeed;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// Listeners on the virtual addresses; runs anywhere, no privileges.
    Userspace,
    /// nftables rules like kube-proxy's nftables mode (needs CAP_NET_ADMIN; the nft tool only
    /// for `--nft-backend libnftables` or `nft`).
    Nftables,
}

/// How the nftables engine hands its transactions to the kernel.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NftBackend {
    /// Netlink batches written by rvs (no nft parser; the fastest).
    Netlink,
    /// nft's library in rvs's process (Debian's libnftables1), the nft tool for large ones.
    Libnftables,
    /// The nft tool for every transaction.
    Nft,
}

#[derive(Args)]
pub struct RunArgs {
    /// The manifest directory (Services, EndpointSlices, Ingresses...; watched for changes).
    #[arg(short = 'f', long = "filename", required_unless_present_any = ["kube", "kubeconfig"], conflicts_with_all = ["kube", "kubeconfig"])]
    dir: Option<PathBuf>,
    #[command(flatten)]
    kube: crate::kube::KubeArgs,
    /// Admin HTTP address: /healthz, /readyz, /metrics, /api/v1/services.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// Scheduler for Services without the rvs.io/scheduler annotation.
    #[arg(long, default_value = "rr")]
    scheduler: SchedulerKind,
    /// Time allowed for a real server to accept a connection before the next is tried.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    connect_timeout: Duration,
    /// Close a removed real server's connections at once (IPVS expire_nodest_conn=1).
    #[arg(long)]
    expire_removed: bool,
    /// Idle timeout of UDP flows.
    #[arg(long, default_value = "300s", value_parser = crate::parse_duration)]
    udp_timeout: Duration,
    /// NodePorts listen on node addresses inside these networks (comma separated CIDRs);
    /// default: all node addresses.
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<IpNet>,
    /// Add virtual addresses to this interface (and remove them), like kube-ipvs0.
    #[arg(long, value_name = "IFACE")]
    manage_vips: Option<String>,
    /// This node's name: endpoints on it are local (traffic policies Local, forNodes hints).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// This node's zone, for topology-aware routing (forZones hints).
    #[arg(long)]
    node_zone: Option<String>,
    /// The data plane.
    #[arg(long, value_enum, default_value = "userspace")]
    engine: EngineKind,
    /// nftables: ClusterIP traffic from outside these networks is masqueraded.
    #[arg(long, value_delimiter = ',')]
    cluster_cidr: Vec<IpNet>,
    /// nftables: masquerade all ClusterIP traffic.
    #[arg(long)]
    masquerade_all: bool,
    /// nftables: masquerade with random ports as kube-proxy does. For comparison only: it
    /// makes short connections stall on TIME_WAIT collisions.
    #[arg(long)]
    masquerade_fully_random: bool,
    /// nftables: how transactions reach the kernel (netlink batches of rvs's own, or nft's
    /// parser as a fallback).
    #[arg(long, value_enum, default_value = "netlink")]
    nft_backend: NftBackend,
    /// nftables: rewrite the whole ruleset this often, repairing any drift.
    #[arg(long, default_value = "1h", value_parser = crate::parse_duration)]
    sync_period: Duration,
    /// On SIGTERM, how long open connections may take to finish.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    shutdown_grace: Duration,
    #[command(flatten)]
    gateway: GatewayArgs,
}

/// The L7 gateway: it starts when the directory holds Ingresses of its class.
#[derive(Args)]
pub struct GatewayArgs {
    /// Plain-text HTTP port (HTTP/1.1 and h2c, detected per connection).
    #[arg(long, default_value = "0.0.0.0:80")]
    http_listen: SocketAddr,
    /// TLS port (HTTP/1.1 and HTTP/2 by ALPN; certificates from the Ingresses' Secrets).
    #[arg(long, default_value = "0.0.0.0:443")]
    https_listen: SocketAddr,
    /// The IngressClass served (its spec.controller must be rvs.io/ingress-controller).
    #[arg(long, default_value = "rvs")]
    ingress_class: String,
    /// Also serve Ingresses that name no class.
    #[arg(long)]
    watch_ingress_without_class: bool,
    /// The ingress-nginx style ConfigMap with global settings.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    configmap: Option<String>,
    /// Access log: a file (JSON lines, reopened on SIGHUP), `-` for stdout, `off` for none.
    #[arg(long, default_value = "-")]
    access_log: String,
}

impl GatewayArgs {
    fn options(&self) -> anyhow::Result<GatewayOptions> {
        let configmap = match &self.configmap {
            None => None,
            Some(raw) => {
                let (ns, name) = raw
                    .split_once('/')
                    .with_context(|| format!("--configmap {raw:?}: expected NAMESPACE/NAME"))?;
                Some((ns.to_string(), name.to_string()))
            }
        };
        Ok(GatewayOptions {
            ingress_class: self.ingress_class.clone(),
            watch_without_class: self.watch_ingress_without_class,
            configmap,
            ..GatewayOptions::default()
        })
    }

    fn config(&self) -> GatewayConfig {
        GatewayConfig {
            http_listen: Some(self.http_listen),
            https_listen: Some(self.https_listen),
            access_log: match self.access_log.as_str() {
                "-" => AccessLogTarget::Stdout,
                "off" => AccessLogTarget::Off,
                path => AccessLogTarget::File(PathBuf::from(path)),
            },
        }
    }
}

/// The data plane in use.
#[derive(Clone)]
enum DataPlane {
    Userspace(Engine),
    Nftables(NftEngine),
}

impl DataPlane {
    /// Applies a snapshot.
    async fn apply(&self, snapshot: &Arc<Snapshot>, full: bool) -> Applied {
        match self {
            // The userspace engine serves everything it can and names the rest.
            DataPlane::Userspace(e) => Applied {
                errors: e
                    .apply(snapshot)
                    .await
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                applied: true,
            },
            // A refused nftables transaction changes nothing: the next reload tries again.
            DataPlane::Nftables(e) => match e.apply(snapshot, full).await {
                Ok(stats) => {
                    tracing::debug!(full = stats.full, bytes = stats.transaction_bytes, elapsed = ?stats.elapsed, "nftables transaction applied");
                    Applied {
                        errors: Vec::new(),
                        applied: true,
                    }
                }
                Err(e) => Applied {
                    errors: vec![e.to_string()],
                    applied: false,
                },
            },
        }
    }

    fn table(&self) -> ServiceTable {
        match self {
            DataPlane::Userspace(e) => e.table(),
            DataPlane::Nftables(e) => e.table(),
        }
    }
}

struct Applied {
    /// One line per thing that could not be served.
    errors: Vec<String>,
    /// Whether the snapshot is now in force.
    applied: bool,
}

/// The `healthCheckNodePort`s of a snapshot, with this node's endpoint counts.
fn health_checks(snapshot: &Snapshot) -> BTreeMap<u16, ServiceHealthEntry> {
    snapshot
        .services
        .iter()
        .filter_map(|vs| {
            let port = vs.health_check_node_port?;
            Some((
                port,
                ServiceHealthEntry {
                    namespace: vs.service.namespace.clone(),
                    name: vs.service.name.clone(),
                    local_endpoints: vs.serving(true).count(),
                },
            ))
        })
        .collect()
}

/// What the admin server reads.
struct State {
    engine: DataPlane,
    ready: AtomicBool,
    config: Mutex<ConfigStatus>,
    gateway_metrics: rvs_gateway::Metrics,
    kube_metrics: rvs_kube::WatchMetrics,
}

impl AdminSource for State {
    fn table(&self) -> ServiceTable {
        self.engine.table()
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    fn config(&self) -> ConfigStatus {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }
    fn connections(&self) -> Vec<ConnectionStatus> {
        match &self.engine {
            DataPlane::Userspace(e) => e.connections(),
            // The kernel's table is conntrack (`conntrack -L`).
            DataPlane::Nftables(_) => Vec::new(),
        }
    }
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.gateway_metrics.register(registry);
        self.kube_metrics.register(registry);
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let engine = match args.engine {
        EngineKind::Userspace => DataPlane::Userspace(Engine::new(EngineConfig {
            connect_timeout: args.connect_timeout,
            connect_tries: 3,
            expire_removed: args.expire_removed,
            udp_timeout: args.udp_timeout,
            nodeport_addresses: args.nodeport_addresses.clone(),
            manage_vips: args.manage_vips.clone(),
        })),
        EngineKind::Nftables => {
            let engine = NftEngine::new(NftConfig {
                render: RenderOptions {
                    cluster_cidrs: args.cluster_cidr.clone(),
                    masquerade_all: args.masquerade_all,
                    nodeport_addresses: args.nodeport_addresses.clone(),
                    masquerade_fully_random: args.masquerade_fully_random,
                },
                netlink: args.nft_backend == NftBackend::Netlink,
                library: args.nft_backend != NftBackend::Nft,
                ..Default::default()
            });
            tracing::info!(backend = engine.backend(), "nftables engine");
            DataPlane::Nftables(engine)
        }
    };
    let state = Arc::new(State {
        engine: engine.clone(),
        ready: AtomicBool::new(false),
        config: Mutex::new(ConfigStatus::default()),
        gateway_metrics: rvs_gateway::Metrics::new().with_controller(
            rvs_gateway::ControllerLabels {
                namespace: args.kube.pod_namespace.clone().unwrap_or_default(),
                pod: args.kube.pod_name.clone().unwrap_or_default(),
                ..Default::default()
            },
        ),
        kube_metrics: rvs_kube::WatchMetrics::default(),
    });
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("--admin {}: cannot listen", args.admin))?;
    let shutdown = shutdown_signal();
    tokio::spawn(rvs_admin::serve(
        admin,
        state.clone(),
        shutdown.clone().wait(),
    ));

    let mut options = BuildOptions {
        default_scheduler: args.scheduler,
        node_name: args.node_name.clone(),
        node_zone: args.node_zone.clone(),
    };
    let gateway_options = args.gateway.options()?;
    let mut source = match &args.dir {
        Some(dir) => {
            let (watcher, changes) =
                rvs_source::watch_dir(dir, Duration::from_millis(100), Duration::from_secs(2))
                    .with_context(|| {
                        format!("{}: cannot watch the manifest directory", dir.display())
                    })?;
            Source::Dir {
                dir: ManifestDir::new(dir),
                _watcher: Box::new(watcher),
                changes,
            }
        }
        None => Source::Api(Box::new(
            ApiFeed::start(
                &args.kube,
                gateway_options.configmap.clone(),
                args.node_name.clone(),
                state.kube_metrics.clone(),
            )
            .await?,
        )),
    };
    let mut reloader = Reloader {
        previous: None,
        reported: BTreeSet::new(),
        health: ServiceHealth::default(),
        engine_errors: Vec::new(),
        translations: Default::default(),
        gateway: GatewayState {
            options: gateway_options,
            config: args.gateway.config(),
            running: None,
            previous: None,
            errors: Vec::new(),
        },
    };
    if let Source::Dir { dir, .. } = &mut source {
        reloader.reload_dir(dir, &options, &state).await;
        if let Some(snapshot) = &reloader.previous {
            announce(snapshot, &engine, args.admin);
        }
    } else {
        println!(
            "rvs: watching the Kubernetes API (admin http://{}, ready once every kind is listed)",
            args.admin
        );
    }
    let mut resync = tokio::time::interval(args.sync_period);
    resync.tick().await;
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            changed = source.changed() => {
                match &mut source {
                    Source::Dir { dir, .. } => {
                        if changed.is_none() {
                            anyhow::bail!("{}: the directory watcher stopped", dir.root().display());
                        }
                        reloader.reload_dir(dir, &options, &state).await;
                    }
                    Source::Api(feed) => sync_api(feed, &mut reloader, &mut options, &state, &args).await,
                }
            }
            // The directory is polled anyway; the API source retries what failed here.
            _ = retry.tick(), if matches!(source, Source::Api(_)) && reloader.retry_wanted() => {
                if let Source::Api(feed) = &mut source {
                    sync_api(feed, &mut reloader, &mut options, &state, &args).await;
                }
            }
            _ = resync.tick() => {
                if let (DataPlane::Nftables(_), Some(snapshot)) = (&engine, &reloader.previous) {
                    for e in engine.apply(snapshot, true).await.errors {
                        tracing::error!("full resync: {e}");
                    }
                }
            }
            Some(()) = hangup.recv() => {
                if let Some(gateway) = &reloader.gateway.running {
                    tracing::info!("SIGHUP: reopening the access log");
                    gateway.reopen_access_log();
                }
            }
            _ = shutdown.clone().wait() => break,
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    let gateway = async {
        if let Some(gateway) = reloader.gateway.running.take() {
            let grace = gateway.snapshot().settings.worker_shutdown_timeout;
            tracing::info!(
                ?grace,
                "gateway: no new connections, finishing requests in flight"
            );
            gateway.shutdown(grace).await;
        }
    };
    let l4 = async {
        if let DataPlane::Userspace(engine) = &engine {
            tracing::info!(grace = ?args.shutdown_grace, "shutting down: no new connections, waiting for open ones");
            engine.shutdown(args.shutdown_grace).await;
        } else {
            // Like kube-proxy, the rules stay: traffic keeps flowing while rvs restarts.
            // `rvs cleanup` removes them.
            tracing::info!(
                "shutting down; nftables rules stay in place (rvs cleanup removes them)"
            );
        }
    };
    let api = async {
        if let Source::Api(feed) = &mut source {
            feed.stop().await;
        }
    };
    tokio::join!(gateway, l4, api);
    Ok(ExitCode::SUCCESS)
}

/// Where the configuration comes from.
enum Source {
    Dir {
        dir: ManifestDir,
        /// Kept alive: dropping it stops the events.
        _watcher: Box<dyn std::any::Any + Send>,
        changes: tokio::sync::mpsc::Receiver<()>,
    },
    Api(Box<ApiFeed>),
}

impl Source {
    /// The next change; None when the directory watcher stopped.
    async fn changed(&mut self) -> Option<()> {
        match self {
            Source::Dir { changes, .. } => changes.recv().await,
            Source::Api(feed) => {
                feed.changed().await;
                Some(())
            }
        }
    }
}

/// Applies what the API shows now.
async fn sync_api(
    feed: &mut ApiFeed,
    reloader: &mut Reloader,
    options: &mut BuildOptions,
    state: &State,
    args: &RunArgs,
) {
    if !feed.synced() {
        return;
    }
    // The node's zone label, unless --node-zone says otherwise.
    if args.node_zone.is_none() {
        options.node_zone = feed.node_zone();
    }
    let first = reloader.previous.is_none();
    let (objects, pending) = feed.take();
    let in_force = reloader
        .reload(Ok((objects, Vec::new())), options, state)
        .await;
    feed.applied(pending, in_force);
    feed.served(reloader.gateway.previous.as_deref());
    if first {
        if let Some(snapshot) = &reloader.previous {
            announce(snapshot, &state.engine, args.admin);
        }
    }
}

struct Reloader {
    previous: Option<Arc<Snapshot>>,
    /// Problems already logged, so a periodic reload does not repeat them.
    reported: BTreeSet<String>,
    health: ServiceHealth,
    /// What the engine could not serve last time; while any, every reload tries again (the
    /// address may have appeared, the port been freed).
    engine_errors: Vec<String>,
    gateway: GatewayState,
    /// Translations of unchanged Services, reused (objects from the API only).
    translations: rvs_model::TranslationCache,
}

/// The L7 gateway, started with the first Ingress of its class.
struct GatewayState {
    options: GatewayOptions,
    config: GatewayConfig,
    running: Option<Gateway>,
    previous: Option<Arc<IngressSnapshot>>,
    /// What failed last time (listening, a certificate): reloads retry while any.
    errors: Vec<String>,
}

impl GatewayState {
    /// Builds the gateway's snapshot over the services just built and serves it; returns
    /// the refused objects and warnings, and what the gateway could not apply.
    async fn reload(
        &mut self,
        objects: &rvs_model::ObjectSet,
        services: &Snapshot,
        metrics: &rvs_gateway::Metrics,
    ) -> (Vec<Problem>, Vec<String>) {
        let built =
            IngressSnapshot::build(objects, services, &self.options, self.previous.as_deref());
        let rejected = !built.problems.is_empty();
        let mut problems = built.problems;
        problems.extend(built.warnings);
        let snapshot = Arc::new(built.snapshot);
        if self.running.is_none() && snapshot.ingresses.is_empty() {
            return (problems, Vec::new());
        }
        if self.running.is_none() {
            match Gateway::start(self.config.clone(), metrics.clone()).await {
                Ok(gateway) => {
                    for addr in gateway.local_addrs() {
                        println!("rvs: gateway listening on {addr}");
                    }
                    self.running = Some(gateway);
                }
                Err(e) => {
                    self.errors = vec![format!("gateway: {e}")];
                    return (problems, self.errors.clone());
                }
            }
        }
        let mut errors = Vec::new();
        if let Some(gateway) = &self.running {
            errors = gateway.apply(snapshot.clone());
            if rejected {
                gateway.report_rejected();
            }
            tracing::info!(
                version = snapshot.version,
                ingresses = snapshot.ingresses.len(),
                hosts = snapshot.hosts.len(),
                "gateway configuration applied"
            );
        }
        self.previous = Some(snapshot);
        self.errors = errors.clone();
        (problems, errors)
    }
}

impl Reloader {
    /// Whether something failed last time and a retry may fix it (an address appeared, a
    /// port was freed).
    fn retry_wanted(&self) -> bool {
        !self.engine_errors.is_empty() || !self.gateway.errors.is_empty()
    }

    async fn reload_dir(&mut self, dir: &mut ManifestDir, options: &BuildOptions, state: &State) {
        // The periodic poll finds nothing new most of the time: skip the parse, unless
        // something the engine could not serve is waiting for another try.
        if self.previous.is_some() && !self.retry_wanted() && !dir.has_changed() {
            return;
        }
        let loaded = dir.load().map_err(|e| e.to_string());
        self.reload(loaded, options, state).await;
    }

    /// Builds and applies the configuration from what a source loaded (or keeps the last
    /// good one when the source failed).
    async fn reload(
        &mut self,
        loaded: Result<(rvs_model::ObjectSet, Vec<Problem>), String>,
        options: &BuildOptions,
        state: &State,
    ) -> bool {
        let mut status = state.config.lock().map(|c| c.clone()).unwrap_or_default();
        status.reloads_total += 1;
        let (objects, mut problems) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{e}; keeping the last good configuration");
                status.reload_failures_total += 1;
                status.last_reload_successful = false;
                if let Ok(mut c) = state.config.lock() {
                    *c = status;
                }
                return false;
            }
        };
        let (mut snapshot, built) = Snapshot::build_cached(
            &objects,
            options,
            self.previous.as_deref(),
            &mut self.translations,
        );
        problems.extend(built);
        let known = self.gateway.errors.clone();
        let (gateway_problems, gateway_errors) = self
            .gateway
            .reload(&objects, &snapshot, &state.gateway_metrics)
            .await;
        problems.extend(gateway_problems);
        // While something fails (a port taken), every poll retries: log each failure once.
        for e in gateway_errors.iter().filter(|e| !known.contains(e)) {
            tracing::error!("{e}");
        }
        self.report(&problems);

        let changed = self
            .previous
            .as_ref()
            .is_none_or(|p| p.services != snapshot.services);
        let mut in_force_now = true;
        if changed || !self.engine_errors.is_empty() {
            // Shared with the engine from here on: no copy of a large table per change.
            let snapshot = Arc::new(snapshot);
            let Applied {
                mut errors,
                applied,
            } = state.engine.apply(&snapshot, false).await;
            // Health check ports follow the rules actually in force.
            if applied {
                errors.extend(self.health.sync(&health_checks(&snapshot)).await);
            }
            for e in errors.iter().filter(|e| !self.engine_errors.contains(e)) {
                tracing::error!("{e}");
            }
            self.engine_errors = errors.clone();
            tracing::info!(
                version = snapshot.version,
                virtual_services = snapshot.services.len(),
                failed = errors.len(),
                "configuration applied"
            );
            status.last_reload_unix_seconds = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            status.last_reload_successful = errors.is_empty();
            if !errors.is_empty() {
                status.reload_failures_total += 1;
            }
            status.problems = problems
                .iter()
                .map(ToString::to_string)
                .chain(errors.iter().map(ToString::to_string))
                .collect();
            in_force_now = applied;
            if applied {
                status.version = snapshot.version;
                self.previous = Some(snapshot);
            }
        } else if let Some(previous) = &self.previous {
            // Nothing to do; keep the version of what is in force.
            snapshot.version = previous.version;
            status.problems = problems.iter().map(ToString::to_string).collect();
        }
        // What the gateway could not do (a port taken, a certificate that does not load).
        status.problems.extend(gateway_errors);
        let in_force = self.previous.is_some();
        if let Ok(mut c) = state.config.lock() {
            *c = status;
        }
        // Ready once a configuration is in force (a refused first transaction is not).
        state.ready.store(in_force, Ordering::Relaxed);
        // Whether what was loaded is what serves now (a refused transaction is not).
        in_force_now
    }

    fn report(&mut self, problems: &[Problem]) {
        let now: BTreeSet<String> = problems.iter().map(ToString::to_string).collect();
        for line in now.difference(&self.reported) {
            tracing::warn!("{line}");
        }
        self.reported = now;
    }
}

/// Tells the user what is being served and how to try it.
fn announce(snapshot: &Snapshot, engine: &DataPlane, admin: SocketAddr) {
    let listening = match engine {
        DataPlane::Userspace(e) => e.listening(),
        DataPlane::Nftables(_) => Vec::new(),
    };
    println!(
        "rvs: serving {} virtual services (admin http://{admin}, `rvs ls` shows the table)",
        snapshot.services.len()
    );
    for vs in &snapshot.services {
        let servers = vs.real_servers.iter().filter(|r| r.weight > 0).count();
        let addrs: Vec<String> = match vs.frontend {
            Frontend::Address { addr } => vec![addr.to_string()],
            Frontend::NodePort { port, .. } => listening
                .iter()
                .filter(|(p, a)| *p == vs.protocol && a.port() == port)
                .map(|(_, a)| a.to_string())
                .collect(),
        };
        for addr in addrs {
            println!(
                "  {} {addr} -> {servers} real servers ({}, {})",
                vs.protocol, vs.service, vs.scheduler.kind
            );
        }
    }
    if let Some(vs) = snapshot.services.iter().find(|v| {
        matches!(v.frontend, Frontend::Address { .. }) && v.protocol == rvs_model::Protocol::Tcp
    }) {
        println!("try: curl http://{}/", vs.frontend);
    }
}

/// SIGHUP, as a stream of notifications (nothing where it cannot be had).
fn hangup_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// A shutdown signal (SIGTERM or Ctrl-C) that many tasks can wait for.
#[derive(Clone)]
pub(crate) struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    pub(crate) async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

pub(crate) fn shutdown_signal() -> Shutdown {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        let _ = tx.send(true);
    });
    Shutdown(rx)
}

//! The nftables engine: renders each snapshot, applies the difference as one transaction (a
//! netlink batch rvs writes itself, or an `nft -f` script; a failed one leaves the previous
//! ruleset in place), resyncs fully at start and on a timer, and reports the table with
//! counters from the kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rvs_model::status::{RealServerStatus, ServerDisplayState, ServiceTable, VirtualServiceStatus};
use rvs_model::{Frontend, Protocol, Snapshot, VirtualService};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::conntrack::{self, ConnCounts, Conntrack};
use crate::library::Library;
use crate::listing;
use crate::netlink;
use crate::render::{
    endpoint_chain_name, patch, render_cached, render_delta, service_chain_name, RenderCache,
    RenderOptions,
};
use crate::ruleset::{Before, Existing, Family, Ruleset, Transaction};

/// Transactions up to this size run in rvs's process (see `run_script`).
const IN_PROCESS_MAX_BYTES: usize = 1 << 20;

/// nft's first lines of errors say what and where; the rest repeats the script.
fn first_lines(errors: &str) -> String {
    errors.lines().take(6).collect::<Vec<_>>().join("\n")
}

#[derive(Debug, Clone)]
pub struct NftConfig {
    pub render: RenderOptions,
    /// The nft binary (Debian package nftables), for transactions when `netlink` is off:
    /// large ones (full syncs), and every one when libnftables cannot be loaded or `library`
    /// is off. Tables are always read over netlink.
    pub nft: String,
    /// Run transactions through libnftables in rvs's process (see `library.rs`) when
    /// netlink is off. With netlink on, a transaction it cannot encode (a bug) goes to the
    /// nft tool.
    pub library: bool,
    /// Write transactions as netlink batches (see `netlink.rs`); libnftables is then not
    /// loaded at all.
    pub netlink: bool,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            render: RenderOptions::default(),
            nft: "nft".into(),
            library: true,
            netlink: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {binary}: {source} (install Debian's nftables package)")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("nftables refused the transaction, the previous ruleset stays in force: {0}")]
    Refused(String),
    #[error("cannot read the ruleset listing: {0}")]
    Listing(String),
    #[error("cannot talk to nftables over netlink, the previous ruleset stays in force: {0}")]
    Netlink(String),
}

#[derive(Default)]
struct Applied {
    ruleset: Option<Ruleset>,
    snapshot: Option<Arc<Snapshot>>,
    /// Set after a failure: the kernel may differ from `ruleset`, so rewrite it all.
    needs_full: bool,
    render_cache: RenderCache,
}

#[derive(Default)]
struct Counters {
    /// Packets through each DNAT rule (chain, target): one per connection, since NAT chains
    /// see only the first packet of each.
    connections: HashMap<(String, SocketAddr), u64>,
    conns: ConnCounts,
    taken: Option<Instant>,
}

/// Cheap to clone; all clones drive the same tables.
#[derive(Clone)]
pub struct NftEngine {
    config: Arc<NftConfig>,
    applied: Arc<tokio::sync::Mutex<Applied>>,
    counters: Arc<Mutex<Counters>>,
    /// The snapshot in force, for `table()` without awaiting the apply lock.
    current: Arc<Mutex<Option<Arc<Snapshot>>>>,
    /// A counter refresh is running: `table()` does not start another.
    refreshing: Arc<std::sync::atomic::AtomicBool>,
    /// libnftables in this process; None: the nft tool runs each transaction.
    library: Option<Library>,
    /// rvs's own netlink batches; None: libnftables or the nft tool.
    netlink: Option<Arc<netlink::Socket>>,
    /// Reads the tables (names for full syncs, counters), beside transactions.
    lister: Option<Arc<netlink::Socket>>,
    /// The connection tracking table (counts for `rvs ls`, stale entries deleted).
    conntrack: Option<Arc<Conntrack>>,
    cleanup: Arc<Mutex<CleanupQueue>>,
}

/// Conntrack entries to delete (see `stale_conntrack`).
#[derive(Debug, Default)]
struct StaleConntrack {
    gone_servers: BTreeSet<SocketAddr>,
    new_frontends: Vec<conntrack::Frontend>,
}

impl StaleConntrack {
    fn is_empty(&self) -> bool {
        self.gone_servers.is_empty() && self.new_frontends.is_empty()
    }
}

#[derive(Debug, Default)]
struct CleanupQueue {
    work: StaleConntrack,
    /// A cleanup task is running; it takes what is queued before it ends.
    running: bool,
}

/// How long counters read from the kernel are reused before `table()` refreshes them.
const COUNTERS_MAX_AGE: Duration = Duration::from_secs(2);

impl NftEngine {
    /// Call it on a thread in the network namespace to program: the netlink socket opens in
    /// it and libnftables' thread starts from it.
    pub fn new(config: NftConfig) -> Self {
        let netlink = if config.netlink {
            netlink::Socket::open()
                .inspect_err(|e| tracing::info!("no netlink socket to nftables: {e}"))
                .ok()
                .map(Arc::new)
        } else {
            None
        };
        let library = if config.library && netlink.is_none() {
            Library::start()
                .inspect_err(|e| {
                    tracing::info!("nftables transactions through the nft tool: {e}");
                })
                .ok()
        } else {
            None
        };
        let lister = netlink::Socket::open()
            .inspect_err(|e| tracing::warn!("no netlink socket to nftables: {e}"))
            .ok()
            .map(Arc::new);
        let conntrack = Conntrack::open()
            .inspect_err(|e| tracing::warn!("no netlink socket to conntrack: {e}"))
            .ok()
            .map(Arc::new);
        NftEngine {
            netlink,
            lister,
            conntrack,
            cleanup: Arc::default(),
            library,
            config: Arc::new(config),
            applied: Arc::default(),
            counters: Arc::default(),
            current: Arc::default(),
            refreshing: Arc::default(),
        }
    }

    /// What runs the transactions: `netlink` (batches written by rvs), `libnftables` (in
    /// this process) or `nft` (the tool).
    pub fn backend(&self) -> &'static str {
        if self.netlink.is_some() {
            "netlink"
        } else if self.library.is_some() {
            "libnftables"
        } else {
            "nft"
        }
    }

    /// Applies `snapshot`: only what changed, unless `full` (or the last attempt failed), in
    /// which case every chain and map is rewritten and whatever else is in rvs's tables goes.
    pub async fn apply(
        &self,
        snapshot: &Arc<Snapshot>,
        full: bool,
    ) -> Result<ApplyStats, NftError> {
        let started = Instant::now();
        let mut applied = self.applied.lock().await;
        let applied = &mut *applied;
        let full = full || applied.needs_full || applied.ruleset.is_none();
        // Incremental: only the virtual services that changed are rendered and diffed, and
        // the stored ruleset is patched; a full sync renders (from the cache) and rewrites all.
        let delta = if full {
            None
        } else {
            render_delta(snapshot, &self.config.render, &mut applied.render_cache)
        };
        let rendered = match (&delta, &applied.ruleset) {
            (Some(_), _) => None,
            _ => Some(render_cached(
                snapshot,
                &self.config.render,
                &mut applied.render_cache,
            )),
        };
        let listed = match (&delta, &applied.ruleset) {
            (None, Some(_)) if !full => None,
            (None, _) => match self.list_existing().await {
                Ok(listed) => Some(listed),
                Err(e) => {
                    // The render cache moved on: whatever comes next rewrites everything.
                    applied.needs_full = true;
                    return Err(e);
                }
            },
            (Some(_), _) => None,
        };
        let result = {
            let tx = match (&delta, &rendered, &applied.ruleset, &listed) {
                (Some(delta), _, _, _) => delta.after.transaction(Before::Applied(&delta.before)),
                (None, Some(ruleset), _, Some(listed)) => {
                    ruleset.transaction(Before::Listed(listed))
                }
                (None, Some(ruleset), Some(previous), None) => {
                    ruleset.transaction(Before::Applied(previous))
                }
                _ => Transaction::default(),
            };
            if tx.is_empty() {
                Ok((0, self.backend()))
            } else {
                self.run(&tx).await
            }
        };
        let (transaction_bytes, backend) = match result {
            Ok(done) => done,
            Err(e) => {
                applied.needs_full = true;
                return Err(e);
            }
        };
        match (rendered, delta) {
            (Some(ruleset), _) => applied.ruleset = Some(ruleset),
            (None, Some(delta)) => {
                if let Some(ruleset) = applied.ruleset.as_mut() {
                    patch(ruleset, &delta);
                }
            }
            (None, None) => {}
        }
        let previous = applied.snapshot.replace(snapshot.clone());
        applied.needs_full = false;
        if let Ok(mut current) = self.current.lock() {
            *current = Some(snapshot.clone());
        }
        // In the background: reading a large conntrack table must not hold up the next
        // change. One cleanup at a time; what changes meanwhile queues up for the next round.
        if let Some(table) = self.conntrack.clone() {
            let work = stale_conntrack(previous.as_deref(), snapshot);
            if !work.is_empty() {
                let start = {
                    let mut queue = self.cleanup.lock().unwrap_or_else(PoisonError::into_inner);
                    queue.work.gone_servers.extend(work.gone_servers);
                    queue.work.new_frontends.extend(work.new_frontends);
                    !std::mem::replace(&mut queue.running, true)
                };
                if start {
                    let queue = Arc::clone(&self.cleanup);
                    tokio::task::spawn_blocking(move || clean_conntrack(&table, &queue));
                }
            }
        }
        Ok(ApplyStats {
            full,
            transaction_bytes,
            backend,
            elapsed: started.elapsed(),
        })
    }

    /// Runs one transaction; returns its size (batch or script bytes) and what ran it.
    async fn run(&self, tx: &Transaction<'_>) -> Result<(usize, &'static str), NftError> {
        if let Some(socket) = &self.netlink {
            match netlink::encode(tx) {
                Ok(mut batch) => {
                    let size = batch.size_bytes();
                    let bytes = batch.take_bytes();
                    let socket = Arc::clone(socket);
                    // A full sync keeps the kernel busy for a good part of a second.
                    let sent = tokio::task::spawn_blocking(move || {
                        let mut bytes = bytes;
                        socket.send(&mut bytes)
                    })
                    .await
                    .map_err(|e| NftError::Netlink(e.to_string()))?
                    .map_err(|e| NftError::Netlink(netlink::explain(&e)))?;
                    return if sent.is_empty() {
                        Ok((size, "netlink"))
                    } else {
                        Err(NftError::Refused(batch.refusal(&sent)))
                    };
                }
                // A rule the encoder does not know is a bug of rvs's: nft still reads it.
                Err(e) => tracing::warn!("nftables transaction through nft instead: {e}"),
            }
        }
        let script = tx.script();
        let size = script.len();
        let backend = match &self.library {
            Some(_) if size <= IN_PROCESS_MAX_BYTES => "libnftables",
            _ => "nft",
        };
        self.run_script(script).await.map(|()| (size, backend))
    }

    /// Runs one script. Small ones (changes) through libnftables, which saves starting a
    /// process; large ones (full syncs, thousands of new Services) through a fresh `nft`, which
    /// parsed a 12 MB script 5-10% faster than libnftables in rvs's threaded process and gives
    /// the parser's memory back when it exits.
    async fn run_script(&self, script: String) -> Result<(), NftError> {
        let small = script.len() <= IN_PROCESS_MAX_BYTES;
        if let Some(library) = self.library.as_ref().filter(|_| small) {
            return library
                .run(script)
                .await
                .map_err(|e| NftError::Refused(first_lines(&e)));
        }
        self.run_tool(&script).await
    }

    async fn run_tool(&self, script: &str) -> Result<(), NftError> {
        let mut child = Command::new(&self.config.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NftError::Spawn {
                binary: self.config.nft.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| NftError::Refused(e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| NftError::Refused(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NftError::Refused(first_lines(&String::from_utf8_lossy(
                &out.stderr,
            ))))
        }
    }

    /// The names in rvs's tables (chains, sets, maps; not their contents), over netlink.
    async fn list_existing(&self) -> Result<BTreeMap<Family, Existing>, NftError> {
        let socket = self.listing_socket()?;
        tokio::task::spawn_blocking(move || {
            Family::ALL
                .into_iter()
                .map(|family| Ok((family, listing::existing(&socket, family)?)))
                .collect::<std::io::Result<BTreeMap<_, _>>>()
        })
        .await
        .map_err(|e| NftError::Listing(e.to_string()))?
        .map_err(|e| NftError::Listing(netlink::explain(&e)))
    }

    fn listing_socket(&self) -> Result<Arc<netlink::Socket>, NftError> {
        self.lister
            .clone()
            .ok_or_else(|| NftError::Listing("no netlink socket to nftables".into()))
    }

    /// Removes rvs's tables (on exit with cleanup, or `rvs cleanup`).
    pub async fn remove_all(&self) -> Result<(), NftError> {
        self.run(&Ruleset::delete_transaction(&Family::ALL))
            .await
            .map(|_| ())
    }

    async fn refresh_counters(&self) {
        let connections = match self.listing_socket() {
            Ok(socket) => tokio::task::spawn_blocking(move || {
                let mut connections = HashMap::new();
                for family in Family::ALL {
                    if let Err(e) = listing::dnat_counters(&socket, family, &mut connections) {
                        tracing::debug!("cannot read the DNAT counters: {e}");
                    }
                }
                connections
            })
            .await
            .unwrap_or_default(),
            Err(_) => HashMap::new(),
        };
        let conns = match self.conntrack.clone() {
            Some(table) => tokio::task::spawn_blocking(move || table.counts())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => ConnCounts::default(),
        };
        if let Ok(mut c) = self.counters.lock() {
            *c = Counters {
                connections,
                conns,
                taken: Some(Instant::now()),
            };
        }
    }

    /// The live table. Counters come from the kernel (refreshed in the background when older
    /// than two seconds): connections scheduled per endpoint from the DNAT rules' counters,
    /// ActiveConn/InActConn from conntrack. Bytes are not counted by this engine.
    pub fn table(&self) -> ServiceTable {
        let snapshot = self
            .current
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or_default();
        let stale = self
            .counters
            .lock()
            .map(|c| c.taken.is_none_or(|t| t.elapsed() > COUNTERS_MAX_AGE))
            .unwrap_or(true);
        if stale
            && !self
                .refreshing
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    let engine = self.clone();
                    handle.spawn(async move {
                        engine.refresh_counters().await;
                        engine
                            .refreshing
                            .store(false, std::sync::atomic::Ordering::Release);
                    });
                }
                Err(_) => self
                    .refreshing
                    .store(false, std::sync::atomic::Ordering::Release),
            }
        }
        let counters = self.counters.lock();
        let empty = Counters::default();
        let counters = counters.as_deref().unwrap_or(&empty);
        ServiceTable {
            engine: "nftables".into(),
            config_version: snapshot.version,
            services: snapshot
                .services
                .iter()
                .map(|vs| status(vs, counters))
                .collect(),
            // Connections are counted by the rules themselves and vanish with them.
            retired: Default::default(),
        }
    }
}

/// Connections DNATed to `rs` by `vs`'s chains: its service chain (and the cluster chain of a
/// Local policy) and, with persistence or hashing, the endpoint chain, which the frontends of
/// one Service port share.
fn connections_to(vs: &VirtualService, rs: &rvs_model::RealServer, counters: &Counters) -> u64 {
    let service = service_chain_name(vs);
    [
        format!("{service}-cluster"),
        endpoint_chain_name(vs, rs),
        service,
    ]
    .into_iter()
    .filter_map(|chain| counters.connections.get(&(chain, rs.addr)))
    .sum()
}

/// What one apply did.
#[derive(Debug, Clone, Copy)]
pub struct ApplyStats {
    pub full: bool,
    /// The size of the transaction: netlink batch bytes, or nft script bytes.
    pub transaction_bytes: usize,
    /// What applied it: `netlink`, `libnftables` or `nft` (see `NftEngine::backend`).
    pub backend: &'static str,
    pub elapsed: Duration,
}

fn status(vs: &VirtualService, counters: &Counters) -> VirtualServiceStatus {
    let mut flags = Vec::new();
    let family = vs.scheduler.kind.name();
    if vs.scheduler.flags.fallback {
        flags.push(format!("{family}-fallback"));
    }
    if vs.scheduler.flags.port {
        flags.push(format!("{family}-port"));
    }
    let serving: BTreeSet<SocketAddr> = vs
        .serving(true)
        .chain(vs.serving(false))
        .map(|r| r.addr)
        .collect();
    VirtualServiceStatus {
        protocol: vs.protocol,
        address: vs.frontend.to_string(),
        kind: vs.kind,
        service: vs.service.to_string(),
        scheduler: vs.scheduler.kind.name().to_string(),
        scheduler_flags: flags,
        persistence_seconds: vs.persistence.map(|d| d.as_secs()),
        real_servers: vs
            .real_servers
            .iter()
            .map(|rs| {
                let (active, inactive) = match vs.frontend {
                    Frontend::Address { addr } => counters
                        .conns
                        .by_pair
                        .get(&(addr, rs.addr))
                        .copied()
                        .unwrap_or_default(),
                    // A NodePort's connections arrive on any node address: add them up.
                    Frontend::NodePort { port, .. } => counters
                        .conns
                        .by_pair
                        .iter()
                        .filter(|((vip, server), _)| vip.port() == port && *server == rs.addr)
                        .fold((0, 0), |acc, (_, c)| (acc.0 + c.0, acc.1 + c.1)),
                };
                let weight = if serving.contains(&rs.addr) {
                    rs.weight
                } else {
                    0
                };
                RealServerStatus {
                    address: rs.addr.to_string(),
                    weight,
                    active_conns: active,
                    inactive_conns: inactive,
                    connections: connections_to(vs, rs, counters),
                    bytes_in: 0,
                    bytes_out: 0,
                    state: ServerDisplayState::of(rs.state, weight),
                }
            })
            .collect(),
    }
}

/// kube-proxy's UDP conntrack cleanup: entries of removed endpoints go, so clients do not
/// keep sending to a dead pod; entries to a service port that just got its first endpoint go,
/// since they were never DNATed. Likewise for a virtual address that appears at runtime (TCP
/// or UDP): whatever conntrack holds for it was created before its rules (a client that tried
/// too early) and would keep that client's port away from the Service until it times out.
/// Not on the first apply: after a restart the rules were already in place.
fn stale_conntrack(previous: Option<&Snapshot>, next: &Snapshot) -> StaleConntrack {
    let Some(previous) = previous else {
        return StaleConntrack::default();
    };
    let serving = |vs: &VirtualService| -> BTreeSet<SocketAddr> {
        vs.serving(false).map(|r| r.addr).collect()
    };
    let mut gone_servers = BTreeSet::new();
    let mut new_frontends: Vec<conntrack::Frontend> = Vec::new();
    for old in previous
        .services
        .iter()
        .filter(|v| v.protocol == Protocol::Udp)
    {
        let before = serving(old);
        let after = next
            .find(old.protocol, &old.frontend)
            .map(serving)
            .unwrap_or_default();
        gone_servers.extend(before.difference(&after).copied());
    }
    for new in &next.services {
        let before = previous.find(new.protocol, &new.frontend);
        let appeared = before.is_none() && matches!(new.frontend, Frontend::Address { .. });
        let revived = new.protocol == Protocol::Udp
            && before.map(serving).unwrap_or_default().is_empty()
            && !serving(new).is_empty();
        if appeared || revived {
            new_frontends.push(match new.frontend {
                Frontend::Address { addr } => (new.protocol, Some(addr.ip()), addr.port()),
                Frontend::NodePort { port, .. } => (new.protocol, None, port),
            });
        }
    }
    StaleConntrack {
        gone_servers,
        new_frontends,
    }
}

/// Runs the queued cleanups until none is left: one read of the table and messages of
/// deletions per round, however many frontends changed.
fn clean_conntrack(table: &Conntrack, queue: &Mutex<CleanupQueue>) {
    loop {
        let work = {
            let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.work.is_empty() {
                queue.running = false;
                return;
            }
            std::mem::take(&mut queue.work)
        };
        match table.delete_stale(&work.gone_servers, &work.new_frontends) {
            Ok(deleted) => tracing::debug!(deleted, "stale conntrack entries deleted"),
            Err(e) => tracing::warn!("cannot clean conntrack entries up: {e}"),
        }
    }
}

//! The engine's live view of one virtual service: its real servers with their counters, its
//! scheduler and its persistence templates.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rvs_model::{EndpointState, Protocol, VirtualService};
use rvs_sched::{Dest, Flow, Scheduler, SchedulerConfig};
use tokio_util::sync::CancellationToken;

/// What a listener is bound to: the protocol and a concrete local address.
pub(crate) type ListenKey = (Protocol, SocketAddr);

/// Counters and controls of one real server behind one listener. Outlives configuration
/// changes while the server stays, and while its connections last once removed.
#[derive(Debug)]
pub(crate) struct ServerShared {
    pub addr: SocketAddr,
    pub active: AtomicU32,
    pub inactive: AtomicU32,
    pub connections: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Set once the server left the configuration.
    pub removed: AtomicBool,
    /// Cancelled to close this server's connections at once (`--expire-removed`, and UDP
    /// flows of a removed server, as kube-proxy clears their conntrack entries).
    pub expire: CancellationToken,
}

impl ServerShared {
    pub fn new(addr: SocketAddr) -> Self {
        ServerShared {
            addr,
            active: AtomicU32::new(0),
            inactive: AtomicU32::new(0),
            connections: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            expire: CancellationToken::new(),
        }
    }

    pub fn open_connections(&self) -> u32 {
        self.active.load(Ordering::Relaxed) + self.inactive.load(Ordering::Relaxed)
    }
}

pub(crate) struct ServerSlot {
    pub shared: Arc<ServerShared>,
    /// The weight new connections are scheduled by (0 = quiesced or terminating).
    pub weight: u32,
    pub state: EndpointState,
}

/// An IPVS persistence template: a client address bound to a real server.
#[derive(Debug, Clone, Copy)]
struct Template {
    server: SocketAddr,
    /// Connections made under this template that are still open.
    controlled: u32,
    expires: Instant,
}

impl Template {
    fn alive(&self, now: Instant) -> bool {
        self.controlled > 0 || now < self.expires
    }
}

/// The template binding `client` to `server`, created or rebound (a template for another
/// server is replaced: the client moved), expiring no earlier than `expires`.
fn template_for(
    templates: &mut HashMap<IpAddr, Template>,
    client: IpAddr,
    server: SocketAddr,
    expires: Instant,
) -> &mut Template {
    let entry = templates.entry(client).or_insert(Template {
        server,
        controlled: 0,
        expires,
    });
    if entry.server != server {
        *entry = Template {
            server,
            controlled: 0,
            expires,
        };
    }
    entry.expires = entry.expires.max(expires);
    entry
}

/// State of a virtual service that survives configuration changes of the same listener.
pub(crate) struct VsState {
    scheduler: Mutex<(SchedulerConfig, Box<dyn Scheduler>)>,
    templates: Mutex<HashMap<IpAddr, Template>>,
}

impl VsState {
    pub fn new(config: &SchedulerConfig) -> Self {
        VsState {
            scheduler: Mutex::new((*config, rvs_sched::new_scheduler(config))),
            templates: Mutex::new(HashMap::new()),
        }
    }

    /// Drops expired templates; returns how many remain.
    pub fn sweep_templates(&self, now: Instant) -> usize {
        let mut templates = lock(&self.templates);
        templates.retain(|_, t| t.alive(now));
        templates.len()
    }
}

pub(crate) struct VsRuntime {
    pub key: ListenKey,
    pub config: Arc<VirtualService>,
    /// In the order of `config.real_servers`, which the scheduler relies on.
    pub servers: Vec<ServerSlot>,
    pub state: Arc<VsState>,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the data plane keeps
/// going rather than cascading the panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl VsRuntime {
    /// Builds the runtime and tells the (kept or new) scheduler about the server set.
    pub fn new(
        key: ListenKey,
        config: Arc<VirtualService>,
        servers: Vec<ServerSlot>,
        previous: Option<&Arc<VsState>>,
    ) -> Self {
        let state = match previous {
            Some(state) => {
                // Same state, so persistence templates (and connections releasing them) carry
                // over; only a changed scheduler is replaced.
                let mut scheduler = lock(&state.scheduler);
                if scheduler.0 != config.scheduler {
                    *scheduler = (
                        config.scheduler,
                        rvs_sched::new_scheduler(&config.scheduler),
                    );
                }
                drop(scheduler);
                state.clone()
            }
            None => Arc::new(VsState::new(&config.scheduler)),
        };
        let runtime = VsRuntime {
            key,
            config,
            servers,
            state,
        };
        let dests = runtime.dests();
        lock(&runtime.state.scheduler).1.update(&dests);
        runtime
    }

    fn dests(&self) -> Vec<Dest> {
        self.servers
            .iter()
            .map(|s| Dest {
                addr: s.shared.addr,
                weight: s.weight,
                active: s.shared.active.load(Ordering::Relaxed),
                inactive: s.shared.inactive.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Chooses the real server for a new connection from `client`, never one in `exclude`
    /// (servers whose connect just failed) and never one with weight 0.
    pub fn pick(&self, client: SocketAddr, exclude: &[usize]) -> Option<usize> {
        let usable = |i: usize| self.servers[i].weight > 0 && !exclude.contains(&i);
        let now = Instant::now();
        // Held while scheduling, so concurrent first connections of one client agree.
        let mut templates = self.config.persistence.map(|_| lock(&self.state.templates));
        if let Some(templates) = &templates {
            if let Some(t) = templates.get(&client.ip()).filter(|t| t.alive(now)) {
                if let Some(i) = self.servers.iter().position(|s| s.shared.addr == t.server) {
                    if usable(i) {
                        return Some(i);
                    }
                }
            }
        }
        let dests = self.dests();
        let flow = Flow {
            client,
            vip: self.key.1,
        };
        let chosen = lock(&self.state.scheduler).1.schedule(&dests, &flow);
        let picked = match chosen {
            Some(i) if i < self.servers.len() && usable(i) => Some(i),
            // The scheduler refuses (all quiesced, or a hashing scheduler's server is gone
            // and it has no fallback flag): so does IPVS.
            None => None,
            // It insists on a server whose connect just failed: take the least loaded other,
            // overhead/weight compared by cross multiplication as ip_vs_wlc.c does.
            Some(_) => (0..self.servers.len())
                .filter(|i| usable(*i))
                .min_by(|&a, &b| {
                    let la = u128::from(dests[a].overhead()) * u128::from(dests[b].weight);
                    let lb = u128::from(dests[b].overhead()) * u128::from(dests[a].weight);
                    la.cmp(&lb)
                }),
        };
        // IPVS creates the template when it schedules, not when the connection is up.
        if let (Some(templates), Some(i), Some(timeout)) =
            (templates.as_mut(), picked, self.config.persistence)
        {
            template_for(
                templates,
                client.ip(),
                self.servers[i].shared.addr,
                now + timeout,
            );
        }
        picked
    }

    /// Records that `client` now has an open connection to `server` under persistence.
    pub fn bind_template(&self, client: IpAddr, server: SocketAddr) {
        let Some(timeout) = self.config.persistence else {
            return;
        };
        let mut templates = lock(&self.state.templates);
        template_for(&mut templates, client, server, Instant::now() + timeout).controlled += 1;
    }

    /// A connection made under a template closed: the template's timer starts again.
    pub fn release_template(&self, client: IpAddr, server: SocketAddr) {
        let Some(timeout) = self.config.persistence else {
            return;
        };
        let mut templates = lock(&self.state.templates);
        if let Some(t) = templates.get_mut(&client) {
            if t.server == server {
                t.controlled = t.controlled.saturating_sub(1);
                t.expires = Instant::now() + timeout;
            }
        }
    }

    pub fn persistence(&self) -> Option<Duration> {
        self.config.persistence
    }
}

//! The connection table, as IPVS keeps it: per connection the client, the virtual service,
//! the real server and the state, with the ActiveConn/InActConn counters the schedulers read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rvs_model::status::ConnectionStatus;
use rvs_model::Protocol;

use crate::runtime::{lock, ServerShared, VsRuntime};

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ConnState {
    /// Connecting to the real server (IPVS SYN_RECV): counted inactive.
    Connecting = 0,
    /// Both directions open: counted active.
    Established = 1,
    /// One side has closed (IPVS FIN_WAIT / CLOSE_WAIT): counted inactive.
    HalfClosed = 2,
    /// A UDP flow: IPVS counts UDP entries as inactive.
    Udp = 3,
}

impl ConnState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => ConnState::Connecting,
            1 => ConnState::Established,
            2 => ConnState::HalfClosed,
            _ => ConnState::Udp,
        }
    }

    fn is_active(self) -> bool {
        self == ConnState::Established
    }

    fn name(self) -> &'static str {
        match self {
            ConnState::Connecting => "SYN_RECV",
            ConnState::Established => "ESTABLISHED",
            ConnState::HalfClosed => "FIN_WAIT",
            ConnState::Udp => "UDP",
        }
    }
}

struct ConnInfo {
    protocol: Protocol,
    client: SocketAddr,
    vip: SocketAddr,
    server: SocketAddr,
    since: Instant,
    state: AtomicU8,
}

#[derive(Default)]
pub(crate) struct ConnTable {
    next_id: AtomicU64,
    shards: [Mutex<HashMap<u64, Arc<ConnInfo>>>; SHARDS],
}

impl ConnTable {
    pub fn snapshot(&self) -> Vec<ConnectionStatus> {
        let now = Instant::now();
        let mut out = Vec::new();
        for shard in &self.shards {
            for info in lock(shard).values() {
                out.push(ConnectionStatus {
                    protocol: info.protocol,
                    client: info.client.to_string(),
                    virtual_address: info.vip.to_string(),
                    real_server: info.server.to_string(),
                    state: ConnState::from_u8(info.state.load(Ordering::Relaxed))
                        .name()
                        .into(),
                    age_seconds: now.duration_since(info.since).as_secs(),
                });
            }
        }
        out.sort_by(|a, b| (&a.virtual_address, &a.client).cmp(&(&b.virtual_address, &b.client)));
        out
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// One entry of the table. Its counters follow its state, and dropping it removes the entry,
/// undoes its counters and releases its persistence template, however the connection ends.
pub(crate) struct ConnGuard {
    table: Arc<ConnTable>,
    id: u64,
    info: Arc<ConnInfo>,
    server: Arc<ServerShared>,
    vs: Arc<VsRuntime>,
    /// Whether the persistence template counts this connection.
    templated: bool,
}

impl ConnGuard {
    pub fn new(
        table: &Arc<ConnTable>,
        vs: &Arc<VsRuntime>,
        server: &Arc<ServerShared>,
        client: SocketAddr,
        state: ConnState,
    ) -> Self {
        let id = table.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ConnInfo {
            protocol: vs.key.0,
            client,
            vip: vs.key.1,
            server: server.addr,
            since: Instant::now(),
            state: AtomicU8::new(state as u8),
        });
        counter(server, state).fetch_add(1, Ordering::Relaxed);
        lock(&table.shards[id as usize % SHARDS]).insert(id, info.clone());
        ConnGuard {
            table: table.clone(),
            id,
            info,
            server: server.clone(),
            vs: vs.clone(),
            templated: false,
        }
    }

    pub fn server(&self) -> &Arc<ServerShared> {
        &self.server
    }

    /// Moves to `state`, moving the connection between ActiveConn and InActConn.
    pub fn set_state(&self, state: ConnState) {
        let old = ConnState::from_u8(self.info.state.swap(state as u8, Ordering::Relaxed));
        if old.is_active() != state.is_active() {
            counter(&self.server, old).fetch_sub(1, Ordering::Relaxed);
            counter(&self.server, state).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The connection is up: count it, and bind the client to the server under persistence.
    pub fn established(&mut self, state: ConnState) {
        self.set_state(state);
        self.server.connections.fetch_add(1, Ordering::Relaxed);
        if self.vs.persistence().is_some() {
            self.vs
                .bind_template(self.info.client.ip(), self.server.addr);
            self.templated = true;
        }
    }
}

fn counter(server: &ServerShared, state: ConnState) -> &std::sync::atomic::AtomicU32 {
    if state.is_active() {
        &server.active
    } else {
        &server.inactive
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let state = ConnState::from_u8(self.info.state.load(Ordering::Relaxed));
        counter(&self.server, state).fetch_sub(1, Ordering::Relaxed);
        lock(&self.table.shards[self.id as usize % SHARDS]).remove(&self.id);
        if self.templated {
            self.vs
                .release_template(self.info.client.ip(), self.server.addr);
        }
    }
}

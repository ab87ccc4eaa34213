//! The live table (`rvs ls`, `/api/v1/services`): what `ipvsadm -Ln --stats` shows.

use serde::{Deserialize, Serialize};

use crate::{EndpointState, FrontendKind, Protocol};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTable {
    /// Which engine serves the table (`userspace`, `nftables`).
    pub engine: String,
    /// Version of the configuration snapshot in force.
    pub config_version: u64,
    pub services: Vec<VirtualServiceStatus>,
    /// What real servers the engine no longer lists had counted: added to the live ones,
    /// the node-wide totals never go down (Prometheus would read a drop as a reset).
    #[serde(default)]
    pub retired: Totals,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub connections: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceStatus {
    pub protocol: Protocol,
    /// `VIP:port` as the engine listens on it.
    pub address: String,
    pub kind: FrontendKind,
    /// `namespace/name:port`.
    pub service: String,
    pub scheduler: String,
    pub scheduler_flags: Vec<String>,
    /// Persistence timeout in seconds.
    pub persistence_seconds: Option<u64>,
    pub real_servers: Vec<RealServerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RealServerStatus {
    pub address: String,
    pub weight: u32,
    pub active_conns: u64,
    pub inactive_conns: u64,
    /// Connections scheduled to it since it appeared.
    pub connections: u64,
    /// Bytes from clients to it.
    pub bytes_in: u64,
    /// Bytes from it to clients.
    pub bytes_out: u64,
    pub state: ServerDisplayState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerDisplayState {
    Ready,
    Terminating,
    /// Weight 0: takes no new connections.
    Quiesced,
    /// Gone from the configuration, kept while its connections last.
    Removed,
}

impl ServerDisplayState {
    pub fn of(state: EndpointState, weight: u32) -> Self {
        match (state, weight) {
            (EndpointState::Terminating, _) => ServerDisplayState::Terminating,
            (EndpointState::Ready, 0) => ServerDisplayState::Quiesced,
            (EndpointState::Ready, _) => ServerDisplayState::Ready,
        }
    }
}

/// One entry of the connection table (`ipvsadm -Lnc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    pub protocol: Protocol,
    pub client: String,
    pub virtual_address: String,
    pub real_server: String,
    /// `SYN_RECV` (connecting to the real server), `ESTABLISHED`, `FIN_WAIT` (one side
    /// closed) or `UDP`.
    pub state: String,
    pub age_seconds: u64,
}

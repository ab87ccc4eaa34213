use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rvs_sched::SchedulerConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpFamily {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

/// The Service a virtual service came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    /// The Service port's name ("" for a single unnamed port).
    pub port_name: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        Ok(())
    }
}

/// Where clients reach a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Frontend {
    /// A fixed address: ClusterIP, externalIP or LoadBalancer ingress IP.
    Address { addr: SocketAddr },
    /// A port on every node address of the family (the engine knows the addresses).
    NodePort { family: IpFamily, port: u16 },
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frontend::Address { addr } => write!(f, "{addr}"),
            Frontend::NodePort {
                family: IpFamily::V4,
                port,
            } => write!(f, "*:{port}"),
            Frontend::NodePort {
                family: IpFamily::V6,
                port,
            } => write!(f, "[*]:{port}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

/// `externalTrafficPolicy` for external frontends, `internalTrafficPolicy` for ClusterIPs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    /// Only endpoints on this node; none there means the traffic is dropped.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    Ready,
    /// Terminating but still serving; scheduled only while the Service has no ready endpoint.
    Terminating,
}

/// One endpoint behind a virtual service (IPVS: real server).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RealServer {
    pub addr: SocketAddr,
    /// The weight new connections are scheduled by: 0 means quiesced (no new connections,
    /// existing ones continue). Terminating endpoints outside the fallback get 0.
    pub weight: u32,
    /// The weight configured for it (`rvs.io/weights`, default 1), before quiescing.
    pub configured_weight: u32,
    pub state: EndpointState,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// The pod (EndpointSlice targetRef) if named.
    pub target: Option<String>,
    /// Runs on this node (`--node-name`): what a Local traffic policy keeps.
    pub is_local: bool,
}

/// A virtual service as IPVS models it: one protocol and address, a scheduler, persistence and
/// its real servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    pub protocol: Protocol,
    pub frontend: Frontend,
    pub kind: FrontendKind,
    pub service: ServiceRef,
    pub scheduler: SchedulerConfig,
    /// IPVS persistence (`-p`): Service `sessionAffinity: ClientIP` and its timeout.
    #[serde(with = "opt_secs")]
    pub persistence: Option<Duration>,
    /// Send PROXY protocol v2 to the real servers (`rvs.io/proxy-protocol: v2`).
    pub proxy_protocol: bool,
    /// Sorted by address; unique.
    pub real_servers: Vec<RealServer>,
    pub traffic_policy: TrafficPolicy,
    /// `loadBalancerSourceRanges`, on LoadBalancer frontends: only these clients get in.
    /// Empty: everyone.
    pub source_ranges: Vec<ipnet::IpNet>,
    /// `healthCheckNodePort` of a LoadBalancer Service with the Local external policy.
    pub health_check_node_port: Option<u16>,
}

impl VirtualService {
    /// Servers that may take new connections from `external` sources (or internal ones):
    /// with a Local policy only this node's, except that traffic from inside the cluster to an
    /// external frontend goes to any endpoint, as kube-proxy does.
    pub fn serving(&self, external: bool) -> impl Iterator<Item = &RealServer> {
        let local_only = self.traffic_policy == TrafficPolicy::Local
            && (external || self.kind == FrontendKind::ClusterIp);
        self.real_servers
            .iter()
            .filter(move |rs| rs.weight > 0 && (!local_only || rs.is_local))
    }

    /// True when the terminating fallback is in force (no ready endpoint, serving terminating
    /// ones take new connections).
    pub fn uses_terminating_fallback(&self) -> bool {
        self.real_servers
            .iter()
            .all(|rs| rs.state == EndpointState::Terminating)
            && self.real_servers.iter().any(|rs| rs.weight > 0)
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

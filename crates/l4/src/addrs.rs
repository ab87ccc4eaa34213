//! The node's own addresses, where NodePorts listen.

use std::net::IpAddr;

use ipnet::IpNet;

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Every local address (IPv6 link-local ones excluded: they need a scope to bind), or those
/// inside `filter` when it is not empty (kube-proxy's `--nodeport-addresses`).
pub(crate) fn node_addresses(filter: &[IpNet]) -> Vec<IpAddr> {
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the node's addresses; NodePorts get none");
            return Vec::new();
        }
    };
    let mut out: Vec<IpAddr> = interfaces
        .iter()
        .map(|i| i.ip())
        .filter(|ip| !is_link_local_v6(ip) && !ip.is_multicast())
        .filter(|ip| filter.is_empty() || filter.iter().any(|net| net.contains(ip)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The node's addresses as read once: answers whether binding an address works without
/// adding it anywhere.
pub(crate) struct LocalAddresses(Vec<IpAddr>);

impl LocalAddresses {
    pub fn read() -> Self {
        LocalAddresses(node_addresses(&[]))
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        // Linux routes all of 127.0.0.0/8 to lo.
        matches!(ip, IpAddr::V4(v4) if v4.is_loopback()) || self.0.binary_search(ip).is_ok()
    }
}

//! Splitting the table's `addr:port` strings into the labels IPVS exporters use.

use std::net::SocketAddr;

/// Splits `10.0.0.1:80`, `[fd00::1]:80`, `*:30080` or `[*]:30080` into the address without
/// brackets and the port. The NodePort wildcards become the unspecified address of their
/// family (`0.0.0.0`, `::`), as `ss` shows wildcard listeners. Never fails: a string that is
/// not `host:port` comes back whole as the host with an empty port.
pub(crate) fn split_host_port(s: &str) -> (String, String) {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return (sa.ip().to_string(), sa.port().to_string());
    }
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, port)) = rest.rsplit_once("]:") {
            let host = if host == "*" { "::" } else { host };
            return (host.to_string(), port.to_string());
        }
        if let Some(host) = rest.strip_suffix(']') {
            return (host.to_string(), String::new());
        }
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address has colons of its own and no port.
        Some((host, _)) if host.contains(':') => (s.to_string(), String::new()),
        Some(("*", port)) => ("0.0.0.0".to_string(), port.to_string()),
        Some((host, port)) => (host.to_string(), port.to_string()),
        None => (s.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    fn split(s: &str) -> (String, String) {
        split_host_port(s)
    }

    fn pair(h: &str, p: &str) -> (String, String) {
        (h.to_string(), p.to_string())
    }

    #[test]
    fn ipv4() {
        assert_eq!(split("10.96.0.1:80"), pair("10.96.0.1", "80"));
    }

    #[test]
    fn ipv6() {
        assert_eq!(split("[fd00::1]:443"), pair("fd00::1", "443"));
        assert_eq!(split("[::1]:80"), pair("::1", "80"));
        assert_eq!(split("[fe80::1%eth0]:80"), pair("fe80::1%eth0", "80"));
    }

    #[test]
    fn node_port_wildcards() {
        assert_eq!(split("*:30080"), pair("0.0.0.0", "30080"));
        assert_eq!(split("[*]:30080"), pair("::", "30080"));
    }

    #[test]
    fn odd_input_does_not_panic() {
        assert_eq!(split(""), pair("", ""));
        assert_eq!(split("fd00::1"), pair("fd00::1", ""));
        assert_eq!(split("[fd00::1]"), pair("fd00::1", ""));
        assert_eq!(split("["), pair("[", ""));
        assert_eq!(split("host"), pair("host", ""));
        assert_eq!(split("host:"), pair("host", ""));
    }
}

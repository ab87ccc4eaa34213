//! Choosing an endpoint: round robin (ingress-nginx's default `load-balance`), skipping
//! endpoints already tried for the request; cookie affinity pins a client to one endpoint.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::BackendState;

/// The next endpoint in round-robin order that is not in `tried`.
pub fn round_robin(
    endpoints: &[SocketAddr],
    state: &BackendState,
    tried: &[SocketAddr],
) -> Option<SocketAddr> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    let start = state.next.fetch_add(1, Ordering::Relaxed);
    (0..n)
        .map(|i| endpoints[(start + i) % n])
        .find(|ep| !tried.contains(ep))
}

/// The affinity cookie's value for an endpoint: a stable hash of its address, so every
/// gateway replica maps a cookie to the same endpoint without sharing state.
pub fn affinity_value(endpoint: SocketAddr) -> String {
    // FNV-1a over the textual address: stable across processes and versions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in endpoint.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The endpoint a cookie value pins, if it is still there.
pub fn affinity_endpoint(endpoints: &[SocketAddr], value: &str) -> Option<SocketAddr> {
    endpoints
        .iter()
        .copied()
        .find(|ep| affinity_value(*ep) == value)
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)))
            .collect()
    }

    #[test]
    fn round_robin_visits_all_evenly() {
        let endpoints = eps(3);
        let state = BackendState::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            let ep = round_robin(&endpoints, &state, &[]).unwrap();
            counts[endpoints.iter().position(|e| *e == ep).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn round_robin_skips_tried_and_runs_out() {
        let endpoints = eps(2);
        let state = BackendState::default();
        let first = round_robin(&endpoints, &state, &[]).unwrap();
        let second = round_robin(&endpoints, &state, &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(round_robin(&endpoints, &state, &[first, second]), None);
        assert_eq!(round_robin(&[], &state, &[]), None);
    }

    #[test]
    fn affinity_round_trips() {
        let endpoints = eps(5);
        for ep in &endpoints {
            assert_eq!(
                affinity_endpoint(&endpoints, &affinity_value(*ep)),
                Some(*ep)
            );
        }
        assert_eq!(affinity_endpoint(&endpoints, "nope"), None);
    }

    #[test]
    fn cookie_parsing() {
        let h = "a=1; INGRESSCOOKIE=abc; b=\"2\"";
        assert_eq!(cookie(h, "INGRESSCOOKIE"), Some("abc"));
        assert_eq!(cookie(h, "b"), Some("2"));
        assert_eq!(cookie(h, "c"), None);
    }
}

//! Choosing an endpoint: round robin (ingress-nginx's default `load-balance`), EWMA (the
//! better of two random endpoints by response time and load), or a consistent hash of a
//! request key (`upstream-hash-by`); always skipping endpoints already tried for the request.
//! Cookie affinity pins a client to one endpoint.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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

/// `upstream-hash-by`: the endpoint with the highest hash of (key, endpoint) that is not in
/// `tried` (rendezvous hashing: adding or removing an endpoint moves only its own keys; a
/// retry goes to the key's next choice).
pub fn rendezvous(endpoints: &[SocketAddr], key: &str, tried: &[SocketAddr]) -> Option<SocketAddr> {
    endpoints
        .iter()
        .copied()
        .filter(|ep| !tried.contains(ep))
        .max_by_key(|ep| fnv1a(&[key.as_bytes(), ep.to_string().as_bytes()]))
}

/// A response-time average that decays with time, as ingress-nginx's `ewma` balancer keeps.
#[derive(Debug, Clone, Copy)]
pub struct Ewma {
    /// Seconds.
    average: f64,
    updated: Instant,
    in_flight: u32,
}

/// How fast old response times are forgotten (ingress-nginx: 10 s).
const EWMA_DECAY: Duration = Duration::from_secs(10);

impl Ewma {
    fn score(&self) -> f64 {
        // An endpoint nothing is known about is tried (its average starts at 0).
        self.average * f64::from(self.in_flight + 1)
    }
}

/// `load-balance: ewma`: of two random endpoints not yet tried, the one with the lower
/// average response time x requests in flight; the pick counts as in flight until
/// [`ewma_done`].
pub fn ewma_pick(
    endpoints: &[SocketAddr],
    state: &BackendState,
    tried: &[SocketAddr],
) -> Option<SocketAddr> {
    let left: Vec<SocketAddr> = endpoints
        .iter()
        .copied()
        .filter(|ep| !tried.contains(ep))
        .collect();
    let pick = match left.len() {
        0 => return None,
        1 => left[0],
        n => {
            let a = rand::random_range(0..n);
            let b = (a + rand::random_range(1..n)) % n;
            let Ok(table) = state.ewma.lock() else {
                return Some(left[a]);
            };
            let score = |ep: &SocketAddr| table.get(ep).map_or(0.0, Ewma::score);
            if score(&left[b]) < score(&left[a]) {
                left[b]
            } else {
                left[a]
            }
        }
    };
    if let Ok(mut table) = state.ewma.lock() {
        table
            .entry(pick)
            .or_insert(Ewma {
                average: 0.0,
                updated: Instant::now(),
                in_flight: 0,
            })
            .in_flight += 1;
    }
    Some(pick)
}

/// The response (or failure) of an EWMA pick: folds `elapsed` into its average.
pub fn ewma_done(state: &BackendState, endpoint: SocketAddr, elapsed: Duration) {
    let Ok(mut table) = state.ewma.lock() else {
        return;
    };
    let Some(e) = table.get_mut(&endpoint) else {
        return;
    };
    let now = Instant::now();
    let weight =
        (-now.saturating_duration_since(e.updated).as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
    let sample = elapsed.as_secs_f64();
    e.average = if e.in_flight == 0 || e.average == 0.0 {
        sample
    } else {
        e.average * weight + sample * (1.0 - weight)
    };
    e.updated = now;
    e.in_flight = e.in_flight.saturating_sub(1);
}

/// Drops EWMA entries of endpoints no longer served.
pub fn ewma_retain(state: &BackendState, endpoints: &[SocketAddr]) {
    if let Ok(mut table) = state.ewma.lock() {
        table.retain(|ep, _| endpoints.contains(ep));
    }
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The affinity cookie's value for an endpoint: a stable hash of its address, so every
/// gateway replica maps a cookie to the same endpoint without sharing state.
pub fn affinity_value(endpoint: SocketAddr) -> String {
    // FNV-1a over the textual address: stable across processes and versions.
    format!("{:016x}", fnv1a(&[endpoint.to_string().as_bytes()]))
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
    fn rendezvous_is_stable_and_moves_only_a_removed_endpoints_keys() {
        let all = eps(5);
        let keys: Vec<String> = (0..500).map(|i| format!("/item/{i}")).collect();
        let before: Vec<SocketAddr> = keys
            .iter()
            .map(|k| rendezvous(&all, k, &[]).unwrap())
            .collect();
        // Spread over all endpoints.
        for ep in &all {
            let n = before.iter().filter(|e| *e == ep).count();
            assert!((50..=150).contains(&n), "{ep}: {n}");
        }
        let fewer: Vec<SocketAddr> = all[..4].to_vec();
        for (k, was) in keys.iter().zip(&before) {
            let now = rendezvous(&fewer, k, &[]).unwrap();
            if *was != all[4] {
                assert_eq!(now, *was, "{k} moved although its endpoint stayed");
            }
        }
        // A retry takes the key's next choice.
        let first = rendezvous(&all, "k", &[]).unwrap();
        let second = rendezvous(&all, "k", &[first]).unwrap();
        assert_ne!(first, second);
        assert_eq!(rendezvous(&all, "k", &all), None);
    }

    #[test]
    fn ewma_prefers_the_faster_endpoint() {
        let endpoints = eps(2);
        let state = BackendState::default();
        // Teach it: endpoint 0 answers in 100 ms, endpoint 1 in 1 ms.
        for (ep, ms) in [(endpoints[0], 100), (endpoints[1], 1)] {
            let picked = ewma_pick(&[ep], &state, &[]).unwrap();
            ewma_done(&state, picked, Duration::from_millis(ms));
        }
        let mut fast = 0;
        for _ in 0..100 {
            let ep = ewma_pick(&endpoints, &state, &[]).unwrap();
            if ep == endpoints[1] {
                fast += 1;
            }
            ewma_done(
                &state,
                ep,
                Duration::from_millis(if ep == endpoints[1] { 1 } else { 100 }),
            );
        }
        assert_eq!(fast, 100, "two endpoints: both are compared every time");
        assert_eq!(ewma_pick(&endpoints, &state, &endpoints), None);
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

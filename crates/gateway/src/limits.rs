//! Request limits as nginx's `limit_req` (token bucket with `burst` and `nodelay`) and
//! `limit_conn` apply them: per Ingress and client address, and rvs's per-Ingress limit over
//! all clients together.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rvs_model::ingress::{IngressRef, Limits};

/// A token bucket: `rate` tokens per `per`, holding at most its capacity (nginx admits a
/// request when the excess over the rate stays within `burst`, so `burst` + 1 at once).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one; refills `rate_per_sec` x elapsed first.
    pub fn take(&mut self, rate_per_sec: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate_per_sec).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limit-rps` / `limit-rpm` / `rvs.io/limit-rps`.
    Rate,
    /// `limit-connections`.
    Connections,
}

const SHARDS: usize = 16;
/// Clients tracked per shard and limit (nginx sizes its zones in memory; 16 x 65536 keys
/// here). A full shard refuses new clients until the sweep frees room, as a full
/// `limit_req_zone` does.
const MAX_CLIENTS_PER_SHARD: usize = 65_536;

type ClientKey = (IngressRef, IpAddr);

/// The requests `limit_req ... burst=B nodelay` lets through at once: the first finds no
/// excess, then B more fit within the burst.
fn nginx_capacity(burst: f64) -> f64 {
    burst + 1.0
}

#[derive(Default)]
struct Shard {
    rps: HashMap<ClientKey, Bucket>,
    rpm: HashMap<ClientKey, Bucket>,
    connections: HashMap<ClientKey, Arc<AtomicU32>>,
}

/// The state of every limit.
pub struct LimitState {
    shards: Vec<Mutex<Shard>>,
    ingress: Mutex<HashMap<IngressRef, Bucket>>,
}

impl Default for LimitState {
    fn default() -> Self {
        LimitState {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            ingress: Mutex::default(),
        }
    }
}

/// Holds one of a client's `limit-connections` slots until dropped.
pub struct ConnectionSlot(Arc<AtomicU32>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn shard_of(key: &ClientKey) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

impl LimitState {
    /// Admits a request of `client` to `ingress` under `limits`, or says which limit refused
    /// it. The slot, if any, must live as long as the request.
    pub fn admit(
        &self,
        ingress: &IngressRef,
        client: IpAddr,
        limits: &Limits,
        now: Instant,
    ) -> Result<Option<ConnectionSlot>, Refusal> {
        if limits.is_empty() || limits.exempt.iter().any(|net| net.contains(&client)) {
            return Ok(None);
        }
        if let Some(rps) = limits.ingress_rps {
            let burst = f64::from(limits.ingress_burst.unwrap_or(rps).max(1));
            let mut buckets = self.ingress.lock().map_err(|_| Refusal::Rate)?;
            let bucket = buckets
                .entry(ingress.clone())
                .or_insert_with(|| Bucket::full(burst, now));
            if !bucket.take(f64::from(rps), burst, now) {
                return Err(Refusal::Rate);
            }
        }
        if limits.rps.is_none() && limits.rpm.is_none() && limits.connections.is_none() {
            return Ok(None);
        }
        let key = (ingress.clone(), client);
        let multiplier = f64::from(limits.burst_multiplier.max(1));
        let mut shard = self.shards[shard_of(&key)]
            .lock()
            .map_err(|_| Refusal::Rate)?;
        let full = |len: usize| len >= MAX_CLIENTS_PER_SHARD;
        if full(shard.rps.len()) && !shard.rps.contains_key(&key)
            || full(shard.rpm.len()) && !shard.rpm.contains_key(&key)
            || full(shard.connections.len()) && !shard.connections.contains_key(&key)
        {
            return Err(Refusal::Rate);
        }
        if let Some(rps) = limits.rps {
            let burst = nginx_capacity(f64::from(rps) * multiplier);
            let bucket = shard
                .rps
                .entry(key.clone())
                .or_insert_with(|| Bucket::full(burst, now));
            if !bucket.take(f64::from(rps), burst, now) {
                return Err(Refusal::Rate);
            }
        }
        if let Some(rpm) = limits.rpm {
            let burst = nginx_capacity(f64::from(rpm) * multiplier);
            let bucket = shard
                .rpm
                .entry(key.clone())
                .or_insert_with(|| Bucket::full(burst, now));
            if !bucket.take(f64::from(rpm) / 60.0, burst, now) {
                return Err(Refusal::Rate);
            }
        }
        match limits.connections {
            None => Ok(None),
            Some(max) => {
                let counter = shard.connections.entry(key).or_default().clone();
                if counter.fetch_add(1, Ordering::AcqRel) >= max {
                    counter.fetch_sub(1, Ordering::AcqRel);
                    return Err(Refusal::Connections);
                }
                Ok(Some(ConnectionSlot(counter)))
            }
        }
    }

    /// Forgets buckets that have been full for `idle` (a full bucket is the same as none) and
    /// counters of clients with no request in flight.
    pub fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        let stale = |b: &Bucket| now.saturating_duration_since(b.last) < idle;
        for shard in &self.shards {
            if let Ok(mut shard) = shard.lock() {
                shard.rps.retain(|_, b| stale(b));
                shard.rpm.retain(|_, b| stale(b));
                shard
                    .connections
                    .retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Acquire) > 0);
            }
        }
        if let Ok(mut buckets) = self.ingress.lock() {
            buckets.retain(|_, b| stale(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress() -> IngressRef {
        IngressRef {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn rps_admits_the_burst_then_the_rate() {
        let state = LimitState::default();
        let limits = Limits {
            rps: Some(2),
            burst_multiplier: 5,
            ..Limits::default()
        };
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let admitted = (0..20)
            .filter(|_| state.admit(&ingress(), client, &limits, t0).is_ok())
            .count();
        assert_eq!(
            admitted, 11,
            "burst = rps x multiplier, and the first request"
        );
        // Half a second later one more token (2/s).
        let t1 = t0 + Duration::from_millis(500);
        assert!(state.admit(&ingress(), client, &limits, t1).is_ok());
        assert_eq!(
            state.admit(&ingress(), client, &limits, t1).err(),
            Some(Refusal::Rate)
        );
        // Another client has its own bucket.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(state.admit(&ingress(), other, &limits, t1).is_ok());
    }

    #[test]
    fn ingress_limit_counts_all_clients_together() {
        let state = LimitState::default();
        let limits = Limits {
            ingress_rps: Some(5),
            ingress_burst: Some(5),
            burst_multiplier: 5,
            ..Limits::default()
        };
        let t0 = Instant::now();
        let admitted = (0..50u8)
            .filter(|i| {
                let client = IpAddr::from([10, 0, 0, *i]);
                state.admit(&ingress(), client, &limits, t0).is_ok()
            })
            .count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn connection_slots_are_returned() {
        let state = LimitState::default();
        let limits = Limits {
            connections: Some(2),
            burst_multiplier: 5,
            ..Limits::default()
        };
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        let a = state.admit(&ingress(), client, &limits, now).unwrap();
        let _b = state.admit(&ingress(), client, &limits, now).unwrap();
        assert_eq!(
            state.admit(&ingress(), client, &limits, now).err(),
            Some(Refusal::Connections)
        );
        drop(a);
        assert!(state.admit(&ingress(), client, &limits, now).is_ok());
    }

    #[test]
    fn exempt_clients_pass() {
        let state = LimitState::default();
        let limits = Limits {
            rps: Some(1),
            burst_multiplier: 1,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            ..Limits::default()
        };
        let now = Instant::now();
        let client: IpAddr = "10.1.2.3".parse().unwrap();
        assert!((0..10).all(|_| state.admit(&ingress(), client, &limits, now).is_ok()));
    }
}

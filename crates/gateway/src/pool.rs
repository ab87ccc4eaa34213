//! Upstream connections: per endpoint, a LIFO pool of idle HTTP/1.1 connections, or one
//! shared HTTP/2 connection (h2c or h2 over TLS), as nginx's `upstream keepalive` keeps them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rvs_model::ingress::BackendProtocol;
use tokio::net::TcpStream;

use crate::body::UpstreamBody;
use crate::io::TimedIo;
use crate::tls::BackendTls;

/// Limits of kept-alive upstream connections (the `upstream-keepalive-*` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub idle_per_endpoint: usize,
    pub idle_timeout: Duration,
    pub max_requests: u32,
    pub max_lifetime: Duration,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// Counters and gauges the metrics read.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub idle: AtomicUsize,
    pub active: AtomicUsize,
    /// Requests sent on a connection that had served one before.
    pub reused: AtomicU64,
    /// Connections opened.
    pub opened: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct PoolKey {
    addr: SocketAddr,
    protocol: BackendProtocol,
    /// A connection's write timeout is fixed when it opens: routes to the same endpoint with
    /// different `proxy-send-timeout`s keep separate pools.
    send_timeout: Duration,
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    created: Instant,
    idle_since: Instant,
    requests: u32,
}

struct SharedH2 {
    sender: http2::SendRequest<UpstreamBody>,
    created: Instant,
    requests: u32,
}

#[derive(Default)]
struct EndpointPool {
    idle: Mutex<Vec<Idle>>,
    h2: Mutex<Option<SharedH2>>,
}

/// All upstream pools of the gateway.
pub struct Pools {
    pools: RwLock<HashMap<PoolKey, Arc<EndpointPool>>>,
    limits: RwLock<PoolLimits>,
    tls: BackendTls,
    pub stats: Arc<PoolStats>,
}

/// A connection checked out for one request.
pub enum Checkout {
    Http1(PooledHttp1),
    Http2(http2::SendRequest<UpstreamBody>),
}

/// An HTTP/1.1 connection serving one request; [`PooledHttp1::release`] puts it back.
pub struct PooledHttp1 {
    sender: http1::SendRequest<UpstreamBody>,
    created: Instant,
    requests: u32,
    pool: Arc<EndpointPool>,
    limits: PoolLimits,
    /// Counted in `active` until released or dropped.
    _active: Active,
}

/// One count in `PoolStats::active` while it lives.
struct Active(Arc<PoolStats>);

impl Active {
    fn new(stats: &Arc<PoolStats>) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        Active(stats.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PooledHttp1 {
    /// Returns the connection to its pool once its response was read whole; a connection
    /// past its request or age limit, or not reusable, is closed instead.
    pub fn release(self) {
        let PooledHttp1 {
            sender,
            created,
            requests,
            pool,
            limits,
            _active: active,
        } = self;
        let stats = active.0.clone();
        drop(active);
        let now = Instant::now();
        if !sender.is_ready()
            || requests >= limits.max_requests
            || now.duration_since(created) >= limits.max_lifetime
            || limits.idle_per_endpoint == 0
        {
            return;
        }
        let Ok(mut idle) = pool.idle.lock() else {
            return;
        };
        if idle.len() >= limits.idle_per_endpoint {
            // The oldest idle one goes, as nginx's LRU cache of kept-alive connections.
            idle.remove(0);
            stats.idle.fetch_sub(1, Ordering::Relaxed);
        }
        idle.push(Idle {
            sender,
            created,
            idle_since: now,
            requests,
        });
        stats.idle.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends a request on the connection; one it did not take comes back in the error.
    pub async fn try_send_request(
        &mut self,
        request: hyper::Request<UpstreamBody>,
    ) -> Result<
        hyper::Response<hyper::body::Incoming>,
        hyper::client::conn::TrySendError<hyper::Request<UpstreamBody>>,
    > {
        self.sender.try_send_request(request).await
    }
}

impl Pools {
    pub fn new(limits: PoolLimits, tls: BackendTls, stats: Arc<PoolStats>) -> Self {
        Pools {
            pools: RwLock::new(HashMap::new()),
            limits: RwLock::new(limits),
            tls,
            stats,
        }
    }

    pub fn set_limits(&self, limits: PoolLimits) {
        if let Ok(mut l) = self.limits.write() {
            *l = limits;
        }
    }

    fn limits(&self) -> PoolLimits {
        match self.limits.read() {
            Ok(l) => *l,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn endpoint(&self, key: PoolKey) -> Arc<EndpointPool> {
        if let Ok(pools) = self.pools.read() {
            if let Some(pool) = pools.get(&key) {
                return pool.clone();
            }
        }
        match self.pools.write() {
            Ok(mut pools) => pools.entry(key).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// A connection to `addr` speaking `protocol`: a kept-alive one if there is one (and
    /// not `fresh`), else a new one (within `connect_timeout`). `send_timeout` bounds a
    /// stalled write. Also says whether the connection was reused.
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        protocol: BackendProtocol,
        connect_timeout: Duration,
        send_timeout: Duration,
        fresh: bool,
    ) -> Result<(Checkout, bool), ConnectError> {
        let key = PoolKey {
            addr,
            protocol,
            send_timeout,
        };
        let pool = self.endpoint(key);
        let limits = self.limits();
        if protocol.is_http2() {
            if fresh {
                if let Ok(mut shared) = pool.h2.lock() {
                    *shared = None;
                }
            }
            return self
                .checkout_h2(&pool, key, limits, connect_timeout, send_timeout)
                .await
                .map(|(s, reused)| (Checkout::Http2(s), reused));
        }
        let now = Instant::now();
        let reused = {
            let mut found = None;
            let idle = if fresh { None } else { pool.idle.lock().ok() };
            if let Some(mut idle) = idle {
                while let Some(conn) = idle.pop() {
                    self.stats.idle.fetch_sub(1, Ordering::Relaxed);
                    let fresh = now.duration_since(conn.idle_since) < limits.idle_timeout
                        && now.duration_since(conn.created) < limits.max_lifetime;
                    if fresh && conn.sender.is_ready() {
                        found = Some(conn);
                        break;
                    }
                }
            }
            found
        };
        let (sender, created, requests, was_reused) = match reused {
            Some(conn) => (conn.sender, conn.created, conn.requests, true),
            None => {
                let io = self.connect(key, connect_timeout, send_timeout).await?;
                let (sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|source| ConnectError::Handshake { addr, source })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(%addr, "upstream connection ended: {e}");
                    }
                });
                (sender, Instant::now(), 0, false)
            }
        };
        if was_reused {
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
        }
        Ok((
            Checkout::Http1(PooledHttp1 {
                sender,
                created,
                requests: requests + 1,
                pool,
                limits,
                _active: Active::new(&self.stats),
            }),
            was_reused,
        ))
    }

    async fn checkout_h2(
        &self,
        pool: &EndpointPool,
        key: PoolKey,
        limits: PoolLimits,
        connect_timeout: Duration,
        send_timeout: Duration,
    ) -> Result<(http2::SendRequest<UpstreamBody>, bool), ConnectError> {
        if let Ok(mut shared) = pool.h2.lock() {
            if let Some(conn) = shared.as_mut() {
                let usable = !conn.sender.is_closed()
                    && conn.requests < limits.max_requests
                    && conn.created.elapsed() < limits.max_lifetime;
                if usable {
                    conn.requests += 1;
                    self.stats.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok((conn.sender.clone(), true));
                }
                *shared = None;
            }
        }
        let io = self.connect(key, connect_timeout, send_timeout).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: key.addr,
                source,
            })?;
        let addr = key.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, "upstream h2 connection ended: {e}");
            }
        });
        if let Ok(mut shared) = pool.h2.lock() {
            *shared = Some(SharedH2 {
                sender: sender.clone(),
                created: Instant::now(),
                requests: 1,
            });
        }
        Ok((sender, false))
    }

    async fn connect(
        &self,
        key: PoolKey,
        connect_timeout: Duration,
        send_timeout: Duration,
    ) -> Result<TokioIo<TimedIo>, ConnectError> {
        let addr = key.addr;
        let connected = tokio::time::timeout(connect_timeout, async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| ConnectError::Io { addr, source })?;
            // Requests are small writes whose latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            if key.protocol.is_tls() {
                let tls = self
                    .tls
                    .connect(addr, key.protocol, stream)
                    .await
                    .map_err(|source| ConnectError::Io { addr, source })?;
                Ok(TimedIo::tls(tls, send_timeout))
            } else {
                Ok(TimedIo::plain(stream, send_timeout))
            }
        })
        .await
        .map_err(|_| ConnectError::Timeout(addr))??;
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        Ok(TokioIo::new(connected))
    }

    /// Closes idle connections past their idle timeout or lifetime, and forgets pools of
    /// endpoints no longer in `live`.
    pub fn sweep(&self, live: &dyn Fn(SocketAddr) -> bool) {
        let limits = self.limits();
        let now = Instant::now();
        let Ok(mut pools) = self.pools.write() else {
            return;
        };
        pools.retain(|key, pool| {
            if let Ok(mut idle) = pool.idle.lock() {
                let before = idle.len();
                idle.retain(|c| {
                    now.duration_since(c.idle_since) < limits.idle_timeout
                        && now.duration_since(c.created) < limits.max_lifetime
                        && !c.sender.is_closed()
                });
                if !live(key.addr) {
                    idle.clear();
                }
                self.stats
                    .idle
                    .fetch_sub(before - idle.len(), Ordering::Relaxed);
            }
            if !live(key.addr) {
                if let Ok(mut h2) = pool.h2.lock() {
                    *h2 = None;
                }
                return Arc::strong_count(pool) > 1;
            }
            true
        });
    }
}

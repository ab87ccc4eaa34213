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
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

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
    /// Idle connections parked (counted in `idle` too).
    pub parked: AtomicUsize,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct PoolKey {
    addr: SocketAddr,
    protocol: BackendProtocol,
    /// A connection's write timeout is fixed when it opens: routes to the same endpoint with
    /// different `proxy-send-timeout`s keep separate pools.
    send_timeout: Duration,
}

/// How long a kept-alive HTTP/1.1 connection stays idle with hyper's connection (its state
/// and 16 KiB of buffers) before it is parked (by the next sweep, once a second). nginx keeps
/// no buffers for idle upstream connections; a burst's 320 kept-alive connections per
/// endpoint would otherwise hold 6 MiB. Shorter than the client side's second: the pool
/// hands out its most recently used connection first, so what parks is a burst's surplus or
/// an endpoint with under four requests a second, and parking them sooner took the RSS of
/// 10,000 just-idle clients 2 s on from 33-36 to 25-27 MiB.
const PARK_AFTER: Duration = Duration::from_millis(250);

/// How long closing a kept-alive connection may take (a TLS close_notify to a backend that
/// stopped reading must not hold the task).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The socket of an HTTP/1.1 connection, handed back by its connection task once hyper's
/// connection ended cleanly (its sender dropped while idle).
type SocketBack = oneshot::Receiver<TokioIo<TimedIo>>;

struct Idle {
    conn: IdleConn,
    created: Instant,
    idle_since: Instant,
    requests: u32,
}

enum IdleConn {
    /// hyper's connection runs; `socket` (None for connections made for an upgrade) brings
    /// the socket back when it is parked.
    Live {
        sender: http1::SendRequest<UpstreamBody>,
        socket: Option<SocketBack>,
    },
    /// hyper's connection was told to end; its task hands the socket back.
    Parking(SocketBack),
    /// Only the socket: a new hyper connection is made on it when it is taken.
    Parked(TokioIo<TimedIo>),
}

impl IdleConn {
    /// Still worth keeping: hyper's connection open, or the socket on its way back, or back
    /// and quiet (a backend that closed it shows as readable).
    fn usable(&mut self) -> bool {
        match self {
            IdleConn::Live { sender, .. } => !sender.is_closed(),
            IdleConn::Parking(back) => match back.try_recv() {
                Ok(io) if io.inner().is_quiet() => {
                    *self = IdleConn::Parked(io);
                    true
                }
                Ok(_) | Err(oneshot::error::TryRecvError::Closed) => false,
                Err(oneshot::error::TryRecvError::Empty) => true,
            },
            IdleConn::Parked(io) => io.inner().is_quiet(),
        }
    }
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

impl PoolStats {
    /// An idle connection left the pool (taken, or closed).
    fn forget(&self, conn: &Idle) {
        self.idle.fetch_sub(1, Ordering::Relaxed);
        if !matches!(conn.conn, IdleConn::Live { .. }) {
            self.parked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Idle {
    /// Ends hyper's connection (dropping its sender ends its task, which hands the socket
    /// back); the socket waits in the pool.
    fn park(&mut self, stats: &PoolStats) {
        let IdleConn::Live { socket, .. } = &mut self.conn else {
            return;
        };
        if let Some(socket) = socket.take() {
            self.conn = IdleConn::Parking(socket);
            stats.parked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts hyper's HTTP/1.1 client on a connection. A connection that may be parked
/// (`parkable`) has its task give the socket back when hyper's connection ends cleanly;
/// other ones (made for an upgrade) can hand themselves over to a tunnel instead.
async fn start_http1(
    io: TokioIo<TimedIo>,
    addr: SocketAddr,
    parkable: bool,
) -> Result<(http1::SendRequest<UpstreamBody>, Option<SocketBack>), hyper::Error> {
    let (sender, conn) = http1::Builder::new().handshake(io).await?;
    if !parkable {
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, "upstream connection ended: {e}");
            }
        });
        return Ok((sender, None));
    }
    let (back, socket) = oneshot::channel();
    tokio::spawn(async move {
        let io = match conn.without_shutdown().await {
            // Nothing unread, and the backend quiet: the socket may carry another request.
            // (A receiver gone means the connection was not kept.)
            Ok(parts) if parts.read_buf.is_empty() && parts.io.inner().is_quiet() => {
                match back.send(parts.io) {
                    Ok(()) => return,
                    Err(io) => io,
                }
            }
            Ok(parts) => parts.io,
            Err(e) => {
                tracing::debug!(%addr, "upstream connection ended: {e}");
                return;
            }
        };
        // Closed as hyper would have: a TLS backend gets its close_notify.
        let mut io = io.into_inner();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
    });
    Ok((sender, Some(socket)))
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
    socket: Option<SocketBack>,
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
            socket,
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
            let oldest = idle.remove(0);
            stats.forget(&oldest);
        }
        idle.push(Idle {
            conn: IdleConn::Live { sender, socket },
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
    /// stalled write. A request asking for an `upgrade` (WebSocket...) gets a connection
    /// that can become a tunnel. Also says whether the connection was reused.
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        protocol: BackendProtocol,
        connect_timeout: Duration,
        send_timeout: Duration,
        fresh: bool,
        upgrade: bool,
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
        // A kept-alive connection cannot become a tunnel (its task hands the socket back to
        // the pool instead): an upgrade gets a new one.
        let mut reuse = !fresh && !upgrade;
        let (sender, socket, created, requests, was_reused) = loop {
            let taken = if reuse {
                self.take_idle(&pool, limits)
            } else {
                None
            };
            let Some(taken) = taken else {
                let io = self.connect(key, connect_timeout, send_timeout).await?;
                let (sender, socket) = start_http1(io, addr, !upgrade)
                    .await
                    .map_err(|source| ConnectError::Handshake { addr, source })?;
                break (sender, socket, Instant::now(), 0, false);
            };
            match taken.conn {
                IdleConn::Live { sender, socket } => {
                    break (sender, socket, taken.created, taken.requests, true)
                }
                parked => {
                    // The socket, once its last hyper connection ended (promptly: it was
                    // idle), if the backend has not closed it meanwhile.
                    let io = match parked {
                        IdleConn::Parking(back) => tokio::time::timeout(connect_timeout, back)
                            .await
                            .ok()
                            .and_then(Result::ok),
                        IdleConn::Parked(io) => Some(io),
                        IdleConn::Live { .. } => None,
                    };
                    let Some(io) = io.filter(|io| io.inner().is_quiet()) else {
                        continue;
                    };
                    match start_http1(io, addr, true).await {
                        Ok((sender, socket)) => {
                            break (sender, socket, taken.created, taken.requests, true)
                        }
                        Err(e) => tracing::debug!(%addr, "parked upstream connection: {e}"),
                    }
                }
            }
            // Taking the next idle one could run into the same trouble: a new one.
            reuse = false;
        };
        if was_reused {
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
        }
        Ok((
            Checkout::Http1(PooledHttp1 {
                sender,
                socket,
                created,
                requests: requests + 1,
                pool,
                limits,
                _active: Active::new(&self.stats),
            }),
            was_reused,
        ))
    }

    /// The most recently idle HTTP/1.1 connection still within its limits, if any.
    fn take_idle(&self, pool: &EndpointPool, limits: PoolLimits) -> Option<Idle> {
        let now = Instant::now();
        let mut idle = pool.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            self.stats.forget(&conn);
            let in_limits = now.duration_since(conn.idle_since) < limits.idle_timeout
                && now.duration_since(conn.created) < limits.max_lifetime;
            let usable = match &conn.conn {
                IdleConn::Live { sender, .. } => sender.is_ready(),
                IdleConn::Parking(_) | IdleConn::Parked(_) => true,
            };
            if in_limits && usable {
                return Some(conn);
            }
        }
        None
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

    /// Closes idle connections past their idle timeout or lifetime, parks those idle for
    /// [`PARK_AFTER`], and forgets pools of endpoints no longer in `live`. Requests wait for
    /// it only where it removes pools.
    pub fn sweep(&self, live: &dyn Fn(SocketAddr) -> bool) {
        let limits = self.limits();
        let now = Instant::now();
        let stats = &self.stats;
        let mut gone = Vec::new();
        if let Ok(pools) = self.pools.read() {
            for (key, pool) in pools.iter() {
                let alive = live(key.addr);
                if let Ok(mut idle) = pool.idle.lock() {
                    idle.retain_mut(|c| {
                        let keep = alive
                            && now.duration_since(c.idle_since) < limits.idle_timeout
                            && now.duration_since(c.created) < limits.max_lifetime
                            && c.conn.usable();
                        if !keep {
                            stats.forget(c);
                        } else if now.duration_since(c.idle_since) >= PARK_AFTER {
                            c.park(stats);
                        }
                        keep
                    });
                }
                if !alive {
                    if let Ok(mut h2) = pool.h2.lock() {
                        *h2 = None;
                    }
                    gone.push(*key);
                }
            }
        }
        if gone.is_empty() {
            return;
        }
        if let Ok(mut pools) = self.pools.write() {
            for key in gone {
                // Still held by a request in flight: forgotten by a later sweep.
                if pools
                    .get(&key)
                    .is_some_and(|pool| Arc::strong_count(pool) == 1)
                {
                    if let Some(pool) = pools.remove(&key) {
                        // Released into it since the pass above.
                        if let Ok(idle) = pool.idle.lock() {
                            idle.iter().for_each(|c| stats.forget(c));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend answering `ok` to each read, that closes each connection after `linger`.
    /// Counts connections.
    async fn backend(linger: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(tokio::time::timeout(linger, async move {
                    let mut buf = [0u8; 4096];
                    while tcp.read(&mut buf).await.unwrap_or(0) > 0 {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if tcp.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }));
            }
        });
        (addr, accepted)
    }

    fn pools() -> Pools {
        let limits = PoolLimits {
            idle_per_endpoint: 32,
            idle_timeout: Duration::from_secs(60),
            max_requests: 1000,
            max_lifetime: Duration::from_secs(3600),
        };
        Pools::new(limits, BackendTls::new().unwrap(), Arc::default())
    }

    /// One request, its response read whole, the connection released; whether it was reused.
    async fn request(pools: &Pools, addr: SocketAddr) -> bool {
        let timeout = Duration::from_secs(2);
        let (checkout, reused) = pools
            .checkout(addr, BackendProtocol::Http, timeout, timeout, false, false)
            .await
            .unwrap();
        let Checkout::Http1(mut conn) = checkout else {
            panic!("an HTTP/1.1 connection");
        };
        let mut req = hyper::Request::new(UpstreamBody::Empty);
        *req.uri_mut() = "/".parse().unwrap();
        req.headers_mut().insert("host", "b".parse().unwrap());
        let response = conn.try_send_request(req).await.ok().unwrap();
        response.into_body().collect().await.unwrap();
        // hyper marks the connection ready again once its task saw the response end.
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.release();
        reused
    }

    fn gauges(pools: &Pools) -> (usize, usize) {
        let stats = &pools.stats;
        (
            stats.idle.load(Ordering::Relaxed),
            stats.parked.load(Ordering::Relaxed),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_taken_just_after_it_was_parked_is_reused() {
        let (addr, accepted) = backend(Duration::from_secs(30)).await;
        let pools = pools();
        assert!(!request(&pools, addr).await);
        tokio::time::sleep(PARK_AFTER + Duration::from_millis(100)).await;
        pools.sweep(&|_| true);
        assert_eq!(gauges(&pools), (1, 1));
        // No yield between the two: the connection's task has not handed the socket back.
        assert!(request(&pools, addr).await, "the parked socket carried it");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(gauges(&pools), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweep_closes_parked_sockets_the_backend_closed() {
        let (addr, accepted) = backend(PARK_AFTER + Duration::from_millis(1000)).await;
        let pools = pools();
        request(&pools, addr).await;
        tokio::time::sleep(PARK_AFTER + Duration::from_millis(100)).await;
        pools.sweep(&|_| true);
        assert_eq!(gauges(&pools), (1, 1));
        // The socket back in the pool, still open.
        tokio::time::sleep(Duration::from_millis(100)).await;
        pools.sweep(&|_| true);
        assert_eq!(gauges(&pools), (1, 1));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        pools.sweep(&|_| true);
        assert_eq!(gauges(&pools), (0, 0), "closed by the backend: dropped");
        assert!(!request(&pools, addr).await, "a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pools_of_gone_endpoints_leave_the_gauges_at_zero() {
        let (addr, _) = backend(Duration::from_secs(30)).await;
        let pools = pools();
        request(&pools, addr).await;
        tokio::time::sleep(PARK_AFTER + Duration::from_millis(100)).await;
        pools.sweep(&|_| true);
        assert_eq!(gauges(&pools), (1, 1));
        pools.sweep(&|_| false);
        assert_eq!(gauges(&pools), (0, 0));
    }
}

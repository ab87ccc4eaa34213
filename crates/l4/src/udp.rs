//! UDP virtual services: flows tracked per client address, each with its own connected socket
//! to the chosen real server, expired after an idle timeout (IPVS's UDP timeout, 300 s).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rvs_model::Protocol;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::conn::{ConnGuard, ConnState};
use crate::engine::Inner;
use crate::proxy_protocol::encode_v2;
use crate::runtime::{lock, ListenKey, ServerShared};

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Flows one listener tracks at most: each holds a socket, so spoofed sources must not be
/// able to exhaust the process's descriptors.
const MAX_FLOWS: usize = 65_536;

pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

#[derive(Clone)]
struct FlowHandle {
    upstream: Arc<UdpSocket>,
    server: Arc<ServerShared>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last_seen: Arc<AtomicU64>,
    done: CancellationToken,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, FlowHandle>>>;

pub(crate) async fn serve(
    socket: UdpSocket,
    key: ListenKey,
    inner: Arc<Inner>,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let flows: Flows = Arc::new(Mutex::new(HashMap::new()));
    let epoch = Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Warn once each time the table fills up, not for every datagram.
    let mut full = false;
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let (len, client) = match received {
            Ok(r) => r,
            Err(e) => {
                // An ICMP error for an earlier reply; the socket itself is fine.
                tracing::trace!(listen = %key.1, error = %e, "udp receive error");
                continue;
            }
        };
        if full && lock(&flows).len() < MAX_FLOWS {
            full = false;
        }
        let existing = {
            let flows = lock(&flows);
            flows
                .get(&client)
                .filter(|f| !f.done.is_cancelled())
                .cloned()
        };
        let flow = match existing {
            Some(flow) => flow,
            None if lock(&flows).len() >= MAX_FLOWS => {
                if !full {
                    tracing::warn!(listen = %key.1, max = MAX_FLOWS, "UDP flow table full: new clients dropped until flows expire");
                    full = true;
                }
                continue;
            }
            None => match open_flow(&inner, key, &socket, client, &flows, epoch).await {
                Some(flow) => flow,
                None => continue,
            },
        };
        flow.last_seen
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Ok(sent) = flow.upstream.send(&buf[..len]).await {
            flow.server
                .bytes_in
                .fetch_add(sent as u64, Ordering::Relaxed);
        }
    }
    for (_, flow) in lock(&flows).drain() {
        flow.done.cancel();
    }
}

async fn open_flow(
    inner: &Arc<Inner>,
    key: ListenKey,
    socket: &Arc<UdpSocket>,
    client: SocketAddr,
    flows: &Flows,
    epoch: Instant,
) -> Option<FlowHandle> {
    let vs = inner.services.load().get(&key).cloned()?;
    let index = vs.pick(client, &[])?;
    let server = vs.servers[index].shared.clone();
    let local: SocketAddr = if server.addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a UDP socket for a new flow");
            return None;
        }
    };
    if let Err(e) = upstream.connect(server.addr).await {
        tracing::debug!(server = %server.addr, error = %e, "cannot reach UDP real server");
        return None;
    }
    let mut guard = ConnGuard::new(&inner.conns, &vs, &server, client, ConnState::Udp);
    guard.established(ConnState::Udp);
    if vs.config.proxy_protocol {
        // A UDP flow announces its client once, in its own datagram before the first one.
        let _ = upstream
            .send(&encode_v2(Protocol::Udp, client, key.1))
            .await;
    }
    let upstream = Arc::new(upstream);
    let last_seen = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
    let done = CancellationToken::new();
    let handle = FlowHandle {
        upstream: upstream.clone(),
        server: server.clone(),
        last_seen: last_seen.clone(),
        done: done.clone(),
    };
    lock(flows).insert(client, handle.clone());
    tokio::spawn(replies(
        upstream.clone(),
        socket.clone(),
        client,
        guard,
        FlowTimers {
            last_seen: last_seen.clone(),
            epoch,
            idle: inner.config.udp_timeout,
        },
        done,
        flows.clone(),
        inner.shutdown.clone(),
    ));
    Some(handle)
}

struct FlowTimers {
    last_seen: Arc<AtomicU64>,
    epoch: Instant,
    idle: Duration,
}

impl FlowTimers {
    /// When the flow expires if nothing more happens.
    fn deadline(&self) -> tokio::time::Instant {
        let last = self.epoch + Duration::from_millis(self.last_seen.load(Ordering::Relaxed));
        tokio::time::Instant::from_std(last + self.idle)
    }
}

/// Relays the real server's datagrams back to the client from the VIP's socket, until the
/// flow idles out, its server is expired, or the engine stops.
#[allow(clippy::too_many_arguments)]
async fn replies(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    guard: ConnGuard,
    timers: FlowTimers,
    done: CancellationToken,
    flows: Flows,
    shutdown: CancellationToken,
) {
    let server = guard.server().clone();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let deadline = timers.deadline();
        tokio::select! {
            r = upstream.recv(&mut buf) => match r {
                Ok(len) => {
                    timers.last_seen.store(timers.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    if listener.send_to(&buf[..len], client).await.is_ok() {
                        server.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
                    }
                }
                // ICMP port unreachable: the server is gone; the next datagram reschedules.
                Err(_) => break,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if timers.deadline() <= tokio::time::Instant::now() {
                    break;
                }
            }
            _ = server.expire.cancelled() => break,
            _ = done.cancelled() => break,
            _ = shutdown.cancelled() => break,
        }
    }
    done.cancel();
    let mut flows = lock(&flows);
    if flows
        .get(&client)
        .is_some_and(|f| Arc::ptr_eq(&f.upstream, &upstream))
    {
        flows.remove(&client);
    }
    drop(guard);
}

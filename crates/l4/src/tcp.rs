//! TCP virtual services: accept, schedule, connect (with retries), forward.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rvs_model::Protocol;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::conn::{ConnGuard, ConnState};
use crate::engine::Inner;
use crate::proxy_protocol::encode_v2;
use crate::runtime::ListenKey;

const BACKLOG: u32 = 4096;
const KEEPALIVE_IDLE: Duration = Duration::from_secs(300);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_PROBES: u32 = 4;

pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        // An IPv6 VIP serves IPv6 only; IPv4 has its own virtual service.
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    // Accepted sockets inherit these on Linux: set once per listener, not per connection.
    socket.set_nodelay(true)?;
    // A client that vanished without a reset (power loss, a dropped NAT entry) is found by
    // keepalive, so its connection and the one to the real server are freed; IPVS expires
    // idle entries (15 min) for the same reason. Live idle connections are not cut.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    key: ListenKey,
    inner: Arc<Inner>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                tokio::spawn(handle(inner.clone(), key, stream, client));
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(listen = %key.1, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

async fn handle(inner: Arc<Inner>, key: ListenKey, client: TcpStream, client_addr: SocketAddr) {
    let Some(vs) = inner.services.load().get(&key).cloned() else {
        return;
    };
    // Linux hands accepted sockets the listener's TCP_NODELAY; elsewhere set it here.
    if !cfg!(target_os = "linux") {
        let _ = client.set_nodelay(true);
    }
    let mut failed = Vec::new();
    for _ in 0..inner.config.connect_tries.max(1) {
        let Some(index) = vs.pick(client_addr, &failed) else {
            break;
        };
        let server = vs.servers[index].shared.clone();
        let mut guard = ConnGuard::new(
            &inner.conns,
            &vs,
            &server,
            client_addr,
            ConnState::Connecting,
        );
        match connect(server.addr, inner.config.connect_timeout).await {
            Ok(upstream) => {
                guard.established(ConnState::Established);
                let _ = upstream.set_nodelay(true);
                proxy(
                    &inner,
                    vs.config.proxy_protocol,
                    key,
                    client,
                    client_addr,
                    upstream,
                    guard,
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::debug!(vip = %key.1, server = %server.addr, error = %e, "connect to real server failed");
                inner
                    .stats
                    .connect_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                failed.push(index);
            }
        }
    }
    // Nothing reachable: reset, so the client fails fast as with a closed port.
    tracing::debug!(vip = %key.1, client = %client_addr, "no real server reachable");
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
}

async fn proxy(
    inner: &Inner,
    proxy_protocol: bool,
    key: ListenKey,
    client: TcpStream,
    client_addr: SocketAddr,
    mut upstream: TcpStream,
    guard: ConnGuard,
) {
    let server = guard.server().clone();
    if proxy_protocol {
        let header = encode_v2(Protocol::Tcp, client_addr, key.1);
        if upstream.write_all(&header).await.is_err() {
            return;
        }
    }
    let expire = server.expire.clone();
    let forwarding = crate::splice::forward(
        &client,
        &upstream,
        &server.bytes_in,
        &server.bytes_out,
        || guard.set_state(ConnState::HalfClosed),
    );
    tokio::select! {
        result = forwarding => {
            if let Err(e) = result {
                tracing::trace!(client = %client_addr, server = %server.addr, error = %e, "connection ended with an error");
            }
        }
        _ = expire.cancelled() => {
            tracing::debug!(client = %client_addr, server = %server.addr, "closing connection of removed real server");
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        }
        _ = inner.shutdown.cancelled() => {}
    }
    drop(guard);
}

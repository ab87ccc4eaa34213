//! Real backends and clients on loopback for the engine tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rvs_model::status::{RealServerStatus, ServiceTable};
use rvs_model::{
    EndpointState, Frontend, FrontendKind, Protocol, RealServer, SchedulerConfig, SchedulerKind,
    ServiceRef, Snapshot, VirtualService,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

/// A TCP backend: greets each connection with "NAME\n", then echoes (after an optional delay
/// once the client half-closes), then closes. Reads a PROXY v2 header first if asked and
/// greets with "NAME SOURCE" then.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
}

pub async fn tcp_backend(name: &str) -> Backend {
    tcp_backend_with(name, false, Duration::ZERO).await
}

pub async fn tcp_backend_with(
    name: &str,
    proxy_protocol: bool,
    linger_after_eof: Duration,
) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let greeting = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let greeting = greeting.clone();
            tokio::spawn(async move {
                let mut line = greeting;
                if proxy_protocol {
                    let mut head = vec![0u8; 16];
                    if stream.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                    head.resize(16 + len, 0);
                    stream.read_exact(&mut head[16..]).await.unwrap();
                    let parsed = rvs_l4::parse_v2(&head).unwrap().unwrap();
                    line = format!("{line} {}", parsed.source);
                }
                let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
                let mut data = Vec::new();
                let _ = stream.read_to_end(&mut data).await;
                tokio::time::sleep(linger_after_eof).await;
                let _ = stream.write_all(&data).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Backend {
        name: name.to_string(),
        addr,
    }
}

/// A UDP backend answering "NAME PAYLOAD".
pub async fn udp_backend(name: &str) -> Backend {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let prefix = name.to_string();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let mut reply = format!("{prefix} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    Backend {
        name: name.to_string(),
        addr,
    }
}

/// A loopback port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

pub fn server(addr: SocketAddr, weight: u32) -> RealServer {
    RealServer {
        addr,
        weight,
        configured_weight: weight,
        state: EndpointState::Ready,
        node_name: None,
        zone: None,
        target: None,
        is_local: false,
    }
}

pub fn vs(
    protocol: Protocol,
    vip: SocketAddr,
    kind: SchedulerKind,
    servers: Vec<RealServer>,
) -> VirtualService {
    let mut servers = servers;
    servers.sort_by_key(|s| s.addr);
    VirtualService {
        protocol,
        frontend: Frontend::Address { addr: vip },
        kind: FrontendKind::ClusterIp,
        service: ServiceRef {
            namespace: "test".into(),
            name: "svc".into(),
            port_name: String::new(),
        },
        scheduler: SchedulerConfig {
            kind,
            ..Default::default()
        },
        persistence: None,
        proxy_protocol: false,
        real_servers: servers,
        traffic_policy: Default::default(),
        source_ranges: Vec::new(),
        health_check_node_port: None,
    }
}

pub fn snapshot(version: u64, services: Vec<VirtualService>) -> Snapshot {
    let mut services = services;
    services.sort_by_key(|vs| (vs.protocol, vs.frontend));
    Snapshot {
        version,
        services: services.into_iter().map(std::sync::Arc::new).collect(),
    }
}

pub async fn connect_from(vip: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if vip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(vip).await
}

/// Connects and returns the backend's greeting line, with the stream kept open.
pub async fn greet(vip: SocketAddr, source: Option<IpAddr>) -> (String, BufReader<TcpStream>) {
    let stream = connect_from(vip, source).await.expect("connect to the VIP");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .expect("greeting in time")
        .expect("greeting");
    (line.trim_end().to_string(), reader)
}

/// Which backend answered one short connection.
pub async fn who(vip: SocketAddr) -> String {
    greet(vip, None).await.0
}

pub fn count<I: IntoIterator<Item = String>>(names: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

pub fn find_server(
    table: &ServiceTable,
    vip: SocketAddr,
    server: SocketAddr,
) -> Option<&RealServerStatus> {
    table
        .services
        .iter()
        .find(|s| s.address == vip.to_string())?
        .real_servers
        .iter()
        .find(|r| r.address == server.to_string())
}

/// Polls `check` until it holds or 5 s pass.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

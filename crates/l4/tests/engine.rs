//! The userspace engine against real backends and clients on loopback. Each test uses its own
//! VIPs (127.20.N.x), so tests run in parallel.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use rvs_l4::{Engine, EngineConfig};
use rvs_model::{Frontend, FrontendKind, IpFamily, Protocol, SchedulerKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

fn vip(test: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from([127, 20, test, 1]), port)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

async fn engine_with(config: EngineConfig, snapshot: &rvs_model::Snapshot) -> Engine {
    let engine = Engine::new(config);
    let errors = engine.apply(snapshot).await;
    assert!(errors.is_empty(), "apply failed: {errors:?}");
    engine
}

async fn engine(snapshot: &rvs_model::Snapshot) -> Engine {
    engine_with(EngineConfig::default(), snapshot).await
}

#[tokio::test]
async fn rr_spreads_connections_evenly() {
    let (a, b, c) = (
        tcp_backend("a").await,
        tcp_backend("b").await,
        tcp_backend("c").await,
    );
    let v = vip(1, 80);
    let servers = vec![server(a.addr, 1), server(b.addr, 1), server(c.addr, 1)];
    let e = engine(&snapshot(
        1,
        vec![vs(Protocol::Tcp, v, SchedulerKind::Rr, servers)],
    ))
    .await;
    let mut names = Vec::new();
    for _ in 0..30 {
        names.push(who(v).await);
    }
    let counts = count(names);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{counts:?}"
    );
    let t = e.table();
    assert_eq!(find_server(&t, v, a.addr).unwrap().connections, 10);
}

#[tokio::test]
async fn wrr_follows_weights() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let v = vip(2, 80);
    let servers = vec![server(a.addr, 3), server(b.addr, 1)];
    let _e = engine(&snapshot(
        1,
        vec![vs(Protocol::Tcp, v, SchedulerKind::Wrr, servers)],
    ))
    .await;
    let mut names = Vec::new();
    for _ in 0..40 {
        names.push(who(v).await);
    }
    let counts = count(names);
    assert_eq!((counts["a"], counts["b"]), (30, 10));
}

#[tokio::test]
async fn lc_sends_new_connections_to_the_least_loaded_server() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let v = vip(3, 80);
    let servers = vec![server(a.addr, 1), server(b.addr, 1)];
    let e = engine(&snapshot(
        1,
        vec![vs(Protocol::Tcp, v, SchedulerKind::Lc, servers)],
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(greet(v, None).await);
    }
    let on_a = held.iter().filter(|(n, _)| n == "a").count();
    assert_eq!(on_a, 2, "lc balances open connections");
    // Close b's connections: b becomes the least loaded, so the next two go there.
    held.retain(|(n, _)| n == "a");
    eventually("b's connections counted closed", || {
        let t = e.table();
        let s = find_server(&t, v, b.addr).unwrap();
        s.active_conns == 0 && s.inactive_conns == 0
    })
    .await;
    let next = [greet(v, None).await, greet(v, None).await];
    assert_eq!(
        next.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        vec!["b", "b"]
    );
    let t = e.table();
    assert_eq!(find_server(&t, v, a.addr).unwrap().active_conns, 2);
    assert_eq!(find_server(&t, v, b.addr).unwrap().active_conns, 2);
}

#[tokio::test]
async fn persistence_binds_a_client_to_its_server_until_the_timeout() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let v = vip(4, 80);
    let mut service = vs(
        Protocol::Tcp,
        v,
        SchedulerKind::Rr,
        vec![server(a.addr, 1), server(b.addr, 1)],
    );
    service.persistence = Some(Duration::from_secs(1));
    let _e = engine(&snapshot(1, vec![service])).await;
    let (c1, c2) = (ip("127.0.0.2"), ip("127.0.0.3"));
    let first = greet(v, c1).await.0;
    let second = greet(v, c2).await.0;
    assert_ne!(first, second, "rr gives the two clients different servers");
    for _ in 0..5 {
        assert_eq!(greet(v, c1).await.0, first);
        assert_eq!(greet(v, c2).await.0, second);
    }
    // After the timeout with no connection open, c2 is scheduled afresh: rr's next is the
    // server after c2's last pick, i.e. c1's.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(greet(v, c2).await.0, first, "template expired, rescheduled");
}

#[tokio::test]
async fn weight_zero_drains_without_cutting_connections() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let v = vip(5, 80);
    let servers = vec![server(a.addr, 1), server(b.addr, 1)];
    let e = engine(&snapshot(
        1,
        vec![vs(Protocol::Tcp, v, SchedulerKind::Rr, servers)],
    ))
    .await;
    let mut on_b = None;
    while on_b.is_none() {
        let (name, stream) = greet(v, None).await;
        if name == "b" {
            on_b = Some(stream);
        }
    }
    let quiesced = vec![server(a.addr, 1), server(b.addr, 0)];
    assert!(e
        .apply(&snapshot(
            2,
            vec![vs(Protocol::Tcp, v, SchedulerKind::Rr, quiesced)]
        ))
        .await
        .is_empty());
    for _ in 0..10 {
        assert_eq!(who(v).await, "a");
    }
    let t = e.table();
    let b_status = find_server(&t, v, b.addr).unwrap();
    assert_eq!((b_status.weight, b_status.active_conns), (0, 1));
    assert_eq!(format!("{:?}", b_status.state), "Quiesced");
    // The drained connection still works end to end.
    let mut stream = on_b.unwrap();
    stream.get_mut().write_all(b"still here").await.unwrap();
    stream.get_mut().shutdown().await.unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "still here");
}

#[tokio::test]
async fn removed_server_keeps_its_connections_by_default() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let v = vip(6, 80);
    let servers = vec![server(a.addr, 1), server(b.addr, 1)];
    let e = engine(&snapshot(
        1,
        vec![vs(Protocol::Tcp, v, SchedulerKind::Rr, servers)],
    ))
    .await;
    let (first, mut held) = greet(v, None).await;
    let (kept, gone) = if first == "a" { (&b, &a) } else { (&a, &b) };
    assert!(e
        .apply(&snapshot(
            2,
            vec![vs(
                Protocol::Tcp,
                v,
                SchedulerKind::Rr,
                vec![server(kept.addr, 1)]
            )]
        ))
        .await
        .is_empty());
    for _ in 0..6 {
        assert_eq!(
            who(v).await,
            kept.name,
            "no new connection goes to a removed server"
        );
    }
    let t = e.table();
    let removed =
        find_server(&t, v, gone.addr).expect("removed server listed while its connection lasts");
    assert_eq!(
        (format!("{:?}", removed.state), removed.active_conns),
        ("Removed".into(), 1)
    );
    held.get_mut().write_all(b"ok").await.unwrap();
    held.get_mut().shutdown().await.unwrap();
    let mut rest = String::new();
    held.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "ok");
    eventually(
        "removed server forgotten once its connection closed",
        || find_server(&e.table(), v, gone.addr).is_none(),
    )
    .await;
    // Its counts stay in the node-wide totals (Prometheus counters must not go down).
    let retired = e.table().retired;
    assert_eq!(retired.connections, 1);
    assert!(
        retired.bytes_in >= 2 && retired.bytes_out > 0,
        "{retired:?}"
    );
}

#[tokio::test]
async fn expire_removed_closes_connections_at_once() {
    let a = tcp_backend("a").await;
    let b = tcp_backend("b").await;
    let v = vip(7, 80);
    let config = EngineConfig {
        expire_removed: true,
        ..Default::default()
    };
    let e = engine_with(
        config,
        &snapshot(
            1,
            vec![vs(
                Protocol::Tcp,
                v,
                SchedulerKind::Rr,
                vec![server(a.addr, 1)],
            )],
        ),
    )
    .await;
    let (_, mut held) = greet(v, None).await;
    assert!(e
        .apply(&snapshot(
            2,
            vec![vs(
                Protocol::Tcp,
                v,
                SchedulerKind::Rr,
                vec![server(b.addr, 1)]
            )]
        ))
        .await
        .is_empty());
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), held.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "connection of the removed server closed promptly"
    );
    assert_eq!(who(v).await, "b");
}

#[tokio::test]
async fn refused_connect_fails_over_to_the_next_server() {
    let a = tcp_backend("a").await;
    let dead = closed_port().await;
    let v = vip(8, 80);
    let e = engine(&snapshot(
        1,
        vec![vs(
            Protocol::Tcp,
            v,
            SchedulerKind::Rr,
            vec![server(a.addr, 1), server(dead, 1)],
        )],
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(who(v).await, "a");
    }
    assert!(
        e.connect_failures() >= 4,
        "rr tried the dead server about every other time"
    );
}

#[tokio::test]
async fn no_reachable_server_resets_the_client() {
    let v = vip(9, 80);
    let dead = closed_port().await;
    let _e = engine(&snapshot(
        1,
        vec![
            vs(Protocol::Tcp, v, SchedulerKind::Rr, vec![server(dead, 1)]),
            vs(Protocol::Tcp, vip(9, 81), SchedulerKind::Rr, vec![]),
        ],
    ))
    .await;
    for target in [v, vip(9, 81)] {
        let mut stream = connect_from(target, None).await.unwrap();
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "no data, just a close: {r:?}");
    }
}

#[tokio::test]
async fn half_close_is_honoured_and_counted_inactive() {
    let a = tcp_backend_with("a", false, Duration::from_millis(500)).await;
    let v = vip(10, 80);
    let e = engine(&snapshot(
        1,
        vec![vs(
            Protocol::Tcp,
            v,
            SchedulerKind::Rr,
            vec![server(a.addr, 1)],
        )],
    ))
    .await;
    let (_, mut stream) = greet(v, None).await;
    stream.get_mut().write_all(b"ping").await.unwrap();
    stream.get_mut().shutdown().await.unwrap();
    eventually("half-closed connection counted inactive", || {
        let t = e.table();
        let s = find_server(&t, v, a.addr).unwrap();
        (s.active_conns, s.inactive_conns) == (0, 1)
    })
    .await;
    assert_eq!(e.connections()[0].state, "FIN_WAIT");
    let mut rest = String::new();
    stream.read_to_string(&mut rest).await.unwrap();
    assert_eq!(
        rest, "ping",
        "the server's answer after our FIN still arrives"
    );
    eventually("closed connection leaves the table", || {
        e.connections().is_empty()
    })
    .await;
    let t = e.table();
    let s = find_server(&t, v, a.addr).unwrap();
    assert_eq!((s.bytes_in, s.bytes_out), (4, 6));
}

#[tokio::test]
async fn proxy_protocol_v2_tells_the_server_the_client() {
    let a = tcp_backend_with("a", true, Duration::ZERO).await;
    let v = vip(11, 80);
    let mut service = vs(Protocol::Tcp, v, SchedulerKind::Rr, vec![server(a.addr, 1)]);
    service.proxy_protocol = true;
    let _e = engine(&snapshot(1, vec![service])).await;
    let (line, stream) = greet(v, ip("127.0.0.9")).await;
    let local = stream.get_ref().local_addr().unwrap();
    assert_eq!(line, format!("a {local}"));
}

#[tokio::test]
async fn udp_flows_are_scheduled_per_client_and_expire_when_idle() {
    let (a, b) = (udp_backend("a").await, udp_backend("b").await);
    let v = vip(12, 53);
    let config = EngineConfig {
        udp_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let e = engine_with(
        config,
        &snapshot(
            1,
            vec![vs(
                Protocol::Udp,
                v,
                SchedulerKind::Rr,
                vec![server(a.addr, 1), server(b.addr, 1)],
            )],
        ),
    )
    .await;
    let ask = |socket: std::sync::Arc<UdpSocket>, payload: &'static str| async move {
        socket.send_to(payload.as_bytes(), v).await.unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .expect("reply")
            .unwrap();
        assert_eq!(from, v, "replies come from the VIP");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let c1 = arc(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let c2 = arc(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let r1 = ask(c1.clone(), "x").await;
    let r2 = ask(c2.clone(), "y").await;
    assert_ne!(r1[..1], r2[..1], "two flows, two servers");
    for _ in 0..3 {
        assert_eq!(
            ask(c1.clone(), "x").await,
            r1,
            "a flow sticks to its server"
        );
    }
    let t = e.table();
    assert_eq!(
        find_server(&t, v, a.addr).unwrap().inactive_conns,
        1,
        "UDP flows count as InActConn, as in IPVS"
    );
    assert_eq!(find_server(&t, v, a.addr).unwrap().connections, 1);
    eventually("idle flows expire", || e.connections().is_empty()).await;
    ask(c1.clone(), "x").await;
    let t = e.table();
    let total: u64 = [a.addr, b.addr]
        .iter()
        .map(|s| find_server(&t, v, *s).unwrap().connections)
        .sum();
    assert_eq!(total, 3, "a new flow after expiry");
}

#[tokio::test]
async fn udp_flows_of_a_removed_server_end_at_once() {
    let (a, b) = (udp_backend("a").await, udp_backend("b").await);
    let v = vip(13, 53);
    let e = engine(&snapshot(
        1,
        vec![vs(
            Protocol::Udp,
            v,
            SchedulerKind::Rr,
            vec![server(a.addr, 1)],
        )],
    ))
    .await;
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 64];
    c.send_to(b"1", v).await.unwrap();
    let (n, _) = c.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"a 1");
    assert!(e
        .apply(&snapshot(
            2,
            vec![vs(
                Protocol::Udp,
                v,
                SchedulerKind::Rr,
                vec![server(b.addr, 1)]
            )]
        ))
        .await
        .is_empty());
    eventually("flow to the removed server gone", || {
        e.connections().is_empty()
    })
    .await;
    c.send_to(b"2", v).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), c.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &buf[..n],
        b"b 2",
        "the same client is rescheduled to a live server"
    );
}

#[tokio::test]
async fn nodeport_listens_on_the_selected_node_addresses() {
    let a = tcp_backend("a").await;
    let port = closed_port().await.port();
    let mut service = vs(
        Protocol::Tcp,
        vip(14, 80),
        SchedulerKind::Rr,
        vec![server(a.addr, 1)],
    );
    service.frontend = Frontend::NodePort {
        family: IpFamily::V4,
        port,
    };
    service.kind = FrontendKind::NodePort;
    let config = EngineConfig {
        nodeport_addresses: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    let e = engine_with(config, &snapshot(1, vec![service])).await;
    let node = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(e.listening(), vec![(Protocol::Tcp, node)]);
    assert_eq!(who(node).await, "a");
}

#[tokio::test]
async fn bulk_data_passes_intact_and_is_counted() {
    // An echo server that returns everything: the bytes go through splice both ways.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let v = vip(15, 80);
    let e = engine(&snapshot(
        1,
        vec![vs(
            Protocol::Tcp,
            v,
            SchedulerKind::Rr,
            vec![server(backend, 1)],
        )],
    ))
    .await;
    let stream = connect_from(v, None).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert!(back == expected, "8 MiB came back intact");
    eventually("counters settled", || e.connections().is_empty()).await;
    let t = e.table();
    let s = find_server(&t, v, backend).unwrap();
    assert_eq!((s.bytes_in, s.bytes_out), (8 << 20, 8 << 20));
}

#[tokio::test]
async fn configuration_changes_under_load_fail_no_connection() {
    let backends = [
        tcp_backend("a").await,
        tcp_backend("b").await,
        tcp_backend("c").await,
    ];
    let v = vip(16, 80);
    let all: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let e = engine(&snapshot(
        1,
        vec![vs(
            Protocol::Tcp,
            v,
            SchedulerKind::Rr,
            vec![server(all[0], 1)],
        )],
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..150 {
                seen.push(who(v).await);
            }
            seen
        }));
    }
    // Servers come and go; "a" always stays, so every connection has somewhere to go.
    let sets: [&[usize]; 4] = [&[0, 1], &[0, 1, 2], &[0, 2], &[0]];
    for round in 0..12u64 {
        let set = sets[round as usize % sets.len()];
        let servers = set.iter().map(|i| server(all[*i], 1)).collect();
        let errors = e
            .apply(&snapshot(
                round + 2,
                vec![vs(Protocol::Tcp, v, SchedulerKind::Rr, servers)],
            ))
            .await;
        assert!(errors.is_empty());
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let mut total = 0;
    for c in clients {
        total += c.await.expect("no client failed").len();
    }
    assert_eq!(total, 600);
}

#[tokio::test]
async fn a_vip_that_is_not_local_is_reported_and_the_rest_served() {
    let a = tcp_backend("a").await;
    let good = vip(17, 80);
    // TEST-NET-1: never a local address here, and never contacted (bind fails first).
    let foreign: SocketAddr = "192.0.2.10:80".parse().unwrap();
    let e = Engine::new(EngineConfig::default());
    let errors = e
        .apply(&snapshot(
            1,
            vec![
                vs(
                    Protocol::Tcp,
                    good,
                    SchedulerKind::Rr,
                    vec![server(a.addr, 1)],
                ),
                vs(
                    Protocol::Tcp,
                    foreign,
                    SchedulerKind::Rr,
                    vec![server(a.addr, 1)],
                ),
            ],
        ))
        .await;
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .contains("192.0.2.10 is not a local address"),
        "{}",
        errors[0]
    );
    assert_eq!(who(good).await, "a");
}

#[tokio::test]
async fn every_ipvs_scheduler_serves_through_the_engine() {
    let (a, b, c) = (
        tcp_backend("a").await,
        tcp_backend("b").await,
        tcp_backend("c").await,
    );
    let mut services = Vec::new();
    for (i, kind) in SchedulerKind::ALL.into_iter().enumerate() {
        let servers = vec![server(a.addr, 2), server(b.addr, 1), server(c.addr, 1)];
        services.push(vs(Protocol::Tcp, vip(18, 1000 + i as u16), kind, servers));
    }
    let _e = engine(&snapshot(1, services)).await;
    let hashing = [
        SchedulerKind::Sh,
        SchedulerKind::Mh,
        SchedulerKind::Dh,
        SchedulerKind::Lblc,
        SchedulerKind::Lblcr,
    ];
    for (i, kind) in SchedulerKind::ALL.into_iter().enumerate() {
        let v = vip(18, 1000 + i as u16);
        let clients = [
            "127.0.1.1",
            "127.0.1.2",
            "127.0.1.3",
            "127.0.1.4",
            "127.0.1.5",
            "127.0.1.6",
        ];
        let mut picks = Vec::new();
        // Connections stay open so the least-connection family sees load and spreads.
        let mut held = Vec::new();
        for client in clients {
            let (first, stream) = greet(v, ip(client)).await;
            if !hashing.contains(&kind) {
                held.push(stream);
            }
            if hashing.contains(&kind) {
                // Keyed by the client (sh, mh) or the VIP (dh, lblc, lblcr): the same key
                // always lands on the same server.
                assert_eq!(
                    greet(v, ip(client)).await.0,
                    first,
                    "{kind} is stable per key"
                );
            }
            picks.push(first);
        }
        let distinct = count(picks.clone()).len();
        match kind {
            // Keyed by the destination: one VIP, one server.
            SchedulerKind::Dh | SchedulerKind::Lblc | SchedulerKind::Lblcr => {
                assert_eq!(distinct, 1, "{kind}")
            }
            // Highest weight only, while it is not overloaded.
            SchedulerKind::Fo | SchedulerKind::Ovf => {
                assert_eq!(picks[0], "a", "{kind} prefers the heaviest")
            }
            _ => assert!(distinct >= 2, "{kind} spreads short connections: {picks:?}"),
        }
    }
}

#[tokio::test]
async fn ipv6_virtual_service() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        println!("SKIPPED ipv6_virtual_service: no IPv6 loopback on this machine");
        return;
    };
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            let _ = s.write_all(format!("v6 {peer}\n").as_bytes()).await;
        }
    });
    let v6_vip: SocketAddr = SocketAddr::new("::1".parse().unwrap(), closed_port().await.port());
    let e = engine(&snapshot(
        1,
        vec![vs(
            Protocol::Tcp,
            v6_vip,
            SchedulerKind::Rr,
            vec![server(backend, 1)],
        )],
    ))
    .await;
    let line = greet(v6_vip, None).await.0;
    assert!(line.starts_with("v6 [::1]:"), "{line}");
    assert_eq!(e.table().services[0].address, v6_vip.to_string());
}

#[tokio::test]
async fn persistence_binds_parallel_first_connections_to_one_server() {
    let (a, b) = (tcp_backend("a").await, tcp_backend("b").await);
    let v = vip(19, 80);
    let mut service = vs(
        Protocol::Tcp,
        v,
        SchedulerKind::Rr,
        vec![server(a.addr, 1), server(b.addr, 1)],
    );
    service.persistence = Some(Duration::from_secs(60));
    let _e = engine(&snapshot(1, vec![service])).await;
    // A browser opens several connections at once: IPVS creates the template when it
    // schedules the first, so all of them land on the same server.
    let mut opening = Vec::new();
    for _ in 0..6 {
        opening.push(tokio::spawn(
            async move { greet(v, ip("127.0.0.7")).await.0 },
        ));
    }
    let mut names = Vec::new();
    for o in opening {
        names.push(o.await.unwrap());
    }
    names.dedup();
    assert_eq!(names.len(), 1, "one server for one client: {names:?}");
}

#[tokio::test]
async fn client_connections_carry_keepalive_timers() {
    let a = tcp_backend("a").await;
    let v = vip(20, 80);
    let _e = engine(&snapshot(
        1,
        vec![vs(
            Protocol::Tcp,
            v,
            SchedulerKind::Rr,
            vec![server(a.addr, 1)],
        )],
    ))
    .await;
    let (_, _held) = greet(v, None).await;
    // rvs's side of the client connection: local address = the VIP.
    let Ok(out) = std::process::Command::new("ss")
        .args(["-tno", "state", "established", "src", "127.20.20.1:80"])
        .output()
    else {
        println!("SKIPPED keepalive check: ss (iproute2) is not installed");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("timer:(keepalive"),
        "keepalive armed on the accepted socket:\n{text}"
    );
}

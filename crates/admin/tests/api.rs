//! The admin API over real loopback sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rvs_admin::{fetch_config, fetch_table, serve, AdminSource, ConfigStatus};
use rvs_model::status::{RealServerStatus, ServerDisplayState, ServiceTable, VirtualServiceStatus};
use rvs_model::{FrontendKind, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Fake {
    table: Mutex<ServiceTable>,
    ready: AtomicBool,
    config: Mutex<ConfigStatus>,
}

impl AdminSource for Fake {
    fn table(&self) -> ServiceTable {
        self.table.lock().unwrap().clone()
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    fn config(&self) -> ConfigStatus {
        self.config.lock().unwrap().clone()
    }
}

fn real_server(
    address: &str,
    weight: u32,
    active: u64,
    inactive: u64,
    state: ServerDisplayState,
) -> RealServerStatus {
    RealServerStatus {
        address: address.to_string(),
        weight,
        active_conns: active,
        inactive_conns: inactive,
        connections: active + inactive + 10,
        bytes_in: 1000,
        bytes_out: 20_000,
        state,
    }
}

fn sample_table() -> ServiceTable {
    ServiceTable {
        engine: "userspace".to_string(),
        config_version: 7,
        retired: Default::default(),
        services: vec![
            VirtualServiceStatus {
                protocol: Protocol::Tcp,
                address: "10.96.0.1:80".to_string(),
                kind: FrontendKind::ClusterIp,
                service: "default/web:http".to_string(),
                scheduler: "rr".to_string(),
                scheduler_flags: vec![],
                persistence_seconds: Some(10800),
                real_servers: vec![
                    real_server("10.244.1.5:8080", 1, 3, 1, ServerDisplayState::Ready),
                    real_server("10.244.2.7:8080", 0, 0, 2, ServerDisplayState::Terminating),
                ],
            },
            VirtualServiceStatus {
                protocol: Protocol::Udp,
                address: "[fd00::10]:53".to_string(),
                kind: FrontendKind::ClusterIp,
                service: "kube-system/dns:dns".to_string(),
                scheduler: "mh".to_string(),
                scheduler_flags: vec!["mh-port".to_string()],
                persistence_seconds: None,
                real_servers: vec![real_server(
                    "[fd00:244::9]:5353",
                    2,
                    5,
                    0,
                    ServerDisplayState::Ready,
                )],
            },
        ],
    }
}

fn sample_config() -> ConfigStatus {
    ConfigStatus {
        version: 7,
        last_reload_successful: false,
        last_reload_unix_seconds: 1_700_000_000.5,
        reloads_total: 9,
        reload_failures_total: 2,
        problems: vec!["default/bad: unknown scheduler".to_string()],
    }
}

struct Server {
    address: SocketAddr,
    source: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start() -> Server {
        let source = Arc::new(Fake {
            table: Mutex::new(sample_table()),
            ready: AtomicBool::new(false),
            config: Mutex::new(sample_config()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, source.clone(), async move {
            let _ = stopped.await;
        }));
        Server {
            address,
            source,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(3), &mut self.task)
            .await
            .expect("serve returns promptly after shutdown")
            .unwrap()
            .unwrap();
    }
}

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// A raw HTTP/1.1 exchange, so the server is tested independently of our client.
async fn http(address: SocketAddr, method: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (k, v) = line.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

type Labels = BTreeMap<String, String>;

/// Parses the sample lines of a text exposition: (name, labels, value).
fn samples(text: &str) -> Vec<(String, Labels, String)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Labels::new()),
                Some((name, rest)) => (
                    name.to_string(),
                    parse_labels(rest.strip_suffix('}').unwrap()),
                ),
            };
            (name, labels, value.to_string())
        })
        .collect()
}

fn parse_labels(mut s: &str) -> Labels {
    let mut labels = Labels::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").unwrap();
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().unwrap() {
                (_, '\\') => value.push(chars.next().unwrap().1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn value_of<'a>(samples: &'a [(String, Labels, String)], name: &str, want: &Labels) -> &'a str {
    let found: Vec<_> = samples
        .iter()
        .filter(|(n, l, _)| n == name && l == want)
        .collect();
    assert_eq!(found.len(), 1, "{name}{want:?} in {samples:#?}");
    &found[0].2
}

#[tokio::test]
async fn healthz_and_readyz() {
    let server = Server::start().await;

    let reply = http(server.address, "GET", "/healthz").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));

    let reply = http(server.address, "GET", "/readyz").await;
    assert_eq!((reply.status, reply.body.as_str()), (503, "not ready"));
    server.source.ready.store(true, Ordering::SeqCst);
    let reply = http(server.address, "GET", "/readyz").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ready"));

    let reply = http(server.address, "HEAD", "/healthz").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));

    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let server = Server::start().await;

    assert_eq!(http(server.address, "GET", "/nope").await.status, 404);
    assert_eq!(http(server.address, "GET", "/api/v1").await.status, 404);
    let reply = http(server.address, "POST", "/healthz").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.headers["allow"], "GET, HEAD");
    assert_eq!(
        http(server.address, "DELETE", "/api/v1/services")
            .await
            .status,
        405
    );
    // A query string does not change the route.
    assert_eq!(
        http(server.address, "GET", "/healthz?verbose=1")
            .await
            .status,
        200
    );

    server.stop().await;
}

#[tokio::test]
async fn metrics_match_node_exporter_ipvs() {
    let server = Server::start().await;

    let reply = http(server.address, "GET", "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = reply.body;
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains(
            "node_ipvs_backend_connections_active{local_address=\"10.96.0.1\",local_port=\"80\",\
             remote_address=\"10.244.1.5\",remote_port=\"8080\",proto=\"TCP\",local_mark=\"\"} 3\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("# TYPE node_ipvs_connections counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE node_ipvs_backend_weight gauge\n"),
        "{text}"
    );

    let samples = samples(&text);
    let names: BTreeSet<&str> = samples.iter().map(|(n, _, _)| n.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "node_ipvs_connections_total",
        "node_ipvs_incoming_bytes_total",
        "node_ipvs_outgoing_bytes_total",
        "node_ipvs_backend_connections_active",
        "node_ipvs_backend_connections_inactive",
        "node_ipvs_backend_weight",
        "rvs_backend_connections_total",
        "rvs_backend_bytes_in_total",
        "rvs_backend_bytes_out_total",
        "rvs_config_version",
        "rvs_config_last_reload_successful",
        "rvs_config_last_reload_success_timestamp_seconds",
        "rvs_config_reloads_total",
        "rvs_config_reload_failures_total",
        "rvs_config_problems",
        "rvs_virtual_services",
    ]
    .into_iter()
    .collect();
    assert_eq!(names, expected);

    // Totals over all real servers: connections are active + inactive + 10 each.
    let none = Labels::new();
    assert_eq!(
        value_of(&samples, "node_ipvs_connections_total", &none),
        "41"
    );
    assert_eq!(
        value_of(&samples, "node_ipvs_incoming_bytes_total", &none),
        "3000"
    );
    assert_eq!(
        value_of(&samples, "node_ipvs_outgoing_bytes_total", &none),
        "60000"
    );

    let terminating = labels(&[
        ("local_address", "10.96.0.1"),
        ("local_port", "80"),
        ("remote_address", "10.244.2.7"),
        ("remote_port", "8080"),
        ("proto", "TCP"),
        ("local_mark", ""),
    ]);
    assert_eq!(
        value_of(
            &samples,
            "node_ipvs_backend_connections_inactive",
            &terminating
        ),
        "2"
    );
    assert_eq!(
        value_of(&samples, "node_ipvs_backend_weight", &terminating),
        "0"
    );

    // IPv6: addresses without brackets, ports apart.
    let v6 = labels(&[
        ("local_address", "fd00::10"),
        ("local_port", "53"),
        ("remote_address", "fd00:244::9"),
        ("remote_port", "5353"),
        ("proto", "UDP"),
        ("local_mark", ""),
    ]);
    assert_eq!(
        value_of(&samples, "node_ipvs_backend_connections_active", &v6),
        "5"
    );
    assert_eq!(value_of(&samples, "node_ipvs_backend_weight", &v6), "2");
    let mut v6_rvs = v6.clone();
    v6_rvs.insert("service".into(), "kube-system/dns:dns".into());
    v6_rvs.insert("state".into(), "ready".into());
    assert_eq!(
        value_of(&samples, "rvs_backend_connections_total", &v6_rvs),
        "15"
    );
    assert_eq!(
        value_of(&samples, "rvs_backend_bytes_in_total", &v6_rvs),
        "1000"
    );
    assert_eq!(
        value_of(&samples, "rvs_backend_bytes_out_total", &v6_rvs),
        "20000"
    );

    // Exactly node_exporter's label set on the IPVS series, plus service and state on ours.
    let ipvs_keys: BTreeSet<&str> = [
        "local_address",
        "local_port",
        "remote_address",
        "remote_port",
        "proto",
        "local_mark",
    ]
    .into_iter()
    .collect();
    for (name, labels, _) in &samples {
        let keys: BTreeSet<&str> = labels.keys().map(String::as_str).collect();
        if name.starts_with("node_ipvs_backend_") {
            assert_eq!(keys, ipvs_keys, "{name}");
        } else if name.starts_with("rvs_backend_") {
            let mut want = ipvs_keys.clone();
            want.extend(["service", "state"]);
            assert_eq!(keys, want, "{name}");
        } else {
            assert!(keys.is_empty(), "{name}");
        }
    }

    assert_eq!(value_of(&samples, "rvs_config_version", &none), "7");
    assert_eq!(
        value_of(&samples, "rvs_config_last_reload_successful", &none),
        "0"
    );
    let timestamp = value_of(
        &samples,
        "rvs_config_last_reload_success_timestamp_seconds",
        &none,
    );
    assert_eq!(timestamp.parse::<f64>().unwrap(), 1_700_000_000.5);
    assert_eq!(value_of(&samples, "rvs_config_reloads_total", &none), "9");
    assert_eq!(
        value_of(&samples, "rvs_config_reload_failures_total", &none),
        "2"
    );
    assert_eq!(value_of(&samples, "rvs_config_problems", &none), "1");
    assert_eq!(value_of(&samples, "rvs_virtual_services", &none), "2");

    // Read at scrape time: a real server that is gone leaves no series behind.
    server.source.table.lock().unwrap().services[0]
        .real_servers
        .remove(1);
    let text = http(server.address, "GET", "/metrics").await.body;
    assert!(!text.contains("10.244.2.7"), "{text}");
    assert!(text.contains("remote_address=\"10.244.1.5\""), "{text}");

    server.stop().await;
}

#[tokio::test]
async fn services_round_trip_through_fetch_table() {
    let server = Server::start().await;

    let reply = http(server.address, "GET", "/api/v1/services").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(reply.body.contains("\"configVersion\":7"), "{}", reply.body);

    let table = fetch_table(server.address).await.unwrap();
    assert_eq!(table, sample_table());

    let config = fetch_config(server.address).await.unwrap();
    assert_eq!(config, sample_config());
    let reply = http(server.address, "GET", "/api/v1/config").await;
    assert!(
        reply.body.contains("\"lastReloadSuccessful\":false"),
        "{}",
        reply.body
    );

    server.stop().await;
}

#[tokio::test]
async fn fetch_table_names_the_address_it_cannot_reach() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);

    let error = fetch_table(address).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot reach the rvs admin API at {address}: connection refused \
             (is rvs running? --admin sets the address)"
        )
    );
}

#[tokio::test]
async fn fetch_table_reports_a_peer_that_is_not_rvs() {
    // Something that answers HTTP, but not with a table.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        for body in ["{\"not\":\"a table\"}", "nope"] {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await.unwrap();
            let status = if body == "nope" {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).await.unwrap();
        }
    });

    let error = fetch_table(address).await.unwrap_err().to_string();
    assert!(error.contains(&address.to_string()), "{error}");
    assert!(error.contains("cannot read"), "{error}");
    let error = fetch_table(address).await.unwrap_err().to_string();
    assert!(error.contains(&address.to_string()), "{error}");
    assert!(error.contains("500 Internal Server Error: nope"), "{error}");
    peer.await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_idle_connections() {
    let server = Server::start().await;
    let address = server.address;
    // An open connection that never sends a request must not hold shutdown up.
    let mut idle = TcpStream::connect(address).await.unwrap();
    // And one kept alive after a request.
    let mut kept = TcpStream::connect(address).await.unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    server.stop().await;

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection closed");
    let closed = tokio::time::timeout(Duration::from_secs(2), kept.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "kept-alive connection closed");
    assert!(
        TcpStream::connect(address).await.is_err(),
        "listener closed"
    );
}

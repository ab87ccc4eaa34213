//! Metrics under ingress-nginx's names, rvs's upstream pool gauges, and the JSON access log.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, path, rule, Backend, Env, Manifests};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn manifests(b: &Backend) -> Manifests {
    manifests_for(b.addr)
}

fn manifests_for(backend: SocketAddr) -> Manifests {
    let mut m = Manifests::new();
    m.service("web", &[backend]).ingress(
        "web",
        &[],
        &[rule(
            Some("obs.example.com"),
            &[path("/app", "Prefix", "web")],
        )],
        "",
    );
    m
}

/// The value of the sample line that starts with `name{` and has every label in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_and_reuse_ratio() {
    let b = Backend::echo("web").await;
    let env = Env::start(&manifests(&b)).await;
    for i in 0..7 {
        let r = env.get("obs.example.com", &format!("/app/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(
            env.get("nowhere.example.com", "/").await.status,
            StatusCode::NOT_FOUND
        );
    }
    let labels = [
        "host=\"obs.example.com\"",
        "status=\"200\"",
        "method=\"GET\"",
        "path=\"/app\"",
        "namespace=\"default\"",
        "ingress=\"web\"",
        "service=\"web\"",
    ];
    let mut text = String::new();
    let counted = eventually(Duration::from_secs(2), || {
        text = env.metrics_text();
        sample(&text, "nginx_ingress_controller_requests", &labels) == Some(7.0)
    })
    .await;
    assert!(counted, "7 requests with 200:\n{text}");
    assert_eq!(
        sample(
            &text,
            "nginx_ingress_controller_requests",
            &["status=\"404\""]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "nginx_ingress_controller_request_duration_seconds_count",
            &labels
        ),
        Some(7.0),
        "{text}"
    );
    // Every proxied request, as nginx's `$upstream_connect_time` (near 0 on a reused
    // connection) feeds connect_duration.
    for histogram in [
        "response_duration_seconds",
        "connect_duration_seconds",
        "request_size",
        "response_size",
    ] {
        let name = format!("nginx_ingress_controller_{histogram}_count");
        assert_eq!(sample(&text, &name, &labels), Some(7.0), "{name}:\n{text}");
    }
    // ingress-nginx's controller labels, which its dashboards select by, on every metric.
    let controller = [
        "controller_class=\"rvs.io/ingress-controller\"",
        "controller_namespace=\"\"",
        "controller_pod=\"\"",
    ];
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            controller.iter().all(|label| line.contains(label)),
            "{line}"
        );
    }
    let hash = sample(&text, "nginx_ingress_controller_config_hash", &controller);
    assert!(hash.is_some_and(|h| h != 0.0), "config hash: {text}");
    // One upstream connection opened, six reused.
    assert_eq!(
        sample(&text, "rvs_gateway_upstream_connections_opened_total", &[]),
        Some(1.0),
        "{text}"
    );
    let ratio = sample(&text, "rvs_gateway_upstream_reuse_ratio", &[]).expect("reuse ratio");
    assert!((ratio - 6.0 / 7.0).abs() < 1e-9, "reuse ratio {ratio}");
    assert_eq!(
        sample(
            &text,
            "nginx_ingress_controller_config_last_reload_successful",
            &[]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_a_json_line_per_request() {
    let b = Backend::echo("web").await;
    let env = Env::start_with(&manifests(&b), true).await;
    let log = env.access_log.clone().unwrap();
    let r = env
        .send(
            http::Method::POST,
            "obs.example.com",
            "/app/x?y=1",
            &[("x-request-id", "req-1")],
            vec![b'z'; 100],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        env.get("obs.example.com", "/missing").await.status,
        StatusCode::NOT_FOUND
    );
    for _ in 0..3 {
        env.get("obs.example.com", "/app").await;
    }
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(3), || lines().len() >= 5).await,
        "{:?}",
        lines()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines = lines();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let first = &records[0];
    for field in [
        "time",
        "remote_addr",
        "method",
        "host",
        "path",
        "protocol",
        "status",
        "bytes_sent",
        "request_length",
        "request_time",
        "upstream_addr",
        "upstream_status",
        "upstream_response_time",
        "namespace",
        "ingress",
        "service",
        "request_id",
    ] {
        assert!(first.get(field).is_some(), "no {field}: {first}");
    }
    assert_eq!(first["remote_addr"], "127.0.0.1");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["host"], "obs.example.com");
    assert_eq!(first["path"], "/app/x?y=1");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream_status"], 200);
    assert_eq!(first["upstream_addr"], b.addr.to_string());
    assert_eq!(first["namespace"], "default");
    assert_eq!(first["ingress"], "web");
    assert_eq!(first["service"], "web");
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(first["bytes_sent"], r.body.len() as u64);
    assert!(first["request_length"].as_u64().unwrap() >= 100);
    let time = first["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.contains('T'),
        "{time}"
    );

    let missing = &records[1];
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["upstream_addr"], serde_json::Value::Null);
    assert_eq!(missing["ingress"], "");
    assert_eq!(missing["request_id"].as_str().unwrap().len(), 32);
}

/// A backend that sends its head and half its body at once, the other half 300 ms later.
async fn slow_body_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
                if socket.write_all(head).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = socket.write_all(b"world").await;
                let _ = socket.read(&mut chunk).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_response_time_runs_to_the_last_byte() {
    let backend = slow_body_backend().await;
    let env = Env::start_with(&manifests_for(backend), true).await;
    let log = env.access_log.clone().unwrap();
    let r = env.get("obs.example.com", "/app").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"helloworld");
    let line = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .next()
            .map(String::from)
    };
    assert!(eventually(Duration::from_secs(3), || line().is_some()).await);
    let record: serde_json::Value = serde_json::from_str(&line().unwrap()).unwrap();
    let upstream = record["upstream_response_time"].as_f64().expect("a number");
    assert!(upstream >= 0.3, "nginx's $upstream_response_time: {record}");
    let text = env.metrics_text();
    let sum = sample(
        &text,
        "nginx_ingress_controller_response_duration_seconds_sum",
        &["status=\"200\""],
    );
    assert!(sum.is_some_and(|s| s >= 0.3), "{text}");
}

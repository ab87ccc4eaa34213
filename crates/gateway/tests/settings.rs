//! ConfigMap settings and smaller annotations: client keep-alive limits, status codes of
//! the limits, app-root, upstream-vhost, x-forwarded-prefix, backend-protocol HTTP2, the
//! upstream keep-alive limits.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Backend, Env, Resp};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

async fn env(config: &[(&str, &str)], annotations: &[(&str, &str)]) -> (Env, Backend) {
    common::single_route("s.example.com", config, annotations).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connection_closes_after_keep_alive() {
    let (env, _b) = env(&[("keep-alive", "1")], &[]).await;
    let mut tcp = TcpStream::connect(env.http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET / HTTP/1.1\r\nHost: s.example.com\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    let took = start.elapsed();
    assert!(read.is_ok(), "the idle connection stayed open");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_closes_after_the_last() {
    let (env, _b) = env(&[("keep-alive-requests", "3")], &[]).await;
    let tcp = TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for i in 1..=3 {
        sender.ready().await.unwrap();
        let request = Request::builder()
            .uri("/")
            .header("host", "s.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = Resp::read(sender.send_request(request).await.unwrap()).await;
        assert_eq!(r.status, StatusCode::OK);
        let close = r.header("connection").is_some_and(|c| c == "close");
        assert_eq!(close, i == 3, "request {i}");
    }
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the connection ended after the third response")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_status_code_from_the_configmap() {
    let (env, _b) = env(
        &[("limit-req-status-code", "429")],
        &[("limit-rpm", "1"), ("limit-burst-multiplier", "1")],
    )
    .await;
    // burst=1 nodelay: two at once, then one a minute (no refill during the test).
    for _ in 0..2 {
        assert_eq!(env.get("s.example.com", "/").await.status, StatusCode::OK);
    }
    assert_eq!(
        env.get("s.example.com", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_root_vhost_and_prefix() {
    let (env, _b) = env(
        &[],
        &[
            ("app-root", "/app"),
            ("upstream-vhost", "internal.svc"),
            ("x-forwarded-prefix", "/shop"),
        ],
    )
    .await;
    let r = env.get("s.example.com", "/").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location").as_deref(), Some("/app"));
    let r = env.get("s.example.com", "/app").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream_header("host").as_deref(), Some("internal.svc"));
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("s.example.com")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-prefix").as_deref(),
        Some("/shop")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_protocol_http2_speaks_h2c_upstream() {
    let (env, b) = env(&[], &[("backend-protocol", "HTTP2")]).await;
    for i in 0..5 {
        let r = env.get("s.example.com", &format!("/h2/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["version"], "HTTP/2.0");
        assert_eq!(r.upstream_path(), format!("/h2/{i}"));
    }
    assert_eq!(b.connections(), 1, "one shared HTTP/2 connection");
}

/// A request the client gives up on (HTTP/2 stream reset) must not keep the connection
/// counted busy: the keep-alive idle timer still closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_h2_stream_does_not_pin_the_connection() {
    let (env, _b) = env(&[("keep-alive", "1")], &[]).await;
    let tcp = TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let request = Request::builder()
        .uri("http://s.example.com/slow")
        .header("x-delay-ms", "1000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // Give up after 200 ms: the stream is reset.
    let given_up =
        tokio::time::timeout(Duration::from_millis(200), sender.send_request(request)).await;
    assert!(given_up.is_err());
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "the idle HTTP/2 connection was not closed (in-flight count leaked?)"
    );
    assert!(start.elapsed() < Duration::from_secs(4));
    // Counted as nginx counts a request whose client went away.
    let text = env.metrics_text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("nginx_ingress_controller_requests{")
                && l.contains("status=\"499\"")
                && l.ends_with(" 1")),
        "{text}"
    );
}

/// HTTP/2 connections are retired too: after `keep-alive-requests` streams a GOAWAY, and the
/// connection ends once its streams are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_retires_http2_connections() {
    let (env, _b) = env(&[("keep-alive-requests", "3")], &[]).await;
    let tcp = TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    for i in 1..=3 {
        sender.ready().await.unwrap();
        let request = Request::builder()
            .uri(format!("http://{}/", env.http))
            .header("host", "s.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = Resp::read(sender.send_request(request).await.unwrap()).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the connection ended after the third stream")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keepalive_requests_and_connections() {
    // At most 3 requests per upstream connection: 7 in a row take 3 connections.
    let (limited, b) = env(&[("upstream-keepalive-requests", "3")], &[]).await;
    for _ in 0..7 {
        assert_eq!(
            limited.get("s.example.com", "/").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(b.connections(), 3);
    // No kept-alive connections at all: one per request, as nginx without `keepalive`.
    let (unpooled, b) = env(&[("upstream-keepalive-connections", "0")], &[]).await;
    for _ in 0..4 {
        assert_eq!(
            unpooled.get("s.example.com", "/").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(b.connections(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keepalive_timeout_closes_idle_upstream_connections() {
    let (env, b) = env(&[("upstream-keepalive-timeout", "2")], &[]).await;
    assert_eq!(env.get("s.example.com", "/").await.status, StatusCode::OK);
    assert_eq!(env.get("s.example.com", "/").await.status, StatusCode::OK);
    assert_eq!(b.connections(), 1, "kept alive between requests");
    // Idle past the timeout (swept once a second): the next request needs a new one.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    assert_eq!(env.get("s.example.com", "/").await.status, StatusCode::OK);
    assert_eq!(b.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keepalive_time_retires_old_upstream_connections() {
    let (env, b) = env(&[("upstream-keepalive-time", "2s")], &[]).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3600) {
        assert_eq!(env.get("s.example.com", "/").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Busy all along (never idle for the keep-alive timeout), yet not kept past 2 s.
    let opened = b.connections();
    assert!((2..=3).contains(&opened), "{opened} connections in 3.6 s");
}

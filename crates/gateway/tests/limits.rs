//! Admission: request rates per client and per Ingress, concurrent requests per client,
//! source ranges and the request body size.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{path, raw_exchange, rule, send_with, statuses, Backend, Env, Manifests};
use http::{Method, StatusCode};

fn manifests(backend: &Backend, annotations: &[(&str, &str)]) -> Manifests {
    let mut m = Manifests::new();
    m.service("web", &[backend.addr]).ingress(
        "web",
        annotations,
        &[rule(
            Some("limit.example.com"),
            &[path("/", "Prefix", "web")],
        )],
        "",
    );
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_rps_admits_the_burst_per_client() {
    let b = Backend::echo("web").await;
    // burst = 1 x 10: eleven at once, as nginx's `burst=10 nodelay`; refills one a second.
    let env = Env::start(&manifests(
        &b,
        &[("limit-rps", "1"), ("limit-burst-multiplier", "10")],
    ))
    .await;
    let start = Instant::now();
    let mut codes = Vec::new();
    for _ in 0..15 {
        codes.push(env.get("limit.example.com", "/").await.status.as_u16());
    }
    let took = start.elapsed();
    let ok = codes.iter().filter(|c| **c == 200).count();
    let limited = codes.iter().filter(|c| **c == 503).count();
    assert_eq!(ok + limited, 15, "{codes:?}");
    if took < Duration::from_millis(900) {
        assert_eq!((ok, limited), (11, 4), "{codes:?}");
    } else {
        // A slow machine: at most one more token came in each second.
        let refilled = took.as_secs() as usize + 1;
        assert!((11..=11 + refilled).contains(&ok), "{codes:?} in {took:?}");
    }
    // The first eleven, then the refusals.
    assert!(codes[..11].iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(b.hits(), ok);

    // Another client address has a bucket of its own.
    let other = Env::client_from("127.0.0.2".parse().unwrap());
    let r = send_with(
        &other,
        env.http,
        Method::GET,
        "limit.example.com",
        "/",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_rpm_admits_its_burst_then_refuses() {
    let b = Backend::echo("web").await;
    // burst = 2 x 1: three at once; the next token comes only after 30 s.
    let env = Env::start(&manifests(
        &b,
        &[("limit-rpm", "2"), ("limit-burst-multiplier", "1")],
    ))
    .await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(env.get("limit.example.com", "/").await.status.as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 503, 503]);
    assert_eq!(b.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_wide_rate_counts_every_client() {
    let b = Backend::echo("web").await;
    let env = Env::start(&manifests(
        &b,
        &[("rvs.io/limit-rps", "1"), ("rvs.io/limit-burst", "4")],
    ))
    .await;
    let mut ok = 0;
    let mut limited = 0;
    let start = Instant::now();
    for i in 0..12u8 {
        // Four client addresses, three requests each.
        let client = Env::client_from(format!("127.0.0.{}", 2 + i % 4).parse().unwrap());
        let r = send_with(
            &client,
            env.http,
            Method::GET,
            "limit.example.com",
            "/",
            &[],
            Bytes::new(),
        )
        .await;
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let refilled = start.elapsed().as_secs() as usize;
    assert!((4..=4 + refilled).contains(&ok), "{ok} admitted");
    assert_eq!(ok + limited, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_connections_counts_requests_in_flight() {
    let b = Backend::echo("slow").await;
    let env = Env::start(&manifests(&b, &[("limit-connections", "2")])).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let client = Env::client_from("127.0.0.1".parse().unwrap());
        let addr = env.http;
        tasks.push(tokio::spawn(async move {
            send_with(
                &client,
                addr,
                Method::GET,
                "limit.example.com",
                "/",
                &[("x-delay-ms", "800")],
                Bytes::new(),
            )
            .await
            .status
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap().as_u16());
    }
    codes.sort();
    assert_eq!(codes, [200, 200, 503, 503, 503]);
    // The slots are given back.
    let r = env.get("limit.example.com", "/").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_source_range() {
    let b = Backend::echo("web").await;
    let env = Env::start(&manifests(&b, &[("allowlist-source-range", "10.0.0.0/8")])).await;
    let r = env.get("limit.example.com", "/").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(b.hits(), 0);
    // The older name, as ingress-nginx still reads it.
    let env = Env::start(&manifests(&b, &[("whitelist-source-range", "10.0.0.0/8")])).await;
    let r = env.get("limit.example.com", "/").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(b.hits(), 0);

    let env = Env::start(&manifests(
        &b,
        &[("allowlist-source-range", "127.0.0.1/32")],
    ))
    .await;
    assert_eq!(
        env.get("limit.example.com", "/").await.status,
        StatusCode::OK
    );
    let other = Env::client_from("127.0.0.2".parse().unwrap());
    let r = send_with(
        &other,
        env.http,
        Method::GET,
        "limit.example.com",
        "/",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let env = Env::start(&manifests(&b, &[("denylist-source-range", "127.0.0.2")])).await;
    assert_eq!(
        env.get("limit.example.com", "/").await.status,
        StatusCode::OK
    );
    let r = send_with(
        &other,
        env.http,
        Method::GET,
        "limit.example.com",
        "/",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_body_size() {
    let b = Backend::echo("web").await;
    let env = Env::start(&manifests(&b, &[("proxy-body-size", "1k")])).await;
    let small = vec![b'a'; 1000];
    let r = env
        .send(Method::POST, "limit.example.com", "/", &[], small)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["body_len"], 1000);

    // Content-Length over the limit: refused before anything goes upstream.
    let big = vec![b'a'; 2048];
    let r = env
        .send(Method::POST, "limit.example.com", "/", &[], big)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(b.hits(), 1);

    // Chunked: counted as it streams.
    let chunk = "a".repeat(2048);
    let request = format!(
        "POST / HTTP/1.1\r\nHost: limit.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let raw = raw_exchange(env.http, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(statuses(&raw), [413], "{raw}");
    // A small chunked body passes.
    let request = "POST / HTTP/1.1\r\nHost: limit.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let raw = raw_exchange(env.http, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(statuses(&raw), [200], "{raw}");
    assert!(raw.contains("\"body_len\":5"), "{raw}");
}

/// Routing sees the normalised path, as nginx's locations see `$uri`: encodings, doubled
/// slashes and dot-segments cannot reach `/admin` through the open `/` route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_path_cannot_be_reached_by_another_spelling() {
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    m.service("web", &[b.addr])
        .ingress(
            "open",
            &[],
            &[rule(
                Some("limit.example.com"),
                &[path("/", "Prefix", "web")],
            )],
            "",
        )
        .ingress(
            "admin",
            &[("allowlist-source-range", "10.0.0.0/8")],
            &[rule(
                Some("limit.example.com"),
                &[path("/admin", "Prefix", "web")],
            )],
            "",
        );
    let env = Env::start(&m).await;
    assert_eq!(
        env.get("limit.example.com", "/public").await.status,
        StatusCode::OK
    );
    for spelling in ["/admin", "/%61dmin", "//admin", "/x/../admin/y", "/./admin"] {
        let r = env.get("limit.example.com", spelling).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{spelling}");
    }
    let raw = raw_exchange(
        env.http,
        b"GET /../admin HTTP/1.1\r\nHost: limit.example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(statuses(&raw), [400], "{raw}");
    assert_eq!(b.hits(), 1, "only /public reached the backend");
}

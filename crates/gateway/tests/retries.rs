//! `proxy-next-upstream` as the gateway applies it: connect errors are retried (before any
//! byte of the request went out, whatever the method), send errors and retryable statuses
//! only for idempotent methods (or with `non_idempotent`) and never once a request body was
//! streamed; `proxy-next-upstream-tries`; `off`; and the read and connect timeouts.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{dead_endpoint, path, rule, Backend, Closer, EchoOptions, Env, Manifests};
use http::{Method, StatusCode};

async fn env_with(endpoints: &[SocketAddr], annotations: &[(&str, &str)]) -> Env {
    let mut m = Manifests::new();
    m.service("svc", endpoints).ingress(
        "retry",
        annotations,
        &[rule(
            Some("retry.example.com"),
            &[path("/", "Prefix", "svc")],
        )],
        "",
    );
    Env::start(&m).await
}

/// Status counts of `n` requests.
async fn run(env: &Env, n: usize, method: Method, body: &'static [u8]) -> (usize, usize, Vec<u16>) {
    let mut ok = 0;
    let mut failed = 0;
    let mut codes = Vec::new();
    for _ in 0..n {
        let r = env
            .send(
                method.clone(),
                "retry.example.com",
                "/",
                &[],
                Bytes::from_static(body),
            )
            .await;
        codes.push(r.status.as_u16());
        if r.status == StatusCode::OK {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed, codes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_retried_for_every_method() {
    let live = Backend::echo("live").await;
    let dead = dead_endpoint().await;
    let env = env_with(&[dead, live.addr], &[]).await;
    let (ok, _, codes) = run(&env, 10, Method::GET, b"").await;
    assert_eq!(ok, 10, "GET: {codes:?}");
    // Nothing of a POST went out when the connection was refused: it is retried too.
    let (ok, _, codes) = run(&env, 10, Method::POST, b"payload").await;
    assert_eq!(ok, 10, "POST: {codes:?}");
    assert_eq!(live.hits(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_errors_are_retried_only_when_idempotent() {
    let live = Backend::echo("live").await;
    let closer = Closer::start().await;
    let env = env_with(&[closer.addr, live.addr], &[]).await;
    // GET: the connection closed without a response (error) -> the next endpoint.
    let (ok, _, codes) = run(&env, 10, Method::GET, b"").await;
    assert_eq!(ok, 10, "GET: {codes:?}");
    assert!(closer.accepted.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // POST was sent: never retried. Round robin alternates, so every second one fails.
    let (ok, failed, codes) = run(&env, 10, Method::POST, b"payload").await;
    assert_eq!((ok, failed), (5, 5), "POST: {codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 502), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_502_retry_and_non_idempotent() {
    let good = Backend::echo("good").await;
    let bad = Backend::with_status("bad", 502).await;
    let endpoints = [bad.addr, good.addr];
    let env = env_with(
        &endpoints,
        &[("proxy-next-upstream", "error timeout http_502")],
    )
    .await;
    let (ok, _, codes) = run(&env, 10, Method::GET, b"").await;
    assert_eq!(ok, 10, "GET retried after 502: {codes:?}");
    assert!(bad.hits() >= 5, "the 502 endpoint was tried");
    // POST is not idempotent: the 502 is the answer.
    let (ok, failed, codes) = run(&env, 10, Method::POST, b"").await;
    assert_eq!((ok, failed), (5, 5), "POST: {codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 502), "{codes:?}");

    // With non_idempotent, a POST without a body is retried...
    let env = env_with(
        &endpoints,
        &[(
            "proxy-next-upstream",
            "error timeout http_502 non_idempotent",
        )],
    )
    .await;
    let (ok, _, codes) = run(&env, 10, Method::POST, b"").await;
    assert_eq!(ok, 10, "POST with non_idempotent: {codes:?}");
    // ... one whose body was streamed is not.
    let (ok, failed, codes) = run(&env, 10, Method::POST, b"body").await;
    assert_eq!((ok, failed), (5, 5), "POST with a body: {codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_retry_goes_to_another_endpoint() {
    let a = Backend::with_status("a", 503).await;
    let b = Backend::echo("b").await;
    let c = Backend::echo("c").await;
    let env = env_with(
        &[a.addr, b.addr, c.addr],
        &[("proxy-next-upstream", "error timeout http_503")],
    )
    .await;
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..12 {
        let r = env.get("retry.example.com", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        *served.entry(r.backend()).or_insert(0) += 1;
    }
    assert!(
        a.hits() >= 3,
        "the 503 endpoint got its turns: {}",
        a.hits()
    );
    assert_eq!(served.get("a"), None);
    assert!(
        served.contains_key("b") && served.contains_key("c"),
        "{served:?}"
    );

    // Without http_503 the 503 is passed on.
    let env = env_with(&[a.addr, b.addr], &[]).await;
    let (ok, failed, _) = run(&env, 10, Method::GET, b"").await;
    assert_eq!((ok, failed), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_failing_gives_the_last_answer() {
    let a = Backend::with_status("a", 503).await;
    let b = Backend::with_status("b", 503).await;
    let env = env_with(
        &[a.addr, b.addr],
        &[("proxy-next-upstream", "error timeout http_503")],
    )
    .await;
    let r = env.get("retry.example.com", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.hits() + b.hits(), 2, "each endpoint once");

    let dead1 = dead_endpoint().await;
    let dead2 = dead_endpoint().await;
    let env = env_with(&[dead1, dead2], &[]).await;
    let r = env.get("retry.example.com", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tries_one_and_off_do_not_retry() {
    let live = Backend::echo("live").await;
    let dead = dead_endpoint().await;
    for annotations in [
        &[("proxy-next-upstream-tries", "1")][..],
        &[("proxy-next-upstream", "off")][..],
    ] {
        let env = env_with(&[dead, live.addr], annotations).await;
        let (ok, failed, codes) = run(&env, 10, Method::GET, b"").await;
        assert_eq!((ok, failed), (5, 5), "{annotations:?}: {codes:?}");
        assert!(codes.iter().all(|c| *c == 200 || *c == 502), "{codes:?}");
    }
    // Tries 2 of 3 dead endpoints: 502; tries 3 (default) finds the live one.
    let d2 = dead_endpoint().await;
    let env = env_with(
        &[dead, d2, live.addr],
        &[("proxy-next-upstream-tries", "2")],
    )
    .await;
    let (ok, failed, _) = run(&env, 9, Method::GET, b"").await;
    assert_eq!(ok + failed, 9);
    assert!(failed >= 1 && ok >= 1, "some fail with two tries: {ok} ok");
    let env = env_with(&[dead, d2, live.addr], &[]).await;
    let (ok, _, _) = run(&env, 9, Method::GET, b"").await;
    assert_eq!(ok, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_is_504() {
    let slow = Backend::start(
        "slow",
        EchoOptions {
            delay: Duration::from_secs(3),
            ..EchoOptions::default()
        },
    )
    .await;
    let env = env_with(&[slow.addr], &[("proxy-read-timeout", "1")]).await;
    let start = Instant::now();
    let r = env.get("retry.example.com", "/").await;
    let took = start.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "504 after {took:?}"
    );
}

/// A listener whose accept queue is full: further connects get no answer (SYNs dropped),
/// so a connect hangs. None if this kernel does not behave so.
fn hanging_endpoint() -> Option<(SocketAddr, Vec<std::net::TcpStream>, socket2::Socket)> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .ok()?;
    socket.listen(0).ok()?;
    let addr = socket.local_addr().ok()?.as_socket()?;
    let mut held = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => return Some((addr, held, socket)),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_retried_then_504() {
    let Some((hanging, _held, _socket)) = hanging_endpoint() else {
        eprintln!("skipped: cannot make a connect hang on this machine's loopback");
        return;
    };
    let live = Backend::echo("live").await;
    // A hanging endpoint alone: 504 after the connect timeout.
    let env = env_with(&[hanging], &[("proxy-connect-timeout", "1")]).await;
    let start = Instant::now();
    let r = env.get("retry.example.com", "/").await;
    let took = start.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "504 after {took:?}"
    );
    // With a live endpoint beside it, the request goes there after the timeout; nothing was
    // sent to the hanging one, so a POST is retried too (as nginx does).
    let env = env_with(&[hanging, live.addr], &[("proxy-connect-timeout", "1")]).await;
    let (ok, _, codes) = run(&env, 2, Method::GET, b"").await;
    assert_eq!(ok, 2, "GET: {codes:?}");
    let (ok, _, codes) = run(&env, 2, Method::POST, b"payload").await;
    assert_eq!(ok, 2, "POST: {codes:?}");
}

/// A backend whose keep-alive is shorter than the gateway's: it answers the first request
/// on each connection, then drops the connection when the next request arrives (as a
/// server does whose idle timeout fired just then). Requests to its only endpoint still
/// succeed: a request that failed on a reused connection goes again on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_kept_alive_connection_is_retried_on_a_new_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                // The next request: closed unanswered.
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    let env = env_with(&[addr], &[]).await;
    for i in 0..5 {
        let r = env.get("retry.example.com", &format!("/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 5);
}

/// `proxy-read-timeout` counts from the end of the upload, not from its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_is_not_cut_by_the_read_timeout() {
    let b = Backend::echo("slow").await;
    let env = env_with(&[b.addr], &[("proxy-read-timeout", "1")]).await;
    // 2.5 s of upload in 10 chunks, each well within the timeout.
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let frame = hyper::body::Frame::data(Bytes::from_static(&[b'x'; 100]));
        Some((Ok::<_, std::convert::Infallible>(frame), i + 1))
    });
    let body = http_body_util::StreamBody::new(chunks);
    let stream = tokio::net::TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post("/upload")
        .header("host", "retry.example.com")
        .body(body)
        .unwrap();
    let started = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_504_retry() {
    let good = Backend::echo("good").await;
    let bad = Backend::with_status("bad", 504).await;
    let env = env_with(
        &[bad.addr, good.addr],
        &[("proxy-next-upstream", "error timeout http_504")],
    )
    .await;
    let (ok, _, codes) = run(&env, 10, Method::GET, b"").await;
    assert_eq!(ok, 10, "GET retried after 504: {codes:?}");
    assert!(bad.hits() >= 5, "the 504 endpoint was tried");
    // Without http_504 the 504 is passed on.
    let env = env_with(&[bad.addr, good.addr], &[]).await;
    let (ok, failed, _) = run(&env, 10, Method::GET, b"").await;
    assert_eq!((ok, failed), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_non_idempotent_from_the_configmap() {
    let good = Backend::echo("good").await;
    let bad = Backend::with_status("bad", 502).await;
    let mut m = Manifests::new();
    m.config("retry-non-idempotent", "true")
        .service("svc", &[bad.addr, good.addr])
        .ingress(
            "retry",
            &[("proxy-next-upstream", "error timeout http_502")],
            &[rule(
                Some("retry.example.com"),
                &[path("/", "Prefix", "svc")],
            )],
            "",
        );
    let env = Env::start(&m).await;
    let (ok, _, codes) = run(&env, 10, Method::POST, b"").await;
    assert_eq!(ok, 10, "POST retried with retry-non-idempotent: {codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_upstream_timeout_bounds_the_retries() {
    let slow = |name| {
        Backend::start(
            name,
            EchoOptions {
                delay: Duration::from_millis(2500),
                ..EchoOptions::default()
            },
        )
    };
    let (a, b) = (slow("a").await, slow("b").await);
    let timed = |env: Env| async move {
        let start = Instant::now();
        let status = env.get("retry.example.com", "/").await.status;
        (status, start.elapsed())
    };
    // Read timeout 1 s, up to 3 tries: both endpoints are tried, ~2 s.
    let env = env_with(&[a.addr, b.addr], &[("proxy-read-timeout", "1")]).await;
    let (status, took) = timed(env).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(took >= Duration::from_millis(1900), "two tries: {took:?}");
    // proxy-next-upstream-timeout 1 s: the first try used it up, no second.
    let env = env_with(
        &[a.addr, b.addr],
        &[
            ("proxy-read-timeout", "1"),
            ("proxy-next-upstream-timeout", "1"),
        ],
    )
    .await;
    let (status, took) = timed(env).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1800),
        "one try: {took:?}"
    );
}

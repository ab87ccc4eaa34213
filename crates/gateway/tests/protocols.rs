//! Client protocols: HTTP/1.1 keep-alive (and upstream connection reuse), HTTP/2 over TLS by
//! ALPN, h2c with prior knowledge, certificates by SNI, the ssl-redirect, WebSocket.

mod common;

use bytes::Bytes;
use common::{certificate, path, rule, tls_get, Backend, EchoOptions, Env, Manifests, Resp};
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_and_upstream_reuse() {
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    m.service("web", &[b.addr]).ingress(
        "web",
        &[],
        &[rule(Some("ka.example.com"), &[path("/", "Prefix", "web")])],
        "",
    );
    let env = Env::start(&m).await;

    // One client connection, many requests.
    let tcp = TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for i in 0..50 {
        sender.ready().await.unwrap();
        let request = Request::builder()
            .uri(format!("/item/{i}"))
            .header("host", "ka.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = Resp::read(sender.send_request(request).await.unwrap()).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        assert_eq!(r.upstream_path(), format!("/item/{i}"));
        assert!(r.header("connection").is_none_or(|c| c != "close"));
    }
    assert!(!conn.is_finished(), "the client connection stayed open");
    assert_eq!(env.gateway().client_connections(), 1);
    assert_eq!(b.hits(), 50);
    // Sequential requests reuse one kept-alive upstream connection.
    assert!(
        b.connections() <= 2,
        "the backend saw {} connections for 50 sequential requests",
        b.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_on_the_plain_port() {
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    m.service("web", &[b.addr]).ingress(
        "web",
        &[],
        &[rule(Some("h2c.example.com"), &[path("/", "Prefix", "web")])],
        "",
    );
    let env = Env::start(&m).await;
    let tcp = TcpStream::connect(env.http).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Concurrent streams on the one connection.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let request = Request::builder()
                .uri(format!("http://h2c.example.com/s/{i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            Resp::read(sender.send_request(request).await.unwrap()).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.version, Version::HTTP_2);
        assert_eq!(r.upstream_path(), format!("/s/{i}"));
        assert_eq!(
            r.upstream_header("x-forwarded-proto").as_deref(),
            Some("http")
        );
        // The upstream is HTTP/1.1 with the request's authority as Host.
        assert_eq!(
            r.upstream_header("host").as_deref(),
            Some("h2c.example.com")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sni_alpn_and_ssl_redirect() {
    let b = Backend::echo("secure").await;
    let (cert, key, der) = certificate(&["secure.example.com"]);
    let (wcert, wkey, wder) = certificate(&["*.wild.example.com"]);
    let mut m = Manifests::new();
    m.service("secure", &[b.addr])
        .tls_secret("secure-tls", &cert, &key)
        .tls_secret("wild-tls", &wcert, &wkey)
        .ingress(
            "secure",
            &[],
            &[
                rule(
                    Some("secure.example.com"),
                    &[
                        path("/", "Prefix", "secure"),
                        path("/.well-known/acme-challenge", "Prefix", "secure"),
                    ],
                ),
                rule(Some("*.wild.example.com"), &[path("/", "Prefix", "secure")]),
                rule(Some("plain.example.com"), &[path("/", "Prefix", "secure")]),
            ],
            "  tls:\n    - {hosts: [secure.example.com], secretName: secure-tls}\n    - {hosts: [\"*.wild.example.com\"], secretName: wild-tls}\n",
        );
    let env = Env::start(&m).await;

    // h2 by ALPN, the Secret's certificate by SNI.
    let t = tls_get(
        env.https,
        "secure.example.com",
        &[b"h2", b"http/1.1"],
        "secure.example.com",
        "/x",
    )
    .await;
    assert_eq!(t.alpn.as_deref(), Some(&b"h2"[..]));
    assert!(t.certificate == der, "the SNI's certificate");
    assert_eq!(t.response.status, StatusCode::OK);
    assert_eq!(t.response.version, Version::HTTP_2);
    assert_eq!(t.response.backend(), "secure");
    assert_eq!(
        t.response.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        t.response.header("strict-transport-security").as_deref(),
        Some("max-age=31536000; includeSubDomains"),
        "ingress-nginx's hsts defaults"
    );

    // HTTP/1.1 when the client offers only that.
    let t = tls_get(
        env.https,
        "secure.example.com",
        &[b"http/1.1"],
        "secure.example.com",
        "/y",
    )
    .await;
    assert_eq!(t.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(t.response.version, Version::HTTP_11);
    assert_eq!(t.response.status, StatusCode::OK);

    // The wildcard Secret for one label under it.
    let t = tls_get(
        env.https,
        "a.wild.example.com",
        &[b"h2"],
        "a.wild.example.com",
        "/",
    )
    .await;
    assert!(t.certificate == wder, "the wildcard certificate");
    assert_eq!(t.response.status, StatusCode::OK);

    // An unknown name gets the default certificate, neither of the Secrets'.
    let t = tls_get(
        env.https,
        "unknown.example.org",
        &[b"h2"],
        "plain.example.com",
        "/",
    )
    .await;
    assert!(
        t.certificate != der && t.certificate != wder,
        "default certificate"
    );
    assert_eq!(t.response.status, StatusCode::OK);

    // Plain HTTP to a TLS host: 308 to https, path and query kept.
    let r = env.get("secure.example.com:8080", "/a/b?c=d").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://secure.example.com/a/b?c=d")
    );
    // ... but not to a host without TLS.
    let r = env.get("plain.example.com", "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("strict-transport-security").is_none());
    // ... nor for an ACME HTTP-01 challenge (`no-tls-redirect-locations`' default).
    let r = env
        .get("secure.example.com", "/.well-known/acme-challenge/token")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(b.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_redirect_can_be_turned_off() {
    let b = Backend::echo("secure").await;
    let (cert, key, _) = certificate(&["noredirect.example.com"]);
    let mut m = Manifests::new();
    m.service("secure", &[b.addr])
        .tls_secret("tls", &cert, &key)
        .ingress(
            "secure",
            &[("ssl-redirect", "false")],
            &[rule(
                Some("noredirect.example.com"),
                &[path("/", "Prefix", "secure")],
            )],
            "  tls:\n    - {hosts: [noredirect.example.com], secretName: tls}\n",
        );
    let env = Env::start(&m).await;
    assert_eq!(
        env.get("noredirect.example.com", "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_both_ways_over_http1_and_h2c() {
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    m.service("web", &[b.addr]).ingress(
        "web",
        &[("proxy-body-size", "0")],
        &[rule(Some("big.example.com"), &[path("/", "Prefix", "web")])],
        "",
    );
    let env = Env::start(&m).await;
    let up = 3 << 20;
    let down = 5 << 20;

    // HTTP/1.1
    let r = env
        .send(Method::POST, "big.example.com", "/up", &[], vec![b'u'; up])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["body_len"], up);
    let size = down.to_string();
    let r = env
        .send(
            Method::GET,
            "big.example.com",
            "/down",
            &[("x-body-size", &size)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), down);
    assert!(r.body.iter().all(|b| *b == b'x'));

    // h2c
    let tcp = TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .method(Method::POST)
        .uri("http://big.example.com/up")
        .body(Full::new(Bytes::from(vec![b'u'; up])))
        .unwrap();
    let r = Resp::read(sender.send_request(request).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["body_len"], up);
    let request = Request::builder()
        .uri("http://big.example.com/down")
        .header("x-body-size", &size)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = Resp::read(sender.send_request(request).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), down);

    // HEAD: headers only.
    let r = env
        .send(
            Method::HEAD,
            "big.example.com",
            "/down",
            &[("x-body-size", "10")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length").as_deref(), Some("10"));
}

/// A WebSocket server that echoes text and binary messages.
async fn websocket_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echo() {
    let ws_addr = websocket_backend().await;
    let mut m = Manifests::new();
    m.service("ws", &[ws_addr]).ingress(
        "ws",
        &[],
        &[rule(Some("ws.example.com"), &[path("/", "Prefix", "ws")])],
        "",
    );
    let env = Env::start(&m).await;
    let tcp = TcpStream::connect(env.http).await.unwrap();
    let (mut ws, response) = tokio::time::timeout(
        common::CALL_TIMEOUT,
        tokio_tungstenite::client_async("ws://ws.example.com/chat", tcp),
    )
    .await
    .expect("handshake in time")
    .expect("WebSocket handshake through the gateway");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(common::CALL_TIMEOUT, ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_http2_false_offers_http1_only_from_the_next_connection() {
    let b = Backend::echo("secure").await;
    let (cert, key, _) = certificate(&["secure.example.com"]);
    let manifests = |use_http2: &str| {
        let mut m = Manifests::new();
        m.config("use-http2", use_http2)
            .service("secure", &[b.addr])
            .tls_secret("secure-tls", &cert, &key)
            .ingress(
                "secure",
                &[],
                &[rule(
                    Some("secure.example.com"),
                    &[path("/", "Prefix", "secure")],
                )],
                "  tls:\n    - {hosts: [secure.example.com], secretName: secure-tls}\n",
            );
        m
    };
    let mut env = Env::start(&manifests("true")).await;
    let alpn = |env: &Env| {
        let https = env.https;
        async move {
            let t = tls_get(
                https,
                "secure.example.com",
                &[b"h2", b"http/1.1"],
                "secure.example.com",
                "/",
            )
            .await;
            assert_eq!(t.response.status, StatusCode::OK);
            t.alpn
        }
    };
    assert_eq!(alpn(&env).await.as_deref(), Some(&b"h2"[..]));
    // A ConfigMap change, no restart: ingress-nginx reloads with `listen 443 ssl` alone.
    assert!(env.apply(&manifests("false")).is_empty());
    assert_eq!(alpn(&env).await.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_protocol_https_and_grpcs_speak_tls_to_the_backend() {
    let b = Backend::start(
        "tls",
        EchoOptions {
            tls: true,
            ..EchoOptions::default()
        },
    )
    .await;
    for (protocol, version) in [("HTTPS", "HTTP/1.1"), ("GRPCS", "HTTP/2.0")] {
        let mut m = Manifests::new();
        m.service("tls", &[b.addr]).ingress(
            "tls",
            &[("backend-protocol", protocol)],
            &[rule(Some("tls.example.com"), &[path("/", "Prefix", "tls")])],
            "",
        );
        let env = Env::start(&m).await;
        let r = env.get("tls.example.com", "/t").await;
        assert_eq!(r.status, StatusCode::OK, "{protocol}");
        assert_eq!(r.backend(), "tls", "{protocol}");
        let echoed: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(echoed["version"], version, "{protocol}: {echoed}");
    }
    // Plain text to a TLS backend fails: the TLS above was real.
    let mut m = Manifests::new();
    m.service("tls", &[b.addr]).ingress(
        "tls",
        &[],
        &[rule(Some("tls.example.com"), &[path("/", "Prefix", "tls")])],
        "",
    );
    let env = Env::start(&m).await;
    assert_eq!(
        env.get("tls.example.com", "/t").await.status,
        StatusCode::BAD_GATEWAY
    );
}

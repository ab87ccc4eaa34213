//! Request headers the backend receives: X-Request-ID, X-Forwarded-*, X-Real-IP, Host, and
//! hop-by-hop headers dropped.

mod common;

use bytes::Bytes;
use common::{send_with, tls_get, Backend, Env};
use http::Method;

async fn env(config: &[(&str, &str)]) -> (Env, Backend) {
    common::single_route("h.example.com", config, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_and_forwarded_headers() {
    let (env, _b) = env(&[]).await;
    let r = env.get("h.example.com:8080", "/x").await;
    let id = r.upstream_header("x-request-id").expect("X-Request-ID");
    assert_eq!(id.len(), 32, "{id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
    let other = env.get("h.example.com", "/x").await;
    assert_ne!(
        other.upstream_header("x-request-id").unwrap(),
        id,
        "a new ID each request"
    );
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("h.example.com:8080")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-port"),
        Some(env.http.port().to_string())
    );
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some("h.example.com:8080")
    );

    // A client's request ID goes through unchanged.
    let r = env
        .send(
            Method::GET,
            "h.example.com",
            "/",
            &[("x-request-id", "abc-123")],
            Vec::new(),
        )
        .await;
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("abc-123")
    );

    // A client's X-Forwarded-* are not trusted (use-forwarded-headers is off by default).
    let from = Env::client_from("127.0.0.3".parse().unwrap());
    let r = send_with(
        &from,
        env.http,
        Method::GET,
        "h.example.com",
        "/",
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example.com"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.3")
    );
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("127.0.0.3"));
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("h.example.com")
    );

    // Over TLS the scheme is https.
    let t = tls_get(
        env.https,
        "h.example.com",
        &[b"http/1.1"],
        "h.example.com",
        "/",
    )
    .await;
    assert_eq!(
        t.response.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_trusted_when_configured() {
    let (env, _b) = env(&[
        ("use-forwarded-headers", "true"),
        ("compute-full-forwarded-for", "true"),
        ("generate-request-id", "false"),
    ])
    .await;
    let r = env
        .send(
            Method::GET,
            "h.example.com",
            "/",
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-proto", "https"),
            ],
            Vec::new(),
        )
        .await;
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("1.2.3.4, 127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    // The real client is the load balancer's: nginx's real_ip over X-Forwarded-For.
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("1.2.3.4"));
    assert_eq!(
        r.upstream_header("x-forwarded-scheme").as_deref(),
        Some("https")
    );
    assert_eq!(r.upstream_header("x-scheme").as_deref(), Some("https"));
    assert_eq!(r.upstream_header("x-request-id"), None);
}

/// Behind a load balancer that terminates TLS (use-forwarded-headers): its X-Forwarded-Proto
/// decides https redirects and its X-Forwarded-For the client that allowlists and limits see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_load_balancer_decides_scheme_and_client() {
    let (env, b) = common::single_route(
        "h.example.com",
        &[("use-forwarded-headers", "true")],
        &[
            ("force-ssl-redirect", "true"),
            ("allowlist-source-range", "1.2.3.0/24"),
        ],
    )
    .await;
    let send = |proto: &'static str, from: &'static str| {
        let env = &env;
        async move {
            let headers = [("x-forwarded-proto", proto), ("x-forwarded-for", from)];
            env.send(Method::GET, "h.example.com", "/p", &headers, Vec::new())
                .await
        }
    };
    let r = send("https", "1.2.3.4, 10.0.0.1").await;
    assert_eq!(r.status, http::StatusCode::OK, "TLS ended at the balancer");
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("1.2.3.4"));
    let r = send("http", "1.2.3.4").await;
    assert_eq!(r.status, http::StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://h.example.com/p")
    );
    let r = send("https", "5.6.7.8").await;
    assert_eq!(
        r.status,
        http::StatusCode::FORBIDDEN,
        "not in the allowlist"
    );
    assert_eq!(b.hits(), 1);

    let r = send("https", "unknown, 1.2.3.9:4431").await;
    assert_eq!(
        r.status,
        http::StatusCode::OK,
        "nginx's walk from the right"
    );
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("1.2.3.9"));
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("1.2.3.9"),
        "ingress-nginx sends $remote_addr"
    );

    // Not trusted (the default): the socket decides, whatever the client claims.
    let (env, b) = common::single_route(
        "h.example.com",
        &[],
        &[
            ("force-ssl-redirect", "true"),
            ("allowlist-source-range", "1.2.3.0/24"),
        ],
    )
    .await;
    for proto in ["https", "http"] {
        let r = env
            .send(
                Method::GET,
                "h.example.com",
                "/p",
                &[("x-forwarded-proto", proto), ("x-forwarded-for", "1.2.3.4")],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, http::StatusCode::PERMANENT_REDIRECT, "{proto}");
    }
    // Past the redirect (its own Ingress path would be needed): the allowlist alone.
    let (env, b2) = common::single_route(
        "h.example.com",
        &[],
        &[("allowlist-source-range", "1.2.3.0/24")],
    )
    .await;
    let r = env
        .send(
            Method::GET,
            "h.example.com",
            "/p",
            &[("x-forwarded-for", "1.2.3.4")],
            Vec::new(),
        )
        .await;
    assert_eq!(
        r.status,
        http::StatusCode::FORBIDDEN,
        "a claimed address opens nothing"
    );
    assert_eq!(b.hits() + b2.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped() {
    let (env, _b) = env(&[]).await;
    let r = env
        .send(
            Method::GET,
            "h.example.com",
            "/",
            &[
                ("connection", "x-private, keep-alive"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9v"),
                ("x-kept", "yes"),
            ],
            Vec::new(),
        )
        .await;
    assert_eq!(r.upstream_header("x-private"), None);
    assert_eq!(r.upstream_header("keep-alive"), None);
    assert_eq!(r.upstream_header("proxy-authorization"), None);
    assert_eq!(r.upstream_header("x-kept").as_deref(), Some("yes"));
}

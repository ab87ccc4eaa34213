//! Choosing the backend: canaries (header, header value, cookie, weight and their
//! precedence), cookie affinity, round robin.

mod common;

use std::collections::BTreeMap;

use common::{path, rule, Backend, Env, Manifests};
use http::{Method, StatusCode};

/// `main` and `canary` Services; per host a main Ingress and a canary Ingress with
/// `annotations`.
async fn canary_env(hosts: &[(&str, &[(&str, &str)])]) -> (Env, Backend, Backend) {
    let main = Backend::echo("main").await;
    let canary = Backend::echo("canary").await;
    let mut m = Manifests::new();
    m.service("main", &[main.addr])
        .service("canary", &[canary.addr]);
    for (i, (host, annotations)) in hosts.iter().enumerate() {
        m.ingress(
            &format!("main-{i}"),
            &[],
            &[rule(Some(host), &[path("/", "Prefix", "main")])],
            "",
        );
        let mut with_canary = vec![("canary", "true")];
        with_canary.extend_from_slice(annotations);
        m.ingress(
            &format!("canary-{i}"),
            &with_canary,
            &[rule(Some(host), &[path("/", "Prefix", "canary")])],
            "",
        );
    }
    (Env::start(&m).await, main, canary)
}

/// Request headers of a case.
type Headers<'a> = &'a [(&'a str, &'a str)];

async fn who(env: &Env, host: &str, headers: &[(&str, &str)]) -> String {
    let r = env.send(Method::GET, host, "/", headers, Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    r.backend()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_header_cookie_and_precedence() {
    let (env, _main, _canary) = canary_env(&[
        (
            "hc.example.com",
            &[
                ("canary-by-header", "X-Canary"),
                ("canary-by-cookie", "canary_c"),
            ],
        ),
        (
            "value.example.com",
            &[
                ("canary-by-header", "X-Canary"),
                ("canary-by-header-value", "blue"),
            ],
        ),
        (
            "all.example.com",
            &[
                ("canary-by-header", "X-Canary"),
                ("canary-by-cookie", "canary_c"),
                ("canary-weight", "100"),
            ],
        ),
    ])
    .await;
    // (host, headers, expected)
    let cases: &[(&str, Headers, &str)] = &[
        ("hc.example.com", &[], "main"),
        ("hc.example.com", &[("x-canary", "always")], "canary"),
        ("hc.example.com", &[("x-canary", "never")], "main"),
        ("hc.example.com", &[("x-canary", "maybe")], "main"),
        ("hc.example.com", &[("cookie", "canary_c=always")], "canary"),
        (
            "hc.example.com",
            &[("cookie", "a=b; canary_c=always")],
            "canary",
        ),
        ("hc.example.com", &[("cookie", "canary_c=never")], "main"),
        // The header wins over the cookie.
        (
            "hc.example.com",
            &[("x-canary", "never"), ("cookie", "canary_c=always")],
            "main",
        ),
        (
            "hc.example.com",
            &[("x-canary", "always"), ("cookie", "canary_c=never")],
            "canary",
        ),
        // A header value of its own instead of `always`.
        ("value.example.com", &[("x-canary", "blue")], "canary"),
        ("value.example.com", &[("x-canary", "green")], "main"),
        ("value.example.com", &[("x-canary", "always")], "main"),
        ("value.example.com", &[], "main"),
        // Weight 100 takes everything the header and cookie leave to it.
        ("all.example.com", &[], "canary"),
        ("all.example.com", &[("x-canary", "never")], "main"),
        ("all.example.com", &[("cookie", "canary_c=never")], "main"),
        (
            "all.example.com",
            &[("x-canary", "always"), ("cookie", "canary_c=never")],
            "canary",
        ),
    ];
    let mut wrong = Vec::new();
    for (host, headers, expected) in cases {
        for _ in 0..3 {
            let got = who(&env, host, headers).await;
            if got != *expected {
                wrong.push(format!("{host} {headers:?}: {got}, expected {expected}"));
                break;
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Metrics name the canary's upstream as ingress-nginx does (namespace-service-port).
    let text = env.metrics_text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("nginx_ingress_controller_requests{")
                && l.contains("host=\"hc.example.com\"")
                && l.contains("canary=\"default-canary-80\"")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_weight_share() {
    let (env, main, canary) =
        canary_env(&[("weight.example.com", &[("canary-weight", "30")])]).await;
    let n = 1000;
    let mut tasks = Vec::new();
    // Four clients in parallel, 250 requests each.
    for _ in 0..4 {
        let client = Env::client_from("127.0.0.1".parse().unwrap());
        let addr = env.http;
        tasks.push(tokio::spawn(async move {
            let mut counts = BTreeMap::new();
            for _ in 0..n / 4 {
                let r = common::send_with(
                    &client,
                    addr,
                    Method::GET,
                    "weight.example.com",
                    "/",
                    &[],
                    Vec::new(),
                )
                .await;
                *counts.entry(r.backend()).or_insert(0usize) += 1;
            }
            counts
        }));
    }
    let mut to_canary = 0;
    for t in tasks {
        to_canary += t.await.unwrap().get("canary").copied().unwrap_or(0);
    }
    assert!(
        (200..=400).contains(&to_canary),
        "{to_canary} of {n} went to the canary (30% expected)"
    );
    assert_eq!(canary.hits(), to_canary);
    assert_eq!(main.hits(), n - to_canary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_pins_an_endpoint() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let c = Backend::echo("c").await;
    let mut m = Manifests::new();
    m.service("web", &[a.addr, b.addr, c.addr]).ingress(
        "web",
        &[("affinity", "cookie")],
        &[rule(
            Some("sticky.example.com"),
            &[path("/app", "Prefix", "web")],
        )],
        "",
    );
    let env = Env::start(&m).await;

    // Without the cookie: round robin over all three, each answer setting the cookie.
    let mut cookies = BTreeMap::new();
    for _ in 0..6 {
        let r = env.get("sticky.example.com", "/app").await;
        let set = r.header("set-cookie").expect("Set-Cookie");
        assert!(set.starts_with("INGRESSCOOKIE="), "{set}");
        assert!(
            set.contains("Path=/app") && set.contains("HttpOnly"),
            "{set}"
        );
        let value = set.split(';').next().unwrap().to_string();
        cookies.insert(r.backend(), value);
    }
    assert_eq!(
        cookies.len(),
        3,
        "round robin without a cookie: {cookies:?}"
    );

    // With it: always the same endpoint, and no new cookie.
    for (name, cookie) in &cookies {
        for _ in 0..5 {
            let r = env
                .send(
                    Method::GET,
                    "sticky.example.com",
                    "/app/x",
                    &[("cookie", cookie)],
                    Vec::new(),
                )
                .await;
            assert_eq!(&r.backend(), name, "{cookie}");
            assert!(r.header("set-cookie").is_none());
        }
    }

    // A cookie for an endpoint that is gone: another endpoint, and a new cookie.
    let r = env
        .send(
            Method::GET,
            "sticky.example.com",
            "/app",
            &[("cookie", "INGRESSCOOKIE=0123456789abcdef")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("set-cookie").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookie_name_names_the_affinity_cookie() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let mut m = Manifests::new();
    m.service("web", &[a.addr, b.addr]).ingress(
        "web",
        &[("affinity", "cookie"), ("session-cookie-name", "route")],
        &[rule(
            Some("sticky.example.com"),
            &[path("/", "Prefix", "web")],
        )],
        "",
    );
    let env = Env::start(&m).await;
    let r = env.get("sticky.example.com", "/").await;
    let set = r.header("set-cookie").expect("Set-Cookie");
    assert!(set.starts_with("route="), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let pinned = r.backend();
    for _ in 0..4 {
        let r = env
            .send(
                Method::GET,
                "sticky.example.com",
                "/",
                &[("cookie", &cookie)],
                Vec::new(),
            )
            .await;
        assert_eq!(r.backend(), pinned);
    }
    // The default name means nothing to this Ingress.
    let other = cookie.replacen("route=", "INGRESSCOOKIE=", 1);
    let r = env
        .send(
            Method::GET,
            "sticky.example.com",
            "/",
            &[("cookie", &other)],
            Vec::new(),
        )
        .await;
    assert!(r
        .header("set-cookie")
        .is_some_and(|s| s.starts_with("route=")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let backends = [
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
    ];
    let mut m = Manifests::new();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    m.service("web", &addrs).ingress(
        "web",
        &[],
        &[rule(Some("rr.example.com"), &[path("/", "Prefix", "web")])],
        "",
    );
    let env = Env::start(&m).await;
    for _ in 0..30 {
        assert_eq!(env.get("rr.example.com", "/").await.status, StatusCode::OK);
    }
    for b in &backends {
        assert_eq!(b.hits(), 10, "{}", b.name);
    }
}

/// `upstream-hash-by`: one key always reaches the same endpoint; keys spread over all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hash_by_keeps_a_key_on_one_endpoint() {
    let backends = [
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
    ];
    let mut m = Manifests::new();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    m.service("web", &addrs).ingress(
        "web",
        &[("upstream-hash-by", "$arg_user")],
        &[rule(
            Some("hash.example.com"),
            &[path("/", "Prefix", "web")],
        )],
        "",
    );
    let env = Env::start(&m).await;
    let mut owner: BTreeMap<u32, String> = BTreeMap::new();
    for round in 0..3 {
        for user in 0..30u32 {
            let r = env
                .get("hash.example.com", &format!("/x?user={user}&round={round}"))
                .await;
            assert_eq!(r.status, StatusCode::OK);
            let who = r.header("x-backend").unwrap_or_default().to_string();
            let first = owner.entry(user).or_insert_with(|| who.clone());
            assert_eq!(*first, who, "user {user} moved");
        }
    }
    for b in &backends {
        assert!(b.hits() >= 9, "{} got {} of 90", b.name, b.hits());
    }
}

/// `load-balance: ewma`: a slow endpoint gets few requests once the balancer has seen it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ewma_steers_away_from_a_slow_endpoint() {
    let fast = Backend::echo("fast").await;
    let slow = Backend::start(
        "slow",
        common::EchoOptions {
            delay: std::time::Duration::from_millis(60),
            ..Default::default()
        },
    )
    .await;
    let mut m = Manifests::new();
    m.service("web", &[fast.addr, slow.addr]).ingress(
        "web",
        &[("load-balance", "ewma")],
        &[rule(
            Some("ewma.example.com"),
            &[path("/", "Prefix", "web")],
        )],
        "",
    );
    let env = Env::start(&m).await;
    for _ in 0..60 {
        assert_eq!(
            env.get("ewma.example.com", "/").await.status,
            StatusCode::OK
        );
    }
    assert!(
        slow.hits() <= 6,
        "slow endpoint got {} of 60 (fast {})",
        slow.hits(),
        fast.hits()
    );
}

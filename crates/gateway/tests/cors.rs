//! `enable-cors` and the `cors-*` annotations, `permanent-redirect`, `temporal-redirect` and
//! `from-to-www-redirect`, as ingress-nginx answers them, through real HTTP clients.

mod common;

use bytes::Bytes;
use common::{path, rule, Backend, Env, Manifests, Resp};
use http::{Method, StatusCode};

async fn env(annotations: &[(&str, &str)]) -> (Env, Backend) {
    common::single_route("s.example.com", &[], annotations).await
}

async fn call(env: &Env, method: Method, origin: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    env.send(method, "s.example.com", "/api", &headers, Bytes::new())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_gets_ingress_nginx_headers_and_preflights_stay_at_the_gateway() {
    let (env, b) = env(&[("enable-cors", "true")]).await;
    let r = call(&env, Method::GET, Some("https://app.example")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.backend(), "web");
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        r.header("access-control-allow-methods").as_deref(),
        Some("GET, PUT, POST, DELETE, PATCH, OPTIONS")
    );
    assert_eq!(
        r.header("access-control-max-age").as_deref(),
        Some("1728000")
    );
    assert_eq!(r.header("access-control-expose-headers"), None);
    assert_eq!(r.header("vary"), None, "`*` does not vary by origin");
    // Without an Origin header too (ingress-nginx sets them whenever the origin is `*`).
    let r = call(&env, Method::GET, None).await;
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );

    let before = b.hits();
    let r = call(&env, Method::OPTIONS, Some("https://app.example")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain charset=UTF-8")
    );
    assert_eq!(b.hits(), before, "a preflight never reaches the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_are_echoed_and_others_get_nothing() {
    let (env, b) = env(&[
        ("enable-cors", "true"),
        (
            "cors-allow-origin",
            "https://app.example.com, https://*.tenant.example",
        ),
        ("cors-allow-credentials", "false"),
        ("cors-allow-methods", "GET, POST"),
        ("cors-allow-headers", "X-Token"),
        ("cors-expose-headers", "X-Trace"),
        ("cors-max-age", "60"),
    ])
    .await;
    for origin in ["https://app.example.com", "https://blue.tenant.example"] {
        let r = call(&env, Method::GET, Some(origin)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some(origin)
        );
        assert_eq!(r.header("access-control-allow-credentials"), None);
        assert_eq!(
            r.header("access-control-allow-methods").as_deref(),
            Some("GET, POST")
        );
        assert_eq!(
            r.header("access-control-allow-headers").as_deref(),
            Some("X-Token")
        );
        assert_eq!(
            r.header("access-control-expose-headers").as_deref(),
            Some("X-Trace")
        );
        assert_eq!(r.header("access-control-max-age").as_deref(), Some("60"));
        assert_eq!(r.header("vary").as_deref(), Some("Origin"));
    }
    for origin in [
        None,
        Some("https://evil.example"),
        Some("https://a.b.tenant.example"),
        Some("https://app.example.com.evil.example"),
    ] {
        let r = call(&env, Method::GET, origin).await;
        assert_eq!(r.status, StatusCode::OK, "{origin:?}");
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin:?}");
        // Not allowed: an OPTIONS request is the backend's to answer.
        let before = b.hits();
        let r = call(&env, Method::OPTIONS, origin).await;
        assert_eq!(r.backend(), "web", "{origin:?}");
        assert_eq!(b.hits(), before + 1);
    }
    let before = b.hits();
    let r = call(&env, Method::OPTIONS, Some("https://green.tenant.example")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(b.hits(), before);
}

/// ingress-nginx sets the headers on every response of the location, the gateway's own
/// refusals included, and answers preflights before allow lists and limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_headers_and_preflights_come_first() {
    let (env, b) = env(&[
        ("enable-cors", "true"),
        ("denylist-source-range", "127.0.0.0/8"),
    ])
    .await;
    let r = call(&env, Method::GET, Some("https://app.example")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    let r = call(&env, Method::OPTIONS, Some("https://app.example")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_and_temporal_redirects() {
    let (permanent, b) = env(&[("permanent-redirect", "https://new.example$request_uri")]).await;
    let r = permanent.get("s.example.com", "/a/b?c=1").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://new.example/a/b?c=1")
    );
    assert_eq!(b.hits(), 0, "a redirect never reaches the backend");
    drop(permanent);

    let (temporal, _b) = env(&[
        ("temporal-redirect", "$scheme://$host/moved"),
        ("temporal-redirect-code", "307"),
        ("permanent-redirect", "https://ignored.example"),
    ])
    .await;
    let r = temporal.get("s.example.com", "/x").await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://s.example.com/moved")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cors_value_refuses_only_its_ingress() {
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    m.service("web", &[b.addr]).ingress(
        "good",
        &[("enable-cors", "true")],
        &[rule(Some("good.example"), &[path("/", "Prefix", "web")])],
        "",
    );
    let mut env = Env::start(&m).await;
    m.ingress(
        "bad",
        &[
            ("enable-cors", "true"),
            ("cors-allow-origin", "javascript:alert(1)"),
        ],
        &[rule(Some("bad.example"), &[path("/", "Prefix", "web")])],
        "",
    );
    let problems = common::texts(&env.apply(&m));
    assert!(
        problems.iter().any(|p| p.contains("Ingress default/bad")
            && p.contains("cors-allow-origin")
            && p.contains("is not an origin")),
        "{problems:#?}"
    );
    assert_eq!(env.get("good.example", "/").await.status, StatusCode::OK);
    assert_eq!(
        env.get("bad.example", "/").await.status,
        StatusCode::NOT_FOUND
    );
}

/// `from-to-www-redirect`: the other name of each host (with or without `www.`) answers 308
/// to the Ingress's host, unless an Ingress serves that name itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_to_www_redirect() {
    let b = Backend::echo("web").await;
    let other = Backend::echo("other").await;
    let redirecting = [("from-to-www-redirect", "true")];
    let mut m = Manifests::new();
    m.service("web", &[b.addr])
        .service("other", &[other.addr])
        .ingress(
            "shop",
            &redirecting,
            &[
                rule(Some("www.shop.example"), &[path("/", "Prefix", "web")]),
                rule(Some("blog.example"), &[path("/", "Prefix", "web")]),
                rule(Some("taken.example"), &[path("/", "Prefix", "web")]),
            ],
            "",
        )
        .ingress(
            "taken",
            &[],
            &[rule(
                Some("www.taken.example"),
                &[path("/", "Prefix", "other")],
            )],
            "",
        );
    let env = Env::start(&m).await;
    for (host, to) in [
        ("shop.example", "http://www.shop.example/a/b?c=1"),
        ("www.blog.example", "http://blog.example/a/b?c=1"),
    ] {
        let r = env.get(host, "/a/b?c=1").await;
        assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT, "{host}");
        assert_eq!(r.header("location").as_deref(), Some(to), "{host}");
    }
    assert_eq!(b.hits(), 0, "redirects never reach the backend");
    assert_eq!(env.get("www.shop.example", "/").await.backend(), "web");
    assert_eq!(env.get("blog.example", "/").await.backend(), "web");
    // Another Ingress serves www.taken.example: it keeps it.
    assert_eq!(env.get("www.taken.example", "/").await.backend(), "other");
}

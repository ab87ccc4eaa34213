//! Routing through the gateway: hosts (exact, wildcard, with a port), path types and their
//! precedence, regexes, `defaultBackend`, rewrites and 404s.

mod common;

use common::{path, rule, Backend, Env, Manifests};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_paths_and_precedence() {
    let names = [
        "foo", "foobar", "exact", "wild", "impl", "regex", "fallback",
    ];
    let mut backends = Vec::new();
    for n in names {
        backends.push(Backend::echo(n).await);
    }
    let mut m = Manifests::new();
    for b in &backends {
        m.service(&b.name, &[b.addr]);
    }
    m.ingress(
        "routes",
        &[],
        &[
            rule(
                Some("a.example.com"),
                &[
                    path("/foo", "Prefix", "foo"),
                    path("/foo/bar", "Prefix", "foobar"),
                    path("/exact", "Exact", "exact"),
                ],
            ),
            rule(Some("*.example.com"), &[path("/", "Prefix", "wild")]),
            rule(
                Some("impl.example.com"),
                &[path("/static", "ImplementationSpecific", "impl")],
            ),
        ],
        "",
    );
    m.ingress(
        "regex",
        &[("use-regex", "true")],
        &[rule(
            Some("regex.example.com"),
            &[path("/v[0-9]+/items", "ImplementationSpecific", "regex")],
        )],
        "",
    );
    m.ingress(
        "fallback",
        &[],
        &[],
        "  defaultBackend: {service: {name: fallback, port: {number: 80}}}\n",
    );
    let env = Env::start(&m).await;

    // (host, path, expected backend; None = 404)
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("a.example.com", "/foo", Some("foo")),
        ("a.example.com", "/foo/", Some("foo")),
        ("a.example.com", "/foo/baz", Some("foo")),
        // Element-wise: /foo is not a prefix of /foobar.
        ("a.example.com", "/foobar", None),
        // The longest matching path wins.
        ("a.example.com", "/foo/bar", Some("foobar")),
        ("a.example.com", "/foo/bar/baz", Some("foobar")),
        ("a.example.com", "/foo/barx", Some("foo")),
        ("a.example.com", "/exact", Some("exact")),
        ("a.example.com", "/exact/", None),
        ("a.example.com", "/", None),
        // Case-insensitive host, a port in Host.
        ("A.Example.COM", "/foo", Some("foo")),
        ("a.example.com:8080", "/foo", Some("foo")),
        // The wildcard matches exactly one label.
        ("b.example.com", "/anything", Some("wild")),
        ("b.example.com:443", "/", Some("wild")),
        ("a.b.example.com", "/", Some("fallback")),
        ("example.com", "/", Some("fallback")),
        // ImplementationSpecific without regex: a string prefix.
        ("impl.example.com", "/static", Some("impl")),
        ("impl.example.com", "/staticfiles/x", Some("impl")),
        ("impl.example.com", "/other", None),
        // use-regex: anchored at the start, case-insensitive.
        ("regex.example.com", "/v2/items", Some("regex")),
        ("regex.example.com", "/V10/items/7", Some("regex")),
        ("regex.example.com", "/vx/items", None),
        ("regex.example.com", "/x/v2/items", None),
        // Unknown hosts: the defaultBackend.
        ("unknown.test", "/whatever", Some("fallback")),
    ];
    let mut wrong = Vec::new();
    for (host, p, expected) in cases {
        let r = env.get(host, p).await;
        let got = if r.headers.contains_key("x-backend") {
            Some(r.backend())
        } else {
            None
        };
        let ok = match expected {
            Some(name) => r.status == StatusCode::OK && got.as_deref() == Some(*name),
            None => r.status == StatusCode::NOT_FOUND && got.is_none(),
        };
        if !ok {
            wrong.push(format!(
                "{host}{p}: expected {expected:?}, got {} from {got:?}",
                r.status
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // The backend receives the path as sent.
    let r = env.get("a.example.com", "/foo/bar/baz?q=1").await;
    assert_eq!(r.upstream_path(), "/foo/bar/baz?q=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_match_is_404_without_default_backend() {
    let b = Backend::echo("only").await;
    let mut m = Manifests::new();
    m.service("only", &[b.addr]).ingress(
        "web",
        &[],
        &[rule(
            Some("only.example.com"),
            &[path("/app", "Prefix", "only")],
        )],
        "",
    );
    let env = Env::start(&m).await;
    assert_eq!(
        env.get("only.example.com", "/app").await.status,
        StatusCode::OK
    );
    for (host, p) in [("only.example.com", "/"), ("other.example.com", "/app")] {
        let r = env.get(host, p).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{host}{p}");
        assert!(!r.headers.contains_key("x-backend"));
        assert!(String::from_utf8_lossy(&r.body).contains("404 Not Found"));
    }
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_target_with_captures() {
    let b = Backend::echo("api").await;
    let mut m = Manifests::new();
    m.service("api", &[b.addr]).ingress(
        "api",
        &[("rewrite-target", "/$2"), ("use-regex", "true")],
        &[rule(
            Some("rw.example.com"),
            &[path("/api(/|$)(.*)", "ImplementationSpecific", "api")],
        )],
        "",
    );
    let env = Env::start(&m).await;
    let cases = [
        ("/api/users?x=1", "/users?x=1"),
        ("/api/users/7", "/users/7"),
        ("/api", "/"),
        ("/api/", "/"),
    ];
    for (sent, received) in cases {
        let r = env.get("rw.example.com", sent).await;
        assert_eq!(r.status, StatusCode::OK, "{sent}");
        assert_eq!(r.upstream_path(), received, "{sent}");
    }
    assert_eq!(
        env.get("rw.example.com", "/apix").await.status,
        StatusCode::NOT_FOUND
    );
}

//! `auth-type: basic` with `auth-secret` (an htpasswd file or a map of users), as nginx's
//! `auth_basic` answers: 401 with `WWW-Authenticate` until the credentials match.

mod common;

use base64::Engine;
use bytes::Bytes;
use common::{path, rule, Backend, Env, Manifests, Resp};
use http::{Method, StatusCode};

/// `openssl passwd -apr1 -salt abcdefgh 'p@ss word'` and `htpasswd -s` of "password".
const HTPASSWD: &str = "# users\nalice:$apr1$abcdefgh$aJUuGLjz3OI4ylHF//t5U1\n\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n";

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

async fn get_as(env: &Env, host: &str, authorization: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    env.send(Method::GET, host, "/", &headers, Bytes::new())
        .await
}

/// Service `web` behind Ingress `web` for every path of `host`, with the Secret `users`
/// holding [`HTPASSWD`].
async fn protected(host: &str, annotations: &[(&str, &str)]) -> (Env, Backend) {
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    m.service("web", &[b.addr])
        .secret("users", &[("auth", HTPASSWD)])
        .ingress(
            "web",
            annotations,
            &[rule(Some(host), &[path("/", "Prefix", "web")])],
            "",
        );
    (Env::start(&m).await, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_file_users_get_through_and_others_get_401() {
    let (env, b) = protected(
        "a.example.com",
        &[
            ("auth-type", "basic"),
            ("auth-secret", "users"),
            ("auth-realm", "Authentication Required - ops"),
        ],
    )
    .await;
    for (who, password) in [("alice", "p@ss word"), ("bob", "password")] {
        let r = get_as(&env, "a.example.com", Some(&basic(who, password))).await;
        assert_eq!(r.status, StatusCode::OK, "{who}");
        assert_eq!(r.backend(), "web");
    }
    let hits = b.hits();
    for authorization in [
        None,
        Some(basic("alice", "wrong")),
        Some(basic("mallory", "password")),
        Some("Bearer abc".to_string()),
    ] {
        let r = get_as(&env, "a.example.com", authorization.as_deref()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Basic realm=\"Authentication Required - ops\""),
            "{authorization:?}"
        );
    }
    assert_eq!(b.hits(), hits, "refused requests never reach the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_map_secret() {
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    m.service("web", &[b.addr])
        .secret(
            "team",
            &[
                ("carol", "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"),
                // OpenBSD's bcrypt test vector for "U*U".
                (
                    "dave",
                    "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
                ),
            ],
        )
        .ingress(
            "web",
            &[
                ("auth-type", "basic"),
                ("auth-secret", "default/team"),
                ("auth-secret-type", "auth-map"),
            ],
            &[rule(Some("m.example.com"), &[path("/", "Prefix", "web")])],
            "",
        );
    let env = Env::start(&m).await;
    let r = get_as(&env, "m.example.com", Some(&basic("carol", "password"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get_as(&env, "m.example.com", Some(&basic("dave", "U*U"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get_as(&env, "m.example.com", Some(&basic("dave", "U*V"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Basic realm=\"\"")
    );
}

/// Without usable users (no Secret, one in another namespace, a hash rvs cannot check) the
/// Ingress is served but lets nobody in, as ingress-nginx denies such a location; a warning
/// names the reason. The Secret appearing later opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_usable_users_nobody_gets_in() {
    let b = Backend::echo("web").await;
    let annotations = |secret| [("auth-type", "basic"), ("auth-secret", secret)];
    let mut m = Manifests::new();
    m.service("web", &[b.addr])
        .secret_in("other", "users", &[("auth", HTPASSWD)])
        .secret("des", &[("auth", "eve:abJnggxhB/yWI\n")])
        .ingress(
            "missing",
            &annotations("nobody"),
            &[rule(Some("missing.example"), &[path("/", "Prefix", "web")])],
            "",
        )
        .ingress(
            "elsewhere",
            &annotations("other/users"),
            &[rule(
                Some("elsewhere.example"),
                &[path("/", "Prefix", "web")],
            )],
            "",
        )
        .ingress(
            "des",
            &annotations("des"),
            &[rule(Some("des.example"), &[path("/", "Prefix", "web")])],
            "",
        );
    let mut env = Env::start(&m).await;
    let (build, _) = env.build(&m);
    let warnings = common::texts(&build.warnings);
    for (ingress, reason) in [
        ("missing", "Secret default/nobody not found"),
        (
            "elsewhere",
            "Secret other/users is in another namespace than the Ingress (default)",
        ),
        ("des", "line 1 (user eve): is not a hash rvs checks"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("Ingress default/{ingress}"))
                    && w.contains(reason)
                    && w.contains("every request to its routes gets 401")),
            "{ingress}: {warnings:#?}"
        );
    }
    for host in ["missing.example", "elsewhere.example", "des.example"] {
        let r = get_as(&env, host, Some(&basic("alice", "p@ss word"))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{host}");
    }
    assert_eq!(b.hits(), 0);
    m.secret("nobody", &[("auth", HTPASSWD)]);
    assert!(env.apply(&m).is_empty());
    let r = get_as(&env, "missing.example", Some(&basic("alice", "p@ss word"))).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A CORS preflight carries no credentials: it is answered before authentication, as in
/// ingress-nginx (its `return 204` runs before nginx's access phase).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_come_before_authentication() {
    let (env, _b) = protected(
        "c.example.com",
        &[
            ("auth-type", "basic"),
            ("auth-secret", "users"),
            ("enable-cors", "true"),
        ],
    )
    .await;
    let preflight = [("origin", "https://app.example")];
    let r = env
        .send(
            Method::OPTIONS,
            "c.example.com",
            "/",
            &preflight,
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = get_as(&env, "c.example.com", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*"),
        "the refusal carries the CORS headers too"
    );
}

/// What the auth service saw of the last request it was asked about.
#[derive(Default, Clone)]
struct AuthSeen {
    method: String,
    path: String,
    headers: http::HeaderMap,
    body_len: usize,
    asked: usize,
}

/// An auth service in the style of oauth2-proxy's `/oauth2/auth`: `Bearer good` -> 200 with
/// `X-Auth-Request-User`; `Bearer forbidden` -> 403; `Bearer broken` -> 502; else 401 with a
/// challenge.
async fn auth_service() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<AuthSeen>>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(AuthSeen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body_len = body.collect().await.map_or(0, |b| b.to_bytes().len());
                            {
                                let mut seen = record.lock().unwrap();
                                seen.method = parts.method.to_string();
                                seen.path = parts.uri.to_string();
                                seen.headers = parts.headers.clone();
                                seen.body_len = body_len;
                                seen.asked += 1;
                            }
                            let token = parts
                                .headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            let mut response = http::Response::new(http_body_util::Full::new(
                                Bytes::from_static(b"auth"),
                            ));
                            match token {
                                "Bearer good" => {
                                    let h = response.headers_mut();
                                    h.insert("x-auth-request-user", "alice".parse().unwrap());
                                    h.insert("x-auth-request-groups", "admins".parse().unwrap());
                                    h.insert("x-unlisted", "secret".parse().unwrap());
                                }
                                "Bearer user-only" => {
                                    let h = response.headers_mut();
                                    h.insert("x-auth-request-user", "bob".parse().unwrap());
                                    let cookies =
                                        ["_oauth2_proxy=refreshed; Path=/", "_csrf=x; Path=/"];
                                    for cookie in cookies {
                                        h.append("set-cookie", cookie.parse().unwrap());
                                    }
                                }
                                "Bearer forbidden" => {
                                    *response.status_mut() = StatusCode::FORBIDDEN
                                }
                                "Bearer broken" => *response.status_mut() = StatusCode::BAD_GATEWAY,
                                _ => {
                                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                                    response.headers_mut().insert(
                                        "www-authenticate",
                                        "Bearer realm=\"apps\"".parse().unwrap(),
                                    );
                                }
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn behind_auth_url(
    extra: &[(&str, &str)],
) -> (Env, Backend, std::sync::Arc<std::sync::Mutex<AuthSeen>>) {
    let (auth, seen) = auth_service().await;
    let url = format!("http://{auth}/oauth2/auth?from=$host");
    let mut annotations = vec![
        ("auth-url", url.as_str()),
        (
            "auth-response-headers",
            "X-Auth-Request-User, X-Auth-Request-Groups",
        ),
    ];
    annotations.extend_from_slice(extra);
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    m.service("web", &[b.addr]).ingress(
        "web",
        &annotations,
        &[rule(Some("app.example.com"), &[path("/", "Prefix", "web")])],
        "",
    );
    (Env::start(&m).await, b, seen)
}

async fn call(env: &Env, method: Method, path: &str, token: &str, body: &'static str) -> Resp {
    let authorization = format!("Bearer {token}");
    env.send(
        method,
        "app.example.com",
        path,
        &[("authorization", authorization.as_str())],
        Bytes::from_static(body.as_bytes()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_url_lets_through_what_the_service_allows_with_its_headers() {
    let (env, b, seen) = behind_auth_url(&[]).await;
    let resp = call(&env, Method::POST, "/api/items?page=2", "good", "payload").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(b.hits(), 1);
    // The upstream request carries the listed headers of the answer, not the others.
    assert_eq!(
        resp.upstream_header("x-auth-request-user").as_deref(),
        Some("alice")
    );
    assert_eq!(
        resp.upstream_header("x-auth-request-groups").as_deref(),
        Some("admins")
    );
    assert_eq!(resp.upstream_header("x-unlisted"), None);
    assert_eq!(resp.json()["body_len"], 7, "the body still goes upstream");
    let seen = seen.lock().unwrap().clone();
    // The auth request: GET, no body, the client's headers and where the request was going.
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/oauth2/auth?from=app.example.com");
    assert_eq!(seen.body_len, 0);
    let h = |name: &str| {
        seen.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    assert_eq!(h("authorization").as_deref(), Some("Bearer good"));
    assert_eq!(
        h("x-original-url").as_deref(),
        Some("http://app.example.com/api/items?page=2")
    );
    assert_eq!(h("x-original-method").as_deref(), Some("POST"));
    assert_eq!(
        h("x-auth-request-redirect").as_deref(),
        Some("/api/items?page=2")
    );
    assert_eq!(h("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        h("x-sent-from").as_deref(),
        Some("nginx-ingress-controller")
    );
    assert_eq!(h("content-length"), None);
    assert_eq!(h("x-original-uri").as_deref(), Some("/api/items?page=2"));
    assert!(h("x-request-id").is_some_and(|id| !id.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_url_refusals_reach_the_client_and_never_the_backend() {
    let (env, b, seen) = behind_auth_url(&[]).await;
    let resp = call(&env, Method::GET, "/", "nobody", "").await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"apps\"")
    );
    assert_eq!(
        call(&env, Method::GET, "/", "forbidden", "").await.status,
        StatusCode::FORBIDDEN
    );
    // Anything else from the auth service keeps the route closed.
    let broken = call(&env, Method::GET, "/", "broken", "").await;
    assert_eq!(broken.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(b.hits(), 0);
    assert_eq!(seen.lock().unwrap().asked, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_url_sends_browsers_to_sign_in_with_where_they_were_going() {
    let (env, b, seen) = behind_auth_url(&[
        ("auth-signin", "https://login.example.com/oauth2/start"),
        ("auth-request-redirect", "/landing"),
        ("auth-method", "POST"),
    ])
    .await;
    let resp = call(&env, Method::GET, "/docs/a%20b?x=1", "nobody", "").await;
    assert_eq!(resp.status, StatusCode::FOUND);
    assert_eq!(
        resp.header("location").as_deref(),
        Some("https://login.example.com/oauth2/start?rd=http://app.example.com%2Fdocs%2Fa%2520b%3Fx%3D1")
    );
    assert_eq!(b.hits(), 0);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.headers
            .get("x-auth-request-redirect")
            .and_then(|v| v.to_str().ok()),
        Some("/landing")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_url_unreachable_is_a_500_not_an_open_door() {
    let dead = common::dead_endpoint().await;
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    let url = format!("http://{dead}/auth");
    m.service("web", &[b.addr]).ingress(
        "web",
        &[("auth-url", url.as_str())],
        &[rule(Some("app.example.com"), &[path("/", "Prefix", "web")])],
        "",
    );
    let env = Env::start(&m).await;
    let resp = call(&env, Method::GET, "/", "good", "").await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_url_never_takes_its_host_from_a_client_on_a_catch_all_route() {
    let (auth, seen) = auth_service().await;
    let b = Backend::echo("web").await;
    let mut m = Manifests::new();
    // The client's Host would pick the auth service: the catch-all server refuses that.
    let url = format!("http://$host:{}/auth", auth.port());
    m.service("web", &[b.addr]).ingress(
        "web",
        &[("auth-url", url.as_str())],
        &[rule(None, &[path("/", "Prefix", "web")])],
        "",
    );
    let env = Env::start(&m).await;
    let resp = env
        .send(
            Method::GET,
            "127.0.0.1",
            "/",
            &[("authorization", "Bearer good")],
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(seen.lock().unwrap().asked, 0);
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_url_headers_come_from_the_auth_service_only() {
    let (env, _b, _seen) = behind_auth_url(&[]).await;
    let resp = env
        .send(
            Method::GET,
            "app.example.com",
            "/",
            &[
                ("authorization", "Bearer user-only"),
                // Claimed by the client, not granted by the auth service: dropped.
                ("x-auth-request-groups", "admins"),
                ("x-auth-request-user", "root"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        resp.upstream_header("x-auth-request-user").as_deref(),
        Some("bob")
    );
    assert_eq!(resp.upstream_header("x-auth-request-groups"), None);
    // The auth service's cookies reach the client (oauth2-proxy's session refresh).
    let cookies: Vec<_> = resp
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cookies,
        ["_oauth2_proxy=refreshed; Path=/", "_csrf=x; Path=/"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_url_answers_are_kept_per_cache_key_for_the_listed_statuses() {
    let (env, b, seen) = behind_auth_url(&[
        ("auth-cache-key", "$http_authorization"),
        ("auth-cache-duration", "200 401 1m"),
    ])
    .await;
    let asked = || seen.lock().unwrap().asked;
    for _ in 0..2 {
        let resp = call(&env, Method::GET, "/", "good", "").await;
        assert_eq!(resp.status, StatusCode::OK);
        // A kept answer still brings its headers.
        assert_eq!(
            resp.upstream_header("x-auth-request-user").as_deref(),
            Some("alice")
        );
    }
    assert_eq!((asked(), b.hits()), (1, 2));
    for _ in 0..2 {
        assert_eq!(
            call(&env, Method::GET, "/", "nobody", "").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(asked(), 2, "401 is listed: kept");
    for _ in 0..2 {
        assert_eq!(
            call(&env, Method::GET, "/", "forbidden", "").await.status,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(asked(), 4, "403 is not listed: asked each time");
    for _ in 0..2 {
        assert_eq!(
            call(&env, Method::GET, "/", "user-only", "").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(asked(), 6, "an answer setting cookies is never kept");
}

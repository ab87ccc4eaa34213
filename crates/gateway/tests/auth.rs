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

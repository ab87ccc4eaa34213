//! Configuration changes under load, a refused Ingress keeping its last good version, and
//! graceful shutdown.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{path, rule, send_with, texts, Backend, Env, Manifests};
use http::{Method, StatusCode};
use tokio::net::TcpStream;

fn web(m: &mut Manifests, endpoints: &[std::net::SocketAddr], extra_host: bool) {
    m.service("web", endpoints).ingress(
        "web",
        &[],
        &[rule(
            Some("swap.example.com"),
            &[path("/", "Prefix", "web")],
        )],
        "",
    );
    if extra_host {
        m.ingress(
            "extra",
            &[],
            &[rule(
                Some("extra.example.com"),
                &[path("/", "Prefix", "web")],
            )],
            "",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_swaps_under_load_lose_no_request() {
    let backends = [
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let mut m = Manifests::new();
    web(&mut m, &addrs[..2], false);
    let mut env = Env::start(&m).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let client = Env::client_from("127.0.0.1".parse().unwrap());
        let addr = env.http;
        clients.push(tokio::spawn(async move {
            // Bounded: stops when told, or after 2000 requests.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = send_with(
                    &client,
                    addr,
                    Method::GET,
                    "swap.example.com",
                    "/",
                    &[],
                    Bytes::new(),
                )
                .await;
                if r.status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.lock().unwrap().push(r.status.as_u16());
                }
            }
        }));
    }
    // 20 new snapshots over ~2 s: endpoints moving among the three backends, and an
    // Ingress added half way.
    let sets: [&[usize]; 4] = [&[0, 1], &[1, 2], &[2], &[0, 2]];
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let chosen: Vec<_> = sets[i % sets.len()].iter().map(|&j| addrs[j]).collect();
        let mut m = Manifests::new();
        web(&mut m, &chosen, i >= 10);
        let problems = env.apply(&m);
        assert_eq!(texts(&problems), Vec::<String>::new());
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        ok.load(Ordering::Relaxed) >= 100,
        "the load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    for b in &backends {
        assert!(b.hits() > 0, "{} served", b.name);
    }
    assert_eq!(env.last.version, 21);
    // The added Ingress serves.
    assert_eq!(
        env.get("extra.example.com", "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ingress_keeps_its_last_good_version() {
    let old = Backend::echo("old").await;
    let new = Backend::echo("new").await;
    let mut m = Manifests::new();
    m.service("old", &[old.addr])
        .service("new", &[new.addr])
        .ingress(
            "web",
            &[],
            &[rule(Some("bad.example.com"), &[path("/", "Prefix", "old")])],
            "",
        );
    let mut env = Env::start(&m).await;
    assert_eq!(env.get("bad.example.com", "/").await.backend(), "old");

    // The edit points at `new` but has a bad annotation: refused as a whole.
    let mut m = Manifests::new();
    m.service("old", &[old.addr])
        .service("new", &[new.addr])
        .ingress(
            "web",
            &[("proxy-read-timeout", "soon")],
            &[rule(Some("bad.example.com"), &[path("/", "Prefix", "new")])],
            "",
        );
    let problems = texts(&env.apply(&m));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let problem = &problems[0];
    assert!(problem.contains("Ingress default/web"), "{problem}");
    assert!(
        problem.contains("metadata.annotations[nginx.ingress.kubernetes.io/proxy-read-timeout]"),
        "{problem}"
    );
    assert!(problem.contains("\"soon\""), "{problem}");
    for _ in 0..5 {
        let r = env.get("bad.example.com", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.backend(), "old", "the last good version serves");
    }

    // Fixed: the new version serves.
    let mut m = Manifests::new();
    m.service("old", &[old.addr])
        .service("new", &[new.addr])
        .ingress(
            "web",
            &[("proxy-read-timeout", "30")],
            &[rule(Some("bad.example.com"), &[path("/", "Prefix", "new")])],
            "",
        );
    assert!(env.apply(&m).is_empty());
    assert_eq!(env.get("bad.example.com", "/").await.backend(), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let b = Backend::echo("slow").await;
    let mut m = Manifests::new();
    m.service("web", &[b.addr]).ingress(
        "web",
        &[],
        &[rule(Some("bye.example.com"), &[path("/", "Prefix", "web")])],
        "",
    );
    let mut env = Env::start(&m).await;
    let client = env.client.clone();
    let addr = env.http;
    let in_flight = tokio::spawn(async move {
        send_with(
            &client,
            addr,
            Method::GET,
            "bye.example.com",
            "/",
            &[("x-delay-ms", "1500")],
            Bytes::new(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gateway = env.gateway.take().unwrap();
    let start = Instant::now();
    let shutdown = tokio::spawn(gateway.shutdown(Duration::from_secs(10)));
    // Soon after shutdown began, no new connection is accepted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted during shutdown"
    );

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.backend(), "slow");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown ends once the connections are done")
        .unwrap();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(TcpStream::connect(addr).await.is_err());
    assert!(TcpStream::connect(env.https).await.is_err());
}

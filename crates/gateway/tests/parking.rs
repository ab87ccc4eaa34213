//! Idle plain HTTP/1.1 client connections are parked after a second without a request: hyper's
//! connection and buffers are dropped, the socket stays open, and the next request on it is
//! served as if nothing happened. Raw sockets, so every byte on the wire is the test's.

mod common;

use std::time::{Duration, Instant};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{path, rule, Backend, Env, Manifests};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Well past the second after which the gateway parks an idle client connection, and past
/// the upstream pool's sweep (once a second) after its 250 ms.
const PAST_PARK: Duration = Duration::from_millis(1600);

async fn env(config: &[(&str, &str)]) -> (Env, Backend) {
    common::single_route("p.example.com", config, &[]).await
}

fn parked(env: &Env) -> u64 {
    metric(env, "rvs_gateway_parked_client_connections")
}

/// A sample's value; its labels (the controller's) are not looked at.
fn metric(env: &Env, name: &str) -> u64 {
    env.metrics_text()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("metric {name}"))
}

/// Parked upstream connections (after 250 ms idle, at the next sweep, each second).
fn upstream_parked(env: &Env) -> u64 {
    metric(env, "rvs_gateway_upstream_parked_connections")
}

/// Reads one response (head and Content-Length body); returns the head.
async fn read_response(tcp: &mut TcpStream) -> String {
    read_exchange(tcp).await.0
}

/// Reads one response: its head and its Content-Length body.
async fn read_exchange(tcp: &mut TcpStream) -> (String, String) {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while data.len() < end + 4 + length {
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed inside a body");
                data.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).to_string();
            return (head, body);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response: {data:?}");
        data.extend_from_slice(&chunk[..n]);
    }
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: p.example.com\r\n\r\n";

/// A connection answered just now is not parked yet; checked only while "just now" is well
/// inside the 250 ms of the sooner of the two parks (a loaded machine may take longer to
/// get here).
fn not_parked_yet(parked: u64, answered: Instant) {
    let elapsed = answered.elapsed();
    if elapsed < Duration::from_millis(150) {
        assert_eq!(parked, 0, "not parked while recently busy");
    } else {
        println!("not checked that a busy connection stays unparked: {elapsed:?} passed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_parks_and_serves_its_next_request() {
    // keep-alive-requests 2: the count survives the park, so the second response closes.
    let (env, b) = env(&[("keep-alive-requests", "2")]).await;
    let mut tcp = TcpStream::connect(env.http).await.unwrap();
    tcp.write_all(GET).await.unwrap();
    let head = read_response(&mut tcp).await;
    let answered = Instant::now();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"));
    not_parked_yet(parked(&env), answered);
    tokio::time::sleep(PAST_PARK).await;
    assert_eq!(parked(&env), 1);
    assert_eq!(env.gateway().client_connections(), 1, "still open");

    tcp.write_all(GET).await.unwrap();
    let head = read_response(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "the connection's second request of 2: {head}"
    );
    assert_eq!(parked(&env), 0);
    assert_eq!(b.hits(), 2);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed after the last request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_still_closes_at_the_keep_alive_timeout() {
    let (env, _b) = env(&[("keep-alive", "3")]).await;
    let mut tcp = TcpStream::connect(env.http).await.unwrap();
    tcp.write_all(GET).await.unwrap();
    read_response(&mut tcp).await;
    let quiet = Instant::now();
    tokio::time::sleep(PAST_PARK).await;
    assert_eq!(parked(&env), 1);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), tcp.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "closed quietly: {read:?} {rest:?}"
    );
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(2800) && after < Duration::from_millis(4500),
        "closed after {after:?}, keep-alive is 3 s"
    );
    assert!(
        common::eventually(Duration::from_secs(2), || parked(&env) == 0).await,
        "no longer counted as parked"
    );
}

/// A client that stalls inside a request head, even after its first byte: no park (hyper
/// keeps the bytes and its header timeout runs), and the request completes. Only a
/// connection with nothing of a next request read parks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_survives() {
    let (env, b) = env(&[]).await;
    // (sent before the stall, after it, parked during it)
    for (first, rest, parks) in [
        (&GET[..20], &GET[20..], false),
        (&GET[..2], &GET[2..], false),
        (&GET[..1], &GET[1..], false),
        (&GET[..0], GET, true),
    ] {
        let mut tcp = TcpStream::connect(env.http).await.unwrap();
        tcp.write_all(GET).await.unwrap();
        read_response(&mut tcp).await;
        tcp.write_all(first).await.unwrap();
        tokio::time::sleep(PAST_PARK).await;
        let sent = String::from_utf8_lossy(first);
        assert_eq!(parked(&env), u64::from(parks), "stalled after {sent:?}");
        tcp.write_all(rest).await.unwrap();
        let (head, body) = read_exchange(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 200"), "after {sent:?}: {head}");
        assert!(
            body.contains("\"method\":\"GET\""),
            "the backend got the whole request line after {sent:?}: {body}"
        );
    }
    assert_eq!(b.hits(), 8);
    assert!(b.paths.lock().unwrap().iter().all(|p| p == "/x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_half_head_sent_during_a_request_survives_a_stall() {
    let (env, b) = env(&[]).await;
    let mut tcp = TcpStream::connect(env.http).await.unwrap();
    // The first request waits 300 ms at the backend; the next head's first half follows it
    // while it is in flight, the rest only well after the response.
    tcp.write_all(b"GET /x HTTP/1.1\r\nHost: p.example.com\r\nx-delay-ms: 300\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(&GET[..20]).await.unwrap();
    let head = read_response(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(PAST_PARK).await;
    assert_eq!(parked(&env), 0, "a head begun must not be cut by a park");
    tcp.write_all(&GET[20..]).await.unwrap();
    let (head, body) = read_exchange(&mut tcp).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the pipelined request: {head}"
    );
    assert!(body.contains("\"method\":\"GET\""), "{body}");
    assert_eq!(b.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_connections() {
    let (mut env, _b) = env(&[]).await;
    let mut tcp = TcpStream::connect(env.http).await.unwrap();
    tcp.write_all(GET).await.unwrap();
    read_response(&mut tcp).await;
    tokio::time::sleep(PAST_PARK).await;
    assert_eq!(parked(&env), 1);
    let gateway = env.gateway.take().unwrap();
    let start = Instant::now();
    gateway.shutdown(Duration::from_secs(10)).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for a parked connection",
        start.elapsed()
    );
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed: {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_parks_and_carries_the_next_request() {
    let (env, b) = env(&[]).await;
    assert_eq!(env.get("p.example.com", "/a").await.status, 200);
    let answered = Instant::now();
    not_parked_yet(upstream_parked(&env), answered);
    assert!(
        common::eventually(Duration::from_secs(5), || upstream_parked(&env) == 1).await,
        "parked within 1.25 s of idling"
    );
    let reused_before = metric(&env, "rvs_gateway_upstream_requests_reused_total");
    // A new client connection: only the upstream side was parked.
    assert_eq!(env.get("p.example.com", "/b").await.status, 200);
    assert_eq!(
        b.connections(),
        1,
        "the parked socket carried the second request"
    );
    assert_eq!(upstream_parked(&env), 0);
    assert_eq!(
        metric(&env, "rvs_gateway_upstream_requests_reused_total"),
        reused_before + 1
    );
    assert_eq!(
        metric(&env, "rvs_gateway_upstream_connections_opened_total"),
        1
    );
}

/// A backend answering `ok` to each request, that closes each connection `linger` after it
/// opened (as backends with a short keep-alive timeout do). Counts connections.
async fn closing_backend(linger: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let serve = async {
                    let mut data = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = tcp.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        data.extend_from_slice(&chunk[..n]);
                        while let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                            data.drain(..end + 4);
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if tcp.write_all(ok).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                let _ = tokio::time::timeout(linger, serve).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_upstream_connection_the_backend_closed_is_left_for_a_new_one() {
    let (addr, accepted) = closing_backend(Duration::from_millis(2500)).await;
    let mut m = Manifests::new();
    m.service("web", &[addr]).ingress(
        "web",
        &[],
        &[rule(Some("p.example.com"), &[path("/", "Prefix", "web")])],
        "",
    );
    let env = Env::start(&m).await;
    assert_eq!(env.get("p.example.com", "/").await.status, 200);
    assert!(common::eventually(Duration::from_secs(5), || upstream_parked(&env) == 1).await);
    // The backend closes it while parked: the next sweep drops it.
    assert!(
        common::eventually(Duration::from_secs(5), || {
            metric(&env, "rvs_gateway_upstream_idle_connections") == 0
        })
        .await,
        "a closed socket left in the pool"
    );
    assert_eq!(upstream_parked(&env), 0);
    // A POST, which is never retried once sent: it must not go out on the closed socket.
    let resp = env
        .send(hyper::Method::POST, "p.example.com", "/", &[], "data")
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a new connection for the POST"
    );
    assert_eq!(
        metric(&env, "rvs_gateway_upstream_connections_opened_total"),
        2
    );
}

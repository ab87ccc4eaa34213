//! Hostile clients on raw TCP: request smuggling with both Content-Length and
//! Transfer-Encoding, oversized heads, a head that never ends, a body that stalls.

mod common;

use std::time::{Duration, Instant};

use common::{raw_exchange, statuses, Backend, Env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn env(config: &[(&str, &str)]) -> (Env, Backend) {
    common::single_route("h.example.com", config, &[]).await
}

const SMUGGLING: [&str; 2] = [
    "POST / HTTP/1.1\r\nHost: h.example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h.example.com\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: h.example.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h.example.com\r\n\r\n",
];

/// Both framings in one request, then a second request hidden where the two framings
/// disagree. hyper reads it by Transfer-Encoding (RFC 9112 6.3), drops the Content-Length
/// and closes the connection after the response: one request, framed the same way
/// upstream, and the hidden one is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let (env, b) = env(&[]).await;
    for request in SMUGGLING {
        let raw = raw_exchange(env.http, request.as_bytes(), Duration::from_secs(3)).await;
        let codes = statuses(&raw);
        assert!(codes == [400] || codes == [200], "one response: {raw}");
        if codes == [200] {
            assert!(
                raw.to_ascii_lowercase().contains("connection: close"),
                "{raw}"
            );
            assert!(
                raw.contains("\"body_len\":0"),
                "chunked framing upstream: {raw}"
            );
            assert!(
                !raw.contains("content-length\":"),
                "no Content-Length upstream: {raw}"
            );
        }
    }
    let paths = b.paths.lock().unwrap().clone();
    assert!(
        paths.iter().all(|p| p == "/"),
        "a smuggled request was served: {paths:?}"
    );
}

/// nginx answers such a request with 400, and so does rvs (its read side sees both headers,
/// though hyper drops the Content-Length before the handler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_400() {
    let (env, b) = env(&[]).await;
    for request in SMUGGLING {
        let raw = raw_exchange(env.http, request.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(statuses(&raw), [400], "{raw}");
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_framing_is_refused() {
    let (env, b) = env(&[]).await;
    for request in [
        // Two different lengths.
        "POST / HTTP/1.1\r\nHost: h.example.com\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        // Chunked not last.
        "POST / HTTP/1.1\r\nHost: h.example.com\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        // Not a number.
        "POST / HTTP/1.1\r\nHost: h.example.com\r\nContent-Length: +4\r\n\r\nabcd",
    ] {
        let raw = raw_exchange(env.http, request.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(statuses(&raw), [400], "{request:?}: {raw}");
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_431() {
    let (env, b) = env(&[]).await;
    // Within the default (4 x 8k = 32k).
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: h.example.com\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let raw = raw_exchange(env.http, fits.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(statuses(&raw), [200]);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let raw = raw_exchange(env.http, big.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(statuses(&raw), [431], "{}", &raw[..raw.len().min(200)]);
    assert_eq!(b.hits(), 1);
}

/// Sends `bytes`, then nothing: what the gateway answers until it closes the connection
/// (within 6 s), and when it closed.
async fn send_and_stall(env: &Env, bytes: &[u8]) -> (String, Duration) {
    let mut stream = TcpStream::connect(env.http).await.unwrap();
    let start = Instant::now();
    stream.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), stream.read_to_end(&mut buf)).await;
    let took = start.elapsed();
    assert!(read.is_ok(), "the connection was not closed within 6 s");
    (String::from_utf8_lossy(&buf).into_owned(), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_head_is_closed_after_client_header_timeout() {
    let (env, b) = env(&[("client-header-timeout", "1s")]).await;
    let (text, took) =
        send_and_stall(&env, b"GET / HTTP/1.1\r\nHost: h.example.com\r\nX-Slow: ").await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    // Nothing or a 408, never a forwarded request.
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_is_408_after_client_body_timeout() {
    let (env, b) = env(&[("client-body-timeout", "1s")]).await;
    let stalled_body = b"POST / HTTP/1.1\r\nHost: h.example.com\r\nContent-Length: 10\r\n\r\nabc";
    let (text, took) = send_and_stall(&env, stalled_body).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );
    // nginx's answer to a client that stops sending its body: the client's fault, not a 502.
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // The backend saw the head, and the body cut short (its echo answer was not relayed).
    assert!(b.hits() <= 1);
}

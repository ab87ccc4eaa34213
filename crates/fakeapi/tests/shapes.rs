//! The fake API answers in the shapes a 1.33 API server uses, checked against the recorded
//! answers in tests/fixtures/kube.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rvs_fakeapi::{fixture, FakeApi};
use serde_json::Value;

/// The body of a plain GET (HTTP/1.0, read to the end), or its first line for a watch.
fn get(addr: SocketAddr, path: &str, first_line_only: bool) -> Value {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: api\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut body = String::new();
    if first_line_only {
        reader.read_line(&mut body).unwrap();
    } else {
        std::io::Read::read_to_string(&mut reader, &mut body).unwrap();
    }
    serde_json::from_str(&body).unwrap()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_is_shaped_like_the_recorded_one() {
    let api = FakeApi::start().await.unwrap();
    api.put(fixture("service-web.json"));
    let addr = api.addr();
    let list = blocking(move || get(addr, "/api/v1/services", false)).await;
    let recorded = fixture("service-list.json");
    assert_eq!(keys(&list), keys(&recorded));
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(keys(&list["metadata"]), keys(&recorded["metadata"]));
    // Items carry no kind or apiVersion, the rest as stored.
    assert_eq!(keys(&list["items"][0]), keys(&recorded["items"][0]));
    assert_eq!(list["items"][0]["spec"], recorded["items"][0]["spec"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_compacted_version_is_an_error_event_410() {
    let api = FakeApi::start().await.unwrap();
    api.put(fixture("service-web.json"));
    let old = api.resource_version();
    api.put(fixture("configmap-rvs.json"));
    api.compact();
    let addr = api.addr();
    let path = format!("/api/v1/services?watch=true&resourceVersion={}", old - 1);
    let event = blocking(move || get(addr, &path, true)).await;
    let recorded = fixture("status-410-expired.json");
    assert_eq!(event["type"], "ERROR");
    assert_eq!(keys(&event["object"]), keys(&recorded));
    for field in ["kind", "apiVersion", "status", "reason", "code"] {
        assert_eq!(event["object"][field], recorded[field], "{field}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookmark_is_shaped_like_the_recorded_one() {
    let api = FakeApi::start().await.unwrap();
    api.set_bookmark_interval(Duration::from_millis(50));
    api.put(fixture("endpointslice-web.json"));
    let rv = api.resource_version();
    let addr = api.addr();
    let path = format!(
        "/apis/discovery.k8s.io/v1/endpointslices?watch=true&resourceVersion={rv}&allowWatchBookmarks=true"
    );
    let mut event = blocking(move || get(addr, &path, true)).await;
    let mut recorded = fixture("bookmark-event.json");
    assert_eq!(
        event["object"]["metadata"]["resourceVersion"],
        rv.to_string()
    );
    event["object"]["metadata"]["resourceVersion"] = Value::Null;
    recorded["object"]["metadata"]["resourceVersion"] = Value::Null;
    assert_eq!(event, recorded);
}

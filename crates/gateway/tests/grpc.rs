//! gRPC through the gateway's plain port (h2c from the client, h2c to the backend with
//! `backend-protocol: GRPC`): unary, server streaming, trailers and gRPC errors.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{path, rule, Env, Manifests, CALL_TIMEOUT};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// A gRPC health service on 127.0.0.1 (h2c), and the handle that changes its status.
async fn health_backend() -> (SocketAddr, HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, reporter)
}

fn manifests(grpc: SocketAddr) -> Manifests {
    let mut m = Manifests::new();
    m.service("grpc", &[grpc]).service("nothing", &[]).ingress(
        "grpc",
        &[("backend-protocol", "GRPC")],
        &[
            rule(Some("grpc.example.com"), &[path("/", "Prefix", "grpc")]),
            rule(Some("down.example.com"), &[path("/", "Prefix", "nothing")]),
        ],
        "",
    );
    m
}

async fn client(env: &Env, authority: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", env.http))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn next(stream: &mut tonic::codec::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("stream message in time")
        .expect("stream message")
        .expect("stream still open")
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_through_h2c() {
    let (addr, reporter) = health_backend().await;
    let env = Env::start(&manifests(addr)).await;
    let mut health = client(&env, "grpc.example.com").await;

    let r = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Check through the gateway");
    assert_eq!(r.into_inner().status, Wire::Serving as i32);

    // A status code from the backend comes through (an unknown service is NOT_FOUND).
    let e = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Server streaming: the current status, then every change.
    let mut stream = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Watch through the gateway")
        .into_inner();
    assert_eq!(next(&mut stream).await, Wire::Serving as i32);
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    assert_eq!(next(&mut stream).await, Wire::NotServing as i32);
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    assert_eq!(next(&mut stream).await, Wire::Serving as i32);
    drop(stream);

    // And unary again on the same channel.
    let r = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, Wire::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_come_through() {
    let (addr, _reporter) = health_backend().await;
    let env = Env::start(&manifests(addr)).await;
    let tcp = TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // An empty HealthCheckRequest: a 5-byte gRPC frame (uncompressed, length 0).
    let request = Request::builder()
        .method("POST")
        .uri("http://grpc.example.com/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("grpc-status").is_none());
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    // The message: field 1 (status) = SERVING (1).
    assert_eq!(&collected.to_bytes()[..], &[0, 0, 0, 0, 2, 8, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_grpc_statuses() {
    let (addr, _reporter) = health_backend().await;
    let env = Env::start(&manifests(addr)).await;

    // No endpoints: UNAVAILABLE, not an HTML page.
    let mut down = client(&env, "down.example.com").await;
    let e = down
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // No route: UNIMPLEMENTED.
    let mut nowhere = client(&env, "nowhere.example.com").await;
    let e = nowhere
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
}

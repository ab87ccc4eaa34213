//! `rvs webhook`: a ValidatingWebhookConfiguration target for Ingresses (AdmissionReview v1)
//! over HTTPS. It refuses what the gateway would refuse, with the gateway's own message, so
//! a bad Ingress never reaches the gateways.

mod review;
mod tls;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rvs_model::ingress::GatewayOptions;
use rvs_model::ObjectSet;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use review::{review, ReviewError};
pub use tls::{ReloadingCert, TlsError};

/// An AdmissionReview is an object and its old version: a few hundred KiB at most.
const MAX_BODY: usize = 4 << 20;

/// What the webhook checks new Ingresses against.
pub trait Existing: Send + Sync + 'static {
    /// The stored Ingresses and IngressClasses.
    fn objects(&self) -> ObjectSet;
    /// Whether the stored objects are known (the first list completed).
    fn ready(&self) -> bool;
}

struct Served {
    existing: Arc<dyn Existing>,
    options: GatewayOptions,
}

/// Serves HTTPS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    existing: Arc<dyn Existing>,
    options: GatewayOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls::server_config(cert));
    let served = Arc::new(Served { existing, options });
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let served = served.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let served = served.clone();
                async move { Ok::<_, Infallible>(handle(&served, req).await) }
            });
            // The API server speaks HTTP/2 when offered; HTTP/1.1 otherwise.
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn handle(served: &Served, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") if served.existing.ready() => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the stored Ingresses are not listed yet\n".into(),
        ),
        // Without the stored Ingresses a conflict would pass: the API server retries (or,
        // with failurePolicy Fail, refuses the write) rather than store an unchecked one.
        (&Method::POST, "/validate-ingress") if !served.existing.ready() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the stored Ingresses are not listed yet\n".into(),
        ),
        (&Method::POST, "/validate-ingress") => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the AdmissionReview: {e}\n"),
                    )
                }
            };
            let existing = served.existing.objects();
            match review(&body, &existing, &served.options) {
                Ok(answer) => {
                    if let Some(r) = &answer.response {
                        if !r.allowed {
                            tracing::info!(uid = %r.uid, reason = %r.result.message, "webhook: denied");
                        }
                    }
                    match serde_json::to_vec(&answer) {
                        Ok(json) => {
                            let mut response = Response::new(Full::new(Bytes::from(json)));
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            response
                        }
                        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                    }
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

//! The client side of `rvs ls`: fetching the live table from a running rvs.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, HOST, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rvs_model::status::{ConnectionStatus, ServiceTable};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tracing::debug;

use crate::ConfigStatus;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Far above any real table; bounds what a wrong peer can make us buffer.
const MAX_BODY: usize = 256 << 20;
/// How much of an error answer goes into the error message.
const MAX_ERROR_BODY: usize = 300;

/// Why the admin API could not be read. Every message names the address.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "cannot reach the rvs admin API at {address}: {} (is rvs running? --admin sets the address)",
        describe_io(.error)
    )]
    Connect {
        address: SocketAddr,
        error: io::Error,
    },
    #[error("the rvs admin API at {address} did not answer {path} within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        address: SocketAddr,
        path: &'static str,
    },
    #[error("HTTP request {path} to the rvs admin API at {address} failed: {error}")]
    Http {
        address: SocketAddr,
        path: &'static str,
        error: hyper::Error,
    },
    #[error("the rvs admin API at {address} answered {path} with {status}: {body}")]
    Status {
        address: SocketAddr,
        path: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("cannot read the answer to {path} from the rvs admin API at {address}: {error}")]
    Body {
        address: SocketAddr,
        path: &'static str,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the rvs admin API at {address} answered {path} with JSON this rvs cannot read: {error}"
    )]
    Decode {
        address: SocketAddr,
        path: &'static str,
        error: serde_json::Error,
    },
}

/// `connection refused` rather than `Connection refused (os error 111)` where the kind
/// says it all.
fn describe_io(error: &io::Error) -> String {
    use io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | PermissionDenied
        | AddrNotAvailable | HostUnreachable | NetworkUnreachable => error.kind().to_string(),
        _ => error.to_string(),
    }
}

/// Fetches the live table (`GET /api/v1/services`) from the admin API at `admin`.
pub async fn fetch_table(admin: SocketAddr) -> Result<ServiceTable, FetchError> {
    fetch_json(admin, "/api/v1/services").await
}

/// Fetches the connection table (`rvs ls -c`).
pub async fn fetch_connections(admin: SocketAddr) -> Result<Vec<ConnectionStatus>, FetchError> {
    fetch_json(admin, "/api/v1/connections").await
}

/// Fetches the configuration status (`GET /api/v1/config`) from the admin API at `admin`.
pub async fn fetch_config(admin: SocketAddr) -> Result<ConfigStatus, FetchError> {
    fetch_json(admin, "/api/v1/config").await
}

async fn fetch_json<T: DeserializeOwned>(
    address: SocketAddr,
    path: &'static str,
) -> Result<T, FetchError> {
    let body = get(address, path).await?;
    serde_json::from_slice(&body).map_err(|error| FetchError::Decode {
        address,
        path,
        error,
    })
}

async fn get(address: SocketAddr, path: &'static str) -> Result<Bytes, FetchError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(FetchError::Connect { address, error }),
        Err(_) => {
            return Err(FetchError::Connect {
                address,
                error: io::ErrorKind::TimedOut.into(),
            })
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, request(stream, address, path)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout { address, path }),
    }
}

async fn request(
    stream: TcpStream,
    address: SocketAddr,
    path: &'static str,
) -> Result<Bytes, FetchError> {
    let http = |error| FetchError::Http {
        address,
        path,
        error,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%address, %error, "admin API client connection ended with an error");
        }
    });

    let result = async {
        let request = Request::get(path)
            .header(HOST, address.to_string())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("rvs/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new());
        // Only a malformed path or header could fail, and those are ours.
        let request = request.map_err(|error| FetchError::Body {
            address,
            path,
            error: error.into(),
        })?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|error| FetchError::Body {
                address,
                path,
                error,
            })?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(MAX_ERROR_BODY).collect();
            return Err(FetchError::Status {
                address,
                path,
                status,
                body: text,
            });
        }
        Ok(body)
    }
    .await;
    driver.abort();
    result
}

//! Bodies in both directions: the client's request body on its way upstream (size limit,
//! `client-body-timeout`), and the upstream's response on its way to the client
//! (`proxy-read-timeout` between frames, the connection's return to its pool, and the
//! request's completion record when the last byte went out).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::pool::PooledHttp1;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    #[error("client sent no body data for {0:?}")]
    ClientTimeout(Duration),
    #[error("upstream sent no data for {0:?}")]
    UpstreamTimeout(Duration),
}

/// What the client's request body did, for the log and the retry decision.
#[derive(Debug, Default)]
pub struct BodyProgress {
    pub bytes: AtomicU64,
    /// A frame was handed upstream: the request cannot be replayed.
    pub started: AtomicBool,
    pub too_large: AtomicBool,
    /// The client sent no body bytes for `client-body-timeout` (nginx answers 408).
    pub client_timed_out: AtomicBool,
}

/// A request body as sent upstream.
pub enum UpstreamBody {
    Empty,
    Client(Box<ClientBody>),
}

pub struct ClientBody {
    inner: Incoming,
    limit: Option<u64>,
    timeout: Duration,
    idle: Pin<Box<Sleep>>,
    progress: Arc<BodyProgress>,
}

impl ClientBody {
    pub fn new(
        inner: Incoming,
        limit: Option<u64>,
        timeout: Duration,
        progress: Arc<BodyProgress>,
    ) -> Self {
        ClientBody {
            inner,
            limit,
            timeout,
            idle: Box::pin(tokio::time::sleep(timeout)),
            progress,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let body = match self.get_mut() {
            UpstreamBody::Empty => return Poll::Ready(None),
            UpstreamBody::Client(body) => body.as_mut(),
        };
        match Pin::new(&mut body.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                body.progress.started.store(true, Ordering::Relaxed);
                if let Some(data) = frame.data_ref() {
                    let total = body
                        .progress
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if let Some(limit) = body.limit {
                        if total > limit {
                            body.progress.too_large.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(BodyError::TooLarge(limit).into())));
                        }
                    }
                }
                body.idle.as_mut().reset(Instant::now() + body.timeout);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match body.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    body.progress
                        .client_timed_out
                        .store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(BodyError::ClientTimeout(body.timeout).into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Client(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Client(body) => body.inner.size_hint(),
        }
    }
}

use std::future::Future;

/// Runs once when a response is done (whole, failed or abandoned by the client): metrics,
/// access log, limit release.
pub trait Completion: Send + Sync + 'static {
    fn complete(&mut self, bytes_sent: u64, finished: bool);
}

/// A response body to the client.
pub struct ProxyBody {
    kind: Kind,
    sent: u64,
    completion: Option<Box<dyn Completion>>,
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamResponse>),
}

struct UpstreamResponse {
    inner: Incoming,
    read_timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    /// Data arrived since the timer was last armed: re-arm it before waiting again.
    rearm: bool,
    /// Back to the pool when the body ends.
    connection: Option<PooledHttp1>,
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody {
            kind: Kind::Full(Some(bytes.into())),
            sent: 0,
            completion: None,
        }
    }

    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full(None),
            sent: 0,
            completion: None,
        }
    }

    pub fn upstream(
        inner: Incoming,
        read_timeout: Duration,
        connection: Option<PooledHttp1>,
    ) -> Self {
        let body = UpstreamResponse {
            inner,
            read_timeout,
            idle: None,
            rearm: false,
            connection,
        };
        let mut this = ProxyBody {
            kind: Kind::Upstream(Box::new(body)),
            sent: 0,
            completion: None,
        };
        this.release_if_done();
        this
    }

    pub fn with_completion(mut self, completion: Box<dyn Completion>) -> Self {
        self.completion = Some(completion);
        if self.is_end_stream() {
            self.finish(true);
        }
        self
    }

    fn finish(&mut self, finished: bool) {
        if let Some(mut completion) = self.completion.take() {
            completion.complete(self.sent, finished);
        }
    }

    /// An empty upstream body is over at once: its connection can serve again.
    fn release_if_done(&mut self) {
        if let Kind::Upstream(up) = &mut self.kind {
            if up.inner.is_end_stream() {
                if let Some(conn) = up.connection.take() {
                    conn.release();
                }
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) => match Pin::new(&mut up.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    up.rearm = true;
                    if up.inner.is_end_stream() {
                        if let Some(conn) = up.connection.take() {
                            conn.release();
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    up.connection = None;
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(None) => {
                    if let Some(conn) = up.connection.take() {
                        conn.release();
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    let timeout = up.read_timeout;
                    let idle = up
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if std::mem::take(&mut up.rearm) {
                        idle.as_mut().reset(Instant::now() + timeout);
                    }
                    match idle.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            up.connection = None;
                            Poll::Ready(Some(Err(BodyError::UpstreamTimeout(timeout).into())))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(up) => up.inner.size_hint(),
        }
    }
}

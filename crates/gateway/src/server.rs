//! Client connections: accept, TLS (certificate by SNI, ALPN), HTTP/1.1 or HTTP/2 detected
//! per connection (h2c prior knowledge on the plain port too), keep-alive limits, graceful
//! drain on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::framing::HeadScanner;
use crate::io::WriteStall;
use crate::Shared;

pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // nginx's default backlog on Linux is 511; busy gateways raise somaxconn, and so do we.
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Counts open client connections in the metrics' gauge; shutdown waits for zero.
#[derive(Clone)]
pub struct ConnectionTracker {
    open: Gauge,
    closed_all: Arc<Notify>,
}

struct Tracked(ConnectionTracker);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.open.dec() == 1 {
            self.0.closed_all.notify_waiters();
        }
    }
}

impl ConnectionTracker {
    /// Counts in `open` (`nginx_ingress_controller_nginx_process_connections`).
    pub fn new(open: Gauge) -> Self {
        ConnectionTracker {
            open,
            closed_all: Arc::default(),
        }
    }

    fn track(&self) -> Tracked {
        self.open.inc();
        Tracked(self.clone())
    }

    pub fn count(&self) -> usize {
        usize::try_from(self.open.get()).unwrap_or(0)
    }

    /// Waits until no connection is open, or `grace` passed (false then).
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            let notified = self.closed_all.notified();
            if self.count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() == 0;
            }
        }
    }
}

/// One client connection, as the request handler sees it.
pub struct ClientConn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// Requests served so far (`keep-alive-requests`; parking reads it too).
    pub requests: AtomicU32,
    /// Requests in flight: the keep-alive idle timer runs only at zero.
    pub in_flight: AtomicUsize,
    /// The request head just read declared both Content-Length and Transfer-Encoding: the
    /// handler answers 400 and closes (see [`crate::framing`]).
    pub conflicting_framing: AtomicBool,
    /// Notified when an HTTP/2 connection served `keep-alive-requests` streams: it is
    /// closed gracefully (GOAWAY; streams in flight finish), as nginx does.
    pub retire: Notify,
}

impl ClientConn {
    /// nginx's `$scheme`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// The TLS listener's two offers: with h2 in ALPN, and HTTP/1.1 only (`use-http2: false`),
/// chosen per connection from the configuration in force.
pub struct TlsOffers {
    pub with_h2: Arc<ServerConfig>,
    pub http1_only: Arc<ServerConfig>,
}

pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsOffers>,
    shared: Arc<Shared>,
    tracker: ConnectionTracker,
) {
    let acceptors = tls.map(|offers| {
        (
            TlsAcceptor::from(offers.with_h2),
            TlsAcceptor::from(offers.http1_only),
        )
    });
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tracked = tracker.track();
        let shared = shared.clone();
        let acceptor = acceptors.as_ref().map(|(with_h2, http1_only)| {
            if shared.table.load().snapshot.settings.use_http2 {
                with_h2.clone()
            } else {
                http1_only.clone()
            }
        });
        tokio::spawn(serve(stream, peer, acceptor, shared, tracked));
    }
}

/// What a client connection needs of the global settings (copied: a connection must not hold
/// a whole configuration alive).
#[derive(Clone, Copy)]
struct ClientSettings {
    keep_alive: Duration,
    client_header_timeout: Duration,
    max_header_bytes: usize,
}

impl ClientSettings {
    fn current(shared: &Shared) -> Self {
        let table = shared.table.load();
        let settings = &table.snapshot.settings;
        ClientSettings {
            keep_alive: settings.keep_alive,
            client_header_timeout: settings.client_header_timeout,
            max_header_bytes: settings.max_header_bytes,
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tracked: Tracked,
) {
    let shared = &shared;
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let settings = ClientSettings::current(shared);
    let conn = Arc::new(ClientConn {
        peer,
        local,
        tls: acceptor.is_some(),
        requests: AtomicU32::new(0),
        in_flight: AtomicUsize::new(0),
        conflicting_framing: AtomicBool::new(false),
        retire: Notify::new(),
    });
    match acceptor {
        None => {
            // HTTP/2 prior knowledge or HTTP/1.1, by the first bytes (nothing sent within
            // client-header-timeout: closed, as nginx does).
            // Boxed: only a new connection needs room for this wait.
            let first = Box::pin(tokio::time::timeout(
                settings.client_header_timeout,
                starts_http2(&stream),
            ));
            let Ok(Ok(http2)) = first.await else {
                return;
            };
            let io = ClientIo::new(stream, conn.clone(), settings.keep_alive, http2);
            if http2 {
                let _tracked = tracked;
                // Boxed: an HTTP/1.1 connection's task need not carry room for HTTP/2's.
                Box::pin(drive(io, http2, conn, shared, &settings)).await;
            } else {
                serve_http1(io.parkable(), conn, shared.clone(), tracked, settings).await;
            }
        }
        Some(acceptor) => {
            // Boxed: TLS state is large, and plain connections' tasks must not carry room
            // for it.
            Box::pin(async move {
                let _tracked = tracked;
                let handshake =
                    tokio::time::timeout(settings.client_header_timeout, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io = ClientIo::new(tls, conn.clone(), settings.keep_alive, http2);
                        drive(io, http2, conn, shared, &settings).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            })
            .await
        }
    }
}

/// Whether a plain-text connection starts with the HTTP/2 preface (`PRI * HTTP/2.0`), read
/// with `peek` so the bytes stay for the protocol's own parser.
async fn starts_http2(stream: &TcpStream) -> io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; 14];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // A partial preface: wait for more (peek returns what is there).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves a pinned connection until it ends; when `stopping` fires first (shutdown, or an
/// HTTP/2 connection's last allowed stream), it finishes what is in flight and closes
/// (HTTP/1.1: after the response; HTTP/2: GOAWAY). A macro: hyper's two connection types
/// share no trait for graceful shutdown.
macro_rules! until_done {
    ($connection:expr, $stopping:expr) => {{
        let mut connection = $connection;
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("client connection ended: {e}");
                }
            }
            () = $stopping => {
                connection.as_mut().graceful_shutdown();
                if let Err(e) = connection.await {
                    tracing::debug!("client connection ended during shutdown: {e}");
                }
            }
        }
    }};
}

/// Resolves when the connection should finish what is in flight and close: shutdown, or an
/// HTTP/2 connection's last allowed stream.
fn stopping(shared: &Shared, conn: &Arc<ClientConn>) -> impl Future<Output = ()> + 'static {
    let mut shutdown = shared.shutdown.clone();
    let retiring = conn.clone();
    async move {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {}
            () = retiring.retire.notified() => {}
        }
    }
}

/// hyper's HTTP/1.1 server as ingress-nginx's settings configure it.
fn http1_builder(settings: &ClientSettings) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(!settings.keep_alive.is_zero())
        .header_read_timeout(settings.client_header_timeout)
        // The whole request head must fit: above it hyper answers 431.
        .max_header_size(settings.max_header_bytes);
    builder
}

/// How long a plain HTTP/1.1 connection may sit idle before it is parked. A client's next
/// request after a park costs a new task and hyper connection: 250 ms was tried (10,000
/// clients that just went quiet: 65 instead of ~105 MiB in their first second) but clients
/// pausing 300 ms between requests then cost 56-81 instead of 43 µs of CPU per request;
/// clients are many, so a second.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Plain HTTP/1.1, with parking: hyper serves the connection until it has been idle for
/// [`PARK_AFTER`]; then its connection (state, 8 KiB read and 8 KiB write buffer) and this
/// task end, and a small task of its own ([`park`]) waits on the bare socket for the
/// client's next request (a new task with a new hyper connection reads it) or the end of the
/// keep-alive timeout. nginx likewise frees an idle keep-alive connection's buffers;
/// thousands of idle clients then cost little memory.
async fn serve_http1(
    io: ClientIo<TcpStream>,
    conn: Arc<ClientConn>,
    shared: Arc<Shared>,
    tracked: Tracked,
    settings: ClientSettings,
) {
    let Some(io) = http1_until_idle(io, &conn, &shared, &settings).await else {
        return;
    };
    let deadline = io.keep_alive_deadline();
    tokio::spawn(park(io.inner, deadline, conn, shared, tracked));
}

/// A parked connection: only the socket and what identifies the connection, until the client
/// sends its next request (served by a new [`serve_http1`] task), the keep-alive timeout
/// (closed, as nginx closes it) or shutdown.
// Boxed: the two tasks spawn each other, which an `async fn`'s inferred type cannot express.
fn park(
    stream: TcpStream,
    keep_alive_deadline: Instant,
    conn: Arc<ClientConn>,
    shared: Arc<Shared>,
    tracked: Tracked,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let parked = &shared.metrics.parked_connections;
        parked.inc();
        let mut shutdown = shared.shutdown.clone();
        let woken = tokio::select! {
            // poll_read_ready, not readable(): it takes over the socket's reader waker slot,
            // which otherwise keeps the finished serving task's memory (~2 KiB) alive.
            readable = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => readable.is_ok(),
            () = tokio::time::sleep_until(keep_alive_deadline) => false,
            _ = shutdown.wait_for(|stop| *stop) => false,
        };
        parked.dec();
        if woken {
            let settings = ClientSettings::current(&shared);
            let io = ClientIo::new(stream, conn.clone(), settings.keep_alive, false)
                .resumed()
                .parkable();
            tokio::spawn(serve_http1(io, conn, shared, tracked, settings));
        }
    })
}

/// hyper serves the connection until it parks (the socket comes back) or ends (None:
/// closed, upgraded, failed, or shutting down).
async fn http1_until_idle(
    io: ClientIo<TcpStream>,
    conn: &Arc<ClientConn>,
    shared: &Arc<Shared>,
    settings: &ClientSettings,
) -> Option<ClientIo<TcpStream>> {
    let service_shared = shared.clone();
    let service_conn = conn.clone();
    let service = service_fn(move |req| {
        crate::proxy::handle(req, service_conn.clone(), service_shared.clone())
    });
    let mut connection = http1_builder(settings)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let ended_cleanly = tokio::select! {
        result = &mut connection => match result {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("client connection ended: {e}");
                false
            }
        },
        () = stopping(shared, conn) => {
            Pin::new(&mut connection).graceful_shutdown();
            if let Err(e) = (&mut connection).await {
                tracing::debug!("client connection ended during shutdown: {e}");
            }
            false
        }
    };
    // None: upgraded (the tunnel has the socket now).
    let parts = connection.into_parts()?;
    let io = parts.io.into_inner();
    // Parked only from a clean end between requests: hyper holding bytes of a request it
    // did not finish (a body still arriving, a head half read) means the socket is not
    // idle, and those bytes must not be taken for the start of another request.
    (ended_cleanly && io.parked && parts.read_buf.is_empty()).then_some(io)
}

async fn drive<T>(
    io: ClientIo<T>,
    http2: bool,
    conn: Arc<ClientConn>,
    shared: &Arc<Shared>,
    settings: &ClientSettings,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_shared = shared.clone();
    let stopping = stopping(shared, &conn);
    let service =
        service_fn(move |req| crate::proxy::handle(req, conn.clone(), service_shared.clone()));
    let io = TokioIo::new(io);
    if http2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(128);
        // Boxed: an HTTP/2 connection's state is large, and every HTTP/1.1 connection's task
        // would otherwise carry room for it.
        let mut connection = Box::pin(builder.serve_connection(io, service));
        until_done!(connection.as_mut(), stopping);
    } else {
        let mut connection = std::pin::pin!(http1_builder(settings)
            .serve_connection(io, service)
            .with_upgrades());
        until_done!(connection.as_mut(), stopping);
    }
}

/// A client transport that closes itself after `keep_alive` without a request in flight
/// (nginx's `keepalive_timeout`).
pub struct ClientIo<T> {
    inner: T,
    /// Its request counts and framing flag.
    conn: Arc<ClientConn>,
    keep_alive: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    /// The idle timer is running for the current quiet period, which began then.
    armed: bool,
    quiet_since: Instant,
    /// Plain HTTP/1.1: parked when idle (see [`Parking`]).
    parking: Option<Parking>,
    /// Reading ended because of a park, not the client: shutdown must leave the socket open.
    parked: bool,
    framing: FramingGuard,
    /// Bytes were read before (the HTTP/2 preface can only be at the very start).
    seen_bytes: bool,
    /// Armed while a write to the client makes no progress (nginx `send_timeout`): a client
    /// that stops reading cannot hold its upstream connection and limit slots forever.
    write_stall: WriteStall,
}

/// After [`PARK_AFTER`] without a request a plain HTTP/1.1 connection is parked: reading
/// ends (hyper's connection finishes and is dropped with its buffers) and [`park`] waits
/// on the bare socket until the client speaks again.
struct Parking {
    /// The connection's request count (requests begun) when bytes last arrived: while it is
    /// still the count, those bytes may be a request not yet begun (a head half sent, however
    /// short, or pipelined behind the request then in flight), so no park. Bytes of a body
    /// read in pieces hold a connection unparked until its next request, the price of never
    /// cutting a pipelined head in two (hyper would answer the half with a 400).
    requests_at_last_read: u32,
}

/// nginx's `send_timeout` default.
const CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Watches HTTP/1.1 request heads for conflicting framing.
struct FramingGuard {
    scanner: HeadScanner,
    /// HTTP/2 (ALPN or the connection preface): binary frames, nothing to scan.
    http2: bool,
}

impl FramingGuard {
    /// Raises `conflicting` when the head being read declares both framings.
    fn observe(&mut self, read: &[u8], idle: bool, first: bool, conflicting: &AtomicBool) {
        if self.http2 || read.is_empty() {
            return;
        }
        if first && read.starts_with(b"PRI * HTTP/2.0") {
            self.http2 = true;
            return;
        }
        // A read while no request is in flight starts the next head, if it looks like one
        // (a method token): hyper also reads the rest of an unread body then, and that is not
        // a head.
        if idle && !self.scanner.in_head() && starts_with_method(read) {
            self.scanner.start_head();
        }
        if self.scanner.feed(read) {
            conflicting.store(true, Ordering::Release);
        }
    }
}

/// `GET /`, `POST /`...: upper-case letters, then a space.
fn starts_with_method(read: &[u8]) -> bool {
    let token = read.iter().take_while(|b| b.is_ascii_uppercase()).count();
    token > 0 && read.get(token) == Some(&b' ')
}

impl<T> ClientIo<T> {
    fn new(inner: T, conn: Arc<ClientConn>, keep_alive: Duration, http2: bool) -> Self {
        ClientIo {
            inner,
            conn,
            keep_alive,
            idle: None,
            armed: false,
            quiet_since: Instant::now(),
            parking: None,
            parked: false,
            framing: FramingGuard {
                scanner: HeadScanner::default(),
                http2,
            },
            seen_bytes: false,
            write_stall: WriteStall::new(
                CLIENT_SEND_TIMEOUT,
                "client did not read for send_timeout",
            ),
        }
    }

    /// Plain HTTP/1.1: parked when idle.
    fn parkable(mut self) -> Self {
        self.parking = Some(Parking {
            requests_at_last_read: 0,
        });
        self
    }

    /// Back from a park: bytes came before (no HTTP/2 preface can follow).
    fn resumed(mut self) -> Self {
        self.seen_bytes = true;
        self
    }

    /// When the keep-alive timeout of the current quiet period runs out.
    fn keep_alive_deadline(&self) -> Instant {
        self.quiet_since + self.keep_alive
    }

    /// Nothing in flight, no byte of a next request read, no response waiting for the client.
    fn may_park(&self) -> bool {
        self.parking.as_ref().is_some_and(|p| {
            self.conn.requests.load(Ordering::Acquire) != p.requests_at_last_read
                && self.conn.in_flight.load(Ordering::Acquire) == 0
                && !self.write_stall.stalled()
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.armed = false;
                    let conn = &this.conn;
                    let idle = conn.in_flight.load(Ordering::Acquire) == 0;
                    if let Some(parking) = this.parking.as_mut() {
                        parking.requests_at_last_read = conn.requests.load(Ordering::Acquire);
                    }
                    this.framing.observe(
                        &buf.filled()[before..],
                        idle,
                        before == 0 && !this.seen_bytes,
                        &conn.conflicting_framing,
                    );
                    this.seen_bytes = true;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.conn.in_flight.load(Ordering::Acquire) > 0 || this.keep_alive.is_zero() {
                    this.armed = false;
                    return Poll::Pending;
                }
                let keep_alive = this.keep_alive;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(keep_alive)));
                if !this.armed {
                    this.quiet_since = Instant::now();
                    let first = match this.parking {
                        Some(_) => PARK_AFTER.min(keep_alive),
                        None => keep_alive,
                    };
                    idle.as_mut().reset(this.quiet_since + first);
                    this.armed = true;
                }
                loop {
                    let fired = match this.idle.as_mut() {
                        Some(timer) => timer.as_mut().poll(cx).is_ready(),
                        None => false,
                    };
                    if !fired {
                        return Poll::Pending;
                    }
                    // End of stream either way: the keep-alive timeout closes the connection
                    // quietly, as nginx's does; a park hands the socket back to serve_http1.
                    if Instant::now() >= this.keep_alive_deadline() {
                        return Poll::Ready(Ok(()));
                    }
                    if this.may_park() {
                        this.parked = true;
                        return Poll::Ready(Ok(()));
                    }
                    let deadline = this.keep_alive_deadline();
                    if let Some(timer) = this.idle.as_mut() {
                        timer.as_mut().reset(deadline);
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_stall.after(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_stall.after(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            // The connection lives on without hyper: no FIN.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

//! The upstream transport: TCP or TLS over TCP, with `proxy-send-timeout` (nginx: the time
//! between two successive writes) enforced on writes that make no progress.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct TimedIo {
    transport: Transport,
    write_stall: WriteStall,
    /// A read found the end of the stream (over TLS the peer's close_notify may come before
    /// its FIN: the socket alone would look quiet).
    ended: bool,
}

impl TimedIo {
    pub fn plain(stream: TcpStream, send_timeout: Duration) -> Self {
        TimedIo {
            transport: Transport::Plain(stream),
            write_stall: WriteStall::new(send_timeout, "upstream send timed out"),
            ended: false,
        }
    }

    pub fn tls(stream: TlsStream<TcpStream>, send_timeout: Duration) -> Self {
        TimedIo {
            transport: Transport::Tls(Box::new(stream)),
            write_stall: WriteStall::new(send_timeout, "upstream send timed out"),
            ended: false,
        }
    }
}

impl TimedIo {
    /// Whether the peer is quiet: nothing to read and no end of stream, checked without
    /// waiting. It leaves a no-op waker as the socket's reader, so an idle socket does not keep
    /// the waker, and with it the memory, of the finished task that read it last.
    pub fn is_quiet(&self) -> bool {
        if self.ended {
            return false;
        }
        let tcp = match &self.transport {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.get_ref().0,
        };
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        let peeked = tcp.try_io(tokio::io::Interest::READABLE, || {
            socket2::SockRef::from(tcp).peek(&mut byte)
        });
        match peeked {
            // Nothing there (tokio cleared its readiness): wait-free re-registration below.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Bytes nobody asked for, the end of the stream, or an error.
            _ => return false,
        }
        let mut noop = Context::from_waker(std::task::Waker::noop());
        tcp.poll_read_ready(&mut noop).is_pending()
    }
}

/// Fails a write that makes no progress for its timeout (nginx's `proxy_send_timeout` and
/// `send_timeout`: the time between two successive writes). The timer is made on the first
/// stall and re-armed on later ones.
pub struct WriteStall {
    timeout: Duration,
    message: &'static str,
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current stall.
    armed: bool,
}

impl WriteStall {
    /// A write is waiting for the peer to read.
    pub fn stalled(&self) -> bool {
        self.armed
    }

    pub fn new(timeout: Duration, message: &'static str) -> Self {
        WriteStall {
            timeout,
            message,
            timer: None,
            armed: false,
        }
    }

    /// Passes a write's result on; a pending write past the timeout becomes an error.
    pub fn after<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if !r.is_pending() {
            self.armed = false;
            return r;
        }
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !std::mem::replace(&mut self.armed, true) {
            timer.as_mut().reset(Instant::now() + timeout);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, self.message)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = buf.remaining() > 0;
        let before = buf.filled().len();
        let read = match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if matches!(read, Poll::Ready(Ok(()))) && room && buf.filled().len() == before {
            this.ended = true;
        }
        read
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        this.write_stall.after(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.transport {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.write_stall.after(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

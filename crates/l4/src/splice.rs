//! Bidirectional TCP forwarding. On Linux the bytes go socket -> pipe -> socket with
//! `splice(2)` and never enter userspace; elsewhere they are copied.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::TcpStream;

/// Forwards both ways until both have ended. `on_first_eof` runs once, when the first
/// direction ends (the connection becomes half-closed). An error in either direction ends
/// both (the caller drops the sockets).
pub(crate) async fn forward(
    client: &TcpStream,
    server: &TcpStream,
    bytes_in: &AtomicU64,
    bytes_out: &AtomicU64,
    on_first_eof: impl Fn(),
) -> io::Result<()> {
    let first_eof = std::sync::Once::new();
    let (client_done, server_done) = (AtomicBool::new(false), AtomicBool::new(false));
    let upstream = async {
        pump(client, server, bytes_in, &server_done).await?;
        client_done.store(true, Ordering::Relaxed);
        first_eof.call_once(&on_first_eof);
        Ok::<_, io::Error>(())
    };
    let downstream = async {
        pump(server, client, bytes_out, &client_done).await?;
        server_done.store(true, Ordering::Relaxed);
        first_eof.call_once(&on_first_eof);
        Ok::<_, io::Error>(())
    };
    tokio::try_join!(upstream, downstream).map(|_| ())
}

/// Passes the end of one direction on. Skipped when the other direction has ended already:
/// the sockets are closed next, which sends the FIN anyway (one system call less).
fn end_direction(dst: &TcpStream, other_done: &AtomicBool) -> io::Result<()> {
    if other_done.load(Ordering::Relaxed) {
        return Ok(());
    }
    shutdown_write(dst)
}

fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write) {
        // The peer already went away; nothing left to tell it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

#[cfg(target_os = "linux")]
use linux::pump;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// A bigger pipe means fewer system calls per megabyte; the kernel may give less.
    const PIPE_SIZE: libc::c_int = 256 * 1024;

    struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        size: usize,
    }

    impl Pipe {
        fn new() -> io::Result<Pipe> {
            let mut fds = [0 as RawFd; 2];
            // SAFETY: fds is a valid array of two ints for pipe2 to fill.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both are open descriptors we now own.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // SAFETY: F_SETPIPE_SZ on our own pipe; failure leaves the default size.
            let granted = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
            let size = if granted > 0 {
                granted as usize
            } else {
                64 * 1024
            };
            Ok(Pipe { read, write, size })
        }
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: both descriptors are open for the duration of the call; null offsets are
        // required for pipes and sockets.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Moves bytes from `src` to `dst` until `src` ends, then half-closes `dst`. Small
    /// exchanges are copied through a buffer (a pipe costs four system calls to set up);
    /// once a read fills the buffer the flow is bulk and moves to splice.
    pub(crate) async fn pump(
        src: &TcpStream,
        dst: &TcpStream,
        bytes: &AtomicU64,
        other_done: &AtomicBool,
    ) -> io::Result<()> {
        if !super::copy_until_bulk(src, dst, bytes, other_done).await? {
            return Ok(());
        }
        let pipe = Pipe::new()?;
        loop {
            let filled = loop {
                src.readable().await?;
                // Unlike recv, a short splice does not mean the socket is drained (it stops
                // when the pipe runs out of slots), so only EAGAIN clears readiness.
                match src.try_io(Interest::READABLE, || {
                    splice(src.as_raw_fd(), pipe.write.as_raw_fd(), pipe.size)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if filled == 0 {
                return super::end_direction(dst, other_done);
            }
            let mut left = filled;
            while left > 0 {
                dst.writable().await?;
                match dst.try_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)
                }) {
                    Ok(n) => left -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            bytes.fetch_add(filled as u64, Ordering::Relaxed);
        }
    }
}

/// Size of the copy buffer; a read that fills it marks the flow as bulk.
const COPY_BUFFER: usize = 16 * 1024;

/// Copies from `src` to `dst` until `src` ends (then passes the end on and returns false) or
/// a read fills the whole buffer (returns true: the caller may switch to a faster path).
async fn copy_until_bulk(
    src: &TcpStream,
    dst: &TcpStream,
    bytes: &AtomicU64,
    other_done: &AtomicBool,
) -> io::Result<bool> {
    let mut buf: Vec<u8> = Vec::with_capacity(COPY_BUFFER);
    loop {
        buf.clear();
        let n = read_some(src, &mut buf).await?;
        if n == 0 {
            end_direction(dst, other_done)?;
            return Ok(false);
        }
        let mut sent = 0;
        while sent < n {
            dst.writable().await?;
            match dst.try_write(&buf[sent..n]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        if n == COPY_BUFFER && cfg!(target_os = "linux") {
            return Ok(true);
        }
    }
}

/// Reads what `src` has into `buf`'s spare capacity (not zeroed first). A read shorter than
/// the buffer drained the socket, so readiness is cleared right there (through `try_io`,
/// whose readiness tick makes this race-free) instead of by one more read that would only
/// return EAGAIN.
async fn read_some(src: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let capacity = buf.capacity() - buf.len();
    loop {
        src.readable().await?;
        let mut got = None;
        let attempt = src.try_io(tokio::io::Interest::READABLE, || {
            let spare = buf.spare_capacity_mut();
            // SAFETY: recv writes at most `capacity` bytes into the spare capacity, which is
            // valid for writes of that length; the fd is open while `src` lives.
            let n = unsafe { libc::recv(src.as_raw_fd(), spare.as_mut_ptr().cast(), capacity, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            got = Some(n);
            if n > 0 && n < capacity {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        let n = match attempt {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match got {
                Some(n) => n,
                None => continue,
            },
            Err(e) => return Err(e),
        };
        // SAFETY: recv initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        return Ok(n);
    }
}

#[cfg(not(target_os = "linux"))]
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    bytes: &AtomicU64,
    other_done: &AtomicBool,
) -> io::Result<()> {
    copy_until_bulk(src, dst, bytes, other_done)
        .await
        .map(|_| ())
}

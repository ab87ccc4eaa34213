//! Helpers shared by the binary's tests: processes killed on drop, loopback HTTP.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const RVS: &str = env!("CARGO_BIN_EXE_rvs");

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A child process killed when the test ends, pass or fail.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(args: &[&str]) -> Proc {
    Proc(
        Command::new(RVS)
            .args(args)
            .env("RVS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rvs"),
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET over HTTP/1.0; the status and body, or None if the connection failed.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get_host(addr, path, "test")
}

/// GET over HTTP/1.0 with a Host header.
pub fn http_get_host(addr: SocketAddr, path: &str, host: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The name of the backend that answered (first word of the echo body).
pub fn who(addr: SocketAddr) -> Option<String> {
    let (_, body) = http_get(addr, "/")?;
    body.split_whitespace().next().map(str::to_string)
}

pub fn wait_ready(admin: SocketAddr) {
    eventually("rvs ready", Duration::from_secs(15), || {
        http_get(admin, "/readyz").is_some_and(|(s, _)| s == 200)
    });
}

pub fn rvs_ls(admin: SocketAddr, extra: &[&str]) -> Output {
    let admin = admin.to_string();
    let mut args = vec!["ls", "--admin", admin.as_str()];
    args.extend_from_slice(extra);
    Command::new(RVS).args(args).output().unwrap()
}

pub fn echo_backend(name: &str, http: &str) -> Proc {
    spawn(&["echo", "--name", name, "--listen", http])
}

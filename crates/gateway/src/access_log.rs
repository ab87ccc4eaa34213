//! The access log: one JSON line per request, formatted and written by a thread of its own so
//! requests only pay for handing over an entry (no formatting, no copies of the route's
//! names). The writer wakes on a short timer and writes what queued meanwhile in one go, so
//! a busy gateway does not pay a thread wake-up per request. `SIGHUP` reopens the file.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rvs_model::ingress::{Backend, RouteTarget};

use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
    Off,
}

/// One request as the request path hands it over: owned values it had anyway, and the route
/// by reference.
#[derive(Debug)]
pub struct AccessEntry {
    pub time: SystemTime,
    pub remote_addr: std::net::IpAddr,
    pub method: http::Method,
    pub host: String,
    pub uri: http::Uri,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_sent: u64,
    pub request_length: u64,
    pub request_time: f64,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_status: Option<u16>,
    pub upstream_response_time: Option<f64>,
    pub route: Option<Arc<RouteTarget>>,
    /// The canary's backend when the canary served the request.
    pub canary: Option<Arc<Backend>>,
    pub request_id: String,
}

/// One request, as logged (field names as ingress-nginx's JSON log format users write).
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub remote_addr: std::net::IpAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_sent: u64,
    pub request_length: u64,
    pub request_time: f64,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_status: Option<u16>,
    pub upstream_response_time: Option<f64>,
    pub namespace: &'a str,
    pub ingress: &'a str,
    pub service: &'a str,
    pub request_id: &'a str,
}

impl<'a> From<&'a AccessEntry> for AccessRecord<'a> {
    fn from(e: &'a AccessEntry) -> Self {
        let route = e.route.as_deref();
        let service = match (&e.canary, route) {
            (Some(canary), _) => canary.service.name.as_str(),
            (None, Some(r)) => r.backend.service.name.as_str(),
            (None, None) => "",
        };
        AccessRecord {
            time: e.time,
            remote_addr: e.remote_addr,
            method: e.method.as_str(),
            host: &e.host,
            path: e.uri.path_and_query().map_or("/", |p| p.as_str()),
            protocol: e.protocol,
            status: e.status,
            bytes_sent: e.bytes_sent,
            request_length: e.request_length,
            request_time: e.request_time,
            upstream_addr: e.upstream_addr,
            upstream_status: e.upstream_status,
            upstream_response_time: e.upstream_response_time,
            namespace: route.map_or("", |r| r.ingress.namespace.as_str()),
            ingress: route.map_or("", |r| r.ingress.name.as_str()),
            service,
            request_id: &e.request_id,
        }
    }
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    s.serialize_str(&format_rfc3339(since.as_secs(), since.subsec_millis()))
}

/// `2026-11-22T19:30:00.123Z` from Unix seconds and milliseconds.
fn format_rfc3339(secs: u64, millis: u32) -> String {
    let time = SystemTime::UNIX_EPOCH + Duration::new(secs, millis * 1_000_000);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Hands records to the writer; never blocks a request.
#[derive(Clone)]
pub struct AccessLog {
    sender: Option<mpsc::Sender<AccessEntry>>,
    reopen: Arc<AtomicBool>,
}

/// How many records may wait for the writer before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

impl AccessLog {
    /// Starts the writer task for `target`.
    pub fn start(target: AccessLogTarget) -> std::io::Result<AccessLog> {
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = match &target {
            AccessLogTarget::Off => {
                return Ok(AccessLog {
                    sender: None,
                    reopen,
                })
            }
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::File(path) => Sink::File(path.clone(), open(path)?),
        };
        let (sender, receiver) = mpsc::channel(QUEUE);
        // A thread of its own: file writes block, and must not stall the request workers.
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("rvs-access-log".into())
            .spawn(move || write_loop(receiver, writer, &flag))?;
        Ok(AccessLog {
            sender: Some(sender),
            reopen,
        })
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues a record; false when the queue was full (the record is dropped).
    pub fn log(&self, record: AccessEntry) -> bool {
        match &self.sender {
            Some(sender) => sender.try_send(record).is_ok(),
            None => true,
        }
    }

    /// Reopens the file (after `SIGHUP`) before the next line is written.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

enum Sink {
    Stdout,
    File(PathBuf, std::fs::File),
}

fn open(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// How long entries may wait for the writer: short enough for `tail -f`, long enough that a
/// busy gateway wakes the writer ~50 times a second, not once per request.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

fn write_loop(mut receiver: mpsc::Receiver<AccessEntry>, mut sink: Sink, reopen: &AtomicBool) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    // Blocks until an entry comes; None once every sender is gone (the gateway stopped).
    while let Some(first) = receiver.blocking_recv() {
        std::thread::sleep(FLUSH_EVERY);
        buffer.clear();
        let mut entry = Some(first);
        while let Some(e) = entry.take() {
            if serde_json::to_writer(&mut buffer, &AccessRecord::from(&e)).is_ok() {
                buffer.push(b'\n');
            }
            entry = receiver.try_recv().ok();
        }
        if reopen.swap(false, Ordering::AcqRel) {
            if let Sink::File(path, file) = &mut sink {
                match open(path) {
                    Ok(reopened) => *file = reopened,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "cannot reopen the access log: {e}")
                    }
                }
            }
        }
        let result = match &mut sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&buffer),
            Sink::File(_, file) => file.write_all(&buffer),
        };
        if let Err(e) = result {
            tracing::warn!("access log write failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_795_375_800, 123),
            "2026-11-22T19:30:00.123Z"
        );
        assert_eq!(format_rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
    }
}

//! The access log: one JSON line per request, formatted and written by a task of its own so
//! requests only pay for handing over a record. `SIGHUP` reopens the file (log rotation).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

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

/// One request, as logged (field names as ingress-nginx's JSON log format users write).
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub remote_addr: std::net::IpAddr,
    pub method: String,
    pub host: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_sent: u64,
    pub request_length: u64,
    pub request_time: f64,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_status: Option<u16>,
    pub upstream_response_time: Option<f64>,
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub request_id: String,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    s.serialize_str(&format_rfc3339(since.as_secs(), since.subsec_millis()))
}

/// `2026-11-22T19:30:00.123Z` from Unix seconds (civil-from-days, Howard Hinnant's method).
fn format_rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Hands records to the writer; never blocks a request.
#[derive(Clone)]
pub struct AccessLog {
    sender: Option<mpsc::Sender<AccessRecord>>,
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
    pub fn log(&self, record: AccessRecord) -> bool {
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

fn write_loop(mut receiver: mpsc::Receiver<AccessRecord>, mut sink: Sink, reopen: &AtomicBool) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    // Blocks until a record comes; None once every sender is gone (the gateway stopped).
    while let Some(first) = receiver.blocking_recv() {
        buffer.clear();
        let mut record = Some(first);
        let mut batched = 0;
        while let Some(r) = record.take() {
            if serde_json::to_writer(&mut buffer, &r).is_ok() {
                buffer.push(b'\n');
            }
            batched += 1;
            if batched < 256 {
                record = receiver.try_recv().ok();
            }
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

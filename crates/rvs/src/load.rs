//! `rvs load`: many short connections to one address, measuring connect time and which
//! backend answered each. It finds the 1-second stalls of dropped SYNs (the field report's
//! IPVS `conn_reuse_mode` problem) in any cluster, and drives rvs's own stall tests.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Args)]
pub struct LoadArgs {
    /// Address to connect to.
    #[arg(long)]
    target: SocketAddr,
    /// Connections in all.
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Connections open at once.
    #[arg(long, default_value_t = 100)]
    concurrency: u64,
    /// Give up on one connection after this long.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    timeout: Duration,
    /// Stop starting new connections after this long, however many were made.
    #[arg(long, default_value = "300s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Write one CSV line per connection: start_unix_ms,connect_us,total_us,backend.
    #[arg(long)]
    records: Option<PathBuf>,
    /// Write the number of finished connections to this file every 100 ms.
    #[arg(long)]
    progress: Option<PathBuf>,
}

/// What one connection saw.
struct Record {
    start_unix_ms: u64,
    connect_us: u64,
    total_us: u64,
    /// The first word the backend answered with (an `rvs echo` name), or `error: ...`.
    backend: String,
}

#[derive(Serialize)]
struct Summary {
    target: String,
    connections: u64,
    failed: u64,
    seconds: f64,
    connections_per_second: f64,
    connect_ms_p50: f64,
    connect_ms_p99: f64,
    connect_ms_p999: f64,
    connect_ms_max: f64,
    /// Connects that took over 200 ms: in practice dropped SYNs waiting for a retransmission.
    connects_over_200ms: u64,
    backends: BTreeMap<String, u64>,
}

async fn one(target: SocketAddr, timeout: Duration) -> Record {
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let started = Instant::now();
    let connected = tokio::time::timeout(timeout, TcpStream::connect(target)).await;
    let connect_us = started.elapsed().as_micros() as u64;
    let backend = match connected {
        Err(_) => "error: connect timed out".to_string(),
        Ok(Err(e)) => format!("error: connect: {e}"),
        Ok(Ok(mut stream)) => {
            // HTTP/1.0: the server answers and closes first, as in the field report's test.
            let exchange = async {
                stream
                    .write_all(b"GET / HTTP/1.0\r\nHost: rvs-load\r\n\r\n")
                    .await?;
                let mut response = Vec::new();
                stream.read_to_end(&mut response).await?;
                Ok::<_, std::io::Error>(response)
            };
            match tokio::time::timeout(timeout, exchange).await {
                Err(_) => "error: response timed out".into(),
                Ok(Err(e)) => format!("error: {e}"),
                Ok(Ok(response)) => {
                    let text = String::from_utf8_lossy(&response);
                    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or(&text);
                    body.split_whitespace()
                        .next()
                        .unwrap_or("error: empty answer")
                        .to_string()
                }
            }
        }
    };
    Record {
        start_unix_ms,
        connect_us,
        total_us: started.elapsed().as_micros() as u64,
        backend,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

pub async fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + args.duration;
    let done = Arc::new(AtomicU64::new(0));
    if let Some(path) = args.progress.clone() {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                let _ = tokio::fs::write(&path, done.load(Ordering::Relaxed).to_string()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let next = next.clone();
        let done = done.clone();
        let (target, total, timeout) = (args.target, args.connections, args.timeout);
        workers.spawn(async move {
            let mut records = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                records.push(one(target, timeout).await);
                done.fetch_add(1, Ordering::Relaxed);
            }
            records
        });
    }
    let mut records = Vec::new();
    while let Some(batch) = workers.join_next().await {
        records.extend(batch?);
    }
    let seconds = started.elapsed().as_secs_f64();
    records.sort_by_key(|r| r.start_unix_ms);

    let mut connects: Vec<u64> = records.iter().map(|r| r.connect_us).collect();
    connects.sort_unstable();
    let mut backends = BTreeMap::new();
    for r in &records {
        *backends.entry(r.backend.clone()).or_insert(0) += 1;
    }
    let failed = records
        .iter()
        .filter(|r| r.backend.starts_with("error"))
        .count() as u64;
    let summary = Summary {
        target: args.target.to_string(),
        connections: records.len() as u64,
        failed,
        seconds,
        connections_per_second: records.len() as f64 / seconds.max(1e-9),
        connect_ms_p50: percentile(&connects, 50.0),
        connect_ms_p99: percentile(&connects, 99.0),
        connect_ms_p999: percentile(&connects, 99.9),
        connect_ms_max: connects.last().copied().unwrap_or(0) as f64 / 1000.0,
        connects_over_200ms: connects.iter().filter(|us| **us > 200_000).count() as u64,
        backends,
    };
    if let Some(path) = &args.records {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for r in &records {
            writeln!(
                out,
                "{},{},{},{}",
                r.start_unix_ms, r.connect_us, r.total_us, r.backend
            )?;
        }
        out.flush()?;
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

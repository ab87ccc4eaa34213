//! `kube-bench RVS_BINARY`: the in-process API server holding SERVICES Services with
//! ENDPOINTS endpoints each (one EndpointSlice per Service, recorded shapes), rvs watching
//! it; prints time to ready, memory after sync, and the delay from an EndpointSlice change
//! to the data plane applying it (CHANGES changes). No traffic is sent anywhere: the
//! endpoints are documentation addresses, the ClusterIPs loopback.
//!
//! Environment: SERVICES (10000), ENDPOINTS (5), CHANGES (100), GAP_MS (200: between changes,
//! above rvs's --min-sync-period so each change is applied alone), RVS_ARGS (more arguments
//! for `rvs run`, e.g. `--engine nftables` inside a network namespace of its own),
//! RVS_BENCH_LOG (rvs's log filter; warn).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rvs_fakeapi::{as_new, fixture, FakeApi};
use serde_json::{json, Value};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, raw.split_once("\r\n\r\n")?.1.to_string()))
}

fn applied_version(admin: SocketAddr) -> Option<u64> {
    let (_, body) = get(admin, "/api/v1/config")?;
    serde_json::from_str::<Value>(&body).ok()?["version"].as_u64()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cluster_ip(i: usize) -> String {
    format!(
        "127.{}.{}.{}",
        100 + i / 62_500,
        (i / 250) % 250,
        i % 250 + 1
    )
}

fn slice(service_template: &Value, i: usize, endpoints: usize, generation: usize) -> Value {
    let mut s = service_template.clone();
    s["metadata"]["name"] = json!(format!("svc-{i}-abcde"));
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(format!("svc-{i}"));
    let template = s["endpoints"][0].clone();
    s["endpoints"] = Value::Array(
        (0..endpoints)
            .map(|e| {
                let mut ep = template.clone();
                // 198.18.0.0/15 (benchmarking): never contacted, only programmed.
                let host = (i * endpoints + e + generation) % 65_000;
                ep["addresses"] = json!([format!("198.18.{}.{}", host / 250, host % 250 + 1)]);
                ep
            })
            .collect(),
    );
    s
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let rvs = std::env::args()
        .nth(1)
        .context("usage: kube-bench RVS_BINARY")?;
    let services = env_or("SERVICES", 10_000);
    let endpoints = env_or("ENDPOINTS", 5);
    let changes = env_or("CHANGES", 100);
    let gap = Duration::from_millis(env_or("GAP_MS", 200) as u64);

    let api = FakeApi::start().await?;
    let service_template = as_new(fixture("service-web.json"));
    let slice_template = as_new(fixture("endpointslice-web.json"));
    let load = Instant::now();
    for i in 0..services {
        let mut s = service_template.clone();
        s["metadata"]["name"] = json!(format!("svc-{i}"));
        s["spec"]["clusterIP"] = json!(cluster_ip(i));
        s["spec"]["clusterIPs"] = json!([cluster_ip(i)]);
        api.put(s);
        api.put(slice(&slice_template, i, endpoints, 0));
    }
    eprintln!(
        "kube-bench: {services} Services, {} endpoints loaded in {:?}",
        services * endpoints,
        load.elapsed()
    );

    let dir = std::env::temp_dir().join(format!("kube-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = api.write_kubeconfig(&dir)?;
    let admin: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let started = Instant::now();
    let mut child = Command::new(&rvs)
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--admin", &admin.to_string(), "--access-log", "off"])
        .args(
            std::env::var("RVS_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env(
            "RVS_LOG",
            std::env::var("RVS_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {rvs}"))?;
    let result = measure(
        &api,
        &child,
        admin,
        started,
        services,
        endpoints,
        changes,
        gap,
        &slice_template,
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    api: &FakeApi,
    child: &std::process::Child,
    admin: SocketAddr,
    started: Instant,
    services: usize,
    endpoints: usize,
    changes: usize,
    gap: Duration,
    slice_template: &Value,
) -> anyhow::Result<()> {
    loop {
        if get(admin, "/readyz").is_some_and(|(s, _)| s == 200) {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("rvs not ready after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = started.elapsed();
    let served = get(admin, "/api/v1/services")
        .map(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v?["services"].as_array().map(Vec::len))
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(child.id()).unwrap_or(0);

    let mut delays = Vec::with_capacity(changes);
    for n in 0..changes {
        let before = applied_version(admin).context("admin /api/v1/config")?;
        let i = (n * 7919) % services;
        api.put(slice(slice_template, i, endpoints, n + 1));
        let t0 = Instant::now();
        loop {
            if applied_version(admin).is_some_and(|v| v > before) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("change {n} not applied after 10 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        delays.push(t0.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(gap).await;
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "RESULT services={services} endpoints={} served_virtual_services={served} ready_s={:.2} rss_mib={:.1} change_p50_ms={:.1} change_p99_ms={:.1} change_max_ms={:.1} changes={changes}",
        services * endpoints,
        ready.as_secs_f64(),
        rss as f64 / 1024.0,
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays.last().copied().unwrap_or(f64::NAN),
    );
    Ok(())
}

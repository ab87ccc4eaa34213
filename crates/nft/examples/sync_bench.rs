//! Times the nftables engine against a real kernel: a full sync of N Services with E
//! endpoints each, then single-endpoint changes (p50/p99). Run it inside a network namespace
//! of its own (bench/nft.sh does): it programs that namespace's nftables.
//!
//! `sync_bench SERVICES ENDPOINTS CHANGES` (NFT_BACKEND=libnftables or nft: transactions
//! through libnftables or the nft tool instead of rvs's netlink batches)

use std::time::{Duration, Instant};

use rvs_model::{
    EndpointState, Frontend, FrontendKind, Protocol, RealServer, SchedulerConfig, ServiceRef,
    Snapshot, VirtualService,
};
use rvs_nft::{NftConfig, NftEngine, RenderOptions};

fn service(i: u32, endpoints: u32, generation: u32) -> VirtualService {
    let vip = std::net::Ipv4Addr::from(0x0a60_0000 + i); // 10.96.x.y
    let real_servers = (0..endpoints)
        .map(|e| {
            let ip =
                std::net::Ipv4Addr::from(0x0af4_0000 + ((i * endpoints + e + generation) % 0xffff));
            let server = RealServer {
                addr: (ip, 8080).into(),
                weight: 1,
                configured_weight: 1,
                state: EndpointState::Ready,
                node_name: None,
                zone: None,
                target: None,
                is_local: false,
            };
            (server.addr, server)
        })
        // Sorted and unique by address, as the model hands them over.
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect::<Vec<_>>();
    VirtualService {
        protocol: Protocol::Tcp,
        frontend: Frontend::Address {
            addr: (vip, 80).into(),
        },
        kind: FrontendKind::ClusterIp,
        service: ServiceRef {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
        },
        scheduler: SchedulerConfig::default(),
        persistence: None,
        proxy_protocol: false,
        real_servers,
        traffic_policy: Default::default(),
        source_ranges: Vec::new(),
        health_check_node_port: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (services, endpoints, changes) = (
        args.first().copied().unwrap_or(1000),
        args.get(1).copied().unwrap_or(5),
        args.get(2).copied().unwrap_or(100),
    );
    let backend = std::env::var("NFT_BACKEND").ok();
    let engine = NftEngine::new(NftConfig {
        render: RenderOptions {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Default::default()
        },
        // NFT_BACKEND: transactions through libnftables or the nft tool, for comparison.
        netlink: backend.is_none(),
        library: backend.as_deref() != Some("nft"),
        ..Default::default()
    });
    let mut snapshot = Snapshot {
        version: 1,
        services: (0..services)
            .map(|i| service(i, endpoints, 0).into())
            .collect(),
    };
    snapshot
        .services
        .sort_by_key(|vs| (vs.protocol, vs.frontend));

    if std::env::var("RENDER_ONLY").is_ok() {
        render_cost(&snapshot);
        return;
    }
    let shared = std::sync::Arc::new(snapshot.clone());
    let started = Instant::now();
    let stats = engine.apply(&shared, true).await.expect("full sync");
    let full = started.elapsed();
    println!(
        "full_sync services={services} endpoints={endpoints} seconds={:.3} transaction_bytes={} backend={}",
        full.as_secs_f64(),
        stats.transaction_bytes,
        engine.backend()
    );

    let mut times = Vec::new();
    for n in 0..changes {
        // Move one endpoint of one Service.
        let i = (n * 7919) % services;
        let index = snapshot
            .services
            .iter()
            .position(|vs| vs.service.name == format!("svc-{i}"))
            .expect("service");
        snapshot.services[index] = service(i, endpoints, n + 1).into();
        snapshot.version += 1;
        // The reloader builds each snapshot anyway; the engine shares it.
        let shared = std::sync::Arc::new(snapshot.clone());
        let started = Instant::now();
        engine
            .apply(&shared, false)
            .await
            .expect("incremental sync");
        times.push(started.elapsed());
    }
    times.sort();
    if !times.is_empty() {
        println!(
            "endpoint_change services={services} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
            percentile(&times, 50.0).as_secs_f64() * 1000.0,
            percentile(&times, 99.0).as_secs_f64() * 1000.0,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
        );
    }
    if std::env::var("KEEP").is_err() {
        engine.remove_all().await.expect("cleanup");
    }
}

#[allow(dead_code)]
fn render_cost(snapshot: &Snapshot) {
    let options = RenderOptions::default();
    let started = Instant::now();
    let a = rvs_nft::render(snapshot, &options);
    let rendered = started.elapsed();
    let b = a.clone();
    let started = Instant::now();
    let script = a.script(rvs_nft::Before::Applied(&b));
    let diffed = started.elapsed();
    // The full sync's batch, as into an empty namespace.
    let nothing_listed = Default::default();
    let started = Instant::now();
    let full = a.transaction(rvs_nft::Before::Listed(&nothing_listed));
    let batch = rvs_nft::encode(&full).expect("encodable");
    println!(
        "render_ms={:.1} diff_ms={:.1} script_len={} encode_ms={:.1} batch_bytes={}",
        rendered.as_secs_f64() * 1000.0,
        diffed.as_secs_f64() * 1000.0,
        script.len(),
        started.elapsed().as_secs_f64() * 1000.0,
        batch.size_bytes()
    );
}

//! Benchmarks of the nftables engine on the namespace cluster lab (tests/lab): the per-packet
//! cost of a ClusterIP with 10 and with 10,000 Services installed (against the pod address
//! and the userspace engine), and the stall test at full size with rvs's plain masquerade
//! and with kube-proxy's `fully-random`. Every test is `#[ignore]`: `bench/nft.sh` runs them:
//!
//! ```text
//! cargo test --release -p rvs --test kernel_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! and reads the result lines they append to `$RVS_BENCH_OUT` (also printed). Traffic stays
//! inside the lab's namespaces, which are removed at the end (and by bench/nft.sh, from the
//! prefix noted in `$RVS_BENCH_STATE`, if the run is interrupted).
//!
//! Knobs (environment, defaults in brackets): `RVS_BENCH_CONNECTIONS` (20000),
//! `RVS_BENCH_CONCURRENCY` (50), `RVS_BENCH_REPS` (3), `RVS_BENCH_SERVICES` (10000),
//! `RVS_BENCH_IDLE_SECONDS` (10), `RVS_STALL_CONNECTIONS` (100000), `RVS_BENCH_STALL_VARIANTS`
//! (`plain,fully-random`), `RVS_BENCH_STALL_REPS` (1), `RVS_BENCH_GROW` (10000),
//! `RVS_BENCH_GROW_TIMEOUT` (300), `RVS_BENCH_SLACK` (seconds that waiting for a quiet machine
//! and re-running disturbed steps may add; 120), `RVS_BENCH_QUIET_PCT` (15),
//! `RVS_BENCH_OTHER_MAX` (25).

#[path = "../../../tests/lab/mod.rs"]
mod lab;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab::cluster::{lab_manifests, netstat, run_stall, unavailable, write_atomic, Cluster};
use lab::{Lab, Proc};

const RVS: &str = env!("CARGO_BIN_EXE_rvs");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Notes this process and the prefix of the namespaces its labs create (tests/lab names them
/// `rvslab{pid % 100000}x{n}-...`), so that bench/nft.sh can remove them if it is interrupted.
fn note_state() {
    if let Ok(path) = std::env::var("RVS_BENCH_STATE") {
        let pid = std::process::id();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{pid} rvslab{}x", pid % 100_000);
        }
    }
}

/// One result line: printed, and appended to `$RVS_BENCH_OUT`.
fn emit(line: &str) {
    println!("BENCH {line}");
    if let Ok(path) = std::env::var("RVS_BENCH_OUT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open RVS_BENCH_OUT");
        writeln!(f, "{line}").expect("write RVS_BENCH_OUT");
    }
}

// ------------------------------------------------------------------------------ measuring

impl Cluster {
    /// CPU of the nodes' rvs processes over `window`, in % of one CPU per node.
    fn rvs_cpu_pct(&self, window: Duration) -> f64 {
        let pids: Vec<u32> = self.rvs.iter().map(|p| p.0.id()).collect();
        let t0: u64 = pids.iter().map(|p| proc_ticks(*p)).sum();
        std::thread::sleep(window);
        let t1: u64 = pids.iter().map(|p| proc_ticks(*p)).sum();
        100.0 * t1.saturating_sub(t0) as f64 / clk_tck() / window.as_secs_f64() / pids.len() as f64
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Busy ticks of every CPU together, and of each CPU: (busy, total) per CPU.
fn cpu_snapshot() -> (u64, Vec<(u64, u64)>) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut all = 0;
    let mut per_cpu = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("cpu")) {
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() < 8 {
            continue;
        }
        // user nice system idle iowait irq softirq steal
        let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
        let total = busy + f[3] + f[4];
        if line.starts_with("cpu ") {
            all = busy;
        } else {
            per_cpu.push((busy, total));
        }
    }
    (all, per_cpu)
}

/// utime+stime of a process (all threads), in ticks; 0 when it is gone.
fn proc_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 0, utime 11, stime 12, cutime 13, cstime 14.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// This process's own CPU and that of its children it has waited for (load generators).
fn self_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    (11..=14)
        .map(|i| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum()
}

/// Time that waiting for quiet and re-running disturbed steps may still add.
struct Slack {
    left: Duration,
    quiet_pct: u64,
    other_max: f64,
}

impl Slack {
    fn from_env() -> Slack {
        Slack {
            left: Duration::from_secs(env_u64("RVS_BENCH_SLACK", 120)),
            quiet_pct: env_u64("RVS_BENCH_QUIET_PCT", 15),
            other_max: env_u64("RVS_BENCH_OTHER_MAX", 25) as f64,
        }
    }

    /// Waits (1 s at least, 30 s or the slack left at most) until no CPU was busier than
    /// `quiet_pct` for a whole second. The busiest CPU's % in the last second.
    fn quiet(&mut self) -> u64 {
        let mut waited = 0;
        loop {
            let (_, a) = cpu_snapshot();
            std::thread::sleep(Duration::from_secs(1));
            let (_, b) = cpu_snapshot();
            let busiest = a
                .iter()
                .zip(&b)
                .map(|((b0, t0), (b1, t1))| {
                    if t1 > t0 {
                        100 * (b1 - b0) / (t1 - t0)
                    } else {
                        0
                    }
                })
                .max()
                .unwrap_or(0);
            if waited > 0 {
                self.left = self.left.saturating_sub(Duration::from_secs(1));
            }
            waited += 1;
            if busiest <= self.quiet_pct || waited > 30 || self.left.is_zero() {
                return busiest;
            }
        }
    }
}

/// One run of `rvs load`.
#[derive(Debug, Default, Clone)]
struct Step {
    connections: u64,
    failed: u64,
    rate: f64,
    seconds: f64,
    connect_p50: f64,
    connect_p99: f64,
    connect_max: f64,
    total_p50: f64,
    total_p99: f64,
    stalls: u64,
    syn_retransmits: u64,
    /// Busy CPU time of the whole machine per connection, µs.
    cpu_us_per_conn: f64,
    /// CPU used during the step by anything but the benchmark's processes, % of one CPU.
    other_pct: f64,
    busy_before: u64,
    attempts: u32,
    backends: String,
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

/// `rvs load` from `ns` to `target`, between a quiet wait and CPU accounting; run again
/// (while the slack lasts, at most twice) when other work disturbed it.
fn measure(
    lab: &Lab,
    ours: &[u32],
    (ns, target): (&str, &str),
    (connections, concurrency): (u64, u64),
    slack: &mut Slack,
    work: &Path,
) -> Step {
    let tck = clk_tck();
    let records = work.join("records.csv");
    for attempt in 1.. {
        let busy_before = slack.quiet();
        let retrans0 = netstat(lab, ns, "TcpExt", "TCPSynRetrans");
        let ours0: u64 = ours.iter().map(|p| proc_ticks(*p)).sum::<u64>() + self_ticks();
        let (all0, _) = cpu_snapshot();
        let out = lab
            .cmd(
                ns,
                RVS,
                &[
                    "load",
                    "--target",
                    target,
                    "--connections",
                    &connections.to_string(),
                    "--concurrency",
                    &concurrency.to_string(),
                    "--timeout",
                    "10s",
                    "--duration",
                    "300s",
                    "--records",
                    records.to_str().unwrap(),
                ],
            )
            .stdin(Stdio::null())
            .output()
            .expect("rvs load");
        let (all1, _) = cpu_snapshot();
        let ours1: u64 = ours.iter().map(|p| proc_ticks(*p)).sum::<u64>() + self_ticks();
        let retrans1 = netstat(lab, ns, "TcpExt", "TCPSynRetrans");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "rvs load output: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let mut totals: Vec<u64> = std::fs::read_to_string(&records)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(',').nth(2).and_then(|v| v.parse().ok()))
            .collect();
        totals.sort_unstable();
        let f = |k: &str| summary[k].as_f64().unwrap_or(0.0);
        let seconds = f("seconds").max(1e-9);
        let busy = all1.saturating_sub(all0) as f64;
        let other = busy - ours1.saturating_sub(ours0) as f64;
        let backends = summary["backends"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{}:{}", k.replace([' ', ':'], "_"), v))
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        let step = Step {
            connections: f("connections") as u64,
            failed: f("failed") as u64,
            rate: f("connections_per_second"),
            seconds,
            connect_p50: f("connect_ms_p50"),
            connect_p99: f("connect_ms_p99"),
            connect_max: f("connect_ms_max"),
            total_p50: percentile_ms(&totals, 50.0),
            total_p99: percentile_ms(&totals, 99.0),
            stalls: f("connects_over_200ms") as u64,
            syn_retransmits: retrans1.saturating_sub(retrans0),
            cpu_us_per_conn: busy / tck * 1e6 / f("connections").max(1.0),
            other_pct: 100.0 * other / tck / seconds,
            busy_before,
            attempts: attempt,
            backends,
        };
        if step.other_pct > slack.other_max && attempt <= 2 && !slack.left.is_zero() {
            println!(
                "  other work used {:.0}% of a CPU during the step: running it again",
                step.other_pct
            );
            slack.left = slack
                .left
                .saturating_sub(Duration::from_secs_f64(seconds + 1.0));
            continue;
        }
        return step;
    }
    unreachable!()
}

// ------------------------------------------------------------------------------ manifests

fn service_yaml(name: &str, cluster_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  clusterIP: {cluster_ip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    )
}

fn slice_yaml(service: &str, addresses: &[String]) -> String {
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: bench, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
    );
    for a in addresses {
        out.push_str(&format!("  - {{addresses: [{a}]}}\n"));
    }
    out
}

/// `count` filler Services (ClusterIPs 10.97.x.y) with 5 endpoints each on pod addresses
/// nobody has (10.100.x.y): they fill the tables, no traffic goes to them.
fn fillers(count: u64) -> String {
    let mut out = String::from("# Filler Services written by kernel_bench.rs\n");
    for i in 0..count {
        let name = format!("filler-{i}");
        let ip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
        let endpoints: Vec<String> = (0..5)
            .map(|e| {
                let k = i * 5 + e;
                format!("10.100.{}.{}", k / 250, k % 250 + 1)
            })
            .collect();
        out.push_str("---\n");
        out.push_str(&service_yaml(&name, &ip));
        out.push_str("---\n");
        out.push_str(&slice_yaml(&name, &endpoints));
    }
    out
}

// ------------------------------------------------------------------------------ per packet

fn bench_files(services: u64) -> Vec<(String, String)> {
    let endpoints = ["10.244.2.10".to_string(), "10.244.2.11".to_string()];
    let bench = format!(
        "{}---\n{}",
        service_yaml("bench", "10.96.0.10"),
        slice_yaml("bench", &endpoints)
    );
    vec![
        ("bench.yaml".to_string(), bench),
        (
            "fillers.yaml".to_string(),
            fillers(services.saturating_sub(1)),
        ),
    ]
}

/// The lab of the per-packet benchmark: `services` Services installed from the start, and
/// the userspace engine in the client pod n1p2 (VIP 10.96.1.10 on the pod's loopback).
struct PacketLab {
    services: u64,
    c: Cluster,
    userspace: Proc,
    _user_dir: tempfile::TempDir,
    /// Seconds from starting rvs to both nodes ready (manifests parsed, rules in force).
    ready_s: f64,
}

impl PacketLab {
    fn start(services: u64) -> PacketLab {
        let started = Instant::now();
        let c = Cluster::start(3, &bench_files(services), &[]);
        let ready_s = started.elapsed().as_secs_f64();
        let user_client = c.lab.nodes[0].pods[2].ns.clone();
        let user_dir = tempfile::tempdir().unwrap();
        let endpoints = ["10.244.2.10".to_string(), "10.244.2.11".to_string()];
        std::fs::write(
            user_dir.path().join("bench-userspace.yaml"),
            format!(
                "{}---\n{}",
                service_yaml("bench-userspace", "10.96.1.10"),
                slice_yaml("bench-userspace", &endpoints)
            ),
        )
        .unwrap();
        let user_log = c.dir.path().join("userspace.log");
        let userspace = c.lab.spawn(
            &user_client,
            RVS,
            &[
                "run",
                "-f",
                user_dir.path().to_str().unwrap(),
                "--manage-vips",
                "lo",
                "--admin",
                "127.0.0.1:9090",
                "--log",
                "warn",
            ],
            Some(&user_log),
        );
        c.eventually("userspace engine answers on 10.96.1.10", 30, || {
            c.curl(&user_client, "http://10.96.1.10/").is_ok()
        });
        let kernel_client = c.lab.nodes[0].pods[0].ns.clone();
        c.eventually("ClusterIP answers", 30, || {
            c.curl(&kernel_client, "http://10.96.0.10/").is_ok()
        });
        PacketLab {
            services,
            c,
            userspace,
            _user_dir: user_dir,
            ready_s,
        }
    }

    /// (client namespace, target) of a path.
    fn path(&self, path: &str) -> (String, &'static str) {
        let pods = &self.c.lab.nodes[0].pods;
        match path {
            "direct" => (pods[1].ns.clone(), "10.244.2.10:8080"),
            "nftables" => (pods[0].ns.clone(), "10.96.0.10:80"),
            "userspace" => (pods[2].ns.clone(), "10.96.1.10:80"),
            other => panic!("no path {other}"),
        }
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = self.c.pids();
        pids.push(self.userspace.0.id());
        pids
    }
}

/// Elements of the `service-ips` dispatch map on a node.
fn dispatch_elements(c: &Cluster, node_ns: &str) -> usize {
    let out = c
        .lab
        .exec(node_ns, "nft", &["list", "map", "ip", "rvs", "service-ips"]);
    String::from_utf8_lossy(&out.stdout).matches(" : ").count()
}

/// Connect latency and short-connection rate from a pod on node1 to two pods on node2,
/// on two labs side by side: one with 10 Services installed, one with 10,000 (the other
/// Services point at pod addresses nobody has). In each lab, three paths:
///
/// - `direct`: client pod n1p1 to the pod address 10.244.2.10:8080 (n2p0 only);
/// - `nftables`: client pod n1p0 to the ClusterIP 10.96.0.10:80 (endpoints n2p0 and n2p1),
///   the nftables engine in node1 and node2;
/// - `userspace`: client pod n1p2 to 10.96.1.10:80 (same endpoints), served by a userspace
///   `rvs run --manage-vips lo` in n1p2 itself (the VIP on the pod's loopback).
///
/// One client pod per path, so that no path inherits another's conntrack or TIME_WAIT
/// entries. The labs are built with their Services from the start: adding 10,000 Services
/// to a running rvs is `grow_running_rvs`.
#[test]
#[ignore = "benchmark: bench/nft.sh runs it"]
fn per_packet_cost() {
    if let Some(why) = unavailable() {
        println!("SKIPPED per-packet benchmark: {why}");
        return;
    }
    note_state();
    let connections = env_u64("RVS_BENCH_CONNECTIONS", 20_000);
    let concurrency = env_u64("RVS_BENCH_CONCURRENCY", 50);
    let reps = env_u64("RVS_BENCH_REPS", 3).max(1);
    let big = env_u64("RVS_BENCH_SERVICES", 10_000);
    let mut slack = Slack::from_env();

    let idle_window = Duration::from_secs(env_u64("RVS_BENCH_IDLE_SECONDS", 10).max(1));
    let labs = [PacketLab::start(10), PacketLab::start(big)];
    for l in &labs {
        emit(&format!(
            "setup services={} ready_s={:.2} dispatch_elements={} rvs_idle_cpu_pct_per_node={:.1}",
            l.services,
            l.ready_s,
            dispatch_elements(&l.c, &l.c.lab.nodes[0].ns),
            l.c.rvs_cpu_pct(idle_window)
        ));
    }
    // The nftables engine's rvs re-reads its manifest directory every 2 s, which at 10,000
    // Services costs a good part of a CPU (the setup line above): paused during the steps, so
    // that the steps measure the kernel's data path, not rvs's control plane on shared CPUs.
    for l in &labs {
        l.c.signal_rvs("STOP");
    }
    let ours: Vec<u32> = labs.iter().flat_map(PacketLab::pids).collect();
    let work = tempfile::tempdir().unwrap();
    let mut steps = Vec::new();
    for (i, _) in labs.iter().enumerate() {
        for path in ["direct", "nftables", "userspace"] {
            steps.push((i, path));
        }
    }
    // Warm-up: neighbour entries, caches, the userspace engine's first connections.
    for (i, path) in &steps {
        let (ns, target) = labs[*i].path(path);
        let _ = labs[*i]
            .c
            .lab
            .cmd(
                &ns,
                RVS,
                &[
                    "load",
                    "--target",
                    target,
                    "--connections",
                    "2000",
                    "--concurrency",
                    &concurrency.to_string(),
                ],
            )
            .stdin(Stdio::null())
            .output();
    }
    for rep in 1..=reps {
        let n = steps.len();
        for k in 0..n {
            // Rotated by two per repetition: every step takes every position.
            let (i, path) = steps[(k + 2 * (rep as usize - 1)) % n];
            let l = &labs[i];
            let (ns, target) = l.path(path);
            let s = measure(
                &l.c.lab,
                &ours,
                (&ns, target),
                (connections, concurrency),
                &mut slack,
                work.path(),
            );
            emit(&format!(
                "per_packet rep={rep} services={} path={path} connections={} failed={} rate={:.1} seconds={:.2} connect_p50_ms={:.3} connect_p99_ms={:.3} connect_max_ms={:.1} total_p50_ms={:.3} total_p99_ms={:.3} stalls={} syn_retransmits={} cpu_us_per_conn={:.1} other_pct={:.0} busy_before={} attempts={} backends={}",
                l.services, s.connections, s.failed, s.rate, s.seconds, s.connect_p50,
                s.connect_p99, s.connect_max, s.total_p50, s.total_p99, s.stalls,
                s.syn_retransmits, s.cpu_us_per_conn, s.other_pct, s.busy_before, s.attempts,
                s.backends
            ));
        }
    }
    for l in &labs {
        l.c.signal_rvs("CONT");
    }
}

/// Whether a ClusterIP is in the `service-ips` map of a node (one cheap `nft get element`:
/// the map changes in one transaction, so one element tells whether all are in force).
fn in_dispatch(c: &Cluster, node_ns: &str, ip: &str) -> bool {
    c.lab
        .exec(
            node_ns,
            "nft",
            &[
                "get",
                "element",
                "ip",
                "rvs",
                "service-ips",
                &format!("{{ {ip} . tcp . 80 }}"),
            ],
        )
        .status
        .success()
}

/// Adds Services to a running rvs (10 -> `RVS_BENCH_GROW`, default 10,000) and removes them
/// again: per node, when the new rules were in force (the last filler's ClusterIP in the
/// dispatch map) and when rvs reported the reload done (its config version), which is after
/// its conntrack cleanup for new frontends. Gives up waiting after `RVS_BENCH_GROW_TIMEOUT`
/// seconds (300).
#[test]
#[ignore = "benchmark: bench/nft.sh runs it"]
fn grow_running_rvs() {
    if let Some(why) = unavailable() {
        println!("SKIPPED grow benchmark: {why}");
        return;
    }
    note_state();
    let grow = env_u64("RVS_BENCH_GROW", 10_000).max(2);
    let timeout = Duration::from_secs(env_u64("RVS_BENCH_GROW_TIMEOUT", 300));
    let c = Cluster::start(1, &bench_files(10), &[]);
    let last = grow - 2;
    let last_ip = format!("10.97.{}.{}", last / 250, last % 250 + 1);
    for (what, services, want_present) in [("add", grow, true), ("remove", 10, false)] {
        let before: Vec<u64> = c
            .lab
            .nodes
            .iter()
            .map(|n| c.config_version(&n.ns))
            .collect();
        let started = Instant::now();
        write_atomic(
            &c.dir.path().join("fillers.yaml"),
            &fillers(services.saturating_sub(1)),
        );
        let nodes = c.lab.nodes.len();
        let (mut in_force, mut done) = (vec![None; nodes], vec![None; nodes]);
        while started.elapsed() < timeout
            && (in_force.iter().any(Option::is_none) || done.iter().any(Option::is_none))
        {
            for (i, node) in c.lab.nodes.iter().enumerate() {
                if in_force[i].is_none() && in_dispatch(&c, &node.ns, &last_ip) == want_present {
                    in_force[i] = Some(started.elapsed().as_secs_f64());
                }
                if done[i].is_none() && c.config_version(&node.ns) > before[i] {
                    done[i] = Some(started.elapsed().as_secs_f64());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let show = |v: &[Option<f64>]| {
            v.iter()
                .map(|t| t.map_or("timeout".to_string(), |t| format!("{t:.2}")))
                .collect::<Vec<_>>()
        };
        let (f, d) = (show(&in_force), show(&done));
        emit(&format!(
            "grow what={what} services={services} node1_in_force_s={} node2_in_force_s={} node1_done_s={} node2_done_s={} timeout_s={}",
            f[0], f[1], d[0], d[1], timeout.as_secs()
        ));
        if done.iter().any(Option::is_none) {
            break;
        }
    }
}

// ------------------------------------------------------------------------------ stalls

/// The stall test at full size (100,000 connections) with rvs's plain masquerade and with
/// kube-proxy's `fully-random`, alternating, `RVS_BENCH_STALL_REPS` (1) times each, each run
/// on a fresh lab. Reports, asserts nothing:
/// kernel_engine.rs's `no_connect_stalls_while_endpoints_change` is the test.
#[test]
#[ignore = "benchmark: bench/nft.sh runs it"]
fn stall_full_size() {
    if let Some(why) = unavailable() {
        println!("SKIPPED stall benchmark: {why}");
        return;
    }
    note_state();
    let total = env_u64("RVS_STALL_CONNECTIONS", 100_000);
    let variants =
        std::env::var("RVS_BENCH_STALL_VARIANTS").unwrap_or_else(|_| "plain,fully-random".into());
    let reps = env_u64("RVS_BENCH_STALL_REPS", 1).max(1);
    let mut slack = Slack::from_env();
    let variants: Vec<&str> = variants
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    // Variants alternate, each run on a fresh lab (no conntrack or TIME_WAIT left over).
    for (rep, variant) in (1..=reps).flat_map(|r| variants.iter().map(move |v| (r, *v))) {
        let mut args = vec!["--masquerade-all"];
        match variant {
            "plain" => {}
            "fully-random" => args.push("--masquerade-fully-random"),
            other => panic!("unknown stall variant {other:?} (plain, fully-random)"),
        }
        let c = Cluster::start(3, &lab_manifests(), &args);
        let busy_before = slack.quiet();
        let started = Instant::now();
        let (busy0, _) = cpu_snapshot();
        let r = run_stall(&c, total);
        let (busy1, _) = cpu_snapshot();
        let cpu_us_per_conn =
            busy1.saturating_sub(busy0) as f64 / clk_tck() * 1e6 / r.connections.max(1) as f64;
        let ct = |k: &str| r.conntrack.get(k).copied().unwrap_or(0);
        emit(&format!(
            "stall rep={rep} variant={variant} connections={} failed={} rate={:.1} connect_p50_ms={:.3} connect_p99_ms={:.3} connect_p999_ms={:.3} connect_max_ms={:.1} stalls={} syn_retransmits={} after_removal={} new_share_first_second={:.3} ct_insert_failed={} ct_drop={} ct_clashres={} ct_early_drop={} ct_invalid={} cpu_us_per_conn={cpu_us_per_conn:.1} seconds={:.1} busy_before={busy_before}",
            r.connections, r.failed, r.per_second, r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms,
            r.stalls, r.syn_retransmits, r.after_removal, r.new_share_first_second,
            ct("insert_failed"), ct("drop"), ct("clashres"), ct("early_drop"), ct("invalid"),
            started.elapsed().as_secs_f64()
        ));
    }
}

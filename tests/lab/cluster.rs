//! A running cluster on the lab: `rvs echo` in every pod, `rvs run --engine nftables` in
//! every node, and the stall scenario. Shared by the kernel-engine tests and benchmarks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Lab, Proc, CLUSTER_CIDR, CLUSTER_CIDR6};

const RVS: &str = env!("CARGO_BIN_EXE_rvs");

/// Why the kernel-engine tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = Lab::unavailable() {
        return Some(why);
    }
    for tool in ["nft", "curl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is not installed (.ci/run installs it)"));
        }
    }
    None
}

pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The lab (2 nodes), `rvs echo` in every pod, `rvs run --engine nftables` in every node.
pub struct Cluster {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    /// `rvs run` in each node, in node order.
    pub rvs: Vec<Proc>,
    pub echo: Vec<Proc>,
}

impl Cluster {
    /// `files` are the manifests (file name, text) rvs serves; `extra_args` go to `rvs run`.
    pub fn start(pods_per_node: usize, files: &[(String, String)], extra_args: &[&str]) -> Self {
        let lab = Lab::build(2, pods_per_node).expect("build the lab");
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut echo = Vec::new();
        for pod in lab.pods() {
            echo.push(lab.spawn(
                &pod.ns,
                RVS,
                &[
                    "echo",
                    "--name",
                    &pod.name,
                    "--listen",
                    "[::]:8080",
                    "--udp",
                    "0.0.0.0:5353",
                ],
                None,
            ));
        }
        let cidrs = format!("{CLUSTER_CIDR},{CLUSTER_CIDR6}");
        let mut rvs = Vec::new();
        for node in &lab.nodes {
            let log = dir.path().join(format!("{}.log", node.name));
            let mut args = vec![
                "run",
                "-f",
                dir.path().to_str().unwrap(),
                "--engine",
                "nftables",
                "--node-name",
                &node.name,
                "--cluster-cidr",
                &cidrs,
                "--admin",
                "127.0.0.1:9090",
                "--log",
                "info",
            ];
            args.extend_from_slice(extra_args);
            rvs.push(lab.spawn(&node.ns, RVS, &args, Some(&log)));
        }
        let cluster = Cluster {
            lab,
            dir,
            rvs,
            echo,
        };
        for node in &cluster.lab.nodes {
            // -f: readyz answers 503 until the first configuration is in force.
            cluster.eventually(&format!("rvs ready on {}", node.name), 120, || {
                cluster
                    .lab
                    .exec(
                        &node.ns,
                        "curl",
                        &["-sf", "--max-time", "1", "http://127.0.0.1:9090/readyz"],
                    )
                    .status
                    .success()
            });
        }
        for pod in cluster.lab.pods() {
            let url = format!("http://{}:8080/", pod.ip);
            cluster.eventually(&format!("echo up in {}", pod.name), 15, || {
                cluster.curl(&pod.ns, &url).is_ok()
            });
        }
        cluster
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{node}.log"))).unwrap_or_default()
    }

    pub fn eventually(&self, what: &str, seconds: u64, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !check() {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for: {what}\nnode1 log:\n{}\nnode2 log:\n{}",
                    self.log("node1"),
                    self.log("node2")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET `url` from namespace `ns`: the body, or curl's exit code.
    pub fn curl(&self, ns: &str, url: &str) -> Result<String, i32> {
        let out = self
            .lab
            .exec(ns, "curl", &["-s", "-g", "--max-time", "1", url]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(out.status.code().unwrap_or(-1))
        }
    }

    /// (backend name, client address it saw).
    pub fn hit(&self, ns: &str, url: &str) -> Result<(String, IpAddr), i32> {
        let body = self.curl(ns, url)?;
        let mut words = body.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        let client = words.next().unwrap_or_default();
        let ip = client.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(client);
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip = ip.strip_prefix("::ffff:").unwrap_or(ip);
        Ok((
            name,
            ip.parse()
                .unwrap_or_else(|_| panic!("bad echo answer {body:?}")),
        ))
    }

    /// The version of the configuration in force in the rvs of `node_ns` (0 if unknown).
    pub fn config_version(&self, node_ns: &str) -> u64 {
        self.curl(node_ns, "http://127.0.0.1:9090/api/v1/config")
            .ok()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["version"].as_u64())
            .unwrap_or(0)
    }

    /// Pauses (`STOP`) or resumes (`CONT`) the nodes' rvs processes. The rules they wrote stay
    /// in the kernel and keep serving.
    pub fn signal_rvs(&self, signal: &str) {
        for p in &self.rvs {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &p.0.id().to_string()])
                .status();
        }
    }

    /// The pids of the long-running processes (rvs and echo): their CPU is the benchmark's.
    pub fn pids(&self) -> Vec<u32> {
        self.rvs
            .iter()
            .chain(self.echo.iter())
            .map(|p| p.0.id())
            .collect()
    }
}

/// A counter of `/proc/net/netstat` (`TcpExt` `TCPSynRetrans`...) inside a namespace.
pub fn netstat(lab: &Lab, ns: &str, group: &str, name: &str) -> u64 {
    let out = lab.exec(ns, "cat", &["/proc/net/netstat"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let prefix = format!("{group}:");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    if rows.len() < 2 {
        return 0;
    }
    let names: Vec<&str> = rows[0].split_whitespace().collect();
    let values: Vec<&str> = rows[1].split_whitespace().collect();
    names
        .iter()
        .position(|n| *n == name)
        .and_then(|i| values.get(i))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// conntrack statistics of a namespace (`/proc/net/stat/nf_conntrack`, summed over CPUs).
pub fn conntrack_stats(lab: &Lab, ns: &str) -> BTreeMap<String, u64> {
    let out = lab.exec(ns, "cat", &["/proc/net/stat/nf_conntrack"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let names: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut sums = BTreeMap::new();
    for line in lines {
        for (name, value) in names.iter().zip(line.split_whitespace()) {
            // "entries" is a gauge (the same on every row); the rest are per-CPU counters.
            let v = u64::from_str_radix(value, 16).unwrap_or(0);
            let e = sums.entry(name.clone()).or_insert(0);
            if name == "entries" {
                *e = v;
            } else {
                *e += v;
            }
        }
    }
    sums
}

pub struct StallReport {
    pub connections: u64,
    pub failed: u64,
    pub stalls: u64,
    pub max_ms: f64,
    pub p999_ms: f64,
    pub p99_ms: f64,
    pub p50_ms: f64,
    pub after_removal: u64,
    pub new_share_first_second: f64,
    pub syn_retransmits: u64,
    pub per_second: f64,
    /// conntrack statistics of node1 (insert_failed, drop, clashres) during the run.
    pub conntrack: BTreeMap<String, u64>,
}

pub fn stall_slice(name: &str, pods: &[(&str, &str, &str)]) -> String {
    let mut out = format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: stall}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n");
    for (ip, node, pod) in pods {
        out.push_str(&format!(
            "  - {{addresses: [{ip}], nodeName: {node}, targetRef: {{kind: Pod, name: {pod}}}}}\n"
        ));
    }
    out
}

/// The stall scenario (shared/findings/snat-stall.md): `total` short connections, 100 at once, from n1p0 to a masqueraded ClusterIP
/// while its endpoints go 2 -> 4 -> 1, on a cluster with 3 pods per node.
pub fn run_stall(c: &Cluster, total: u64) -> StallReport {
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: stall, namespace: default}\nspec:\n  clusterIP: 10.96.0.20\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";
    let two = [
        ("10.244.1.11", "node1", "n1p1"),
        ("10.244.2.10", "node2", "n2p0"),
    ];
    let four = [
        ("10.244.1.11", "node1", "n1p1"),
        ("10.244.2.10", "node2", "n2p0"),
        ("10.244.1.12", "node1", "n1p2"),
        ("10.244.2.11", "node2", "n2p1"),
    ];
    let one = [("10.244.1.11", "node1", "n1p1")];
    let eps = c.dir.path().join("stall-endpoints.yaml");
    write_atomic(&c.dir.path().join("stall-service.yaml"), service);
    write_atomic(&eps, &stall_slice("stall-1", &two));
    let client = c.lab.nodes[0].pods[0].ns.clone();
    let node1 = c.lab.nodes[0].ns.clone();
    c.eventually("stall service up", 15, || {
        c.hit(&client, "http://10.96.0.20/").is_ok()
    });
    let retrans0 = netstat(&c.lab, &client, "TcpExt", "TCPSynRetrans");
    let ct0 = conntrack_stats(&c.lab, &node1);

    let records = c.dir.path().join("stall-records.csv");
    let progress = c.dir.path().join("stall-progress");
    let mut load = c.lab.cmd(
        &client,
        RVS,
        &[
            "load",
            "--target",
            "10.96.0.20:80",
            "--connections",
            &total.to_string(),
            "--concurrency",
            "100",
            "--timeout",
            "10s",
            "--duration",
            "600s",
            "--records",
            records.to_str().unwrap(),
            "--progress",
            progress.to_str().unwrap(),
        ],
    );
    let load = load
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Let the load settle, then 2 -> 4, then 4 -> 1, noting when node1 applied each.
    let applied_after = |version_before: u64| -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.config_version(&node1) <= version_before {
            assert!(
                Instant::now() < deadline,
                "change not applied in time; node1 log:\n{}",
                c.log("node1")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        now_ms()
    };
    let reached = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while std::fs::read_to_string(&progress)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0)
            < count
        {
            assert!(
                Instant::now() < deadline,
                "load stuck before {count} connections"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    reached(total / 3);
    let v = c.config_version(&node1);
    write_atomic(&eps, &stall_slice("stall-1", &four));
    let added_at = applied_after(v);
    reached(total * 2 / 3);
    let v = c.config_version(&node1);
    let removal_written_at = now_ms();
    write_atomic(&eps, &stall_slice("stall-1", &one));
    let removed_at = applied_after(v);

    let out = load.wait_with_output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rvs load output: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let syn_retransmits =
        netstat(&c.lab, &client, "TcpExt", "TCPSynRetrans").saturating_sub(retrans0);
    let ct1 = conntrack_stats(&c.lab, &node1);
    let conntrack = ["insert_failed", "drop", "clashres", "early_drop", "invalid"]
        .iter()
        .map(|k| {
            let d = ct1
                .get(*k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(ct0.get(*k).copied().unwrap_or(0));
            (k.to_string(), d)
        })
        .collect();

    let text = std::fs::read_to_string(&records).unwrap();
    for failed in text.lines().filter(|l| l.contains("error")).take(5) {
        println!("failed connection: {failed} (removal applied at {removed_at}, endpoints added at {added_at})");
    }
    let (mut after_removal, mut first_second, mut first_second_new) = (0, 0, 0);
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        let (Ok(start), Some(backend)) = (fields[0].parse::<u64>(), fields.get(3)) else {
            continue;
        };
        // Conservative: a connection started after we saw the removal applied.
        if start > removed_at && ["n2p0", "n1p2", "n2p1"].contains(backend) {
            after_removal += 1;
        }
        // The first second after the addition, or less if the removal came sooner.
        if start >= added_at && start < (added_at + 1000).min(removal_written_at) {
            first_second += 1;
            if ["n1p2", "n2p1"].contains(backend) {
                first_second_new += 1;
            }
        }
    }
    let f = |k: &str| summary[k].as_f64().unwrap_or(0.0);
    StallReport {
        connections: summary["connections"].as_u64().unwrap_or(0),
        failed: summary["failed"].as_u64().unwrap_or(u64::MAX),
        stalls: summary["connects_over_200ms"].as_u64().unwrap_or(u64::MAX),
        max_ms: f("connect_ms_max"),
        p999_ms: f("connect_ms_p999"),
        p99_ms: f("connect_ms_p99"),
        p50_ms: f("connect_ms_p50"),
        after_removal,
        new_share_first_second: first_second_new as f64 / first_second.max(1) as f64,
        syn_retransmits,
        per_second: f("connections_per_second"),
        conntrack,
    }
}

/// The lab's manifests (tests/lab/manifests), as kernel_engine.rs's cluster serves them.
pub fn lab_manifests() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/lab/manifests");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path: PathBuf = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

impl StallReport {
    pub fn summary(&self) -> String {
        format!(
            "connections {} failed {} stalls(>200ms) {} max {:.1} ms p99.9 {:.1} ms syn-retransmits {} after-removal {} new-endpoint-share-first-second {:.0}% rate {:.0}/s",
            self.connections, self.failed, self.stalls, self.max_ms, self.p999_ms, self.syn_retransmits, self.after_removal, self.new_share_first_second * 100.0, self.per_second
        )
    }
}

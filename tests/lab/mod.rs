//! The namespace cluster lab: a cluster network built from network namespaces, for tests that
//! need real kernels and real packets. Everything lives in namespaces this lab creates (names
//! start with its prefix) and is removed when the `Lab` is dropped; the root namespace is
//! never changed.
//!
//! ```text
//!                    wire: bridge br0 (underlay 10.200.0.0/24, fd00:200::/64)
//!        ┌──────────────────────┼───────────────────────┬──────────────┐
//!   node1 eth0 10.200.0.1   node2 eth0 10.200.0.2      ...       ext eth0 10.200.0.100
//!   cbr0 10.244.1.1/24      cbr0 10.244.2.1/24                  (external client)
//!    ├─ pod n1p0 10.244.1.10  ├─ pod n2p0 10.244.2.10
//!    └─ pod n1p1 10.244.1.11  └─ pod n2p1 10.244.2.11
//! ```
//! Nodes route each other's pod CIDR over the underlay; pods use their node's bridge address
//! as gateway; the external client routes the LoadBalancer range 10.250.0.0/24 to node1, as a
//! cloud load balancer would.
#![allow(dead_code)]

pub mod cluster;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const CLUSTER_CIDR6: &str = "fd00:244::/48";
pub const LB_CIDR: &str = "10.250.0.0/24";

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub node: String,
}

#[derive(Debug, Clone)]
pub struct Node {
    /// The Kubernetes node name (`node1`).
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub gateway: Ipv4Addr,
    pub pods: Vec<Pod>,
}

#[derive(Debug, Clone)]
pub struct Lab {
    pub prefix: String,
    pub nodes: Vec<Node>,
    /// The external client's namespace and address.
    pub ext_ns: String,
    pub ext_ip: Ipv4Addr,
    pub ext_ip6: Ipv6Addr,
    wire_ns: String,
    namespaces: Vec<String>,
}

/// A process started in the lab, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn run(args: &[&str]) -> Result<Output, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// Why the lab cannot be built here, if it cannot: the tests print it and skip.
    pub fn unavailable() -> Option<String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if uid.as_deref().ok() != Some("0") {
            return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Some("iproute2 (ip) is not installed".into());
        }
        None
    }

    /// Builds `nodes` nodes with `pods_per_node` pods each, and the external client.
    pub fn build(nodes: usize, pods_per_node: usize) -> Result<Lab, String> {
        let id = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("rvslab{}x{id}", std::process::id() % 100_000);
        let mut lab = Lab {
            prefix: prefix.clone(),
            nodes: Vec::new(),
            ext_ns: format!("{prefix}-ext"),
            ext_ip: Ipv4Addr::new(10, 200, 0, 100),
            ext_ip6: "fd00:200::100".parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
            wire_ns: format!("{prefix}-wire"),
            namespaces: Vec::new(),
        };
        // Built step by step; on failure, Drop removes whatever exists so far.
        let wire = lab.wire_ns.clone();
        lab.add_ns(&wire)?;
        lab.ip(&wire, &["link", "add", "br0", "type", "bridge"])?;
        lab.ip(&wire, &["link", "set", "br0", "up"])?;

        let ext = lab.ext_ns.clone();
        lab.add_ns(&ext)?;
        lab.plug(&ext, "eth0", &wire, "ext", "br0")?;
        lab.addr(&ext, "eth0", "10.200.0.100/24", "fd00:200::100/64")?;
        lab.ip(&ext, &["route", "add", LB_CIDR, "via", "10.200.0.1"])?;

        for n in 1..=nodes {
            let ns = format!("{prefix}-n{n}");
            lab.add_ns(&ns)?;
            for (key, value) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.bridge.bridge-nf-call-iptables", "1"),
                ("net.bridge.bridge-nf-call-ip6tables", "1"),
            ] {
                // bridge-nf sysctls exist only where br_netfilter is built; tolerate absence.
                let _ = run(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    &format!("{key}={value}"),
                ]);
            }
            lab.plug(&ns, "eth0", &wire, &format!("n{n}"), "br0")?;
            lab.addr(
                &ns,
                "eth0",
                &format!("10.200.0.{n}/24"),
                &format!("fd00:200::{n}/64"),
            )?;
            lab.ip(&ns, &["link", "add", "cbr0", "type", "bridge"])?;
            lab.ip(&ns, &["link", "set", "cbr0", "up"])?;
            lab.addr(
                &ns,
                "cbr0",
                &format!("10.244.{n}.1/24"),
                &format!("fd00:244:0:{n}::1/64"),
            )?;
            // Node-originated traffic to service addresses needs a route before DNAT.
            lab.ip(&ns, &["route", "add", "default", "via", "10.200.0.100"])?;
            lab.ip(
                &ns,
                &["-6", "route", "add", "default", "via", "fd00:200::100"],
            )?;
            let mut node = Node {
                name: format!("node{n}"),
                ns: ns.clone(),
                ip: Ipv4Addr::new(10, 200, 0, n as u8),
                ip6: format!("fd00:200::{n}")
                    .parse()
                    .map_err(|e| format!("{e}"))?,
                gateway: Ipv4Addr::new(10, 244, n as u8, 1),
                pods: Vec::new(),
            };
            for p in 0..pods_per_node {
                let pod_ns = format!("{prefix}-n{n}p{p}");
                lab.add_ns(&pod_ns)?;
                let host = 10 + p as u8;
                lab.plug(&pod_ns, "eth0", &ns, &format!("vp{p}"), "cbr0")?;
                // kubelet's hairpin-veth mode: a pod reaching itself through its Service
                // gets its packets back out of the bridge port they came in on.
                lab.ip(
                    &ns,
                    &[
                        "link",
                        "set",
                        &format!("vp{p}"),
                        "type",
                        "bridge_slave",
                        "hairpin",
                        "on",
                    ],
                )?;
                lab.addr(
                    &pod_ns,
                    "eth0",
                    &format!("10.244.{n}.{host}/24"),
                    &format!("fd00:244:0:{n}::{host:x}/64"),
                )?;
                lab.ip(
                    &pod_ns,
                    &["route", "add", "default", "via", &format!("10.244.{n}.1")],
                )?;
                lab.ip(
                    &pod_ns,
                    &[
                        "-6",
                        "route",
                        "add",
                        "default",
                        "via",
                        &format!("fd00:244:0:{n}::1"),
                    ],
                )?;
                node.pods.push(Pod {
                    name: format!("n{n}p{p}"),
                    ns: pod_ns,
                    ip: Ipv4Addr::new(10, 244, n as u8, host),
                    ip6: format!("fd00:244:0:{n}::{host:x}")
                        .parse()
                        .map_err(|e| format!("{e}"))?,
                    node: format!("node{n}"),
                });
            }
            lab.nodes.push(node);
        }
        for a in 1..=nodes {
            for b in 1..=nodes {
                if a != b {
                    let ns = format!("{prefix}-n{a}");
                    lab.ip(
                        &ns,
                        &[
                            "route",
                            "add",
                            &format!("10.244.{b}.0/24"),
                            "via",
                            &format!("10.200.0.{b}"),
                        ],
                    )?;
                    lab.ip(
                        &ns,
                        &[
                            "-6",
                            "route",
                            "add",
                            &format!("fd00:244:0:{b}::/64"),
                            "via",
                            &format!("fd00:200::{b}"),
                        ],
                    )?;
                }
            }
        }
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        run(&["ip", "netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        self.ip(ns, &["link", "set", "lo", "up"])?;
        // Addresses usable at once, without duplicate address detection delays.
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.accept_dad=0",
        ]);
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.accept_dad=0",
        ]);
        Ok(())
    }

    fn ip(&self, ns: &str, args: &[&str]) -> Result<Output, String> {
        let mut full = vec!["ip", "-n", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// A veth pair: `inner` in `ns` (up), `outer` in `host_ns` attached to `bridge` (up).
    fn plug(
        &self,
        ns: &str,
        inner: &str,
        host_ns: &str,
        outer: &str,
        bridge: &str,
    ) -> Result<(), String> {
        run(&[
            "ip", "link", "add", "name", inner, "netns", ns, "type", "veth", "peer", "name", outer,
            "netns", host_ns,
        ])?;
        self.ip(ns, &["link", "set", inner, "up"])?;
        self.ip(host_ns, &["link", "set", outer, "master", bridge])?;
        self.ip(host_ns, &["link", "set", outer, "up"])?;
        Ok(())
    }

    fn addr(&self, ns: &str, dev: &str, v4: &str, v6: &str) -> Result<(), String> {
        self.ip(ns, &["addr", "add", v4, "dev", dev])?;
        self.ip(ns, &["-6", "addr", "add", v6, "dev", dev, "nodad"])?;
        Ok(())
    }

    /// A command to run inside `ns`.
    pub fn cmd(&self, ns: &str, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]).args(args);
        c
    }

    /// Runs to completion inside `ns`.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        self.cmd(ns, program, args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program} in {ns}: {e}"))
    }

    /// Starts a long-running process inside `ns`, its output discarded (or kept in `log`).
    pub fn spawn(
        &self,
        ns: &str,
        program: &str,
        args: &[&str],
        log: Option<&std::path::Path>,
    ) -> Proc {
        let mut c = self.cmd(ns, program, args);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        match log.and_then(|p| std::fs::File::create(p).ok()) {
            Some(f) => c.stderr(f),
            None => c.stderr(Stdio::null()),
        };
        Proc(
            c.spawn()
                .unwrap_or_else(|e| panic!("{program} in {ns}: {e}")),
        )
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Processes left inside would keep the namespace alive.
            if let Ok(out) = run(&["ip", "netns", "pids", ns]) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = run(&["kill", "-9", pid]);
                }
            }
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

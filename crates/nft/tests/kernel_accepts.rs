//! The rendered rulesets, loaded into a real kernel (a network namespace of the test's own):
//! nft accepts the full script, every incremental step, and the removal; the engine programs
//! the same table through libnftables as through the nft tool.

use std::io::Write;
use std::process::{Command, Stdio};

use rvs_model::{BuildOptions, ObjectSet, Snapshot, Sourced};
use rvs_nft::{render, Before, Existing, Family, RenderOptions, Ruleset};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn netns(tag: &str) -> Option<Netns> {
    let name = format!("rvs-nft-{tag}-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED: cannot create a network namespace (needs root and iproute2)");
        return None;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        println!("SKIPPED: nft (Debian package nftables) is not installed");
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        return None;
    }
    Some(Netns(name))
}

fn nft(ns: &Netns, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn list(ns: &Netns) -> String {
    list_in(&ns.0)
}

fn list_in(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn snapshot(yaml: &str) -> Snapshot {
    let mut objects = ObjectSet::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        let origin = Default::default();
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => objects.services.push(Sourced {
                origin,
                object: std::sync::Arc::new(serde_yaml::from_value(value).unwrap()),
            }),
            Some("EndpointSlice") => objects.endpoint_slices.push(Sourced {
                origin,
                object: std::sync::Arc::new(serde_yaml::from_value(value).unwrap()),
            }),
            _ => {}
        }
    }
    let options = BuildOptions {
        node_name: Some("node1".into()),
        ..Default::default()
    };
    let (snapshot, problems) = Snapshot::build(&objects, &options, None);
    assert!(problems.is_empty(), "{problems:?}");
    snapshot
}

use serde::Deserialize;

const RICH: &str = include_str!("fixtures/rich.yaml");

#[test]
fn kernel_accepts_full_incremental_and_removal_scripts() {
    let Some(ns) = netns("scripts") else { return };
    let options = RenderOptions {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/48".parse().unwrap(),
        ],
        ..Default::default()
    };
    let first = render(&snapshot(RICH), &options);
    let full = first.script(Before::Listed(&Default::default()));
    nft(&ns, &full).unwrap_or_else(|e| panic!("full script refused: {e}\n{full}"));
    let listed = list(&ns);
    for expected in [
        "table ip rvs",
        "table ip6 rvs",
        "numgen inc mod 2",
        "jhash ip saddr mod 4093 seed 0x72767321",
        "masquerade",
        "reject with tcp reset",
    ] {
        assert!(
            listed.contains(expected),
            "{expected:?} missing from:\n{listed}"
        );
    }

    // Scale web down to one endpoint and drop the sticky Service.
    let second_yaml = RICH.replace("  - addresses: [10.244.2.11]\n    nodeName: node2\n", "");
    let second_yaml = second_yaml
        .split("# --- sticky")
        .next()
        .unwrap()
        .to_string();
    let second = render(&snapshot(&second_yaml), &options);
    let step = second.script(Before::Applied(&first));
    assert!(
        !step.contains("service-ips {") || step.len() < full.len() / 2,
        "incremental, not a rewrite"
    );
    nft(&ns, &step).unwrap_or_else(|e| panic!("incremental script refused: {e}\n{step}"));
    assert!(
        !list(&ns).contains("sticky"),
        "stale chains and sets removed"
    );

    // A full resync against what the kernel lists is accepted too, and idempotent.
    let mut existing = std::collections::BTreeMap::new();
    existing.insert(Family::Ip, Existing::default());
    let again = second.script(Before::Listed(&existing));
    nft(&ns, &again).unwrap_or_else(|e| panic!("resync refused: {e}"));
    assert_eq!(
        second.script(Before::Applied(&second)),
        "",
        "no change, no script"
    );

    // A hashing Service switched to rr, then removed: its Maglev map points at endpoint
    // chains, so the map must go before the chains (the kernel counts its references).
    let switched_yaml = second_yaml.replace(
        "annotations: {rvs.io/scheduler: mh}",
        "annotations: {rvs.io/scheduler: rr}",
    );
    let third = render(&snapshot(&switched_yaml), &options);
    let step = third.script(Before::Applied(&second));
    nft(&ns, &step).unwrap_or_else(|e| panic!("mh -> rr refused: {e}\n{step}"));
    assert!(!list(&ns).contains("hash-4093"), "Maglev map removed");
    let back = render(&snapshot(&second_yaml), &options);
    nft(&ns, &back.script(Before::Applied(&third))).unwrap();
    let without_local: String = second_yaml
        .split("---")
        .filter(|d| !d.contains("name: local"))
        .collect::<Vec<_>>()
        .join("---");
    let fourth = render(&snapshot(&without_local), &options);
    let step = fourth.script(Before::Applied(&back));
    nft(&ns, &step).unwrap_or_else(|e| panic!("removing an mh Service refused: {e}\n{step}"));
    // And a full resync over what the kernel has (names only) is accepted as well.
    nft(&ns, &fourth.script(Before::Listed(&Default::default()))).unwrap();

    nft(&ns, &Ruleset::delete_transaction(&Family::ALL).script()).unwrap();
    assert!(!list(&ns).contains("rvs"));
}

fn list_table(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "ip", "rvs"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs `work` on a thread of its own inside `ns` (as `ip netns exec` would the process),
/// on a current-thread runtime there: the engine, libnftables' thread and the nft processes
/// it starts all inherit the namespace.
fn in_netns<T, F>(ns: &Netns, work: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T>,
{
    let path = format!("/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        // SAFETY: setns on this thread with a namespace file it holds open.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {path}");
        let now = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(own, now, "this thread is in the test's namespace");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work())
    })
    .join()
    .unwrap()
}

/// Both tables as nft lists them, and the expressions and set elements the kernel holds
/// (`nft --debug=netlink`: rule handles left out, lines sorted, since the kernel lists a
/// hash set's elements in an order of its own).
fn list_everything(ns: &str) -> String {
    let listing = |debug: bool| {
        let mut args = vec!["netns", "exec", ns, "nft"];
        if debug {
            args.push("--debug=netlink");
        }
        args.extend(["list", "ruleset"]);
        let out = Command::new("ip").args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let mut expressions: Vec<String> = listing(true)
        .lines()
        .map(|line| {
            // `ip rvs CHAIN HANDLE [PREVIOUS]` heads each rule's expressions.
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ip" | "ip6", "rvs", chain, _handle, ..]
                    if !line.starts_with(char::is_whitespace) =>
                {
                    format!("{} rvs {chain}", words[0])
                }
                _ => line.to_string(),
            }
        })
        .collect();
    expressions.sort();
    format!("{}\n{}\n", listing(false), expressions.join("\n"))
}

/// The three ways a transaction reaches the kernel (rvs's netlink batches, libnftables, the
/// nft tool) leave the same tables, rule for rule and expression for expression, after a
/// full sync, a change and the removal.
#[test]
fn engine_programs_the_same_table_through_netlink_libnftables_and_the_nft_tool() {
    let Some(ns) = netns("backends") else { return };
    let first = std::sync::Arc::new(snapshot(RICH));
    let second_yaml = RICH.replace("  - addresses: [10.244.2.11]\n    nodeName: node2\n", "");
    let second = std::sync::Arc::new(snapshot(&second_yaml));
    let base = cluster_config().render;
    let odd = RenderOptions {
        // IPv4: a prefix not on a byte boundary; IPv6: two, so an anonymous interval set.
        cluster_cidrs: ["10.244.0.0/20", "fd00:244::/48", "fd00:245::/48"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect(),
        // Named interval sets.
        nodeport_addresses: ["192.168.0.0/16", "10.0.0.5/32", "fd00:1::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect(),
        masquerade_fully_random: true,
        ..base.clone()
    };
    for options in [base, odd] {
        compare_backends(&ns, &first, &second, &options);
    }
}

fn compare_backends(
    ns: &Netns,
    first: &std::sync::Arc<Snapshot>,
    second: &std::sync::Arc<Snapshot>,
    options: &RenderOptions,
) {
    let mut listings = Vec::new();
    for backend in ["netlink", "libnftables", "nft"] {
        let (ns_name, first, second) = (ns.0.clone(), first.clone(), second.clone());
        let render = options.clone();
        let steps = in_netns(ns, move || async move {
            let engine = rvs_nft::NftEngine::new(rvs_nft::NftConfig {
                netlink: backend == "netlink",
                library: backend == "libnftables",
                render,
                ..cluster_config()
            });
            assert_eq!(engine.backend(), backend);
            let mut steps = Vec::new();
            let stats = engine.apply(&first, true).await.unwrap();
            assert!(stats.full);
            steps.push(list_everything(&ns_name));
            let stats = engine.apply(&second, false).await.unwrap();
            assert!(
                !stats.full && stats.transaction_bytes > 0,
                "{backend}: a delta"
            );
            steps.push(list_everything(&ns_name));
            engine.remove_all().await.unwrap();
            steps.push(list_everything(&ns_name));
            steps
        });
        for shown in [
            "dnat to 10.244.2.11",
            // dh; sh with the port; wrr's weighted numgen.
            "jhash ip6 daddr mod",
            "jhash ip6 saddr . th sport mod",
            "numgen inc mod 4 < 3",
        ] {
            assert!(steps[0].contains(shown), "{shown}: {}", steps[0]);
        }
        assert!(!steps[1].contains("10.244.2.11:"), "{}", steps[1]);
        assert!(!steps[2].contains("table"), "tables removed: {}", steps[2]);
        if options.masquerade_fully_random {
            for shown in [
                "ip saddr != 10.244.0.0/20",
                "ip6 saddr != { fd00:244::/48, fd00:245::/48 }",
                "masquerade fully-random",
                "elements = { 10.0.0.5, 192.168.0.0/16 }",
            ] {
                assert!(steps[0].contains(shown), "{shown}: {}", steps[0]);
            }
        }
        listings.push((backend, steps));
    }
    let (reference, expected) = &listings[2];
    for (backend, steps) in &listings[..2] {
        for (step, (got, want)) in steps.iter().zip(expected).enumerate() {
            if got != want {
                let diff: Vec<String> = got
                    .lines()
                    .filter(|l| !want.lines().any(|w| w == *l))
                    .map(|l| format!("only {backend}: {l}"))
                    .chain(
                        want.lines()
                            .filter(|l| !got.lines().any(|g| g == *l))
                            .map(|l| format!("only {reference}: {l}")),
                    )
                    .take(20)
                    .collect();
                panic!(
                    "step {step}: {backend} and {reference} differ:\n{}",
                    diff.join("\n")
                );
            }
        }
    }
}

fn cluster_config() -> rvs_nft::NftConfig {
    rvs_nft::NftConfig {
        render: RenderOptions {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A restarted rvs finds its old table: the first full sync lists the names in it (not the
/// whole table), rewrites what it renders and deletes everything else, leftovers of older
/// versions and other hands included.
#[test]
fn a_restarted_engine_rewrites_the_table_it_finds() {
    let Some(ns) = netns("restart") else { return };
    let first = std::sync::Arc::new(snapshot(RICH));
    let second_yaml = RICH.split("# --- sticky").next().unwrap().to_string();
    let second = std::sync::Arc::new(snapshot(&second_yaml));
    let second_again = second.clone();
    let ns_name = ns.0.clone();
    let listed = in_netns(&ns, move || async move {
        let before = rvs_nft::NftEngine::new(cluster_config());
        before.apply(&first, true).await.unwrap();
        drop(before);
        let leftovers = "add chain ip rvs leftover-chain\n\
                add set ip rvs leftover-set { type ipv4_addr; }\n\
                add map ip rvs leftover-map { type ipv4_addr : verdict; }\n";
        let status = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(leftovers.as_bytes())?;
                child.wait()
            })
            .unwrap();
        assert!(status.success());
        let after_restart = rvs_nft::NftEngine::new(cluster_config());
        after_restart.apply(&second, true).await.unwrap();
        list_table(&ns_name)
    });
    assert!(listed.contains("dnat to 10.244.2.11"), "{listed}");
    for gone in ["leftover", "sticky"] {
        assert!(!listed.contains(gone), "{gone} still listed:\n{listed}");
    }
    // Chains that existed were emptied before their rules went in again (no rule twice):
    // the same table as a fresh engine writes into an empty namespace.
    let Some(fresh_ns) = netns("restart-fresh") else {
        return;
    };
    let fresh_name = fresh_ns.0.clone();
    let fresh = in_netns(&fresh_ns, move || async move {
        let engine = rvs_nft::NftEngine::new(cluster_config());
        engine.apply(&second_again, true).await.unwrap();
        list_table(&fresh_name)
    });
    assert_eq!(listed, fresh);
}

/// A batch the kernel refuses changes nothing, and the error names what it refused.
#[test]
fn a_refused_netlink_batch_changes_nothing_and_names_the_culprit() {
    let Some(ns) = netns("refused") else { return };
    // A set of rvs's name but another type: the kernel will not redeclare it.
    nft(
        &ns,
        "add table ip rvs\nadd set ip rvs hairpin { type ipv6_addr; }\n",
    )
    .unwrap();
    let before = list(&ns);
    let snapshot = std::sync::Arc::new(snapshot(RICH));
    let ns_name = ns.0.clone();
    let (error, before_retry, retried) = in_netns(&ns, move || async move {
        let engine = rvs_nft::NftEngine::new(cluster_config());
        assert_eq!(engine.backend(), "netlink");
        let error = engine.apply(&snapshot, true).await.unwrap_err().to_string();
        let before_retry = list_in(&ns_name);
        // Out of the way, the next attempt (on the same socket) goes through: nothing of the
        // failed batch's answers is taken for this one's.
        let status = Command::new("nft")
            .args(["delete", "set", "ip", "rvs", "hairpin"])
            .status()
            .unwrap();
        assert!(status.success());
        let retried = engine
            .apply(&snapshot, false)
            .await
            .map(|s| s.full)
            .map_err(|e| e.to_string());
        (error, before_retry, retried)
    });
    assert!(
        error.contains("set ip rvs hairpin") && error.contains("exists"),
        "{error}"
    );
    assert_eq!(before_retry, before, "nothing of the batch took effect");
    assert_eq!(retried, Ok(true), "a full sync again, after a failure");
}

/// rvs upgraded from an nft-backed version (or back from a fallback to nft) finds a table
/// the nft tool wrote: its full sync over netlink redeclares the same sets and maps, and
/// leaves the table as it was.
#[test]
fn a_netlink_engine_takes_over_a_table_the_nft_tool_wrote() {
    let Some(ns) = netns("takeover") else { return };
    let snapshot = std::sync::Arc::new(snapshot(RICH));
    let render = RenderOptions {
        cluster_cidrs: ["10.244.0.0/16", "fd00:244::/48", "fd00:245::/48"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect(),
        nodeport_addresses: ["192.168.0.0/16", "fd00:1::/64"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect(),
        ..Default::default()
    };
    let ns_name = ns.0.clone();
    let (by_nft, by_netlink) = in_netns(&ns, move || async move {
        let by_tool = rvs_nft::NftEngine::new(rvs_nft::NftConfig {
            netlink: false,
            library: false,
            render: render.clone(),
            ..Default::default()
        });
        by_tool.apply(&snapshot, true).await.unwrap();
        let by_nft = list_everything(&ns_name);
        let engine = rvs_nft::NftEngine::new(rvs_nft::NftConfig {
            render,
            ..Default::default()
        });
        let stats = engine.apply(&snapshot, true).await.unwrap();
        assert_eq!(stats.backend, "netlink");
        (by_nft, list_everything(&ns_name))
    });
    assert!(by_nft.contains("dnat to 10.244.2.11"), "{by_nft}");
    assert_eq!(by_nft, by_netlink);
}

fn conntrack_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Over ctnetlink: `rvs ls` counts connections per real server from conntrack, and a change
/// deletes the UDP entries answered by a removed endpoint and the entries that reached a new
/// frontend before its rules did (kube-proxy's cleanup), and nothing else.
#[test]
fn conntrack_counts_and_stale_entries_over_netlink() {
    let Some(ns) = netns("conntrack") else { return };
    if Command::new("conntrack").arg("--version").output().is_err() {
        println!("SKIPPED: conntrack (Debian package conntrack) is not installed");
        return;
    }
    // As DNATed traffic would have left them: client 10.244.1.20.
    for (proto, sport, dst, reply, extra) in [
        // To the UDP endpoint about to go, and to the one that stays.
        ("udp", "5000", "10.96.0.12:53", "10.244.1.11:5353", ""),
        ("udp", "5001", "10.96.0.12:53", "10.244.1.10:5353", ""),
        // To a Service that appears with the change, before its rules: never DNATed.
        ("udp", "5002", "10.96.0.30:53", "10.96.0.30:53", ""),
        // An established connection through the web Service.
        (
            "tcp",
            "40000",
            "10.96.0.10:80",
            "10.244.1.10:8080",
            "--state ESTABLISHED -u SEEN_REPLY,ASSURED",
        ),
    ] {
        let (dst_ip, dport) = dst.split_once(':').unwrap();
        let (reply_ip, reply_port) = reply.split_once(':').unwrap();
        let mut args = vec![
            "-I",
            "-p",
            proto,
            "-s",
            "10.244.1.20",
            "-d",
            dst_ip,
            "--sport",
            sport,
            "--dport",
            dport,
            "-r",
            reply_ip,
            "-q",
            "10.244.1.20",
            "--reply-port-src",
            reply_port,
            "--reply-port-dst",
            sport,
            "-t",
            "300",
        ];
        args.extend(extra.split_whitespace());
        conntrack_in(&ns.0, &args);
    }
    assert_eq!(
        conntrack_in(&ns.0, &["-L"]).lines().count(),
        4,
        "entries inserted"
    );
    let first = std::sync::Arc::new(snapshot(RICH));
    let weighted_endpoints = "  - addresses: [10.244.1.10]\n  - addresses: [10.244.1.11]\n";
    assert!(RICH.contains(weighted_endpoints));
    let second_yaml = RICH.replace(weighted_endpoints, "  - addresses: [10.244.1.10]\n")
        + "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: default}\n\
           spec:\n  clusterIP: 10.96.0.30\n  ports: [{name: dns, port: 53, protocol: UDP}]\n\
           ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
           metadata: {name: late-1, namespace: default, labels: {kubernetes.io/service-name: late}}\n\
           addressType: IPv4\nports: [{name: dns, port: 5353, protocol: UDP}]\n\
           endpoints:\n  - addresses: [10.244.1.12]\n";
    let second = std::sync::Arc::new(snapshot(&second_yaml));
    let ns_name = ns.0.clone();
    let (active, remaining) = in_netns(&ns, move || async move {
        let engine = rvs_nft::NftEngine::new(cluster_config());
        engine.apply(&first, true).await.unwrap();
        // Counters refresh in the background: ask until they are in.
        let mut active = 0;
        for _ in 0..50 {
            let table = engine.table();
            active = table
                .services
                .iter()
                .filter(|s| s.address == "10.96.0.10:80")
                .flat_map(|s| &s.real_servers)
                .filter(|r| r.address == "10.244.1.10:8080")
                .map(|r| r.active_conns)
                .sum::<u64>();
            if active > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        engine.apply(&second, false).await.unwrap();
        // The cleanup runs in the background too.
        let mut remaining = String::new();
        for _ in 0..50 {
            remaining = conntrack_in(&ns_name, &["-L"]);
            if remaining.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        (active, remaining)
    });
    assert_eq!(active, 1, "the established connection counted as active");
    let mut sports: Vec<&str> = remaining
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("sport=")))
        .collect();
    sports.sort();
    assert_eq!(sports, ["sport=40000", "sport=5001"], "{remaining}");
}

/// `rvs ls` counts connections from the DNAT rules' counters, read over netlink: connections
/// a process in the namespace opens to a ClusterIP (DNATed in nat output; they go nowhere
/// after, which does not matter to the counters).
#[test]
fn dnat_counters_are_read_over_netlink() {
    let Some(ns) = netns("counters") else { return };
    for args in [
        &["link", "set", "lo", "up"][..],
        &["route", "add", "default", "dev", "lo"],
        &["-6", "route", "add", "default", "dev", "lo"],
    ] {
        let status = Command::new("ip")
            .args(["-n", &ns.0])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}");
    }
    let snapshot = std::sync::Arc::new(snapshot(RICH));
    let counted = in_netns(&ns, move || async move {
        let engine = rvs_nft::NftEngine::new(cluster_config());
        engine.apply(&snapshot, true).await.unwrap();
        // Four to an IPv4 ClusterIP (a rule per endpoint), two to an IPv6 one (source
        // hashing: endpoint chains).
        for target in ["10.96.0.10:80"; 4]
            .into_iter()
            .chain(["[fd00:96::14]:80"; 2])
        {
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                tokio::net::TcpStream::connect(target),
            )
            .await;
        }
        let count = |address: &str| -> u64 {
            engine
                .table()
                .services
                .iter()
                .filter(|s| s.address == address)
                .flat_map(|s| &s.real_servers)
                .map(|r| r.connections)
                .sum()
        };
        // Counters refresh in the background: ask until they are in.
        for _ in 0..50 {
            let counted = (count("10.96.0.10:80"), count("[fd00:96::14]:80"));
            if counted.0 >= 4 && counted.1 >= 2 {
                return counted;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        (count("10.96.0.10:80"), count("[fd00:96::14]:80"))
    });
    assert_eq!(
        counted,
        (4, 2),
        "each connection counted once, by its endpoint"
    );
}

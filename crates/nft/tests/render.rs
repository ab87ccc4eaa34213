//! `render` is pure: its output checked rule by rule, and the per-rule `numgen` counters
//! simulated to prove the shares.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use rvs_model::{
    EndpointState, Frontend, FrontendKind, Protocol, RealServer, SchedulerConfig, SchedulerKind,
    ServiceRef, Snapshot, TrafficPolicy, VirtualService,
};
use rvs_nft::{render, Before, Family, RenderOptions, Ruleset, Table};

fn server(ip: &str, weight: u32, local: bool) -> RealServer {
    RealServer {
        addr: format!("{ip}:8080").parse().unwrap(),
        weight,
        configured_weight: weight,
        state: EndpointState::Ready,
        node_name: None,
        zone: None,
        target: None,
        is_local: local,
    }
}

fn vs(
    kind: FrontendKind,
    frontend: Frontend,
    scheduler: SchedulerKind,
    servers: Vec<RealServer>,
) -> VirtualService {
    VirtualService {
        protocol: Protocol::Tcp,
        frontend,
        kind,
        service: ServiceRef {
            namespace: "ns".into(),
            name: "web".into(),
            port_name: "http".into(),
        },
        scheduler: SchedulerConfig {
            kind: scheduler,
            ..Default::default()
        },
        persistence: None,
        proxy_protocol: false,
        real_servers: servers,
        traffic_policy: TrafficPolicy::Cluster,
        source_ranges: Vec::new(),
        health_check_node_port: None,
    }
}

fn cluster_ip(scheduler: SchedulerKind, servers: Vec<RealServer>) -> VirtualService {
    vs(
        FrontendKind::ClusterIp,
        Frontend::Address {
            addr: "10.96.0.10:80".parse().unwrap(),
        },
        scheduler,
        servers,
    )
}

fn one(services: Vec<VirtualService>, options: &RenderOptions) -> Table {
    let mut services = services;
    services.sort_by_key(|v| (v.protocol, v.frontend));
    let ruleset = render(
        &Snapshot {
            version: 1,
            services: services.into_iter().map(Into::into).collect(),
        },
        options,
    );
    ruleset.tables[&Family::Ip].clone()
}

fn service_chain(table: &Table) -> (&String, &Vec<String>) {
    let (name, chain) = table
        .chains
        .iter()
        .find(|(n, _)| n.starts_with("service-"))
        .expect("a service chain");
    (name, &chain.rules)
}

/// Runs `connections` new connections through a chain's rules the way the kernel does: each
/// `numgen inc` expression has its own counter, bumped whenever the rule is evaluated.
fn simulate(rules: &[String], connections: usize) -> BTreeMap<String, usize> {
    let mut counters = vec![0u64; rules.len()];
    let mut picks = BTreeMap::new();
    for _ in 0..connections {
        for (i, rule) in rules.iter().enumerate() {
            let target = rule.rsplit("dnat to ").next().unwrap().to_string();
            let Some(rest) = rule.strip_prefix("numgen inc mod ") else {
                if rule.contains("dnat to") {
                    *picks.entry(target).or_insert(0) += 1;
                    break;
                }
                continue; // masquerade marking
            };
            let mut words = rest.split_whitespace();
            let modulus: u64 = words.next().unwrap().parse().unwrap();
            let (op, value): (&str, u64) = (
                words.next().unwrap(),
                words.next().unwrap().parse().unwrap(),
            );
            let v = counters[i] % modulus;
            counters[i] += 1;
            let hit = match op {
                "==" => v == value,
                "<" => v < value,
                other => panic!("operator {other}"),
            };
            if hit {
                *picks.entry(target).or_insert(0) += 1;
                break;
            }
        }
    }
    picks
}

#[test]
fn round_robin_is_exact_and_masquerades_outside_the_cluster_cidr() {
    let options = RenderOptions {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let servers = vec![
        server("10.244.1.1", 1, false),
        server("10.244.1.2", 1, false),
        server("10.244.1.3", 1, false),
    ];
    let table = one(vec![cluster_ip(SchedulerKind::Rr, servers)], &options);
    let (name, rules) = service_chain(&table);
    assert_eq!(
        rules[0],
        "ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    );
    assert_eq!(
        rules[1..],
        [
            "numgen inc mod 3 == 0 meta l4proto tcp counter dnat to 10.244.1.1:8080",
            "numgen inc mod 2 == 0 meta l4proto tcp counter dnat to 10.244.1.2:8080",
            "meta l4proto tcp counter dnat to 10.244.1.3:8080",
        ]
    );
    // Each connection in a round goes to the next endpoint.
    let picks = simulate(
        &rules[1..3]
            .iter()
            .chain(&rules[3..])
            .cloned()
            .collect::<Vec<_>>(),
        3,
    );
    assert_eq!(picks.values().copied().collect::<Vec<_>>(), vec![1, 1, 1]);
    assert_eq!(
        table.maps["service-ips"].elements["10.96.0.10 . tcp . 80"],
        format!("goto {name}")
    );
    assert!(table.sets["hairpin"]
        .elements
        .contains("10.244.1.1 . 10.244.1.1"));
    assert!(
        table.chains["masquerading"]
            .rules
            .iter()
            .any(|r| r == "masquerade"),
        "plain masquerade, not fully-random"
    );
}

#[test]
fn masquerade_all_and_no_cluster_cidr() {
    let servers = vec![server("10.244.1.1", 1, false)];
    let all = one(
        vec![cluster_ip(SchedulerKind::Rr, servers.clone())],
        &RenderOptions {
            masquerade_all: true,
            ..Default::default()
        },
    );
    assert_eq!(service_chain(&all).1[0], "jump mark-for-masquerade");
    let none = one(
        vec![cluster_ip(SchedulerKind::Rr, servers)],
        &RenderOptions::default(),
    );
    assert!(
        !service_chain(&none)
            .1
            .iter()
            .any(|r| r.contains("mark-for-masquerade")),
        "no CIDR: pod sources kept"
    );
}

#[test]
fn no_endpoints_are_rejected_and_local_policies_drop() {
    let empty = one(
        vec![cluster_ip(SchedulerKind::Rr, vec![])],
        &RenderOptions::default(),
    );
    assert_eq!(
        empty.maps["no-endpoint-services"].elements["10.96.0.10 . tcp . 80"],
        "goto reject-chain"
    );
    assert!(empty.maps["service-ips"].elements.is_empty());

    let mut internal_local = cluster_ip(SchedulerKind::Rr, vec![server("10.244.2.1", 1, false)]);
    internal_local.traffic_policy = TrafficPolicy::Local;
    let table = one(vec![internal_local], &RenderOptions::default());
    assert_eq!(
        table.maps["no-endpoint-services"].elements["10.96.0.10 . tcp . 80"], "drop",
        "internalTrafficPolicy Local, none local"
    );

    let mut external = vs(
        FrontendKind::NodePort,
        Frontend::NodePort {
            family: rvs_model::IpFamily::V4,
            port: 30080,
        },
        SchedulerKind::Rr,
        vec![
            server("10.244.1.1", 1, true),
            server("10.244.2.1", 1, false),
        ],
    );
    external.traffic_policy = TrafficPolicy::Local;
    let options = RenderOptions {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let table = one(vec![external], &options);
    let verdict = &table.maps["service-nodeports"].elements["tcp . 30080"];
    let chain = &table.chains[verdict.trim_start_matches("goto ")].rules;
    let cluster_chain = format!("{}-cluster", verdict.trim_start_matches("goto "));
    assert_eq!(
        chain[0],
        format!("ip saddr 10.244.0.0/16 goto {cluster_chain}"),
        "pods reach every endpoint"
    );
    assert_eq!(chain[1], "fib saddr type local jump mark-for-masquerade");
    assert_eq!(
        chain[3], "meta l4proto tcp counter dnat to 10.244.1.1:8080",
        "external clients: the local endpoint, unmasqueraded"
    );
    assert_eq!(chain.len(), 4);
    assert_eq!(
        table.chains[&cluster_chain].rules.len(),
        2,
        "cluster chain spans both endpoints"
    );
}

#[test]
fn affinity_and_maglev_use_endpoint_chains() {
    let mut sticky = cluster_ip(
        SchedulerKind::Rr,
        vec![
            server("10.244.1.1", 1, false),
            server("10.244.1.2", 1, false),
        ],
    );
    sticky.persistence = Some(Duration::from_secs(600));
    let table = one(vec![sticky], &RenderOptions::default());
    let rules = service_chain(&table).1;
    assert!(
        rules[0].starts_with("ip saddr @affinity-600-") && rules[0].contains(" goto endpoint-")
    );
    let endpoint = table
        .chains
        .iter()
        .find(|(n, _)| n.starts_with("endpoint-"))
        .unwrap()
        .1;
    assert!(endpoint.rules[0].starts_with("update @affinity-600-"));
    let set = table
        .sets
        .iter()
        .find(|(n, _)| n.starts_with("affinity-"))
        .unwrap()
        .1;
    assert_eq!(
        set.spec,
        "type ipv4_addr; flags dynamic,timeout; timeout 600s"
    );

    let maglev = one(
        vec![cluster_ip(
            SchedulerKind::Mh,
            vec![
                server("10.244.1.1", 1, false),
                server("10.244.1.2", 1, false),
            ],
        )],
        &RenderOptions::default(),
    );
    let map = maglev
        .maps
        .iter()
        .find(|(n, _)| n.starts_with("hash-4093-"))
        .unwrap();
    assert_eq!(map.1.elements.len(), 4093);
    assert!(service_chain(&maglev).1[0].starts_with(&format!(
        "jhash ip saddr mod 4093 seed {:#x} vmap @{}",
        rvs_nft::HASH_SEED,
        map.0
    )));
}

#[test]
fn source_ranges_guard_load_balancer_addresses() {
    let mut lb = vs(
        FrontendKind::LoadBalancer,
        Frontend::Address {
            addr: "10.250.0.1:80".parse().unwrap(),
        },
        SchedulerKind::Rr,
        vec![server("10.244.1.1", 1, false)],
    );
    lb.source_ranges = vec![
        "192.0.2.0/24".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    let table = one(vec![lb], &RenderOptions::default());
    let verdict = &table.maps["firewall-ips"].elements["10.250.0.1 . tcp . 80"];
    assert_eq!(
        table.chains[verdict.trim_start_matches("goto ")].rules,
        vec!["ip saddr != 192.0.2.0/24 drop"]
    );
}

#[test]
fn an_endpoint_change_rewrites_one_chain_only() {
    let a = [cluster_ip(
        SchedulerKind::Rr,
        vec![
            server("10.244.1.1", 1, false),
            server("10.244.1.2", 1, false),
        ],
    )];
    let mut other = cluster_ip(SchedulerKind::Rr, vec![server("10.244.3.1", 1, false)]);
    other.frontend = Frontend::Address {
        addr: "10.96.0.99:80".parse().unwrap(),
    };
    other.service.name = "other".into();
    let before = render(
        &Snapshot {
            version: 1,
            services: vec![a[0].clone().into(), other.clone().into()],
        },
        &RenderOptions::default(),
    );
    let mut changed = a[0].clone();
    changed.real_servers.push(server("10.244.1.3", 1, false));
    let after = render(
        &Snapshot {
            version: 2,
            services: vec![changed.into(), other.into()],
        },
        &RenderOptions::default(),
    );
    let script = after.script(Before::Applied(&before));
    assert_eq!(script.matches("flush chain").count(), 1, "{script}");
    assert!(script.contains("add element ip rvs hairpin { 10.244.1.3 . 10.244.1.3 }"));
    assert!(
        !script.contains("other"),
        "the other Service is untouched:\n{script}"
    );
    assert_eq!(after.script(Before::Applied(&after)), "");
    assert!(Ruleset::delete_transaction(&[Family::Ip])
        .script()
        .contains("delete table ip rvs"));
}

proptest! {
    /// wrr and rr: over one cycle every endpoint gets exactly its share (rr: equal shares).
    #[test]
    fn numgen_rules_give_exact_shares(weights in prop::collection::vec(1u32..6, 1..7), wrr in any::<bool>()) {
        let servers: Vec<RealServer> = weights.iter().enumerate().map(|(i, w)| server(&format!("10.244.0.{}", i + 1), *w, false)).collect();
        let kind = if wrr { SchedulerKind::Wrr } else { SchedulerKind::Rr };
        let table = one(vec![cluster_ip(kind, servers)], &RenderOptions::default());
        let rules = service_chain(&table).1.clone();
        let expected: Vec<usize> = weights.iter().map(|w| if wrr { *w as usize } else { 1 }).collect();
        let cycle: usize = expected.iter().sum();
        let picks = simulate(&rules, cycle * 3);
        for (i, share) in expected.iter().enumerate() {
            prop_assert_eq!(picks.get(&format!("10.244.0.{}:8080", i + 1)).copied().unwrap_or(0), share * 3);
        }
    }
}

/// One virtual service of a generated snapshot: its address index, scheduler, endpoints,
/// persistence, kind and policy all vary.
fn generated(
    index: u8,
    scheduler: u8,
    endpoints: u8,
    sticky: bool,
    kind: u8,
    local: bool,
) -> VirtualService {
    let servers = (0..endpoints)
        .map(|e| {
            server(
                &format!("10.244.{index}.{}", e + 1),
                1 + u32::from(e % 3),
                e % 2 == 0,
            )
        })
        .collect();
    let scheduler = [
        SchedulerKind::Rr,
        SchedulerKind::Wrr,
        SchedulerKind::Mh,
        SchedulerKind::Sh,
        SchedulerKind::Lc,
    ][usize::from(scheduler % 5)];
    let (frontend_kind, frontend) = match kind % 3 {
        0 => (
            FrontendKind::ClusterIp,
            Frontend::Address {
                addr: format!("10.96.0.{index}:80").parse().unwrap(),
            },
        ),
        1 => (
            FrontendKind::NodePort,
            Frontend::NodePort {
                family: rvs_model::IpFamily::V4,
                port: 30000 + u16::from(index),
            },
        ),
        _ => (
            FrontendKind::LoadBalancer,
            Frontend::Address {
                addr: format!("192.0.2.{index}:80").parse().unwrap(),
            },
        ),
    };
    let mut v = vs(frontend_kind, frontend, scheduler, servers);
    v.service.name = format!("svc-{index}");
    if sticky {
        v.persistence = Some(Duration::from_secs(600));
    }
    if local {
        v.traffic_policy = TrafficPolicy::Local;
    }
    if frontend_kind == FrontendKind::LoadBalancer && index.is_multiple_of(2) {
        v.source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    }
    v
}

/// One generated virtual service: (index, scheduler, endpoints, sticky, kind, local).
type Generated = (u8, u8, u8, bool, u8, bool);

/// Sequences of generated snapshots.
fn steps(count: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Vec<Generated>>> {
    prop::collection::vec(
        prop::collection::vec(
            (
                1u8..12,
                0u8..5,
                0u8..5,
                any::<bool>(),
                0u8..3,
                any::<bool>(),
            ),
            0..8,
        ),
        count,
    )
}

/// Services that stay the same through a sequence (the same allocations, as the model keeps
/// them): with many of them, a change is found by the render cache's walk over pointers
/// rather than by looking at every part.
fn fillers(padded: bool) -> Vec<std::sync::Arc<VirtualService>> {
    let count = if padded { 64 } else { 0 };
    (0..count)
        .map(|i| {
            let servers = vec![server(&format!("10.245.0.{}", i + 1), 1, true)];
            let frontend = Frontend::Address {
                addr: format!("10.97.0.{i}:80").parse().unwrap(),
            };
            let mut v = vs(
                FrontendKind::ClusterIp,
                frontend,
                SchedulerKind::Rr,
                servers,
            );
            v.service.name = format!("filler-{i}");
            std::sync::Arc::new(v)
        })
        .collect()
}

fn snapshot_of(step: Vec<Generated>, fillers: &[std::sync::Arc<VirtualService>]) -> Snapshot {
    let mut services: Vec<std::sync::Arc<VirtualService>> = step
        .into_iter()
        .map(|(i, s, e, sticky, k, local)| generated(i, s, e, sticky, k, local).into())
        .chain(fillers.iter().cloned())
        .collect();
    services.sort_by_key(|v| (v.protocol, v.frontend));
    services.dedup_by_key(|v| (v.protocol, v.frontend));
    Snapshot {
        version: 1,
        services,
    }
}

/// Render options of every shape the rules take: no, one or several cluster CIDRs (a prefix
/// compare or an anonymous set), NodePort addresses (a named interval set), masquerading.
fn options() -> impl Strategy<Value = RenderOptions> {
    const CIDRS: [&str; 4] = [
        "10.244.0.0/16",
        "10.245.0.0/20",
        "fd00:244::/48",
        "fd00:245::/64",
    ];
    const NODE: [&str; 3] = ["192.168.0.0/16", "10.0.0.5/32", "fd00:1::/64"];
    (
        prop::sample::subsequence(CIDRS.to_vec(), 0..=4),
        prop::sample::subsequence(NODE.to_vec(), 0..=3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(cidrs, node, all, random)| RenderOptions {
            cluster_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            nodeport_addresses: node.iter().map(|c| c.parse().unwrap()).collect(),
            masquerade_all: all,
            masquerade_fully_random: random,
        })
}

fn with_cluster_cidr() -> RenderOptions {
    RenderOptions {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    }
}

proptest! {
    /// The cached render of a sequence of snapshots is, each time, exactly the fresh render:
    /// services added, changed, kept (shared) and removed.
    #[test]
    fn cached_render_equals_a_fresh_render(
        steps in steps(1..5),
        padded in any::<bool>(),
        options in options()
    ) {
        let fillers = fillers(padded);
        let mut cache = rvs_nft::RenderCache::default();
        let mut previous: Option<Snapshot> = None;
        for step in steps {
            let mut snapshot = snapshot_of(step, &fillers);
            // Unchanged services are shared with the previous snapshot, as the model does.
            if let Some(previous) = &previous {
                for vs in &mut snapshot.services {
                    if let Some(old) = previous.services.iter().find(|o| ***o == **vs) {
                        *vs = old.clone();
                    }
                }
            }
            let cached = rvs_nft::render_cached(&snapshot, &options, &mut cache);
            prop_assert_eq!(&cached, &render(&snapshot, &options));
            // rvs's netlink writer knows everything the renderer writes.
            let nothing_listed = Default::default();
            let full = cached.transaction(Before::Listed(&nothing_listed));
            prop_assert!(rvs_nft::encode(&full).is_ok(), "{:?}", rvs_nft::encode(&full).err());
            previous = Some(snapshot);
        }
    }
}

/// `stored` holds what `fresh` holds: the same chains and maps, the same set elements, except
/// that sets pruned only on full syncs may keep more.
fn holds(stored: &Ruleset, fresh: &Ruleset) -> Result<(), TestCaseError> {
    for (family, want) in &fresh.tables {
        let got = &stored.tables[family];
        prop_assert_eq!(&got.chains, &want.chains);
        prop_assert_eq!(&got.maps, &want.maps);
        prop_assert_eq!(
            got.sets.keys().collect::<Vec<_>>(),
            want.sets.keys().collect::<Vec<_>>()
        );
        for (name, set) in &want.sets {
            let kept = &got.sets[name];
            if set.prune_on_full_sync_only {
                prop_assert!(kept.elements.is_superset(&set.elements), "{}", name);
            } else {
                prop_assert_eq!(&kept.elements, &set.elements);
            }
        }
    }
    Ok(())
}

proptest! {
    /// Incremental syncs: the delta of each snapshot, patched into the stored ruleset, leaves
    /// what a fresh render gives; an unchanged snapshot is an empty delta.
    #[test]
    fn patched_deltas_equal_a_fresh_render(
        steps in steps(2..6),
        padded in any::<bool>()
    ) {
        let options = with_cluster_cidr();
        let fillers = fillers(padded);
        let mut cache = rvs_nft::RenderCache::default();
        let mut stored: Option<Ruleset> = None;
        for step in steps {
            let snapshot = snapshot_of(step, &fillers);
            match stored.as_mut() {
                None => stored = Some(rvs_nft::render_cached(&snapshot, &options, &mut cache)),
                Some(stored) => {
                    let delta = rvs_nft::render_delta(&snapshot, &options, &mut cache).unwrap();
                    let tx = delta.after.transaction(Before::Applied(&delta.before));
                    prop_assert!(rvs_nft::encode(&tx).is_ok(), "{:?}", rvs_nft::encode(&tx).err());
                    rvs_nft::patch(stored, &delta);
                    holds(stored, &render(&snapshot, &options))?;
                    let again = rvs_nft::render_delta(&snapshot, &options, &mut cache).unwrap();
                    prop_assert!(again.is_empty());
                }
            }
        }
    }
}

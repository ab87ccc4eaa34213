//! `render`: the model's virtual services as an nftables ruleset, in the layout of
//! kube-proxy's nftables mode. Pure: the same snapshot and options give the same ruleset.
//!
//! Per family (`ip rvs`, `ip6 rvs`):
//! - `services` dispatches on verdict maps: `daddr . l4proto . dport` for ClusterIPs,
//!   externalIPs and LoadBalancer IPs (`service-ips`), `l4proto . dport` on local addresses
//!   for NodePorts (`service-nodeports`), so the cost per packet does not grow with the number
//!   of Services;
//! - one chain per virtual service picks an endpoint and DNATs: one rule per endpoint with its
//!   own `numgen` counter (exact round robin and wrr), or a hash into a Maglev table held in a
//!   map; persistence checks a dynamic set per endpoint first (then endpoint chains DNAT);
//! - hairpin traffic (a pod reaching itself through its Service) is masqueraded by one rule
//!   over a set of endpoint address pairs;
//! - masquerading only for marked packets, with plain `masquerade`: it keeps the client's port
//!   where it is free, which `fully-random` does not, and that is what stalls short
//!   connections (shared/findings/snat-stall.md);
//! - filter chains reject traffic to Services without endpoints and drop sources outside
//!   `loadBalancerSourceRanges`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use rvs_model::{
    Frontend, FrontendKind, IpFamily, Protocol, RealServer, SchedulerKind, ServiceRef, Snapshot,
    TrafficPolicy, VirtualService,
};
use rvs_sched::Dest;

use crate::ruleset::{Chain, Family, Map, Ruleset, Set, Table};

/// The packet mark bit that asks for masquerading (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;
/// Seed of the source hash, fixed so that hashing survives restarts.
pub const HASH_SEED: u32 = 0x7276_7321;
/// Longest `numgen` slot list rendered for weighted choices.
const MAX_SLOTS: u64 = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// `--cluster-cidr`: ClusterIP traffic from outside these is masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--masquerade-all`: masquerade all ClusterIP traffic.
    pub masquerade_all: bool,
    /// `--nodeport-addresses`: NodePorts only on local addresses inside these; empty: every
    /// local address except loopback.
    pub nodeport_addresses: Vec<IpNet>,
    /// Masquerade with `fully-random` port choice, as kube-proxy does. Only for comparison:
    /// it is what makes short connections stall (shared/findings/snat-stall.md).
    pub masquerade_fully_random: bool,
}

fn family_of(ip: IpFamily) -> Family {
    match ip {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

fn vs_family(vs: &VirtualService) -> Family {
    match vs.frontend {
        Frontend::Address { addr } => family_of(IpFamily::of(addr.ip())),
        Frontend::NodePort { family, .. } => family_of(family),
    }
}

fn in_family(net: &IpNet, family: Family) -> bool {
    matches!(
        (net, family),
        (IpNet::V4(_), Family::Ip) | (IpNet::V6(_), Family::Ip6)
    )
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// A stable short hash (FNV-1a) that keeps chain names unique and short.
fn short_hash(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..8)
        .map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Keeps what nft accepts in an unquoted name.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '-') {
                c
            } else {
                '.'
            }
        })
        .collect()
}

fn port_label(vs: &VirtualService) -> String {
    if vs.service.port_name.is_empty() {
        "p".into()
    } else {
        vs.service.port_name.clone()
    }
}

/// The chain that chooses `vs`'s endpoint (its DNAT rules count connections).
pub fn service_chain_name(vs: &VirtualService) -> String {
    let key = format!("{} {}", vs.protocol, vs.frontend);
    let kind = match vs.kind {
        FrontendKind::ClusterIp => "cluster-ip",
        FrontendKind::ExternalIp => "external-ip",
        FrontendKind::LoadBalancer => "load-balancer",
        FrontendKind::NodePort => "node-port",
    };
    truncate(format!(
        "service-{}-{}/{}/{}/{}/{kind}",
        short_hash(&key),
        sanitize(&vs.service.namespace),
        sanitize(&vs.service.name),
        proto(vs.protocol),
        sanitize(&port_label(vs))
    ))
}

/// The chain that DNATs to `rs` for `vs`'s Service port (its counter counts connections).
pub fn endpoint_chain_name(vs: &VirtualService, rs: &RealServer) -> String {
    let key = format!(
        "{}/{}/{}/{} {}",
        vs.service.namespace, vs.service.name, vs.protocol, vs.service.port_name, rs.addr
    );
    truncate(format!(
        "endpoint-{}-{}/{}/{}/{}__{}/{}",
        short_hash(&key),
        sanitize(&vs.service.namespace),
        sanitize(&vs.service.name),
        proto(vs.protocol),
        sanitize(&port_label(vs)),
        sanitize(&rs.addr.ip().to_string()),
        rs.addr.port()
    ))
}

/// nft names are at most 256 bytes; the hash keeps truncated names unique.
fn truncate(mut name: String) -> String {
    name.truncate(250);
    name
}

fn addr_literal(ip: IpAddr) -> String {
    ip.to_string()
}

fn dnat_target(rs: &RealServer) -> String {
    match rs.addr.ip() {
        IpAddr::V4(v4) => format!("{v4}:{}", rs.addr.port()),
        IpAddr::V6(v6) => format!("[{v6}]:{}", rs.addr.port()),
    }
}

fn anon_set(items: &[String]) -> String {
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// Renders `snapshot` into rvs's tables.
pub fn render(snapshot: &Snapshot, options: &RenderOptions) -> Ruleset {
    let mut ruleset = Ruleset::default();
    for family in Family::ALL {
        ruleset.tables.insert(family, base_table(family, options));
    }
    for vs in &snapshot.services {
        let family = vs_family(vs);
        if let Some(table) = ruleset.tables.get_mut(&family) {
            render_service(table, family, vs, options);
        }
    }
    ruleset
}

/// Each Service port's part of the ruleset (its virtual services' chains, maps, sets and the
/// elements they add to the shared ones), kept while its virtual services stay the same: at
/// 10,000 Services a change renders one, not all. Parts are per Service port and family,
/// not per virtual service, because a Service port's frontends (ClusterIP, NodePort, load
/// balancer) share their endpoint chains and affinity sets.
#[derive(Debug, Default)]
pub struct RenderCache {
    options: Option<RenderOptions>,
    parts: HashMap<PartKey, (Vec<Arc<VirtualService>>, Table)>,
    /// The virtual services the parts were rendered from, in snapshot order: the next
    /// snapshot is compared with them by pointer, so a change costs what changed, not a pass
    /// over every Service's key.
    services: Vec<Arc<VirtualService>>,
}

type PartKey = (Family, Protocol, ServiceRef);

/// The snapshot's virtual services by part, each part's in snapshot order (the order a
/// fresh render writes them in).
fn parts_of(snapshot: &Snapshot) -> BTreeMap<PartKey, Vec<&Arc<VirtualService>>> {
    let mut parts: BTreeMap<PartKey, Vec<&Arc<VirtualService>>> = BTreeMap::new();
    for vs in &snapshot.services {
        parts
            .entry((vs_family(vs), vs.protocol, vs.service.clone()))
            .or_default()
            .push(vs);
    }
    parts
}

fn same_services(cached: &[Arc<VirtualService>], now: &[&Arc<VirtualService>]) -> bool {
    cached.len() == now.len()
        && cached
            .iter()
            .zip(now)
            .all(|(a, b)| Arc::ptr_eq(a, b) || **a == ***b)
}

fn render_part(
    services: &[&Arc<VirtualService>],
    family: Family,
    empty: &Table,
    options: &RenderOptions,
) -> Table {
    let mut part = empty.clone();
    for vs in services {
        render_service(&mut part, family, vs, options);
    }
    part
}

/// The base tables' maps and sets without elements, per family: what parts render into.
fn skeletons(options: &RenderOptions) -> BTreeMap<Family, Table> {
    Family::ALL
        .into_iter()
        .map(|f| (f, skeleton(&base_table(f, options))))
        .collect()
}

/// Brings `cache` to `snapshot` (whose options it was made with): renders the parts whose
/// virtual services changed and drops the parts gone, telling `changed` of each part that
/// went (the old one) and each that came (the new one).
fn refresh(
    snapshot: &Snapshot,
    options: &RenderOptions,
    skeletons: &BTreeMap<Family, Table>,
    cache: &mut RenderCache,
    mut changed: impl FnMut(Family, Change<'_>),
) {
    let previous = std::mem::take(&mut cache.services);
    match changed_parts(&previous, &snapshot.services) {
        Some(keys) => {
            for (key, (went, came)) in keys {
                let mut services: Vec<Arc<VirtualService>> = cache
                    .parts
                    .get(&key)
                    .map(|(old, _)| old.as_slice())
                    .unwrap_or_default()
                    .iter()
                    // By frontend, not pointer: a part may hold an equal older allocation.
                    .filter(|vs| {
                        !went
                            .iter()
                            .any(|w| (w.protocol, w.frontend) == (vs.protocol, vs.frontend))
                    })
                    .chain(came)
                    .cloned()
                    .collect();
                services.sort_by_key(|vs| (vs.protocol, vs.frontend));
                let services: Vec<&Arc<VirtualService>> = services.iter().collect();
                refresh_part(&key, &services, options, skeletons, cache, &mut changed);
            }
        }
        None => {
            let parts = parts_of(snapshot);
            for (key, services) in &parts {
                refresh_part(key, services, options, skeletons, cache, &mut changed);
            }
            let gone: Vec<PartKey> = cache
                .parts
                .keys()
                .filter(|k| !parts.contains_key(*k))
                .cloned()
                .collect();
            for key in gone {
                refresh_part(&key, &[], options, skeletons, cache, &mut changed);
            }
        }
    }
    cache.services.clone_from(&snapshot.services);
}

/// Brings one part of `cache` to `services` (none: the part goes).
fn refresh_part(
    key: &PartKey,
    services: &[&Arc<VirtualService>],
    options: &RenderOptions,
    skeletons: &BTreeMap<Family, Table>,
    cache: &mut RenderCache,
    changed: &mut impl FnMut(Family, Change<'_>),
) {
    let unchanged = cache
        .parts
        .get(key)
        .is_some_and(|(old, _)| same_services(old, services));
    if unchanged {
        return;
    }
    let family = key.0;
    if let Some((_, old)) = cache.parts.remove(key) {
        changed(family, Change::Went(&old));
    }
    let Some(empty) = skeletons.get(&family).filter(|_| !services.is_empty()) else {
        return;
    };
    let part = render_part(services, family, empty, options);
    changed(family, Change::Came(&part));
    let owned = services.iter().map(|vs| Arc::clone(vs)).collect();
    cache.parts.insert(key.clone(), (owned, part));
}

/// The virtual services that went and came from `old` to `new` (both in snapshot order:
/// sorted by protocol and frontend, no two alike), by part. Unchanged virtual services are
/// the same allocation in both (the model reuses them), so one merge walk comparing pointers
/// finds the changes. None when that does not pay (many changes) or the order is not the
/// snapshot's: then every part is looked at.
#[allow(clippy::type_complexity)]
fn changed_parts<'a>(
    old: &'a [Arc<VirtualService>],
    new: &'a [Arc<VirtualService>],
) -> Option<BTreeMap<PartKey, (Vec<&'a Arc<VirtualService>>, Vec<&'a Arc<VirtualService>>)>> {
    let order = |vs: &VirtualService| (vs.protocol, vs.frontend);
    let sorted =
        |list: &[Arc<VirtualService>]| list.windows(2).all(|w| order(&w[0]) < order(&w[1]));
    if !sorted(old) || !sorted(new) {
        return None;
    }
    let budget = new.len().max(old.len()) / 8;
    let mut parts: BTreeMap<PartKey, (Vec<_>, Vec<_>)> = BTreeMap::new();
    let mut changes = 0;
    let key = |vs: &VirtualService| (vs_family(vs), vs.protocol, vs.service.clone());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let (went, came) = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => (None, None),
            (Some(a), Some(b)) => match order(a).cmp(&order(b)) {
                std::cmp::Ordering::Less => (Some(a), None),
                std::cmp::Ordering::Greater => (None, Some(b)),
                std::cmp::Ordering::Equal if **a == **b => (None, None),
                std::cmp::Ordering::Equal => (Some(a), Some(b)),
            },
            (Some(a), None) => (Some(a), None),
            (None, Some(b)) => (None, Some(b)),
            (None, None) => break,
        };
        let same = went.is_none() && came.is_none();
        if same || went.is_some() {
            i += 1;
        }
        if same || came.is_some() {
            j += 1;
        }
        if same {
            continue;
        }
        changes += 1;
        if changes > budget {
            return None;
        }
        if let Some(vs) = went {
            parts.entry(key(vs)).or_default().0.push(vs);
        }
        if let Some(vs) = came {
            parts.entry(key(vs)).or_default().1.push(vs);
        }
    }
    Some(parts)
}

enum Change<'a> {
    Went(&'a Table),
    Came(&'a Table),
}

/// [`render`], reusing the parts in `cache` of Service ports that did not change. The result
/// is the same ruleset `render` gives (a property test holds the two together).
pub fn render_cached(
    snapshot: &Snapshot,
    options: &RenderOptions,
    cache: &mut RenderCache,
) -> Ruleset {
    if cache.options.as_ref() != Some(options) {
        cache.parts.clear();
        cache.services.clear();
        cache.options = Some(options.clone());
    }
    refresh(snapshot, options, &skeletons(options), cache, |_, _| {});
    let mut ruleset = Ruleset::default();
    for family in Family::ALL {
        ruleset.tables.insert(family, base_table(family, options));
    }
    // Parts share no chain, map key or set of their own: the order they go in is free.
    for ((family, _, _), (_, part)) in &cache.parts {
        if let Some(table) = ruleset.tables.get_mut(family) {
            merge(table, part);
        }
    }
    ruleset
}

/// What changed since the cache last saw a snapshot: the parts of the Service ports that
/// changed or went (`before`) and of those that changed or came (`after`), each on the base
/// tables' maps and sets (`skeletons`). `after.script(Before::Applied(&before))` is the
/// transaction; [`patch`] brings a stored ruleset along.
#[derive(Debug)]
pub struct Delta {
    pub before: Ruleset,
    pub after: Ruleset,
    skeletons: BTreeMap<Family, Table>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.before == self.after
    }
}

/// The [`Delta`] from what `cache` holds to `snapshot`, updating the cache; None when the
/// options changed (then everything changed: render it all).
pub fn render_delta(
    snapshot: &Snapshot,
    options: &RenderOptions,
    cache: &mut RenderCache,
) -> Option<Delta> {
    if cache.options.as_ref() != Some(options) {
        return None;
    }
    let skeletons = skeletons(options);
    let on_skeletons = || Ruleset {
        tables: skeletons.clone(),
    };
    let (mut before, mut after) = (on_skeletons(), on_skeletons());
    refresh(snapshot, options, &skeletons, cache, |family, change| {
        let (side, part) = match change {
            Change::Went(part) => (&mut before, part),
            Change::Came(part) => (&mut after, part),
        };
        if let Some(table) = side.tables.get_mut(&family) {
            merge(table, part);
        }
    });
    Some(Delta {
        before,
        after,
        skeletons,
    })
}

/// Applies a [`Delta`] to the ruleset it was computed against, as its transaction changes
/// the kernel: the parts that went are taken out (elements of prune-on-full-sync sets stay,
/// as the transaction leaves them), the new parts put in.
pub fn patch(ruleset: &mut Ruleset, delta: &Delta) {
    for (family, table) in &mut ruleset.tables {
        let (Some(gone), Some(skeleton)) =
            (delta.before.tables.get(family), delta.skeletons.get(family))
        else {
            continue;
        };
        for name in gone.chains.keys() {
            table.chains.remove(name);
        }
        for (name, map) in &gone.maps {
            if !skeleton.maps.contains_key(name) {
                table.maps.remove(name);
            } else if let Some(shared) = table.maps.get_mut(name) {
                for key in map.elements.keys() {
                    shared.elements.remove(key);
                }
            }
        }
        for (name, set) in &gone.sets {
            if !skeleton.sets.contains_key(name) {
                table.sets.remove(name);
            } else if let Some(shared) = table.sets.get_mut(name) {
                if !shared.prune_on_full_sync_only {
                    for element in &set.elements {
                        shared.elements.remove(element);
                    }
                }
            }
        }
        if let Some(came) = delta.after.tables.get(family) {
            merge(table, came);
        }
    }
}

/// The base table's maps and sets without elements, and no chains: what a virtual
/// service's part is rendered into.
fn skeleton(base: &Table) -> Table {
    Table {
        chains: BTreeMap::new(),
        maps: base
            .maps
            .iter()
            .map(|(name, m)| {
                let empty = Map {
                    spec: m.spec.clone(),
                    elements: BTreeMap::new(),
                };
                (name.clone(), empty)
            })
            .collect(),
        sets: base
            .sets
            .iter()
            .map(|(name, set)| {
                let empty = Set {
                    spec: set.spec.clone(),
                    elements: BTreeSet::new(),
                    prune_on_full_sync_only: set.prune_on_full_sync_only,
                };
                (name.clone(), empty)
            })
            .collect(),
    }
}

/// Adds a virtual service's part to the table: its own chains, maps and sets, and its
/// elements of the shared maps and sets.
fn merge(table: &mut Table, part: &Table) {
    for (name, chain) in &part.chains {
        table.chains.insert(name.clone(), chain.clone());
    }
    for (name, map) in &part.maps {
        match table.maps.get_mut(name) {
            Some(shared) => shared
                .elements
                .extend(map.elements.iter().map(|(k, v)| (k.clone(), v.clone()))),
            None => {
                table.maps.insert(name.clone(), map.clone());
            }
        }
    }
    for (name, set) in &part.sets {
        match table.sets.get_mut(name) {
            Some(shared) => shared.elements.extend(set.elements.iter().cloned()),
            None => {
                table.sets.insert(name.clone(), set.clone());
            }
        }
    }
}

fn base_table(family: Family, options: &RenderOptions) -> Table {
    let f = family.name();
    let addr_type = family.addr_type();
    let mut t = Table::default();
    let base = |spec: &str, rules: Vec<String>| Chain {
        base: Some(spec.to_string()),
        rules,
    };
    t.chains.insert(
        "nat-prerouting".into(),
        base(
            "type nat hook prerouting priority -100",
            vec!["jump services".into()],
        ),
    );
    t.chains.insert(
        "nat-output".into(),
        base(
            "type nat hook output priority -100",
            vec!["jump services".into()],
        ),
    );
    t.chains.insert(
        "nat-postrouting".into(),
        base(
            "type nat hook postrouting priority 100",
            vec!["jump masquerading".into()],
        ),
    );
    // Ahead of DNAT (priority dstnat - 10): refuse disallowed sources while the destination
    // is still the Service address.
    t.chains.insert(
        "filter-prerouting".into(),
        base(
            "type filter hook prerouting priority -110",
            vec!["ct state new jump firewall-check".into()],
        ),
    );
    t.chains.insert(
        "filter-input".into(),
        base(
            "type filter hook input priority -110",
            vec!["ct state new jump endpoints-check".into()],
        ),
    );
    t.chains.insert(
        "filter-forward".into(),
        base(
            "type filter hook forward priority -110",
            vec!["ct state new jump endpoints-check".into()],
        ),
    );
    t.chains.insert(
        "filter-output".into(),
        base(
            "type filter hook output priority -110",
            vec![
                "ct state new jump endpoints-check".into(),
                "ct state new jump firewall-check".into(),
            ],
        ),
    );
    t.chains.insert(
        "masquerading".into(),
        Chain::regular(vec![
            // Hairpin: a pod sent to itself through its Service must see the reply come from
            // the Service, so its source is masqueraded (one set of endpoint pairs instead of
            // a rule per endpoint).
            format!("ct status dnat {f} saddr . {f} daddr @hairpin masquerade"),
            format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
            format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
            // Plain masquerade keeps the client's port where it is free: no random
            // remapping, so no collisions with TIME_WAIT on the pods (no 1-second stalls).
            if options.masquerade_fully_random {
                "masquerade fully-random"
            } else {
                "masquerade"
            }
            .into(),
        ]),
    );
    t.chains.insert(
        "mark-for-masquerade".into(),
        Chain::regular(vec![format!(
            "meta mark set meta mark | {MASQUERADE_MARK:#x}"
        )]),
    );
    t.chains.insert(
        "reject-chain".into(),
        Chain::regular(vec![
            "meta l4proto tcp reject with tcp reset".into(),
            "reject".into(),
        ]),
    );

    t.sets.insert(
        "hairpin".into(),
        Set {
            spec: format!("type {addr_type} . {addr_type}"),
            elements: BTreeSet::new(),
            prune_on_full_sync_only: true,
        },
    );
    let nodeport_match = if options.nodeport_addresses.is_empty() {
        let loopback = match family {
            Family::Ip => "127.0.0.0/8",
            Family::Ip6 => "::1",
        };
        format!("fib daddr type local {f} daddr != {loopback}")
    } else {
        let nets: Vec<String> = options
            .nodeport_addresses
            .iter()
            .filter(|n| in_family(n, family))
            .map(|n| n.trunc().to_string())
            .collect();
        t.sets.insert(
            "nodeport-ips".into(),
            Set {
                spec: format!("type {addr_type}; flags interval"),
                elements: nets.into_iter().collect(),
                prune_on_full_sync_only: false,
            },
        );
        format!("fib daddr type local {f} daddr @nodeport-ips")
    };
    t.chains.insert(
        "services".into(),
        Chain::regular(vec![
            format!("{f} daddr . meta l4proto . th dport vmap @service-ips"),
            format!("{nodeport_match} meta l4proto . th dport vmap @service-nodeports"),
        ]),
    );
    t.chains.insert(
        "endpoints-check".into(),
        Chain::regular(vec![
            format!("{f} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
            format!("{nodeport_match} meta l4proto . th dport vmap @no-endpoint-nodeports"),
        ]),
    );
    t.chains.insert(
        "firewall-check".into(),
        Chain::regular(vec![format!(
            "{f} daddr . meta l4proto . th dport vmap @firewall-ips"
        )]),
    );
    let ip_map = format!("type {addr_type} . inet_proto . inet_service : verdict");
    let port_map = "type inet_proto . inet_service : verdict".to_string();
    for (name, spec) in [
        ("service-ips", &ip_map),
        ("service-nodeports", &port_map),
        ("no-endpoint-services", &ip_map),
        ("no-endpoint-nodeports", &port_map),
        ("firewall-ips", &ip_map),
    ] {
        t.maps.insert(
            name.into(),
            Map {
                spec: spec.clone(),
                elements: BTreeMap::new(),
            },
        );
    }
    t
}

/// The key of a virtual service in the dispatch maps, and which maps.
fn dispatch_key(vs: &VirtualService) -> (String, &'static str, &'static str) {
    match vs.frontend {
        Frontend::Address { addr } => (
            format!(
                "{} . {} . {}",
                addr_literal(addr.ip()),
                proto(vs.protocol),
                addr.port()
            ),
            "service-ips",
            "no-endpoint-services",
        ),
        Frontend::NodePort { port, .. } => (
            format!("{} . {port}", proto(vs.protocol)),
            "service-nodeports",
            "no-endpoint-nodeports",
        ),
    }
}

fn insert_element(table: &mut Table, map: &str, key: String, verdict: String) {
    if let Some(m) = table.maps.get_mut(map) {
        m.elements.insert(key, verdict);
    }
}

fn render_service(table: &mut Table, family: Family, vs: &VirtualService, options: &RenderOptions) {
    let f = family.name();
    if let Some(hairpin) = table.sets.get_mut("hairpin") {
        for rs in &vs.real_servers {
            let ip = addr_literal(rs.addr.ip());
            hairpin.elements.insert(format!("{ip} . {ip}"));
        }
    }
    let (key, service_map, no_endpoint_map) = dispatch_key(vs);
    let external = vs.kind != FrontendKind::ClusterIp;
    // Every endpoint that may take new connections, whatever the traffic policy.
    let everyone: Vec<&RealServer> = vs.real_servers.iter().filter(|rs| rs.weight > 0).collect();
    let cluster_cidrs: Vec<String> = options
        .cluster_cidrs
        .iter()
        .filter(|n| in_family(n, family))
        .map(|n| n.trunc().to_string())
        .collect();

    if !vs.source_ranges.is_empty() && vs.kind == FrontendKind::LoadBalancer {
        let firewall = truncate(format!(
            "firewall-{}",
            &service_chain_name(vs)["service-".len()..]
        ));
        let ranges: Vec<String> = vs
            .source_ranges
            .iter()
            .filter(|n| in_family(n, family))
            .map(|n| n.trunc().to_string())
            .collect();
        let rule = if ranges.is_empty() {
            "drop".to_string()
        } else {
            format!("{f} saddr != {} drop", anon_set(&ranges))
        };
        table
            .chains
            .insert(firewall.clone(), Chain::regular(vec![rule]));
        insert_element(
            table,
            "firewall-ips",
            key.clone(),
            format!("goto {firewall}"),
        );
    }

    if everyone.is_empty() {
        // No endpoint at all: refuse at once, as a closed port would.
        insert_element(table, no_endpoint_map, key, "goto reject-chain".into());
        return;
    }
    let name = service_chain_name(vs);
    let mut rules = Vec::new();
    let local_policy = vs.traffic_policy == TrafficPolicy::Local;
    let chosen: Vec<&RealServer> = if external && local_policy {
        let cluster_chain = truncate(format!("{name}-cluster"));
        let cluster_rules = dispatch_rules(table, family, vs, &everyone, &cluster_chain);
        table
            .chains
            .insert(cluster_chain.clone(), Chain::regular(cluster_rules));
        // Sources inside the cluster reach every endpoint, unmasqueraded; the node itself
        // too, masqueraded; only external clients are kept on this node, with their address.
        if !cluster_cidrs.is_empty() {
            rules.push(format!(
                "{f} saddr {} goto {cluster_chain}",
                anon_set(&cluster_cidrs)
            ));
        }
        rules.push("fib saddr type local jump mark-for-masquerade".into());
        rules.push(format!("fib saddr type local goto {cluster_chain}"));
        vs.serving(true).collect()
    } else {
        if external || options.masquerade_all {
            rules.push("jump mark-for-masquerade".into());
        } else if !cluster_cidrs.is_empty() {
            rules.push(format!(
                "{f} saddr != {} jump mark-for-masquerade",
                anon_set(&cluster_cidrs)
            ));
        }
        vs.serving(false).collect()
    };
    if chosen.is_empty() {
        if external {
            // Local policy and no endpoint here: external clients are dropped (the load
            // balancer's health check sees 503 and stops sending here).
            rules.push("drop".into());
        } else {
            // internalTrafficPolicy Local with no local endpoint: dropped, as kube-proxy does.
            insert_element(table, no_endpoint_map, key, "drop".into());
            return;
        }
    } else {
        rules.extend(dispatch_rules(table, family, vs, &chosen, &name));
    }
    table.chains.insert(name.clone(), Chain::regular(rules));
    insert_element(table, service_map, key, format!("goto {name}"));
}

/// Persistence checks then the scheduler's choice among `servers`.
///
/// Plain choices are one rule per endpoint, each with its own `numgen` counter, as
/// kube-proxy's iptables mode chains `statistic` rules: rule i takes `w_i` of every `S_i`
/// connections reaching it (`S_i` = weight left from i on), so round robin and wrr are exact
/// per cycle and no anonymous map is needed (nft builds those in quadratic time: 10,000
/// Services took 36 s, one rule per endpoint takes about a second). Only persistence and the
/// hashing schedulers need endpoint chains and maps.
fn dispatch_rules(
    table: &mut Table,
    family: Family,
    vs: &VirtualService,
    servers: &[&RealServer],
    owner: &str,
) -> Vec<String> {
    let f = family.name();
    let p = proto(vs.protocol);
    let mut rules = Vec::new();
    let dests: Vec<Dest> = servers
        .iter()
        .map(|rs| Dest {
            addr: rs.addr,
            weight: rs.weight,
            active: 0,
            inactive: 0,
        })
        .collect();
    let hashing = matches!(
        vs.scheduler.kind,
        SchedulerKind::Sh | SchedulerKind::Mh | SchedulerKind::Dh
    );
    let chains: Vec<String> = if vs.persistence.is_some() || hashing {
        servers
            .iter()
            .map(|rs| endpoint_chain(table, family, vs, rs))
            .collect()
    } else {
        Vec::new()
    };
    if vs.persistence.is_some() {
        for (rs, chain) in servers.iter().zip(&chains) {
            rules.push(format!(
                "{f} saddr @{} goto {chain}",
                affinity_set_name(vs, rs)
            ));
        }
    }
    // The action taking a connection to server i.
    let to = |i: usize| -> String {
        match chains.get(i) {
            Some(chain) => format!("goto {chain}"),
            None => format!(
                "meta l4proto {p} counter dnat to {}",
                dnat_target(servers[i])
            ),
        }
    };
    if hashing {
        let (slots, key) = match vs.scheduler.kind {
            SchedulerKind::Mh => (
                rvs_sched::maglev_table(&dests, vs.scheduler.mh_table_size),
                source_key(vs, f),
            ),
            SchedulerKind::Sh => (rvs_sched::sh_table(&dests), source_key(vs, f)),
            _ => (rvs_sched::sh_table(&dests), format!("{f} daddr")),
        };
        let map_name = truncate(format!(
            "hash-{}-{}",
            slots.len(),
            &owner[owner.find('-').map_or(0, |i| i + 1)..]
        ));
        let elements = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i.to_string(), format!("goto {}", chains[*s])))
            .collect();
        table.maps.insert(
            map_name.clone(),
            Map {
                spec: format!("typeof numgen inc mod {} : verdict", slots.len().max(1)),
                elements,
            },
        );
        rules.push(format!(
            "jhash {key} mod {} seed {HASH_SEED:#x} vmap @{map_name}",
            slots.len()
        ));
        return rules;
    }
    let (generator, weights): (&str, Vec<u64>) = match vs.scheduler.kind {
        // IPVS rr ignores weights (other than 0).
        SchedulerKind::Rr => ("inc", vec![1; servers.len()]),
        SchedulerKind::Wrr => (
            "inc",
            scaled(&dests).iter().map(|d| u64::from(d.weight)).collect(),
        ),
        SchedulerKind::Fo | SchedulerKind::Ovf => {
            // The heaviest server takes everything (nftables sees no connection counts, so
            // ovf cannot overflow).
            let best = (0..servers.len())
                .max_by_key(|i| (servers[*i].weight, std::cmp::Reverse(*i)))
                .unwrap_or(0);
            rules.push(to(best));
            return rules;
        }
        // The least-connection family needs per-server connection counts, which nftables
        // does not have: weighted random is the nearest stateless choice (as kube-proxy).
        _ => (
            "random",
            scaled(&dests).iter().map(|d| u64::from(d.weight)).collect(),
        ),
    };
    let mut left: u64 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        if i + 1 == weights.len() || *w >= left {
            rules.push(to(i));
            break;
        }
        let test = if *w == 1 {
            "== 0".to_string()
        } else {
            format!("< {w}")
        };
        rules.push(format!("numgen {generator} mod {left} {test} {}", to(i)));
        left -= w;
    }
    rules
}

fn source_key(vs: &VirtualService, f: &str) -> String {
    if vs.scheduler.flags.port {
        format!("{f} saddr . th sport")
    } else {
        format!("{f} saddr")
    }
}

/// Weights divided down so a weighted slot list stays short.
fn scaled(dests: &[Dest]) -> Vec<Dest> {
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    let gcd = dests
        .iter()
        .map(|d| u64::from(d.weight))
        .fold(0, rvs_sched::gcd);
    let divisor = gcd.max(1) * total.div_ceil(gcd.max(1) * MAX_SLOTS).max(1);
    dests
        .iter()
        .map(|d| Dest {
            weight: ((u64::from(d.weight) / divisor).max(u64::from(d.weight > 0))) as u32,
            ..*d
        })
        .collect()
}

fn affinity_set_name(vs: &VirtualService, rs: &RealServer) -> String {
    let chain = endpoint_chain_name(vs, rs);
    let timeout = vs.persistence.map_or(0, |d| d.as_secs());
    // The timeout is in the name: a changed timeout is a new set, not an edit.
    truncate(format!(
        "affinity-{timeout}-{}",
        &chain["endpoint-".len()..]
    ))
}

fn endpoint_chain(
    table: &mut Table,
    family: Family,
    vs: &VirtualService,
    rs: &RealServer,
) -> String {
    let f = family.name();
    let name = endpoint_chain_name(vs, rs);
    let mut rules = Vec::new();
    if let Some(timeout) = vs.persistence {
        let set = affinity_set_name(vs, rs);
        table.sets.insert(
            set.clone(),
            Set {
                spec: format!(
                    "type {}; flags dynamic,timeout; timeout {}s",
                    family.addr_type(),
                    timeout.as_secs()
                ),
                elements: BTreeSet::new(),
                prune_on_full_sync_only: false,
            },
        );
        rules.push(format!("update @{set} {{ {f} saddr }}"));
    }
    rules.push(format!(
        "meta l4proto {} counter dnat to {}",
        proto(vs.protocol),
        dnat_target(rs)
    ));
    table.chains.insert(name.clone(), Chain::regular(rules));
    name
}

//! `Snapshot::build`: Kubernetes Services and EndpointSlices -> virtual services, the way
//! kube-proxy reads them. Pure: the same objects give the same snapshot.

use std::collections::BTreeMap;

// Maps keyed by names and frontends are hashed for every Service on every change: foldhash
// (seeded per process) costs a fraction of SipHash there.
use foldhash::{HashMap, HashMapExt, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rvs_sched::{SchedulerConfig, SchedulerFlags, SchedulerKind};

use crate::objects::{ObjectRef, ObjectSet, Origin, Problem, Sourced};
use crate::types::{
    EndpointState, Frontend, FrontendKind, IpFamily, Protocol, RealServer, ServiceRef,
    TrafficPolicy, VirtualService,
};

const ANN_SCHEDULER: &str = "rvs.io/scheduler";
const ANN_SCHEDULER_FLAGS: &str = "rvs.io/scheduler-flags";
const ANN_MH_TABLE_SIZE: &str = "rvs.io/mh-table-size";
const ANN_PROXY_PROTOCOL: &str = "rvs.io/proxy-protocol";
const ANN_WEIGHTS: &str = "rvs.io/weights";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_SECONDS: i32 = 10_800;
const MAX_AFFINITY_SECONDS: i32 = 86_400;
/// `ipvsadm` accepts weights 0..=65535.
const MAX_WEIGHT: u32 = 65_535;
const DEFAULT_WEIGHT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Scheduler for Services without `rvs.io/scheduler` (kube-proxy's `--ipvs-scheduler`).
    pub default_scheduler: SchedulerKind,
    /// This node's name (`--node-name`): marks local endpoints, matches `forNodes` hints.
    pub node_name: Option<String>,
    /// This node's zone: matches `forZones` hints (topology-aware routing).
    pub node_zone: Option<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            default_scheduler: SchedulerKind::Rr,
            node_name: None,
            node_zone: None,
        }
    }
}

/// The whole configuration the engines serve, versioned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u64,
    /// Sorted by protocol and frontend; no two share a protocol and frontend.
    pub services: Vec<Arc<VirtualService>>,
}

impl Snapshot {
    /// Builds the snapshot for `objects`. An object with a problem is refused; if `previous`
    /// served that Service, its last good virtual services are kept.
    pub fn build(
        objects: &ObjectSet,
        options: &BuildOptions,
        previous: Option<&Snapshot>,
    ) -> (Snapshot, Vec<Problem>) {
        Self::build_cached(objects, options, previous, &mut TranslationCache::default())
    }

    /// [`Snapshot::build`], reusing the translations in `cache` of Services that did not
    /// change since the last build (same resourceVersions of the Service and its slices).
    pub fn build_cached(
        objects: &ObjectSet,
        options: &BuildOptions,
        previous: Option<&Snapshot>,
        cache: &mut TranslationCache,
    ) -> (Snapshot, Vec<Problem>) {
        if cache.options.as_ref() != Some(options) {
            cache.entries.clear();
            cache.options = Some(options.clone());
        }
        cache.generation = cache.generation.wrapping_add(1);
        let generation = cache.generation;
        let mut problems = Vec::new();
        let slices = index_slices(&objects.endpoint_slices, &mut problems);

        // A contested address stays with the Service already serving it; otherwise the
        // earlier object wins (creation time, then origin).
        let served: HashSet<(&str, &str)> = previous
            .map(|p| {
                p.services
                    .iter()
                    .map(|vs| (vs.service.namespace.as_str(), vs.service.name.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let mut services: Vec<&Sourced<Service>> = objects.services.iter().collect();
        // Keys computed once per Service (not per comparison), borrowed (not copied).
        services.sort_by_cached_key(|s| {
            let s: &Sourced<Service> = s;
            let (namespace, name) = names(&s.object);
            (
                !served.contains(&(namespace, name)),
                s.object.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &s.origin,
                s.object.metadata.name.as_deref(),
            )
        });

        // Which Service claimed each frontend (an index into `services`).
        let mut claims: HashMap<(Protocol, Frontend), usize> = HashMap::new();
        let mut out: Vec<Arc<VirtualService>> = Vec::new();
        for (index, sourced) in services.iter().enumerate() {
            let (namespace, name) = names(&sourced.object);
            let service_slices: &[&Sourced<EndpointSlice>] = slices
                .get(&(namespace, name))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let cached = cache
                .entries
                .get_mut(namespace)
                .and_then(|by_name| by_name.get_mut(name))
                .filter(|t| versions_match(&t.versions, sourced, service_slices));
            let fresh;
            let translation: &Translation = match cached {
                Some(t) => {
                    t.generation = generation;
                    t
                }
                None => {
                    let object = service_ref(&sourced.object);
                    let mut ctx = Ctx {
                        origin: &sourced.origin,
                        object: &object,
                        problems: Vec::new(),
                        elsewhere: Vec::new(),
                    };
                    let built =
                        translate_service(&sourced.object, service_slices, options, &mut ctx)
                            .into_iter()
                            .map(Arc::new)
                            .collect();
                    let versions = resource_versions(sourced, service_slices);
                    fresh = Translation {
                        versions: versions.clone().unwrap_or_default(),
                        built,
                        problems: ctx.problems,
                        elsewhere: ctx.elsewhere,
                        generation,
                    };
                    if versions.is_some() {
                        cache
                            .entries
                            .entry(namespace.to_string())
                            .or_default()
                            .insert(name.to_string(), fresh.clone());
                    }
                    &fresh
                }
            };
            problems.extend(translation.elsewhere.iter().cloned());
            let vss: Vec<Arc<VirtualService>> = if translation.problems.is_empty() {
                translation.built.clone()
            } else {
                problems.extend(translation.problems.iter().cloned());
                // Keep serving what this Service was before it went bad.
                previous
                    .map(|p| {
                        p.services
                            .iter()
                            .filter(|vs| {
                                vs.service.namespace == namespace && vs.service.name == name
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if let Some((vs, owner)) = vss.iter().find_map(|vs| {
                claims
                    .get(&(vs.protocol, vs.frontend))
                    .map(|owner| (vs, *owner))
            }) {
                let owner = service_ref(&services[owner].object);
                problems.push(Problem {
                    origin: sourced.origin.clone(),
                    object: Some(service_ref(&sourced.object)),
                    field: String::new(),
                    message: format!(
                        "{} {} is already used by {owner}; this Service is refused",
                        vs.protocol, vs.frontend
                    ),
                });
                continue;
            }
            for vs in vss {
                claims.insert((vs.protocol, vs.frontend), index);
                out.push(vs);
            }
        }
        // Services gone since the last build: their translations go too.
        for by_name in cache.entries.values_mut() {
            by_name.retain(|_, t| t.generation == generation);
        }
        cache.entries.retain(|_, by_name| !by_name.is_empty());
        out.sort_by_key(|vs| (vs.protocol, vs.frontend));
        // A bad endpoint is met once per port and frontend; report it once.
        problems.sort();
        problems.dedup();
        let version = previous.map_or(1, |p| p.version + 1);
        (
            Snapshot {
                version,
                services: out,
            },
            problems,
        )
    }

    pub fn find(&self, protocol: Protocol, frontend: &Frontend) -> Option<&VirtualService> {
        self.services
            .binary_search_by(|vs| (vs.protocol, vs.frontend).cmp(&(protocol, *frontend)))
            .ok()
            .map(|i| &*self.services[i])
    }
}

/// Each Service's last translation, for [`Snapshot::build_cached`]. Only objects from the API
/// are remembered (their resourceVersion changes with every write); manifest files are
/// translated every time.
#[derive(Debug, Default)]
pub struct TranslationCache {
    options: Option<BuildOptions>,
    /// Namespace, then name: looked up with borrowed names, no copies per build.
    entries: HashMap<String, HashMap<String, Translation>>,
    /// Bumped per build; entries not seen in the latest build are dropped.
    generation: u64,
}

#[derive(Debug, Clone)]
struct Translation {
    /// The Service's resourceVersion, then its slices' (name, resourceVersion) in order.
    versions: Vec<String>,
    built: Vec<Arc<VirtualService>>,
    problems: Vec<Problem>,
    elsewhere: Vec<Problem>,
    /// The build that last used it.
    generation: u64,
}

/// Namespace and name of a Service (namespace `default` when unset), borrowed.
fn names(service: &Service) -> (&str, &str) {
    (
        service.metadata.namespace.as_deref().unwrap_or("default"),
        service.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Whether `cached` (from [`resource_versions`]) still describes the Service and its slices,
/// without building the list again.
fn versions_match(
    cached: &[String],
    service: &Sourced<Service>,
    slices: &[&Sourced<EndpointSlice>],
) -> bool {
    let from_api = service.origin == Origin::Api && slices.iter().all(|s| s.origin == Origin::Api);
    let Some((service_version, pairs)) = cached.split_first() else {
        return false;
    };
    from_api
        && service.object.metadata.resource_version.as_deref() == Some(service_version.as_str())
        && pairs.len() == 2 * slices.len()
        && slices.iter().all(|s| {
            let meta = &s.object.metadata;
            pairs.chunks_exact(2).any(|pair| {
                meta.name.as_deref() == Some(pair[0].as_str())
                    && meta.resource_version.as_deref() == Some(pair[1].as_str())
            })
        })
}

/// What a translation depends on, or None when it cannot be trusted: an object not from the
/// API (a manifest saved by `kubectl get -o yaml` keeps a resourceVersion its edits do not
/// change) or without a resourceVersion.
fn resource_versions(
    service: &Sourced<Service>,
    slices: &[&Sourced<EndpointSlice>],
) -> Option<Vec<String>> {
    if service.origin != Origin::Api || slices.iter().any(|s| s.origin != Origin::Api) {
        return None;
    }
    let mut versions = vec![service.object.metadata.resource_version.clone()?];
    let mut named: Vec<(String, String)> = slices
        .iter()
        .map(|s| {
            let meta = &s.object.metadata;
            Some((meta.name.clone()?, meta.resource_version.clone()?))
        })
        .collect::<Option<_>>()?;
    named.sort();
    for (name, version) in named {
        versions.push(name);
        versions.push(version);
    }
    Some(versions)
}

struct Ctx<'a> {
    origin: &'a Origin,
    object: &'a ObjectRef,
    /// Problems that refuse the Service.
    problems: Vec<Problem>,
    /// Problems of other objects found on the way (bad endpoints): reported, not refusing.
    elsewhere: Vec<Problem>,
}

impl Ctx<'_> {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: self.origin.clone(),
            object: Some(self.object.clone()),
            field: field.into(),
            message: message.into(),
        });
    }
}

fn service_ref(service: &Service) -> ObjectRef {
    ObjectRef {
        kind: "Service".into(),
        namespace: service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: service.metadata.name.clone().unwrap_or_default(),
    }
}

type SliceIndex<'a> = HashMap<(&'a str, &'a str), Vec<&'a Sourced<EndpointSlice>>>;

fn index_slices<'a>(
    slices: &'a [Sourced<EndpointSlice>],
    problems: &mut Vec<Problem>,
) -> SliceIndex<'a> {
    let mut index: SliceIndex<'a> = HashMap::new();
    for sourced in slices {
        let meta = &sourced.object.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        match meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            Some(service) => index
                .entry((namespace, service.as_str()))
                .or_default()
                .push(sourced),
            None => problems.push(Problem {
                origin: sourced.origin.clone(),
                object: Some(ObjectRef {
                    kind: "EndpointSlice".into(),
                    namespace: namespace.to_string(),
                    name: meta.name.clone().unwrap_or_default(),
                }),
                field: format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
                message: "missing: the slice belongs to no Service".into(),
            }),
        }
    }
    index
}

/// Per-Service settings read from `rvs.io/` annotations.
struct Annotations {
    scheduler: SchedulerConfig,
    proxy_protocol: bool,
    weights: BTreeMap<String, u32>,
}

fn parse_annotations(service: &Service, options: &BuildOptions, ctx: &mut Ctx) -> Annotations {
    let empty = BTreeMap::new();
    let ann = service.metadata.annotations.as_ref().unwrap_or(&empty);
    let field = |key: &str| format!("metadata.annotations[{key}]");

    let mut scheduler = SchedulerConfig {
        kind: options.default_scheduler,
        ..Default::default()
    };
    if let Some(name) = ann.get(ANN_SCHEDULER) {
        match name.parse::<SchedulerKind>() {
            Ok(kind) => scheduler.kind = kind,
            Err(e) => ctx.problem(field(ANN_SCHEDULER), e.to_string()),
        }
    }
    if let Some(list) = ann.get(ANN_SCHEDULER_FLAGS) {
        match SchedulerFlags::parse(list, scheduler.kind) {
            Ok(flags) => scheduler.flags = flags,
            Err(e) => ctx.problem(field(ANN_SCHEDULER_FLAGS), e.to_string()),
        }
    }
    if let Some(size) = ann.get(ANN_MH_TABLE_SIZE) {
        match size.trim().parse::<u32>() {
            Ok(n) if is_prime(n) && (251..=131_071).contains(&n) => scheduler.mh_table_size = n,
            _ => ctx.problem(
                field(ANN_MH_TABLE_SIZE),
                format!("{size:?} is not a prime between 251 and 131071"),
            ),
        }
    }
    let proxy_protocol = match ann.get(ANN_PROXY_PROTOCOL).map(|v| v.trim()) {
        None | Some("") | Some("off") => false,
        Some(v) if v.eq_ignore_ascii_case("v2") => true,
        Some(v) => {
            ctx.problem(
                field(ANN_PROXY_PROTOCOL),
                format!("{v:?} is not supported (use \"v2\")"),
            );
            false
        }
    };
    let mut weights = BTreeMap::new();
    if let Some(list) = ann.get(ANN_WEIGHTS) {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parsed = item.split_once('=').and_then(|(k, w)| {
                let w = w.trim().parse::<u32>().ok().filter(|w| *w <= MAX_WEIGHT)?;
                Some((k.trim().to_string(), w))
            });
            match parsed {
                Some((k, w)) if !k.is_empty() => {
                    weights.insert(k, w);
                }
                _ => ctx.problem(
                    field(ANN_WEIGHTS),
                    format!(
                        "{item:?} is not POD-OR-IP=WEIGHT with a weight from 0 to {MAX_WEIGHT}"
                    ),
                ),
            }
        }
    }
    Annotations {
        scheduler,
        proxy_protocol,
        weights,
    }
}

/// RFC 1123 label, as Kubernetes checks names and namespaces.
fn is_dns_label(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && edge(s.chars().next())
        && edge(s.chars().last())
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| d.saturating_mul(*d) <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn parse_ip(raw: &str, field: &str, ctx: &mut Ctx) -> Option<IpAddr> {
    match raw.trim().parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            ctx.problem(field, format!("{raw:?} is not an IP address"));
            None
        }
    }
}

fn translate_service(
    service: &Service,
    slices: &[&Sourced<EndpointSlice>],
    options: &BuildOptions,
    ctx: &mut Ctx,
) -> Vec<VirtualService> {
    let Some(spec) = service.spec.as_ref() else {
        ctx.problem("spec", "missing");
        return Vec::new();
    };
    // The API server enforces these; manifest files must too: names end up in nftables
    // chain names, which have a length limit.
    if !is_dns_label(&ctx.object.name) {
        ctx.problem(
            "metadata.name",
            format!(
                "{:?} is not a DNS label (a-z, 0-9, '-', at most 63)",
                ctx.object.name
            ),
        );
    }
    if !is_dns_label(&ctx.object.namespace) {
        ctx.problem(
            "metadata.namespace",
            format!(
                "{:?} is not a DNS label (a-z, 0-9, '-', at most 63)",
                ctx.object.namespace
            ),
        );
    }
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            if name.len() > 15 || !is_dns_label(name) {
                ctx.problem(
                    format!("spec.ports[{i}].name"),
                    format!("{name:?} is not a port name (a-z, 0-9, '-', at most 15)"),
                );
            }
        }
    }
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    match service_type {
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        "ExternalName" => return Vec::new(),
        other => {
            ctx.problem("spec.type", format!("{other:?} is not a Service type"));
            return Vec::new();
        }
    }
    let annotations = parse_annotations(service, options, ctx);

    let headless = spec.cluster_ip.as_deref() == Some("None")
        || spec
            .cluster_ips
            .as_deref()
            .and_then(|ips| ips.first())
            .map(String::as_str)
            == Some("None");
    let mut cluster_ips = Vec::new();
    if !headless {
        let listed: Vec<(String, &String)> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip))
                .collect(),
            _ => spec
                .cluster_ip
                .iter()
                .map(|ip| ("spec.clusterIP".to_string(), ip))
                .collect(),
        };
        for (field, raw) in listed {
            if raw.is_empty() {
                continue;
            }
            if let Some(ip) = parse_ip(raw, &field, ctx) {
                cluster_ips.push(ip);
            }
        }
        if let (Some(single), Some(first)) = (&spec.cluster_ip, cluster_ips.first()) {
            if !single.is_empty() && single.parse::<IpAddr>().ok() != Some(*first) {
                ctx.problem("spec.clusterIP", "differs from spec.clusterIPs[0]");
            }
        }
        if service_type == "ClusterIP" && cluster_ips.is_empty() && ctx.problems.is_empty() {
            ctx.problem(
                "spec.clusterIP",
                "not set: rvs does not allocate cluster IPs, give one",
            );
        }
    }
    let mut fixed: Vec<(IpAddr, FrontendKind)> = cluster_ips
        .iter()
        .map(|ip| (*ip, FrontendKind::ClusterIp))
        .collect();
    for (i, raw) in spec.external_ips.iter().flatten().enumerate() {
        if let Some(ip) = parse_ip(raw, &format!("spec.externalIPs[{i}]"), ctx) {
            fixed.push((ip, FrontendKind::ExternalIp));
        }
    }
    if service_type == "LoadBalancer" {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, entry) in ingress.into_iter().flatten().enumerate() {
            if let Some(raw) = &entry.ip {
                let field = format!("status.loadBalancer.ingress[{i}].ip");
                if let Some(ip) = parse_ip(raw, &field, ctx) {
                    fixed.push((ip, FrontendKind::LoadBalancer));
                }
            }
        }
    }
    let families = service_families(spec.ip_families.as_deref(), &cluster_ips, ctx);

    let policy = |field: &str, value: Option<&str>, ctx: &mut Ctx| match value {
        None | Some("Cluster") | Some("Global") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            ctx.problem(field, format!("{other:?} is not Cluster or Local"));
            TrafficPolicy::Cluster
        }
    };
    let external_policy = policy(
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
        ctx,
    );
    let internal_policy = policy(
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
        ctx,
    );
    let source_ranges = parse_source_ranges(service, ctx);
    let health_check_node_port = match spec.health_check_node_port {
        Some(port) if service_type == "LoadBalancer" && external_policy == TrafficPolicy::Local => {
            port_number(port, "spec.healthCheckNodePort", ctx)
        }
        _ => None,
    };

    let persistence = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let seconds = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS);
            if (1..=MAX_AFFINITY_SECONDS).contains(&seconds) {
                Some(Duration::from_secs(seconds.unsigned_abs().into()))
            } else {
                ctx.problem(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{seconds} is not between 1 and {MAX_AFFINITY_SECONDS}"),
                );
                None
            }
        }
        Some(other) => {
            ctx.problem(
                "spec.sessionAffinity",
                format!("{other:?} is not None or ClientIP"),
            );
            None
        }
    };

    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !headless {
        ctx.problem("spec.ports", "no ports");
    }
    let mut out = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let Some(parsed) = parse_port(port, i, service_type, ctx) else {
            continue;
        };
        let service_ref = ServiceRef {
            namespace: ctx.object.namespace.clone(),
            name: ctx.object.name.clone(),
            port_name: port.name.clone().unwrap_or_default(),
        };
        if headless {
            continue;
        }
        let mut frontends: Vec<(Frontend, FrontendKind)> = fixed
            .iter()
            .map(|(ip, kind)| {
                (
                    Frontend::Address {
                        addr: SocketAddr::new(*ip, parsed.port),
                    },
                    *kind,
                )
            })
            .collect();
        if let Some(node_port) = parsed.node_port {
            for family in &families {
                frontends.push((
                    Frontend::NodePort {
                        family: *family,
                        port: node_port,
                    },
                    FrontendKind::NodePort,
                ));
            }
        }
        for (frontend, kind) in frontends {
            let family = match frontend {
                Frontend::Address { addr } => IpFamily::of(addr.ip()),
                Frontend::NodePort { family, .. } => family,
            };
            let traffic_policy = match kind {
                FrontendKind::ClusterIp => internal_policy,
                _ => external_policy,
            };
            let topology = (traffic_policy == TrafficPolicy::Cluster).then_some(options);
            let real_servers = real_servers(
                port,
                &parsed,
                family,
                slices,
                &annotations.weights,
                (options.node_name.as_deref(), topology),
                ctx,
            );
            out.push(VirtualService {
                protocol: parsed.protocol,
                frontend,
                kind,
                service: service_ref.clone(),
                scheduler: annotations.scheduler,
                persistence,
                proxy_protocol: annotations.proxy_protocol,
                real_servers,
                traffic_policy,
                source_ranges: if kind == FrontendKind::LoadBalancer {
                    source_ranges.clone()
                } else {
                    Vec::new()
                },
                health_check_node_port: health_check_node_port
                    .filter(|_| kind == FrontendKind::LoadBalancer),
            });
        }
    }
    // Two ports of one Service on the same protocol and frontend.
    let mut seen = HashSet::default();
    for vs in &out {
        if !seen.insert((vs.protocol, vs.frontend)) {
            ctx.problem(
                "spec.ports",
                format!("{} {} appears twice", vs.protocol, vs.frontend),
            );
        }
    }
    out
}

fn service_families(
    declared: Option<&[String]>,
    cluster_ips: &[IpAddr],
    ctx: &mut Ctx,
) -> Vec<IpFamily> {
    let mut families = Vec::new();
    for (i, raw) in declared.unwrap_or_default().iter().enumerate() {
        match raw.as_str() {
            "IPv4" => families.push(IpFamily::V4),
            "IPv6" => families.push(IpFamily::V6),
            other => ctx.problem(
                format!("spec.ipFamilies[{i}]"),
                format!("{other:?} is not IPv4 or IPv6"),
            ),
        }
    }
    if families.is_empty() {
        families = cluster_ips.iter().map(|ip| IpFamily::of(*ip)).collect();
    }
    if families.is_empty() {
        families.push(IpFamily::V4);
    }
    families.dedup();
    families
}

struct ParsedPort {
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    /// A numeric targetPort, used when the EndpointSlices list no ports at all.
    numeric_target: Option<u16>,
}

fn parse_protocol(raw: Option<&str>, field: &str, ctx: &mut Ctx) -> Option<Protocol> {
    match raw.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        other => {
            ctx.problem(field, format!("{other:?} is not supported (TCP or UDP)"));
            None
        }
    }
}

fn port_number(value: i32, field: &str, ctx: &mut Ctx) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            ctx.problem(field, format!("{value} is not a port number (1-65535)"));
            None
        }
    }
}

fn parse_port(
    port: &ServicePort,
    i: usize,
    service_type: &str,
    ctx: &mut Ctx,
) -> Option<ParsedPort> {
    let protocol = parse_protocol(
        port.protocol.as_deref(),
        &format!("spec.ports[{i}].protocol"),
        ctx,
    );
    let number = port_number(port.port, &format!("spec.ports[{i}].port"), ctx);
    let node_port = match (service_type, port.node_port) {
        ("NodePort" | "LoadBalancer", Some(n)) => {
            Some(port_number(n, &format!("spec.ports[{i}].nodePort"), ctx)?)
        }
        _ => None,
    };
    let numeric_target = match &port.target_port {
        None => number,
        Some(IntOrString::Int(n)) => Some(port_number(
            *n,
            &format!("spec.ports[{i}].targetPort"),
            ctx,
        )?),
        Some(IntOrString::String(s)) if s.parse::<i32>().is_ok() => Some(port_number(
            s.parse().unwrap_or(0),
            &format!("spec.ports[{i}].targetPort"),
            ctx,
        )?),
        Some(IntOrString::String(_)) => None,
    };
    Some(ParsedPort {
        protocol: protocol?,
        port: number?,
        node_port,
        numeric_target,
    })
}

fn real_servers(
    port: &ServicePort,
    parsed: &ParsedPort,
    family: IpFamily,
    slices: &[&Sourced<EndpointSlice>],
    weights: &BTreeMap<String, u32>,
    (node_name, topology): (Option<&str>, Option<&BuildOptions>),
    ctx: &mut Ctx,
) -> Vec<RealServer> {
    let port_name = port.name.as_deref().unwrap_or("");
    let address_type = match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    };
    let mut ready = BTreeMap::new();
    let mut terminating = BTreeMap::new();
    let mut hints: BTreeMap<SocketAddr, Hints> = BTreeMap::new();
    for sourced in slices {
        let slice = &sourced.object;
        if slice.address_type != address_type {
            continue;
        }
        let slice_ref = ObjectRef {
            kind: "EndpointSlice".into(),
            namespace: ctx.object.namespace.clone(),
            name: slice.metadata.name.clone().unwrap_or_default(),
        };
        let target_port = match slice.ports.as_deref() {
            None | Some([]) => parsed.numeric_target,
            Some(ports) => ports
                .iter()
                .find(|p| {
                    p.name.as_deref().unwrap_or("") == port_name
                        && p.protocol.as_deref().unwrap_or("TCP") == parsed.protocol.to_string()
                })
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok().filter(|p| *p > 0)),
        };
        let Some(target_port) = target_port else {
            continue;
        };
        for (j, endpoint) in slice.endpoints.iter().enumerate() {
            let Some(raw) = endpoint.addresses.first() else {
                continue;
            };
            let Ok(ip) = raw.parse::<IpAddr>() else {
                // Reported against the slice, not the Service: the Service itself is fine.
                ctx.elsewhere.push(Problem {
                    origin: sourced.origin.clone(),
                    object: Some(slice_ref.clone()),
                    field: format!("endpoints[{j}].addresses[0]"),
                    message: format!("{raw:?} is not an IP address; endpoint ignored"),
                });
                continue;
            };
            if IpFamily::of(ip) != family {
                continue;
            }
            let conditions = endpoint.conditions.as_ref();
            // The API says an unset `ready` means ready and unset `serving` means `ready`.
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let is_serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let target = endpoint.target_ref.as_ref().and_then(|t| t.name.clone());
            let configured_weight = target
                .as_ref()
                .and_then(|t| weights.get(t))
                .or_else(|| weights.get(&ip.to_string()))
                .copied()
                .unwrap_or(DEFAULT_WEIGHT);
            let server = RealServer {
                addr: SocketAddr::new(ip, target_port),
                weight: configured_weight,
                configured_weight,
                state: EndpointState::Ready,
                is_local: node_name.is_some() && endpoint.node_name.as_deref() == node_name,
                node_name: endpoint.node_name.clone(),
                zone: endpoint.zone.clone(),
                target,
            };
            if is_ready && !is_terminating {
                let endpoint_hints = endpoint.hints.as_ref();
                hints.insert(
                    server.addr,
                    Hints {
                        zones: endpoint_hints
                            .and_then(|h| h.for_zones.as_ref())
                            .map(|z| z.iter().map(|z| z.name.clone()).collect())
                            .unwrap_or_default(),
                        nodes: endpoint_hints
                            .and_then(|h| h.for_nodes.as_ref())
                            .map(|n| n.iter().map(|n| n.name.clone()).collect())
                            .unwrap_or_default(),
                    },
                );
                ready.insert(server.addr, server);
            } else if is_serving && is_terminating {
                terminating.insert(
                    server.addr,
                    RealServer {
                        state: EndpointState::Terminating,
                        ..server
                    },
                );
            }
        }
    }
    if let Some(options) = topology {
        apply_topology_hints(&mut ready, &hints, options);
    }
    let fallback = ready.is_empty();
    // A Local traffic policy (no topology then) falls back on its own: with no ready
    // endpoint on this node, its serving terminating ones keep this node's traffic, even
    // while other nodes have ready ones (KEP-1669, as kube-proxy does).
    let local_policy = topology.is_none();
    let local_fallback = local_policy && node_name.is_some() && !ready.values().any(|r| r.is_local);
    let mut servers: BTreeMap<SocketAddr, RealServer> = ready;
    for (addr, mut server) in terminating {
        if !(fallback || (local_fallback && server.is_local)) {
            server.weight = 0;
        }
        servers.entry(addr).or_insert(server);
    }
    servers.into_values().collect()
}

/// An endpoint's topology hints.
struct Hints {
    zones: Vec<String>,
    nodes: Vec<String>,
}

/// Topology-aware routing as kube-proxy applies it: when every ready endpoint carries hints
/// and some are for this node (`forNodes`) or, failing that, this zone (`forZones`), only
/// those take this node's traffic. Otherwise the hints are ignored.
fn apply_topology_hints(
    ready: &mut BTreeMap<SocketAddr, RealServer>,
    hints: &BTreeMap<SocketAddr, Hints>,
    options: &BuildOptions,
) {
    let select = |pick: fn(&Hints) -> &[String], wanted: &str| {
        let hinted = |a: &SocketAddr| hints.get(a).map(pick).unwrap_or_default();
        let all_hinted = ready.keys().all(|a| !hinted(a).is_empty());
        let chosen: Vec<SocketAddr> = ready
            .keys()
            .filter(|a| hinted(a).iter().any(|x| x == wanted))
            .copied()
            .collect();
        (all_hinted && !chosen.is_empty()).then_some(chosen)
    };
    let by_node = options
        .node_name
        .as_deref()
        .and_then(|n| select(|h| &h.nodes, n));
    let chosen = by_node.or_else(|| {
        options
            .node_zone
            .as_deref()
            .and_then(|z| select(|h| &h.zones, z))
    });
    if let Some(chosen) = chosen {
        ready.retain(|addr, _| chosen.contains(addr));
    }
}

/// `spec.loadBalancerSourceRanges`, or the older annotation
/// `service.beta.kubernetes.io/load-balancer-source-ranges`.
fn parse_source_ranges(service: &Service, ctx: &mut Ctx) -> Vec<ipnet::IpNet> {
    const ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
    let spec_ranges = service
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.clone());
    let (field, raw): (String, Vec<String>) = match spec_ranges.filter(|r| !r.is_empty()) {
        Some(ranges) => ("spec.loadBalancerSourceRanges".into(), ranges),
        None => match service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
        {
            Some(list) => (
                format!("metadata.annotations[{ANNOTATION}]"),
                list.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
            None => return Vec::new(),
        },
    };
    let mut out = Vec::new();
    for (i, range) in raw.iter().enumerate() {
        match range.trim().parse::<ipnet::IpNet>() {
            Ok(net) => out.push(net.trunc()),
            Err(_) => ctx.problem(format!("{field}[{i}]"), format!("{range:?} is not a CIDR")),
        }
    }
    out
}

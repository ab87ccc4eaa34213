//! `Snapshot::build` on generated, mostly invalid, Services and EndpointSlices: it never
//! panics and what it returns always keeps the snapshot's invariants.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, ObjectReference, Service, ServicePort,
    ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::collection::{btree_map, vec};
use proptest::option::{of, weighted};
use proptest::prelude::*;
use proptest::sample::select;
use rvs_model::{
    BuildOptions, EndpointState, Frontend, IpFamily, ObjectSet, Origin, SchedulerKind, Snapshot,
    Sourced, VirtualService,
};

fn s(v: &[&'static str]) -> impl Strategy<Value = String> {
    select(v.to_vec()).prop_map(str::to_string)
}

/// Valid addresses from a small pool (so that Services collide), invalid ones, random ones.
fn ip() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => s(&["10.96.0.1", "10.96.0.2", "10.1.0.1", "10.1.0.2", "10.1.0.3", "0.0.0.0"]),
        6 => s(&["fd00::1", "fd00::2", "::ffff:10.1.0.1", "::"]),
        1 => s(&["", "None", "10.0.0.256", "abc", " 10.96.0.1 ", "fd00::zz", "1.2.3", "10.1.0.1:80", "[fd00::1]"]),
        1 => any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        1 => any::<[u16; 8]>().prop_map(|o| std::net::Ipv6Addr::from(o).to_string()),
        1 => "\\PC{0,16}",
    ]
}

fn port() -> impl Strategy<Value = i32> {
    prop_oneof![
        1 => Just(0),
        1 => Just(-1),
        1 => Just(65_535),
        1 => Just(65_536),
        1 => Just(70_000),
        1 => Just(i32::MIN),
        1 => Just(i32::MAX),
        80 => 1..4i32,
        20 => Just(80),
        1 => any::<i32>(),
    ]
}

fn protocol() -> impl Strategy<Value = Option<String>> {
    prop_oneof![12 => Just(None), 12 => s(&["TCP", "UDP"]).prop_map(Some), 1 => s(&["SCTP", "tcp", ""]).prop_map(Some)]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![20 => s(&["web", "api"]), 1 => Just(String::new())]
}

fn meta(labels: Option<BTreeMap<String, String>>) -> impl Strategy<Value = ObjectMeta> {
    let namespace = prop_oneof![8 => Just(None), 2 => Just(Some("default".to_string())), 1 => Just(Some("prod".to_string()))];
    (name(), namespace, of(0..3i64), annotations()).prop_map(
        move |(name, namespace, created, annotations)| ObjectMeta {
            name: Some(name),
            namespace,
            creation_timestamp: created.map(|t| {
                Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + t).unwrap())
            }),
            annotations: Some(annotations),
            labels: labels.clone(),
            ..Default::default()
        },
    )
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let scheduler = prop_oneof![
        12 => select(SchedulerKind::ALL.to_vec()).prop_map(|k| k.name().to_string()),
        1 => s(&["", "fancy", "SH", " mh "]),
    ];
    let flags = s(&[
        "",
        "sh-fallback",
        "sh-port",
        "mh-fallback,mh-port",
        "sh-port, mh-port",
        "bogus",
        ",",
    ]);
    let table = prop_oneof![
        6 => s(&["251", "4093", "131071"]),
        1 => s(&["4000", "241", "131101", "-7", "x", ""]),
        1 => any::<u32>().prop_map(|n| n.to_string()),
    ];
    let proxy = prop_oneof![6 => s(&["v2", "V2", "off", ""]), 1 => s(&["v1", "yes"])];
    let weights = prop_oneof![
        12 => s(&["", "web-1=3", "10.1.0.1=0,pod-b=65535", "fd00::1=7,,", "10.1.0.2=0, web-1=0"]),
        1 => s(&["10.1.0.2=65536", "=", "x", "a=b"]),
        1 => "\\PC{0,20}",
    ];
    (
        weighted(0.3, scheduler),
        weighted(0.1, flags),
        weighted(0.1, table),
        weighted(0.2, proxy),
        weighted(0.3, weights),
    )
        .prop_map(|(scheduler, flags, table, proxy, weights)| {
            let mut map = BTreeMap::new();
            let mut put = |key: &str, value: Option<String>| {
                if let Some(v) = value {
                    map.insert(key.to_string(), v);
                }
            };
            put("rvs.io/scheduler", scheduler);
            put("rvs.io/scheduler-flags", flags);
            put("rvs.io/mh-table-size", table);
            put("rvs.io/proxy-protocol", proxy);
            put("rvs.io/weights", weights);
            map
        })
}

fn service_port() -> impl Strategy<Value = ServicePort> {
    let target = prop_oneof![
        port().prop_map(IntOrString::Int),
        s(&["http", "dns", "8080", "0", "-1", "70000", ""]).prop_map(IntOrString::String),
        port().prop_map(IntOrString::Int),
        port().prop_map(|p| IntOrString::String(p.to_string())),
    ];
    (
        of(s(&["", "http", "dns"])),
        port(),
        protocol(),
        weighted(0.4, port()),
        of(target),
    )
        .prop_map(
            |(name, port, protocol, node_port, target_port)| ServicePort {
                name,
                port,
                protocol,
                node_port,
                target_port,
                ..Default::default()
            },
        )
}

fn service() -> impl Strategy<Value = Service> {
    let addresses = (
        weighted(0.9, prop_oneof![1 => Just("None".to_string()), 12 => ip()]),
        weighted(
            0.15,
            vec(prop_oneof![1 => Just("None".to_string()), 12 => ip()], 0..3),
        ),
        weighted(0.3, vec(ip(), 0..3)),
        weighted(
            0.3,
            vec((of(ip()), weighted(0.2, s(&["lb.example.com"]))), 0..3),
        ),
        weighted(
            0.2,
            vec(
                prop_oneof![8 => s(&["IPv4", "IPv6"]), 1 => Just("IPv5".to_string())],
                0..3,
            ),
        ),
    );
    let affinity = (
        weighted(
            0.3,
            prop_oneof![8 => s(&["None", "ClientIP"]), 1 => Just("Cookie".to_string())],
        ),
        weighted(
            0.3,
            of(prop_oneof![
                1 => Just(-1),
                1 => Just(0),
                4 => Just(1),
                4 => Just(10_800),
                4 => Just(86_400),
                1 => Just(86_401),
                1 => any::<i32>(),
            ]),
        ),
    );
    let type_ = of(prop_oneof![
        12 => s(&["ClusterIP", "NodePort", "LoadBalancer"]),
        1 => s(&["ExternalName", "Bogus"]),
    ]);
    (
        meta(None),
        type_,
        addresses,
        affinity,
        weighted(
            0.97,
            prop_oneof![1 => Just(Vec::new()), 12 => vec(service_port(), 1..4)],
        ),
        prop::bool::weighted(0.97),
    )
        .prop_map(
            |(
                metadata,
                type_,
                (cluster_ip, cluster_ips, external_ips, ingress, families),
                (affinity, timeout),
                ports,
                spec,
            )| {
                let ingress = ingress.map(|list| {
                    list.into_iter()
                        .map(|(ip, hostname)| LoadBalancerIngress {
                            ip,
                            hostname,
                            ..Default::default()
                        })
                        .collect()
                });
                Service {
                    metadata,
                    spec: spec.then(|| ServiceSpec {
                        type_,
                        cluster_ip,
                        cluster_ips,
                        external_ips,
                        ip_families: families,
                        session_affinity: affinity,
                        session_affinity_config: timeout.map(|timeout_seconds| {
                            SessionAffinityConfig {
                                client_ip: Some(ClientIPConfig { timeout_seconds }),
                            }
                        }),
                        ports,
                        ..Default::default()
                    }),
                    status: Some(ServiceStatus {
                        load_balancer: Some(LoadBalancerStatus { ingress }),
                        ..Default::default()
                    }),
                }
            },
        )
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    let conditions = (of(any::<bool>()), of(any::<bool>()), of(any::<bool>())).prop_map(
        |(ready, serving, terminating)| EndpointConditions {
            ready,
            serving,
            terminating,
        },
    );
    (
        prop_oneof![1 => vec(ip(), 0..3), 6 => ip().prop_map(|ip| vec![ip])],
        of(conditions),
        of(s(&["web-1", "pod-b", "10.1.0.1"])),
        of(s(&["node-a"])),
        of(s(&["zone-1"])),
    )
        .prop_map(
            |(addresses, conditions, target, node_name, zone)| Endpoint {
                addresses,
                conditions,
                target_ref: target.map(|name| ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(name),
                    ..Default::default()
                }),
                node_name,
                zone,
                ..Default::default()
            },
        )
}

fn endpoint_slice() -> impl Strategy<Value = EndpointSlice> {
    // Zero is a likely mistake for a port that is otherwise always matched: more of it.
    let slice_port_number = prop_oneof![6 => port(), 1 => Just(0)];
    let slice_port = (
        of(s(&["", "http", "dns"])),
        of(slice_port_number),
        protocol(),
    )
        .prop_map(|(name, port, protocol)| EndpointPort {
            name,
            port,
            protocol,
            ..Default::default()
        });
    let labels = prop_oneof![
        8 => name().prop_map(|n| Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), n)]))),
        1 => of(btree_map(s(&["kubernetes.io/service-name", "app"]), name(), 0..2)),
    ];
    let address_type =
        prop_oneof![8 => Just("IPv4"), 4 => Just("IPv6"), 1 => Just("FQDN"), 1 => Just("")];
    (
        labels,
        address_type.prop_map(str::to_string),
        of(vec(slice_port, 0..3)),
        vec(endpoint(), 0..5),
    )
        .prop_flat_map(|(labels, address_type, ports, endpoints)| {
            meta(labels).prop_map(move |metadata| EndpointSlice {
                metadata,
                address_type: address_type.clone(),
                ports: ports.clone(),
                endpoints: endpoints.clone(),
            })
        })
}

fn origin() -> impl Strategy<Value = Origin> {
    prop_oneof![
        (s(&["a.yaml", "b/c.yaml"]), 0..3usize).prop_map(|(path, document)| Origin::File {
            path: PathBuf::from(path),
            document
        }),
        Just(Origin::Api),
    ]
}

fn object_set() -> impl Strategy<Value = ObjectSet> {
    (
        vec((origin(), service()), 0..4),
        vec((origin(), endpoint_slice()), 0..7),
    )
        .prop_map(|(services, slices)| ObjectSet {
            services: services
                .into_iter()
                .map(|(origin, object)| Sourced::new(origin, object))
                .collect(),
            endpoint_slices: slices
                .into_iter()
                .map(|(origin, object)| Sourced::new(origin, object))
                .collect(),
            ..ObjectSet::default()
        })
}

fn family(frontend: &Frontend) -> IpFamily {
    match frontend {
        Frontend::Address { addr } => IpFamily::of(addr.ip()),
        Frontend::NodePort { family, .. } => *family,
    }
}

fn service_key(service: &Service) -> (String, String) {
    (
        service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        service.metadata.name.clone().unwrap_or_default(),
    )
}

fn of_service<'a>(snapshot: &'a Snapshot, key: &(String, String)) -> Vec<&'a VirtualService> {
    snapshot
        .services
        .iter()
        .filter(|vs| vs.service.namespace == key.0 && vs.service.name == key.1)
        .map(|vs| &**vs)
        .collect()
}

/// Builds and checks every invariant of the result.
fn check(
    set: &ObjectSet,
    options: &BuildOptions,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, TestCaseError> {
    let (snapshot, problems) = Snapshot::build(set, options, previous);

    prop_assert_eq!(snapshot.version, previous.map_or(1, |p| p.version + 1));
    for pair in snapshot.services.windows(2) {
        prop_assert!(
            (pair[0].protocol, pair[0].frontend) < (pair[1].protocol, pair[1].frontend),
            "not sorted and unique: {} {} then {} {}",
            pair[0].protocol,
            pair[0].frontend,
            pair[1].protocol,
            pair[1].frontend
        );
    }
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for sourced in &set.services {
        *counts.entry(service_key(&sourced.object)).or_default() += 1;
    }
    for vs in &snapshot.services {
        prop_assert_eq!(snapshot.find(vs.protocol, &vs.frontend), Some(&**vs));
        match vs.frontend {
            Frontend::Address { addr } => prop_assert!(addr.port() > 0),
            Frontend::NodePort { port, .. } => prop_assert!(port > 0),
        }
        prop_assert!(
            counts.contains_key(&(vs.service.namespace.clone(), vs.service.name.clone())),
            "{} is not an input Service",
            vs.service
        );
        if let Some(p) = vs.persistence {
            prop_assert!((1..=86_400).contains(&p.as_secs()));
        }
        prop_assert!(vs.scheduler.mh_table_size >= 251 && vs.scheduler.mh_table_size <= 131_071);
        let want = family(&vs.frontend);
        for rs in &vs.real_servers {
            prop_assert!(
                rs.addr.port() > 0,
                "{} {}: real server {}",
                vs.protocol,
                vs.frontend,
                rs.addr
            );
            prop_assert_eq!(
                IpFamily::of(rs.addr.ip()),
                want,
                "{} {}: real server {}",
                vs.protocol,
                vs.frontend,
                rs.addr
            );
            prop_assert!(rs.configured_weight <= 65_535);
            match rs.state {
                EndpointState::Ready => prop_assert_eq!(rs.weight, rs.configured_weight),
                EndpointState::Terminating => {
                    prop_assert!(rs.weight == rs.configured_weight || rs.weight == 0)
                }
            }
        }
        for pair in vs.real_servers.windows(2) {
            prop_assert!(
                pair[0].addr < pair[1].addr,
                "real servers not sorted and unique"
            );
        }
        // The terminating fallback only when no ready endpoint.
        let any_ready = vs
            .real_servers
            .iter()
            .any(|rs| rs.state == EndpointState::Ready);
        let terminating_weighted = vs
            .real_servers
            .iter()
            .any(|rs| rs.state == EndpointState::Terminating && rs.weight > 0);
        prop_assert!(!(any_ready && terminating_weighted));
    }
    // A Service with a problem of its own serves what it served before, or nothing.
    for (key, count) in &counts {
        if *count != 1 {
            continue;
        }
        let named = problems.iter().any(|p| {
            p.object
                .as_ref()
                .is_some_and(|o| o.kind == "Service" && o.namespace == key.0 && o.name == key.1)
        });
        if named {
            let now = of_service(&snapshot, key);
            let before = previous.map(|p| of_service(p, key)).unwrap_or_default();
            prop_assert!(
                now.is_empty() || now == before,
                "refused {}/{} changed",
                key.0,
                key.1
            );
        }
    }
    for p in &problems {
        prop_assert!(!p.message.is_empty());
        prop_assert!(!p.to_string().is_empty());
    }
    // Pure: the same input gives the same output.
    let again = Snapshot::build(set, options, previous);
    prop_assert_eq!(&again.0, &snapshot);
    prop_assert_eq!(again.1, problems);
    Ok(snapshot)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn build_never_panics_and_keeps_invariants(
        first in object_set(),
        second in object_set(),
        default_scheduler in select(SchedulerKind::ALL.to_vec()),
    ) {
        let options = BuildOptions {
            default_scheduler,
            ..Default::default()
        };
        let v1 = check(&first, &options, None)?;
        let v2 = check(&second, &options, Some(&v1))?;
        // The first objects again, after the second: carry-over from a snapshot with carry-over.
        let v3 = check(&first, &options, Some(&v2))?;
        prop_assert_eq!(v3.version, 3);
    }
}

/// The objects as the API serves them: from the API, each with a resourceVersion that
/// changes exactly when its content does (as the API server guarantees).
fn as_from_api(mut set: ObjectSet) -> ObjectSet {
    fn version_of<T: serde::Serialize>(object: &T) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(object)
            .unwrap_or_default()
            .hash(&mut hasher);
        format!("{:x}", hasher.finish())
    }
    fn versioned<T>(sourced: &mut Sourced<T>)
    where
        T: Clone + serde::Serialize + k8s_openapi::Metadata<Ty = ObjectMeta>,
    {
        let mut object = (*sourced.object).clone();
        object.metadata_mut().resource_version = None;
        object.metadata_mut().resource_version = Some(version_of(&object));
        *sourced = Sourced::new(Origin::Api, object);
    }
    set.services.iter_mut().for_each(versioned);
    set.endpoint_slices.iter_mut().for_each(versioned);
    set
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A build reusing cached translations gives what a fresh build gives, snapshot and
    /// problems, over a sequence of changes (objects kept, changed, added, removed).
    #[test]
    fn cached_builds_equal_fresh_builds(
        first in object_set(),
        second in object_set(),
        default_scheduler in select(SchedulerKind::ALL.to_vec()),
    ) {
        let options = BuildOptions {
            default_scheduler,
            ..Default::default()
        };
        let (first, second) = (as_from_api(first), as_from_api(second));
        // The second set shares the first's objects too, so that some translations are reused.
        let mut mixed = second.clone();
        mixed.services.extend(first.services.iter().cloned());
        mixed.endpoint_slices.extend(first.endpoint_slices.iter().cloned());
        let mut cache = rvs_model::TranslationCache::default();
        let mut previous_fresh: Option<Snapshot> = None;
        let mut previous_cached: Option<Snapshot> = None;
        for set in [&first, &mixed, &second, &first] {
            let (fresh, fresh_problems) = Snapshot::build(set, &options, previous_fresh.as_ref());
            let (cached, cached_problems) =
                Snapshot::build_cached(set, &options, previous_cached.as_ref(), &mut cache);
            prop_assert_eq!(&cached, &fresh);
            prop_assert_eq!(&cached_problems, &fresh_problems);
            previous_fresh = Some(fresh);
            previous_cached = Some(cached);
        }
    }
}

//! `Snapshot::build` against Kubernetes manifests: frontends, endpoints, annotations, problems
//! and the carry-over of a refused Service's last good virtual services.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rvs_model::{
    BuildOptions, EndpointState, Frontend, FrontendKind, IpFamily, ObjectSet, Origin, Protocol,
    RealServer, SchedulerConfig, SchedulerFlags, SchedulerKind, Snapshot, Sourced, TrafficPolicy,
    VirtualService,
};
use serde::Deserialize;

/// The file name inline manifests pretend to come from.
const FILE: &str = "manifests.yaml";

/// Parses a multi-document YAML text the way a manifest source would, each document's origin
/// being `path` and its index.
fn objects_from(path: &Path, yaml: &str) -> ObjectSet {
    let mut set = ObjectSet::default();
    for (document, de) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_yaml::Value::deserialize(de).expect("test YAML parses");
        if value.is_null() {
            continue;
        }
        let origin = Origin::File {
            path: path.to_path_buf(),
            document,
        };
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => set.services.push(Sourced {
                origin,
                object: std::sync::Arc::new(
                    serde_yaml::from_value(value).expect("test Service deserializes"),
                ),
            }),
            Some("EndpointSlice") => set.endpoint_slices.push(Sourced {
                origin,
                object: std::sync::Arc::new(
                    serde_yaml::from_value(value).expect("test EndpointSlice deserializes"),
                ),
            }),
            other => panic!("test manifest of kind {other:?}"),
        }
    }
    set
}

fn objects(yaml: &str) -> ObjectSet {
    objects_from(Path::new(FILE), yaml)
}

fn fixture(name: &str) -> ObjectSet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/manifests")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    objects_from(Path::new(name), &text)
}

fn build_with(
    set: &ObjectSet,
    options: &BuildOptions,
    previous: Option<&Snapshot>,
) -> (Snapshot, Vec<String>) {
    let (snapshot, problems) = Snapshot::build(set, options, previous);
    (snapshot, problems.iter().map(ToString::to_string).collect())
}

fn build(yaml: &str) -> (Snapshot, Vec<String>) {
    build_with(&objects(yaml), &BuildOptions::default(), None)
}

/// `TCP 10.96.0.10:80 ClusterIp default/web:http [10.1.0.1:8080 w1/1, ...]`.
fn render(vs: &VirtualService) -> String {
    let servers: Vec<String> = vs.real_servers.iter().map(render_server).collect();
    format!(
        "{} {} {:?} {} [{}]",
        vs.protocol,
        vs.frontend,
        vs.kind,
        vs.service,
        servers.join(", ")
    )
}

/// `10.1.0.1:8080 w1/1` (weight/configured weight), ` terminating` when so.
fn render_server(rs: &RealServer) -> String {
    let state = match rs.state {
        EndpointState::Ready => "",
        EndpointState::Terminating => " terminating",
    };
    format!("{} w{}/{}{state}", rs.addr, rs.weight, rs.configured_weight)
}

fn table(snapshot: &Snapshot) -> Vec<String> {
    snapshot.services.iter().map(|vs| render(vs)).collect()
}

fn addr(s: &str) -> Frontend {
    Frontend::Address {
        addr: s.parse::<SocketAddr>().unwrap(),
    }
}

fn only(snapshot: &Snapshot) -> &VirtualService {
    assert_eq!(snapshot.services.len(), 1, "{:#?}", table(snapshot));
    &snapshot.services[0]
}

// ---------------------------------------------------------------------------------------------
// Frontends
// ---------------------------------------------------------------------------------------------

#[test]
fn cluster_ip_service_with_ready_endpoints() {
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.1.0.2]
    conditions: {ready: true}
    nodeName: node-b
    zone: zone-2
    targetRef: {kind: Pod, name: web-2}
  - addresses: [10.1.0.1]
  - addresses: [10.1.0.3]
    conditions: {ready: false}
  - addresses: []
"#,
    );
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(snapshot.version, 1);
    assert_eq!(
        table(&snapshot),
        ["TCP 10.96.0.10:80 ClusterIp default/web:http [10.1.0.1:8080 w1/1, 10.1.0.2:8080 w1/1]"]
    );
    let vs = only(&snapshot);
    assert_eq!(vs.scheduler, SchedulerConfig::default());
    assert_eq!(vs.scheduler.kind, SchedulerKind::Rr);
    assert_eq!(vs.persistence, None);
    assert!(!vs.proxy_protocol);
    assert!(!vs.uses_terminating_fallback());
    assert_eq!(
        vs.real_servers[1],
        RealServer {
            addr: "10.1.0.2:8080".parse().unwrap(),
            weight: 1,
            configured_weight: 1,
            state: EndpointState::Ready,
            node_name: Some("node-b".into()),
            zone: Some("zone-2".into()),
            target: Some("web-2".into()),
            is_local: false,
        }
    );
    assert_eq!(vs.real_servers[0].target, None);
    assert_eq!(vs.real_servers[0].node_name, None);
    assert_eq!(
        snapshot.find(Protocol::Tcp, &addr("10.96.0.10:80")),
        Some(vs)
    );
    assert_eq!(snapshot.find(Protocol::Udp, &addr("10.96.0.10:80")), None);
    assert_eq!(snapshot.find(Protocol::Tcp, &addr("10.96.0.10:81")), None);
}

#[test]
fn frontends_by_service_type() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "ClusterIP with externalIPs",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.10, "2001:db8::10"]
  ports: [{port: 80}]
"#,
            &[
                "TCP 10.96.0.10:80 ClusterIp default/web []",
                "TCP 192.0.2.10:80 ExternalIp default/web []",
                "TCP [2001:db8::10]:80 ExternalIp default/web []",
            ],
        ),
        (
            "type defaults to ClusterIP; clusterIPs preferred over clusterIP",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  clusterIPs: [10.96.0.11]
  ports: [{name: a, port: 80}, {name: b, port: 53, protocol: UDP}]
"#,
            &[
                "TCP 10.96.0.11:80 ClusterIp prod/web:a []",
                "UDP 10.96.0.11:53 ClusterIp prod/web:b []",
            ],
        ),
        (
            "NodePort",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{port: 80, nodePort: 30080}, {name: udp, port: 80, protocol: UDP, nodePort: 30080}]
"#,
            &[
                "TCP 10.96.0.10:80 ClusterIp default/web []",
                "TCP *:30080 NodePort default/web []",
                "UDP 10.96.0.10:80 ClusterIp default/web:udp []",
                "UDP *:30080 NodePort default/web:udp []",
            ],
        ),
        (
            "NodePort without a cluster IP: node ports only, IPv4",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  ports: [{port: 80, nodePort: 30080}]
"#,
            &["TCP *:30080 NodePort default/web []"],
        ),
        (
            "NodePort family from an IPv6 cluster IP",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIPs: ["fd00::10"]
  ports: [{port: 80, nodePort: 30080}]
"#,
            &[
                "TCP [fd00::10]:80 ClusterIp default/web []",
                "TCP [*]:30080 NodePort default/web []",
            ],
        ),
        (
            "LoadBalancer: ingress IPs (hostnames skipped) and node ports",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  ports: [{port: 443, nodePort: 30443}]
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.7}, {hostname: lb.example.com}, {ip: "2001:db8::7"}]
"#,
            &[
                "TCP 10.96.0.10:443 ClusterIp default/web []",
                "TCP 203.0.113.7:443 LoadBalancer default/web []",
                "TCP [2001:db8::7]:443 LoadBalancer default/web []",
                "TCP *:30443 NodePort default/web []",
            ],
        ),
        (
            "LoadBalancer without node ports (allocateLoadBalancerNodePorts: false)",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  clusterIP: 10.96.0.10
  ports: [{port: 443}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}
"#,
            &[
                "TCP 10.96.0.10:443 ClusterIp default/web []",
                "TCP 203.0.113.7:443 LoadBalancer default/web []",
            ],
        ),
        (
            "ClusterIP ignores nodePort and load balancer status",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}
"#,
            &["TCP 10.96.0.10:80 ClusterIp default/web []"],
        ),
        (
            "headless",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  clusterIPs: [None]
  ports: [{port: 80}]
"#,
            &[],
        ),
        (
            "headless written only as clusterIPs",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIPs: [None]
  ports: [{port: 80}]
"#,
            &[],
        ),
        (
            "headless without ports",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: None}
"#,
            &[],
        ),
        (
            "ExternalName",
            r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: ExternalName
  externalName: web.example.com
  ports: [{port: 80}]
"#,
            &[],
        ),
    ];
    for (name, yaml, expected) in cases {
        let (snapshot, problems) = build(yaml);
        assert_eq!(problems, Vec::<String>::new(), "{name}");
        assert_eq!(table(&snapshot), *expected, "{name}");
    }
}

#[test]
fn dual_stack_is_one_virtual_service_per_family() {
    let (snapshot, problems) = build_with(&fixture("web.yaml"), &BuildOptions::default(), None);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        table(&snapshot),
        [
            "TCP 10.96.0.10:80 ClusterIp shop/web:http \
             [10.1.0.1:8080 w3/3, 10.1.0.2:8080 w1/1, 10.1.0.3:8080 w0/1 terminating]",
            "TCP [fd00::10]:80 ClusterIp shop/web:http [[fd00:10::1]:8080 w3/3, [fd00:10::2]:8080 w0/0]",
            "TCP *:30080 NodePort shop/web:http \
             [10.1.0.1:8080 w3/3, 10.1.0.2:8080 w1/1, 10.1.0.3:8080 w0/1 terminating]",
            "TCP [*]:30080 NodePort shop/web:http [[fd00:10::1]:8080 w3/3, [fd00:10::2]:8080 w0/0]",
        ]
    );
    for vs in &snapshot.services {
        assert_eq!(
            vs.scheduler,
            SchedulerConfig {
                kind: SchedulerKind::Mh,
                flags: SchedulerFlags {
                    fallback: true,
                    port: true
                },
                mh_table_size: 65521,
            }
        );
    }
    let v4 = &snapshot.services[0];
    assert_eq!(v4.real_servers[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(v4.real_servers[0].zone.as_deref(), Some("zone-1"));
    assert_eq!(v4.real_servers[0].target.as_deref(), Some("web-1"));
    assert_eq!(
        snapshot.find(
            Protocol::Tcp,
            &Frontend::NodePort {
                family: IpFamily::V6,
                port: 30080
            }
        ),
        Some(&*snapshot.services[3])
    );
}

#[test]
fn endpoints_of_the_other_family_or_address_type_are_not_used() {
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ipFamilies: [IPv6, IPv4]
  clusterIPs: ["fd00::10", 10.96.0.10]
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - addresses: [10.1.0.1]
  - addresses: ["fd00:10::99"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints:
  - addresses: ["fd00:10::1"]
  - addresses: [10.1.0.99]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-fqdn, labels: {kubernetes.io/service-name: web}}
addressType: FQDN
endpoints:
  - addresses: [web.example.com]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-other-ns, namespace: other, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - addresses: [10.9.9.9]
"#,
    );
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        table(&snapshot),
        [
            "TCP 10.96.0.10:80 ClusterIp default/web [10.1.0.1:8080 w1/1]",
            "TCP [fd00::10]:80 ClusterIp default/web [[fd00:10::1]:8080 w1/1]",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

#[test]
fn slice_ports_are_matched_by_name_and_protocol() {
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  clusterIP: 10.96.0.53
  ports:
    - {name: dns, port: 53, protocol: UDP, targetPort: dns}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 9999}
    - {name: metrics, port: 9153, targetPort: 9153}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-a, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports:
  - {name: dns, port: 5353, protocol: UDP}
  - {name: dns, port: 7777, protocol: TCP}
  - {name: dns-tcp, port: 5354}
endpoints:
  - addresses: [10.2.0.1]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-b, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports:
  - {name: metrics-other, port: 9153}
endpoints:
  - addresses: [10.2.0.2]
"#,
    );
    assert_eq!(problems, Vec::<String>::new());
    // The slices list ports, so the Service's numeric targetPorts are not used; metrics has no
    // port of its name in any slice.
    assert_eq!(
        table(&snapshot),
        [
            "TCP 10.96.0.53:53 ClusterIp default/dns:dns-tcp [10.2.0.1:5354 w1/1]",
            "TCP 10.96.0.53:9153 ClusterIp default/dns:metrics []",
            "UDP 10.96.0.53:53 ClusterIp default/dns:dns [10.2.0.1:5353 w1/1]",
        ]
    );
}

#[test]
fn slice_without_ports_uses_the_numeric_target_port() {
    // (targetPort as YAML, the real server port or None for no endpoint)
    let cases: &[(&str, Option<u16>)] = &[
        ("", Some(80)),
        ("targetPort: 8080", Some(8080)),
        ("targetPort: \"8081\"", Some(8081)),
        ("targetPort: http", None),
    ];
    for (target_port, expected) in cases {
        for slice_ports in ["", "ports: []"] {
            let yaml = format!(
                r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: 10.96.0.10
  ports:
    - port: 80
      {target_port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
{slice_ports}
endpoints:
  - addresses: [10.1.0.1]
"#
            );
            let (snapshot, problems) = build(&yaml);
            assert_eq!(
                problems,
                Vec::<String>::new(),
                "{target_port:?} {slice_ports:?}"
            );
            let ports: Vec<u16> = only(&snapshot)
                .real_servers
                .iter()
                .map(|rs| rs.addr.port())
                .collect();
            assert_eq!(
                ports,
                expected.iter().copied().collect::<Vec<_>>(),
                "{target_port:?} {slice_ports:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoint conditions
// ---------------------------------------------------------------------------------------------

#[test]
fn endpoint_conditions() {
    // (what, endpoints as YAML, real servers)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "ready used; serving terminating quiesced; the rest excluded",
            r#"
  - addresses: [10.1.0.1]
    conditions: {ready: true, serving: true, terminating: false}
  - addresses: [10.1.0.2]
  - addresses: [10.1.0.3]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.1.0.4]
    conditions: {ready: false, serving: false, terminating: true}
  - addresses: [10.1.0.5]
    conditions: {ready: false, serving: false, terminating: false}
  - addresses: [10.1.0.6]
    conditions: {ready: false}
  - addresses: [10.1.0.7]
    conditions: {ready: false, terminating: true}
"#,
            &[
                "10.1.0.1:8080 w1/1",
                "10.1.0.2:8080 w1/1",
                "10.1.0.3:8080 w0/1 terminating",
            ],
        ),
        (
            "no ready endpoint: the terminating fallback schedules serving terminating ones",
            r#"
  - addresses: [10.1.0.3]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.1.0.4]
    conditions: {ready: false, serving: false, terminating: true}
  - addresses: [10.1.0.5]
    conditions: {ready: false, serving: true, terminating: true}
    targetRef: {kind: Pod, name: web-5}
  - addresses: [10.1.0.6]
    conditions: {ready: false}
"#,
            &[
                "10.1.0.3:8080 w1/1 terminating",
                "10.1.0.5:8080 w4/4 terminating",
            ],
        ),
        (
            "no ready and no serving endpoint: nothing",
            r#"
  - addresses: [10.1.0.4]
    conditions: {ready: false, serving: false, terminating: true}
  - addresses: [10.1.0.5]
    conditions: {ready: false, serving: true}
"#,
            &[],
        ),
        (
            "quiesced by weight, still ready",
            r#"
  - addresses: [10.1.0.1]
    targetRef: {kind: Pod, name: web-1}
  - addresses: [10.1.0.5]
    conditions: {ready: false, serving: true, terminating: true}
    targetRef: {kind: Pod, name: web-5}
"#,
            &["10.1.0.1:8080 w0/0", "10.1.0.5:8080 w0/4 terminating"],
        ),
    ];
    for (what, endpoints, expected) in cases {
        let yaml = format!(
            r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations: {{rvs.io/weights: "web-1=0,web-5=4"}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints:{endpoints}"#
        );
        let (snapshot, problems) = build(&yaml);
        assert_eq!(problems, Vec::<String>::new(), "{what}");
        let vs = only(&snapshot);
        let servers: Vec<String> = vs.real_servers.iter().map(render_server).collect();
        assert_eq!(servers, *expected, "{what}");
        let fallback = what.contains("fallback");
        assert_eq!(vs.uses_terminating_fallback(), fallback, "{what}");
    }
}

#[test]
fn ready_endpoint_wins_over_a_terminating_duplicate_in_another_slice() {
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - addresses: [10.1.0.1]
    conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - addresses: [10.1.0.1]
"#,
    );
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        table(&snapshot),
        ["TCP 10.96.0.10:80 ClusterIp default/web [10.1.0.1:8080 w1/1]"]
    );
}

// ---------------------------------------------------------------------------------------------
// Session affinity and annotations
// ---------------------------------------------------------------------------------------------

fn service_with(annotations: &str, spec: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations: {{{annotations}}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{port: 80}}]
  {spec}
"#
    )
}

#[test]
fn session_affinity() {
    // (sessionAffinity, sessionAffinityConfig, persistence in seconds)
    let cases: &[(&str, &str, Option<u64>)] = &[
        ("", "", None),
        ("None", "", None),
        ("ClientIP", "", Some(10_800)),
        ("ClientIP", "{clientIP: {}}", Some(10_800)),
        ("ClientIP", "{clientIP: {timeoutSeconds: 60}}", Some(60)),
        ("ClientIP", "{clientIP: {timeoutSeconds: 1}}", Some(1)),
        (
            "ClientIP",
            "{clientIP: {timeoutSeconds: 86400}}",
            Some(86_400),
        ),
        // A timeout without ClientIP affinity means nothing.
        ("None", "{clientIP: {timeoutSeconds: 0}}", None),
    ];
    for (affinity, config, expected) in cases {
        let mut spec = String::new();
        if !affinity.is_empty() {
            spec += &format!("sessionAffinity: {affinity}\n  ");
        }
        if !config.is_empty() {
            spec += &format!("sessionAffinityConfig: {config}");
        }
        let (snapshot, problems) = build(&service_with("", &spec));
        assert_eq!(problems, Vec::<String>::new(), "{affinity} {config}");
        assert_eq!(
            only(&snapshot).persistence,
            expected.map(Duration::from_secs),
            "{affinity} {config}"
        );
    }
}

#[test]
fn scheduler_annotations() {
    let options = BuildOptions::default();
    let wlc = BuildOptions {
        default_scheduler: SchedulerKind::Wlc,
        ..Default::default()
    };
    let mh = BuildOptions {
        default_scheduler: SchedulerKind::Mh,
        ..Default::default()
    };
    let config = |kind, fallback, port, mh_table_size| SchedulerConfig {
        kind,
        flags: SchedulerFlags { fallback, port },
        mh_table_size,
    };
    let cases: Vec<(&str, &BuildOptions, SchedulerConfig)> = vec![
        ("", &options, config(SchedulerKind::Rr, false, false, 4093)),
        ("", &wlc, config(SchedulerKind::Wlc, false, false, 4093)),
        ("rvs.io/scheduler: rr", &wlc, config(SchedulerKind::Rr, false, false, 4093)),
        ("rvs.io/scheduler: ' WRR '", &options, config(SchedulerKind::Wrr, false, false, 4093)),
        ("rvs.io/scheduler: sh, rvs.io/scheduler-flags: sh-fallback", &options, config(SchedulerKind::Sh, true, false, 4093)),
        ("rvs.io/scheduler: sh, rvs.io/scheduler-flags: 'sh-port, sh-fallback'", &options, config(SchedulerKind::Sh, true, true, 4093)),
        ("rvs.io/scheduler-flags: mh-port", &mh, config(SchedulerKind::Mh, false, true, 4093)),
        ("rvs.io/scheduler: mh, rvs.io/mh-table-size: '251'", &options, config(SchedulerKind::Mh, false, false, 251)),
        ("rvs.io/scheduler: mh, rvs.io/mh-table-size: '131071'", &options, config(SchedulerKind::Mh, false, false, 131_071)),
        ("rvs.io/scheduler: mh, rvs.io/scheduler-flags: mh-fallback, rvs.io/mh-table-size: '65521'", &options, config(SchedulerKind::Mh, true, false, 65_521)),
        ("rvs.io/scheduler: rr, rvs.io/scheduler-flags: ''", &options, config(SchedulerKind::Rr, false, false, 4093)),
        // Other annotations are none of rvs's business.
        ("example.com/scheduler: bogus, rvs.io/unknown: x", &options, config(SchedulerKind::Rr, false, false, 4093)),
    ];
    for (annotations, options, expected) in cases {
        let (snapshot, problems) =
            build_with(&objects(&service_with(annotations, "")), options, None);
        assert_eq!(problems, Vec::<String>::new(), "{annotations}");
        assert_eq!(only(&snapshot).scheduler, expected, "{annotations}");
    }
    // All 14 IPVS schedulers by name.
    assert_eq!(SchedulerKind::ALL.len(), 14);
    for kind in SchedulerKind::ALL {
        let (snapshot, problems) = build(&service_with(
            &format!("rvs.io/scheduler: {}", kind.name()),
            "",
        ));
        assert_eq!(problems, Vec::<String>::new(), "{kind}");
        assert_eq!(only(&snapshot).scheduler.kind, kind);
    }
}

#[test]
fn proxy_protocol_annotation() {
    for (value, expected) in [
        ("v2", true),
        ("V2", true),
        (" v2 ", true),
        ("off", false),
        ("", false),
    ] {
        let (snapshot, problems) = build(&service_with(
            &format!("rvs.io/proxy-protocol: '{value}'"),
            "",
        ));
        assert_eq!(problems, Vec::<String>::new(), "{value:?}");
        assert_eq!(only(&snapshot).proxy_protocol, expected, "{value:?}");
    }
    let (snapshot, _) = build(&service_with("", ""));
    assert!(!only(&snapshot).proxy_protocol);
}

#[test]
fn weights_annotation_by_pod_name_or_ip() {
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    rvs.io/weights: " web-1 = 5 , 10.1.0.2=0,10.1.0.3=65535,, web-4=2, 10.1.0.4=9"
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
  - addresses: [10.1.0.1]
    targetRef: {kind: Pod, name: web-1}
  - addresses: [10.1.0.2]
    targetRef: {kind: Pod, name: web-2}
  - addresses: [10.1.0.3]
  - addresses: [10.1.0.4]
    targetRef: {kind: Pod, name: web-4}
  - addresses: [10.1.0.5]
"#,
    );
    assert_eq!(problems, Vec::<String>::new());
    // The pod name wins over the IP.
    assert_eq!(
        table(&snapshot),
        ["TCP 10.96.0.10:80 ClusterIp default/web \
          [10.1.0.1:8080 w5/5, 10.1.0.2:8080 w0/0, 10.1.0.3:8080 w65535/65535, 10.1.0.4:8080 w2/2, 10.1.0.5:8080 w1/1]"]
    );
}

// ---------------------------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------------------------

#[test]
fn problems_refuse_the_service() {
    let service = |metadata: &str, spec: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: prod{metadata}}}\nspec: {{{spec}}}\n"
        )
    };
    let prefix = "manifests.yaml: Service prod/web: ";
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "bad clusterIP",
            service("", "clusterIP: 10.96.0.300, ports: [{port: 80}]"),
            vec![format!(r#"{prefix}spec.clusterIP: "10.96.0.300" is not an IP address"#)],
        ),
        (
            "bad clusterIPs entry",
            service("", "clusterIPs: [10.96.0.10, 'fd00::zz'], ports: [{port: 80}]"),
            vec![format!(r#"{prefix}spec.clusterIPs[1]: "fd00::zz" is not an IP address"#)],
        ),
        (
            "clusterIP differs from clusterIPs[0]",
            service("", "clusterIP: 10.96.0.10, clusterIPs: [10.96.0.11], ports: [{port: 80}]"),
            vec![format!("{prefix}spec.clusterIP: differs from spec.clusterIPs[0]")],
        ),
        (
            "no cluster IP",
            service("", "ports: [{port: 80}]"),
            vec![format!("{prefix}spec.clusterIP: not set: rvs does not allocate cluster IPs, give one")],
        ),
        (
            "bad externalIP",
            service("", "clusterIP: 10.96.0.10, externalIPs: [example.com], ports: [{port: 80}]"),
            vec![format!(r#"{prefix}spec.externalIPs[0]: "example.com" is not an IP address"#)],
        ),
        (
            "bad load balancer ingress IP",
            service("", "type: LoadBalancer, clusterIP: 10.96.0.10, ports: [{port: 80}]")
                + "status: {loadBalancer: {ingress: [{ip: 203.0.113.7}, {ip: 203.0.113}]}}\n",
            vec![format!(r#"{prefix}status.loadBalancer.ingress[1].ip: "203.0.113" is not an IP address"#)],
        ),
        (
            "bad port",
            service("", "clusterIP: 10.96.0.10, ports: [{name: a, port: 80}, {name: b, port: 70000}]"),
            vec![format!("{prefix}spec.ports[1].port: 70000 is not a port number (1-65535)")],
        ),
        (
            "port 0",
            service("", "clusterIP: 10.96.0.10, ports: [{port: 0}]"),
            vec![format!("{prefix}spec.ports[0].port: 0 is not a port number (1-65535)")],
        ),
        (
            "negative port",
            service("", "clusterIP: 10.96.0.10, ports: [{port: -1}]"),
            vec![format!("{prefix}spec.ports[0].port: -1 is not a port number (1-65535)")],
        ),
        (
            "bad nodePort",
            service("", "type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 65536}]"),
            vec![format!("{prefix}spec.ports[0].nodePort: 65536 is not a port number (1-65535)")],
        ),
        (
            "bad targetPort",
            service("", "clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 0}]"),
            vec![format!("{prefix}spec.ports[0].targetPort: 0 is not a port number (1-65535)")],
        ),
        (
            "no ports",
            service("", "clusterIP: 10.96.0.10"),
            vec![format!("{prefix}spec.ports: no ports")],
        ),
        (
            "SCTP",
            service("", "clusterIP: 10.96.0.10, ports: [{port: 80}, {port: 9999, protocol: SCTP}]"),
            vec![format!(r#"{prefix}spec.ports[1].protocol: "SCTP" is not supported (TCP or UDP)"#)],
        ),
        (
            "two ports on one frontend",
            service("", "clusterIP: 10.96.0.10, ports: [{name: a, port: 80}, {name: b, port: 80, targetPort: 81}]"),
            vec![format!("{prefix}spec.ports: TCP 10.96.0.10:80 appears twice")],
        ),
        (
            "unknown type",
            service("", "type: Ingress, clusterIP: 10.96.0.10, ports: [{port: 80}]"),
            vec![format!(r#"{prefix}spec.type: "Ingress" is not a Service type"#)],
        ),
        (
            "bad ipFamilies",
            service("", "clusterIP: 10.96.0.10, ipFamilies: [IPv5], ports: [{port: 80}]"),
            vec![format!(r#"{prefix}spec.ipFamilies[0]: "IPv5" is not IPv4 or IPv6"#)],
        ),
        (
            "unknown scheduler",
            service(", annotations: {rvs.io/scheduler: fancy}", "clusterIP: 10.96.0.10, ports: [{port: 80}]"),
            vec![format!(
                r#"{prefix}metadata.annotations[rvs.io/scheduler]: "fancy" is not an IPVS scheduler (one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos)"#
            )],
        ),
        (
            "flag for the wrong scheduler",
            service(
                ", annotations: {rvs.io/scheduler: sh, rvs.io/scheduler-flags: 'sh-port,mh-port'}",
                "clusterIP: 10.96.0.10, ports: [{port: 80}]",
            ),
            vec![format!("{prefix}metadata.annotations[rvs.io/scheduler-flags]: flag mh-port does not apply to scheduler sh")],
        ),
        (
            "flag for the default scheduler",
            service(", annotations: {rvs.io/scheduler-flags: sh-fallback}", "clusterIP: 10.96.0.10, ports: [{port: 80}]"),
            vec![format!("{prefix}metadata.annotations[rvs.io/scheduler-flags]: flag sh-fallback does not apply to scheduler rr")],
        ),
        (
            "unknown flag",
            service(", annotations: {rvs.io/scheduler: sh, rvs.io/scheduler-flags: sh-magic}", "clusterIP: 10.96.0.10, ports: [{port: 80}]"),
            vec![format!(
                r#"{prefix}metadata.annotations[rvs.io/scheduler-flags]: "sh-magic" is not a scheduler flag (one of sh-fallback, sh-port, mh-fallback, mh-port)"#
            )],
        ),
        (
            "non-prime mh table size",
            service(", annotations: {rvs.io/scheduler: mh, rvs.io/mh-table-size: '4000'}", "clusterIP: 10.96.0.10, ports: [{port: 80}]"),
            vec![format!(r#"{prefix}metadata.annotations[rvs.io/mh-table-size]: "4000" is not a prime between 251 and 131071"#)],
        ),
        (
            "prime mh table size below the range",
            service(", annotations: {rvs.io/mh-table-size: '241'}", "clusterIP: 10.96.0.10, ports: [{port: 80}]"),
            vec![format!(r#"{prefix}metadata.annotations[rvs.io/mh-table-size]: "241" is not a prime between 251 and 131071"#)],
        ),
        (
            "prime mh table size above the range",
            service(", annotations: {rvs.io/mh-table-size: '131101'}", "clusterIP: 10.96.0.10, ports: [{port: 80}]"),
            vec![format!(r#"{prefix}metadata.annotations[rvs.io/mh-table-size]: "131101" is not a prime between 251 and 131071"#)],
        ),
        (
            "bad proxy-protocol value",
            service(", annotations: {rvs.io/proxy-protocol: v1}", "clusterIP: 10.96.0.10, ports: [{port: 80}]"),
            vec![format!(r#"{prefix}metadata.annotations[rvs.io/proxy-protocol]: "v1" is not supported (use "v2")"#)],
        ),
        (
            "bad weights",
            service(", annotations: {rvs.io/weights: 'web-1=70000, web-2, =3, web-3=-1'}", "clusterIP: 10.96.0.10, ports: [{port: 80}]"),
            vec![
                format!(r#"{prefix}metadata.annotations[rvs.io/weights]: "=3" is not POD-OR-IP=WEIGHT with a weight from 0 to 65535"#),
                format!(r#"{prefix}metadata.annotations[rvs.io/weights]: "web-1=70000" is not POD-OR-IP=WEIGHT with a weight from 0 to 65535"#),
                format!(r#"{prefix}metadata.annotations[rvs.io/weights]: "web-2" is not POD-OR-IP=WEIGHT with a weight from 0 to 65535"#),
                format!(r#"{prefix}metadata.annotations[rvs.io/weights]: "web-3=-1" is not POD-OR-IP=WEIGHT with a weight from 0 to 65535"#),
            ],
        ),
        (
            "affinity timeout too long",
            service("", "clusterIP: 10.96.0.10, ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}"),
            vec![format!("{prefix}spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is not between 1 and 86400")],
        ),
        (
            "affinity timeout zero",
            service("", "clusterIP: 10.96.0.10, ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}"),
            vec![format!("{prefix}spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is not between 1 and 86400")],
        ),
        (
            "unknown affinity",
            service("", "clusterIP: 10.96.0.10, ports: [{port: 80}], sessionAffinity: Cookie"),
            vec![format!(r#"{prefix}spec.sessionAffinity: "Cookie" is not None or ClientIP"#)],
        ),
        (
            "several problems at once",
            service(
                ", annotations: {rvs.io/scheduler: fancy, rvs.io/proxy-protocol: yes}",
                "clusterIP: 10.96.0.10, ports: [{port: 80, protocol: SCTP}]",
            ),
            vec![
                format!(
                    r#"{prefix}metadata.annotations[rvs.io/proxy-protocol]: "yes" is not supported (use "v2")"#
                ),
                format!(
                    r#"{prefix}metadata.annotations[rvs.io/scheduler]: "fancy" is not an IPVS scheduler (one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos)"#
                ),
                format!(r#"{prefix}spec.ports[0].protocol: "SCTP" is not supported (TCP or UDP)"#),
            ],
        ),
    ];
    for (what, yaml, expected) in cases {
        let (snapshot, problems) = build(&yaml);
        assert_eq!(problems, expected, "{what}");
        assert_eq!(
            table(&snapshot),
            Vec::<String>::new(),
            "{what}: the Service is refused"
        );
    }
}

#[test]
fn problem_names_the_document() {
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata: {name: good}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: bad}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80, protocol: SCTP}]}
"#,
    );
    assert_eq!(
        problems,
        [
            r#"manifests.yaml (document 2): Service default/bad: spec.ports[0].protocol: "SCTP" is not supported (TCP or UDP)"#
        ]
    );
    assert_eq!(
        table(&snapshot),
        ["TCP 10.96.0.10:80 ClusterIp default/good []"]
    );
}

#[test]
fn slice_without_service_name_label() {
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, labels: {app: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-def, namespace: prod}
addressType: IPv4
endpoints: [{addresses: [10.1.0.2]}]
"#,
    );
    assert_eq!(
        problems,
        [
            "manifests.yaml (document 2): EndpointSlice default/web-abc: \
             metadata.labels[kubernetes.io/service-name]: missing: the slice belongs to no Service",
            "manifests.yaml (document 3): EndpointSlice prod/web-def: \
             metadata.labels[kubernetes.io/service-name]: missing: the slice belongs to no Service",
        ]
    );
    assert_eq!(
        table(&snapshot),
        ["TCP 10.96.0.10:80 ClusterIp default/web []"]
    );
}

#[test]
fn bad_endpoint_ip_is_a_problem_of_the_slice_and_skipped() {
    // Two ports and two frontends meet the bad endpoint four times: it is reported once.
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, nodePort: 30080}, {name: https, port: 443, nodePort: 30443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: prod, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: https, port: 8443}]
endpoints:
  - addresses: [10.1.0.1]
  - addresses: [10.1.0.999]
  - addresses: [10.1.0.3]
"#,
    );
    assert_eq!(
        problems,
        [
            r#"manifests.yaml (document 2): EndpointSlice prod/web-abc: endpoints[1].addresses[0]: "10.1.0.999" is not an IP address; endpoint ignored"#
        ]
    );
    assert_eq!(
        table(&snapshot),
        [
            "TCP 10.96.0.10:80 ClusterIp prod/web:http [10.1.0.1:8080 w1/1, 10.1.0.3:8080 w1/1]",
            "TCP 10.96.0.10:443 ClusterIp prod/web:https [10.1.0.1:8443 w1/1, 10.1.0.3:8443 w1/1]",
            "TCP *:30080 NodePort prod/web:http [10.1.0.1:8080 w1/1, 10.1.0.3:8080 w1/1]",
            "TCP *:30443 NodePort prod/web:https [10.1.0.1:8443 w1/1, 10.1.0.3:8443 w1/1]",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Contested frontends
// ---------------------------------------------------------------------------------------------

const TWO_SERVICES_ON_ONE_VIP: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: team-a, creationTimestamp: "2024-05-01T00:00:00Z"}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: team-b, creationTimestamp: "2023-05-01T00:00:00Z"}
spec: {clusterIP: 10.96.0.10, externalIPs: [192.0.2.1], ports: [{port: 80}, {name: dns, port: 53, protocol: UDP}]}
"#;

#[test]
fn duplicate_vip_refuses_the_later_service() {
    // b is older: a, although first in the file, is refused.
    let (snapshot, problems) = build(TWO_SERVICES_ON_ONE_VIP);
    assert_eq!(
        problems,
        ["manifests.yaml: Service team-a/a: TCP 10.96.0.10:80 is already used by Service team-b/b; this Service is refused"]
    );
    assert_eq!(
        table(&snapshot),
        [
            "TCP 10.96.0.10:80 ClusterIp team-b/b []",
            "TCP 192.0.2.1:80 ExternalIp team-b/b []",
            "UDP 10.96.0.10:53 ClusterIp team-b/b:dns []",
            "UDP 192.0.2.1:53 ExternalIp team-b/b:dns []",
        ]
    );

    // Without creation timestamps the origin decides: the first document wins, and the
    // refused Service loses all its frontends, not only the contested one.
    let (snapshot, problems) =
        build(&TWO_SERVICES_ON_ONE_VIP.replace("creationTimestamp", "x-removed"));
    assert_eq!(
        problems,
        ["manifests.yaml (document 2): Service team-b/b: TCP 10.96.0.10:80 is already used by Service team-a/a; this Service is refused"]
    );
    assert_eq!(
        table(&snapshot),
        ["TCP 10.96.0.10:80 ClusterIp team-a/a []"]
    );
}

#[test]
fn same_address_on_another_protocol_or_port_is_no_conflict() {
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata: {name: tcp}
spec: {clusterIP: 10.96.0.10, ports: [{port: 53}]}
---
apiVersion: v1
kind: Service
metadata: {name: udp}
spec: {clusterIP: 10.96.0.10, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: other-port}
spec: {clusterIP: 10.96.0.10, ports: [{port: 54}]}
"#,
    );
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(
        table(&snapshot),
        [
            "TCP 10.96.0.10:53 ClusterIp default/tcp []",
            "TCP 10.96.0.10:54 ClusterIp default/other-port []",
            "UDP 10.96.0.10:53 ClusterIp default/udp []",
        ]
    );
}

#[test]
fn duplicate_node_port_refuses_the_later_service() {
    let (snapshot, problems) = build(
        r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {type: NodePort, clusterIP: 10.96.0.11, ports: [{port: 80, nodePort: 30080}]}
"#,
    );
    assert_eq!(
        problems,
        ["manifests.yaml (document 2): Service default/b: TCP *:30080 is already used by Service default/a; this Service is refused"]
    );
    assert_eq!(
        table(&snapshot),
        [
            "TCP 10.96.0.10:80 ClusterIp default/a []",
            "TCP *:30080 NodePort default/a []"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Snapshots over time
// ---------------------------------------------------------------------------------------------

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}]}
"#;

const WEB_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}]
"#;

const API: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
"#;

fn docs(parts: &[&str]) -> String {
    parts.join("---\n")
}

#[test]
fn refused_service_keeps_its_previous_virtual_services() {
    let options = BuildOptions::default();
    let (v1, problems) = build_with(&objects(&docs(&[WEB, WEB_SLICE, API])), &options, None);
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(v1.version, 1);
    assert_eq!(
        table(&v1),
        [
            "TCP 10.96.0.10:80 ClusterIp default/web [10.1.0.1:8080 w1/1]",
            "TCP 10.96.0.20:80 ClusterIp default/api []"
        ]
    );

    // web goes bad (and its endpoints change); api is deleted.
    let bad_web = WEB.replace(
        "{port: 80, targetPort: 8080}",
        "{port: 80, targetPort: 8080, protocol: SCTP}",
    );
    let new_slice = WEB_SLICE.replace("10.1.0.1", "10.1.0.2");
    let (v2, problems) = build_with(
        &objects(&docs(&[&bad_web, &new_slice])),
        &options,
        Some(&v1),
    );
    assert_eq!(
        problems,
        [
            r#"manifests.yaml: Service default/web: spec.ports[0].protocol: "SCTP" is not supported (TCP or UDP)"#
        ]
    );
    assert_eq!(v2.version, 2);
    assert_eq!(
        v2.services,
        v1.services[..1],
        "web's last good virtual service, old endpoints and all"
    );

    // Still bad: still kept, from the snapshot that kept it.
    let (v3, problems) = build_with(
        &objects(&docs(&[&bad_web, &new_slice])),
        &options,
        Some(&v2),
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(v3.version, 3);
    assert_eq!(v3.services, v1.services[..1]);

    // Fixed: the new endpoints.
    let (v4, problems) = build_with(&objects(&docs(&[WEB, &new_slice])), &options, Some(&v3));
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(v4.version, 4);
    assert_eq!(
        table(&v4),
        ["TCP 10.96.0.10:80 ClusterIp default/web [10.1.0.2:8080 w1/1]"]
    );

    // Unchanged input still makes a new version.
    let (v5, _) = build_with(&objects(&docs(&[WEB, &new_slice])), &options, Some(&v4));
    assert_eq!(v5.version, 5);
    assert_eq!(v5.services, v4.services);
}

#[test]
fn refused_service_without_a_previous_version_serves_nothing() {
    let options = BuildOptions::default();
    let (v1, _) = build_with(&objects(API), &options, None);
    let bad_web = WEB.replace("10.96.0.10", "10.96.0.256");
    let (v2, problems) = build_with(&objects(&docs(&[API, &bad_web])), &options, Some(&v1));
    assert_eq!(
        problems,
        [
            r#"manifests.yaml (document 2): Service default/web: spec.clusterIP: "10.96.0.256" is not an IP address"#
        ]
    );
    assert_eq!(table(&v2), ["TCP 10.96.0.20:80 ClusterIp default/api []"]);
    // Same name in another namespace is another Service.
    let (v1, _) = build_with(&objects(WEB), &options, None);
    let other = bad_web.replace("{name: web}", "{name: web, namespace: other}");
    let (v2, problems) = build_with(&objects(&other), &options, Some(&v1));
    assert_eq!(problems.len(), 1);
    assert_eq!(table(&v2), Vec::<String>::new());
}

#[test]
fn kept_service_keeps_its_frontend_against_a_newcomer() {
    // web was served; it goes bad (its last good version is kept), and meanwhile a Service
    // created earlier but new to rvs claims its address: the address stays with web.
    let options = BuildOptions::default();
    let (v1, _) = build_with(&objects(WEB), &options, None);
    let bad_web = WEB.replace("ports: [", "type: Bogus, ports: [").replace(
        "{name: web}",
        r#"{name: web, creationTimestamp: "2024-01-01T00:00:00Z"}"#,
    );
    let older = r#"
apiVersion: v1
kind: Service
metadata: {name: older, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
"#;
    let (v2, problems) = build_with(&objects(&docs(&[&bad_web, older])), &options, Some(&v1));
    assert_eq!(
        problems,
        [
            r#"manifests.yaml: Service default/web: spec.type: "Bogus" is not a Service type"#,
            r#"manifests.yaml (document 2): Service default/older: TCP 10.96.0.10:80 is already used by Service default/web; this Service is refused"#,
        ]
    );
    assert_eq!(table(&v2), table(&v1));
}

#[test]
fn slice_arriving_before_its_service() {
    let options = BuildOptions::default();
    let (v1, problems) = build_with(&objects(WEB_SLICE), &options, None);
    assert_eq!(
        problems,
        Vec::<String>::new(),
        "a slice waiting for its Service is no problem"
    );
    assert_eq!(v1.services, Vec::new());
    assert_eq!(v1.version, 1);
    let (v2, problems) = build_with(&objects(&docs(&[WEB_SLICE, WEB])), &options, Some(&v1));
    assert_eq!(problems, Vec::<String>::new());
    assert_eq!(v2.version, 2);
    assert_eq!(
        table(&v2),
        ["TCP 10.96.0.10:80 ClusterIp default/web [10.1.0.1:8080 w1/1]"]
    );
}

#[test]
fn build_is_deterministic_and_independent_of_input_order() {
    let set = fixture("web.yaml");
    let (a, pa) = Snapshot::build(&set, &BuildOptions::default(), None);
    let mut reversed = set.clone();
    reversed.services.reverse();
    reversed.endpoint_slices.reverse();
    let (b, pb) = Snapshot::build(&reversed, &BuildOptions::default(), None);
    assert_eq!(a, b);
    assert_eq!(pa, pb);
    assert_eq!(a.services.len(), 4);
}

#[test]
fn origin_display() {
    let file = |document| Origin::File {
        path: PathBuf::from("dir/a.yaml"),
        document,
    };
    assert_eq!(file(0).to_string(), "dir/a.yaml");
    assert_eq!(file(2).to_string(), "dir/a.yaml (document 3)");
    assert_eq!(Origin::Api.to_string(), "api");
}

#[test]
fn slice_port_out_of_range_or_unset_gives_no_endpoints() {
    for port in ["port: 0", "port: -1", "port: 65536", "port: 2147483647", ""] {
        let (snapshot, problems) = build(&format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, {port}}}]
endpoints: [{{addresses: [10.1.0.1]}}]
"#
        ));
        assert_eq!(problems, Vec::<String>::new(), "{port}");
        assert_eq!(
            table(&snapshot),
            ["TCP 10.96.0.10:80 ClusterIp default/web:http []"],
            "{port}"
        );
    }
}

const POLICY_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [192.0.2.0/24, 198.51.100.7/32]
  ports: [{name: http, port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.9}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.1.0.1]
    nodeName: node-a
    zone: zone-1
    hints: {forZones: [{name: zone-1}], forNodes: [{name: node-a}]}
  - addresses: [10.1.0.2]
    nodeName: node-b
    zone: zone-2
    hints: {forZones: [{name: zone-2}], forNodes: [{name: node-b}]}
  - addresses: [10.1.0.3]
    nodeName: node-c
    zone: zone-2
    hints: {forZones: [{name: zone-2}], forNodes: [{name: node-c}]}
"#;

fn options_on(node: &str, zone: &str) -> BuildOptions {
    BuildOptions {
        node_name: Some(node.into()),
        node_zone: Some(zone.into()),
        ..Default::default()
    }
}

#[test]
fn traffic_policies_source_ranges_and_health_check_port() {
    let objects = objects(POLICY_SERVICE);
    let (snapshot, problems) = Snapshot::build(&objects, &options_on("node-b", "zone-2"), None);
    assert!(problems.is_empty(), "{problems:?}");
    let by_kind = |kind: FrontendKind| snapshot.services.iter().find(|v| v.kind == kind).unwrap();
    let lb = by_kind(FrontendKind::LoadBalancer);
    assert_eq!(lb.traffic_policy, TrafficPolicy::Local);
    assert_eq!(
        lb.source_ranges,
        vec![
            "192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(),
            "198.51.100.7/32".parse().unwrap()
        ]
    );
    assert_eq!(lb.health_check_node_port, Some(32000));
    let node_port = by_kind(FrontendKind::NodePort);
    assert!(
        node_port.source_ranges.is_empty(),
        "source ranges guard LoadBalancer IPs only"
    );
    assert_eq!(node_port.health_check_node_port, None);
    // Local policies ignore topology hints: every endpoint is listed, the local one marked.
    let local: Vec<String> = lb
        .real_servers
        .iter()
        .filter(|r| r.is_local)
        .map(|r| r.addr.to_string())
        .collect();
    assert_eq!(local, vec!["10.1.0.2:8080"]);
    assert_eq!(lb.real_servers.len(), 3);
    let serving_external: Vec<String> = lb.serving(true).map(|r| r.addr.to_string()).collect();
    assert_eq!(serving_external, vec!["10.1.0.2:8080"]);
    assert_eq!(
        lb.serving(false).count(),
        3,
        "cluster-internal sources reach every endpoint"
    );
    let cluster_ip = by_kind(FrontendKind::ClusterIp);
    assert_eq!(cluster_ip.traffic_policy, TrafficPolicy::Local);
    assert_eq!(
        cluster_ip.serving(false).count(),
        1,
        "internalTrafficPolicy Local"
    );
}

#[test]
fn topology_hints_pick_this_node_then_this_zone_else_everything() {
    let cluster = POLICY_SERVICE
        .replace("  externalTrafficPolicy: Local\n", "")
        .replace("  internalTrafficPolicy: Local\n", "");
    let cluster_objects = objects(&cluster);
    let servers_on = |node: &str, zone: &str| -> Vec<String> {
        let (snapshot, problems) = Snapshot::build(&cluster_objects, &options_on(node, zone), None);
        assert!(problems.is_empty(), "{problems:?}");
        let vs = snapshot
            .services
            .iter()
            .find(|v| v.kind == FrontendKind::ClusterIp)
            .unwrap();
        vs.real_servers
            .iter()
            .map(|r| r.addr.ip().to_string())
            .collect()
    };
    assert_eq!(
        servers_on("node-b", "zone-2"),
        vec!["10.1.0.2"],
        "forNodes first"
    );
    assert_eq!(
        servers_on("node-x", "zone-2"),
        vec!["10.1.0.2", "10.1.0.3"],
        "then forZones"
    );
    assert_eq!(
        servers_on("node-x", "zone-9"),
        vec!["10.1.0.1", "10.1.0.2", "10.1.0.3"],
        "no match: all"
    );
    // One endpoint without hints: hints are not trusted at all.
    let partial = cluster.replace(
        "    hints: {forZones: [{name: zone-2}], forNodes: [{name: node-c}]}\n",
        "",
    );
    let (snapshot, _) = Snapshot::build(&objects(&partial), &options_on("node-b", "zone-2"), None);
    let vs = snapshot
        .services
        .iter()
        .find(|v| v.kind == FrontendKind::ClusterIp)
        .unwrap();
    assert_eq!(vs.real_servers.len(), 3);
}

#[test]
fn bad_policies_and_ranges_are_problems() {
    let bad = POLICY_SERVICE
        .replace(
            "externalTrafficPolicy: Local",
            "externalTrafficPolicy: Nearby",
        )
        .replace("198.51.100.7/32", "198.51.100.300/32");
    let (_, problems) = build(&bad);
    assert!(
        problems.iter().any(|p| p.ends_with(
            "Service shop/web: spec.externalTrafficPolicy: \"Nearby\" is not Cluster or Local"
        )),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.ends_with("Service shop/web: spec.loadBalancerSourceRanges[1]: \"198.51.100.300/32\" is not a CIDR")), "{problems:?}");
}

#[test]
fn names_must_be_dns_labels_and_port_names_short() {
    let long = "a".repeat(64);
    let yaml = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {long}, namespace: Shop}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: a-very-long-port-name, port: 80}}]
"#
    );
    let (snapshot, problems) = build(&yaml);
    assert!(snapshot.services.is_empty(), "refused");
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!("metadata.name: \"{long}\" is not a DNS label"))),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("metadata.namespace: \"Shop\" is not a DNS label")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("spec.ports[0].name: \"a-very-long-port-name\" is not a port name")), "{problems:?}");
}

#[test]
fn a_contested_address_stays_with_the_service_already_serving_it() {
    let incumbent = r#"
apiVersion: v1
kind: Service
metadata: {name: zeta, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  ports: [{port: 80}]
"#;
    let (first, problems) = build(incumbent);
    assert!(problems.is_empty());
    // A newcomer that sorts first (by name and origin) claims the same address.
    let both = format!("{incumbent}---\napiVersion: v1\nkind: Service\nmetadata: {{name: alpha, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.50\n  ports: [{{port: 80}}]\n");
    let (snapshot, problems) =
        Snapshot::build(&objects(&both), &BuildOptions::default(), Some(&first));
    assert_eq!(snapshot.services.len(), 1);
    assert_eq!(
        snapshot.services[0].service.name, "zeta",
        "the incumbent keeps it"
    );
    assert!(
        problems
            .iter()
            .map(ToString::to_string)
            .any(|p| p.contains("Service shop/alpha")
                && p.contains("already used by Service shop/zeta")),
        "{problems:?}"
    );
}

#[test]
fn local_policy_falls_back_to_local_terminating_endpoints() {
    // This node's only endpoint is terminating but serving; another node has a ready one.
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.30
  externalTrafficPolicy: Local
  ports: [{port: 80, nodePort: 30090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
  - addresses: [10.1.0.1]
    nodeName: node-a
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.1.0.2]
    nodeName: node-b
"#;
    let options = BuildOptions {
        node_name: Some("node-a".into()),
        ..Default::default()
    };
    let (snapshot, problems) = Snapshot::build(&objects(yaml), &options, None);
    assert!(problems.is_empty(), "{problems:?}");
    let node_port = snapshot
        .services
        .iter()
        .find(|v| v.kind == FrontendKind::NodePort)
        .unwrap();
    let serving: Vec<String> = node_port
        .serving(true)
        .map(|r| r.addr.to_string())
        .collect();
    assert_eq!(
        serving,
        vec!["10.1.0.1:8080"],
        "external traffic stays on the local terminating pod"
    );
    // The ClusterIP (Cluster policy) uses the ready endpoint only.
    let cluster_ip = snapshot
        .services
        .iter()
        .find(|v| v.kind == FrontendKind::ClusterIp)
        .unwrap();
    let serving: Vec<String> = cluster_ip
        .serving(false)
        .map(|r| r.addr.to_string())
        .collect();
    assert_eq!(serving, vec!["10.1.0.2:8080"]);
}

/// Services `a` and `b` with one ready endpoint each and resourceVersions (a's slice: `a_version`).
fn versioned(a_endpoint: &str, a_version: &str, b_endpoint: &str) -> String {
    let one = |name: &str, ip: &str, endpoint: &str, version: &str| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default, resourceVersion: "1{name}"}}
spec:
  clusterIP: {ip}
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  resourceVersion: "{version}"
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [{endpoint}]
  conditions: {{ready: true}}
---
"#
        )
    };
    one("a", "10.96.0.1", a_endpoint, a_version) + &one("b", "10.96.0.2", b_endpoint, "7")
}

/// Objects as the API source delivers them.
fn from_api(yaml: &str) -> ObjectSet {
    let mut set = objects(yaml);
    for s in &mut set.services {
        s.origin = Origin::Api;
    }
    for s in &mut set.endpoint_slices {
        s.origin = Origin::Api;
    }
    set
}

#[test]
fn cached_translations_equal_a_fresh_build_and_follow_resource_versions() {
    let options = BuildOptions::default();
    let mut cache = rvs_model::TranslationCache::default();
    let first = from_api(&versioned("10.1.0.1", "5", "10.1.0.2"));
    let (cached, _) = Snapshot::build_cached(&first, &options, None, &mut cache);
    assert_eq!(cached, Snapshot::build(&first, &options, None).0);

    // A new version of a's slice is translated again; b's translation is reused.
    let second = from_api(&versioned("10.1.0.9", "6", "10.1.0.2"));
    let (cached, _) = Snapshot::build_cached(&second, &options, Some(&cached), &mut cache);
    let fresh = Snapshot::build(&second, &options, Some(&cached)).0;
    assert_eq!(cached.services, fresh.services);
    assert!(cached.services[0].real_servers[0].addr.ip().to_string() == "10.1.0.9");

    // The versions are what the cache trusts: the same version means the same object (the
    // API server guarantees it), so a different content under it is not looked at.
    let same_version = from_api(&versioned("10.1.0.7", "6", "10.1.0.2"));
    let (reused, _) = Snapshot::build_cached(&same_version, &options, Some(&cached), &mut cache);
    assert_eq!(reused.services, cached.services);

    // Other options: nothing cached is valid.
    let other = BuildOptions {
        node_name: Some("n1".into()),
        ..BuildOptions::default()
    };
    let (rebuilt, _) = Snapshot::build_cached(&same_version, &other, Some(&cached), &mut cache);
    assert_eq!(
        rebuilt.services,
        Snapshot::build(&same_version, &other, Some(&cached))
            .0
            .services
    );

    // Manifest files are translated every build, even when they carry a resourceVersion
    // (`kubectl get -o yaml` writes one, and editing the file does not change it).
    let unversioned = |endpoint: &str| objects(&versioned(endpoint, "5", "10.1.0.2"));
    let mut cache = rvs_model::TranslationCache::default();
    let (one, _) = Snapshot::build_cached(&unversioned("10.1.0.3"), &options, None, &mut cache);
    let (two, _) =
        Snapshot::build_cached(&unversioned("10.1.0.4"), &options, Some(&one), &mut cache);
    assert_eq!(
        two.services[0].real_servers[0].addr.ip().to_string(),
        "10.1.0.4"
    );
}
